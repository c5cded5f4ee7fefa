"""Structure-aware mutations of valid frames (bytes in, bytes out; no scapy in the hot loop).

Each mutator knows where the Ethernet, IPv4 and TCP headers are (`wire.Layout`) and breaks one
thing the way an attacker or a broken stack would: flags, TCP options of every kind and length,
truncation at every layer, IP options, fragments, length fields, sequence numbers at the wrap,
huge windows, addresses and ports (from the config's own pools and random), payloads, other
protocols, bit flips. `mutate` applies a few of them and repairs the checksums unless a
"bad checksum" mutation asked to keep them wrong.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from miresga.fuzz.wire import ETH_LEN, Layout, fix_checksums

FLAG_SETS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x19, 0x04, 0x14, 0x01, 0x00, 0xFF, 0x03, 0x06, 0x07, 0x16, 0x13,
             0x29, 0x38, 0x40, 0x80, 0xC2, 0x05, 0x15]
SEQ_EDGES = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0x80000001, 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFF00, 0x00000100]
WINDOWS = [0, 1, 2, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]
MAX_FRAME = 3000      # BPF_PROG_TEST_RUN takes at most about a page of packet data
MIN_FRAME = ETH_LEN   # shorter frames are refused by BPF_PROG_TEST_RUN itself (counted apart)


@dataclass
class Pools:
    """Values a mutation picks from: the config's own addresses and ports, plus strangers."""

    ips: list[int]
    ports: list[int]
    macs: list[bytes] = field(default_factory=list)


@dataclass
class Mutation:
    data: bytearray
    names: list[str]
    keep_bad_checksum: bool = False


def _rand_option(rng: random.Random) -> bytes:
    k = rng.random()
    if k < 0.12:
        return b"\x01"                                     # NOP
    if k < 0.17:
        return b"\x00"                                     # EOL
    if k < 0.30:
        ln = rng.choice([4, 4, 4, 0, 1, 2, 3, 5, 40])
        return bytes([2, ln]) + rng.randbytes(max(0, min(ln, 40) - 2))   # MSS
    if k < 0.43:
        ln = rng.choice([3, 3, 3, 0, 1, 2, 4])
        return bytes([3, ln]) + bytes([rng.choice([0, 7, 14, 15, 255, rng.randrange(256)])]) + \
            rng.randbytes(max(0, ln - 3))                  # window scale
    if k < 0.50:
        return bytes([4, rng.choice([2, 2, 0, 1, 3])])     # SACK-permitted
    if k < 0.72:
        n = rng.choice([0, 1, 2, 3, 4, 5])
        ln = rng.choice([2 + 8 * n] * 4 + [rng.randrange(256), 9, 11, 1, 0, 2 + 8 * n + 1])
        body = b"".join(struct.pack("!II", rng.choice([rng.getrandbits(32), *[e for e in (0, 0xFFFFFFFF)]]),
                                    rng.getrandbits(32)) for _ in range(max(n, 1)))
        return bytes([5, ln & 0xFF]) + body[:max(0, min(ln, 40) - 2)]   # SACK
    if k < 0.82:
        ln = rng.choice([10, 10, 0, 1, 9, 11, 255])
        return bytes([8, ln]) + rng.randbytes(max(0, min(ln, 40) - 2))  # timestamps
    kind = rng.choice([6, 7, 19, 28, 29, 30, 34, 253, 254, 255, rng.randrange(256)])
    ln = rng.choice([2, 0, 1, rng.randrange(41), 255])
    return bytes([kind, ln]) + rng.randbytes(max(0, min(ln, 40) - 2))


def random_tcp_options(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randrange(1, 7)):
        out += _rand_option(rng)
    if rng.random() < 0.2:
        out += rng.randbytes(rng.randrange(8))
    return out[:40]


def _set_ip_tot(f: bytearray, lay: Layout) -> None:
    if lay.l3 is not None and len(f) >= lay.l3 + 4:
        struct.pack_into("!H", f, lay.l3 + 2, min(len(f) - lay.l3, 0xFFFF))


def m_flags(rng, f, lay, pools, mut):
    if lay.l4 is None or lay.l4 + 14 > len(f):
        return f
    f[lay.l4 + 13] = rng.choice(FLAG_SETS) if rng.random() < 0.8 else rng.randrange(256)
    if rng.random() < 0.1:
        f[lay.l4 + 12] = (f[lay.l4 + 12] & 0xF0) | rng.randrange(16)   # reserved bits, NS
    return f


def m_tcp_options(rng, f, lay, pools, mut):
    if not lay.tcp_ok:
        return f
    opts = random_tcp_options(rng)
    if rng.random() < 0.85:
        opts += b"\x00" * (-len(opts) % 4)
    l4, thl = lay.l4, lay.thl
    g = f[:l4 + 20] + opts + f[l4 + thl:]
    doff = (20 + len(opts) + 3) // 4 if rng.random() < 0.9 else rng.randrange(16)
    g[l4 + 12] = (doff << 4) | (g[l4 + 12] & 0x0F)
    if rng.random() < 0.9:
        _set_ip_tot(g, lay)
    return g


def m_truncate(rng, f, lay, pools, mut):
    cuts = [ETH_LEN + 20, len(f) - 1]
    if lay.l3 is not None and lay.ihl:
        cuts += [ETH_LEN + lay.ihl - 1, ETH_LEN + lay.ihl, ETH_LEN + lay.ihl + 1]
    if lay.l4 is not None:
        cuts += [lay.l4 + k for k in (1, 12, 13, 19, 20, 21)]
        if lay.thl:
            cuts += [lay.l4 + lay.thl - 1, lay.l4 + lay.thl, lay.l4 + lay.thl + 1]
    cuts.append(rng.randrange(MIN_FRAME, max(MIN_FRAME + 1, len(f))))
    n = max(MIN_FRAME, min(rng.choice(cuts), len(f)))
    g = f[:n]
    if rng.random() < 0.5:
        _set_ip_tot(g, lay)          # the IP length agrees with the cut, or claims the old size
    return g


IP_OPTIONS = [b"\x01\x01\x01\x01", b"\x00\x00\x00\x00", b"\x07\x07\x04\x00\x00\x00\x00\x00",
              b"\x44\x0c\x05\x00" + b"\0" * 8, b"\x83\x07\x04\x0a\x00\x00\x01\x00", b"\x94\x04\x00\x00",
              b"\x07\x00\x01\x01", b"\x44\xff\x01\x01"]


def m_ip_options(rng, f, lay, pools, mut):
    if lay.l3 is None or lay.ihl is None or lay.ihl < 20:
        return f
    opts = b"".join(rng.choice(IP_OPTIONS) for _ in range(rng.randrange(1, 4)))
    if rng.random() < 0.2:
        opts = rng.randbytes(rng.randrange(1, 11) * 4)
    opts = opts[:40 - (lay.ihl - 20)]
    opts += b"\x00" * (-len(opts) % 4)
    l3 = lay.l3
    g = f[:l3 + lay.ihl] + opts + f[l3 + lay.ihl:]
    g[l3] = 0x40 | ((lay.ihl + len(opts)) // 4 & 0x0F)
    _set_ip_tot(g, lay)
    return g


def m_fragment(rng, f, lay, pools, mut):
    if lay.l3 is None:
        return f
    v = rng.choice([0x2000, 0x0001, 0x2001, 0x1FFF, 0x8000, 0x4000, 0x6000, 0x3FFF, rng.randrange(0x10000)])
    struct.pack_into("!H", f, lay.l3 + 6, v)
    return f


def m_bad_checksum(rng, f, lay, pools, mut):
    mut.keep_bad_checksum = True
    fix_checksums(f)
    targets = []
    if lay.l3 is not None:
        targets.append(lay.l3 + 10)
    if lay.l4 is not None and lay.l4 + 18 <= len(f):
        targets.append(lay.l4 + 16)
    if targets:
        c = rng.choice(targets)
        f[c] ^= rng.randrange(1, 256)
    return f


def m_seq(rng, f, lay, pools, mut):
    if lay.l4 is None or lay.l4 + 12 > len(f):
        return f
    off = lay.l4 + rng.choice([4, 8])
    cur = int.from_bytes(f[off:off + 4], "big")
    r = rng.random()
    if r < 0.4:
        v = rng.choice(SEQ_EDGES)
    elif r < 0.8:
        v = (cur + rng.choice([-1, 1, -2, 2, -1460, 1460, 0x7FFFFFFF, 0x80000000, 1 << 22, -(1 << 22)])) & 0xFFFFFFFF
    else:
        v = rng.getrandbits(32)
    f[off:off + 4] = v.to_bytes(4, "big")
    return f


def m_window(rng, f, lay, pools, mut):
    if lay.l4 is None or lay.l4 + 16 > len(f):
        return f
    struct.pack_into("!H", f, lay.l4 + 14, rng.choice(WINDOWS) if rng.random() < 0.8 else rng.randrange(0x10000))
    if rng.random() < 0.3 and lay.l4 + 20 <= len(f):
        struct.pack_into("!H", f, lay.l4 + 18, rng.randrange(0x10000))   # urgent pointer
    return f


def m_lengths(rng, f, lay, pools, mut):
    if lay.l3 is None:
        return f
    r = rng.random()
    if r < 0.4:
        tot = int.from_bytes(f[lay.l3 + 2:lay.l3 + 4], "big")
        struct.pack_into("!H", f, lay.l3 + 2, max(0, min(0xFFFF, tot + rng.choice([-1, 1, -4, 4, -20, 20, 1000]))))
    elif r < 0.6:
        struct.pack_into("!H", f, lay.l3 + 2, rng.choice([0, 1, 19, 20, 39, 40, 0xFFFF]))
    elif r < 0.8:
        f[lay.l3] = (f[lay.l3] & 0xF0) | rng.randrange(16)          # ihl
    elif lay.l4 is not None and lay.l4 + 13 <= len(f):
        f[lay.l4 + 12] = (rng.randrange(16) << 4) | (f[lay.l4 + 12] & 0x0F)   # doff
    return f


def m_addresses(rng, f, lay, pools, mut):
    if lay.l3 is None:
        return f
    r = rng.random()
    if r < 0.7:
        off = lay.l3 + rng.choice([12, 16])
        ip = rng.choice(pools.ips) if rng.random() < 0.8 else rng.getrandbits(32)
        f[off:off + 4] = ip.to_bytes(4, "big")
    elif lay.l4 is not None and lay.l4 + 4 <= len(f):
        off = lay.l4 + rng.choice([0, 2])
        port = rng.choice(pools.ports) if rng.random() < 0.8 else rng.randrange(0x10000)
        f[off:off + 2] = port.to_bytes(2, "big")
    return f


def m_macs(rng, f, lay, pools, mut):
    off = rng.choice([0, 6])
    f[off:off + 6] = rng.choice(pools.macs) if pools.macs and rng.random() < 0.7 else rng.randbytes(6)
    return f


HTTPISH = [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
           b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"\r\n\r\n", b"GET /", b"\x00" * 7]


def m_payload(rng, f, lay, pools, mut):
    if lay.l3 is None:
        return f
    start = lay.l4 + lay.thl if lay.tcp_ok else (lay.l3 + lay.ihl if lay.ihl and lay.ihl >= 20 else len(f))
    r = rng.random()
    if r < 0.3:
        body = b""
    elif r < 0.6:
        body = rng.choice(HTTPISH)
    elif r < 0.9:
        body = rng.randbytes(rng.choice([1, 2, 3, 7, 64, 536, 1448, rng.randrange(1, 2800)]))
    else:
        body = rng.randbytes(rng.randrange(1, 20)) * rng.randrange(1, 100)
    g = f[:start] + body
    g = g[:MAX_FRAME]
    if rng.random() < 0.9:
        _set_ip_tot(g, lay)
    return g


def m_protocol(rng, f, lay, pools, mut):
    r = rng.random()
    if r < 0.4 and lay.l3 is not None:
        f[lay.l3 + 9] = rng.choice([1, 17, 0, 47, 50, 132, 255, rng.randrange(256)])
    elif r < 0.6 and lay.l3 is not None:
        f[lay.l3] = (rng.choice([0, 5, 6, 15]) << 4) | (f[lay.l3] & 0x0F)   # IP version
    else:
        f[12:14] = rng.choice([b"\x08\x06", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x00\x00",
                               rng.randbytes(2)])
    return f


def m_havoc(rng, f, lay, pools, mut):
    for _ in range(rng.randrange(1, 9)):
        i = rng.randrange(len(f))
        f[i] ^= 1 << rng.randrange(8)
    return f


MUTATORS = [(m_flags, 10), (m_tcp_options, 10), (m_truncate, 6), (m_ip_options, 4), (m_fragment, 3),
            (m_bad_checksum, 4), (m_seq, 10), (m_window, 5), (m_lengths, 6), (m_addresses, 8), (m_macs, 2),
            (m_payload, 6), (m_protocol, 3), (m_havoc, 5)]
_FUNCS = [m for m, _ in MUTATORS]
_WEIGHTS = [w for _, w in MUTATORS]


def mutate(rng: random.Random, frame: bytes, pools: Pools, max_ops: int = 3) -> Mutation:
    """1..max_ops mutations of `frame`; checksums repaired unless one of them broke them on purpose."""
    mut = Mutation(bytearray(frame), [])
    for fn in rng.choices(_FUNCS, _WEIGHTS, k=rng.randrange(1, max_ops + 1)):
        lay = Layout(mut.data)
        g = fn(rng, mut.data, lay, pools, mut)
        mut.data = g[:MAX_FRAME] if len(g) >= MIN_FRAME else bytearray(g) + bytearray(MIN_FRAME - len(g))
        mut.names.append(fn.__name__[2:])
    if not mut.keep_bad_checksum:
        fix_checksums(mut.data)
    return mut
