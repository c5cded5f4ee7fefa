"""`miresga switch` restarts without dropping traffic: a stop with --keep-dataplane leaves the eBPF
switch forwarding, the next start adopts its pinned maps (new program swapped in on every port,
configuration tables reconciled with the config, offloaded connections kept)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import time

import pytest

from miresga.control.config import load_config

from test_e2e import PacedDownload, serving_agent, wait_offloaded

pytestmark = pytest.mark.netns


def restart_config(path=None):
    cfg = load_config(path)
    # a 100 ms insert latency (a real switch's driver): a 100 MB download goes to the fast path early
    sw = cfg.switch.model_copy(update={"profile": "tofino", "batch_latency_ms": 100.0})
    return cfg.model_copy(update={"switch": sw})


@pytest.fixture(scope="module", params=["classic", "realistic"])
def lb(request):
    """Both layouts: the classic one, and the realistic one (kernel MACs, back-ends on one
    subnet behind one switch port, the client two hops away behind the upstream router)."""
    if request.param == "realistic":
        from miresga.testbed.realistic import REALISTIC_CONFIG, RealisticTestbed
        tb = RealisticTestbed(restart_config(REALISTIC_CONFIG), lb="miresga")
    else:
        from miresga.testbed import Testbed
        tb = Testbed(restart_config(), lb="miresga")
    with tb:
        yield tb


def _object(tb, size):
    return next(o for o in tb.status()["objects"] if o["size"] == size)


def test_restart_during_offloaded_100mb_download(lb):
    o = _object(lb, 100 << 20)
    vip = lb.cfg.vip.address
    before = lb.switch_stats()["counters"]["to_client"]
    # 10 MB/s: ten seconds of download, the restart falls in it (asserted: curl still running)
    dl = PacedDownload(lb, f"http://{vip}/download/100m", "10M")
    try:
        wait_offloaded(lb)
        mid = lb.switch_stats()["counters"]["to_client"]
        dl.assert_running()
        away = lb.restart_switch()
        log = (lb.run_dir / "switch.log").read_text()
        assert "running data plane adopted" in log and "changed from config: nothing" in log, log[-800:]
    finally:
        dl.join()
    body = dl.done()
    assert len(body) == o["size"] and hashlib.sha256(body).hexdigest() == o["sha256"]
    after = lb.switch_stats()["counters"]["to_client"]
    assert before < mid < after, (before, mid, after)   # the fast path carried bytes before and after
    print(f"switch control API away {away:.2f} s during the download")


def test_agent_restart_during_offloaded_100mb_download(lb):
    """The agent of the back-end serving a download restarts (as its unit does: kept attached,
    adopted): every segment of the download still gets its sequence translation."""
    o = _object(lb, 100 << 20)
    dl = PacedDownload(lb, f"http://{lb.cfg.vip.address}/download/100m", "10M")
    try:
        name = serving_agent(lb)
        before = lb.agent_stats(name)["translations"]
        dl.assert_running()
        lb.restart(f"agent-{name}", lb.miresga_argv("agent", name), "agent running")
        log = (lb.run_dir / f"agent-{name}.log").read_text()
        assert "running agent adopted" in log, log[-500:]
    finally:
        dl.join()
    body = dl.done()
    assert len(body) == o["size"] and hashlib.sha256(body).hexdigest() == o["sha256"]
    assert lb.agent_stats(name)["translations"] > before   # the counters live on with the maps


SHORT = textwrap.dedent("""
    import json, socket, sys, time
    vip, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ok, errors, end = 0, [], time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            s = socket.create_connection((vip, port), timeout=3)
            s.sendall(b"GET /download/1k HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            head, _, body = data.partition(b"\\r\\n\\r\\n")
            if head.startswith(b"HTTP/1.1 200") and len(body) == 1024:
                ok += 1
            else:
                errors.append([t, "bad answer " + repr(head[:40])])
        except OSError as e:
            errors.append([t, str(e)])
    print(json.dumps({"ok": ok, "errors": errors}))
""")


def test_restart_during_short_connections(lb):
    vip, port = str(lb.cfg.vip.address), lb.cfg.vip.port
    p = subprocess.Popen(["ip", "netns", "exec", lb.ns("c1"), sys.executable, "-c", SHORT, vip, str(port), "6"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    t0 = time.monotonic()
    lb.restart_switch()
    t1 = time.monotonic()
    stdout, stderr = p.communicate(timeout=60)
    res = json.loads(stdout)
    print(f"short connections across a switch restart: {res['ok']} ok, {len(res['errors'])} errors")
    assert res["ok"] > 20, (res, stderr)
    # The client runs one connection at a time: at most the one in flight at the restart may fail
    # (started within its 3 s timeout before the restart ended); none before or after.
    assert len(res["errors"]) <= 1, res["errors"]
    assert all(t0 - 3.5 <= t <= t1 + 0.5 for t, _ in res["errors"]), (res["errors"], t0, t1)


def test_adoption_applies_config_changes_and_keeps_the_rest(tmp_path):
    """A data plane left running, then adopted under a changed config: a back-end that changed its
    address loses its offloaded connections, the others keep theirs; routes follow the config.
    `miresga switch --unload` then removes what was left running."""
    import yaml

    from miresga.switch.dataplane import SwitchDataplane, default_pin_dir, ports_for
    from miresga.testbed import Testbed
    with Testbed() as tb:
        cfg, sw = tb.cfg, tb.ns_switch
        pins = default_pin_dir(sw)
        dp = SwitchDataplane(cfg, sw, ports_for(cfg, sw))
        try:
            assert dp.maps.offload_insert("10.0.1.2", 40000, 0) == 0   # on be1
            assert dp.maps.offload_insert("10.0.1.2", 40001, 1) == 0   # on be2
            dp.close(keep=True)
            # be2 moves to another service port; be1 and everything else unchanged
            d = cfg.model_dump(mode="json")
            d["hosts"]["backends"][1]["port"] = 8081
            new = type(cfg).model_validate(d)
            dp = SwitchDataplane(new, sw, ports_for(new, sw), adopt=True)
            assert dp.adopted
            assert dp.maps.offload_get("10.0.1.2", 40000) is not None
            assert dp.maps.offload_get("10.0.1.2", 40001) is None
            assert dp.reconciled["sw_backends"] == 1 and dp.reconciled["sw_offload (back-end changed)"] == 1
            assert dp.reconciled["sw_backend_src"] == 2          # old key removed, new one written
            assert dp.reconciled["sw_routes"] == 0 and dp.reconciled["sw_arp"] == 0
            # and traffic still flows through the adopted program: the routed path to a back-end
            be = cfg.hosts.backends[2]
            r = tb.run("c1", "curl", "-sf", "-m", "5", f"http://{be.ip}:{be.direct_port}/whoami")
            assert r.stdout.strip() == be.name
            dp.close(keep=True)
        except BaseException:
            dp.close()
            raise
        f = tmp_path / "cfg.yaml"
        f.write_text(yaml.safe_dump(new.model_dump(mode="json")))
        p = subprocess.run([sys.executable, "-m", "miresga.control.cli", "switch", "--config", str(f), "--netns", sw,
                            "--unload"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert not pins.exists()
        for h in cfg.hosts.all():
            filters = subprocess.run(["ip", "netns", "exec", sw, "tc", "filter", "show", "dev", h.interface, "ingress"],
                                     capture_output=True, text=True).stdout
            assert "switch_ingress" not in filters, (h.interface, filters)


def test_adoption_drops_only_the_entries_of_a_service_that_changed_and_refuses_another_layout():
    """Three services; offloaded connections of one client port on each. Adopted under a config
    where service 1 moved to another port: its entries go (they would come back from the wrong
    VIP:port), the others stay, the VIP tables follow. Then a pinned data plane of another map
    layout (a table missing) is refused with what to do."""
    import shutil

    from miresga.control.config import Endpoint
    from miresga.switch.dataplane import AdoptError, SwitchDataplane, default_pin_dir, detach_switch, ports_for
    from miresga.testbed import Testbed
    from test_switch_netns import services_config
    with Testbed(services_config(load_config())) as tb:
        cfg, sw = tb.cfg, tb.ns_switch
        pins = default_pin_dir(sw)
        try:
            dp = SwitchDataplane(cfg, sw, ports_for(cfg, sw))
            try:
                for svc in range(3):
                    assert dp.maps.offload_insert("10.0.1.2", 40000, svc, svc=svc) == 0
            finally:
                dp.close(keep=True)
            api = cfg.services[0].model_copy(update={"vip": Endpoint(address=cfg.vip.address, port=8081)})
            new = cfg.model_copy(update={"services": [api, cfg.services[1]]})
            dp = SwitchDataplane(new, sw, ports_for(new, sw), adopt=True)
            try:
                assert dp.adopted
                assert {k: e.backend for k, e in dp.maps.offload_items()} == {
                    (0x0A000102, 40000, 0): 0, (0x0A000102, 40000, 2): 2}
                assert dp.reconciled["sw_offload (service changed)"] == 1
                assert dp.reconciled["sw_services"] == 1 and dp.reconciled["sw_vips"] == 2
                assert dp.reconciled["sw_vip_addrs"] == 0 and dp.reconciled["sw_offload (back-end changed)"] == 0
                assert [(str(a), p) for a, p in dp.maps.get_services()] == [
                    (str(s.vip.address), s.vip.port) for s in new.all_services()]
            finally:
                dp.close(keep=True)
            (pins / "sw_routes").unlink()
            with pytest.raises(AdoptError) as e:
                SwitchDataplane(new, sw, ports_for(new, sw), adopt=True)
            assert "no sw_routes" in str(e.value) and "miresga switch --unload" in str(e.value)
        finally:
            for h in cfg.hosts.all():
                detach_switch(sw, h.interface)
            shutil.rmtree(pins, ignore_errors=True)


def age_to_pre_services(pins, cfg, key_slot: int) -> None:
    """Make a kept data plane's pins look as the version before several VIPs left them: no
    sw_vips, sw_vip_addrs, sw_services, and sw_config in that version's layout (key_slot, vip,
    vport, mss, syn_window, wscale, sack, bucket_seconds, flags; 24 bytes as now)."""
    import ipaddress
    import socket
    import struct

    from miresga.bpf.libbpf import Map
    for name in ("sw_vips", "sw_vip_addrs", "sw_services"):
        (pins / name).unlink()
    sw = cfg.switch
    old = struct.pack("=I4sHHHBBII", key_slot, ipaddress.IPv4Address(cfg.vip.address).packed,
                      socket.htons(cfg.vip.port), sw.mss, 65535, sw.window_scale, int(sw.sack),
                      sw.cookie.bucket_seconds, 0)
    m = Map.from_pin(pins / "sw_config")
    try:
        m.update(struct.pack("=I", 0), old)
    finally:
        m.close()


@pytest.mark.parametrize("same_vip", [True, False], ids=["same-vip", "vip-changed"])
def test_adoption_upgrades_a_data_plane_pinned_before_services(same_vip):
    """A data plane pinned by the version before several VIPs is upgraded in place, not refused:
    its offloaded connections (service 0) stay when the default VIP:port is the same (dropped
    when it changed), the cookie key slot in use stays, sw_config is of the new layout with the
    config's options, the new tables are made and pinned (a second restart adopts them plainly),
    and traffic still flows through it."""
    import shutil

    from miresga.control.config import Endpoint
    from miresga.switch.dataplane import (ADDED_FOR_SERVICES, MAP_NAMES, SwitchDataplane, default_pin_dir,
                                          detach_switch, ports_for)
    from miresga.testbed import Testbed
    from test_switch_netns import services_config
    with Testbed(load_config()) as tb:
        cfg, sw = tb.cfg, tb.ns_switch
        pins = default_pin_dir(sw)
        try:
            dp = SwitchDataplane(cfg, sw, ports_for(cfg, sw))
            try:
                for port, b in ((40000, 0), (40001, 2)):
                    assert dp.maps.offload_insert("10.0.1.2", port, b) == 0
            finally:
                dp.close(keep=True)
            age_to_pre_services(pins, cfg, key_slot=1)
            new = services_config(cfg)        # and the upgrade brings two more services
            if not same_vip:
                new = new.model_copy(update={"vip": Endpoint(address=cfg.vip.address, port=81)})
            dp = SwitchDataplane(new, sw, ports_for(new, sw), adopt=True)
            try:
                assert dp.adopted
                kept = {k: e.backend for k, e in dp.maps.offload_items()}
                if same_vip:
                    assert kept == {(0x0A000102, 40000, 0): 0, (0x0A000102, 40001, 0): 2}
                    assert dp.reconciled["sw_offload (service changed)"] == 0
                else:
                    assert kept == {} and dp.reconciled["sw_offload (service changed)"] == 2
                c = dp.maps.get_config()
                assert (c.key_slot, c.n_services, c.mss, c.wscale, c.sack, c.bucket_seconds) == (
                    1, 3, new.switch.mss, new.switch.window_scale, int(new.switch.sack),
                    new.switch.cookie.bucket_seconds)
                assert [(str(a), p) for a, p in dp.maps.get_services()] == [
                    (str(s.vip.address), s.vip.port) for s in new.all_services()]
                assert all((pins / n).exists() for n in MAP_NAMES), sorted(p.name for p in pins.iterdir())
                be = cfg.hosts.backends[2]      # the routed path through the swapped program
                r = tb.run("c1", "curl", "-sf", "-m", "5", f"http://{be.ip}:{be.direct_port}/whoami")
                assert r.stdout.strip() == be.name
            finally:
                dp.close(keep=True)
            dp = SwitchDataplane(new, sw, ports_for(new, sw), adopt=True)   # plain adoption now
            try:
                assert dp.adopted and set(ADDED_FOR_SERVICES) <= set(MAP_NAMES)
                assert dp.reconciled["sw_services"] == 0 and dp.reconciled["sw_vips"] == 0
                assert dp.maps.get_config().key_slot == 1
            finally:
                dp.close(keep=True)
        finally:
            for h in cfg.hosts.all():
                detach_switch(sw, h.interface)
            shutil.rmtree(pins, ignore_errors=True)
