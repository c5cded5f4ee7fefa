"""How busy the rest of the machine was during a point.

The benchmark shares 2 cores with whatever else runs (other test suites, other testbeds). For each
point we sum the CPU time of every user process that is *not* part of this testbed (not inside one
of its namespaces, not one of its own daemons) and report it as `other_cpu_pct` (100 = one core
busy the whole point). Kernel threads are left out: softirq work for our own packets runs there.
A point with a high value measured the neighbours as much as the system.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

PF_KTHREAD = 0x00200000
_TCK = os.sysconf("SC_CLK_TCK")


def netns_inodes(names: Iterable[str], run_dir: Path = Path("/run/netns")) -> set[int]:
    out = set()
    for n in names:
        try:
            out.add(os.stat(run_dir / n).st_ino)
        except OSError:
            pass
    return out


def parse_stat(text: str) -> tuple[int, int]:
    """(flags, utime + stime in ticks) from the text of /proc/<pid>/stat."""
    fields = text.rsplit(")", 1)[1].split()
    # after the command: state(0) ppid(1) ... flags(6) ... utime(11) stime(12)
    return int(fields[6]), int(fields[11]) + int(fields[12])


def snapshot(ours_netns: set[int], ours_pids: set[int], proc: Path = Path("/proc")) -> dict[int, int]:
    """pid -> CPU ticks of every user process outside this testbed."""
    out = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        if pid in ours_pids:
            continue
        try:
            flags, ticks = parse_stat((d / "stat").read_text())
            if flags & PF_KTHREAD:
                continue
            if os.stat(d / "ns" / "net").st_ino in ours_netns:
                continue
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or not ours to read
        out[pid] = ticks
    return out


def cpu_percent(before: dict[int, int], after: dict[int, int], seconds: float) -> float:
    """CPU used between two snapshots by the processes of `after` (started meanwhile: all of it)."""
    if seconds <= 0:
        return 0.0
    ticks = sum(max(0, t - before.get(pid, 0)) for pid, t in after.items())
    return round(100.0 * ticks / _TCK / seconds, 1)


class Meter:
    """`finish = meter.start()` before a point, `finish()` after it gives `other_cpu_pct`."""

    def __init__(self, namespaces: Iterable[str], pids: Iterable[int] = ()):
        self.netns = netns_inodes(namespaces)
        self.pids = {os.getpid(), *pids}

    def start(self) -> Callable[[], float]:
        t0 = time.monotonic()
        before = snapshot(self.netns, self.pids)

        def finish() -> float:
            return cpu_percent(before, snapshot(self.netns, self.pids), time.monotonic() - t0)
        return finish
