"""The soak's verdict rules (miresga.fuzz.soak.verdict, judge_rss) on made-up reports.

A made-up run: cycles of six 50 s segments (300 s each), a sample every 25 s. Each front-end's
RSS and connections are given per cycle, so the series are what the plot would show: flat, a leak
(RSS up every cycle at the same load), and a high-water mark (RSS steps up with a new connection
peak, then stays there)."""

from __future__ import annotations

from miresga.fuzz.soak import judge_rss, verdict

CYCLE_S, SEG_S = 300, 50


def report(fe2_rss_per_cycle, fe2_conns_per_cycle=None, fe1_rss_per_cycle=None, fe1_restart_cycle=None,
           errors_at=(), left=0, faults=((150.0, "be2"),)):
    n = len(fe2_rss_per_cycle)
    conns = fe2_conns_per_cycle or [2000] * n
    fe1 = fe1_rss_per_cycle or [100_000] * n
    samples = []
    for t in range(0, n * CYCLE_S, 25):
        c = t // CYCLE_S
        peak = (t % CYCLE_S) in (50, 75)         # the new-connection segment: the connection peak
        restarted = fe1_restart_cycle is not None and c >= fe1_restart_cycle
        samples.append({"t": t, "rss_kb_fe2": fe2_rss_per_cycle[c] - (0 if peak else 10_000), "pid_fe2": 3,
                        "conns_fe2": conns[c] if peak else 16, "rss_kb_fe1": fe1[c], "pid_fe1": 2 if restarted else 1,
                        "conns_fe1": 1000 if peak else 16, "switch_entries": 5})
    end = {"t": n * CYCLE_S + 5, "rss_kb_fe2": samples[-1]["rss_kb_fe2"], "pid_fe2": 3, "conns_fe2": 0,
           "rss_kb_fe1": samples[-1]["rss_kb_fe1"], "pid_fe1": samples[-1]["pid_fe1"], "conns_fe1": 0,
           "switch_entries": left}
    wrk = [{"t_start": t, "t_end": t + SEG_S, "workload": "T1", "errors": 5 if t in errors_at else 0}
           for t in range(0, n * CYCLE_S, SEG_S)]
    return {"segments_per_cycle": 6, "samples": samples + [end], "wrk": wrk, "end_state": end,
            "faults": [{"t": t, "what": w} for t, w in faults]}


def test_flat_clean_run_is_ok():
    v = verdict(report([150_000] * 5), 0.10)
    assert v["ok"], v
    fe2 = v["rss"]["fe2"]
    assert fe2["judged"] and fe2["worst_growth"] == 0.0 and len(fe2["cycles"]) == 5


def test_a_leak_at_the_same_load_fails():
    # +4 % a cycle at the same connection peak: 12 % over the baseline by the fourth cycle
    v = verdict(report([150_000, 156_000, 162_000, 168_000, 174_000]), 0.10)
    assert not v["rss_flat"] and not v["ok"]
    assert v["rss"]["fe2"]["worst_growth"] > 0.10
    assert v["rss"]["fe1"]["flat"]                 # the other front-end is judged on its own


def test_a_high_water_mark_with_a_new_connection_peak_then_flat_passes():
    # the soak here: 140 MB while the peak was ~2,300 connections, 200 MB once a cycle held 3,800,
    # then 200 MB at the same peak
    v = verdict(report([140_000, 141_000, 200_000, 201_000, 200_500], [2300, 2300, 3800, 3700, 3800]), 0.10)
    assert v["rss_flat"], v["rss"]["fe2"]
    cyc = v["rss"]["fe2"]["cycles"]
    assert cyc[2].get("new_load_peak") and "growth" not in cyc[2]
    assert cyc[4]["growth"] < 0.01


def test_the_same_step_without_more_connections_is_growth():
    v = verdict(report([140_000, 141_000, 200_000, 201_000, 200_500], [2300, 2300, 2400, 2300, 2300]), 0.10)
    assert not v["rss_flat"]
    assert v["rss"]["fe2"]["worst_growth"] > 0.4


def test_a_leak_after_the_peak_still_fails():
    v = verdict(report([140_000, 200_000, 212_000, 224_000, 236_000], [2300, 3800, 3800, 3800, 3800]), 0.10)
    assert not v["rss_flat"]


def test_a_restarted_front_end_is_judged_from_its_own_start():
    v = verdict(report([150_000] * 5, fe1_rss_per_cycle=[100_000, 100_000, 70_000, 70_000, 90_000],
                       fe1_restart_cycle=2), 0.10)
    fe1 = v["rss"]["fe1"]
    assert fe1["pid"] == 2 and [c["t"] for c in fe1["cycles"]] == [600, 900, 1200]
    assert not fe1["flat"]                          # 70 -> 90 MB at the same load after its restart
    late = verdict(report([150_000] * 5, fe1_restart_cycle=4), 0.10)["rss"]["fe1"]
    assert late["judged"] is False                   # one cycle of its own: nothing to compare


def test_errors_outside_faults_and_leftovers_fail():
    v = verdict(report([150_000] * 5, errors_at=(150, 500)), 0.10)   # 150 overlaps the fault at 150 s
    assert v["errors_outside_faults"] == 5 and v["errors_inside_faults"] == 5 and not v["ok"]
    v = verdict(report([150_000] * 5, left=3), 0.10)
    assert v["left_at_end"] == {"switch_entries": 3} and not v["ok"]
