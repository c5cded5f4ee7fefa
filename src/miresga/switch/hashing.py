"""hash8(client ip, client port): the bucket (0..255) of a connection, i.e. which front-end gets it.

Twin of bpf/lib/switch_hash.h; tests/bpf/test_switch_hash.py checks that the two agree. The hash
is always over the client's side, so both directions of one connection reach one front-end.
"""

from __future__ import annotations

import ipaddress

M32 = 0xFFFFFFFF
BUCKETS = 256


def hash8(ip: int | str | ipaddress.IPv4Address, port: int) -> int:
    """Bucket of client `ip` (int host order, or dotted string) and `port`."""
    x = (int(ipaddress.IPv4Address(ip)) ^ ((port * 0x9E3779B1) & M32)) & M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & M32
    x ^= x >> 16
    return x & 0xFF
