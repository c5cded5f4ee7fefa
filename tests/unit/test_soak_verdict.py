"""The soak's verdict rules (miresga.fuzz.soak.verdict) on made-up reports."""

from __future__ import annotations

from miresga.fuzz.soak import verdict


def report(rss_fe2_end=150_000, errors_at=(), left=0):
    samples = []
    for t in range(0, 601, 50):
        samples.append({"t": t, "rss_kb_fe1": 100_000 if t < 300 else 70_000 + 100 * t,
                        "pid_fe1": 1 if t < 300 else 2, "rss_kb_fe2": 150_000 if t < 600 else rss_fe2_end,
                        "pid_fe2": 3, "conns_fe1": 0, "conns_fe2": 0, "switch_entries": 0})
    end = dict(samples[-1], switch_entries=left)
    wrk = [{"t_start": t, "t_end": t + 50, "workload": "T1", "errors": 5 if t in errors_at else 0}
           for t in range(0, 600, 50)]
    return {"warmup_s": 300, "samples": samples, "wrk": wrk, "end_state": end,
            "faults": [{"t": 150.0, "what": "be2"}, {"t": 300.0, "what": "fe1"}]}


def test_flat_clean_run_is_ok_and_a_restarted_process_is_not_judged():
    v = verdict(report(), 0.25)
    assert v["ok"], v
    assert v["rss"]["fe2"] == {"judged": True, "start_kb": 150_000, "end_kb": 150_000, "growth": 0.0}
    assert v["rss"]["fe1"]["judged"] is False      # restarted at 300 s: the rest of the run is its warm-up


def test_growth_errors_outside_faults_and_leftovers_fail():
    assert not verdict(report(rss_fe2_end=200_000), 0.25)["rss_flat"]
    v = verdict(report(errors_at=(150, 500)), 0.25)   # 150: overlaps the fault at 150 s; 500: does not
    assert v["errors_outside_faults"] == 5 and not v["ok"]
    assert verdict(report(left=3), 0.25)["left_at_end"] == {"switch_entries": 3}
