"""Load the switch data plane (build/bpf/switch.bpf.o) into a switch namespace, fill its tables
from the config, attach it to TC ingress of every port, and remove exactly that on close.

    ports = ports_for(cfg, "mgab12-sw")           # naming/MAC conventions of the testbed
    with SwitchDataplane(cfg, "mgab12-sw", ports) as dp:
        ...                                        # dp.maps: typed table access (SwitchMaps)

The maps are pinned (default: /sys/fs/bpf/miresga/switch/<netns>/) so that the controller
(`miresga switch`) can run in another process; `open_pinned(netns)` gives them back.
"""

from __future__ import annotations

import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from miresga import cookie
from miresga.bpf.libbpf import BpfObject, Map, TcAttachment, ensure_bpffs, object_path
from miresga.bpf.netns import ifindex as ns_ifindex
from miresga.control.config import Deployment
from miresga.switch.controller import home_assignment
from miresga.switch.maps import HOP_INTERNAL, HOP_LOCAL, HOP_VALID, SW_F_TRACE, SwitchMaps, hop
from miresga.switch.profiles import profile_from_config

PIN_BASE = Path("/sys/fs/bpf/miresga/switch")
MAP_NAMES = ("sw_config", "sw_keys", "sw_arp", "sw_backend_src", "sw_offload", "sw_buckets", "sw_backends", "sw_routes",
             "sw_counters", "sw_trace", "sw_guarded_ports", "sw_ctl_peers")
SWITCH_PRIORITY = 10  # after anything at priority 1 that passes packets on (e.g. per-port counters)


@dataclass(frozen=True)
class SwitchPort:
    """One port of the switch host, facing one host of the fabric."""

    host: str                          # host name in the config
    ifname: str                        # switch-side interface, p-<host>
    ifindex: int                       # in the switch namespace
    port_mac: str                      # MAC of the switch-side interface
    host_mac: str                      # MAC of the host's interface behind it
    address: ipaddress.IPv4Interface   # the host's address with its prefix (from the config)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return next(self.address.network.hosts())


def _mac(prefix: int, ip: ipaddress.IPv4Address) -> str:
    return ":".join(f"{b:02x}" for b in (0x02, prefix, *ip.packed))


def vip_mac(cfg: Deployment) -> str:
    return _mac(0x53, cfg.vip.address)


def ports_for(cfg: Deployment, netns: str | None) -> list[SwitchPort]:
    """Ports by the testbed's conventions (p-<host>; host 02:4d:<ip>, port 02:53:<gateway>)."""
    out = []
    for h in cfg.hosts.all():
        name = f"p-{h.name}"
        out.append(SwitchPort(h.name, name, ns_ifindex(netns, name), _mac(0x53, h.gateway), _mac(0x4D, h.ip),
                              h.address))
    return out


def default_pin_dir(netns: str | None) -> Path:
    return PIN_BASE / (netns or "root")


def fill_static_tables(maps: SwitchMaps, cfg: Deployment, ports: list[SwitchPort], trace: bool = False) -> None:
    """Config, ARP, back-ends, routes and the initial bucket assignment (the controller keeps
    the buckets and the cookie key up to date afterwards)."""
    sw = cfg.switch
    by_host = {p.host: p for p in ports}
    missing = [h.name for h in cfg.hosts.all() if h.name not in by_host]
    if missing:
        raise ValueError(f"no switch port for hosts {missing}")
    key, _ = cookie.keys_at(sw.cookie.secret, cookie.tai_seconds(), sw.cookie.rotate_seconds)
    maps.set_config(vip=str(cfg.vip.address), vport=cfg.vip.port, key=(key.k0, key.k1), mss=sw.mss,
                    wscale=sw.window_scale, sack=sw.sack, bucket_seconds=sw.cookie.bucket_seconds,
                    flags=SW_F_TRACE if trace else 0)
    maps.set_arp(str(cfg.vip.address), vip_mac(cfg))
    clients = {h.name for h in cfg.hosts.clients}
    for p in ports:
        maps.set_arp(str(p.gateway), p.port_mac)
        flags = HOP_VALID if p.host in clients else HOP_VALID | HOP_INTERNAL
        maps.set_route(p.address.network, hop(p.ifindex, p.port_mac, p.host_mac, flags))
        maps.set_route(f"{p.gateway}/32", hop(p.ifindex, p.port_mac, p.host_mac, HOP_VALID | HOP_LOCAL))
    for i, b in enumerate(cfg.hosts.backends):
        p = by_host[b.name]
        maps.set_backend(i, str(b.ip), b.port, hop(p.ifindex, p.port_mac, p.host_mac))
    # The control API (and any other guarded port) answers front-ends on their own ports only.
    for port in guarded_ports(cfg):
        maps.guard_port(port)
    for f in cfg.hosts.frontends:
        maps.set_ctl_peer(str(f.ip), by_host[f.name].ifindex)
    names = [h.name for h in cfg.hosts.frontends]
    for b, name in enumerate(home_assignment(names)):
        p = by_host[name]
        maps.set_bucket(b, hop(p.ifindex, p.port_mac, p.host_mac))


def guarded_ports(cfg: Deployment) -> list[int]:
    """TCP ports of the switch's own addresses that only front-ends may reach (the metrics port
    too: should it listen on a gateway, clients still must not reach it)."""
    return sorted({cfg.switch.control.port, cfg.switch.metrics_port, *cfg.switch.control.guard_ports})


def frontend_hops(cfg: Deployment, ports: list[SwitchPort]) -> dict:
    by_host = {p.host: p for p in ports}
    return {h.name: hop(by_host[h.name].ifindex, by_host[h.name].port_mac, by_host[h.name].host_mac)
            for h in cfg.hosts.frontends}


class SwitchDataplane:
    """Context manager: load, fill, attach on every port; close detaches, unpins and unloads."""

    def __init__(self, cfg: Deployment, netns: str | None, ports: list[SwitchPort], *, trace: bool = False,
                 pin_dir: Path | None | bool = True):
        self.cfg, self.netns, self.ports = cfg, netns, list(ports)
        self.attachments: list[TcAttachment] = []
        self.pin_dir = default_pin_dir(netns) if pin_dir is True else (pin_dir or None)
        self._pinned = False
        capacity = profile_from_config(cfg.switch).capacity
        self.obj = BpfObject(object_path("switch"), max_entries={"sw_offload": capacity})
        try:
            self.maps = SwitchMaps(self.obj)
            fill_static_tables(self.maps, cfg, self.ports, trace)
            if self.pin_dir:
                ensure_bpffs()
                if self.pin_dir.exists():
                    raise FileExistsError(f"{self.pin_dir}: a switch data plane is already loaded for {netns}")
                self._pinned = True
                for name in MAP_NAMES:
                    self.obj.map(name).pin(self.pin_dir / name)
            prog = self.obj.program("switch_ingress")
            for p in self.ports:
                self.attachments.append(TcAttachment(netns, p.ifindex, "ingress", prog, priority=SWITCH_PRIORITY))
        except BaseException:
            self.close()
            raise

    @property
    def frontend_hops(self) -> dict:
        return frontend_hops(self.cfg, self.ports)

    def close(self) -> None:
        for a in reversed(self.attachments):
            a.detach()
        self.attachments.clear()
        if self._pinned and self.pin_dir:
            shutil.rmtree(self.pin_dir, ignore_errors=True)
            self._pinned = False
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> "SwitchDataplane":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PinnedMaps:
    """The maps of a data plane loaded by another process (duck-types BpfObject.map)."""

    def __init__(self, pin_dir: Path):
        if not (pin_dir / "sw_config").exists():
            raise FileNotFoundError(f"{pin_dir}: no switch data plane pinned there")
        self._maps = {n: Map.from_pin(pin_dir / n) for n in MAP_NAMES}

    def map(self, name: str) -> Map:
        return self._maps[name]

    def close(self) -> None:
        for m in self._maps.values():
            m.close()


def open_pinned(netns: str | None, pin_dir: Path | None = None) -> tuple[SwitchMaps, PinnedMaps]:
    pm = PinnedMaps(pin_dir or default_pin_dir(netns))
    return SwitchMaps(pm), pm
