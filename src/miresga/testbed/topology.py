"""Names, addresses and MACs of one testbed instance, derived from the config (pure).

Every host is a namespace `mg<inst>-<host>` with one interface `eth0`; its peer is the switch
port `p-<host>` inside the switch namespace. The switch port holds the first address of the
host's network (the host's gateway). MACs are derived from addresses so that every part (switch
tables, front-end frames) can compute them without asking: host 02:4d:<ip>, switch port 02:53:<gw ip>.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from miresga.control.config import Deployment, Host

HOST_IFACE = "eth0"


def mac_for(prefix: int, ip: ipaddress.IPv4Address) -> str:
    return ":".join(f"{b:02x}" for b in (0x02, prefix, *ip.packed))


def host_mac(ip: ipaddress.IPv4Address) -> str:
    return mac_for(0x4D, ip)


def switch_port_mac(gateway: ipaddress.IPv4Address) -> str:
    return mac_for(0x53, gateway)


def port_iface(host: str) -> str:
    """The testbed's name for the switch's veth toward `host` (hosts.*.interface in its config)."""
    return f"p-{host}"


def new_instance_id() -> str:
    return secrets.token_hex(2)


@dataclass(frozen=True)
class Node:
    """One host of the testbed and the switch port that faces it."""

    role: str              # client | frontend | backend | lb
    name: str              # host name from the config
    netns: str             # namespace of the host
    iface: str             # host-side interface (eth0)
    address: ipaddress.IPv4Interface
    mac: str
    port_iface: str        # switch-side interface p-<name>
    gateway: ipaddress.IPv4Address
    port_mac: str

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return self.address.ip

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.address.network


@dataclass(frozen=True)
class Topology:
    instance: str
    switch_netns: str
    nodes: tuple[Node, ...]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no host {name!r} in this testbed")

    def by_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    @property
    def namespaces(self) -> list[str]:
        return [self.switch_netns, *(n.netns for n in self.nodes)]


def ns_name(instance: str, host: str) -> str:
    return f"mg{instance}-{host}"


def build_topology(cfg: Deployment, instance: str) -> Topology:
    def node(role: str, h: Host) -> Node:
        gw = h.gateway
        return Node(role, h.name, ns_name(instance, h.name), HOST_IFACE, h.address, host_mac(h.ip),
                    h.interface or port_iface(h.name), gw, switch_port_mac(gw))

    nodes = [*(node("client", h) for h in cfg.hosts.clients),
             *(node("frontend", h) for h in cfg.hosts.frontends),
             *(node("backend", h) for h in cfg.hosts.backends),
             node("lb", cfg.hosts.lb)]
    return Topology(instance, ns_name(instance, cfg.switch.name), tuple(nodes))
