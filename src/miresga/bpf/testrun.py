"""Feed a scapy packet to a BPF program through BPF_PROG_TEST_RUN; get verdict and packet back.

Packet tests are data (STYLE.md, after katran): `PacketCase` holds the input, the expected verdict
and the expected output packet with named don't-care fields; `check_case` runs one and explains
any difference field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from scapy.layers.l2 import Ether
from scapy.packet import Packet

from miresga.bpf.libbpf import Program

# TC verdicts (linux/pkt_cls.h)
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7


@dataclass
class RunResult:
    verdict: int
    packet: Ether | None
    raw: bytes
    duration_ns: int


SKB_CTX_SIZE = 192          # sizeof(struct __sk_buff), enough for the fields test-run accepts
SKB_INGRESS_IFINDEX_OFF = 36


def skb_ctx(ingress_ifindex: int = 0) -> bytes | None:
    """A __sk_buff context for TC test runs (None when nothing is set)."""
    if not ingress_ifindex:
        return None
    b = bytearray(SKB_CTX_SIZE)
    b[SKB_INGRESS_IFINDEX_OFF:SKB_INGRESS_IFINDEX_OFF + 4] = ingress_ifindex.to_bytes(4, "little")
    return bytes(b)


def run_packet(prog: Program, pkt: Packet | bytes, repeat: int = 1, ingress_ifindex: int = 0) -> RunResult:
    """`ingress_ifindex`: the port the packet arrives on, as skb->ingress_ifindex sees it."""
    data = bytes(pkt)
    r = prog.test_run(data, repeat=repeat, ctx=skb_ctx(ingress_ifindex))
    out = Ether(r.data) if r.data else None
    return RunResult(r.retval, out, r.data, r.duration_ns)


def per_packet_ns(prog: Program, pkt: Packet | bytes, repeat: int = 100000, ingress_ifindex: int = 0) -> int:
    """Average run time of the program on this packet (BPF_PROG_TEST_RUN repeat)."""
    return prog.test_run(bytes(pkt), repeat=repeat, ctx=skb_ctx(ingress_ifindex)).duration_ns


@dataclass
class PacketCase:
    """One packet test as data."""

    description: str
    input: Packet
    verdict: int
    output: Packet | None = None          # expected packet (None: do not compare)
    dont_care: tuple[str, ...] = ()       # "Layer.field" names to ignore, e.g. "TCP.seq"
    setup: Callable[[], Any] | None = None  # map set-up before the run
    check: Callable[[RunResult], Any] | None = None  # extra assertions (e.g. map state)
    ingress_ifindex: int = 0                # port the packet arrives on (skb->ingress_ifindex)


def _fields(pkt: Packet, dont_care: tuple[str, ...]) -> dict[str, Any]:
    """Flatten a packet to {"Layer.field": value} with checksums recomputed by scapy as reference."""
    out: dict[str, Any] = {}
    layer = pkt
    while layer is not None and not isinstance(layer, type(None)):
        lname = layer.__class__.__name__
        if lname in ("NoPayload",):
            break
        if lname in ("Raw", "Padding"):
            key = f"{lname}.load"
            if key not in dont_care:
                out[key] = bytes(layer.load)
            break
        for f in layer.fields_desc:
            key = f"{lname}.{f.name}"
            if key in dont_care:
                continue
            out[key] = layer.getfieldval(f.name)
        layer = layer.payload
    return out


def checksums_ok(pkt: Packet) -> bool:
    """True if the IP and TCP/UDP checksums in `pkt` equal what scapy computes independently."""
    from scapy.layers.inet import IP, TCP, UDP
    raw = Ether(bytes(pkt))
    for layer in (IP, TCP, UDP):
        if layer in raw:
            clone = Ether(bytes(raw))
            del clone[layer].chksum
            if Ether(bytes(clone))[layer].chksum != raw[layer].chksum:
                return False
    return True


def diff_packets(got: Packet, want: Packet, dont_care: tuple[str, ...] = ()) -> list[str]:
    want = Ether(bytes(want))  # fill checksums and lengths of the expectation
    a, b = _fields(got, dont_care), _fields(want, dont_care)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: got {a.get(k)!r}, want {b.get(k)!r}")
    return diffs


def check_case(prog: Program, case: PacketCase) -> RunResult:
    if case.setup:
        case.setup()
    r = run_packet(prog, case.input, ingress_ifindex=case.ingress_ifindex)
    assert r.verdict == case.verdict, f"{case.description}: verdict {r.verdict}, want {case.verdict}"
    if case.output is not None:
        assert r.packet is not None, f"{case.description}: no output packet"
        d = diff_packets(r.packet, case.output, case.dont_care)
        assert not d, f"{case.description}:\n  " + "\n  ".join(d)
        assert checksums_ok(r.packet), f"{case.description}: bad checksum in output"
    if case.check:
        case.check(r)
    return r
