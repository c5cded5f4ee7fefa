"""Back-end selection policies for one rule's pool: round robin, smooth weighted round robin,
least connections, and consistent (rendezvous) hashing on the client address or a header.

Pure: the caller passes which back-ends are healthy and how many connections each has. Rendezvous
hashing moves only the keys of a back-end that leaves (and only ~1/n of keys to one that joins).
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

from miresga.frontend.http import RequestHead
from miresga.frontend.rules import CompiledRule


def _hrw_score(key: bytes, name: bytes, weight: int) -> float:
    h = int.from_bytes(hashlib.blake2b(key + b"|" + name, digest_size=8).digest(), "big")
    u = (h + 1) / (2.0 ** 64 + 2)          # in (0, 1)
    return -weight / math.log(u)


class Selector:
    """Picks a back-end of `rule.pool`; one per rule (it keeps round-robin positions)."""

    def __init__(self, rule: CompiledRule, names: Sequence[str], weights: Sequence[int]):
        self.rule = rule
        self.names = [n.encode() for n in names]
        self.weights = list(weights)
        self._rr = 0
        self._cw: dict[int, int] = {}

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
        if policy == "round_robin":
            self._rr += 1
            return pool[self._rr % len(pool)]
        if policy == "weighted":
            pool = [b for b in pool if self.weights[b] > 0]
            if not pool:
                return None
            total = 0
            best = pool[0]
            for b in pool:
                w = self.weights[b]
                self._cw[b] = self._cw.get(b, 0) + w
                total += w
                if self._cw[b] > self._cw[best]:
                    best = b
            self._cw[best] -= total
            return best
        if policy == "least_conn":
            self._rr += 1
            n = len(pool)
            rot = pool[self._rr % n:] + pool[:self._rr % n]
            return min(rot, key=lambda b: conns[b])
        key: bytes
        if policy == "hash_header" and head is not None and (v := head.header(self.rule.hash_header or "")):
            key = v.encode("latin-1")
        else:
            key = client_ip.to_bytes(4, "big")
        return max(pool, key=lambda b: _hrw_score(key, self.names[b], max(self.weights[b], 1)))
