"""Feed a scapy packet to a BPF program through BPF_PROG_TEST_RUN; get verdict and packet back.

Packet tests are data (STYLE.md, after katran): `PacketCase` holds the input, the expected verdict
and the expected output packet with named don't-care fields; `check_case` runs one and explains
any difference field by field.

The same cases run against the TC and the XDP build of a program (bpf/lib/pkt_ctx.h): an XDP
verdict is reported as its TC equivalent (`RunResult.verdict`; the XDP one in `xdp_verdict`), so
one table says what both builds must do. XDP's test run resolves ctx->ingress_ifindex to a real
device: `fake_ports()` makes a namespace with dummy devices at the ifindexes a test uses.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from scapy.layers.l2 import Ether
from scapy.packet import Packet

from miresga.bpf import netns
from miresga.bpf.libbpf import Program

# TC verdicts (linux/pkt_cls.h)
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
# XDP verdicts (linux/bpf.h) and what each means in TC terms: XDP_TX (back out the port it came
# in on) is the TC build's redirect to skb->ifindex; XDP_ABORTED has no TC twin.
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
XDP_AS_TC = {XDP_PASS: TC_ACT_OK, XDP_DROP: TC_ACT_SHOT, XDP_TX: TC_ACT_REDIRECT, XDP_REDIRECT: TC_ACT_REDIRECT}


@dataclass
class RunResult:
    verdict: int          # TC verdict (an XDP one translated, see XDP_AS_TC)
    packet: Ether | None
    raw: bytes
    duration_ns: int
    xdp_verdict: int | None = None


SKB_CTX_SIZE = 192          # sizeof(struct __sk_buff), enough for the fields test-run accepts
SKB_INGRESS_IFINDEX_OFF = 36


def skb_ctx(ingress_ifindex: int = 0) -> bytes | None:
    """A __sk_buff context for TC test runs (None when nothing is set)."""
    if not ingress_ifindex:
        return None
    b = bytearray(SKB_CTX_SIZE)
    b[SKB_INGRESS_IFINDEX_OFF:SKB_INGRESS_IFINDEX_OFF + 4] = ingress_ifindex.to_bytes(4, "little")
    return bytes(b)


XDP_MD_SIZE = 24  # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex


def xdp_ctx(data_len: int, ingress_ifindex: int = 0) -> bytes | None:
    """A struct xdp_md for XDP test runs (data_end must equal the packet's length)."""
    if not ingress_ifindex:
        return None
    return (0).to_bytes(4, "little") + data_len.to_bytes(4, "little") + bytes(4) + \
        ingress_ifindex.to_bytes(4, "little") + bytes(8)


_ports_ns: str | None = None  # set by fake_ports(): where XDP test runs resolve their ifindexes


@contextlib.contextmanager
def fake_ports(ifindexes: Iterable[int]) -> Iterator[str]:
    """A network namespace holding a device at each of `ifindexes`, for XDP test runs that
    set ctx->ingress_ifindex (the kernel looks the device up); removed on exit."""
    global _ports_ns
    name = f"mtr{os.getpid()}"
    netns.run(None, "ip", "netns", "add", name)
    try:
        for i in sorted(set(ifindexes)):
            # veth, not dummy: the kernel may lack the dummy module; peers far above the range
            netns.run(name, "ip", "link", "add", f"p{i}", "index", str(i), "type", "veth",
                      "peer", "name", f"q{i}", "index", str(10000 + i))
        _ports_ns = name
        yield name
    finally:
        _ports_ns = None
        netns.run(None, "ip", "netns", "del", name, check=False)


def _test_run(prog: Program, data: bytes, repeat: int, ingress_ifindex: int):
    if not prog.is_xdp:
        return prog.test_run(data, repeat=repeat, ctx=skb_ctx(ingress_ifindex))
    ctx = xdp_ctx(len(data), ingress_ifindex)
    if ctx is None:
        return prog.test_run(data, repeat=repeat)
    if _ports_ns is None:
        raise RuntimeError("an XDP test run with an ingress ifindex needs `with fake_ports(...)`")
    with netns.in_netns(_ports_ns):
        return prog.test_run(data, repeat=repeat, ctx=ctx)


def run_packet(prog: Program, pkt: Packet | bytes, repeat: int = 1, ingress_ifindex: int = 0) -> RunResult:
    """`ingress_ifindex`: the port the packet arrives on, as skb->ingress_ifindex (TC) or
    ctx->ingress_ifindex (XDP) sees it."""
    data = bytes(pkt)
    r = _test_run(prog, data, repeat, ingress_ifindex)
    out = Ether(r.data) if r.data else None
    if prog.is_xdp:
        return RunResult(XDP_AS_TC.get(r.retval, -1), out, r.data, r.duration_ns, r.retval)
    return RunResult(r.retval, out, r.data, r.duration_ns)


def per_packet_ns(prog: Program, pkt: Packet | bytes, repeat: int = 100000, ingress_ifindex: int = 0) -> int:
    """Average run time of the program on this packet (BPF_PROG_TEST_RUN repeat)."""
    return _test_run(prog, bytes(pkt), repeat, ingress_ifindex).duration_ns


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
