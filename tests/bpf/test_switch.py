"""Packet tests of the switch data plane (bpf/switch.bpf.c) through BPF_PROG_TEST_RUN, as data:
every branch of DESIGN.md §4 and every malformed-input drop, with map set-up and counters. The
cases are tables of `SwitchCase` run by one runner (`test_packet`); below them, the few tests that
need more than one packet."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Callable

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from miresga import cookie
from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.layouts import SwKey
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.bpf.testrun import (TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, PacketCase, RunResult, check_case,
                                 fake_ports, per_packet_ns, run_packet)
from miresga.switch.hashing import hash8
from miresga.switch.maps import HOP_INTERNAL, HOP_LOCAL, HOP_VALID, SW_F_TRACE, Counter, SwitchMaps, drop_index, hop

VIP, VPORT = "10.0.100.1", 80
VIP_MAC = "02:53:0a:00:64:01"
# Services by index: the default VIP:port, the same address on another port, a second address.
API_PORT, VIP2 = 8080, "10.0.100.2"
SERVICES = [(VIP, VPORT), (VIP, API_PORT), (VIP2, VPORT)]
CLIENT, CMAC, C_PORT_MAC, C_IF = "10.0.1.2", "02:4d:0a:00:01:02", "02:53:0a:00:01:01", 11
FE = {  # name -> (ip, host mac, port mac, ifindex)
    "fe1": ("10.0.2.2", "02:4d:0a:00:02:02", "02:53:0a:00:02:01", 12),
    "fe2": ("10.0.3.2", "02:4d:0a:00:03:02", "02:53:0a:00:03:01", 13),
}
BE = [("10.0.4.2", 80, "02:4d:0a:00:04:02", "02:53:0a:00:04:01", 14),
      ("10.0.5.2", 80, "02:4d:0a:00:05:02", "02:53:0a:00:05:01", 15)]
FAR_IF = 21  # a more specific client route (LPM test)
C_GW, CTL_PORT = "10.0.1.1", 50051  # the client network's gateway (the switch's); the control API
SECRET = "test-secret-0123456789"
KEY = cookie.CookieKey.derive(SECRET, 7)
MSS, WSCALE = 1460, 7


def fe_of_bucket(b: int) -> str:
    return "fe1" if b % 2 == 0 else "fe2"


def fe_for(ip: str, port: int) -> str:
    return fe_of_bucket(hash8(ip, port))


def client_port_for(fe: str, start: int = 40000) -> int:
    """A client port whose bucket belongs to `fe`."""
    return next(p for p in range(start, 65536) if fe_for(CLIENT, p) == fe)


PORTS = (C_IF, *(f[3] for f in FE.values()), *(b[4] for b in BE), FAR_IF)


@pytest.fixture(scope="module", params=["tc", "xdp"])
def sw(request):
    """The switch, once per build (bpf/lib/pkt_ctx.h): every case must hold for both."""
    name = "switch" if request.param == "tc" else "switch_xdp"
    with contextlib.ExitStack() as stack:
        if request.param == "xdp":
            stack.enter_context(fake_ports(PORTS))
        obj = stack.enter_context(BpfObject(object_path(name), max_entries={"sw_offload": 64}))
        m = SwitchMaps(obj)
        m.set_config(services=SERVICES, key=(KEY.k0, KEY.k1), mss=MSS, wscale=WSCALE, sack=True,
                     bucket_seconds=64, flags=SW_F_TRACE)
        m.set_arp(VIP, VIP_MAC)
        for b in range(256):
            ip, hmac, pmac, ifx = FE[fe_of_bucket(b)]
            m.set_bucket(b, hop(ifx, pmac, hmac))
        for i, (ip, port, hmac, pmac, ifx) in enumerate(BE):
            m.set_backend(i, ip, port, hop(ifx, pmac, hmac))
            m.set_route(f"{ip}/24", hop(ifx, pmac, hmac, HOP_VALID | HOP_INTERNAL))
            m.set_route(str(ipaddress.IPv4Network(f"{ip}/24", strict=False).network_address + 1) + "/32",
                        hop(0, pmac, hmac, HOP_VALID | HOP_LOCAL))
        for ip, hmac, pmac, ifx in FE.values():
            m.set_route(f"{ip}/24", hop(ifx, pmac, hmac, HOP_VALID | HOP_INTERNAL))
            m.set_route(str(ipaddress.IPv4Network(f"{ip}/24", strict=False).network_address + 1) + "/32",
                        hop(0, pmac, hmac, HOP_VALID | HOP_LOCAL))
        m.set_route("10.0.1.0/24", hop(C_IF, C_PORT_MAC, CMAC))
        m.set_route(f"{C_GW}/32", hop(0, C_PORT_MAC, CMAC, HOP_VALID | HOP_LOCAL))
        m.guard_port(CTL_PORT)
        for ip, hmac, pmac, ifx in FE.values():
            m.set_ctl_peer(ip, ifx)
        m.set_route("10.0.1.128/25", hop(FAR_IF, C_PORT_MAC, "02:4d:0a:00:01:80"))
        yield obj, m


def arrival_port(pkt) -> int:
    """The switch port a test packet comes in on: its sender's (a back-end's, else the client's)."""
    src = pkt[IP].src if IP in pkt else None
    for ip, fe_mac, pmac, ifx in FE.values():
        if src == ip:
            return ifx
    for ip, port, hmac, pmac, ifx in BE:
        if src == ip:
            return ifx
    return C_IF


def eth_c():
    return Ether(src=CMAC, dst=C_PORT_MAC)


def to_vip(sport, flags="A", seq=1000, ack=2000, payload=b"", src=CLIENT, svc=0):
    dst, dport = SERVICES[svc]
    p = eth_c() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    return p / Raw(payload) if payload else p


def from_be(i, cport, flags="A", payload=b"", sport=None, dst=CLIENT):
    ip, port, hmac, pmac, _ = BE[i]
    p = Ether(src=hmac, dst=pmac) / IP(src=ip, dst=dst) / TCP(sport=sport or port, dport=cport, flags=flags,
                                                              seq=5000, ack=6000)
    return p / Raw(payload) if payload else p


def with_macs(pkt, smac, dmac):
    q = pkt.copy()
    q[Ether].src, q[Ether].dst = smac, dmac
    return q


def fe_macs(name):
    ip, hmac, pmac, ifx = FE[name]
    return pmac, hmac, ifx


# --- packet builders ---------------------------------------------------------------------------

def _raw(eth_payload: bytes) -> Ether:
    return Ether(src=CMAC, dst=C_PORT_MAC, type=0x0800) / Raw(eth_payload)


def _ip_hdr(ihl=5, tot=40, frag=0, proto=6):
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 1, frag, 64, proto, 0,
                       ipaddress.IPv4Address(CLIENT).packed, ipaddress.IPv4Address(VIP).packed)


def _tcp_hdr(doff=5):
    return struct.pack("!HHIIBBHHH", 40000, VPORT, 1, 0, doff << 4, 0x10, 1024, 0, 0)


# Malformed input (MALFORMED_CASES). Not here: frames shorter than Ethernet or Ethernet + 20 bytes
# of IPv4 (BPF_PROG_TEST_RUN refuses them with EINVAL, and so does the stack before TC); their
# checks stay in parse.h all the same.
MALFORMED = [
    ("ihl below 5", _raw(_ip_hdr(ihl=4) + _tcp_hdr()), DropReason.BAD_IHL),
    ("ip version 6 in an IPv4 frame", _raw(b"\x65" + _ip_hdr()[1:] + _tcp_hdr()), DropReason.BAD_IHL),
    ("ihl beyond the packet", _raw(_ip_hdr(ihl=15, tot=60)), DropReason.TRUNCATED_IP),
    ("total length below ihl", _raw(_ip_hdr(tot=10) + _tcp_hdr()), DropReason.BAD_IP_LEN),
    ("fragment (MF)", _raw(_ip_hdr(frag=0x2000) + _tcp_hdr()), DropReason.FRAGMENT),
    ("fragment (offset)", _raw(_ip_hdr(frag=0x0010) + _tcp_hdr()), DropReason.FRAGMENT),
    ("truncated tcp header", _raw(_ip_hdr() + _tcp_hdr()[:12]), DropReason.TRUNCATED_TCP),
    ("doff below 5", _raw(_ip_hdr() + _tcp_hdr(doff=4)), DropReason.BAD_DOFF),
    ("doff beyond ip length", _raw(_ip_hdr() + _tcp_hdr(doff=15)), DropReason.BAD_DOFF),
    ("doff beyond the packet", _raw(_ip_hdr(tot=100) + _tcp_hdr(doff=15)), DropReason.TRUNCATED_TCP),
    ("udp to the vip", eth_c() / IP(src=CLIENT, dst=VIP) / UDP(sport=5, dport=80), DropReason.NOT_TCP_TO_VIP),
    ("icmp to the vip", eth_c() / IP(src=CLIENT, dst=VIP) / ICMP(), DropReason.NOT_TCP_TO_VIP),
    ("tcp to the vip, other port", eth_c() / IP(src=CLIENT, dst=VIP) / TCP(dport=443), DropReason.NOT_TCP_TO_VIP),
    ("no route", eth_c() / IP(src=CLIENT, dst="192.0.2.9") / TCP(dport=80), DropReason.NO_ROUTE),
    # the option bytes as raw payload: scapy would refuse a zero-length option
    ("bad syn options (length 0)", eth_c() / IP(src=CLIENT, dst=VIP)
     / TCP(sport=40000, dport=VPORT, flags="S", dataofs=6) / Raw(b"\x02\x00\x05\xb4"), DropReason.BAD_TCP_OPTIONS),
]


def _syn_to(dst, dport, src=CLIENT, smac=CMAC, dmac=C_PORT_MAC):
    return Ether(src=smac, dst=dmac) / IP(src=src, dst=dst) / TCP(sport=33001, dport=dport, flags="S")


def _synack_case(opts, cport=40123, svc=0):
    syn = to_vip(cport, "S", seq=123456789, ack=0, svc=svc)
    syn[TCP].options = opts
    syn = Ether(bytes(syn))
    vip, vport = SERVICES[svc]
    want = (Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=vip, dst=CLIENT, ttl=64, flags="DF", id=0)
            / TCP(sport=vport, dport=cport, flags="SA", ack=123456790, window=65535))
    return syn, want


def _with_opts(pkt, opts):
    q = pkt.copy()
    q[TCP].options = opts
    return q


def _cookie_ack(port, bucket_age=0, key=KEY, cookie_port=None, svc=0, cookie_svc=None, **kw):
    """The client's final handshake ACK: ack = cookie + 1 for its 4-tuple (or `cookie_port`'s, or
    with the VIP:port of service `cookie_svc`)."""
    b = cookie.bucket_of(cookie.tai_seconds(), 64) - bucket_age
    vip, vport = SERVICES[svc if cookie_svc is None else cookie_svc]
    s = cookie.make_cookie(key, int(ipaddress.IPv4Address(CLIENT)), cookie_port or port,
                           int(ipaddress.IPv4Address(vip)), vport, b, 1460, 7, True)
    return to_vip(port, ack=(s + 1) & 0xFFFFFFFF, svc=svc, **kw)


# --- the runner -----------------------------------------------------------------------------------

@dataclass
class SwitchCase:
    """One packet through switch_ingress: the PacketCase fields, plus what the switch must count
    (exactly these counters move, by these amounts) and where it redirects (`trace`; None: not
    checked). `input` may be a function, for packets that carry a cookie of the current time."""

    description: str
    input: Packet | Callable[[], Packet]
    verdict: int
    output: Packet | Callable[[Packet], Packet] | None = None   # a function of the input packet
    counts: dict[str, int] = field(default_factory=dict)
    trace: int | None = None
    ingress: int = 0                         # 0: the sender's port (arrival_port)
    entry: tuple | None = None               # offload_insert(*entry) before the run
    entries: tuple = ()                      # more: (client ip, client port, backend, svc) each
    dont_care: tuple[str, ...] = ()
    setup: Callable[[SwitchMaps], Callable[[], None] | None] | None = None   # returns its undo
    check: Callable[[RunResult, SwitchMaps], None] | None = None


def _ids(cases):
    return [c.description for c in cases]


def run_switch_case(sw, case: SwitchCase) -> None:
    obj, m = sw
    pkt = case.input() if callable(case.input) else case.input
    out = case.output(pkt) if callable(case.output) else case.output
    m.reset_counters()
    m.clear_trace()
    m.offload.clear()
    if case.entry is not None:
        m.offload_insert(*case.entry)
    for ip, port, backend, svc in case.entries:
        assert m.offload_insert(ip, port, backend, svc=svc) == 0
    undo = case.setup(m) if case.setup else None
    try:
        r = check_case(obj.program("switch_ingress"), PacketCase(
            case.description, pkt, case.verdict, out, dont_care=case.dont_care,
            ingress_ifindex=case.ingress or arrival_port(pkt)))
        assert {k: v for k, v in m.read_counters().items() if v} == case.counts, case.description
        if case.trace is not None:
            assert m.last_redirect() == case.trace, case.description
        if case.check:
            case.check(r, m)
    finally:
        if undo:
            undo()


def to_frontend(name):
    """Expected output: the input unchanged but for the MACs of `name`'s port."""
    smac, dmac, _ = fe_macs(name)
    return lambda pkt: with_macs(pkt, smac, dmac)


# --- malformed input: dropped and counted, never forwarded half parsed -----------------------------

MALFORMED_CASES = [SwitchCase(desc, pkt, TC_ACT_SHOT, counts={f"drop_{reason.name.lower()}": 1}, trace=0)
                   for desc, pkt, reason in MALFORMED]


# --- ARP, non-IP, the switch's own addresses, its guarded ports -------------------------------------

def _not_ours(desc, pkt):
    return SwitchCase(desc, pkt, TC_ACT_OK, pkt, counts={"to_kernel": 1})


def _guarded(desc, pkt, ingress, want):
    verdict = TC_ACT_OK if want == "to_kernel" else TC_ACT_SHOT
    return SwitchCase(desc, pkt, verdict, pkt if verdict == TC_ACT_OK else None, counts={want: 1}, trace=0,
                      ingress=ingress)


LOCAL_CASES = [
    SwitchCase("arp request for the vip answered",
               Ether(src=CMAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=CMAC, psrc=CLIENT, pdst=VIP), TC_ACT_REDIRECT,
               Ether(src=VIP_MAC, dst=CMAC) / ARP(op=2, hwsrc=VIP_MAC, psrc=VIP, hwdst=CMAC, pdst=CLIENT),
               counts={"arp_reply": 1}, dont_care=("Padding.load",)),
    _not_ours("arp other target",
              Ether(src=CMAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=CMAC, psrc=CLIENT, pdst="10.0.1.77")),
    _not_ours("arp reply", Ether(src=CMAC, dst=C_PORT_MAC) / ARP(op=2, hwsrc=CMAC, psrc=CLIENT, pdst=VIP)),
    _not_ours("ipv6", Ether(src=CMAC, dst=C_PORT_MAC) / IPv6(dst="fd00::1") / TCP()),
    _not_ours("grpc to a front-end's gateway goes to the kernel",
              Ether(src=FE["fe1"][1], dst=FE["fe1"][2]) / IP(src=FE["fe1"][0], dst="10.0.2.1")
              / TCP(sport=33000, dport=50051, flags="S")),
    # The control API lives on the switch's own addresses: only a front-end's address arriving on
    # that front-end's port reaches it; anything else is dropped and counted (drop_guarded_port).
    _guarded("client to its own gateway's control port", _syn_to(C_GW, CTL_PORT), C_IF, "drop_guarded_port"),
    _guarded("client to a front-end's gateway's control port", _syn_to("10.0.2.1", CTL_PORT), C_IF,
             "drop_guarded_port"),
    _guarded("client to the VIP's control port", _syn_to(VIP, CTL_PORT), C_IF, "drop_guarded_port"),
    _guarded("front-end's address forged on the client port", _syn_to("10.0.2.1", CTL_PORT, src=FE["fe1"][0]),
             C_IF, "drop_guarded_port"),
    _guarded("front-end's address on another front-end's port", _syn_to("10.0.3.1", CTL_PORT, src=FE["fe1"][0]),
             FE["fe2"][3], "drop_guarded_port"),
    _guarded("back-end to a gateway's control port", _syn_to("10.0.4.1", CTL_PORT, src=BE[0][0]), BE[0][4],
             "drop_guarded_port"),
    _guarded("front-end to another front-end network's gateway", _syn_to("10.0.3.1", CTL_PORT, src=FE["fe1"][0]),
             FE["fe1"][3], "to_kernel"),
    _guarded("client to an unguarded port of its gateway", _syn_to(C_GW, 22), C_IF, "to_kernel"),
    _guarded("client ICMP to its gateway", Ether(src=CMAC, dst=C_PORT_MAC) / IP(src=CLIENT, dst=C_GW) / ICMP(),
             C_IF, "to_kernel"),
]


# --- SYN -> SYN-ACK with a cookie ----------------------------------------------------------------------

def _cookie_synack(desc, opts, want_opts, want_client, svc=0):
    """The SYN-ACK carries exactly `want_opts`, and its ISN is a cookie of this time bucket (or of
    the previous one, if the bucket turned during the run) that decodes to `want_client`; it comes
    from service `svc`'s VIP:port and its cookie is over that VIP:port."""
    syn, want = _synack_case(opts, svc=svc)
    before = []

    def setup(m):
        before.append(cookie.bucket_of(cookie.tai_seconds(), 64))

    def check(r, m):
        after = cookie.bucket_of(cookie.tai_seconds(), 64)
        assert len(r.raw) == 66
        assert r.packet[TCP].options == want_opts
        isn = r.packet[TCP].seq
        vip, vport = SERVICES[svc]
        args = (isn, (KEY,), int(ipaddress.IPv4Address(CLIENT)), 40123, int(ipaddress.IPv4Address(vip)), vport)
        assert cookie.check_cookie(*args, after) == want_client
        assert before[-1] == after or cookie.check_cookie(*args, before[-1])

    return SwitchCase(desc, syn, TC_ACT_REDIRECT, _with_opts(want, want_opts), counts={"synack": 1},
                      dont_care=("TCP.seq", "TCP.chksum"), setup=setup, check=check)


def _syn_data_check(r, m):
    assert Raw not in r.packet and len(r.raw) == 66
    assert cookie.decode_options(r.packet[TCP].seq & 0x7F) == cookie.ClientOptions(1440, None, False)


SYN_CASES = [
    _cookie_synack("linux syn", [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)],
                   [("MSS", MSS), ("NOP", None), ("WScale", WSCALE), ("NOP", None), ("NOP", None), ("SAckOK", b"")],
                   cookie.ClientOptions(1460, 7, True)),
    _cookie_synack("mss 1300 ws 14", [("MSS", 1300), ("NOP", None), ("WScale", 14)],
                   [("MSS", MSS), ("NOP", None), ("WScale", WSCALE)] + [("NOP", None)] * 4,
                   cookie.ClientOptions(1220, 14, False)),
    _cookie_synack("no options", [], [("MSS", MSS)] + [("NOP", None)] * 8, cookie.ClientOptions(536, None, False)),
    _cookie_synack("sack only", [("SAckOK", b""), ("EOL", None)],
                   [("MSS", MSS)] + [("NOP", None)] * 6 + [("SAckOK", b"")], cookie.ClientOptions(536, None, True)),
    # a SYN carrying data (TFO style) and IP options: the SYN-ACK is rebuilt from scratch
    SwitchCase("syn with data and ip options still answered",
               eth_c() / IP(src=CLIENT, dst=VIP, options=b"\x01\x01\x01\x00")
               / TCP(sport=40200, dport=VPORT, flags="S", seq=7, options=[("MSS", 1440)]) / Raw(b"x" * 300),
               TC_ACT_REDIRECT,
               Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=VIP, dst=CLIENT, flags="DF", id=0)
               / TCP(sport=VPORT, dport=40200, flags="SA", ack=8, window=65535,
                     options=[("MSS", MSS)] + [("NOP", None)] * 8),
               counts={"synack": 1}, dont_care=("TCP.seq", "TCP.chksum"), check=_syn_data_check),
    # a source the switch has no route for (clients behind a default route elsewhere) is not
    # refused by the reverse-path check: it gets its SYN-ACK
    SwitchCase("client without route still served",
               Ether(bytes(eth_c() / IP(src="198.51.100.7", dst=VIP) / TCP(sport=5555, dport=VPORT, flags="S"))),
               TC_ACT_REDIRECT, counts={"synack": 1}),
]


# --- client -> VIP: front-end or back-end ---------------------------------------------------------------

def _to_bucket_fe(fe, desc, flags, payload, with_entry):
    port = client_port_for(fe)
    return SwitchCase(f"{desc} ({fe})", to_vip(port, flags, payload=payload), TC_ACT_REDIRECT, to_frontend(fe),
                      counts={"to_frontend": 1}, trace=fe_macs(fe)[2],
                      entry=(CLIENT, port, 0) if with_entry else None)


def _lookalike(desc, make):
    """Looks like the handshake's last ACK but is not absorbable: the front-end decides."""
    port = make()[TCP].sport
    return SwitchCase(desc, lambda: Ether(bytes(make())), TC_ACT_REDIRECT, to_frontend(fe_for(CLIENT, port)),
                      counts={"to_frontend": 1}, trace=fe_macs(fe_for(CLIENT, port))[2])


def _rotated_key(m):
    """The previous generation's cookie still counts (the idle key slot holds it)."""
    m.set_key((NEW_KEY.k0, NEW_KEY.k1))

    def undo():
        m.set_key((KEY.k0, KEY.k1))
        idle = 1 - (m.get_config().key_slot & 1)
        m.keys.update(struct.pack("=I", idle), SwKey())   # the other cases know one key only
    return undo


def _no_frontend_for_bucket(port):
    def setup(m):
        b = hash8(CLIENT, port)
        saved = m.buckets.lookup(struct.pack("=I", b))
        m.set_bucket(b, None)
        return lambda: m.buckets.update(struct.pack("=I", b), saved)
    return setup


def _last_hit_moved(port):
    def check(r, m):
        assert m.offload_get(CLIENT, port).last_hit_ns > 1
    return check


NEW_KEY = cookie.CookieKey.derive(SECRET, 8)

CLIENT_CASES = [
    *[_to_bucket_fe(fe, *c) for fe in ("fe1", "fe2") for c in [
        ("data", "PA", b"GET / HTTP/1.1\r\n\r\n", False),
        ("data with entry", "PA", b"GET /next HTTP/1.1\r\n\r\n", True),   # new request, offloaded connection
        ("ack no entry", "A", b"", False),                                # handshake ACK / pure ACK
        ("fin", "FA", b"", True),
        ("rst", "R", b"", True),
        ("syn+ack", "SA", b"", False),                                    # odd flags: front-end decides
    ]],
    # Step 1's last packet: pure ACK, no options, no entry, ack-1 a valid cookie (this or the
    # previous bucket) -> dropped here and counted, instead of crossing a front-end.
    SwitchCase("handshake ack absorbed", lambda: _cookie_ack(40500), TC_ACT_SHOT, counts={"handshake_ack": 1}),
    SwitchCase("handshake ack of the previous bucket absorbed", lambda: _cookie_ack(40501, 1), TC_ACT_SHOT,
               counts={"handshake_ack": 1}),
    SwitchCase("handshake ack after key rotation, old key", lambda: _cookie_ack(40800, key=KEY), TC_ACT_SHOT,
               counts={"handshake_ack": 1}, setup=_rotated_key),
    SwitchCase("handshake ack after key rotation, new key", lambda: _cookie_ack(40801, key=NEW_KEY), TC_ACT_SHOT,
               counts={"handshake_ack": 1}, setup=_rotated_key),
    # an expired cookie, another generation's key, another port's cookie: front-end decides
    _lookalike("lookalike: expired bucket", lambda: _cookie_ack(40600, bucket_age=2)),
    _lookalike("lookalike: other key", lambda: _cookie_ack(40601, key=NEW_KEY)),
    _lookalike("lookalike: other port", lambda: _cookie_ack(40602, cookie_port=40603)),
    # a SACK duplicate ACK before any response byte carries options: the back-end needs it
    _lookalike("lookalike: with sack option",
               lambda: _with_opts(_cookie_ack(40604), [("NOP", None), ("NOP", None), ("SAck", (5000, 6000))])),
    _lookalike("lookalike: with payload", lambda: _cookie_ack(40605, flags="PA", payload=b"GET / HTTP/1.1\r\n\r\n")),
    _lookalike("lookalike: with fin", lambda: _cookie_ack(40606, flags="FA")),
    # an offloaded connection's ACK is the back-end's even if it happens to look like a cookie
    SwitchCase("handshake ack with entry goes to the back-end", lambda: _cookie_ack(40700), TC_ACT_REDIRECT,
               counts={"to_backend": 1}, entry=(CLIENT, 40700, 0)),
    SwitchCase("client ack with entry rewritten to the back-end", to_vip(41000, "A", seq=111, ack=222),
               TC_ACT_REDIRECT,
               Ether(src=BE[1][3], dst=BE[1][2]) / IP(src=CLIENT, dst=BE[1][0])
               / TCP(sport=41000, dport=BE[1][1], flags="A", seq=111, ack=222),
               counts={"to_backend": 1}, trace=BE[1][4], entry=(CLIENT, 41000, 1, 1), check=_last_hit_moved(41000)),
    SwitchCase("entry with unknown back-end dropped", to_vip(41001, "A"), TC_ACT_SHOT,
               counts={"drop_no_backend": 1}, entry=(CLIENT, 41001, 200)),
    SwitchCase("no front-end for the bucket dropped", to_vip(41002, "PA", payload=b"x"), TC_ACT_SHOT,
               counts={"drop_no_frontend": 1}, setup=_no_frontend_for_bucket(41002)),
    # reverse-path check: 10.0.1.2 lives behind the client port; the same source on a back-end's
    # port is forged
    SwitchCase("client source from a back-end's port dropped", to_vip(42300, "A"), TC_ACT_SHOT,
               counts={"drop_spoofed_client": 1}, ingress=BE[0][4], entry=(CLIENT, 42300, 0)),
]


# --- back-end -> client ----------------------------------------------------------------------------------

_BODY = b"HTTP/1.1 200 OK\r\n\r\n" + bytes(range(256)) * 4
_IP_OPTS = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL


def _be_to_fe(desc, flags, entry_backend, extra):
    port = client_port_for("fe2", 43000)
    return SwitchCase(desc, from_be(0, port, flags), TC_ACT_REDIRECT, to_frontend("fe2"),
                      counts={"to_frontend": 1, **extra}, trace=fe_macs("fe2")[2],
                      entry=(CLIENT, port, entry_backend) if entry_backend is not None else None)


def _routed(desc, pkt, ifx):
    routes = {C_IF: (C_PORT_MAC, CMAC), 12: FE["fe1"][2:0:-1], 13: FE["fe2"][2:0:-1], 14: (BE[0][3], BE[0][2])}
    return SwitchCase(desc, pkt, TC_ACT_REDIRECT, with_macs(pkt, *routes[ifx]), counts={"routed": 1}, trace=ifx,
                      entry=(CLIENT, 44000, 0))


BACKEND_CASES = [
    SwitchCase("back-end segment with entry goes to the client as the vip", from_be(0, 42000, "PA", payload=_BODY),
               TC_ACT_REDIRECT,
               Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=VIP, dst=CLIENT)
               / TCP(sport=VPORT, dport=42000, flags="PA", seq=5000, ack=6000) / Raw(_BODY),
               counts={"to_client": 1}, trace=C_IF, entry=(CLIENT, 42000, 0)),
    SwitchCase("route is longest prefix match", from_be(0, 42001, "A", dst="10.0.1.200"), TC_ACT_REDIRECT,
               Ether(src=C_PORT_MAC, dst="02:4d:0a:00:01:80") / IP(src=VIP, dst="10.0.1.200")
               / TCP(sport=VPORT, dport=42001, flags="A", seq=5000, ack=6000),
               counts={"to_client": 1}, trace=FAR_IF, entry=("10.0.1.200", 42001, 0)),
    # the TCP header sits after IP options: the rewrite and both checksums must follow it
    SwitchCase("rewrite with ip options",
               Ether(src=BE[0][2], dst=BE[0][3]) / IP(src=BE[0][0], dst=CLIENT, options=_IP_OPTS)
               / TCP(sport=BE[0][1], dport=42100, flags="A", seq=9, ack=10) / Raw(b"abc"), TC_ACT_REDIRECT,
               Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=VIP, dst=CLIENT, options=_IP_OPTS)
               / TCP(sport=VPORT, dport=42100, flags="A", seq=9, ack=10) / Raw(b"abc"),
               counts={"to_client": 1}, entry=(CLIENT, 42100, 0)),
    _be_to_fe("no entry: slow path", "A", None, {}),
    _be_to_fe("back-end's syn-ack during the splice", "SA", None, {}),
    _be_to_fe("fin with entry (always to the front-end)", "FA", 0, {}),
    _be_to_fe("rst with entry", "R", 0, {}),
    _be_to_fe("entry names another back-end: no bypass", "A", 1, {"offload_mismatch": 1}),
    # a forged back-end source must not reach a client's offloaded connection
    *[SwitchCase(f"back-end source from {name} dropped", from_be(0, 42200, "PA", payload=b"forged"), TC_ACT_SHOT,
                 counts={"drop_spoofed_backend": 1}, trace=0, ingress=port, entry=(CLIENT, 42200, 0))
      for name, port in (("the client port", C_IF), ("another back-end's port", BE[1][4]), ("a front-end port", 12))],
    # traffic that is not a spliced connection's is routed, even beside an offloaded connection
    _routed("back-end's direct port to a client", from_be(0, 44000, "A", sport=8080), C_IF),
    _routed("back-end's service port to a front-end (health check)", from_be(0, 44000, "A", dst=FE["fe1"][0]), 12),
    _routed("front-end to back-end", Ether(src=FE["fe1"][1], dst=FE["fe1"][2]) / IP(src=CLIENT, dst=BE[0][0])
            / TCP(sport=44000, dport=80, flags="S"), 14),
    _routed("udp to a front-end", eth_c() / IP(src=CLIENT, dst=FE["fe2"][0]) / UDP(sport=1, dport=53), 13),
]

# --- several services: one client ip:port with a connection to each ----------------------------------

_LINUX_SYN = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
_LINUX_SYNACK = [("MSS", MSS), ("NOP", None), ("WScale", WSCALE), ("NOP", None), ("NOP", None), ("SAckOK", b"")]
P_SVC = 48000   # the client port every service case shares


def _ack_to_backend(svc, backend, entries, desc):
    """The client's ACK to service `svc` reaches the back-end of that service's entry."""
    ip, port, hmac, pmac, ifx = BE[backend]
    return SwitchCase(desc, to_vip(P_SVC, "A", seq=111, ack=222, svc=svc), TC_ACT_REDIRECT,
                      Ether(src=pmac, dst=hmac) / IP(src=CLIENT, dst=ip)
                      / TCP(sport=P_SVC, dport=port, flags="A", seq=111, ack=222),
                      counts={"to_backend": 1}, trace=ifx, entries=entries)


def _be_to_client(backend, svc, entries, desc):
    """Back-end `backend`'s segment leaves as service `svc`'s VIP:port."""
    vip, vport = SERVICES[svc]
    return SwitchCase(desc, from_be(backend, P_SVC, "PA", payload=_BODY), TC_ACT_REDIRECT,
                      Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=vip, dst=CLIENT)
                      / TCP(sport=vport, dport=P_SVC, flags="PA", seq=5000, ack=6000) / Raw(_BODY),
                      counts={"to_client": 1}, trace=C_IF, entries=entries)


# client port P_SVC holds a connection to service 1 on be1 and one to service 2 on be0 (at once)
TWO = ((CLIENT, P_SVC, 1, 1), (CLIENT, P_SVC, 0, 2))

SERVICE_CASES = [
    _cookie_synack("syn to a second port of the vip address", _LINUX_SYN, _LINUX_SYNACK,
                   cookie.ClientOptions(1460, 7, True), svc=1),
    _cookie_synack("syn to a second vip address", _LINUX_SYN, _LINUX_SYNACK, cookie.ClientOptions(1460, 7, True),
                   svc=2),
    SwitchCase("handshake ack of a second service absorbed", lambda: _cookie_ack(40510, svc=2), TC_ACT_SHOT,
               counts={"handshake_ack": 1}),
    _lookalike("lookalike: cookie of another service's vip", lambda: _cookie_ack(40511, svc=1, cookie_svc=0)),
    SwitchCase("udp to a second vip address", eth_c() / IP(src=CLIENT, dst=VIP2) / UDP(sport=5, dport=80),
               TC_ACT_SHOT, counts={"drop_not_tcp_to_vip": 1}, trace=0),
    SwitchCase("tcp to a second vip address, a port without service", eth_c() / IP(src=CLIENT, dst=VIP2)
               / TCP(dport=API_PORT), TC_ACT_SHOT, counts={"drop_not_tcp_to_vip": 1}, trace=0),
    SwitchCase("client source from a back-end's port to a second vip dropped", to_vip(42301, "A", svc=2),
               TC_ACT_SHOT, counts={"drop_spoofed_client": 1}, ingress=BE[0][4]),
    _ack_to_backend(1, 1, TWO, "one client port, two services: ack to service 1 reaches its back-end"),
    _ack_to_backend(2, 0, TWO, "one client port, two services: ack to service 2 reaches its back-end"),
    _ack_to_backend(0, 1, ((CLIENT, P_SVC, 1, 0), (CLIENT, P_SVC, 0, 2)),
                    "one client port, two services: ack to the default service reaches its back-end"),
    # the key includes the service: another service's entry of the same client port is not this one's
    SwitchCase("ack to a service without entry goes to the front-end, not to another service's back-end",
               to_vip(P_SVC, "A", svc=0), TC_ACT_REDIRECT, to_frontend(fe_for(CLIENT, P_SVC)),
               counts={"to_frontend": 1}, trace=fe_macs(fe_for(CLIENT, P_SVC))[2], entries=TWO),
    _be_to_client(1, 1, TWO, "one client port, two services: be1's segment leaves as service 1's vip:port"),
    _be_to_client(0, 2, TWO, "one client port, two services: be0's segment leaves as service 2's vip:port"),
    _be_to_client(1, 0, ((CLIENT, P_SVC, 0, 1), (CLIENT, P_SVC, 1, 0)),
                  "one client port, two services: be1's segment leaves as the default vip:port"),
    # every entry of the client port names another back-end: slow path, counted once
    SwitchCase("back-end segment whose client port's entries all name other back-ends: front-end",
               from_be(1, P_SVC, "A"), TC_ACT_REDIRECT, to_frontend(fe_for(CLIENT, P_SVC)),
               counts={"to_frontend": 1, "offload_mismatch": 1}, trace=fe_macs(fe_for(CLIENT, P_SVC))[2],
               entries=((CLIENT, P_SVC, 0, 1), (CLIENT, P_SVC, 0, 2))),
]


def _one_service(m):
    """n_services 1: an entry of a service beyond the configured ones is never looked at."""
    c = m.get_config()
    c.n_services = 1
    m.config.update(struct.pack("=I", 0), c)

    def undo():
        c.n_services = len(SERVICES)
        m.config.update(struct.pack("=I", 0), c)
    return undo


SERVICE_CASES.append(
    SwitchCase("back-end entries are tried only for configured services", from_be(0, P_SVC, "A"), TC_ACT_REDIRECT,
               to_frontend(fe_for(CLIENT, P_SVC)), counts={"to_frontend": 1},
               trace=fe_macs(fe_for(CLIENT, P_SVC))[2], entries=((CLIENT, P_SVC, 0, 2),), setup=_one_service))

CASES = MALFORMED_CASES + LOCAL_CASES + SYN_CASES + CLIENT_CASES + BACKEND_CASES + SERVICE_CASES


def test_case_descriptions_are_unique():
    assert len(set(_ids(CASES))) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_packet(sw, case):
    run_switch_case(sw, case)


# --- more than one packet ----------------------------------------------------------------------------

COST_CASES = {
    "synack": lambda: _synack_case([("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                                    ("WScale", 7)])[0],
    "to_client_1448B": lambda: from_be(0, 46000, "PA", payload=b"x" * 1448),
    "to_backend_ack": lambda: to_vip(46000, "A"),
    "to_frontend_1448B": lambda: to_vip(46001, "PA", payload=b"x" * 1448),
    "routed_1448B": lambda: from_be(0, 46000, "PA", payload=b"x" * 1448, sport=8080),
}


@pytest.mark.parametrize("path", list(COST_CASES))
def test_per_packet_cost(sw, path, record_property):
    """BPF_PROG_TEST_RUN repeat: average run time per packet of each path (SYN-ACK included)."""
    obj, m = sw
    m.offload.clear()
    m.offload_insert(CLIENT, 46000, 0)
    pkt = COST_CASES[path]()
    prog = obj.program("switch_ingress")
    assert run_packet(prog, pkt, ingress_ifindex=arrival_port(pkt)).verdict == TC_ACT_REDIRECT
    ns = per_packet_ns(prog, pkt, repeat=200000, ingress_ifindex=arrival_port(pkt))
    record_property(f"{path}_ns_per_packet", ns)
    print(f"{path}: {ns} ns/packet")
    assert 0 < ns < 20000


def test_counters_accumulate_per_decision(sw):
    obj, m = sw
    prog = obj.program("switch_ingress")
    m.reset_counters()
    for _ in range(3):
        run_packet(prog, to_vip(45000, "PA", payload=b"x"), ingress_ifindex=C_IF)
    for _ in range(2):
        run_packet(prog, to_vip(45001, "S", ack=0), ingress_ifindex=C_IF)
    run_packet(prog, _raw(_ip_hdr(frag=0x2000) + _tcp_hdr()))
    c = m.read_counters()
    assert (c["to_frontend"], c["synack"], c["drop_fragment"]) == (3, 2, 1)
    assert c[f"drop_{DropReason.NO_ROUTE.name.lower()}"] == 0
    assert m.counter(drop_index(DropReason.FRAGMENT)) == 1 and m.counter(Counter.SYNACK) == 2
