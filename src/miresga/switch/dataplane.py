"""Load the switch data plane (build/bpf/switch.bpf.o, and its XDP build switch_xdp.bpf.o on the
same maps when a port may use XDP), fill its tables from the config, attach it to the ingress of
every port (native XDP or TC per `switch.attach` / `switch.attach_interfaces`, `self.port_modes`
says what each port got), and remove exactly that on close.

    ports = ports_for(cfg, "mgab12-sw")      # interfaces from the config, MACs from the kernel
    with SwitchDataplane(cfg, "mgab12-sw", ports) as dp:
        ...                                   # dp.maps: typed table access (SwitchMaps)

The maps are pinned (default: /sys/fs/bpf/miresga/switch/<netns>/) so that the controller
(`miresga switch`) can run in another process; `open_pinned(netns)` gives them back. A data plane
found pinned is *adopted*: a new program is loaded on the same maps, the configuration tables are
reconciled with the config (what changed is written, what went is removed, offloaded connections
stay, but those of a back-end slot or a service index whose address changed), and it replaces the
old program on every port in one step; `close(keep=True)` leaves the data plane running for the next
start. A data plane pinned by the version before several VIPs (no sw_vips, sw_vip_addrs,
sw_services; its sw_config held the one VIP:port) is upgraded in place: the three tables and a
sw_config of the new layout are made (the old program keeps reading its own until the swap, so
neither ever reads the other's layout), service 0 is its old VIP:port, and its offloaded
connections (their keys' service field was the padding, 0) stay. Any other map layout (missing
maps, other sizes) is refused (AdoptError): it must be unloaded first.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from miresga import cookie
from miresga.bpf.layouts import SW_SERVICES_MAX, BackendEntry, SwConfig, SwService
from miresga.bpf.attach import attach_ingress, detach_mode, prog_name
from miresga.bpf.libbpf import (BpfError, BpfObject, Map, TcAttachment, XdpAttachment, ensure_bpffs, object_path,
                                tc_prog_id, xdp_prog_id)
from miresga.bpf.netns import ifindex as ns_ifindex
from miresga.control.config import Deployment, Host
from miresga.neighbours import NeighbourError, link_mac, resolve
from miresga.switch.controller import home_assignment
from miresga.switch.maps import (BACKENDS, HOP_INTERNAL, HOP_LOCAL, HOP_VALID, SW_F_TRACE, SwitchMaps, hop)
from miresga.switch.profiles import profile_from_config

log = logging.getLogger("miresga.switch")

PIN_BASE = Path("/sys/fs/bpf/miresga/switch")
MAP_NAMES = ("sw_config", "sw_keys", "sw_vips", "sw_vip_addrs", "sw_services", "sw_arp", "sw_backend_src", "sw_offload",
             "sw_buckets", "sw_backends", "sw_routes", "sw_counters", "sw_trace", "sw_guarded_ports", "sw_ctl_peers")
# Tables that are a function of the config alone: on adoption they are made equal to it.
CONFIG_TABLES = ("sw_vips", "sw_vip_addrs", "sw_arp", "sw_backend_src", "sw_routes", "sw_guarded_ports",
                 "sw_ctl_peers")
# The tables several VIPs added (round five): a data plane pinned before them is upgraded on adoption.
ADDED_FOR_SERVICES = ("sw_vips", "sw_vip_addrs", "sw_services")
SWITCH_PRIORITY = 10  # after anything at priority 1 that passes packets on (e.g. per-port counters)
TC_HANDLE = 1         # TcAttachment's handle


class PortError(Exception):
    """A host's switch port that cannot be set up; the message names the config key."""


@dataclass(frozen=True)
class SwitchPort:
    """One host of the fabric as the switch reaches it."""

    host: str                          # host name in the config
    ifname: str                        # switch-side interface (hosts.*.interface)
    ifindex: int                       # in the switch namespace
    port_mac: str                      # MAC of the switch-side interface
    host_mac: str                      # MAC of the host (configured or from the neighbour table)
    address: ipaddress.IPv4Interface   # the host's address with its prefix (from the config)
    gateway: ipaddress.IPv4Address     # the switch's address on that network


def host_keys(cfg: Deployment) -> Iterator[tuple[str, Host]]:
    """(dotted config key, host) of every host, for messages that name the key."""
    for section in ("clients", "frontends", "backends", "routers"):
        for i, h in enumerate(getattr(cfg.hosts, section)):
            yield f"hosts.{section}.{i}", h
    if cfg.hosts.lb is not None:
        yield "hosts.lb", cfg.hosts.lb


def ports_for(cfg: Deployment, netns: str | None, resolve_timeout: float = 3.0) -> list[SwitchPort]:
    """The switch port of every host: the interface named in the config, its MAC read from the
    kernel, and the host's MAC as configured or, for `mac: auto`, from the switch host's neighbour
    table (resolved by ARP if missing)."""
    out, errors = [], []
    for key, h in host_keys(cfg):
        if h.interface is None:
            errors.append(f"{key}.interface: not set (the switch's interface toward {h.name})")
            continue
        try:
            idx = ns_ifindex(netns, h.interface)
            port_mac = link_mac(h.interface, netns)
            host_mac = h.mac if h.mac != "auto" else resolve(str(h.ip), h.interface, netns, resolve_timeout)
        except NeighbourError as e:
            errors.append(f"{key}.mac: {h.name} ({h.ip}): {e}; or set its MAC in the config")
            continue
        except OSError:
            errors.append(f"{key}.interface: no interface {h.interface!r} on the switch host"
                          + (f" (namespace {netns})" if netns else ""))
            continue
        out.append(SwitchPort(h.name, h.interface, idx, port_mac, host_mac.lower(), h.address, h.gateway))
    if errors:
        raise PortError("\n".join(errors))
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
    maps.set_config(services=cfg.service_addresses(), key=(key.k0, key.k1), mss=sw.mss,
                    wscale=sw.window_scale, sack=sw.sack, bucket_seconds=sw.cookie.bucket_seconds,
                    flags=SW_F_TRACE if trace else 0)
    # No VIP is ever ARPed for: they lie outside every attached network (the config checks), so
    # clients and routers reach them through a gateway or a route to the switch.
    for route, h in static_routes(cfg, ports):
        maps.set_route(route, h)
    for p in ports:
        maps.set_arp(str(p.gateway), p.port_mac)
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


def static_routes(cfg: Deployment, ports: list[SwitchPort]) -> list[tuple[ipaddress.IPv4Network, object]]:
    """The routing table: every host by its /32 (its own MAC), every attached network (to its one
    host; to the kernel when several share it, or none is listed there), every gateway to the
    kernel, every router's destinations to the router. Clients and routers are outside the fabric;
    the rest is internal (never "to client")."""
    outside = {h.name for h in (*cfg.hosts.clients, *cfg.hosts.routers)}
    by_host = {p.host: p for p in ports}
    routes: dict[ipaddress.IPv4Network, object] = {}
    per_net: dict[ipaddress.IPv4Network, list[SwitchPort]] = {}
    for p in ports:
        flags = HOP_VALID if p.host in outside else HOP_VALID | HOP_INTERNAL
        per_net.setdefault(p.address.network, []).append(p)
        routes[ipaddress.IPv4Network(f"{p.address.ip}/32")] = hop(p.ifindex, p.port_mac, p.host_mac, flags)
        routes[ipaddress.IPv4Network(f"{p.gateway}/32")] = hop(p.ifindex, p.port_mac, p.host_mac,
                                                               HOP_VALID | HOP_LOCAL)
    for net, ps in per_net.items():
        p = ps[0]
        flags = HOP_VALID if p.host in outside else HOP_VALID | HOP_INTERNAL
        if len(ps) > 1:
            flags |= HOP_LOCAL  # addresses not listed: the switch host's kernel forwards (ARP)
        routes.setdefault(net, hop(p.ifindex, p.port_mac, p.host_mac, flags))
    for r in cfg.hosts.routers:
        p = by_host[r.name]
        for net in r.routes:
            routes.setdefault(net, hop(p.ifindex, p.port_mac, p.host_mac, HOP_VALID))
    return list(routes.items())


def guarded_ports(cfg: Deployment) -> list[int]:
    """TCP ports of the switch's own addresses that only front-ends may reach (the metrics port
    too: should it listen on a gateway, clients still must not reach it)."""
    return sorted({cfg.switch.control.port, cfg.switch.metrics_port, *cfg.switch.control.guard_ports})


def frontend_hops(cfg: Deployment, ports: list[SwitchPort]) -> dict:
    by_host = {p.host: p for p in ports}
    return {h.name: hop(by_host[h.name].ifindex, by_host[h.name].port_mac, by_host[h.name].host_mac)
            for h in cfg.hosts.frontends}


class SwitchDataplane:
    """Context manager: load (or adopt a pinned data plane), fill, attach on every port; close
    detaches, unpins and unloads, or with keep=True leaves it running for the next start."""

    def __init__(self, cfg: Deployment, netns: str | None, ports: list[SwitchPort], *, trace: bool = False,
                 pin_dir: Path | None | bool = True, adopt: bool = False):
        """`adopt`: a data plane pinned at `pin_dir` is taken over (see the module doc) instead of
        refused; `self.adopted` says which happened, `self.reconciled` what changed."""
        self.cfg, self.netns, self.ports, self.trace = cfg, netns, list(ports), trace
        self.attachments: list[TcAttachment | XdpAttachment] = []
        self.port_modes: dict[str, str] = {}   # interface -> "xdp" | "tc", as attached
        self.xdp_obj: BpfObject | None = None
        self.pin_dir = default_pin_dir(netns) if pin_dir is True else (pin_dir or None)
        self._pinned = False
        self.adopted = False
        self.reconciled: dict[str, int] = {}
        capacity = profile_from_config(cfg.switch).capacity
        old = None
        if self.pin_dir and self.pin_dir.exists():
            if not adopt:
                raise FileExistsError(f"{self.pin_dir}: a switch data plane is already loaded for {netns}")
            old = PinnedMaps(self.pin_dir, upgrade=True)   # AdoptError if its maps are not this program's
            pinned_capacity = old.map("sw_offload").max_entries
            if pinned_capacity != capacity:
                old.close()
                raise AdoptError(f"the running data plane's offload table holds {pinned_capacity} entries, the "
                                 f"config asks for {capacity}: a table cannot be resized in place; `miresga switch "
                                 "--unload` first (offloaded connections fall back to the slow path)")
        try:
            try:
                # upgrading, sw_config is made anew too: its layout changed (see the module doc)
                self.obj = BpfObject(object_path("switch"), max_entries={"sw_offload": capacity},
                                     reuse={n: old.map(n) for n in MAP_NAMES
                                            if old.has(n) and not (old.pre_services and n == "sw_config")}
                                     if old else None)
            except BpfError as e:
                if old is None:
                    raise
                raise AdoptError(f"cannot load the new program on the running data plane's maps ({e}): their "
                                 "layout changed; `miresga switch --unload` first") from None
            self.maps = SwitchMaps(self.obj)
            upgrade = old is not None and old.pre_services
            if old is not None:
                self.adopted = True
                self._pinned = True
                if upgrade:
                    upgrade_pre_services(self.maps, old.map("sw_config"))
                self.reconciled = reconcile(self.maps, cfg, self.ports, trace)
            else:
                fill_static_tables(self.maps, cfg, self.ports, trace)
                if self.pin_dir:
                    ensure_bpffs()
                    self._pinned = True
                    for name in MAP_NAMES:
                        self.obj.map(name).pin(self.pin_dir / name)
            prog = self.obj.program("switch_ingress")
            ifaces = {p.ifindex: p.ifname for p in self.ports}   # hosts may share an interface
            xdp_prog = None
            if any(cfg.switch_attach(name) != "tc" for name in ifaces.values()):
                self.xdp_obj = BpfObject(object_path("switch_xdp"), max_entries={"sw_offload": capacity},
                                         reuse={n: self.obj.map(n) for n in MAP_NAMES})
                xdp_prog = self.xdp_obj.program("switch_ingress")
            for ifx, name in ifaces.items():
                # replace: an adopted data plane's old program gives way in one step, per port
                a, mode = attach_ingress(netns, ifx, name, cfg.switch_attach(name), prog, xdp_prog,
                                         priority=SWITCH_PRIORITY, replace=self.adopted, who="switch")
                self.attachments.append(a)
                self.port_modes[name] = mode
                # an earlier start attached in the other mode: that program goes (XDP would
                # otherwise pass packets on to a second switch program in TC)
                _detach_switch_mode(netns, ifx, "tc" if mode == "xdp" else "xdp")
            if upgrade:   # pinned last: a start that died before this upgrades again
                (self.pin_dir / "sw_config").unlink()
                for name in ("sw_config", *ADDED_FOR_SERVICES):
                    self.obj.map(name).pin(self.pin_dir / name)
                log.info("upgraded a data plane pinned before several VIPs: service 0 = %s:%d, %d offloaded "
                         "connections kept", *self.maps.get_services(1)[0], len(list(self.maps.offload_items())))
            log.info("switch attached: %s", ", ".join(f"{n} {m}" for n, m in self.port_modes.items()))
        except BaseException:
            self.close(keep=self.adopted)
            raise
        finally:
            if old is not None:
                old.close()

    @property
    def frontend_hops(self) -> dict:
        return frontend_hops(self.cfg, self.ports)

    def close(self, keep: bool = False) -> None:
        """`keep`: leave the program attached and the maps pinned (a restart adopts them)."""
        if not keep:
            for a in reversed(self.attachments):
                a.detach()
            if self._pinned and self.pin_dir:
                shutil.rmtree(self.pin_dir, ignore_errors=True)
        self.attachments.clear()
        self._pinned = False
        if getattr(self, "xdp_obj", None) is not None:
            self.xdp_obj.close()
            self.xdp_obj = None
        if getattr(self, "obj", None) is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> "SwitchDataplane":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _detach_switch_mode(netns: str | None, idx: int, mode: str) -> bool:
    return detach_mode(netns, idx, mode, "switch_ingress", handle=TC_HANDLE, priority=SWITCH_PRIORITY)


def attached_modes(netns: str | None, ifnames) -> dict[str, str]:
    """How the switch program runs on each interface, read from the kernel (for `miresga status`):
    "xdp", "tc" or "none"; interfaces that do not exist here are left out."""
    out = {}
    for name in dict.fromkeys(ifnames):
        try:
            idx = ns_ifindex(netns, name)
        except OSError:
            continue
        xdp = xdp_prog_id(netns, idx)
        tc = tc_prog_id(netns, idx, "ingress", TC_HANDLE, SWITCH_PRIORITY)
        out[name] = ("xdp" if xdp is not None and prog_name(xdp) == "switch_ingress" else
                     "tc" if tc is not None and prog_name(tc) == "switch_ingress" else "none")
    return out


def detach_switch(netns: str | None, ifname: str) -> bool:
    """Remove the switch program from `ifname`'s ingress (TC or XDP) if it is there (and only it)."""
    try:
        idx = ns_ifindex(netns, ifname)
    except OSError:
        return False
    tc = _detach_switch_mode(netns, idx, "tc")
    return _detach_switch_mode(netns, idx, "xdp") or tc


class AdoptError(Exception):
    """A pinned data plane that this start cannot take over; the message says what to do."""


class _Recorder:
    """Duck-types a Map: keeps the writes (key -> value) that fill_static_tables makes."""

    def __init__(self, m: Map):
        self.key_size, self.value_size, self.name = m.key_size, m.value_size, m.name
        self.writes: dict[bytes, bytes] = {}

    def update(self, key, value, flags: int = 0) -> None:
        self.writes[bytes(key)] = bytes(value)

    def keys(self) -> list[bytes]:
        return list(self.writes)

    def delete(self, key) -> bool:
        return self.writes.pop(bytes(key), None) is not None


class _RecordingObject:
    def __init__(self, real: BpfObject):
        self.recorders = {n: _Recorder(real.map(n)) for n in MAP_NAMES}

    def map(self, name: str) -> _Recorder:
        return self.recorders[name]


def reconcile(maps: SwitchMaps, cfg: Deployment, ports: list[SwitchPort], trace: bool = False) -> dict[str, int]:
    """Make the configuration tables of a running data plane equal to what `cfg` gives, leaving
    the offload table and the counters alone, except offload entries of a back-end slot that now
    names another back-end (they would reach the wrong server). The buckets are the controller's
    (it writes them at start). Returns the number of entries written or removed per table."""
    rec = _RecordingObject(maps.obj)
    fill_static_tables(SwitchMaps(rec), cfg, ports, trace)
    changed: dict[str, int] = {}
    stale_svcs, n = set(), 0   # a service index whose VIP:port changed loses its offloaded connections
    want = rec.recorders["sw_services"].writes
    for svc in range(SW_SERVICES_MAX):
        k = struct.pack("=I", svc)
        cur, new = maps.services.lookup(k), want[k]
        if cur == new:
            continue
        if cur is not None and SwService.from_buffer_copy(cur).vip:
            stale_svcs.add(svc)
        maps.services.update(k, new)
        n += 1
    changed["sw_services"] = n
    for name in CONFIG_TABLES:
        real, want = maps.obj.map(name), rec.recorders[name].writes
        n = 0
        for k in list(real.keys()):
            if k not in want:
                real.delete(k)
                n += 1
        for k, v in want.items():
            if real.lookup(k) != v:
                real.update(k, v)
                n += 1
        changed[name] = n
    # Back-end slots: a slot whose ip:port changed loses its offloaded connections.
    want = rec.recorders["sw_backends"].writes
    stale, n = set(), 0
    for i in range(BACKENDS):
        k = struct.pack("=I", i)
        cur = maps.backends.lookup(k)
        new = want.get(k, bytes(ctypes.sizeof(BackendEntry)))
        if cur == new:
            continue
        if cur is not None:
            a, b = BackendEntry.from_buffer_copy(cur), BackendEntry.from_buffer_copy(new)
            if (a.ip, a.port) != (b.ip, b.port) and a.ip:
                stale.add(i)
        maps.backends.update(k, new)
        n += 1
    changed["sw_backends"] = n
    dropped = {"back-end": 0, "service": 0}
    if stale or stale_svcs:
        for (ip, port, svc), e in list(maps.offload_items()):
            why = "back-end" if e.backend in stale else "service" if svc in stale_svcs else None
            if why:
                maps.offload_delete(ip, port, svc)
                dropped[why] += 1
    changed["sw_offload (back-end changed)"] = dropped["back-end"]
    changed["sw_offload (service changed)"] = dropped["service"]
    # Config slot: number of services, TCP options, trace flag. The cookie keys stay (the
    # controller rotates them); the slot in use is kept, so a handshake in flight keeps its key.
    k0 = struct.pack("=I", 0)
    c = SwConfig.from_buffer_copy(rec.recorders["sw_config"].writes[k0])
    c.key_slot = maps.get_config().key_slot
    maps.config.update(k0, c)
    log.info("data plane reconciled with the config: %s", ", ".join(f"{k} {v}" for k, v in changed.items()))
    return changed


def upgrade_pre_services(maps: SwitchMaps, old_config: Map) -> None:
    """Before `reconcile`, on the new program's fresh sw_config and sw_services: the key slot in
    use, and service 0 = the VIP:port that the old sw_config held (then: key_slot u32, vip be32,
    vport be16, ...). `reconcile` then keeps service 0's offloaded connections when the config's
    default VIP:port is the same, drops them when it changed, and writes the rest of sw_config."""
    k0 = struct.pack("=I", 0)
    raw = old_config.lookup(k0)
    key_slot, vip, vport = struct.unpack_from("=IIH", raw, 0)
    maps.config.update(k0, SwConfig(key_slot=key_slot))
    maps.services.update(k0, SwService(vip=vip, vport=vport))


class PinnedMaps:
    """The maps of a data plane loaded by another process (duck-types BpfObject.map).
    `upgrade`: one pinned before several VIPs is accepted (`pre_services`; its three new tables
    are missing, for the adopting load to make)."""

    def __init__(self, pin_dir: Path, upgrade: bool = False):
        if not (pin_dir / "sw_config").exists():
            raise FileNotFoundError(f"{pin_dir}: no switch data plane pinned there")
        missing = [n for n in MAP_NAMES if not (pin_dir / n).exists()]
        self.pre_services = upgrade and sorted(missing) == sorted(ADDED_FOR_SERVICES)
        if missing and not self.pre_services:  # pinned by another version
            raise AdoptError(f"the data plane pinned at {pin_dir} has another map layout (no {', '.join(missing)}): "
                             "`miresga switch --unload` first (offloaded connections fall back to the slow path)")
        self._maps = {n: Map.from_pin(pin_dir / n) for n in MAP_NAMES if n not in missing}

    def has(self, name: str) -> bool:
        return name in self._maps

    def map(self, name: str) -> Map:
        return self._maps[name]

    def close(self) -> None:
        for m in self._maps.values():
            m.close()


def open_pinned(netns: str | None, pin_dir: Path | None = None) -> tuple[SwitchMaps, PinnedMaps]:
    pm = PinnedMaps(pin_dir or default_pin_dir(netns))
    return SwitchMaps(pm), pm
