"""`miresga testbed up --layout realistic`: hosts built the way docs/deploy.md describes real ones.

    c1 ──(172.16.0.0/24)── up ──(10.0.50.0/24)── swp4 ┐
                                        fe1 ── swp1 ──┤ sw (eBPF switch)
                                        fe2 ── swp2 ──┤
               be1, be2, be3 ──[bridge: one L2 segment]── swp3 ┘
    every host also has mgmt0 on 192.168.100.0/24 (a second bridge): the management network

Unlike the classic layout, nothing is derived from addresses: MACs are the ones the kernel gave the
veths, neighbours are learnt by ARP, the back-ends share one subnet behind one switch interface, the
client is two hops away behind an upstream router (the switch's default route), and the switch,
the front-ends and the agents are started with the command lines of deploy/systemd/*.service and
the deployment config (src/miresga/control/realistic.yaml) alone; only `--netns` is added, as the
namespace stands in for the host.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
from pathlib import Path

from miresga.bpf import netns as nsx
from miresga.control.config import DEFAULT_CONFIG, Deployment, load_config
from miresga.neighbours import link_mac
from miresga.testbed.objects import ensure_catalog
from miresga.testbed.testbed import Testbed, instance_config
from miresga.testbed.topology import HOST_IFACE, Node, Topology, ns_name

REALISTIC_CONFIG = DEFAULT_CONFIG.with_name("realistic.yaml")
UNITS = Path(__file__).resolve().parents[3] / "deploy" / "systemd"
UNIT_CONFIG = "/etc/miresga/miresga.yaml"   # the config path the units name
CLIENT = ("c1", ipaddress.IPv4Interface("172.16.0.10/24"))
CLIENT_GW = ipaddress.IPv4Interface("172.16.0.1/24")
MGMT_NET = ipaddress.IPv4Network("192.168.100.0/24")
MGMT_IFACE = "mgmt0"
SEGMENT = "l2"      # the back-ends' L2 segment (a bridge in its own namespace)
MGMT = "mgmt"       # the management network's bridge


def unit_argv(unit: str, config: str, instance: str | None = None) -> list[str]:
    """The arguments after `miresga` in deploy/systemd/<unit>'s ExecStart, with the config path
    and the instance name (%i) filled in."""
    f = UNITS / unit
    if not f.exists():
        raise FileNotFoundError(f"{f}: the systemd units are read from the source tree (deploy/systemd)")
    line = next(x for x in f.read_text().splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.split("=", 1)[1])[1:]
    return [config if a == UNIT_CONFIG else (instance if a == "%i" else a) for a in argv]


class RealisticTestbed(Testbed):
    layout = "realistic"

    def __init__(self, cfg: Deployment | None = None, **kw):
        super().__init__(cfg or load_config(REALISTIC_CONFIG), **kw)

    def _instance_config(self, cfg: Deployment) -> Deployment:
        missing = [h.name for h in cfg.hosts.all() if h.interface is None]
        if missing or not cfg.hosts.routers:
            raise ValueError("the realistic layout needs hosts.*.interface on every host and an upstream router "
                             f"(hosts.routers); missing interfaces: {missing}")
        return instance_config(cfg, self.run_dir)

    def _topology(self) -> Topology:
        def node(role: str, h) -> Node:
            return Node(role, h.name, ns_name(self.instance, h.name), HOST_IFACE, h.address, "", h.interface,
                        h.gateway, "")
        hosts = self.cfg.hosts
        nodes = [Node("client", CLIENT[0], ns_name(self.instance, CLIENT[0]), HOST_IFACE, CLIENT[1], "", "",
                      CLIENT_GW.ip, ""),
                 *(node("frontend", h) for h in hosts.frontends), *(node("backend", h) for h in hosts.backends),
                 *(node("router", h) for h in hosts.routers)]
        return Topology(self.instance, ns_name(self.instance, self.cfg.switch.name), tuple(nodes))

    def miresga_argv(self, unit: str, name: str | None = None) -> list[str]:
        conf = str(self.run_dir / "config.yaml")
        if unit == "switch":
            return [*unit_argv("miresga-switch.service", conf), "--netns", self.ns_switch]
        return [*unit_argv(f"miresga-{unit}@.service", conf, name), "--netns", self.ns(name)]

    def client_link_peer(self, client: str = "c1") -> tuple[str, str]:
        return self.ns(self.topo.by_role("router")[0].name), "eth1"   # the router's client-side interface

    @property
    def mgmt(self) -> dict[str, ipaddress.IPv4Address]:
        """Management address of every host (the switch's too)."""
        names = [self.cfg.switch.name, *(n.name for n in self.topo.nodes)]
        return {n: MGMT_NET.network_address + 10 + i for i, n in enumerate(names)}

    def mgmt_ns(self, host: str) -> str:
        return self.ns_switch if host == self.cfg.switch.name else self.ns(host)

    # ---------- up ----------
    def _add_ns(self, ns: str) -> None:
        self.state["namespaces"].append(ns)
        self._save()
        nsx.run(None, "ip", "netns", "add", ns)
        nsx.run(ns, "ip", "link", "set", "lo", "up")

    def _veth(self, ns_a: str, a: str, ns_b: str, b: str) -> None:
        """A veth pair with kernel-assigned MACs, both ends up."""
        nsx.run(ns_a, "ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b)
        nsx.run(ns_a, "ip", "link", "set", a, "up")
        nsx.run(ns_b, "ip", "link", "set", b, "up")

    def _bridge(self, ns: str) -> None:
        nsx.run(ns, "ip", "link", "add", "br0", "type", "bridge")
        nsx.run(ns, "ip", "link", "set", "br0", "up")

    def _up(self) -> None:
        self.objects = ensure_catalog(self.cfg.objects.sizes)
        self.state["config"] = self.cfg.model_dump(mode="json")
        self._save()
        seg, mg = ns_name(self.instance, SEGMENT), ns_name(self.instance, MGMT)
        for ns in [*self.topo.namespaces, seg, mg]:
            self._add_ns(ns)
        sw = self.ns_switch
        nsx.run(sw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._bridge(seg)
        self._bridge(mg)
        gateways_done: set[str] = set()
        for n in self.topo.nodes:
            if n.role == "client":
                continue
            if n.role == "backend":   # behind the segment: host -- bridge -- switch port
                self._veth(n.netns, n.iface, seg, f"b-{n.name}")
                nsx.run(seg, "ip", "link", "set", f"b-{n.name}", "master", "br0")
                if n.port_iface not in gateways_done:
                    self._veth(sw, n.port_iface, seg, "sw0")
                    nsx.run(seg, "ip", "link", "set", "sw0", "master", "br0")
            else:
                self._veth(sw, n.port_iface, n.netns, n.iface)
            if n.port_iface not in gateways_done:
                nsx.run(sw, "ip", "addr", "add", f"{n.gateway}/{n.network.prefixlen}", "dev", n.port_iface)
                gateways_done.add(n.port_iface)
            nsx.run(n.netns, "ip", "addr", "add", str(n.address), "dev", n.iface)
            if n.role != "router":
                nsx.run(n.netns, "ip", "route", "add", "default", "via", str(n.gateway))
        # The upstream router: the client network on eth1, every VIP routed to the switch.
        up = self.topo.by_role("router")[0]
        client = self.topo.by_role("client")[0]
        self._veth(up.netns, "eth1", client.netns, client.iface)
        nsx.run(up.netns, "ip", "addr", "add", str(CLIENT_GW), "dev", "eth1")
        nsx.run(up.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for vip in sorted({svc.vip.address for svc in self.cfg.all_services()}):
            nsx.run(up.netns, "ip", "route", "add", f"{vip}/32", "via", str(up.gateway))
        nsx.run(client.netns, "ip", "addr", "add", str(client.address), "dev", client.iface)
        nsx.run(client.netns, "ip", "route", "add", "default", "via", str(CLIENT_GW.ip))
        # The management network: mgmt0 on every host, one bridge.
        for host, ip in self.mgmt.items():
            ns = self.mgmt_ns(host)
            self._veth(ns, MGMT_IFACE, mg, f"m-{host}")
            nsx.run(mg, "ip", "link", "set", f"m-{host}", "master", "br0")
            nsx.run(ns, "ip", "addr", "add", f"{ip}/{MGMT_NET.prefixlen}", "dev", MGMT_IFACE)
        # What the kernel assigned, for `status`.
        self.topo = dataclasses.replace(self.topo, nodes=tuple(
            dataclasses.replace(n, mac=link_mac(n.iface, n.netns),
                                port_mac=link_mac(n.port_iface, sw) if n.port_iface else "")
            for n in self.topo.nodes))
        self._log(f"namespaces up: {', '.join(self.topo.namespaces)} (+ {seg}, {mg})")
        self._prepare_xdp_ports_realistic(seg, client)
        self._start_backends()
        self._attach_counters()
        self._wait_ready()
        if self.lb == "miresga":
            self._start_miresga()

    def _prepare_xdp_ports_realistic(self, seg: str, client) -> None:
        """miresga.testbed.xdp for this layout. The far end of an XDP switch port is a host's eth0
        (the stub goes there) or, for the back-ends' shared port, the segment bridge's `sw0` (stub
        there; the back-ends get their frames from the bridge, not by redirect). Every sender whose
        frames reach an XDP port turns tx checksum offload off: the hosts, and the client behind
        the router too (forwarding keeps a half checksum)."""
        from miresga.bpf.libbpf import BpfObject, XdpAttachment, object_path
        from miresga.testbed.xdp import prepare_host_end
        xdp = [n for n in self.topo.nodes if n.role != "client" and self.cfg.switch_attach(n.port_iface) != "tc"]
        for n in xdp:
            prepare_host_end(n.netns, n.iface, stub=n.role != "backend")
        if any(n.role == "backend" for n in xdp):
            with BpfObject(object_path("xdp_pass")) as obj:
                XdpAttachment(seg, nsx.ifindex(seg, "sw0"), obj.program("xdp_pass"))
        if xdp:
            nsx.run(client.netns, "ethtool", "-K", client.iface, "tx", "off")

    def _wait_ready(self, timeout: float = 10.0) -> None:
        """The back-ends answer their front-ends (health checks' path); clients reach only the VIP."""
        import time
        fe = self.topo.by_role("frontend")[0]
        deadline = time.monotonic() + timeout
        for b in self.cfg.hosts.backends:
            url = f"http://{b.ip}:{b.direct_port}/health"
            while nsx.run(fe.netns, "curl", "-sf", "-m", "2", "-o", "/dev/null", url, check=False).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"testbed: {url} not ready from {fe.name} after {timeout}s")
                time.sleep(0.1)
        self._log("back-ends answer")
