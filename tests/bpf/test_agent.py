"""The back-end agent's programs as data: one PacketCase per branch, run through BPF_PROG_TEST_RUN.

Each case sets the flow table up, runs one packet through agent_ingress or agent_egress, compares
the whole output packet (checksums recomputed independently by scapy) and then the table and the
counters. Names: c = client ISN, s = switch ISN (the cookie), b = back-end ISN, diff = b - s.
"""

from __future__ import annotations

import ctypes
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from miresga.agent.manager import (AGENT_FLOW_ESTABLISHED, AGENT_FLOW_SYN, AGENT_WSCALE_NONE, AgentSettings,
                                   AgentStat, flow_key, percpu_sum)
from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.layouts import AgentConfig, AgentFlow
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.bpf.testrun import TC_ACT_OK, TC_ACT_SHOT, PacketCase, check_case, checksums_ok, run_packet

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


@pytest.fixture(scope="module")
def obj():
    with BpfObject(object_path("agent"), max_entries={"agent_flows": 64}) as o:
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


# --- handshake ------------------------------------------------------------------------------

SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]


def test_splice_syn_stores_switch_isn_and_clears_ack(agent):
    c, s = 1_000_000, 0xDEADBEEF
    run(agent, "ingress", PacketCase(
        "splice SYN", to_backend("S", seq=c, ack=s, options=SYN_OPTS, window=64240), TC_ACT_OK,
        output=to_backend("S", seq=c, ack=0, options=SYN_OPTS, window=64240)))
    f = get_flow(agent)
    assert (f.state, f.switch_isn) == (AGENT_FLOW_SYN, s)
    assert stat(agent, AgentStat.SPLICE_SYN) == 1


def test_synack_stores_diff_and_rewrites_seq(agent):
    c, s, b = 1_000_000, 0xDEADBEEF, 123_456
    put_flow(agent, s)
    opts = [("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b""), ("NOP", None), ("WScale", 9)]
    run(agent, "egress", PacketCase(
        "SYN-ACK", from_backend("SA", seq=b, ack=c + 1, options=opts, window=65160), TC_ACT_OK,
        output=from_backend("SA", seq=s, ack=c + 1, options=opts, window=65160)))  # SYN window unscaled
    f = get_flow(agent)
    assert (f.state, f.diff, f.backend_wscale, f.promised_wscale) == (
        AGENT_FLOW_ESTABLISHED, (b - s) % M32, 9, 7)
    assert stat(agent, AgentStat.SYNACK) == 1


def test_resplice_replaces_state_and_syn_retransmit_keeps_it(agent):
    put_flow(agent, 5000, diff=777)
    run(agent, "ingress", PacketCase("retransmitted splice SYN", to_backend("S", seq=1, ack=5000),
                                     TC_ACT_OK, output=to_backend("S", seq=1, ack=0)))
    assert get_flow(agent).diff == 777 and stat(agent, AgentStat.SYN_RETRANS) == 1
    run(agent, "ingress", PacketCase("re-splice SYN (new back-end)", to_backend("S", seq=9, ack=6000),
                                     TC_ACT_OK, output=to_backend("S", seq=9, ack=0)))
    f = get_flow(agent)
    assert (f.state, f.switch_isn) == (AGENT_FLOW_SYN, 6000) and stat(agent, AgentStat.RESPLICE) == 1


def test_plain_syn_forgets_stale_state(agent):
    put_flow(agent, 5000, diff=777)
    untouched(agent, "ingress", to_backend("S", seq=1, ack=0))
    assert get_flow(agent) is None and stat(agent, AgentStat.REMOVED_PLAIN_SYN) == 1


def test_table_full_refuses_and_counts(agent):
    cap = agent.map("agent_flows").max_entries
    for i in range(cap):
        put_flow(agent, 1, port=10000 + i)
    r = run_packet(agent.program("agent_ingress"), to_backend("S", seq=1, ack=2, sport=CPORT))
    assert r.verdict == TC_ACT_SHOT
    assert get_flow(agent) is None
    assert stat(agent, AgentStat.INSERT_REFUSED) == 1 and drops(agent, DropReason.AGENT_TABLE_FULL) == 1
    # an existing flow can still be re-spliced when the table is full
    run(agent, "ingress", PacketCase("re-splice at full table", to_backend("S", seq=1, ack=99, sport=10000),
                                     TC_ACT_OK, output=to_backend("S", seq=1, ack=0, sport=10000)))
    assert get_flow(agent, port=10000).switch_isn == 99


def test_segment_before_synack_is_dropped(agent):
    put_flow(agent, 5000)
    r = run_packet(agent.program("agent_ingress"), to_backend("A", seq=2, ack=5001, load=b"GET /"))
    assert r.verdict == TC_ACT_SHOT and drops(agent, DropReason.AGENT_NOT_SPLICED) == 1


# --- data both ways, wrap-around -------------------------------------------------------------

@pytest.mark.parametrize("s,b", [
    (0xDEADBEEF, 123_456),             # diff wraps (b < s)
    (1000, 0xFFFF_FFF0),               # back-end's stream wraps within the transfer
    (0xFFFF_FFF8, 0x10),               # switch stream wraps: s + 1 + 100 crosses 2^32
    (7, 7),                            # diff 0
])
def test_data_both_ways(agent, s, b):
    c = 0xFFFF_FF00
    diff = (b - s) % M32
    put_flow(agent, s, diff=diff)
    req = b"GET /obj/1m HTTP/1.1\r\nHost: x\r\n\r\n"
    run(agent, "ingress", PacketCase(
        "request, ack in switch space", to_backend("PA", seq=c + 1, ack=s + 1 + 100, load=req), TC_ACT_OK,
        output=to_backend("PA", seq=c + 1, ack=b + 1 + 100, load=req)))
    body = bytes(range(256)) * 5
    run(agent, "egress", PacketCase(
        "response, seq into switch space", from_backend("A", seq=b + 1 + 100, ack=c + 1 + len(req), load=body),
        TC_ACT_OK, output=from_backend("A", seq=s + 1 + 100, ack=c + 1 + len(req), load=body)))
    assert stat(agent, AgentStat.XLATE_IN) == 1 and stat(agent, AgentStat.XLATE_OUT) == 1


def test_egress_with_sack_leaves_client_space_alone(agent):
    # the back-end SACKs the client's data, which is in the client's own space: no translation
    s, b, c = 500, 90_000, 10
    put_flow(agent, s, diff=b - s)
    opts = [("NOP", None), ("NOP", None), ("SAck", (c + 100, c + 200))]
    run(agent, "egress", PacketCase(
        "back-end SACK", from_backend("A", seq=b + 1, ack=c + 50, options=opts), TC_ACT_OK,
        output=from_backend("A", seq=s + 1, ack=c + 50, options=opts)))


# --- SACK blocks ---------------------------------------------------------------------------

def sack_opts(blocks, lead=(("NOP", None), ("NOP", None))):
    return [*lead, ("SAck", tuple(x % M32 for blk in blocks for x in blk))]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_sack_blocks_translated(agent, n):
    s, b = 0xFFFF_0000, 0x0000_F000  # edges cross 2^32 after translation
    diff = (b - s) % M32
    put_flow(agent, s, diff=diff)
    blocks = [(s + 1 + 3000 * (i + 1), s + 1 + 3000 * (i + 1) + 1448) for i in range(n)]
    lead = (("NOP", None), ("NOP", None)) if n < 4 else ()  # 4 blocks fill 34 of 40 bytes
    run(agent, "ingress", PacketCase(
        f"{n} SACK blocks", to_backend("A", seq=5, ack=s + 1, options=sack_opts(blocks, lead)), TC_ACT_OK,
        output=to_backend("A", seq=5, ack=b + 1,
                          options=sack_opts([(x + diff, y + diff) for x, y in blocks], lead))))
    assert stat(agent, AgentStat.SACK_BLOCKS) == n


def test_dsack_block_translated(agent):
    s, b = 100, 5_000_000
    diff = b - s
    put_flow(agent, s, diff=diff)
    blocks = [(s + 1, s + 1 + 1448), (s + 1 + 4344, s + 1 + 5792)]  # first block below ack: DSACK
    run(agent, "ingress", PacketCase(
        "DSACK", to_backend("A", seq=5, ack=s + 1 + 2896, options=sack_opts(blocks)), TC_ACT_OK,
        output=to_backend("A", seq=5, ack=b + 1 + 2896, options=sack_opts([(x + diff, y + diff) for x, y in blocks]))))


def test_sack_at_odd_offset_keeps_checksum_right(agent):
    s, b = 0x1234_5678, 0x9ABC_DEF0
    diff = (b - s) % M32
    put_flow(agent, s, diff=diff)
    blocks = [(s + 3001, s + 4449)]
    lead = (("NOP", None),)  # SACK option at offset 1: its edges sit on odd offsets
    inp = to_backend("A", seq=5, ack=s + 1, options=sack_opts(blocks, lead) + [("NOP", None)])
    r = run(agent, "ingress", PacketCase(
        "SACK at odd offset", inp, TC_ACT_OK,
        output=to_backend("A", seq=5, ack=b + 1,
                          options=sack_opts([(x + diff, y + diff) for x, y in blocks], lead) + [("NOP", None)])))
    assert checksums_ok(r.packet)


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


# --- window scale ----------------------------------------------------------------------------

@pytest.mark.parametrize("be_ws,promised,win,want", [
    (9, 7, 100, 400),      # back-end scales more: the field grows
    (5, 7, 100, 25),       # back-end scales less: the field shrinks
    (5, 7, 3, 1),          # ... but a non-zero window never becomes zero
    (11, 7, 8000, 65535),  # clamped to 16 bits
    (7, 7, 100, 100),      # equal: untouched
    (AGENT_WSCALE_NONE, 7, 100, 100),  # no scaling negotiated: untouched
    (9, 7, 0, 0),          # zero window stays zero
])
def test_window_rescaled_to_promised_scale(agent, be_ws, promised, win, want):
    s, b = 1, 1001
    put_flow(agent, s, diff=b - s, backend_wscale=be_ws, promised_wscale=promised)
    run(agent, "egress", PacketCase(
        "window rescale", from_backend("A", seq=b + 1, ack=7, window=win, load=b"x" * 10), TC_ACT_OK,
        output=from_backend("A", seq=s + 1, ack=7, window=want, load=b"x" * 10)))
    assert stat(agent, AgentStat.WINDOW_RESCALED) == (1 if want != win else 0)


def test_synack_without_wscale_means_no_rescale(agent):
    put_flow(agent, 50)
    run(agent, "egress", PacketCase(
        "SYN-ACK without options", from_backend("SA", seq=900, ack=2), TC_ACT_OK,
        output=from_backend("SA", seq=50, ack=2)))
    assert get_flow(agent).backend_wscale == AGENT_WSCALE_NONE


# --- close ------------------------------------------------------------------------------------

def test_rst_from_client_translated_then_removed(agent):
    s, b = 100, 900
    put_flow(agent, s, diff=b - s)
    run(agent, "ingress", PacketCase("client RST", to_backend("RA", seq=5, ack=s + 10), TC_ACT_OK,
                                     output=to_backend("RA", seq=5, ack=b + 10)))
    assert get_flow(agent) is None and stat(agent, AgentStat.REMOVED_RST) == 1


def test_rst_from_backend_translated_then_removed(agent):
    s, b = 100, 900
    put_flow(agent, s, diff=b - s)
    run(agent, "egress", PacketCase("back-end RST", from_backend("R", seq=b + 10), TC_ACT_OK,
                                    output=from_backend("R", seq=s + 10)))
    assert get_flow(agent) is None and stat(agent, AgentStat.REMOVED_RST) == 1


def test_rst_during_handshake_removes(agent):
    put_flow(agent, 100)
    untouched(agent, "egress", from_backend("RA", seq=0, ack=6))  # back-end refused the SYN
    assert get_flow(agent) is None


@pytest.mark.parametrize("order", ["client closes first", "back-end closes first"])
def test_fin_both_ways_acknowledged_removes(agent, order):
    s, b, c = 100, 900, 5000
    diff = b - s
    put_flow(agent, s, diff=diff)
    client_fin = (to_backend("FA", seq=c, ack=s + 50), to_backend("FA", seq=c, ack=b + 50))
    be_ack_of_it = (from_backend("A", seq=b + 50, ack=c + 1), from_backend("A", seq=s + 50, ack=c + 1))
    be_fin = (from_backend("FA", seq=b + 50, ack=c + 1), from_backend("FA", seq=s + 50, ack=c + 1))
    client_ack_of_it = (to_backend("A", seq=c + 1, ack=s + 51), to_backend("A", seq=c + 1, ack=b + 51))
    steps = ([("ingress", client_fin), ("egress", be_ack_of_it), ("egress", be_fin), ("ingress", client_ack_of_it)]
             if order == "client closes first" else
             [("egress", be_fin), ("ingress", (to_backend("A", seq=c, ack=s + 51), to_backend("A", seq=c, ack=b + 51))),
              ("ingress", (to_backend("FA", seq=c, ack=s + 51), to_backend("FA", seq=c, ack=b + 51))),
              ("egress", (from_backend("A", seq=b + 51, ack=c + 1), from_backend("A", seq=s + 51, ack=c + 1)))])
    for i, (direction, (inp, out)) in enumerate(steps):
        assert get_flow(agent) is not None, f"removed too early, before step {i}"
        run(agent, direction, PacketCase(f"{order} step {i}", inp, TC_ACT_OK, output=out))
    assert get_flow(agent) is None
    assert stat(agent, AgentStat.REMOVED_FIN) == 1


def test_fin_not_yet_acknowledged_keeps_state(agent):
    s, b, c = 100, 900, 5000
    put_flow(agent, s, diff=b - s)
    run(agent, "ingress", PacketCase("client FIN", to_backend("FA", seq=c, ack=s + 50), TC_ACT_OK,
                                     output=to_backend("FA", seq=c, ack=b + 50)))
    run(agent, "egress", PacketCase("back-end FIN, acking the client's", from_backend("FA", seq=b + 50, ack=c + 1),
                                    TC_ACT_OK, output=from_backend("FA", seq=s + 50, ack=c + 1)))
    # client acks only part of the back-end's data, not its FIN
    run(agent, "ingress", PacketCase("old ack", to_backend("A", seq=c + 1, ack=s + 40), TC_ACT_OK,
                                     output=to_backend("A", seq=c + 1, ack=b + 40)))
    f = get_flow(agent)
    assert f is not None and (f.fin_in, f.fin_out, f.fin_in_acked, f.fin_out_acked) == (1, 1, 1, 0)
    assert f.fin_in_end == c + 1 and f.fin_out_end == b + 51


# --- what the agent must leave alone ------------------------------------------------------------

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
