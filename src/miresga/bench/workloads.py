"""What the benchmark asks of every system: one object size per workload, or a weighted mix.

A single-size workload runs with keep-alive or with a new connection per request. A mix picks the
path of each request from a fixed, evenly spread weighted schedule (the same sequence for every
system and every run), so two systems always see the same request stream.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import reduce
from typing import Sequence

from miresga.testbed.objects import size_name

KiB, MiB = 1 << 10, 1 << 20

DEFAULT_SIZES: tuple[int, ...] = (KiB, 64 * KiB, MiB, 8 * MiB)

# name -> ((object size, weight in percent), ...)
MIXES: dict[str, tuple[tuple[int, int], ...]] = {
    "T1": ((KiB, 100),),
    "T2": ((KiB, 70), (10 * KiB, 20), (MiB, 8), (10 * MiB, 2)),
    "T3": ((KiB, 50), (10 * KiB, 30), (MiB, 15), (10 * MiB, 5)),
}

KEEPALIVE, NEWCONN = "keepalive", "newconn"
MODES = (KEEPALIVE, NEWCONN)


class WorkloadError(ValueError):
    pass


@dataclass(frozen=True)
class Workload:
    name: str
    keepalive: bool
    size_bytes: int | None = None                       # single-object workload
    mix: tuple[tuple[int, int], ...] | None = None      # (size, weight) pairs of a mix

    @property
    def is_mix(self) -> bool:
        return self.mix is not None

    @property
    def sizes(self) -> list[int]:
        return [s for s, _ in self.mix] if self.mix else [self.size_bytes]  # type: ignore[list-item]

    def mean_object_bytes(self) -> float:
        """Expected body bytes per response (what a correct mix script must produce on average)."""
        if not self.mix:
            return float(self.size_bytes)  # type: ignore[arg-type]
        total = sum(w for _, w in self.mix)
        return sum(s * w for s, w in self.mix) / total


def parse_size(text: str) -> int:
    """'1k', '64K', '1m', '8MB', '1024' -> bytes (binary units, as the object catalog names them)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*", text)
    if not m:
        raise WorkloadError(f"bad object size {text!r} (examples: 1k, 64k, 1m, 8m)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def size_workload(size: int, keepalive: bool) -> Workload:
    return Workload(f"{size_name(size)}-{KEEPALIVE if keepalive else NEWCONN}", keepalive, size_bytes=size)


def mix_workload(name: str, keepalive: bool = True) -> Workload:
    key = name.upper()
    if key not in MIXES:
        raise WorkloadError(f"unknown mix {name!r} (known: {', '.join(MIXES)})")
    return Workload(key if keepalive else f"{key}-{NEWCONN}", keepalive, mix=MIXES[key])


def build_workloads(sizes: Sequence[int] = DEFAULT_SIZES, modes: Sequence[str] = MODES,
                    mixes: Sequence[str] = tuple(MIXES)) -> list[Workload]:
    """Every size in every mode, then the mixes (keep-alive, like the clients they model)."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise WorkloadError(f"unknown mode(s) {bad} (known: {', '.join(MODES)})")
    out = [size_workload(s, m == KEEPALIVE) for s in sizes for m in modes]
    return out + [mix_workload(x) for x in mixes]


def workload_by_name(name: str) -> Workload:
    """Inverse of Workload.name: '64k-keepalive', '1m-newconn', 'T2', 'T3-newconn'."""
    base, _, mode = name.partition("-")
    if base.upper() in MIXES:
        if mode not in ("", NEWCONN):
            raise WorkloadError(f"bad workload {name!r}")
        return mix_workload(base, keepalive=mode != NEWCONN)
    if mode not in MODES:
        raise WorkloadError(f"bad workload {name!r} (examples: 1k-keepalive, 8m-newconn, T2)")
    return size_workload(parse_size(base), mode == KEEPALIVE)


def smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One cycle of the mix: indexes into `weights`, each appearing weight/g times (g = gcd of the
    weights), every item spread evenly over the cycle rather than in runs. The k-th occurrence of
    item i is due at (k + 1/2) / w_i of the cycle; the cycle is the occurrences in order of due time
    (ties by index), which keeps each item's gaps within a step or two of cycle/w_i."""
    if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise WorkloadError(f"bad mix weights {list(weights)}")
    g = reduce(math.gcd, [w for w in weights if w])
    due = sorted((Fraction(2 * k + 1, 2 * (w // g)), i) for i, w in enumerate(weights) for k in range(w // g))
    return [i for _, i in due]
