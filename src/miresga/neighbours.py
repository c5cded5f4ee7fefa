"""MAC addresses as the kernel knows them: an interface's own, and a neighbour's (ARP).

The switch writes both into every frame it forwards, and a front-end into every frame it sends
to the switch; on real hosts neither can be derived from an address, so they are read from the
kernel of the host (or namespace) the process runs in: `ip -j link` and `ip -j neigh`. A missing
neighbour is resolved by sending it one UDP datagram (the kernel ARPs for it) and reading again.
"""

from __future__ import annotations

import json
import socket
import time

from miresga.bpf import netns as nsx

USABLE = {"PERMANENT", "REACHABLE", "STALE", "DELAY", "PROBE", "NOARP"}
DISCARD_PORT = 9


class NeighbourError(OSError):
    """A MAC the kernel does not know (and could not learn in time)."""


def _ip_json(netns: str | None, *argv: str) -> list[dict]:
    p = nsx.run(netns, "ip", "-j", *argv, check=False)
    if p.returncode != 0:
        raise NeighbourError(f"ip {' '.join(argv)}: {(p.stderr or '').strip()}")
    return json.loads(p.stdout or "[]")


def link_mac(ifname: str, netns: str | None = None) -> str:
    """The MAC of interface `ifname`."""
    try:
        links = _ip_json(netns, "link", "show", "dev", ifname)
    except NeighbourError:
        raise NeighbourError(f"no interface {ifname!r}" + (f" in namespace {netns}" if netns else "")) from None
    mac = links[0].get("address") if links else None
    if not mac:
        raise NeighbourError(f"interface {ifname!r} has no MAC address")
    return mac


def lookup(ip: str, ifname: str, netns: str | None = None) -> str | None:
    """The neighbour table's MAC for `ip` on `ifname`, if the entry is usable."""
    for e in _ip_json(netns, "neigh", "show", "to", ip, "dev", ifname):
        states = set(e.get("state", []))
        if e.get("lladdr") and states & USABLE:
            return e["lladdr"]
    return None


def _poke(ip: str, ifname: str, netns: str | None) -> None:
    """One datagram to the discard port: the kernel resolves the next hop by ARP first."""
    with nsx.in_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            s.sendto(b"", (ip, DISCARD_PORT))
        except OSError:
            pass  # unreachable or not permitted: the lookup below says what is missing
        finally:
            s.close()


def resolve(ip: str, ifname: str, netns: str | None = None, timeout: float = 3.0) -> str:
    """The MAC of neighbour `ip` behind `ifname`: from the table, else after an ARP round."""
    mac = lookup(ip, ifname, netns)
    deadline = time.monotonic() + timeout
    while mac is None and time.monotonic() < deadline:
        _poke(ip, ifname, netns)
        time.sleep(0.1)
        mac = lookup(ip, ifname, netns)
    if mac is None:
        raise NeighbourError(f"no ARP answer from {ip} on {ifname} within {timeout:.0f} s (is the host up and "
                             "on that link?)")
    return mac
