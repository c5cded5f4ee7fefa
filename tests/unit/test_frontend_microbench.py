"""The engine micro-benchmark runs, and a request's set-up stays far below a millisecond."""

from benchmarks.frontend_microbench import bench_lifecycle, bench_setup


def test_engine_costs_are_sane():
    setup = bench_setup(2000)
    life = bench_lifecycle(2000)
    print(f"setup {setup:.1f} us, lifecycle {life:.1f} us")
    assert 0 < setup < 1000 and 0 < life < 3000   # generous: the machine is shared
