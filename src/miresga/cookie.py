"""Keyed, time-bucketed SYN cookies: the one Python twin of `bpf/lib/cookie.h`.

The switch answers a client's SYN statelessly with ISN = cookie; the front-end later verifies
`ack - 1` of the client's first data segment and recovers the client's TCP options from it.

Layout of the 32-bit cookie (most significant bit first):

    | 23 bits keyed hash | 2 bits time bucket (low bits) | 2 bits MSS index | 1 bit SACK | 4 bits wscale |

The hash is SipHash-2-4 (128-bit key) over three 64-bit words:
    m0 = client_ip << 32 | vip_ip
    m1 = client_port << 48 | vip_port << 32 | bucket
    m2 = option bits (the low 9 bits of the cookie without the time bits)
so the options cannot be altered without breaking the hash. Addresses and ports are host-order
integers. `bucket = TAI seconds // bucket_seconds`; a cookie is accepted in its own bucket and the
next one. Keys follow a schedule derived from the configured secret: generation
`g = TAI seconds // rotate_seconds` uses `key(g) = sha256(secret | g)[:16]`; the switch always signs
with the current generation and verifiers also accept the previous one (the grace period).
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass

import siphashc

MASK64 = (1 << 64) - 1
MSS_TABLE = (536, 1220, 1440, 1460)
WSCALE_NONE = 15


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK64


def siphash24(k0: int, k1: int, words: tuple[int, ...]) -> int:
    """SipHash-2-4 of a message made of whole little-endian 64-bit words: the readable reference,
    which tests hold the C implementation (siphashc, used on the hot path) and bpf/lib/cookie.h to."""
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & MASK64; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & MASK64; v3 = _rotl(v3, 16); v3 ^= v2
            v0 = (v0 + v3) & MASK64; v3 = _rotl(v3, 21); v3 ^= v0
            v2 = (v2 + v1) & MASK64; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)

    for m in (*words, (len(words) * 8) << 56):
        v3 ^= m
        rounds(2)
        v0 ^= m
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


@dataclass(frozen=True)
class ClientOptions:
    """What the client's SYN announced, as far as the cookie can carry it."""

    mss: int
    wscale: int | None  # None: the client sent no window-scale option
    sack: bool


@dataclass(frozen=True)
class CookieKey:
    k0: int
    k1: int

    @classmethod
    def derive(cls, secret: str, generation: int) -> "CookieKey":
        d = hashlib.sha256(f"{secret}|{generation}".encode()).digest()
        k0, k1 = struct.unpack("<QQ", d[:16])
        return cls(k0, k1)


def tai_seconds() -> float:
    return time.clock_gettime(time.CLOCK_TAI)


def bucket_of(now: float, bucket_seconds: int) -> int:
    return int(now // bucket_seconds) & 0xFFFFFFFF


def keys_at(secret: str, now: float, rotate_seconds: int) -> tuple[CookieKey, CookieKey]:
    """(current, previous) keys of the schedule at time `now` (TAI seconds)."""
    g = int(now // rotate_seconds)
    return CookieKey.derive(secret, g), CookieKey.derive(secret, g - 1)


def encode_options(mss: int, wscale: int | None, sack: bool) -> int:
    """The 7 option bits: MSS index (largest table entry not above the client's MSS), SACK, wscale."""
    idx = 0
    for i, m in enumerate(MSS_TABLE):
        if m <= mss:
            idx = i
    ws = WSCALE_NONE if wscale is None else min(wscale, 14)
    return (idx << 5) | (int(bool(sack)) << 4) | ws


def decode_options(bits: int) -> ClientOptions:
    ws = bits & 0xF
    return ClientOptions(mss=MSS_TABLE[(bits >> 5) & 3], wscale=None if ws == WSCALE_NONE else ws,
                         sack=bool((bits >> 4) & 1))


def _hash23(key: CookieKey, cip: int, cport: int, vip: int, vport: int, bucket: int, opts: int) -> int:
    m0 = ((cip << 32) | vip) & MASK64
    m1 = ((cport << 48) | (vport << 32) | (bucket & 0xFFFFFFFF)) & MASK64
    # siphashc: the same SipHash-2-4 in C (0.1 us instead of 14 us per call); keys and words
    # little-endian, as siphash24() reads them.
    return siphashc.siphash(_KEY.pack(key.k0, key.k1), _WORDS.pack(m0, m1, opts)) & 0x7FFFFF


_KEY = struct.Struct("<QQ")
_WORDS = struct.Struct("<QQQ")


def make_cookie(key: CookieKey, cip: int, cport: int, vip: int, vport: int, bucket: int,
                mss: int, wscale: int | None, sack: bool) -> int:
    opts = encode_options(mss, wscale, sack)
    h = _hash23(key, cip, cport, vip, vport, bucket, opts)
    return (h << 9) | ((bucket & 3) << 7) | opts


def check_cookie(cookie: int, keys: tuple[CookieKey, ...], cip: int, cport: int, vip: int, vport: int,
                 now_bucket: int) -> ClientOptions | None:
    """The client's options if `cookie` was made for this 4-tuple with one of `keys` in the current
    or the previous time bucket; None otherwise (forged, other tuple, other key, expired)."""
    low = (cookie >> 7) & 3
    opts = cookie & 0x7F
    want = cookie >> 9
    for age in (0, 1):
        b = (now_bucket - age) & 0xFFFFFFFF
        if b & 3 != low:
            continue
        for key in keys:
            if _hash23(key, cip, cport, vip, vport, b, opts) == want:
                return decode_options(opts)
    return None
