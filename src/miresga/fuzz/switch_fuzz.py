"""Fuzz target: the switch data plane (bpf/switch.bpf.c, `switch_ingress`) through BPF_PROG_TEST_RUN.

Tables are filled from the config exactly as the loader does (`fill_static_tables`), on made-up
port ifindexes, plus a few offload entries. A config with one service gets two more (`fuzz_services`:
another port of the VIP address, a second address), so that clients talk to several VIPs and
some client ports hold entries of two services at once, on two back-ends. Inputs are valid frames of every kind the switch
meets (client SYN, handshake ACK with a real cookie, requests, ACKs of offloaded connections,
back-end segments matching, mismatching or without an entry, routed traffic, the control port,
ARP, other protocols), arriving on their sender's port or a wrong one, then mutated.

Checked on every input:
- counted: exactly one decision or drop counter moves (plus `offload_mismatch` before its
  hand-off), and it agrees with the verdict (a drop is SHOT, `to_kernel` is OK, the rest redirect);
- addresses: a redirect leaves on a configured port with that port's MACs; to a front-end only the
  bucket's one; to a back-end only the one the offload entry of (client ip:port, the VIP:port's
  service) names, at its service ip:port, and only from the client's own port; to a client only
  from the back-end of one of the client ip:port's entries, on its own port, as that entry's
  service's VIP:port; routed only where the routes say; to the kernel only for the switch's own
  addresses (a guarded port only from a front-end on its port) or non-IPv4;
- bytes: only the fields the decision rewrites change (MACs; the address, port and checksums of
  an offload rewrite); sequence numbers never;
- checksums: rewrites keep the IP and TCP checksum residues (a valid checksum stays valid, a bad
  one is not laundered); a SYN-ACK is whole and valid, and its ISN is a cookie the front-end
  accepts;
- state: the data plane never adds or removes offload entries (every 256 inputs).
"""

from __future__ import annotations

import ipaddress
import random
import struct

from miresga import cookie
from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.control.config import Deployment, Endpoint, Service
from miresga.fuzz.bpfrun import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, ArrayReader, FastRunner, deltas
from miresga.fuzz.harness import Harness, Input, Violation
from miresga.fuzz.mutate import Pools, mutate
from miresga.fuzz.wire import (ACK, ETH_P_IP, FIN, PSH, RST, SYN, Layout, arp_frame, ip_residue, l3_frame,
                               l4_residue, tcp_fields, tcp_frame)
from miresga.switch.controller import home_assignment
from miresga.switch.dataplane import SwitchPort, fill_static_tables, guarded_ports
from miresga.testbed.topology import host_mac, switch_port_mac
from miresga.switch.hashing import hash8
from miresga.switch.maps import HOP_INTERNAL, HOP_LOCAL, Counter, SwitchMaps, counter_names, drop_index, mac_bytes

FIRST_IFINDEX = 11
UNKNOWN_IFINDEX = 999
EXTERNAL = int(ipaddress.IPv4Address("203.0.113.7"))   # a client with no route (unknown source)
OFFLOADED_PORTS = range(40000, 40012)
PLAIN_PORTS = range(41000, 41016)
FORWARDS = {Counter.TO_FRONTEND, Counter.TO_BACKEND, Counter.TO_CLIENT, Counter.ROUTED}
REDIRECTS = FORWARDS | {Counter.SYNACK, Counter.ARP_REPLY}
DROPS = {drop_index(r) for r in DropReason} | {int(Counter.HANDSHAKE_ACK)}
SYN_OPTIONS = [b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x03\x07",
               b"\x02\x04\x05\xb4\x01\x03\x03\x0e\x01\x01\x04\x02", b"\x02\x04\x02\x18", b"",
               b"\x01\x03\x03\x00", b"\x02\x04\xff\xff\x04\x02"]


def ip_int(a) -> int:
    return int(ipaddress.IPv4Address(a))


def fuzz_services(cfg: Deployment) -> Deployment:
    """`cfg` with at least three services: if it has only the default one, add the VIP address on
    port 8443 and the next address on the VIP's port."""
    if cfg.services:
        return cfg
    vip = cfg.vip
    more = [Service(name="fuzz-port", vip=Endpoint(address=vip.address, port=8443)),
            Service(name="fuzz-addr", vip=Endpoint(address=vip.address + 1, port=vip.port))]
    return cfg.model_copy(update={"services": more})


class SwitchHarness(Harness):
    name = "switch"

    def __init__(self, cfg: Deployment, offload_max: int = 1024):
        cfg = fuzz_services(cfg)
        super().__init__(cfg)
        hosts = cfg.hosts.all()
        # MACs as the testbed sets them (the harness has no interfaces to read them from)
        self.ports = [SwitchPort(h.name, f"p-{h.name}", FIRST_IFINDEX + i, switch_port_mac(h.gateway), host_mac(h.ip),
                                 h.address, h.gateway) for i, h in enumerate(hosts)]
        self.by_if = {p.ifindex: p for p in self.ports}
        self.by_host = {p.host: p for p in self.ports}
        self.obj = BpfObject(object_path("switch"), max_entries={"sw_offload": offload_max})
        try:
            self.maps = SwitchMaps(self.obj)
            fill_static_tables(self.maps, cfg, self.ports, trace=True)
            self.runner = FastRunner(self.obj.program("switch_ingress"))
            self.counters = ArrayReader(self.obj.map("sw_counters"))
            self._setup_model(cfg)
        except BaseException:
            self.obj.close()
            raise
        self.names = counter_names()
        self._last: dict = {}

    def _setup_model(self, cfg: Deployment) -> None:
        clients = {h.name for h in cfg.hosts.clients}
        self.services = cfg.vip_endpoints()
        self.svc_of = {vp: svc for svc, vp in enumerate(self.services)}
        self.vip_addrs = sorted({ip for ip, _ in self.services})
        routes = []
        for p in self.ports:
            net = p.address.network
            routes.append((int(net.network_address), int(net.netmask), net.prefixlen, p.ifindex,
                           0 if p.host in clients else HOP_INTERNAL))
            routes.append((ip_int(p.gateway), 0xFFFFFFFF, 32, p.ifindex, HOP_LOCAL))
        self.routes = sorted(routes, key=lambda r: -r[2])
        self.gateways = {ip_int(p.gateway): mac_bytes(p.port_mac) for p in self.ports}
        self.arp_targets = dict(self.gateways)  # never the VIP: it is routed, not on a link
        self.backends = [(ip_int(b.ip), b.port, self.by_host[b.name].ifindex) for b in cfg.hosts.backends]
        self.backend_src = {(ip, port): i for i, (ip, port, _) in enumerate(self.backends)}
        self.buckets = [self.by_host[n].ifindex for n in home_assignment([f.name for f in cfg.hosts.frontends])]
        self.guarded = set(guarded_ports(cfg))
        self.ctl_peers = {ip_int(f.ip): self.by_host[f.name].ifindex for f in cfg.hosts.frontends}
        self.client_ips = [ip_int(h.ip) for h in cfg.hosts.clients]
        self.client_ips += [ip_int(ipaddress.IPv4Address(self.client_ips[0]) + 75), EXTERNAL]
        self.fe_ips = [ip_int(f.ip) for f in cfg.hosts.frontends]
        # (client ip, client port, svc) -> back-end. Every offloaded port has a default-service
        # entry; every other one also an entry of another service, on another back-end (never
        # the same one: a back-end cannot hold one 4-tuple twice, the front-ends see to it).
        self.offload: dict[tuple[int, int, int], int] = {}
        nb, ns = len(self.backends), len(self.services)
        for ip in (self.client_ips[0], EXTERNAL):
            for i, port in enumerate(OFFLOADED_PORTS):
                entries = [(0, i % nb)]
                if ns > 1 and nb > 1 and i % 2:
                    entries.append((1 + i // 2 % (ns - 1), (i + 1) % nb))
                for svc, b in entries:
                    self.offload[(ip, port, svc)] = b
                    assert self.maps.offload_insert(ip, port, b, svc=svc) == 0
        sw = cfg.switch
        self.key = cookie.keys_at(sw.cookie.secret, cookie.tai_seconds(), sw.cookie.rotate_seconds)
        self.bucket_seconds = sw.cookie.bucket_seconds
        ips = [*self.vip_addrs, *self.gateways, *self.client_ips, *self.fe_ips, *(b[0] for b in self.backends)]
        ports = [*sorted({p for _, p in self.services}), *self.guarded, 8080, 22, *OFFLOADED_PORTS[:3],
                 *PLAIN_PORTS[:3], 0, 65535]
        macs = [mac_bytes(p.port_mac) for p in self.ports] + [mac_bytes(p.host_mac) for p in self.ports]
        self.pools = Pools(ips, ports, macs)

    def close(self) -> None:
        self.obj.close()

    # ------------------------------------------------------------------ model

    def route(self, ip: int):
        for net, mask, _plen, ifx, flags in self.routes:
            if ip & mask == net:
                return ifx, flags
        return None

    def arrival(self, src: int) -> int:
        r = self.route(src)
        return r[0] if r else self.by_host[self.cfg.hosts.clients[0].name].ifindex

    def macs_to_switch(self, ifindex: int) -> tuple[bytes, bytes]:
        p = self.by_if[ifindex]
        return mac_bytes(p.host_mac), mac_bytes(p.port_mac)

    # ------------------------------------------------------------------ inputs

    def generate(self, rng: random.Random) -> Input:
        kind = rng.choices(KINDS, WEIGHTS)[0]
        frame, src = getattr(self, "_gen_" + kind)(rng)
        ifx = self.arrival(src)
        r = rng.random()
        if r < 0.08:
            ifx = rng.choice(self.ports).ifindex
        elif r < 0.10:
            ifx = UNKNOWN_IFINDEX
        if rng.random() < 0.75:
            m = mutate(rng, bytes(frame), self.pools)
            return Input("switch_ingress", bytes(m.data), ifx, [kind, *m.names])
        return Input("switch_ingress", bytes(frame), ifx, [kind, "valid"])

    def _client(self, rng):
        ip = rng.choice(self.client_ips)
        port = rng.choice(OFFLOADED_PORTS) if rng.random() < 0.5 else rng.choice(PLAIN_PORTS)
        return ip, port

    def _from(self, src: int) -> tuple[bytes, bytes]:
        return self.macs_to_switch(self.arrival(src))

    def _gen_syn(self, rng):
        ip, port = self._client(rng)
        smac, dmac = self._from(ip)
        vip, vport = rng.choice(self.services)
        return tcp_frame(smac, dmac, ip, vip, port, vport, rng.getrandbits(32), 0, SYN, 64240,
                         rng.choice(SYN_OPTIONS)), ip

    def _cookie_ack(self, rng, ip, port, vip, vport) -> int:
        b = cookie.bucket_of(cookie.tai_seconds(), self.bucket_seconds)
        s = cookie.make_cookie(rng.choice(self.key), ip, port, vip, vport, b - rng.choice([0, 0, 1]),
                               rng.choice([536, 1460]), rng.choice([None, 7]), rng.random() < 0.5)
        return (s + 1) & 0xFFFFFFFF

    def _gen_hs_ack(self, rng):
        ip, port = self._client(rng)
        smac, dmac = self._from(ip)
        vip, vport = rng.choice(self.services)
        return tcp_frame(smac, dmac, ip, vip, port, vport, rng.getrandbits(32),
                         self._cookie_ack(rng, ip, port, vip, vport), ACK, 502), ip

    def _gen_c_data(self, rng):
        ip, port = self._client(rng)
        smac, dmac = self._from(ip)
        vip, vport = rng.choice(self.services)
        ack = self._cookie_ack(rng, ip, port, vip, vport) if rng.random() < 0.5 else rng.getrandbits(32)
        return tcp_frame(smac, dmac, ip, vip, port, vport, rng.getrandbits(32), ack, ACK | PSH, 502, b"",
                         b"GET /download/1m HTTP/1.1\r\nHost: a\r\n\r\n"), ip

    def _gen_c_ack(self, rng):
        ip, port = self._client(rng)
        smac, dmac = self._from(ip)
        vip, vport = rng.choice(self.services)
        opts = rng.choice([b"", b"\x01\x01\x05\x0a" + rng.randbytes(8), b"\x01\x01\x08\x0a" + rng.randbytes(8)])
        return tcp_frame(smac, dmac, ip, vip, port, vport, rng.getrandbits(32), rng.getrandbits(32),
                         ACK, rng.choice([502, 0, 65535]), opts), ip

    def _gen_c_close(self, rng):
        ip, port = self._client(rng)
        smac, dmac = self._from(ip)
        vip, vport = rng.choice(self.services)
        return tcp_frame(smac, dmac, ip, vip, port, vport, rng.getrandbits(32), rng.getrandbits(32),
                         rng.choice([FIN | ACK, RST, RST | ACK, FIN]), 502), ip

    def _entries(self, ip: int, port: int) -> dict[int, int]:
        """svc -> back-end of the client ip:port's offload entries."""
        return {svc: b for svc in range(len(self.services)) if (b := self.offload.get((ip, port, svc))) is not None}

    def _gen_b_seg(self, rng):
        ip, port = self._client(rng)
        own = list(self._entries(ip, port).values())   # mostly an entry's own back-end, else any
        b = rng.choice(own) if own and rng.random() >= 0.3 else rng.randrange(len(self.backends))
        bip, bport, _ = self.backends[b]
        smac, dmac = self._from(bip)
        flags = rng.choice([ACK | PSH, ACK | PSH, ACK, FIN | ACK, RST, SYN | ACK])
        payload = rng.randbytes(rng.choice([0, 100, 1448])) if flags & PSH else b""
        return tcp_frame(smac, dmac, bip, ip, bport, port, rng.getrandbits(32), rng.getrandbits(32), flags, 500,
                         b"", payload), bip

    def _gen_routed(self, rng):
        r = rng.random()
        bip, bport, _ = rng.choice(self.backends)
        if r < 0.25:      # a client to a back-end's direct port
            src, sport = rng.choice(self.client_ips), rng.choice(PLAIN_PORTS)
            dst, dport = bip, 8080
        elif r < 0.5:     # a front-end's splice SYN and relayed segments (client's address, fe's port)
            src, sport = rng.choice(self.client_ips), rng.choice(PLAIN_PORTS)
            dst, dport = bip, bport
            smac, dmac = self.macs_to_switch(self.by_host[rng.choice(self.cfg.hosts.frontends).name].ifindex)
            return tcp_frame(smac, dmac, src, dst, sport, dport, rng.getrandbits(32), rng.getrandbits(32),
                             rng.choice([SYN, ACK | PSH, ACK]), 502), self.fe_ips[0]
        elif r < 0.75:    # a front-end to a client as VIP:port
            fe = rng.choice(self.cfg.hosts.frontends)
            smac, dmac = self.macs_to_switch(self.by_host[fe.name].ifindex)
            ip, port = self._client(rng)
            vip, vport = rng.choice(self.services)
            return tcp_frame(smac, dmac, vip, ip, vport, port, rng.getrandbits(32), rng.getrandbits(32),
                             rng.choice([ACK | PSH, ACK, FIN | ACK, RST]), 502, b"", b"HTTP/1.1 200 OK\r\n"), \
                ip_int(fe.ip)
        else:             # health checks: a front-end to a back-end's direct port and back
            src, sport, dst, dport = rng.choice(self.fe_ips), 50000, bip, 8080
            if rng.random() < 0.5:
                src, sport, dst, dport = dst, dport, src, sport
        smac, dmac = self._from(src)
        return tcp_frame(smac, dmac, src, dst, sport, dport, rng.getrandbits(32), rng.getrandbits(32), ACK, 502), src

    def _gen_ctl(self, rng):
        src = rng.choice([*self.fe_ips, *self.client_ips])
        dst = rng.choice([*self.gateways, *self.vip_addrs])
        dport = rng.choice([*self.guarded, 22, 50052])
        smac, dmac = self._from(src)
        return tcp_frame(smac, dmac, src, dst, rng.randrange(1024, 65536), dport, rng.getrandbits(32), 0, SYN,
                         64240, SYN_OPTIONS[0]), src

    def _gen_arp(self, rng):
        src = rng.choice(self.client_ips[:2] + self.fe_ips)
        smac, dmac = self._from(src)
        tpa = rng.choice([*self.vip_addrs, *self.gateways, src ^ 0x55])
        op = 1 if rng.random() < 0.85 else 2
        return arp_frame(smac, b"\xff" * 6 if op == 1 else dmac, op, smac, src, b"\0" * 6, tpa), src

    def _gen_other(self, rng):
        src = rng.choice(self.client_ips + self.fe_ips)
        smac, dmac = self._from(src)
        dst = rng.choice([*self.vip_addrs, *self.gateways, self.backends[0][0]])
        r = rng.random()
        if r < 0.4:
            return l3_frame(smac, dmac, src, dst, 17, struct.pack("!HHHH", 5353, 80, 12, 0) + b"abcd"), src
        if r < 0.8:
            return l3_frame(smac, dmac, src, dst, 1, b"\x08\x00\xf7\xff\x00\x00\x00\x00"), src
        return bytearray(dmac + smac + b"\x86\xdd" + b"\x60" + b"\0" * 39 + b"\0" * 20), src

    # ------------------------------------------------------------------ checks

    def execute(self, inp: Input) -> list[Violation]:
        before = self.counters.read()
        verdict, out = self.runner.run(inp.data, inp.ifindex)
        d = deltas(before, self.counters.read())
        self._last = {"ifindex": inp.ifindex}
        return self.check(inp, verdict, out, d)

    def check(self, inp: Input, verdict: int, out: bytes, d: dict[int, int]) -> list[Violation]:
        st = self.stats[inp.entry]
        self.inputs[inp.entry] += 1
        v: list[Violation] = []
        if not d:
            return [Violation("uncounted", f"verdict {verdict} moved no counter")]
        if any(n != 1 for n in d.values()) or len(d) > 2 or (len(d) == 2 and Counter.OFFLOAD_MISMATCH not in d):
            return [Violation("uncounted", f"counters moved {self._named(d)}")]
        primary = next(i for i in d if i != Counter.OFFLOAD_MISMATCH or len(d) == 1)
        st[self.names.get(primary, str(primary))] += 1
        want = TC_ACT_SHOT if primary in DROPS else TC_ACT_OK if primary == Counter.TO_KERNEL else \
            TC_ACT_REDIRECT if primary in REDIRECTS else None
        if want is None or verdict != want or (len(d) == 2 and primary not in (Counter.TO_FRONTEND,
                                                                                  drop_index(DropReason.NO_FRONTEND))):
            return [Violation("verdict", f"verdict {verdict} with counters {self._named(d)}")]
        if verdict == TC_ACT_SHOT:
            return v
        f = inp.data
        lay = Layout(f)
        if primary == Counter.TO_KERNEL:
            if out != f:
                v.append(Violation("bytes", "a frame for the kernel was changed"))
            if lay.ethertype == ETH_P_IP:
                v += self._check_local(inp, lay)
            return v
        if primary == Counter.ARP_REPLY:
            tpa = int.from_bytes(f[38:42], "big")
            # to the sender hardware address the request names (as Linux answers), out of its port
            if out[0:6] != f[22:28] or tpa not in self.arp_targets or out[6:12] != self.arp_targets[tpa]:
                v.append(Violation("address", "ARP reply not to the asker or for an unlisted target"))
            return v
        if primary == Counter.SYNACK:
            return self._check_synack(f, lay, out)
        return self._check_forward(inp, Counter(primary), lay, out)

    def _named(self, d: dict[int, int]) -> dict[str, int]:
        return {self.names.get(i, str(i)): n for i, n in d.items()}

    def _check_local(self, inp: Input, lay: Layout) -> list[Violation]:
        f = inp.data
        if not lay.ip_ok:
            return [Violation("address", "a malformed IPv4 frame went to the kernel")]
        dst = int.from_bytes(f[lay.l3 + 16:lay.l3 + 20], "big")
        r = self.route(dst)
        if r is None or not r[1] & HOP_LOCAL:
            return [Violation("address", f"to the kernel for {ipaddress.IPv4Address(dst)}, not a switch address")]
        if lay.tcp_ok:
            dport = int.from_bytes(f[lay.l4 + 2:lay.l4 + 4], "big")
            src = int.from_bytes(f[lay.l3 + 12:lay.l3 + 16], "big")
            if dport in self.guarded and self.ctl_peers.get(src) != inp.ifindex:
                return [Violation("address", f"guarded port {dport} reached from {ipaddress.IPv4Address(src)} "
                                             f"on ifindex {inp.ifindex}")]
        return []

    def _check_synack(self, f: bytes, lay: Layout, out: bytes) -> list[Violation]:
        o = Layout(out)
        if len(out) != 66 or not o.tcp_ok:
            return [Violation("synack", f"SYN-ACK of {len(out)} bytes")]
        v = []
        if ip_residue(out, o) or l4_residue(out, o):
            v.append(Violation("checksum", "SYN-ACK checksum wrong"))
        src, dst = f[lay.l3 + 12:lay.l3 + 16], f[lay.l3 + 16:lay.l3 + 20]
        isport, idport, iseq, _, _, _ = tcp_fields(f, lay.l4)
        sport, dport, seq, ack, flags, _ = tcp_fields(out, o.l4)
        vip = int.from_bytes(dst, "big")
        if (out[o.l3 + 12:o.l3 + 16] != dst or out[o.l3 + 16:o.l3 + 20] != src or (vip, idport) not in self.svc_of
                or sport != idport or dport != isport or out[0:6] != f[6:12]):
            v.append(Violation("address", "SYN-ACK not from the SYN's service VIP:port back to its sender"))
        if flags != SYN | ACK or ack != (iseq + 1) & 0xFFFFFFFF:
            v.append(Violation("synack", f"flags {flags:#x} ack {ack} for seq {iseq}"))
        b = cookie.bucket_of(cookie.tai_seconds(), self.bucket_seconds)
        if cookie.check_cookie(seq, self.key, int.from_bytes(src, "big"), isport, vip, idport, b) is None:
            v.append(Violation("synack", "ISN is not a cookie the front-end accepts"))
        return v

    def _check_forward(self, inp: Input, c: Counter, lay: Layout, out: bytes) -> list[Violation]:
        f = inp.data
        v: list[Violation] = []
        ifx = self.maps.last_redirect()
        port = self.by_if.get(ifx)
        if port is None:
            return [Violation("address", f"{c.name} to unknown ifindex {ifx}")]
        if out[0:6] != mac_bytes(port.host_mac) or out[6:12] != mac_bytes(port.port_mac):
            v.append(Violation("address", f"{c.name}: MACs are not port {port.ifname}'s"))
        if len(out) != len(f):
            return v + [Violation("bytes", f"{c.name}: length {len(f)} -> {len(out)}")]
        l3, l4 = lay.l3, lay.l4
        src = int.from_bytes(f[l3 + 12:l3 + 16], "big")
        dst = int.from_bytes(f[l3 + 16:l3 + 20], "big")
        allowed: list[tuple[int, int]] = []
        if c == Counter.ROUTED:
            r = self.route(dst)
            if r is None or r[0] != ifx or r[1] & HOP_LOCAL:
                v.append(Violation("address", f"routed to {port.ifname}, routes say {r}"))
        else:
            if not lay.tcp_ok:
                return v + [Violation("address", f"{c.name} of a frame that is not whole TCP")]
            sport, dport = struct.unpack_from("!HH", f, l4)
            if c == Counter.TO_FRONTEND:
                cli = (src, sport) if dst in self.vip_addrs else (dst, dport)
                if ifx != self.buckets[hash8(*cli)]:
                    v.append(Violation("address", f"to front-end port {port.ifname}, not the bucket's"))
            elif c == Counter.TO_BACKEND:
                svc = self.svc_of.get((dst, dport))
                b = self.offload.get((src, sport, svc)) if svc is not None else None
                rp = self.route(src)
                if b is None:
                    v.append(Violation("address", "to a back-end without an offload entry of the VIP:port's service"))
                else:
                    bip, bport, bif = self.backends[b]
                    o_dst = int.from_bytes(out[l3 + 16:l3 + 20], "big")
                    o_dport = int.from_bytes(out[l4 + 2:l4 + 4], "big")
                    if (o_dst, o_dport, ifx) != (bip, bport, bif):
                        v.append(Violation("address", "offloaded ACK not to the entry's back-end service"))
                    if rp is not None and rp[0] != inp.ifindex:
                        v.append(Violation("address", "offloaded ACK from a client arriving on another port"))
                allowed = [(l3 + 10, l3 + 12), (l3 + 16, l3 + 20), (l4 + 2, l4 + 4), (l4 + 16, l4 + 18)]
            elif c == Counter.TO_CLIENT:
                b = self.backend_src.get((src, sport))
                r = self.route(dst)
                o_src = int.from_bytes(out[l3 + 12:l3 + 16], "big")
                o_sport = int.from_bytes(out[l4:l4 + 2], "big")
                svcs = [svc for svc, eb in self._entries(dst, dport).items() if eb == b]
                if b is None or len(svcs) != 1 or inp.ifindex != self.backends[b][2]:
                    v.append(Violation("address", "to a client from a source that is not its entry's back-end port"))
                elif (o_src, o_sport) != self.services[svcs[0]]:
                    v.append(Violation("address", "to a client not as its entry's service's VIP:port"))
                if r is None or r[0] != ifx or r[1] & (HOP_LOCAL | HOP_INTERNAL):
                    v.append(Violation("address", f"to a client via {port.ifname}, routes say {r}"))
                allowed = [(l3 + 10, l3 + 12), (l3 + 12, l3 + 16), (l4, l4 + 2), (l4 + 16, l4 + 18)]
        if allowed:
            e = bytearray(f)
            e[0:12] = out[0:12]
            for a, b in allowed:
                e[a:b] = out[a:b]
            if e != out:
                v.append(Violation("bytes", f"{c.name} changed bytes outside its rewrite"))
            if lay.ip_ok and ip_residue(out, lay) != ip_residue(f, lay):
                v.append(Violation("checksum", f"{c.name}: IP checksum residue changed"))
            if l4_residue(out, lay) != l4_residue(f, lay):
                v.append(Violation("checksum", f"{c.name}: TCP checksum residue changed"))
        elif out[12:] != f[12:]:
            v.append(Violation("bytes", f"{c.name} changed more than the MACs"))
        return v

    def periodic(self) -> list[Violation]:
        got = {k: e.backend for k, e in self.maps.offload_items()}
        if got != self.offload:
            return [Violation("state", f"offload table changed by the data plane: {len(got)} entries, "
                                       f"want {len(self.offload)}")]
        return []

    def case_state(self) -> dict:
        return dict(self._last)

    def replay(self, inp: Input, state: dict) -> list[Violation]:
        return self.execute(inp)


KINDS = ["syn", "hs_ack", "c_data", "c_ack", "c_close", "b_seg", "routed", "ctl", "arp", "other"]
WEIGHTS = [12, 10, 10, 14, 6, 16, 14, 6, 5, 7]
