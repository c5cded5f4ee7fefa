"""TCP segments as plain data: what the front-end engine consumes and produces.

The packet I/O adapter turns frames into `Segment`s and back; the engine and its tests never see
bytes of headers. Addresses are host-order integers (as in `miresga.cookie`), sequence numbers are
32-bit and compared with serial-number arithmetic (`seq_diff`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
M32 = 0xFFFFFFFF

OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERM, OPT_SACK, OPT_TS = 0, 1, 2, 3, 4, 5, 8


def seq_add(a: int, n: int) -> int:
    return (a + n) & M32


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed 32-bit distance (RFC 1982 serial arithmetic)."""
    d = (a - b) & M32
    return d - (1 << 32) if d & 0x80000000 else d


def ip_int(addr: str | ipaddress.IPv4Address) -> int:
    return int(ipaddress.IPv4Address(addr))


def ip_str(addr: int) -> str:
    return str(ipaddress.IPv4Address(addr))


@dataclass(slots=True)
class Segment:
    """One TCP segment (IPv4). `options` are the raw TCP option bytes (kept as they are when a
    segment is relayed); `payload` may be larger than one MSS (GSO super-frames)."""

    src: int
    sport: int
    dst: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int = 65535
    options: bytes = b""
    payload: bytes = field(default=b"", repr=False)

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies (payload, plus one each for SYN and FIN)."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    @property
    def end(self) -> int:
        return seq_add(self.seq, self.seg_len)

    def __repr__(self) -> str:
        f = "".join(n for bit, n in ((SYN, "S"), (ACK, "A"), (FIN, "F"), (RST, "R"), (PSH, "P"))
                    if self.flags & bit)
        return (f"Segment({ip_str(self.src)}:{self.sport}>{ip_str(self.dst)}:{self.dport} [{f}] "
                f"seq={self.seq} ack={self.ack} len={len(self.payload)})")


def syn_options(mss: int, wscale: int | None, sack: bool) -> bytes:
    """Option block of a SYN: MSS, SACK-permitted, window scale (no timestamps), 4-byte aligned."""
    out = struct.pack("!BBH", OPT_MSS, 4, mss)
    if sack:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    return out


def parse_options(raw: bytes) -> dict[int, bytes]:
    """kind -> value bytes of the well-formed options in `raw` (a malformed tail is ignored)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            break
        out[kind] = raw[i + 2:i + raw[i + 1]]
        i += raw[i + 1]
    return out
