"""Back-end selection policies for one rule's pool: round robin, smooth weighted round robin,
least connections, and consistent (rendezvous) hashing on the client address or a header.

The caller passes which back-ends are healthy and how many connections each has. Rendezvous
hashing moves only the keys of a back-end that leaves (and only ~1/n of keys to one that joins).

Round robin and weighted walk a *wheel*: the healthy back-ends in pool order, or for weighted the
smooth weighted round-robin sequence of one period (nginx's: the heavy back-end spread out, never
bunched). A position counter per rule says where the walk is; the front-end's kernel path walks
the same wheel with the same counter (kernel/rules.py), so both pick as one selector would.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Sequence

import siphashc

from miresga.frontend.http import RequestHead
from miresga.frontend.rules import CompiledRule


# Rendezvous hashing: a key's score for each back-end is SipHash-2-4 under a fixed key over (the
# key as a 64-bit word, the back-end's name id, 0) — three words, the hash bpf/lib/cookie.h has, so
# the kernel path scores client addresses the same way (equal weights: the highest hash wins).
_HRW_KEY = hashlib.sha256(b"miresga rendezvous").digest()[:16]
HRW_K0, HRW_K1 = struct.unpack("<QQ", _HRW_KEY)
_WORDS = struct.Struct("<QQQ")


def name_id(name: str) -> int:
    """A back-end's 64-bit id in the rendezvous hash (from its name: stable across restarts)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def hrw_hash(key: int, nid: int) -> int:
    return siphashc.siphash(_HRW_KEY, _WORDS.pack(key & 0xFFFFFFFFFFFFFFFF, nid, 0))


def _hrw_score(h: int, weight: int) -> float:
    u = (h + 1) / (2.0 ** 64 + 2)          # in (0, 1)
    return -weight / math.log(u)           # equal weights: ordered as h


WHEEL_POLICIES = ("round_robin", "weighted")
WHEEL_MAX = 1024    # slots of one rule's wheel (weights summing to more: scaled down)


def wheel(rule: CompiledRule, healthy: Sequence[bool], weights: Sequence[int]) -> list[int]:
    """The back-ends a wheel policy walks, one period of it ([] if nobody can be picked)."""
    pool = [b for b in rule.pool if healthy[b]]
    if rule.policy != "weighted":
        return pool
    w = {b: weights[b] for b in pool if weights[b] > 0}
    total = sum(w.values())
    if total > WHEEL_MAX:
        w = {b: max(1, x * WHEEL_MAX // total) for b, x in w.items()}
        total = sum(w.values())
    cw = dict.fromkeys(w, 0)
    out = []
    for _ in range(total):          # smooth weighted round robin from a fresh start
        best = None
        for b, x in w.items():
            cw[b] += x
            if best is None or cw[b] > cw[best]:
                best = b
        cw[best] -= total           # type: ignore[index]
        out.append(best)
    return out                      # type: ignore[return-value]


class Positions:
    """Wheel positions per rule index: the selector's own, or (kernel/maps.py KernelPositions) the
    kernel path's counters, which both walk."""

    def __init__(self) -> None:
        self._pos: dict[int, int] = {}

    def next(self, rule_index: int) -> int:
        p = self._pos.get(rule_index, 0) + 1
        self._pos[rule_index] = p
        return p


class Selector:
    """Picks a back-end of `rule.pool`; one per rule."""

    def __init__(self, rule: CompiledRule, names: Sequence[str], weights: Sequence[int],
                 positions: Positions | None = None):
        self.rule = rule
        self.ids = [name_id(n) for n in names]
        self.weights = list(weights)
        self.positions = positions or Positions()
        self._rr = 0
        self._wheels: dict[tuple[bool, ...], list[int]] = {}

    @property
    def sticky(self) -> bool:
        """Hash policies choose by key; the others may keep a keep-alive connection's back-end."""
        return self.rule.policy not in ("hash_client", "hash_header")

    def pick(self, healthy: Sequence[bool], conns: Sequence[int], client_ip: int,
             head: RequestHead | None) -> int | None:
        pool = [b for b in self.rule.pool if healthy[b]]
        if not pool:
            return None
        policy = self.rule.policy
        if policy in WHEEL_POLICIES:
            h = tuple(healthy)
            w = self._wheels.get(h)
            if w is None:
                w = self._wheels[h] = wheel(self.rule, healthy, self.weights)
            if not w:
                return None
            return w[self.positions.next(self.rule.index) % len(w)]
        if policy == "least_conn":      # the idlest, ties taken in turn (the wheel's position)
            n = len(pool)
            r = self.positions.next(self.rule.index) % n
            return min(pool[r:] + pool[:r], key=lambda b: conns[b])
        key: int
        if policy == "hash_header" and head is not None and (v := head.header(self.rule.hash_header or "")):
            key = int.from_bytes(hashlib.blake2b(v.encode("latin-1"), digest_size=8).digest(), "little")
        else:
            key = client_ip
        return max(pool, key=lambda b: _hrw_score(hrw_hash(key, self.ids[b]), max(self.weights[b], 1)))
