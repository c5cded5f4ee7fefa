"""The interference meter: CPU used during a point by processes outside the testbed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from miresga.bench.interference import PF_KTHREAD, Meter, cpu_percent, parse_stat, snapshot

STAT = "4242 (nginx: worker (x) y) S 1 4242 4242 0 -1 {flags} 5 0 0 0 {utime} {stime} 0 0 20 0 1 0 100 0 0"


def _fake_proc(tmp_path, pid, flags, utime, stime, ns_file):
    d = tmp_path / str(pid)
    (d / "ns").mkdir(parents=True)
    (d / "stat").write_text(STAT.format(flags=flags, utime=utime, stime=stime))
    os.link(ns_file, d / "ns" / "net")  # same inode as the namespace it "lives" in


def test_parse_stat_survives_parentheses_in_the_name():
    assert parse_stat(STAT.format(flags=PF_KTHREAD, utime=7, stime=3)) == (PF_KTHREAD, 10)


def test_snapshot_leaves_out_our_namespaces_pids_and_kernel_threads(tmp_path):
    ours, theirs = tmp_path / "ns-ours", tmp_path / "ns-theirs"
    ours.write_text("")
    theirs.write_text("")
    proc = tmp_path / "proc"
    _fake_proc(proc, 10, 0, 50, 50, ours)            # inside the testbed
    _fake_proc(proc, 11, PF_KTHREAD, 70, 0, theirs)  # kernel thread (softirq work for our packets)
    _fake_proc(proc, 12, 0, 30, 12, theirs)          # a neighbour
    _fake_proc(proc, 13, 0, 1, 1, theirs)            # one of our daemons, by pid
    (proc / "self").mkdir()
    assert snapshot({os.stat(ours).st_ino}, {13}, proc) == {12: 42}


def test_cpu_percent_counts_growth_and_new_processes():
    tck = os.sysconf("SC_CLK_TCK")
    assert cpu_percent({1: 100}, {1: 100 + tck, 2: tck // 2}, 1.0) == 150.0
    assert cpu_percent({1: 100}, {1: 100}, 0.0) == 0.0


def test_meter_sees_a_busy_neighbour_and_snapshot_excludes_by_pid():
    busy = [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.2: pass"]
    p = subprocess.Popen(busy)
    try:
        time.sleep(0.1)
        finish = Meter([], []).start()
        time.sleep(0.8)
        seen = finish()
        assert p.pid in snapshot(set(), set()) and p.pid not in snapshot(set(), {p.pid})
    finally:
        p.wait(5)
    # one process spinning is ~100 % of a core; other load on the machine only adds to it
    assert seen >= 30, seen
