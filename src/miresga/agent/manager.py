"""Manager of the back-end agent (bpf/agent.bpf.c): load, configure, attach, count, sweep, detach.

`AgentManager` is a context manager for the testbed (one per back-end namespace). With `pin=True`
it pins the agent's maps and programs under /sys/fs/bpf/miresga/<netns>/agent/, so that another
process (`miresga agent stats|sweep|detach`) can find them after the attaching one has exited;
`AgentManager.from_pins(netns, iface)` is that other process's view. Detaching removes the TC
filters it can prove are the agent's (same program id as the pinned one) and the pins.

The ingress program is TC or native XDP (`agent.attach`, `hosts.backends.*.agent_attach`; see
miresga.agent.objects); egress is always TC. `ingress_mode` says which one this interface got.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.layouts import AgentConfig, AgentFlow, AgentFlowKey
from miresga.agent.objects import AgentObjects
from miresga.bpf.attach import attach_ingress, detach_mode
from miresga.bpf.libbpf import (BPF_FS, BpfError, Map, TcAttachment, XdpAttachment, ensure_bpffs, num_possible_cpus,
                                pinned_prog_id, tc_detach_if, xdp_detach_if, xdp_prog_id)
from miresga.bpf.netns import ifindex

PIN_ROOT = BPF_FS / "miresga"
# After the per-host counters (priority 1, which pass packets on); the agent's verdict is final.
AGENT_PRIORITY = 20
TC_HANDLE = 1
MAPS = ("agent_flows", "agent_config", "agent_stats", "agent_drops")
PROGS = {"ingress": "agent_ingress", "egress": "agent_egress"}

AGENT_FLOW_SYN, AGENT_FLOW_ESTABLISHED = 1, 2
AGENT_WSCALE_NONE = 0xFF


class AgentStat(IntEnum):
    """Mirror of bpf/agent.h enum agent_stat (checked by a test)."""

    SPLICE_SYN = 0
    RESPLICE = 1
    SYN_RETRANS = 2
    SYNACK = 3
    XLATE_IN = 4
    XLATE_OUT = 5
    SACK_BLOCKS = 6
    WINDOW_RESCALED = 7
    REMOVED_RST = 8
    REMOVED_FIN = 9
    REMOVED_PLAIN_SYN = 10
    INSERT_REFUSED = 11
    BAD_OPTIONS = 12
    UNKNOWN = 13
    UNPARSED = 14


@dataclass(frozen=True)
class AgentSettings:
    """What the agent needs from the deployment."""

    service_ports: tuple[int, ...] = (80,)
    window_scale: int = 7          # promised to clients by the switch (cfg.switch.window_scale)
    capacity: int = 65536          # flow table entries (cfg.agent.capacity)
    idle_timeout_s: float = 120.0  # sweep entries idle longer than this (cfg.agent.idle_timeout_s)
    attach: str = "tc"             # ingress: auto | xdp | tc (cfg.agent_attach(backend))

    def __post_init__(self) -> None:
        if not 1 <= len(self.service_ports) <= 4:
            raise ValueError(f"1 to 4 service ports, got {self.service_ports}")
        if not 0 <= self.window_scale <= 14:
            raise ValueError(f"window_scale {self.window_scale} not in 0..14")

    @classmethod
    def from_config(cls, cfg, backend: str | None = None) -> "AgentSettings":
        """From a Deployment; the service port of `backend` (name), or of every back-end."""
        bes = [cfg.backend(backend)] if backend else cfg.hosts.backends
        return cls(service_ports=tuple(sorted({b.port for b in bes})), window_scale=cfg.switch.window_scale,
                   capacity=cfg.agent.capacity, idle_timeout_s=cfg.agent.idle_timeout_s,
                   attach=cfg.agent_attach(backend) if backend else cfg.agent.attach)


def pin_dir(netns: str | None) -> Path:
    return PIN_ROOT / (netns or "host") / "agent"


def _num_cpus() -> int:
    return num_possible_cpus()


def percpu_sum(m: Map, key: int) -> int:
    """Sum over CPUs of a per-CPU array slot of u64."""
    return m.percpu_u64_sum(ctypes.c_uint32(key))


def _tc_detach_if(netns: str | None, iface: str, direction: str, prog_id: int) -> bool:
    """Detach the filter at the agent's (handle, priority) if it runs program `prog_id`."""
    try:
        idx = ifindex(netns, iface)
    except OSError:
        return False  # interface or namespace gone: nothing attached any more
    return tc_detach_if(netns, idx, direction, TC_HANDLE, AGENT_PRIORITY, prog_id)


def _xdp_detach_if(netns: str | None, iface: str, prog_id: int) -> bool:
    """Detach the native XDP program of the interface if it is program `prog_id`."""
    try:
        idx = ifindex(netns, iface)
    except OSError:
        return False
    return xdp_detach_if(netns, idx, prog_id)


def flow_key(addr: str, port: int) -> AgentFlowKey:
    return AgentFlowKey(int.from_bytes(socket.inet_aton(addr), "little"), socket.htons(port))


class AgentManager:
    """The agent on one interface of one namespace."""

    def __init__(self, cfg, netns: str | None = None, iface: str = "eth0", backend: str | None = None,
                 pin: bool = True, sweep_interval_s: float | None = None, adopt: bool = False):
        """`cfg`: a Deployment (with `backend`, the name whose service port to translate; default
        every back-end's) or AgentSettings. `sweep_interval_s`: sweep idle flows in a background
        thread at that interval while attached (None: the caller sweeps). `adopt`: an agent found
        pinned is taken over (new programs on its maps, flows kept) instead of refused; `keep`
        (set before leaving the `with`) leaves it attached for the next start."""
        self.settings = cfg if isinstance(cfg, AgentSettings) else AgentSettings.from_config(cfg, backend)
        self.netns, self.iface, self.pin = netns, iface, pin
        self.adopt, self.adopted, self.keep = adopt, False, False
        self.sweep_interval_s = sweep_interval_s
        self.swept = 0
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()
        self.obj: AgentObjects | None = None
        self.maps: dict[str, Map] = {}
        self._attachments: list[TcAttachment | XdpAttachment] = []
        self.ingress_mode: str | None = None   # "xdp" | "tc" once attached (or found pinned)
        self._pinned_prog_ids: dict[str, int] = {}

    # -- life cycle --------------------------------------------------------------------------

    def attach(self) -> "AgentManager":
        d = pin_dir(self.netns)
        old: dict[str, Map] | None = None
        if self.pin:
            ensure_bpffs()
            if d.exists():
                if not self.adopt:
                    raise BpfError(errno.EEXIST, f"agent already attached in {self.netns or 'host'} ({d}); detach first")
                old = {n: Map.from_pin(d / n) for n in MAPS}
                have = old["agent_flows"].max_entries
                if have != self.settings.capacity:
                    for m in old.values():
                        m.close()
                    raise BpfError(errno.EINVAL, f"the running agent's flow table holds {have} entries, the config "
                                   f"asks for {self.settings.capacity}: it cannot be resized in place; `miresga agent "
                                   "detach` first (that back-end's spliced connections break)")
        try:
            self.obj = AgentObjects(self.settings.attach != "tc", self.settings.capacity, reuse=old)
            self.maps = {n: self.obj.map(n) for n in MAPS}
            self.adopted = old is not None
            self.configure()
            idx = ifindex(self.netns, self.iface)
            # replace: an adopted agent's programs give way in one step per direction
            xdp = self.obj.xdp_obj.program(PROGS["ingress"]) if self.obj.xdp_obj else None
            a, self.ingress_mode = attach_ingress(self.netns, idx, self.iface, self.settings.attach,
                                                  self.obj.tc.program(PROGS["ingress"]), xdp,
                                                  priority=AGENT_PRIORITY, replace=self.adopted, who="agent")
            self._attachments.append(a)
            # an earlier start in the other mode: its ingress program goes
            detach_mode(self.netns, idx, "tc" if self.ingress_mode == "xdp" else "xdp", PROGS["ingress"],
                        handle=TC_HANDLE, priority=AGENT_PRIORITY)
            self._attachments.append(TcAttachment(self.netns, idx, "egress", self.obj.program(PROGS["egress"]),
                                                  priority=AGENT_PRIORITY, replace=self.adopted))
            if self.pin:
                if not self.adopted:
                    for n, m in self.maps.items():
                        m.pin(d / n)
                for direction, prog in PROGS.items():
                    (d / prog).unlink(missing_ok=True)   # an adopted agent's old program
                    self.obj.program(prog).pin(d / prog)   # the ingress one as attached (XDP or TC)
        except BaseException:
            if self.adopted:   # the running agent stays as it was
                self.keep = True
                self.close_kept()
            else:
                self.detach()
            raise
        finally:
            for m in (old or {}).values():
                m.close()
        if self.sweep_interval_s:
            self._stop.clear()
            self._sweeper = threading.Thread(target=self._sweep_loop, name=f"agent-sweep-{self.netns}", daemon=True)
            self._sweeper.start()
        return self

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_interval_s):
            try:
                self.swept += self.sweep()
            except (BpfError, KeyError):
                return  # detached under us

    def configure(self, settings: AgentSettings | None = None) -> None:
        """Write service ports and promised window scale into the agent (also while attached)."""
        s = settings or self.settings
        self.settings = s
        c = AgentConfig()
        for i, port in enumerate(s.service_ports):
            c.service_ports[i] = socket.htons(port)
        c.window_scale = s.window_scale
        self.maps["agent_config"].update(ctypes.c_uint32(0), c)

    @classmethod
    def from_pins(cls, netns: str | None, iface: str = "eth0") -> "AgentManager":
        """The agent another process attached with pins (for stats, sweep, detach)."""
        d = pin_dir(netns)
        if not d.exists():
            raise FileNotFoundError(f"no agent pinned for namespace {netns or 'host'} ({d})")
        m = cls(AgentSettings(), netns, iface, pin=True)
        m.maps = {n: Map.from_pin(d / n) for n in MAPS}
        raw = m.maps["agent_config"].lookup(ctypes.c_uint32(0))
        c = AgentConfig.from_buffer_copy(raw)
        ports = tuple(socket.ntohs(p) for p in c.service_ports if p)
        m.settings = AgentSettings(service_ports=ports or (80,), window_scale=c.window_scale,
                                   capacity=m.maps["agent_flows"].max_entries)
        for direction, prog in PROGS.items():
            pid = pinned_prog_id(d / prog)
            if pid is not None:
                m._pinned_prog_ids[direction] = pid
        m.ingress_mode = "tc"
        try:
            pid = m._pinned_prog_ids.get("ingress")
            if pid is not None and xdp_prog_id(netns, ifindex(netns, iface)) == pid:
                m.ingress_mode = "xdp"
        except OSError:
            pass
        return m

    def detach(self) -> None:
        """Remove the TC filters this agent put there, close everything, remove the pins."""
        self._stop.set()
        if self._sweeper:
            self._sweeper.join()
            self._sweeper = None
        for a in self._attachments:
            a.detach()
        self._attachments.clear()
        for direction, pid in self._pinned_prog_ids.items():
            if not _tc_detach_if(self.netns, self.iface, direction, pid) and direction == "ingress":
                _xdp_detach_if(self.netns, self.iface, pid)
        self._pinned_prog_ids.clear()
        for m in self.maps.values():
            m.close()
        self.maps = {}
        if self.obj:
            self.obj.close()
            self.obj = None
        if self.pin:
            d = pin_dir(self.netns)
            shutil.rmtree(d, ignore_errors=True)
            try:
                d.parent.rmdir()  # the namespace's directory, unless others (the switch) pinned there too
            except OSError:
                pass

    def close_kept(self) -> None:
        """Release this process's handles, leaving the agent attached and pinned."""
        self._stop.set()
        if self._sweeper:
            self._sweeper.join()
            self._sweeper = None
        self._attachments.clear()
        self.maps = {}
        if self.obj:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> "AgentManager":
        return self.attach()

    def __exit__(self, *exc) -> None:
        if self.keep:
            self.close_kept()
        else:
            self.detach()

    # -- state -------------------------------------------------------------------------------

    def flows(self) -> dict[tuple[str, int], AgentFlow]:
        """{(client ip, client port): flow state}."""
        out = {}
        for k, v in self.maps["agent_flows"].items():
            key = AgentFlowKey.from_buffer_copy(k)
            out[(str(ipaddress.IPv4Address(socket.ntohl(key.addr))), socket.ntohs(key.port))] = \
                AgentFlow.from_buffer_copy(v)
        return out

    def counters(self) -> dict[str, int]:
        return {s.name.lower(): percpu_sum(self.maps["agent_stats"], s) for s in AgentStat}

    def drops(self, zeros: bool = False) -> dict[str, int]:
        """Drops by reason (`zeros`: also every reason the map can count and has not)."""
        m = self.maps["agent_drops"]
        out = {}
        for r in DropReason:
            if -r < m.max_entries:
                n = percpu_sum(m, -r)
                if n or zeros:
                    out[r.name.lower()] = n
        return out

    def stats(self) -> dict:
        flows = sum(1 for _ in self.maps["agent_flows"].keys())
        cap = self.maps["agent_flows"].max_entries
        c = self.counters()
        return {"flows": flows, "capacity": cap, "occupancy": flows / cap, "ingress": self.ingress_mode,
                "translations": c["xlate_in"] + c["xlate_out"], "swept": self.swept, "counters": c,
                "drops": self.drops()}

    def sweep(self, now_ns: int | None = None, idle_timeout_s: float | None = None) -> int:
        """Delete flows idle longer than the timeout; `now_ns` on bpf_ktime_get_ns()'s clock
        (CLOCK_MONOTONIC). Returns how many were removed."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        limit = int((idle_timeout_s if idle_timeout_s is not None else self.settings.idle_timeout_s) * 1e9)
        m = self.maps["agent_flows"]
        removed = 0
        for k in list(m.keys()):
            v = m.lookup(k)  # read again just before deleting: the flow may have moved meanwhile
            if v is not None and now - AgentFlow.from_buffer_copy(v).last_seen_ns > limit and m.delete(k):
                removed += 1
        return removed

    def run_forever(self, stop: threading.Event) -> None:
        """Sweep at the interval (default a quarter of the idle timeout) until `stop` is set."""
        interval = self.sweep_interval_s or self.settings.idle_timeout_s / 4
        while not stop.wait(interval):
            self.swept += self.sweep()
