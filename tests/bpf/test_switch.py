"""Packet tests of the switch data plane (bpf/switch.bpf.c) through BPF_PROG_TEST_RUN, as data:
every branch of DESIGN.md §4 and every malformed-input drop, with map set-up and counters."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from miresga import cookie
from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.layouts import SwKey
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.bpf.testrun import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, PacketCase, check_case, per_packet_ns, run_packet
from miresga.switch.hashing import hash8
from miresga.switch.maps import HOP_INTERNAL, HOP_LOCAL, HOP_VALID, SW_F_TRACE, Counter, SwitchMaps, drop_index, hop

VIP, VPORT = "10.0.100.1", 80
VIP_MAC = "02:53:0a:00:64:01"
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


@pytest.fixture(scope="module")
def sw():
    with BpfObject(object_path("switch"), max_entries={"sw_offload": 64}) as obj:
        m = SwitchMaps(obj)
        m.set_config(vip=VIP, vport=VPORT, key=(KEY.k0, KEY.k1), mss=MSS, wscale=WSCALE, sack=True,
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


@pytest.fixture
def run(sw):
    """Run one case with fresh counters/trace/offload; return (result, counter deltas, trace)."""
    obj, m = sw
    prog = obj.program("switch_ingress")

    def go(case: PacketCase):
        if not case.ingress_ifindex:
            case.ingress_ifindex = arrival_port(case.input)
        m.reset_counters()
        m.clear_trace()
        m.offload.clear()
        r = check_case(prog, case)
        counts = {k: v for k, v in m.read_counters().items() if v}
        return r, counts, m.last_redirect()
    return go


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


def to_vip(sport, flags="A", seq=1000, ack=2000, payload=b"", src=CLIENT):
    p = eth_c() / IP(src=src, dst=VIP) / TCP(sport=sport, dport=VPORT, flags=flags, seq=seq, ack=ack)
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


# --- malformed input: dropped and counted, never forwarded half parsed -------------------------

def _raw(eth_payload: bytes) -> Ether:
    return Ether(src=CMAC, dst=C_PORT_MAC, type=0x0800) / Raw(eth_payload)


def _ip_hdr(ihl=5, tot=40, frag=0, proto=6):
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 1, frag, 64, proto, 0,
                       ipaddress.IPv4Address(CLIENT).packed, ipaddress.IPv4Address(VIP).packed)


def _tcp_hdr(doff=5):
    return struct.pack("!HHIIBBHHH", 40000, VPORT, 1, 0, doff << 4, 0x10, 1024, 0, 0)


# Not here: frames shorter than Ethernet or Ethernet + 20 bytes of IPv4 (BPF_PROG_TEST_RUN refuses
# them with EINVAL, and so does the stack before TC); their checks stay in parse.h all the same.
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


@pytest.mark.parametrize("desc,pkt,reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_dropped_and_counted(run, desc, pkt, reason):
    r, counts, trace = run(PacketCase(desc, pkt, TC_ACT_SHOT))
    assert counts == {f"drop_{reason.name.lower()}": 1}
    assert trace == 0


# --- ARP, non-IP, the switch's own addresses ----------------------------------------------------

def test_arp_request_for_vip_answered(run):
    req = Ether(src=CMAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=CMAC, psrc=CLIENT, pdst=VIP)
    want = Ether(src=VIP_MAC, dst=CMAC) / ARP(op=2, hwsrc=VIP_MAC, psrc=VIP, hwdst=CMAC, pdst=CLIENT)
    r, counts, _ = run(PacketCase("arp for vip", req, TC_ACT_REDIRECT, want, dont_care=("Padding.load",)))
    assert counts == {"arp_reply": 1}


@pytest.mark.parametrize("pkt", [
    Ether(src=CMAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=CMAC, psrc=CLIENT, pdst="10.0.1.77"),
    Ether(src=CMAC, dst=C_PORT_MAC) / ARP(op=2, hwsrc=CMAC, psrc=CLIENT, pdst=VIP),
    Ether(src=CMAC, dst=C_PORT_MAC) / IPv6(dst="fd00::1") / TCP(),
], ids=["arp other target", "arp reply", "ipv6"])
def test_not_ours_goes_to_kernel_unchanged(run, pkt):
    r, counts, _ = run(PacketCase("to kernel", pkt, TC_ACT_OK, pkt))
    assert counts == {"to_kernel": 1}


def test_switch_own_address_goes_to_kernel(run):
    ip, hmac, pmac, _ = FE["fe1"]
    pkt = Ether(src=hmac, dst=pmac) / IP(src=ip, dst="10.0.2.1") / TCP(sport=33000, dport=50051, flags="S")
    r, counts, _ = run(PacketCase("grpc to gateway", pkt, TC_ACT_OK, pkt))
    assert counts == {"to_kernel": 1}


# --- the switch's own services answer front-ends only -------------------------------------------

def _syn_to(dst, dport, src=CLIENT, smac=CMAC, dmac=C_PORT_MAC):
    return Ether(src=smac, dst=dmac) / IP(src=src, dst=dst) / TCP(sport=33001, dport=dport, flags="S")


@pytest.mark.parametrize("desc,pkt,ingress,want", [
    ("client to its own gateway's control port", _syn_to(C_GW, CTL_PORT), C_IF, "drop_guarded_port"),
    ("client to a front-end's gateway's control port", _syn_to("10.0.2.1", CTL_PORT), C_IF, "drop_guarded_port"),
    ("client to the VIP's control port", _syn_to(VIP, CTL_PORT), C_IF, "drop_guarded_port"),
    ("front-end's address forged on the client port", _syn_to("10.0.2.1", CTL_PORT, src=FE["fe1"][0]), C_IF,
     "drop_guarded_port"),
    ("front-end's address on another front-end's port", _syn_to("10.0.3.1", CTL_PORT, src=FE["fe1"][0]),
     FE["fe2"][3], "drop_guarded_port"),
    ("back-end to a gateway's control port", _syn_to("10.0.4.1", CTL_PORT, src=BE[0][0]), BE[0][4],
     "drop_guarded_port"),
    ("front-end to another front-end network's gateway", _syn_to("10.0.3.1", CTL_PORT, src=FE["fe1"][0]),
     FE["fe1"][3], "to_kernel"),
    ("client to an unguarded port of its gateway", _syn_to(C_GW, 22), C_IF, "to_kernel"),
    ("client ICMP to its gateway", Ether(src=CMAC, dst=C_PORT_MAC) / IP(src=CLIENT, dst=C_GW) / ICMP(), C_IF,
     "to_kernel"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_guarded_port_only_from_a_frontend_on_its_port(run, desc, pkt, ingress, want):
    """The control API lives on the switch's own addresses: only a front-end's address arriving on
    that front-end's port reaches it; anything else is dropped and counted (drop_guarded_port)."""
    verdict = TC_ACT_OK if want == "to_kernel" else TC_ACT_SHOT
    r, counts, trace = run(PacketCase(desc, pkt, verdict, pkt if verdict == TC_ACT_OK else None,
                                      ingress_ifindex=ingress))
    assert counts == {want: 1} and trace == 0


# --- SYN -> SYN-ACK --------------------------------------------------------------------------------

def _synack_case(opts, cport=40123):
    syn = to_vip(cport, "S", seq=123456789, ack=0)
    syn[TCP].options = opts
    syn = Ether(bytes(syn))
    want = (Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=VIP, dst=CLIENT, ttl=64, flags="DF", id=0)
            / TCP(sport=VPORT, dport=cport, flags="SA", ack=123456790, window=65535))
    return syn, want


def _with_opts(pkt, opts):
    q = pkt.copy()
    q[TCP].options = opts
    return q


@pytest.mark.parametrize("opts,want_opts,want_client", [
    ([("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)],
     [("MSS", MSS), ("NOP", None), ("WScale", WSCALE), ("NOP", None), ("NOP", None), ("SAckOK", b"")],
     cookie.ClientOptions(1460, 7, True)),
    ([("MSS", 1300), ("NOP", None), ("WScale", 14)],
     [("MSS", MSS), ("NOP", None), ("WScale", WSCALE), ("NOP", None), ("NOP", None), ("NOP", None), ("NOP", None)],
     cookie.ClientOptions(1220, 14, False)),
    ([], [("MSS", MSS)] + [("NOP", None)] * 8, cookie.ClientOptions(536, None, False)),
    ([("SAckOK", b""), ("EOL", None)],
     [("MSS", MSS), ("NOP", None), ("NOP", None), ("NOP", None), ("NOP", None), ("NOP", None), ("NOP", None),
      ("SAckOK", b"")],
     cookie.ClientOptions(536, None, True)),
], ids=["linux syn", "mss 1300 ws 14", "no options", "sack only"])
def test_syn_answered_with_cookie_synack(run, opts, want_opts, want_client):
    syn, want = _synack_case(opts)
    before = cookie.bucket_of(cookie.tai_seconds(), 64)
    r, counts, trace = run(PacketCase("syn", syn, TC_ACT_REDIRECT, _with_opts(want, want_opts),
                                      dont_care=("TCP.seq", "TCP.chksum")))
    after = cookie.bucket_of(cookie.tai_seconds(), 64)
    assert counts == {"synack": 1}
    assert len(r.raw) == 66
    assert r.packet[TCP].options == want_opts
    isn = r.packet[TCP].seq
    got = cookie.check_cookie(isn, (KEY,), int(ipaddress.IPv4Address(CLIENT)), 40123,
                              int(ipaddress.IPv4Address(VIP)), VPORT, after)
    assert got == want_client
    assert before == after or cookie.check_cookie(isn, (KEY,), int(ipaddress.IPv4Address(CLIENT)), 40123,
                                                  int(ipaddress.IPv4Address(VIP)), VPORT, before)


def test_syn_with_data_and_ip_options_still_answered(run):
    """A SYN carrying data (TFO style) and IP options: the SYN-ACK is rebuilt from scratch."""
    syn = (eth_c() / IP(src=CLIENT, dst=VIP, options=b"\x01\x01\x01\x00")
           / TCP(sport=40200, dport=VPORT, flags="S", seq=7, options=[("MSS", 1440)]) / Raw(b"x" * 300))
    want = (Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=VIP, dst=CLIENT, flags="DF", id=0)
            / TCP(sport=VPORT, dport=40200, flags="SA", ack=8, window=65535,
                  options=[("MSS", MSS)] + [("NOP", None)] * 8))
    r, counts, _ = run(PacketCase("syn+data", syn, TC_ACT_REDIRECT, want, dont_care=("TCP.seq", "TCP.chksum")))
    assert Raw not in r.packet and len(r.raw) == 66
    opts = cookie.decode_options(r.packet[TCP].seq & 0x7F)
    assert opts == cookie.ClientOptions(1440, None, False)


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


# --- client -> VIP: front-end or back-end ----------------------------------------------------------

@pytest.mark.parametrize("fe", ["fe1", "fe2"])
@pytest.mark.parametrize("flags,payload,with_entry", [
    ("PA", b"GET / HTTP/1.1\r\n\r\n", False),
    ("PA", b"GET /next HTTP/1.1\r\n\r\n", True),   # new request on an offloaded connection
    ("A", b"", False),                              # handshake ACK / pure ACK without entry
    ("FA", b"", True),
    ("R", b"", True),
    ("SA", b"", False),                             # odd flags: front-end decides
], ids=["data", "data with entry", "ack no entry", "fin", "rst", "syn+ack"])
def test_client_segment_to_bucket_frontend(sw, run, fe, flags, payload, with_entry):
    _, m = sw
    port = client_port_for(fe)
    pkt = to_vip(port, flags, payload=payload)
    smac, dmac, ifx = fe_macs(fe)
    setup = (lambda: m.offload_insert(CLIENT, port, 0)) if with_entry else None
    r, counts, trace = run(PacketCase("to fe", pkt, TC_ACT_REDIRECT, with_macs(pkt, smac, dmac), setup=setup))
    assert counts == {"to_frontend": 1}
    assert trace == ifx


def _cookie_ack(port, bucket_age=0, key=KEY, cookie_port=None, **kw):
    """The client's final handshake ACK: ack = cookie + 1 for its 4-tuple (or `cookie_port`'s)."""
    b = cookie.bucket_of(cookie.tai_seconds(), 64) - bucket_age
    s = cookie.make_cookie(key, int(ipaddress.IPv4Address(CLIENT)), cookie_port or port,
                           int(ipaddress.IPv4Address(VIP)), VPORT, b, 1460, 7, True)
    return to_vip(port, ack=(s + 1) & 0xFFFFFFFF, **kw)


def test_handshake_ack_absorbed(run):
    """Step 1's last packet: pure ACK, no options, no entry, ack-1 a valid cookie (this or the
    previous bucket) -> dropped here and counted, instead of crossing a front-end."""
    for age in (0, 1):
        r, counts, trace = run(PacketCase("handshake ack", _cookie_ack(40500 + age, age), TC_ACT_SHOT))
        assert counts == {"handshake_ack": 1}, age


HANDSHAKE_LOOKALIKES = {
    # an expired cookie, another generation's key, another port's cookie: front-end decides
    "expired bucket": lambda: _cookie_ack(40600, bucket_age=2),
    "other key": lambda: _cookie_ack(40601, key=cookie.CookieKey.derive(SECRET, 8)),
    "other port": lambda: _cookie_ack(40602, cookie_port=40603),
    # a SACK duplicate ACK before any response byte carries options: the back-end needs it
    "with sack option": lambda: _with_opts(_cookie_ack(40604), [("NOP", None), ("NOP", None),
                                                                ("SAck", (5000, 6000))]),
    "with payload": lambda: _cookie_ack(40605, flags="PA", payload=b"GET / HTTP/1.1\r\n\r\n"),
    "with fin": lambda: _cookie_ack(40606, flags="FA"),
}


@pytest.mark.parametrize("desc", list(HANDSHAKE_LOOKALIKES))
def test_handshake_ack_lookalikes_go_to_frontend(run, desc):
    pkt = Ether(bytes(HANDSHAKE_LOOKALIKES[desc]()))
    smac, dmac, ifx = fe_macs(fe_for(CLIENT, pkt[TCP].sport))
    r, counts, trace = run(PacketCase(desc, pkt, TC_ACT_REDIRECT, with_macs(pkt, smac, dmac)))
    assert counts == {"to_frontend": 1} and trace == ifx


def test_handshake_ack_with_entry_goes_to_backend(sw, run):
    """An offloaded connection's ACK is the back-end's even if it happens to look like a cookie."""
    _, m = sw
    pkt = _cookie_ack(40700)
    r, counts, _ = run(PacketCase("ack with entry", pkt, TC_ACT_REDIRECT,
                                  setup=lambda: m.offload_insert(CLIENT, 40700, 0)))
    assert counts == {"to_backend": 1}


def test_handshake_ack_after_key_rotation(sw, run):
    """The previous generation's cookie still counts (the idle key slot holds it)."""
    _, m = sw
    new = cookie.CookieKey.derive(SECRET, 8)
    m.set_key((new.k0, new.k1))
    try:
        for port, key in ((40800, KEY), (40801, new)):
            r, counts, _ = run(PacketCase("rotated", _cookie_ack(port, key=key), TC_ACT_SHOT))
            assert counts == {"handshake_ack": 1}
    finally:
        m.set_key((KEY.k0, KEY.k1))
        idle = 1 - (m.get_config().key_slot & 1)
        m.keys.update(struct.pack("=I", idle), SwKey())   # the other tests know one key only


def test_client_ack_with_entry_rewritten_to_backend(sw, run):
    _, m = sw
    port = 41000
    pkt = to_vip(port, "A", seq=111, ack=222)
    ip, bport, hmac, pmac, ifx = BE[1]
    want = Ether(src=pmac, dst=hmac) / IP(src=CLIENT, dst=ip) / TCP(sport=port, dport=bport, flags="A", seq=111, ack=222)
    r, counts, trace = run(PacketCase("ack to be", pkt, TC_ACT_REDIRECT, want,
                                      setup=lambda: m.offload_insert(CLIENT, port, 1, now_ns=1)))
    assert counts == {"to_backend": 1}
    assert trace == ifx
    # Re-run to read the entry (run() clears the table first): last-hit moves forward.
    m.offload_insert(CLIENT, port, 1, now_ns=1)
    run_packet(sw[0].program("switch_ingress"), pkt, ingress_ifindex=C_IF)
    assert m.offload_get(CLIENT, port).last_hit_ns > 1


def test_entry_with_unknown_backend_dropped(sw, run):
    _, m = sw
    pkt = to_vip(41001, "A")
    r, counts, _ = run(PacketCase("bad index", pkt, TC_ACT_SHOT, setup=lambda: m.offload_insert(CLIENT, 41001, 200)))
    assert counts == {"drop_no_backend": 1}


def test_no_frontend_for_bucket_dropped(sw, run):
    _, m = sw
    port = 41002
    b = hash8(CLIENT, port)
    saved = m.buckets.lookup(struct.pack("=I", b))
    m.set_bucket(b, None)
    try:
        r, counts, _ = run(PacketCase("no fe", to_vip(port, "PA", payload=b"x"), TC_ACT_SHOT))
    finally:
        m.buckets.update(struct.pack("=I", b), saved)
    assert counts == {"drop_no_frontend": 1}


# --- back-end -> client ------------------------------------------------------------------------

def test_backend_segment_with_entry_goes_to_client_as_vip(sw, run):
    _, m = sw
    port = 42000
    body = b"HTTP/1.1 200 OK\r\n\r\n" + bytes(range(256)) * 4
    pkt = from_be(0, port, "PA", payload=body)
    want = Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=VIP, dst=CLIENT) / TCP(
        sport=VPORT, dport=port, flags="PA", seq=5000, ack=6000) / Raw(body)
    r, counts, trace = run(PacketCase("be to client", pkt, TC_ACT_REDIRECT, want,
                                      setup=lambda: m.offload_insert(CLIENT, port, 0)))
    assert counts == {"to_client": 1}
    assert trace == C_IF


def test_route_is_longest_prefix_match(sw, run):
    _, m = sw
    far = "10.0.1.200"
    pkt = from_be(0, 42001, "A", dst=far)
    want = Ether(src=C_PORT_MAC, dst="02:4d:0a:00:01:80") / IP(src=VIP, dst=far) / TCP(
        sport=VPORT, dport=42001, flags="A", seq=5000, ack=6000)
    r, counts, trace = run(PacketCase("lpm", pkt, TC_ACT_REDIRECT, want,
                                      setup=lambda: m.offload_insert(far, 42001, 0)))
    assert counts == {"to_client": 1} and trace == FAR_IF


@pytest.mark.parametrize("flags,entry_backend,extra", [
    ("A", None, {}),                 # no entry: slow path
    ("SA", None, {}),                # backend's SYN-ACK during the splice
    ("FA", 0, {}),                   # FIN always to the front-end
    ("R", 0, {}),
    ("A", 1, {"offload_mismatch": 1}),  # entry names another back-end: not allowed to bypass
], ids=["no entry", "synack", "fin with entry", "rst with entry", "other backend's entry"])
def test_backend_segment_to_bucket_frontend(sw, run, flags, entry_backend, extra):
    _, m = sw
    port = client_port_for("fe2", 43000)
    pkt = from_be(0, port, flags)
    smac, dmac, ifx = fe_macs("fe2")
    setup = (lambda: m.offload_insert(CLIENT, port, entry_backend)) if entry_backend is not None else None
    r, counts, trace = run(PacketCase("be to fe", pkt, TC_ACT_REDIRECT, with_macs(pkt, smac, dmac), setup=setup))
    assert counts == {"to_frontend": 1, **extra}
    assert trace == ifx


@pytest.mark.parametrize("desc,pkt,ifx", [
    ("backend direct port to client", from_be(0, 44000, "A", sport=8080), C_IF),
    ("backend service port to a front-end (health check)", from_be(0, 44000, "A", dst=FE["fe1"][0]), 12),
    ("front-end to backend", Ether(src=FE["fe1"][1], dst=FE["fe1"][2]) / IP(src=CLIENT, dst=BE[0][0])
     / TCP(sport=44000, dport=80, flags="S"), 14),
    ("udp to front-end", eth_c() / IP(src=CLIENT, dst=FE["fe2"][0]) / UDP(sport=1, dport=53), 13),
], ids=["direct port", "to fabric", "fe to be", "udp"])
def test_other_traffic_routed(sw, run, desc, pkt, ifx):
    _, m = sw
    m.offload_insert(CLIENT, 44000, 0)
    routes = {C_IF: (C_PORT_MAC, CMAC), 12: FE["fe1"][2:0:-1], 13: FE["fe2"][2:0:-1], 14: (BE[0][3], BE[0][2])}
    smac, dmac = routes[ifx]
    r, counts, trace = run(PacketCase(desc, pkt, TC_ACT_REDIRECT, with_macs(pkt, smac, dmac)))
    assert counts == {"routed": 1}
    assert trace == ifx


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


def test_rewrite_with_ip_options(sw, run):
    """The TCP header sits after IP options: the rewrite and both checksums must follow it."""
    _, m = sw
    port = 42100
    ip, bport, hmac, pmac, _ = BE[0]
    opts = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    pkt = Ether(src=hmac, dst=pmac) / IP(src=ip, dst=CLIENT, options=opts) / TCP(
        sport=bport, dport=port, flags="A", seq=9, ack=10) / Raw(b"abc")
    want = Ether(src=C_PORT_MAC, dst=CMAC) / IP(src=VIP, dst=CLIENT, options=opts) / TCP(
        sport=VPORT, dport=port, flags="A", seq=9, ack=10) / Raw(b"abc")
    r, counts, _ = run(PacketCase("ip options", pkt, TC_ACT_REDIRECT, want,
                                  setup=lambda: m.offload_insert(CLIENT, port, 0)))
    assert counts == {"to_client": 1}


@pytest.mark.parametrize("port", [C_IF, BE[1][4], 12], ids=["client port", "other backend's port", "front-end port"])
def test_backend_source_from_another_port_dropped(sw, run, port):
    """A forged back-end source must not reach a client's offloaded connection."""
    _, m = sw
    pkt = from_be(0, 42200, "PA", payload=b"forged")
    r, counts, trace = run(PacketCase("spoof", pkt, TC_ACT_SHOT, ingress_ifindex=port,
                                      setup=lambda: m.offload_insert(CLIENT, 42200, 0)))
    assert counts == {"drop_spoofed_backend": 1} and trace == 0


def test_client_source_from_another_port_dropped(sw, run):
    """Reverse-path check: 10.0.1.2 lives behind the client port; the same source on a back-end's
    port is forged."""
    _, m = sw
    pkt = to_vip(42300, "A")
    r, counts, _ = run(PacketCase("spoof client", pkt, TC_ACT_SHOT, ingress_ifindex=BE[0][4],
                                  setup=lambda: m.offload_insert(CLIENT, 42300, 0)))
    assert counts == {"drop_spoofed_client": 1}


def test_client_without_route_still_served(run):
    """A source the switch has no route for (clients behind a default route elsewhere) is not
    refused by the reverse-path check: it gets its SYN-ACK."""
    syn = Ether(bytes(eth_c() / IP(src="198.51.100.7", dst=VIP) / TCP(sport=5555, dport=VPORT, flags="S")))
    r, counts, _ = run(PacketCase("unknown source", syn, TC_ACT_REDIRECT))
    assert counts == {"synack": 1}
