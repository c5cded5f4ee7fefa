"""The back-end agent's programs as data: tables of cases run through BPF_PROG_TEST_RUN by one runner.

Each case sets the flow table up, runs its packets through agent_ingress or agent_egress, compares
each whole output packet (checksums recomputed independently by scapy) and then the table and the
counters. Below the tables: packets that must pass byte for byte untouched, malformed options
(compared as raw bytes), and properties against a Python model.
Names: c = client ISN, s = switch ISN (the cookie), b = back-end ISN, diff = b - s.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from miresga.agent.manager import (AGENT_FLOW_ESTABLISHED, AGENT_FLOW_SYN, AGENT_WSCALE_NONE, AgentSettings,
                                   AgentStat, flow_key, percpu_sum)
from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.layouts import AgentConfig, AgentFlow
from miresga.agent.objects import AgentObjects
from miresga.bpf.testrun import TC_ACT_OK, TC_ACT_SHOT, PacketCase, check_case, run_packet

CLIENT, CPORT, BACKEND, SPORT, DIRECT = "10.0.1.2", 40000, "10.0.4.2", 80, 8080
C_MAC, B_MAC = "02:4d:0a:00:01:02", "02:4d:0a:00:04:02"
M32 = 1 << 32


def to_backend(flags="A", seq=1000, ack=0, options=(), load=b"", sport=CPORT, dport=SPORT, window=502):
    p = Ether(src=C_MAC, dst=B_MAC) / IP(src=CLIENT, dst=BACKEND) / TCP(
        sport=sport, dport=dport, flags=flags, seq=seq % M32, ack=ack % M32, window=window, options=list(options))
    return p / Raw(load) if load else p


def from_backend(flags="A", seq=1000, ack=0, options=(), load=b"", sport=SPORT, dport=CPORT, window=502):
    p = Ether(src=B_MAC, dst=C_MAC) / IP(src=BACKEND, dst=CLIENT) / TCP(
        sport=sport, dport=dport, flags=flags, seq=seq % M32, ack=ack % M32, window=window, options=list(options))
    return p / Raw(load) if load else p


@pytest.fixture(scope="module", params=["tc", "xdp"])
def obj(request):
    """The agent with TC or XDP ingress (bpf/lib/pkt_ctx.h): every case must hold for both."""
    with AgentObjects(request.param == "xdp", 64) as o:
        c = AgentConfig()
        c.service_ports[0] = socket.htons(SPORT)
        c.window_scale = 7
        o.map("agent_config").update(ctypes.c_uint32(0), c)
        yield o


@pytest.fixture
def agent(obj):
    """Empty flow table and zeroed counters for each test."""
    obj.map("agent_flows").clear()
    for name in ("agent_stats", "agent_drops"):
        m = obj.map(name)
        zero = bytes(8 * _ncpus())
        for k in range(m.max_entries):
            _percpu_write(m, k, zero)
    return obj


def _ncpus():
    from miresga.agent.manager import _num_cpus
    return _num_cpus()


def _percpu_write(m, key, raw):
    from miresga.bpf.libbpf import _lib
    k = ctypes.c_uint32(key)
    buf = ctypes.create_string_buffer(raw, len(raw))
    assert _lib.bpf_map_update_elem(m.fd, ctypes.byref(k), buf, 0) == 0


def put_flow(o, s, diff=None, port=CPORT, addr=CLIENT, **kw):
    f = AgentFlow(switch_isn=s % M32, state=AGENT_FLOW_SYN if diff is None else AGENT_FLOW_ESTABLISHED,
                  diff=(diff or 0) % M32, backend_wscale=kw.pop("backend_wscale", AGENT_WSCALE_NONE),
                  promised_wscale=kw.pop("promised_wscale", 7), **kw)
    o.map("agent_flows").update(flow_key(addr, port), f)


def get_flow(o, port=CPORT, addr=CLIENT) -> AgentFlow | None:
    raw = o.map("agent_flows").lookup(flow_key(addr, port))
    return AgentFlow.from_buffer_copy(raw) if raw else None


def stat(o, s: AgentStat) -> int:
    return percpu_sum(o.map("agent_stats"), s)


def drops(o, r: DropReason) -> int:
    return percpu_sum(o.map("agent_drops"), -r)


def run(o, direction, case: PacketCase):
    return check_case(o.program(f"agent_{direction}"), case)


def untouched(o, direction, pkt):
    r = run_packet(o.program(f"agent_{direction}"), pkt)
    assert r.verdict == TC_ACT_OK
    assert r.raw == bytes(pkt)


# --- settings (layouts and enums: test_layouts.py) -------------------------------------------

def test_settings_from_config():
    from miresga.control.config import load_config
    cfg = load_config()
    s = AgentSettings.from_config(cfg, "be1")
    assert s.service_ports == (cfg.backend("be1").port,)
    assert (s.window_scale, s.capacity, s.idle_timeout_s) == (
        cfg.switch.window_scale, cfg.agent.capacity, cfg.agent.idle_timeout_s)


# --- the runner ------------------------------------------------------------------------------

Check = Callable[[AgentObjects], None]


@dataclass
class Step:
    """One packet through agent_<direction>, compared whole (PacketCase); then `expect`."""

    direction: str
    input: Packet
    output: Packet | None = None
    verdict: int = TC_ACT_OK
    expect: tuple[Check, ...] = ()


@dataclass
class AgentCase:
    """Flows put in the table, then packets in order; `expect` checks table and counters after."""

    description: str
    steps: list[Step]
    flows: tuple[dict, ...] = ()          # put_flow(**flow) each, before the first step
    expect: tuple[Check, ...] = ()
    setup: Check | None = None


def flow_has(port=CPORT, **want) -> Check:
    def check(o):
        f = get_flow(o, port=port)
        assert f is not None, f"no flow for port {port}"
        assert {k: getattr(f, k) for k in want} == want
    return check


def no_flow(port=CPORT) -> Check:
    def check(o):
        assert get_flow(o, port=port) is None, f"flow for port {port} still there"
    return check


def counted(**want: int) -> Check:
    """These agent counters have these values (others are not checked)."""
    def check(o):
        assert {k: stat(o, AgentStat[k]) for k in want} == want
    return check


def dropped(reason: DropReason, n: int = 1) -> Check:
    def check(o):
        assert drops(o, reason) == n
    return check


def flow(s, diff=None, **kw) -> dict:
    return dict(s=s, diff=diff, **kw)


def run_agent_case(o, case: AgentCase) -> None:
    for f in case.flows:
        put_flow(o, **f)
    if case.setup:
        case.setup(o)
    for i, st_ in enumerate(case.steps):
        run(o, st_.direction, PacketCase(f"{case.description}, step {i}", st_.input, st_.verdict, st_.output))
        for check in st_.expect:
            check(o)
    for check in case.expect:
        check(o)


# --- handshake ------------------------------------------------------------------------------

SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]
_SYNACK_OPTS = [("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b""), ("NOP", None), ("WScale", 9)]


def _fill_table(o):
    for i in range(o.map("agent_flows").max_entries):
        put_flow(o, 1, port=10000 + i)


HANDSHAKE_CASES = [
    AgentCase("splice SYN stores the switch ISN and clears the ack", [
        Step("ingress", to_backend("S", seq=1_000_000, ack=0xDEADBEEF, options=SYN_OPTS, window=64240),
             to_backend("S", seq=1_000_000, ack=0, options=SYN_OPTS, window=64240))],
        expect=(flow_has(state=AGENT_FLOW_SYN, switch_isn=0xDEADBEEF), counted(SPLICE_SYN=1))),
    AgentCase("SYN-ACK stores diff and its seq goes into switch space (SYN window unscaled)", [
        Step("egress", from_backend("SA", seq=123_456, ack=1_000_001, options=_SYNACK_OPTS, window=65160),
             from_backend("SA", seq=0xDEADBEEF, ack=1_000_001, options=_SYNACK_OPTS, window=65160))],
        flows=(flow(0xDEADBEEF),),
        expect=(flow_has(state=AGENT_FLOW_ESTABLISHED, diff=(123_456 - 0xDEADBEEF) % M32, backend_wscale=9,
                         promised_wscale=7), counted(SYNACK=1))),
    AgentCase("retransmitted splice SYN keeps the state, a re-splice replaces it", [
        Step("ingress", to_backend("S", seq=1, ack=5000), to_backend("S", seq=1, ack=0),
             expect=(flow_has(diff=777), counted(SYN_RETRANS=1))),
        Step("ingress", to_backend("S", seq=9, ack=6000), to_backend("S", seq=9, ack=0))],
        flows=(flow(5000, diff=777),),
        expect=(flow_has(state=AGENT_FLOW_SYN, switch_isn=6000), counted(RESPLICE=1))),
    AgentCase("table full refuses and counts; an existing flow can still be re-spliced", [
        Step("ingress", to_backend("S", seq=1, ack=2, sport=CPORT), verdict=TC_ACT_SHOT,
             expect=(no_flow(), counted(INSERT_REFUSED=1), dropped(DropReason.AGENT_TABLE_FULL))),
        Step("ingress", to_backend("S", seq=1, ack=99, sport=10000), to_backend("S", seq=1, ack=0, sport=10000))],
        setup=_fill_table, expect=(flow_has(port=10000, switch_isn=99),)),
    AgentCase("segment before the SYN-ACK is dropped", [
        Step("ingress", to_backend("A", seq=2, ack=5001, load=b"GET /"), verdict=TC_ACT_SHOT)],
        flows=(flow(5000),), expect=(dropped(DropReason.AGENT_NOT_SPLICED),)),
]


# --- data both ways, wrap-around, SACK blocks --------------------------------------------------

def _both_ways(desc, s, b):
    c, diff = 0xFFFF_FF00, (b - s) % M32
    req, body = b"GET /obj/1m HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 5
    return AgentCase(f"data both ways: {desc}", [
        Step("ingress", to_backend("PA", seq=c + 1, ack=s + 1 + 100, load=req),        # ack in switch space
             to_backend("PA", seq=c + 1, ack=b + 1 + 100, load=req)),
        Step("egress", from_backend("A", seq=b + 1 + 100, ack=c + 1 + len(req), load=body),   # seq into it
             from_backend("A", seq=s + 1 + 100, ack=c + 1 + len(req), load=body))],
        flows=(flow(s, diff=diff),), expect=(counted(XLATE_IN=1, XLATE_OUT=1),))


def sack_opts(blocks, lead=(("NOP", None), ("NOP", None))):
    return [*lead, ("SAck", tuple(x % M32 for blk in blocks for x in blk))]


def _sack_blocks(n):
    s, b = 0xFFFF_0000, 0x0000_F000  # edges cross 2^32 after translation
    diff = (b - s) % M32
    blocks = [(s + 1 + 3000 * (i + 1), s + 1 + 3000 * (i + 1) + 1448) for i in range(n)]
    lead = (("NOP", None), ("NOP", None)) if n < 4 else ()  # 4 blocks fill 34 of 40 bytes
    return AgentCase(f"{n} SACK blocks translated", [
        Step("ingress", to_backend("A", seq=5, ack=s + 1, options=sack_opts(blocks, lead)),
             to_backend("A", seq=5, ack=b + 1, options=sack_opts([(x + diff, y + diff) for x, y in blocks], lead)))],
        flows=(flow(s, diff=diff),), expect=(counted(SACK_BLOCKS=n),))


def _dsack():
    s, b = 100, 5_000_000
    diff = b - s
    blocks = [(s + 1, s + 1 + 1448), (s + 1 + 4344, s + 1 + 5792)]  # first block below ack: DSACK
    return AgentCase("DSACK block translated", [
        Step("ingress", to_backend("A", seq=5, ack=s + 1 + 2896, options=sack_opts(blocks)),
             to_backend("A", seq=5, ack=b + 1 + 2896, options=sack_opts([(x + diff, y + diff) for x, y in blocks])))],
        flows=(flow(s, diff=diff),))


def _sack_at_odd_offset():
    s, b = 0x1234_5678, 0x9ABC_DEF0
    diff = (b - s) % M32
    blocks = [(s + 3001, s + 4449)]
    lead = (("NOP", None),)  # SACK option at offset 1: its edges sit on odd offsets (checksums: the runner)
    return AgentCase("SACK at an odd offset keeps the checksum right", [
        Step("ingress", to_backend("A", seq=5, ack=s + 1, options=sack_opts(blocks, lead) + [("NOP", None)]),
             to_backend("A", seq=5, ack=b + 1,
                        options=sack_opts([(x + diff, y + diff) for x, y in blocks], lead) + [("NOP", None)]))],
        flows=(flow(s, diff=diff),))


_BE_SACK = [("NOP", None), ("NOP", None), ("SAck", (10 + 100, 10 + 200))]

DATA_CASES = [
    _both_ways("diff wraps (b < s)", 0xDEADBEEF, 123_456),
    _both_ways("back-end's stream wraps within the transfer", 1000, 0xFFFF_FFF0),
    _both_ways("switch stream wraps: s + 1 + 100 crosses 2^32", 0xFFFF_FFF8, 0x10),
    _both_ways("diff 0", 7, 7),
    # the back-end SACKs the client's data, which is in the client's own space: no translation
    AgentCase("egress SACK leaves the client's space alone", [
        Step("egress", from_backend("A", seq=90_000 + 1, ack=10 + 50, options=_BE_SACK),
             from_backend("A", seq=500 + 1, ack=10 + 50, options=_BE_SACK))],
        flows=(flow(500, diff=90_000 - 500),)),
    *[_sack_blocks(n) for n in (1, 2, 3, 4)],
    _dsack(),
    _sack_at_odd_offset(),
]


# --- window scale ----------------------------------------------------------------------------

def _window(desc, be_ws, promised, win, want):
    s, b = 1, 1001
    return AgentCase(f"window: {desc}", [
        Step("egress", from_backend("A", seq=b + 1, ack=7, window=win, load=b"x" * 10),
             from_backend("A", seq=s + 1, ack=7, window=want, load=b"x" * 10))],
        flows=(flow(s, diff=b - s, backend_wscale=be_ws, promised_wscale=promised),),
        expect=(counted(WINDOW_RESCALED=1 if want != win else 0),))


WINDOW_CASES = [
    _window("back-end scales more: the field grows", 9, 7, 100, 400),
    _window("back-end scales less: the field shrinks", 5, 7, 100, 25),
    _window("a non-zero window never becomes zero", 5, 7, 3, 1),
    _window("clamped to 16 bits", 11, 7, 8000, 65535),
    _window("equal scales: untouched", 7, 7, 100, 100),
    _window("no scaling negotiated: untouched", AGENT_WSCALE_NONE, 7, 100, 100),
    _window("zero window stays zero", 9, 7, 0, 0),
    AgentCase("SYN-ACK without window scale means no rescaling", [
        Step("egress", from_backend("SA", seq=900, ack=2), from_backend("SA", seq=50, ack=2))],
        flows=(flow(50),), expect=(flow_has(backend_wscale=AGENT_WSCALE_NONE),)),
]


# --- close ------------------------------------------------------------------------------------

def _fins(order):
    """Both FINs, each acknowledged: the flow goes with the last ACK, not before."""
    s, b, c = 100, 900, 5000
    kept = (flow_has(),)
    if order == "client closes first":
        steps = [
            Step("ingress", to_backend("FA", seq=c, ack=s + 50), to_backend("FA", seq=c, ack=b + 50), expect=kept),
            Step("egress", from_backend("A", seq=b + 50, ack=c + 1), from_backend("A", seq=s + 50, ack=c + 1),
                 expect=kept),
            Step("egress", from_backend("FA", seq=b + 50, ack=c + 1), from_backend("FA", seq=s + 50, ack=c + 1),
                 expect=kept),
            Step("ingress", to_backend("A", seq=c + 1, ack=s + 51), to_backend("A", seq=c + 1, ack=b + 51))]
    else:
        steps = [
            Step("egress", from_backend("FA", seq=b + 50, ack=c + 1), from_backend("FA", seq=s + 50, ack=c + 1),
                 expect=kept),
            Step("ingress", to_backend("A", seq=c, ack=s + 51), to_backend("A", seq=c, ack=b + 51), expect=kept),
            Step("ingress", to_backend("FA", seq=c, ack=s + 51), to_backend("FA", seq=c, ack=b + 51), expect=kept),
            Step("egress", from_backend("A", seq=b + 51, ack=c + 1), from_backend("A", seq=s + 51, ack=c + 1))]
    return AgentCase(f"FIN both ways acknowledged removes the flow: {order}", steps, flows=(flow(s, diff=b - s),),
                     expect=(no_flow(), counted(REMOVED_FIN=1)))


CLOSE_CASES = [
    AgentCase("client RST translated, then the flow removed", [
        Step("ingress", to_backend("RA", seq=5, ack=100 + 10), to_backend("RA", seq=5, ack=900 + 10))],
        flows=(flow(100, diff=800),), expect=(no_flow(), counted(REMOVED_RST=1))),
    AgentCase("back-end RST translated, then the flow removed", [
        Step("egress", from_backend("R", seq=900 + 10), from_backend("R", seq=100 + 10))],
        flows=(flow(100, diff=800),), expect=(no_flow(), counted(REMOVED_RST=1))),
    _fins("client closes first"),
    _fins("back-end closes first"),
    AgentCase("FIN not yet acknowledged keeps the state", [
        Step("ingress", to_backend("FA", seq=5000, ack=100 + 50), to_backend("FA", seq=5000, ack=900 + 50)),
        Step("egress", from_backend("FA", seq=900 + 50, ack=5001),           # acks the client's FIN
             from_backend("FA", seq=100 + 50, ack=5001)),
        Step("ingress", to_backend("A", seq=5001, ack=100 + 40),             # acks part of the data, not the FIN
             to_backend("A", seq=5001, ack=900 + 40))],
        flows=(flow(100, diff=800),),
        expect=(flow_has(fin_in=1, fin_out=1, fin_in_acked=1, fin_out_acked=0, fin_in_end=5001, fin_out_end=951),)),
]

CASES = HANDSHAKE_CASES + DATA_CASES + WINDOW_CASES + CLOSE_CASES


def test_case_descriptions_are_unique():
    assert len({c.description for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_packet(agent, case):
    run_agent_case(agent, case)


# --- byte for byte: what the agent must leave alone, malformed options ---------------------------

def test_plain_syn_forgets_stale_state(agent):
    put_flow(agent, 5000, diff=777)
    untouched(agent, "ingress", to_backend("S", seq=1, ack=0))
    assert get_flow(agent) is None and stat(agent, AgentStat.REMOVED_PLAIN_SYN) == 1


def test_rst_during_handshake_removes(agent):
    put_flow(agent, 100)
    untouched(agent, "egress", from_backend("RA", seq=0, ack=6))  # back-end refused the SYN
    assert get_flow(agent) is None


@pytest.mark.parametrize("desc,raw_opts", [
    ("option runs past the header", b"\x01\x01\x05\x12" + b"\x00" * 8),       # SACK len 18, 8 bytes left
    ("SACK length not 2+8n", b"\x01\x01\x05\x0b" + b"\x00" * 8),              # len 11 (kernel ignores)
    ("option length 1", b"\x01\x01\x08\x01" + b"\x00" * 8),
    ("kind with no length byte", b"\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x05"),
])
def test_malformed_options_pass_with_ack_translated(agent, desc, raw_opts):
    s, b = 100, 900
    put_flow(agent, s, diff=b - s)
    assert len(raw_opts) % 4 == 0

    def build(ack):
        t = TCP(sport=CPORT, dport=SPORT, flags="A", seq=5, ack=ack, window=502, dataofs=5 + len(raw_opts) // 4)
        return Ether(bytes(Ether(src=C_MAC, dst=B_MAC) / IP(src=CLIENT, dst=BACKEND) / t / Raw(raw_opts)))

    r = run_packet(agent.program("agent_ingress"), build(s + 1))
    assert r.verdict == TC_ACT_OK, desc
    want = build(b + 1)
    # ack translated, option bytes as they were, and the checksum scapy computed over those bytes
    # (checksums_ok cannot be used: scapy re-serialises malformed options differently)
    assert r.raw == bytes(want), desc
    assert stat(agent, AgentStat.BAD_OPTIONS) == 1
    assert stat(agent, AgentStat.SACK_BLOCKS) == 0


def test_sack_before_malformed_option_still_translated(agent):
    s, b = 100, 900
    diff = b - s
    put_flow(agent, s, diff=diff)

    def build(ack, left, right):
        raw = b"\x01\x01\x05\x0a" + left.to_bytes(4, "big") + right.to_bytes(4, "big") + b"\x08\x01\x00\x00"
        t = TCP(sport=CPORT, dport=SPORT, flags="A", seq=5, ack=ack, window=502, dataofs=5 + len(raw) // 4)
        return Ether(bytes(Ether(src=C_MAC, dst=B_MAC) / IP(src=CLIENT, dst=BACKEND) / t / Raw(raw)))

    r = run_packet(agent.program("agent_ingress"), build(s + 1, s + 3000, s + 4000))
    assert r.raw == bytes(build(b + 1, b + 3000, b + 4000))
    assert stat(agent, AgentStat.SACK_BLOCKS) == 1 and stat(agent, AgentStat.BAD_OPTIONS) == 1


def test_unknown_flows_untouched(agent):
    put_flow(agent, 100, diff=800, port=CPORT + 1)  # someone else's flow
    untouched(agent, "ingress", to_backend("PA", seq=5, ack=77, load=b"GET / HTTP/1.1\r\n\r\n"))
    untouched(agent, "egress", from_backend("A", seq=77, ack=5, load=b"HTTP/1.1 200 OK\r\n"))
    untouched(agent, "ingress", to_backend("A", seq=5, ack=77, options=sack_opts([(1000, 2000)])))
    assert stat(agent, AgentStat.UNKNOWN) == 3


def test_direct_port_untouched_even_for_a_spliced_client(agent):
    put_flow(agent, 100, diff=800)
    untouched(agent, "ingress", to_backend("PA", seq=5, ack=77, dport=DIRECT, load=b"GET /"))
    untouched(agent, "ingress", to_backend("S", seq=5, ack=77, dport=DIRECT))  # not a splice SYN
    untouched(agent, "egress", from_backend("A", seq=77, ack=5, sport=DIRECT, load=b"HTTP"))
    assert get_flow(agent).switch_isn == 100


@pytest.mark.parametrize("pkt,broken", [
    (Ether() / ARP(), False),
    (Ether(src=C_MAC, dst=B_MAC) / IP(src=CLIENT, dst=BACKEND) / UDP(sport=CPORT, dport=SPORT) / b"x", False),
    (Ether(bytes(to_backend("A", seq=1, ack=2))[:40]), True),  # truncated TCP header
    (Ether(src=C_MAC, dst=B_MAC) / IP(src=CLIENT, dst=BACKEND, flags="MF") / TCP(sport=CPORT, dport=SPORT), True),
], ids=["arp", "udp", "truncated", "fragment"])
def test_non_tcp_and_broken_packets_untouched(agent, pkt, broken):
    put_flow(agent, 100, diff=800)
    untouched(agent, "ingress", pkt)
    untouched(agent, "egress", pkt)
    assert stat(agent, AgentStat.UNPARSED) == (2 if broken else 0)


# --- properties: the programs against a Python model of the translation --------------------------

u32 = st.integers(0, M32 - 1)


def model_window(win: int, be_ws: int, promised: int) -> int:
    if be_ws == AGENT_WSCALE_NONE or be_ws == promised:
        return win
    w = min((win << be_ws) >> promised, 0xFFFF)
    return 1 if w == 0 and win else w


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=u32, b=u32, ack_off=st.integers(0, 1 << 31), edges=st.lists(st.tuples(u32, u32), max_size=4),
       nops=st.integers(0, 2), load=st.binary(max_size=64))
def test_ingress_matches_model(agent, s, b, ack_off, edges, nops, load):
    diff = (b - s) % M32
    put_flow(agent, s, diff=diff)
    lead = (("NOP", None),) * nops if len(edges) < 4 else ()
    opts = sack_opts(edges, lead) if edges else []
    want_opts = sack_opts([(x + diff, y + diff) for x, y in edges], lead) if edges else []
    run(agent, "ingress", PacketCase(
        "model", to_backend("PA", seq=77, ack=s + ack_off, options=opts, load=load), TC_ACT_OK,
        output=to_backend("PA", seq=77, ack=s + ack_off + diff, options=want_opts, load=load)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=u32, b=u32, seq_off=st.integers(0, 1 << 31), win=st.integers(0, 0xFFFF),
       be_ws=st.sampled_from([0, 2, 7, 9, 10, 14, AGENT_WSCALE_NONE]), promised=st.integers(0, 14),
       load=st.binary(max_size=64))
def test_egress_matches_model(agent, s, b, seq_off, win, be_ws, promised, load):
    diff = (b - s) % M32
    put_flow(agent, s, diff=diff, backend_wscale=be_ws, promised_wscale=promised)
    run(agent, "egress", PacketCase(
        "model", from_backend("A", seq=b + seq_off, ack=9, window=win, load=load), TC_ACT_OK,
        output=from_backend("A", seq=s + seq_off, ack=9, window=model_window(win, be_ws, promised), load=load)))
