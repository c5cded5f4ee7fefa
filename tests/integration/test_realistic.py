"""`miresga testbed up --layout realistic`: the hosts of docs/deploy.md's worked example (kernel MACs
learnt by ARP, back-ends sharing one subnet behind one switch port, the client two hops away behind
an upstream router, a management network on every host), Miresga started from the deployment
config and the systemd units' command lines only."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def rt():
    from miresga.testbed.realistic import RealisticTestbed
    with RealisticTestbed(lb="miresga") as tb:
        yield tb


def _get(tb, path, *args, timeout=60):
    p = subprocess.run(["ip", "netns", "exec", tb.ns("c1"), "curl", "-s", "--max-time", str(timeout), *args,
                        f"http://{tb.cfg.vip.address}:{tb.cfg.vip.port}{path}"], capture_output=True,
                       timeout=timeout + 10)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_components_run_the_units_command_lines(rt):
    from miresga.testbed.realistic import unit_argv
    conf = str(rt.run_dir / "config.yaml")
    for key, want in [("switch", unit_argv("miresga-switch.service", conf)),
                      ("frontend-fe1", unit_argv("miresga-frontend@.service", conf, "fe1")),
                      ("agent-be2", unit_argv("miresga-agent@.service", conf, "be2"))]:
        cmdline = open(f"/proc/{rt.state['procs'][key]}/cmdline").read().split("\0")
        i = cmdline.index("miresga.control.cli") + 1
        assert cmdline[i:i + len(want)] == want and cmdline[i + len(want)] == "--netns", cmdline
    assert "--iface" not in unit_argv("miresga-agent@.service", conf, "be2")   # the nic comes from the config


def test_macs_are_the_kernels_and_learnt_by_arp(rt):
    hosts = {h["name"]: h for h in rt.status()["hosts"]}
    macs = {h["mac"] for h in hosts.values()}
    assert len(macs) == len(hosts) and not any(m.startswith("02:4d:") for m in macs)
    neigh = subprocess.run(["ip", "netns", "exec", rt.ns_switch, "ip", "neigh"], capture_output=True,
                           text=True).stdout
    for b in rt.cfg.hosts.backends:
        line = next(x for x in neigh.splitlines() if x.startswith(f"{b.ip} "))
        assert "swp3" in line and hosts[b.name]["mac"] in line and "PERMANENT" not in line


@pytest.mark.parametrize("size", [1024, 1 << 20, 100 << 20])
def test_client_two_hops_away_downloads_byte_exact(rt, size):
    from miresga.testbed.objects import size_name
    o = next(x for x in rt.status()["objects"] if x["size"] == size)
    before = rt.switch_stats()["counters"]["to_client"]
    body = _get(rt, f"/download/{size_name(size)}")
    assert len(body) == size and hashlib.sha256(body).hexdigest() == o["sha256"]
    if size == 100 << 20:   # the switch carried it (fast path), back to the router's MAC
        assert rt.switch_stats()["counters"]["to_client"] - before > 1000


def test_backends_sharing_a_subnet_all_serve_and_rules_apply(rt):
    seen = {_get(rt, f"/whoami?i={i}").decode().strip() for i in range(9)}
    assert seen == {"be1", "be2", "be3"}
    assert {_get(rt, "/whoami", "-H", "Host: static.example").decode().strip() for _ in range(3)} == {"be3"}


ECHO_SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 2222)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept()
    while True:
        d = c.recv(100)
        if not d:
            break
        c.sendall(d)
""")


def test_management_connection_survives_frontend_stop_and_start(rt):
    """An SSH-like connection to fe1 on its management interface while its front-end stops and
    starts again (its kernel guard is removed and installed on the fabric interface only)."""
    from miresga.bpf.netns import in_netns
    fe_ip = str(rt.mgmt["fe1"])
    srv = subprocess.Popen(["ip", "netns", "exec", rt.ns("fe1"), sys.executable, "-c", ECHO_SERVER, fe_ip],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        with in_netns(rt.mgmt_ns("sw")):
            c = socket.create_connection((fe_ip, 2222), timeout=5)

        def echo(msg: bytes) -> None:
            c.sendall(msg)
            assert c.recv(100) == msg

        echo(b"before")
        rt.stop_process("frontend-fe1")
        echo(b"front-end stopped")
        rt.start_process("frontend-fe1", rt.miresga_argv("frontend", "fe1"), "front-end fe1 up")
        echo(b"front-end started")
        c.close()
    finally:
        srv.kill()
        srv.wait()
    time.sleep(1.5)   # fe1 registers again; the VIP is served by both front-ends
    assert _get(rt, "/download/1k") and rt.switch_stats()["members"]


def test_macs_resolved_by_arp_and_a_silent_host_named(rt):
    """With the neighbour table flushed, the switch's port lookup learns every MAC again by ARP;
    a listed host that does not answer fails the lookup with its config key."""
    from miresga.switch.dataplane import PortError, ports_for
    sw = rt.ns_switch
    want = {h["name"]: h["mac"] for h in rt.status()["hosts"]}
    subprocess.run(["ip", "netns", "exec", sw, "ip", "neigh", "flush", "all"], check=True)
    ports = ports_for(rt.cfg, sw)
    assert {p.host: p.host_mac for p in ports} == {n: m for n, m in want.items() if n != "c1"}
    subprocess.run(["ip", "netns", "exec", rt.ns("be3"), "ip", "link", "set", "eth0", "down"], check=True)
    subprocess.run(["ip", "netns", "exec", sw, "ip", "neigh", "flush", "all"], check=True)
    try:
        with pytest.raises(PortError) as e:
            ports_for(rt.cfg, sw, resolve_timeout=1.0)
        assert "hosts.backends.2.mac: be3 (10.0.4.13): no ARP answer from 10.0.4.13 on swp3" in str(e.value)
        assert "be1" not in str(e.value)
    finally:
        subprocess.run(["ip", "netns", "exec", rt.ns("be3"), "ip", "link", "set", "eth0", "up"], check=True)
