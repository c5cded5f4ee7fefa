"""Choosing XDP or TC per interface: `auto` falls back to TC where the driver refuses native XDP,
a forced `xdp` fails with a message that says what to do, and a restart that changes an
interface's mode leaves exactly one switch program there, in the new mode."""

from __future__ import annotations

import json
import subprocess

import pytest

from miresga.bpf import netns as nsx
from miresga.bpf.attach import AttachError, attach_ingress, prog_name
from miresga.bpf.libbpf import BpfObject, object_path, tc_prog_id, xdp_prog_id

pytestmark = pytest.mark.netns


@pytest.fixture
def lo_ns():
    """A namespace whose only interface, lo, has no native XDP (no driver hook)."""
    name = f"mxa{__import__('os').getpid()}"
    nsx.run(None, "ip", "netns", "add", name)
    try:
        nsx.run(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        nsx.run(None, "ip", "netns", "del", name, check=False)


def test_forced_xdp_refused_auto_falls_back_to_tc(lo_ns):
    idx = nsx.ifindex(lo_ns, "lo")
    with BpfObject(object_path("switch")) as tc, BpfObject(object_path("switch_xdp")) as xdp:
        tc_prog, xdp_prog = tc.program("switch_ingress"), xdp.program("switch_ingress")
        with pytest.raises(AttachError, match=r"lo: the driver refuses native XDP.*set attach: tc"):
            attach_ingress(lo_ns, idx, "lo", "xdp", tc_prog, xdp_prog, priority=10, who="switch")
        assert xdp_prog_id(lo_ns, idx) is None and tc_prog_id(lo_ns, idx, "ingress", 1, 10) is None
        a, mode = attach_ingress(lo_ns, idx, "lo", "auto", tc_prog, xdp_prog, priority=10, who="switch")
        try:
            assert mode == "tc" and tc_prog_id(lo_ns, idx, "ingress", 1, 10) == tc_prog.id
        finally:
            a.detach()
        assert tc_prog_id(lo_ns, idx, "ingress", 1, 10) is None


def _switch_programs(ns: str, ifname: str) -> list[str]:
    p = subprocess.run(["ip", "netns", "exec", ns, "bpftool", "-j", "net", "show", "dev", ifname],
                       capture_output=True, text=True, check=True)
    d = json.loads(p.stdout)[0]
    return [f"xdp:{prog_name(x['id'])}" for x in d.get("xdp", [])] + \
        [f"tc:{prog_name(x['id'])}" for x in d.get("tc", []) if x.get("kind") == "clsact/ingress"]


def _with_attach(cfg, mode):
    return cfg.model_copy(update={"switch": cfg.switch.model_copy(update={"attach": mode})})


def test_adoption_changes_the_mode_and_leaves_one_program():
    """tc -> xdp -> tc across adoptions (a restart with a changed `switch.attach`): each port runs
    the switch once, in the mode of the last start; traffic is routed throughout; a clean close
    leaves nothing."""
    from miresga.control.config import load_config
    from miresga.switch.dataplane import SwitchDataplane, attached_modes, ports_for
    from miresga.testbed import Testbed
    with Testbed(_with_attach(load_config(), "xdp")) as tb:   # host ends ready for XDP
        sw, be = tb.ns_switch, tb.cfg.hosts.backends[0]
        ifaces = sorted({h.interface for h in tb.cfg.hosts.all()})
        dp = None
        try:
            for mode in ("tc", "xdp", "tc"):
                cfg = _with_attach(tb.cfg, mode)
                if dp is not None:
                    dp.close(keep=True)
                dp = SwitchDataplane(cfg, sw, ports_for(cfg, sw), adopt=True)
                assert set(dp.port_modes.values()) == {mode}
                assert attached_modes(sw, ifaces) == {i: mode for i in ifaces}   # as `miresga status` reads it
                assert all(_switch_programs(sw, i) == [f"{mode}:switch_ingress"] for i in ifaces), \
                    {i: _switch_programs(sw, i) for i in ifaces}
                r = tb.run("c1", "curl", "-sf", "-m", "5", f"http://{be.ip}:{be.direct_port}/whoami")
                assert r.stdout.strip() == be.name
        finally:
            if dp is not None:
                dp.close()
        assert all(_switch_programs(sw, i) == [] for i in ifaces)
        assert attached_modes(sw, ifaces) == {i: "none" for i in ifaces}
