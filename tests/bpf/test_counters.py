"""The toolchain end to end on the smallest real program: build, load, test-run, attach in a
namespace, read the map (its layout against the BTF: test_layouts.py)."""

import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from miresga.bpf.counters import attach_counters, read_counters
from miresga.bpf.layouts import IfCounters
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.bpf.testrun import run_packet

TC_ACT_UNSPEC = 0xFFFFFFFF


def test_counts_through_test_run():
    with BpfObject(object_path("counters")) as obj:
        prog = obj.program("count_ingress")
        pkt = Ether() / IP(dst="10.0.0.1") / TCP() / (b"x" * 100)
        for _ in range(3):
            r = run_packet(prog, pkt)
            assert r.verdict == TC_ACT_UNSPEC  # passes the packet on to the next program
            assert r.raw == bytes(pkt)
        (key, val), = obj.map("if_counters").items()
        c = IfCounters.from_buffer_copy(val)
        assert (c.packets, c.bytes) == (3, 3 * len(pkt))
        assert int.from_bytes(key, "little") & 1 == 0  # ingress


@pytest.mark.netns
def test_counts_attached_in_namespace(tmp_path):
    a, b = "mgtcnt-a", "mgtcnt-b"
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b], check=True)
        for ns, addr in ((a, "10.9.0.1/24"), (b, "10.9.0.2/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        att = attach_counters(a, "eth0", Path("/sys/fs/bpf") / f"mgtcnt-{tmp_path.name}")
        try:
            subprocess.run(["ip", "netns", "exec", a, "ping", "-c", "5", "-i", "0.01", "-q", "10.9.0.2"], check=True,
                           capture_output=True)
            c = read_counters(att.pin_dir)
            assert c["egress"]["packets"] >= 5 and c["ingress"]["packets"] >= 5
            assert c["egress"]["bytes"] >= 5 * 98
        finally:
            att.close()
        assert read_counters(att.pin_dir) is None  # pins removed with the attachment
        out = subprocess.run(["tc", "-n", a, "filter", "show", "dev", "eth0", "ingress"], capture_output=True, text=True)
        assert "bpf" not in out.stdout
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
