"""Bring a testbed instance up and down: namespaces, veth pairs, addresses, routes, servers.

Everything made is recorded in a state file *before* it is made, so `down` removes a half-built
instance too (after a crash or a failed `up`). Only namespaces named `mg<inst>-*` and processes
inside them are ever touched; nothing is attached to the machine's own interfaces.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from miresga.bpf import netns as nsx
from miresga.control.certs import make_pki
from miresga.control.config import Deployment, demo_secrets, load_config
from miresga.testbed.objects import CACHE, CatalogObject, ensure_catalog
from miresga.testbed.services import backend_nginx_conf, haproxy_conf, lb_nginx_conf
from miresga.testbed.topology import Topology, build_topology, new_instance_id, port_iface

RUN_ROOT = Path(os.environ.get("MIRESGA_RUN", "/run/miresga"))
PIN_ROOT = Path("/sys/fs/bpf/miresga")


def log(msg: str) -> None:
    print(f"[testbed] {msg}", flush=True)


class Testbed:
    """One instance. `with Testbed(cfg) as tb:` brings it up and always tears it down."""

    def __init__(self, cfg: Deployment | None = None, instance: str | None = None, switch: str = "kernel",
                 verbose: bool = False, lb: str | None = None):
        self.instance = instance or new_instance_id()
        self.run_dir = RUN_ROOT / self.instance
        self.cfg = self._instance_config(cfg or load_config())
        self.topo: Topology = self._topology()
        self.lb = lb  # "miresga": the eBPF switch, its controller, agents and front-ends run too
        self.switch_mode = "ebpf" if lb == "miresga" else switch
        self.verbose = verbose
        self.pin_dir = PIN_ROOT / self.instance
        self.objects: list[CatalogObject] = []
        self._closers: list = []  # in-process resources (BPF objects, attachments) to release
        self.state: dict[str, Any] = {"instance": self.instance, "namespaces": [], "pids": {},
                                      "switch": self.switch_mode, "lb": lb, "vip": None, "layout": self.layout}

    layout = "classic"

    def _instance_config(self, cfg: Deployment) -> Deployment:
        return with_testbed_ports(instance_config(cfg, self.run_dir))

    def _topology(self) -> Topology:
        return build_topology(self.cfg, self.instance)

    # ---------- naming ----------
    def ns(self, host: str) -> str:
        return self.topo.node(host).netns

    @property
    def ns_switch(self) -> str:
        return self.topo.switch_netns

    def run(self, host: str, *argv: str, **kw) -> subprocess.CompletedProcess:
        ns = self.ns_switch if host == self.cfg.switch.name else self.ns(host)
        return nsx.run(ns, *argv, **kw)

    def run_bytes(self, host: str, *argv: str, timeout: float = 120, input: bytes | None = None) -> bytes:
        """Run a command in a host and return its raw stdout (downloads)."""
        p = subprocess.run(nsx.ns_cmd(self.ns(host), argv), capture_output=True, timeout=timeout, input=input)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {host} failed rc={p.returncode}: {p.stderr.decode()[-300:]}")
        return p.stdout

    # ---------- state file ----------
    def _save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)  # readable: nginx workers keep temp files below it
        _write_private(self.run_dir / "state.json", json.dumps(self.state, indent=1))  # holds the secrets

    def _log(self, msg: str) -> None:
        if self.verbose:
            log(msg)

    # ---------- up ----------
    def up(self) -> "Testbed":
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self) -> None:
        self.objects = ensure_catalog(self.cfg.objects.sizes)
        self.state["config"] = self.cfg.model_dump(mode="json")
        self._save()
        for ns in self.topo.namespaces:
            self.state["namespaces"].append(ns)
            self._save()
            nsx.run(None, "ip", "netns", "add", ns)
            nsx.run(ns, "ip", "link", "set", "lo", "up")
        sw = self.ns_switch
        nsx.run(sw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for n in self.topo.nodes:
            nsx.run(sw, "ip", "link", "add", n.port_iface, "address", n.port_mac, "type", "veth",
                    "peer", "name", n.iface, "address", n.mac, "netns", n.netns)
            nsx.run(sw, "ip", "addr", "add", f"{n.gateway}/{n.network.prefixlen}", "dev", n.port_iface)
            nsx.run(sw, "ip", "link", "set", n.port_iface, "up")
            nsx.run(n.netns, "ip", "addr", "add", str(n.address), "dev", n.iface)
            nsx.run(n.netns, "ip", "link", "set", n.iface, "up")
            nsx.run(n.netns, "ip", "route", "add", "default", "via", str(n.gateway))
            # Static neighbours both ways: no ARP round trips, and the eBPF switch can take over
            # the switch host without the other hosts noticing.
            nsx.run(n.netns, "ip", "neigh", "replace", str(n.gateway), "lladdr", n.port_mac, "dev", n.iface,
                    "nud", "permanent")
            nsx.run(sw, "ip", "neigh", "replace", str(n.ip), "lladdr", n.mac, "dev", n.port_iface, "nud", "permanent")
        self._log(f"namespaces up: {', '.join(self.topo.namespaces)}")
        self._prepare_xdp_ports()
        self._start_backends()
        self._start_peers()
        self._attach_counters()
        self._wait_ready()
        if self.lb == "miresga":
            self._start_miresga()

    def _prepare_xdp_ports(self) -> None:
        """Hosts behind a switch port in XDP mode: see miresga.testbed.xdp (veth needs a receiving
        XDP program; a back-end whose agent runs XDP has its own)."""
        from miresga.testbed.xdp import prepare_host_end
        for n in self.topo.nodes:
            if self.cfg.switch_attach(n.port_iface) == "tc":
                continue
            own = n.role == "backend" and self.lb == "miresga" and self.cfg.agent_attach(n.name) != "tc"
            prepare_host_end(n.netns, n.iface, stub=not own)

    def _spawn_daemon(self, host: str, key: str, argv: list[str], pidfile: Path) -> None:
        self.state["pids"][key] = str(pidfile)
        self._save()
        self.run(host, *argv)

    def _start_backends(self) -> None:
        for b in self.cfg.hosts.backends:
            run = self.run_dir / b.name
            run.mkdir(parents=True, exist_ok=True)
            conf = run / "nginx.conf"
            conf.write_text(backend_nginx_conf(b, run, CACHE))
            self._spawn_daemon(b.name, f"nginx-{b.name}", ["nginx", "-c", str(conf), "-e", str(run / "error.log")],
                               run / "nginx.pid")

    def _start_peers(self) -> None:
        lb = self.cfg.hosts.lb
        run = self.run_dir / lb.name
        run.mkdir(parents=True, exist_ok=True)
        conf = run / "nginx.conf"
        conf.write_text(lb_nginx_conf(lb, self.cfg.hosts.backends, run))
        self._spawn_daemon(lb.name, "nginx-lb", ["nginx", "-c", str(conf), "-e", str(run / "error.log")],
                           run / "nginx.pid")
        hconf = run / "haproxy.cfg"
        hconf.write_text(haproxy_conf(lb, self.cfg.hosts.backends, run))
        self._spawn_daemon(lb.name, "haproxy", ["haproxy", "-q", "-f", str(hconf)], run / "haproxy.pid")

    # ---------- Miresga itself ----------
    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen:
        """Start one of our own long-running processes; it enters its namespace itself."""
        logf = open(self.run_dir / f"{key}.log", "ab")
        p = subprocess.Popen([sys.executable, "-m", "miresga.control.cli", *argv], stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.state["procs"] = {**self.state.get("procs", {}), key: p.pid}
        self._save()
        return p

    def _start_miresga(self) -> None:
        # The instance's own CA and certificates: the switch serves with its own, each front-end
        # presents its own, `status` reads as admin.
        make_pki(self.cfg.switch.control.tls_dir, self.cfg.switch.name, [f.name for f in self.cfg.hosts.frontends])
        conf = self.run_dir / "config.yaml"
        _write_private(conf, yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
        self._spawn("switch", self.miresga_argv("switch"))
        self._wait_log("switch", "control API on port", 20)
        for b in self.cfg.hosts.backends:
            self._spawn(f"agent-{b.name}", self.miresga_argv("agent", b.name))
        for b in self.cfg.hosts.backends:
            self._wait_log(f"agent-{b.name}", "agent running", 20)
        for f in self.cfg.hosts.frontends:
            self._spawn(f"frontend-{f.name}", self.miresga_argv("frontend", f.name))
        self._wait_frontends(30)
        self.state["vip"] = {"address": str(self.cfg.vip.address), "port": self.cfg.vip.port}
        self._save()
        self._log("Miresga up: " + ", ".join(f"VIP {s.vip.address}:{s.vip.port} ({s.name})"
                                             for s in self.cfg.all_services()))

    def miresga_argv(self, unit: str, name: str | None = None) -> list[str]:
        """The command line (after `miresga`) of the switch, agent `name` or front-end `name`. The
        switch and the agents run as docs/deploy.md's units run them: a stop leaves the data plane
        forwarding, the next start adopts it (teardown removes their pins with the namespaces)."""
        conf = str(self.run_dir / "config.yaml")
        if unit == "switch":
            return ["switch", "--config", conf, "--netns", self.ns_switch, "--keep-dataplane"]
        if unit == "agent":
            return ["agent", "run", "--iface", "eth0", "--netns", self.ns(name), "--config", conf, "--backend", name,
                    "--keep-dataplane"]
        return ["frontend", "--config", conf, "--name", name, "--netns", self.ns(name)]

    def stop_process(self, key: str) -> None:
        """Stop one of our processes as systemctl does (SIGTERM, then wait)."""
        pid = self.state["procs"][key]
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, 10.0)

    def start_process(self, key: str, argv: list[str], marker: str, timeout: float = 20.0) -> None:
        """Start `argv` as process `key` and wait until it logs `marker`."""
        log_file = self.run_dir / f"{key}.log"
        offset = len(log_file.read_text(errors="replace")) if log_file.exists() else 0
        self._spawn(key, argv)
        self._wait_log(key, marker, timeout, offset)

    def restart(self, key: str, argv: list[str], marker: str, timeout: float = 20.0) -> float:
        """Stop and start again; returns the seconds until it logged `marker` again."""
        t0 = time.monotonic()
        self.stop_process(key)
        self.start_process(key, argv, marker, timeout)
        return time.monotonic() - t0

    def client_link_peer(self, client: str = "c1") -> tuple[str, str]:
        """(namespace, interface) at the far end of a client's link: the switch port facing it."""
        return self.ns_switch, self.topo.node(client).port_iface

    def restart_switch(self, timeout: float = 20.0) -> float:
        """`systemctl restart miresga-switch`; returns the seconds its control API was away."""
        return self.restart("switch", self.miresga_argv("switch"), "control API on port", timeout)

    def _wait_log(self, key: str, marker: str, timeout: float, offset: int = 0) -> None:
        f = self.run_dir / f"{key}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = f.read_text(errors="replace")[offset:] if f.exists() else ""
            if marker in text:
                return
            pid = self.state["procs"][key]
            if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
                raise RuntimeError(f"{key} exited during start-up:\n{text[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{key} not ready after {timeout}s:\n{f.read_text(errors='replace')[-2000:]}")

    def switch_stats(self) -> dict[str, Any]:
        """The controller's Stats, asked from inside the switch namespace (as `miresga status`)."""
        p = nsx.run(None, sys.executable, "-m", "miresga.control.cli", "status", "--config",
                    str(self.run_dir / "config.yaml"), "--netns", self.ns_switch, "--json", timeout=20)
        return json.loads(p.stdout)

    def frontend_metrics(self, name: str) -> dict[str, dict[str, float]]:
        """A front-end's Prometheus metrics, scraped from inside its namespace."""
        from miresga.frontend.metrics import scrape
        fe = self.cfg.frontend
        with nsx.in_netns(self.ns(name)):
            return scrape(f"http://{fe.metrics_address}:{fe.metrics_port}/metrics")

    def agent_stats(self, backend: str) -> dict[str, Any]:
        from miresga.agent.manager import AgentManager
        m = AgentManager.from_pins(self.ns(backend))
        try:
            return m.stats()
        finally:
            for mp in m.maps.values():
                mp.close()

    def frontend_kernel_entries(self, name: str) -> int:
        """Entries in the fe_conns map of the kernel path on a front-end's eth0, read the way an
        operator would (bpftool: from the program on the interface to its maps)."""
        def tool(*args: str, netns: str | None = None) -> Any:
            cmd = (["ip", "netns", "exec", netns] if netns else []) + ["bpftool", "-j", *args]
            return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        progs = [p["id"] for d in tool("net", "show", "dev", "eth0", netns=self.ns(name))
                 for p in d.get("tc", []) if p.get("name", "").startswith("frontend_ingres")]  # names are cut at 15
        n = 0
        for pid in progs:
            for mid in tool("prog", "show", "id", str(pid)).get("map_ids", []):
                if tool("map", "show", "id", str(mid)).get("name") == "fe_conns":
                    n += len(tool("map", "dump", "id", str(mid)))
        return n

    def leftovers(self) -> dict[str, int]:
        """State still held anywhere: switch entries (installed or queued), agent flows, front-end
        connections and kernel-path entries. All zero once every connection has ended."""
        st = self.switch_stats()
        out = {"switch_entries": st["installed"] + st["queue"]}
        for b in self.cfg.hosts.backends:
            out[f"agent_{b.name}"] = self.agent_stats(b.name)["flows"]
        for f in self.cfg.hosts.frontends:
            m = self.frontend_metrics(f.name)
            out[f"fe_{f.name}"] = int(sum(m.get("connections", {}).values()))
            out[f"fe_{f.name}_kernel"] = self.frontend_kernel_entries(f.name)
        return out

    def pids_of(self, host: str, comm: str) -> list[int]:
        """Processes named `comm` in a host's namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True).stdout.split()
        pids = []
        for p in map(int, out):
            try:
                if open(f"/proc/{p}/comm").read().strip() == comm:
                    pids.append(p)
            except OSError:
                pass
        return pids

    def _wait_frontends(self, timeout: float) -> None:
        """Until every front-end is registered with the switch controller and holds buckets."""
        want = {f.name for f in self.cfg.hosts.frontends}
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for key, pid in self.state["procs"].items():
                if key.startswith("frontend-") and _is_zombie(pid):
                    raise RuntimeError(f"{key} exited during start-up:\n"
                                       f"{(self.run_dir / (key + '.log')).read_text()[-2000:]}")
            try:
                last = self.switch_stats()
                if {m["name"] for m in last["members"] if m["state"] == "alive" and m["buckets"] > 0} >= want:
                    return
            except RuntimeError as e:  # controller still starting
                last = e
            time.sleep(0.2)
        raise RuntimeError(f"front-ends not registered after {timeout}s: {last}")

    def _attach_counters(self) -> None:
        """Per-host packet/byte counters (eBPF) on every host's eth0, pinned for `status`."""
        from miresga.bpf.counters import attach_counters
        self.state["pins"] = str(self.pin_dir)
        self._save()
        for n in self.topo.nodes:
            self._closers.append(attach_counters(n.netns, n.iface, self.pin_dir / n.name))

    def _wait_ready(self, timeout: float = 10.0) -> None:
        c = self.topo.by_role("client")[0]
        targets = [f"http://{b.ip}:{b.direct_port}/health" for b in self.cfg.hosts.backends]
        lb = self.cfg.hosts.lb
        targets += [f"http://{lb.ip}:{lb.nginx_port}/health", f"http://{lb.ip}:{lb.haproxy_port}/health"]
        deadline = time.monotonic() + timeout
        for url in targets:
            while True:
                p = nsx.run(c.netns, "curl", "-sf", "-m", "2", "-o", "/dev/null", url, check=False)
                if p.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"testbed: {url} not ready after {timeout}s (curl rc {p.returncode})")
                time.sleep(0.1)
        self._log("back-ends and peers answer")

    # ---------- down ----------
    def down(self) -> None:
        for c in reversed(self._closers):
            try:
                c.close()
            except Exception as e:  # keep tearing down the rest
                log(f"close: {e}")
        self._closers.clear()
        teardown_instance(self.instance, self.state)

    def __enter__(self) -> "Testbed":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # ---------- status ----------
    def status(self) -> dict[str, Any]:
        return describe(self.cfg, self.topo, self.objects or ensure_catalog(self.cfg.objects.sizes),
                        self.pin_dir, vip=self.state.get("vip"))


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner reads (it carries the instance's secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def instance_config(cfg: Deployment, run_dir: Path) -> Deployment:
    """The config an instance runs: the built-in demo secrets replaced by random ones of its own
    (so no two instances, nor anyone who read default.yaml, share them), and its control API on
    mutual TLS with certificates under its run directory (made by `up`)."""
    sw = cfg.switch
    demo = set(demo_secrets(cfg))
    cookie_cfg = sw.cookie.model_copy(update={"secret": secrets.token_hex(32)}) \
        if "switch.cookie.secret" in demo else sw.cookie
    control = sw.control.model_copy(update={
        **({"token": secrets.token_hex(32)} if "switch.control.token" in demo else {}),
        "tls_dir": run_dir / "pki"})
    return cfg.model_copy(update={"switch": sw.model_copy(update={"cookie": cookie_cfg, "control": control})})


def with_testbed_ports(cfg: Deployment) -> Deployment:
    """The testbed as a user of the general config: every host's switch interface is the veth the
    testbed makes for it (p-<host>, unless the config names one); MACs stay `auto` (the switch reads
    them from its namespace's neighbour table, which the testbed fills)."""
    if cfg.hosts.lb is None or not cfg.hosts.clients:
        raise ValueError("the testbed needs hosts.lb (the peers' host) and at least one of hosts.clients")
    d = cfg.model_dump(mode="json")
    for section, hosts in d["hosts"].items():
        for h in (hosts if isinstance(hosts, list) else [hosts]):
            if h is not None and not h.get("interface"):
                h["interface"] = port_iface(h["name"])
    return Deployment.model_validate(d)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        pass


def teardown_instance(instance: str, state: dict[str, Any] | None = None) -> None:
    """Remove everything an instance made, from its state file; safe to call twice."""
    run_dir = RUN_ROOT / instance
    if state is None:
        f = run_dir / "state.json"
        state = json.loads(f.read_text()) if f.exists() else {"namespaces": [], "pids": {}}
    for pid in state.get("procs", {}).values():
        try:
            os.kill(pid, signal.SIGTERM)  # our own processes first, so they detach what they attached
        except OSError:
            pass
    for pid in state.get("procs", {}).values():
        _wait_gone(pid, 5.0)
    for pidfile in state.get("pids", {}).values():
        _kill_pidfile(Path(pidfile))
    namespaces = set(state.get("namespaces", [])) | {
        ns for ns in list_namespaces() if ns.startswith(f"mg{instance}-")}
    for ns in namespaces:
        _kill_netns_processes(ns)
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    shutil.rmtree(PIN_ROOT / instance, ignore_errors=True)
    for ns in namespaces:  # pins made by the switch and agents, named after their namespace
        for base in (PIN_ROOT / ns, PIN_ROOT / "switch" / ns):
            shutil.rmtree(base, ignore_errors=True)
    for d in (PIN_ROOT / "switch", PIN_ROOT):  # shared parents, removed once nothing else lives there
        try:
            d.rmdir()
        except OSError:
            pass
    shutil.rmtree(run_dir, ignore_errors=True)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if _is_zombie(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _kill_netns_processes(ns: str) -> None:
    """Every process still inside the namespace (servers, front-ends, leftovers of a crash)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        pids = [int(x) for x in p.stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if not subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                return
            time.sleep(0.05)


def list_namespaces() -> list[str]:
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def running_instances() -> list[str]:
    if not RUN_ROOT.exists():
        return []
    return sorted(d.name for d in RUN_ROOT.iterdir() if (d / "state.json").exists())


def load_instance(instance: str) -> Testbed:
    state = json.loads((RUN_ROOT / instance / "state.json").read_text())
    from miresga.control.config import Deployment
    cls = Testbed
    if state.get("layout") == "realistic":
        from miresga.testbed.realistic import RealisticTestbed as cls
    tb = cls(Deployment.model_validate(state["config"]), instance=instance, switch=state.get("switch", "kernel"),
             lb=state.get("lb"))
    tb.state = state
    return tb


def describe(cfg: Deployment, topo: Topology, objects: list[CatalogObject], pin_dir: Path,
             vip: dict | None = None) -> dict[str, Any]:
    """The machine-readable description printed by `miresga testbed status --json` (README)."""
    from miresga.bpf.counters import read_counters
    roles: dict[str, list[str]] = {"client": [], "switch": [topo.switch_netns], "frontend": [], "backend": [], "lb": []}
    for n in topo.nodes:
        roles.setdefault(n.role, []).append(n.netns)
    lb = cfg.hosts.lb
    b0 = cfg.hosts.backends[0]
    peers = {"direct": {"address": str(b0.ip), "port": b0.direct_port}}
    if lb is not None:
        peers.update({"nginx": {"address": str(lb.ip), "port": lb.nginx_port},
                      "haproxy": {"address": str(lb.ip), "port": lb.haproxy_port}})
    return {
        "instance": topo.instance,
        "namespaces": roles,
        "vip": vip,
        "rules": ([r.model_dump(mode="json", exclude_defaults=False) for r in cfg.rules] if vip else []),
        "services": ([{"name": s.name, "vip": {"address": str(s.vip.address), "port": s.vip.port},
                       "rules": [r.model_dump(mode="json", exclude_defaults=False) for r in s.rules]}
                      for s in cfg.all_services()] if vip else []),
        "peers": peers,
        "backends": [{"name": b.name, "namespace": topo.node(b.name).netns, "address": str(b.ip),
                      "port": b.port, "direct_port": b.direct_port} for b in cfg.hosts.backends],
        "objects": [{"path": o.path, "size": o.size, "sha256": o.sha256} for o in objects],
        "hosts": [{"name": n.name, "role": n.role, "namespace": n.netns, "address": str(n.address),
                   "mac": n.mac, "switch_port": n.port_iface, "counters": read_counters(pin_dir / n.name)}
                  for n in topo.nodes],
    }
