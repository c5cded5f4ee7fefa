"""Miresga under faults: a back-end dies and returns, a front-end dies (its own testbed, since
these tests break things on purpose)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from test_e2e import curl, layout_testbed, objects, sha, wait_for

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module", params=["classic", "realistic"])
def lb(request):
    with layout_testbed(request.param) as tb:
        yield tb


def nginx_pids(tb, host: str) -> list[int]:
    return tb.pids_of(host, "nginx")


def whoami(tb, timeout=5) -> str:
    """Who answers /whoami through the VIP; 'FAIL:<reason>' when the request fails (cleanly)."""
    p = curl(tb, "-w", "\n%{http_code}", f"http://{tb.cfg.vip.address}/whoami", timeout=timeout + 5)
    if p.returncode != 0:
        return f"FAIL:curl{p.returncode}"
    body, _, code = p.stdout.decode().rpartition("\n")
    return body.strip() if code == "200" else f"FAIL:{code}"


def test_backend_killed_and_restored(lb):
    for p in nginx_pids(lb, "be2"):
        os.kill(p, signal.SIGKILL)
    t0 = time.monotonic()
    answers = [whoami(lb) for _ in range(30)]  # while the health check notices
    assert time.monotonic() - t0 < 60, "failed requests hung instead of failing cleanly"
    assert "be2" not in answers
    assert {a for a in answers if not a.startswith("FAIL")} <= {"be1", "be3"}
    assert all(a in ("be1", "be3") or a in ("FAIL:503", "FAIL:502", "FAIL:curl56", "FAIL:curl52") for a in answers), answers

    def healthy_pools():
        got = [whoami(lb) for _ in range(12)]
        return got if all(a in ("be1", "be3") for a in got) else None
    wait_for(healthy_pools, 15, "be2 out of the pools, every request answered")

    run = lb.run_dir / "be2"
    subprocess.run(["ip", "netns", "exec", lb.ns("be2"), "nginx", "-c", str(run / "nginx.conf"), "-e",
                    str(run / "error.log")], check=True)
    wait_for(lambda: "be2" in {whoami(lb) for _ in range(6)}, 20, "be2 back in its pools")


def test_frontend_killed_mid_download(lb):
    o = objects(lb)[100 << 20]
    url = f"http://{lb.cfg.vip.address}/download/100m"
    # four slow downloads, so both front-ends own some, offloaded once their headers were seen
    procs = [subprocess.Popen(["ip", "netns", "exec", lb.ns("c1"), "curl", "-s", "--max-time", "90",
                               "--limit-rate", "12M", url], stdout=subprocess.PIPE) for _ in range(4)]
    try:
        wait_for(lambda: lb.switch_stats()["installed"] >= 4, 20, "four offload entries installed")
        fe1 = lb.state["procs"]["frontend-fe1"]
        os.kill(fe1, signal.SIGKILL)
        outs = [p.communicate(timeout=100)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(sha(b) == o["sha256"] for b in outs), [len(b) for b in outs]

    def members():
        m = {x["name"]: x for x in lb.switch_stats()["members"]}
        return m["fe1"]["state"] != "alive" and m["fe2"]["buckets"] == 256
    wait_for(members, 15, "fe1's buckets moved to fe2")
    answers = [whoami(lb) for _ in range(20)]
    assert all(a in ("be1", "be2", "be3") for a in answers), answers
