"""Frames as bytes for the fuzzer's hot loop (no scapy there): where the headers are, one's
complement sums, checksum repair, and the TCP option walk the kernel does.

The checksum arithmetic uses one fact: the one's complement sum of 16-bit big-endian words is
the number the bytes spell, modulo 0xFFFF (2^16 = 1 mod 0xFFFF). So a whole header or segment
is summed by one `int.from_bytes` and one `%`, in C. A checksum is valid when the sum over the
covered bytes (checksum field included) is 0 modulo 0xFFFF; incremental rewrites done right
leave that residue unchanged, valid or not.
"""

from __future__ import annotations

import struct

ETH_LEN = 14
ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
PROTO_TCP = 6
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
M32 = 0xFFFFFFFF


def ones(data: bytes | bytearray | memoryview) -> int:
    """One's complement sum of `data` as 16-bit words (odd length: zero padded), mod 0xFFFF."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return n % 0xFFFF


class Layout:
    """Offsets of one Ethernet/IPv4(/TCP) frame, read as leniently as possible: fields are None
    where the frame ends first. `tcp_ok` when the TCP header (with options) lies inside both the
    frame and the IP total length — what the data plane's parser accepts, fragments aside."""

    __slots__ = ("ethertype", "l3", "ihl", "tot", "proto", "frag", "l4", "thl", "end", "tcp_ok", "ip_ok")

    def __init__(self, f: bytes | bytearray):
        n = len(f)
        self.ethertype = int.from_bytes(f[12:14], "big") if n >= ETH_LEN else None
        self.l3 = self.ihl = self.tot = self.proto = self.frag = self.l4 = self.thl = self.end = None
        self.tcp_ok = self.ip_ok = False
        if self.ethertype != ETH_P_IP or n < ETH_LEN + 20:
            return
        self.l3 = ETH_LEN
        vihl = f[ETH_LEN]
        self.ihl = (vihl & 0x0F) * 4
        self.tot = int.from_bytes(f[ETH_LEN + 2:ETH_LEN + 4], "big")
        self.frag = int.from_bytes(f[ETH_LEN + 6:ETH_LEN + 8], "big")
        self.proto = f[ETH_LEN + 9]
        if vihl >> 4 != 4 or self.ihl < 20 or ETH_LEN + self.ihl > n or self.tot < self.ihl:
            return
        self.ip_ok = True
        self.end = min(n, ETH_LEN + self.tot)
        if self.proto != PROTO_TCP or self.frag & 0x3FFF:
            return
        self.l4 = ETH_LEN + self.ihl
        if self.l4 + 20 > n:
            return
        self.thl = (f[self.l4 + 12] >> 4) * 4
        if self.thl < 20 or self.ihl + self.thl > self.tot or self.l4 + self.thl > n:
            return
        self.tcp_ok = True


def ip_residue(f, lay: Layout) -> int:
    return ones(f[lay.l3:lay.l3 + lay.ihl])


def _pseudo(f, lay: Layout) -> int:
    l3 = lay.l3
    return (int.from_bytes(f[l3 + 12:l3 + 14], "big") + int.from_bytes(f[l3 + 14:l3 + 16], "big")
            + int.from_bytes(f[l3 + 16:l3 + 18], "big") + int.from_bytes(f[l3 + 18:l3 + 20], "big")
            + lay.proto + ((lay.tot - lay.ihl) & 0xFFFF))


def l4_residue(f, lay: Layout) -> int:
    """Residue of the L4 checksum over pseudo header + the segment as far as the frame holds it."""
    return (_pseudo(f, lay) + ones(f[lay.l4:lay.end])) % 0xFFFF


def _fold_check(residue: int) -> int:
    return (~(residue or 0xFFFF)) & 0xFFFF


def fix_checksums(f: bytearray) -> Layout:
    """Make the IP header checksum (and the TCP one, if a TCP header is there) valid in place."""
    lay = Layout(f)
    if lay.ip_ok:
        c = lay.l3 + 10
        f[c:c + 2] = b"\0\0"
        f[c:c + 2] = _fold_check(ip_residue(f, lay)).to_bytes(2, "big")
        if lay.l4 is not None and lay.l4 + 18 <= lay.end:
            c = lay.l4 + 16
            f[c:c + 2] = b"\0\0"
            f[c:c + 2] = _fold_check(l4_residue(f, lay)).to_bytes(2, "big")
    return lay


def tcp_fields(f, l4: int) -> tuple[int, int, int, int, int, int]:
    """(sport, dport, seq, ack, flags, window)."""
    sport, dport, seq, ack, _off, flags, win = struct.unpack_from("!HHIIBBH", f, l4)
    return sport, dport, seq, ack, flags, win


def kernel_options(f, l4: int, thl: int) -> tuple[list[int], int | None, bool]:
    """The walk of bpf/lib/tcp_opts.h (and Linux's tcp_parse_options): (offsets of SACK block left
    edges from the packet start, window scale clamped to 14 or None, stopped early)."""
    opts = f[l4 + 20:l4 + thl]
    n, i = len(opts), 0
    sack: list[int] = []
    ws = None
    while i < n:
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n:
            return sack, ws, True
        ln = opts[i + 1]
        if ln < 2 or i + ln > n:
            return sack, ws, True
        if kind == 3 and ln == 3:
            ws = min(opts[i + 2], 14)
        elif kind == 5 and ln >= 10 and (ln - 2) % 8 == 0:
            j = 0
            while 2 + j * 8 < ln and len(sack) < 4:
                sack.append(l4 + 20 + i + 2 + j * 8)
                j += 1
        i += ln
    return sack, ws, False


def tcp_frame(smac: bytes, dmac: bytes, src: int, dst: int, sport: int, dport: int, seq: int, ack: int,
              flags: int, window: int = 502, options: bytes = b"", payload: bytes = b"") -> bytearray:
    """An Ethernet/IPv4/TCP frame with valid checksums (options padded to 4 bytes)."""
    options = options + b"\0" * (-len(options) % 4)
    thl = 20 + len(options)
    f = bytearray(dmac + smac + b"\x08\x00")
    f += struct.pack("!BBHHHBBH", 0x45, 0, 20 + thl + len(payload), 1, 0x4000, 64, PROTO_TCP, 0)
    f += src.to_bytes(4, "big") + dst.to_bytes(4, "big")
    f += struct.pack("!HHIIBBHHH", sport, dport, seq & M32, ack & M32, (thl // 4) << 4, flags, window, 0, 0)
    f += options + payload
    fix_checksums(f)
    return f


def l3_frame(smac: bytes, dmac: bytes, src: int, dst: int, proto: int, body: bytes) -> bytearray:
    """An Ethernet/IPv4 frame of another protocol (UDP, ICMP: their own checksums are not ours)."""
    f = bytearray(dmac + smac + b"\x08\x00")
    f += struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 1, 0, 64, proto, 0)
    f += src.to_bytes(4, "big") + dst.to_bytes(4, "big") + body
    fix_checksums(f)
    return f


def arp_frame(smac: bytes, dmac: bytes, op: int, sha: bytes, spa: int, tha: bytes, tpa: int) -> bytearray:
    return bytearray(dmac + smac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha
                     + spa.to_bytes(4, "big") + tha + tpa.to_bytes(4, "big") + b"\0" * 18)
