"""Miresga end to end with the switch and the agents in native XDP mode (veth supports it; the
testbed adds what veth needs, miresga.testbed.xdp), on both layouts: byte-exact downloads through
the VIP, a large one carried by the switch's fast path, restarts of the switch and of an agent
during one, and every port and agent reporting XDP."""

from __future__ import annotations

import json
import subprocess

import pytest

from miresga.bpf.attach import prog_name

from test_e2e import (PacedDownload, curl, download_byte_exact, e2e_config, layout_testbed, name_of, objects,
                      serving_agent, sha, vip, wait_offloaded)

pytestmark = pytest.mark.netns


def xdp_config(path=None):
    cfg = e2e_config(path)
    sw = cfg.switch.model_copy(update={"attach": "xdp"})
    ag = cfg.agent.model_copy(update={"attach": "xdp"})
    return cfg.model_copy(update={"switch": sw, "agent": ag})


@pytest.fixture(scope="module", params=["classic", "realistic"])
def lb(request):
    with layout_testbed(request.param, xdp_config) as tb:
        yield tb


def test_every_port_and_agent_runs_xdp(lb):
    log = (lb.run_dir / "switch.log").read_text()
    ports = {h.interface for h in lb.cfg.hosts.all() if h.interface}
    assert all(f"{p} xdp" in log for p in ports), log[-2000:]
    assert "tc" not in log.split("data plane loaded on", 1)[1].split(")", 1)[0]
    for b in lb.cfg.hosts.backends:
        assert lb.agent_stats(b.name)["ingress"] == "xdp"
    assert lb.switch_stats()["attach"] == {p: "xdp" for p in ports}   # `miresga status`, from the kernel


@pytest.mark.parametrize("size", [1024, 1 << 20])
def test_download_byte_exact(lb, size):
    download_byte_exact(lb, size)


def test_100mb_offloaded_byte_exact(lb):
    """The response leaves the back-end through the agent (seq translated), crosses the XDP switch
    on the fast path (to_client) and arrives byte-exact; the client's ACKs go back through it."""
    o = objects(lb)[100 << 20]
    before = lb.switch_stats()["counters"]
    # At 50 MB/s (2 s) the switch entry is in place long before most of the bytes leave; unpaced,
    # XDP's MTU-sized frames let a busy machine send most of it before the insert lands.
    p = curl(lb, "--limit-rate", "50M", f"http://{vip(lb)[0]}/download/{name_of(100 << 20)}")
    after = lb.switch_stats()["counters"]
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == o["size"] and sha(p.stdout) == o["sha256"]
    fast = after["to_client"] - before["to_client"]
    assert fast > 36_000, fast   # most of 100 MB (72,000 frames of 1448 bytes) on the fast path
    assert after["to_backend"] > before["to_backend"]
    agents = [lb.agent_stats(b.name)["counters"] for b in lb.cfg.hosts.backends]
    # egress (TC) sees the back-end's GSO frames of up to 64 KB: 100 MB is at least 1600 of them
    assert sum(a["xlate_in"] for a in agents) > 0 and sum(a["xlate_out"] for a in agents) >= 1600


def switch_programs(lb) -> dict[str, list[str]]:
    """Per switch port: the programs attached, as `xdp:<name>` / `tc:<name>` (bpftool)."""
    out = {}
    for port in sorted({h.interface for h in lb.cfg.hosts.all() if h.interface}):
        p = subprocess.run(["ip", "netns", "exec", lb.ns_switch, "bpftool", "-j", "net", "show", "dev", port],
                           capture_output=True, text=True, check=True)
        d = json.loads(p.stdout)[0]
        out[port] = [f"xdp:{prog_name(x['id'])}" for x in d.get("xdp", [])] + \
            [f"tc:{prog_name(x['id'])}" for x in d.get("tc", []) if x.get("kind") == "clsact/ingress"]
    return out


def test_restart_during_offloaded_download_keeps_xdp(lb):
    """A restart with --keep-dataplane adopts the XDP data plane (the new program replaces the old
    one in one step on every port) during an offloaded download, which completes byte-exact; each
    port then runs exactly one switch program, in XDP."""
    o = objects(lb)[100 << 20]
    dl = PacedDownload(lb, f"http://{vip(lb)[0]}/download/{name_of(100 << 20)}", "25M")
    try:
        wait_offloaded(lb)
        dl.assert_running()
        lb.restart_switch()
        log = (lb.run_dir / "switch.log").read_text()
        assert "running data plane adopted" in log, log[-800:]
    finally:
        dl.join()
    body = dl.done()
    assert len(body) == o["size"] and sha(body) == o["sha256"]
    progs = switch_programs(lb)
    assert all(p == ["xdp:switch_ingress"] for p in progs.values()), progs


def test_agent_restart_during_offloaded_download_keeps_xdp(lb):
    """The agent of the back-end serving a download restarts (kept attached, adopted): its XDP
    ingress is replaced in place, every segment still translated, the download byte-exact; the
    back-end's eth0 then runs one agent ingress (XDP) and one egress (TC)."""
    o = objects(lb)[100 << 20]
    dl = PacedDownload(lb, f"http://{vip(lb)[0]}/download/{name_of(100 << 20)}", "25M")
    try:
        name = serving_agent(lb)
        dl.assert_running()
        lb.restart(f"agent-{name}", lb.miresga_argv("agent", name), "agent running")
        log = (lb.run_dir / f"agent-{name}.log").read_text()
        assert "running agent adopted" in log, log[-500:]
        assert "(ingress xdp)" in log.rsplit("running agent adopted", 1)[1], log[-500:]
    finally:
        dl.join()
    body = dl.done()
    assert len(body) == o["size"] and sha(body) == o["sha256"]
    p = subprocess.run(["ip", "netns", "exec", lb.ns(name), "bpftool", "-j", "net", "show", "dev", "eth0"],
                       capture_output=True, text=True, check=True)
    d = json.loads(p.stdout)[0]
    xdp = [prog_name(x["id"]) for x in d.get("xdp", [])]
    tc = sorted((x["kind"], prog_name(x["id"])) for x in d.get("tc", []) if str(prog_name(x["id"])).startswith("agent"))
    assert xdp == ["agent_ingress"] and tc == [("clsact/egress", "agent_egress")], (xdp, tc)
