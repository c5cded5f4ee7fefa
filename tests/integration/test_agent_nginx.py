"""The agent against nginx's real TCP stack, with no switch and no front-end: a raw-packet peer in
the client namespace plays both (tests/support/agent_peer.py) and downloads 1 MB in the switch's sequence
space through the agent's translation, with and without loss; plus direct traffic, the CLI life
cycle and the idle sweep."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time

import pytest

from miresga.agent.manager import AgentManager, AgentSettings, flow_key, pin_dir
from miresga.bpf.layouts import AgentFlow
from miresga.bpf.netns import run

from agent_peer import SplicePeer
from benchmarks.agent_lab import BACKEND_IP, BACKEND_MAC, CLIENT_IP, CLIENT_MAC, PEER_PORTS, AgentLab

pytestmark = pytest.mark.netns
PROMISED_WS = 7


def peer(lab: AgentLab, cport: int | None = None) -> SplicePeer:
    return SplicePeer(lab.client_ns, "eth0", CLIENT_MAC, BACKEND_MAC, CLIENT_IP, BACKEND_IP, 80,
                      cport or random.randint(*PEER_PORTS), wscale=PROMISED_WS)


def settings(**kw) -> AgentSettings:
    return AgentSettings(service_ports=(80,), window_scale=PROMISED_WS, capacity=1024, **kw)


def splice_download(lab: AgentLab, agent: AgentManager, s: int | None = None, timeout: float = 40.0,
                    verify_checksums: bool = False):
    p = peer(lab)
    p.verify_checksums = verify_checksums
    try:
        res = p.fetch("/1m", s=s, timeout=timeout, closed_when=lambda: not agent.flows())
    finally:
        p.close()
    if verify_checksums:
        assert p.csum_bad == 0 and p.csum_good >= res.data_frames > 0, (p.csum_good, p.csum_bad)
    assert res.status == 200
    assert hashlib.sha256(res.body).hexdigest() == lab.objects["1m"]
    return res


@pytest.fixture
def lab():
    # tcp_rmem max 6 MB: the back-end announces window scale 7, the promised one. (This machine's
    # default, 32 MB, gives 10: test_backend_window_scale_differs_is_rescaled covers a mismatch.)
    with AgentLab(backend_rmem_max=6 << 20) as lab_:
        yield lab_


@pytest.mark.parametrize("mode", ["tc", "xdp"])
def test_splice_download_1m(lab, mode):
    """Ingress as TC or native XDP (veth supports it); egress is TC either way."""
    with AgentManager(settings(attach=mode), lab.backend_ns, "eth0", pin=False) as agent:
        assert agent.ingress_mode == mode
        res = splice_download(lab, agent, s=0xFFFF_F000)  # the switch's stream wraps past 2^32
        st = agent.stats()
    assert res.closed and st["flows"] == 0
    c = st["counters"]
    assert c["splice_syn"] == 1 and c["synack"] == 1 and c["removed_fin"] == 1
    assert c["xlate_out"] >= 16  # GSO frames of up to 64 KB carry the megabyte
    assert c["window_rescaled"] == 0  # back-end's scale equals the promised one
    assert res.synack_wscale == PROMISED_WS
    assert st["drops"] == {}


def test_splice_download_1m_with_loss(lab):
    # 1% loss both ways on the client-side veth (nftables; this kernel has no netem). Per-segment
    # loss needs segments: no TSO/GSO on the back-end, so a loss is one MSS, not a 64 KB frame;
    # with transmit checksums done in software after the agent, the peer checks every checksum
    # (the agent's rewrite of partial-checksum frames must leave the pseudo-header sum alone).
    lab.offloads(lab.backend_ns, False)
    lab.loss(1)
    with AgentManager(settings(), lab.backend_ns, "eth0", pin=False) as agent:
        for attempt in range(3):  # a run with no data loss at all (p ~ 0.07%) proves nothing: again
            res = splice_download(lab, agent, timeout=60.0, verify_checksums=True)
            if res.ooo_frames:
                break
        st = agent.stats()
    lost = lab.loss_counts()
    assert lost["in"] > 0, lost
    assert res.ooo_frames > 0 and res.acks_with_sack > 0
    assert st["counters"]["sack_blocks"] > 0
    assert st["drops"] == {}


def test_backend_window_scale_differs_is_rescaled():
    # tcp_rmem max 64 MB makes the back-end announce scale 11 while the switch promised 7
    with AgentLab(backend_rmem_max=64 << 20) as lab_:
        with AgentManager(settings(), lab_.backend_ns, "eth0", pin=False) as agent:
            res = splice_download(lab_, agent)
            st = agent.stats()
    assert res.synack_wscale == 11
    assert st["counters"]["window_rescaled"] > 0
    # the client reads the fields in the promised scale; without rescaling they would mean 16x less
    seen = max(w << PROMISED_WS for w in res.windows)
    assert seen >= 32 << 10, f"largest window the client saw: {seen}"


def test_direct_traffic_untouched(lab):
    with AgentManager(settings(), lab.backend_ns, "eth0", pin=False) as agent:
        for port in (80, 8080):
            p = subprocess.run(["ip", "netns", "exec", lab.client_ns, "curl", "-s", "--max-time", "10",
                                f"http://{BACKEND_IP}:{port}/1m"], capture_output=True, timeout=20)
            assert hashlib.sha256(p.stdout).hexdigest() == lab.objects["1m"], port
        st = agent.stats()
    assert st["flows"] == 0
    assert st["counters"]["unknown"] > 0  # the agent saw the service-port flow and let it be
    assert st["translations"] == 0


def test_cli_attach_stats_detach(lab):
    cli = [sys.executable, "-m", "miresga.control.cli", "agent"]
    ns = ["--netns", lab.backend_ns, "--iface", "eth0"]
    try:
        subprocess.run([*cli, "attach", *ns], check=True, capture_output=True, timeout=30)
        assert (pin_dir(lab.backend_ns) / "agent_flows").exists()
        filters = run(lab.backend_ns, "tc", "filter", "show", "dev", "eth0", "egress").stdout
        assert "agent_egress" in filters
        agent = AgentManager.from_pins(lab.backend_ns)
        try:
            splice_download(lab, agent)
        finally:
            for m in agent.maps.values():
                m.close()
        out = subprocess.run([*cli, "stats", *ns], check=True, capture_output=True, text=True, timeout=30)
        st = json.loads(out.stdout)
        assert st["counters"]["splice_syn"] == 1 and st["translations"] > 0 and st["flows"] == 0
        assert st["capacity"] == 65536  # cfg.agent.capacity of the default config
    finally:
        subprocess.run([*cli, "detach", *ns], capture_output=True, timeout=30)
    assert not pin_dir(lab.backend_ns).parent.exists()
    for direction in ("ingress", "egress"):
        assert "agent_" not in run(lab.backend_ns, "tc", "filter", "show", "dev", "eth0", direction).stdout


def test_sweep_removes_only_idle_flows(lab):
    with AgentManager(settings(idle_timeout_s=5.0), lab.backend_ns, "eth0", pin=False) as agent:
        p = peer(lab)
        try:
            res = p.fetch("/1m", close=False)  # leave the connection open: the flow stays
        finally:
            p.close()
        assert hashlib.sha256(res.body).hexdigest() == lab.objects["1m"]
        assert len(agent.flows()) == 1
        assert agent.sweep() == 0  # just used
        assert agent.sweep(now_ns=time.monotonic_ns() + 6 * 10**9) == 1
        assert agent.flows() == {}


def test_reroute_after_reset_continues_the_client_stream(lab):
    """DESIGN.md step 8 on one back-end: reset the spliced connection, then a new splice SYN from
    the same client ip:port with seq = next request seq - 1 and switch ISN = client ack - 1, so the
    second response continues the sequence space the client already sees."""
    with AgentManager(settings(), lab.backend_ns, "eth0", pin=False) as agent:
        p = peer(lab)
        try:
            first = p.fetch("/1m", close=False)
            assert hashlib.sha256(first.body).hexdigest() == lab.objects["1m"]
            p.reset(first.next_seq)
            deadline = time.monotonic() + 5
            while agent.flows() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert agent.flows() == {}
            second = p.fetch("/1m", c=first.next_seq - 1, s=first.next_ack - 1,
                             closed_when=lambda: not agent.flows())
        finally:
            p.close()
        c = agent.counters()
    assert hashlib.sha256(second.body).hexdigest() == lab.objects["1m"]
    assert second.closed
    assert c["removed_rst"] == 1 and c["splice_syn"] == 2 and c["removed_fin"] == 1


def test_full_table_refuses_splice_until_swept(lab):
    small = AgentSettings(service_ports=(80,), window_scale=PROMISED_WS, capacity=16, idle_timeout_s=5.0)
    with AgentManager(small, lab.backend_ns, "eth0", pin=False) as agent:
        flows = agent.maps["agent_flows"]
        assert agent.stats()["capacity"] == 16
        for i in range(16):  # stale flows, last seen at boot
            flows.update(flow_key("10.77.0.99", 1000 + i), AgentFlow(switch_isn=1, state=1))
        p = peer(lab)
        try:
            with pytest.raises(TimeoutError):
                p.fetch("/1m", timeout=1.0)  # the splice SYN is dropped, not answered untranslated
            st = agent.stats()
            assert st["counters"]["insert_refused"] >= 1 and st["drops"]["agent_table_full"] >= 1
            assert agent.sweep() == 16
            res = p.fetch("/1m", closed_when=lambda: not agent.flows())
        finally:
            p.close()
    assert hashlib.sha256(res.body).hexdigest() == lab.objects["1m"]


def test_background_sweeper_and_cli_run(lab):
    small = AgentSettings(service_ports=(80,), window_scale=PROMISED_WS, capacity=64, idle_timeout_s=0.2)
    with AgentManager(small, lab.backend_ns, "eth0", pin=False, sweep_interval_s=0.05) as agent:
        agent.maps["agent_flows"].update(flow_key("10.77.0.99", 1000), AgentFlow(switch_isn=1, state=1))
        deadline = time.monotonic() + 5
        while agent.flows() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent.flows() == {} and agent.stats()["swept"] == 1
    # `miresga agent run`: attached while it runs, detached (filters and pins) when stopped
    proc = subprocess.Popen([sys.executable, "-m", "miresga.control.cli", "agent", "run", "--netns", lab.backend_ns,
                             "--iface", "eth0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "agent running" in proc.stdout.readline()
        assert "agent_ingress" in run(lab.backend_ns, "tc", "filter", "show", "dev", "eth0", "ingress").stdout
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["flows"] == 0
    assert not pin_dir(lab.backend_ns).parent.exists()
    assert "agent_" not in run(lab.backend_ns, "tc", "filter", "show", "dev", "eth0", "ingress").stdout
