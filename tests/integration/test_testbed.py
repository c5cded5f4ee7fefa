"""The testbed as a user sees it: CLI up/status/down, real nginx objects, nothing left behind."""

import hashlib
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns


def _miresga(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "miresga.control.cli", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _leftovers(inst):
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    procs = subprocess.run(["pgrep", "-af", f"/run/miresga/{inst}/"], capture_output=True, text=True).stdout
    import os
    pins = os.path.exists(f"/sys/fs/bpf/miresga/{inst}")
    return [l for l in ns.splitlines() if l.startswith(f"mg{inst}-")], procs.strip(), pins


def test_cli_up_status_objects_down():
    inst = "ci" + hashlib.sha1(str(id(object())).encode()).hexdigest()[:2]
    try:
        _miresga("testbed", "up", "--name", inst)
        st = json.loads(_miresga("testbed", "status", "--name", inst, "--json").stdout)
        assert set(st) >= {"namespaces", "vip", "peers", "backends", "objects"}
        assert st["vip"] == {"address": "10.0.100.1", "port": 80}  # `up` starts Miresga by default
        assert set(st["namespaces"]) == {"client", "switch", "frontend", "backend", "lb"}
        assert len(st["namespaces"]["frontend"]) == 2 and len(st["backends"]) == 3
        assert set(st["peers"]) == {"direct", "nginx", "haproxy"}
        client = st["namespaces"]["client"][0]
        big = next(o for o in st["objects"] if o["size"] == 100 << 20)
        for be in st["backends"]:
            url = f"http://{be['address']}:{be['direct_port']}{big['path']}"
            p = subprocess.run(["ip", "netns", "exec", client, "curl", "-sf", url], capture_output=True, timeout=60)
            assert p.returncode == 0 and hashlib.sha256(p.stdout).hexdigest() == big["sha256"], url
            # the service port belongs to Miresga (DESIGN.md §4): clients reach it through the VIP only
            who = subprocess.run(["ip", "netns", "exec", client, "curl", "-sf", "-m", "10",
                                  f"http://{be['address']}:{be['direct_port']}/whoami"], capture_output=True, text=True)
            assert who.stdout.strip() == be["name"]
        for name, peer in st["peers"].items():
            p = subprocess.run(["ip", "netns", "exec", client, "curl", "-sf",
                                f"http://{peer['address']}:{peer['port']}/obj/64k"], capture_output=True)
            assert hashlib.sha256(p.stdout).hexdigest() == next(o for o in st["objects"] if o["size"] == 65536)["sha256"], name
        st2 = json.loads(_miresga("testbed", "status", "--name", inst, "--json").stdout)
        c = next(h for h in st2["hosts"] if h["role"] == "client")["counters"]
        assert c["ingress"]["bytes"] > 3 * (100 << 20)  # the eBPF counters saw the downloads
    finally:
        _miresga("testbed", "down", "--name", inst, check=False)
    assert _leftovers(inst) == ([], "", False)


def test_half_built_instance_is_removed(monkeypatch):
    from miresga.testbed import Testbed
    from miresga.testbed import testbed as tbmod

    def boom(self):
        raise RuntimeError("injected failure after namespaces and back-ends")
    monkeypatch.setattr(tbmod.Testbed, "_start_peers", boom)
    tb = Testbed()
    with pytest.raises(RuntimeError, match="injected"):
        tb.up()
    assert _leftovers(tb.instance) == ([], "", False)


def test_two_instances_coexist(testbed):
    from miresga.testbed import Testbed
    with Testbed() as other:
        assert other.instance != testbed.instance
        for tb in (testbed, other):
            p = tb.run("c1", "curl", "-sf", "http://10.0.5.2:8080/whoami")
            assert p.stdout.strip() == "be2"
