"""The packet I/O adapter in real namespaces: a NAT relay built on it carries real TCP (curl,
wrk against nginx) byte-exact, including the GSO super-frames and partial checksums of veth, and
its packets per second are measured.

    c (10.99.1.2) ── sw (kernel routing) ── fe (PacketIO relay, 10.99.2.2)
                         └── b (nginx, 10.99.3.2:80)
The switch namespace steers VIP traffic and the back-end's port-80 replies to fe (as the eBPF
switch does); the relay rewrites dst VIP->b and src b->VIP, like the engine's slow path.
"""

from __future__ import annotations

import hashlib
import re
import select
import subprocess
import threading
import time
import pytest

from miresga.bpf.netns import in_netns, run
from miresga.frontend.packetio import PacketIO
from miresga.frontend.segment import ip_int
from miresga.frontend.server import install_kernel_guard, remove_kernel_guard

from frontend_net import BE, FE_GW_MAC, VIP, VPORT, relay_net  # noqa: F401 (fixture)

pytestmark = pytest.mark.netns


class Relay:
    """NAT relay on PacketIO in the fe namespace (a thread; the engine's slow path in miniature)."""

    def __init__(self, ns: str, checksum: str):
        self.ns, self.checksum = ns, checksum
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.io: PacketIO | None = None
        self.t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.t.start()
        assert self.ready.wait(10), self.error
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(5)
        if self.error:
            raise self.error

    def _run(self):
        vip, be = ip_int(VIP), ip_int(BE)
        try:
            with in_netns(self.ns):
                install_kernel_guard("10.99.2.2")
                try:
                    with PacketIO("eth0", FE_GW_MAC, filter_spec=([(VIP, VPORT)], [(BE, 80)]),
                                  checksum=self.checksum) as io:
                        self.io = io
                        self.ready.set()
                        while not self.stop.is_set():
                            select.select([io], [], [], 0.05)
                            while True:
                                segs = io.recv_batch(64)
                                for s in segs:
                                    if s.dst == vip and s.dport == VPORT:
                                        s.dst, s.dport = be, 80
                                    elif s.src == be and s.sport == 80:
                                        s.src, s.sport = vip, VPORT
                                    else:
                                        continue
                                    io.send(s)
                                if len(segs) < 64:
                                    break
                finally:
                    remove_kernel_guard()
        except BaseException as e:  # noqa: BLE001
            self.error = e
            self.ready.set()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def curl(ns: str, url: str) -> bytes:
    p = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "20", "-o", "-", url],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("checksum", ["offload", "software"])
def test_relay_carries_real_tcp_byte_exact(relay_net, checksum):
    ns, www = relay_net
    with Relay(ns["fe"], checksum) as r:
        for name in ("1k", "1m"):
            assert sha(curl(ns["c"], f"http://{VIP}/{name}")) == sha((www / name).read_bytes())
        st = r.io.stats
        assert st.rx_gso > 0 and st.tx_gso > 0, "the 1 MB response should arrive as GSO super-frames"
        assert st.tx_errors == 0
    # the front-end namespace's kernel stayed out of it
    out = run(ns["fe"], "nstat", "-az", "TcpOutRsts", "IcmpOutMsgs").stdout
    assert all(int(v) == 0 for v in re.findall(r"^\w+\s+(\d+)", out, re.M)), out


def test_relay_packets_per_second(relay_net, record_property):
    ns, www = relay_net
    with Relay(ns["fe"], "offload") as r:
        t0 = time.monotonic()
        rx0, tx0 = r.io.stats.rx, r.io.stats.tx
        p = run(ns["c"], "wrk", "-t1", "-c16", "-d3s", f"http://{VIP}/1k", timeout=30)
        dt = time.monotonic() - t0
        rx, tx = r.io.stats.rx - rx0, r.io.stats.tx - tx0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", p.stdout).group(1))
    pps = (rx + tx) / 2 / dt
    print(f"\nrelay: {rps:.0f} req/s (1 KB keep-alive, 16 conns), {pps:.0f} packets/s relayed "
          f"(rx {rx}, tx {tx} in {dt:.1f}s)")
    record_property("relay_pps", pps)
    record_property("relay_rps", rps)
    assert "Non-2xx" not in p.stdout and "Socket errors" not in p.stdout, p.stdout
    # every frame taken was sent on (a few may be in flight when the counters are read)
    assert 0 <= rx - tx < 64 and pps > 2000


def test_kernel_guard_leaves_a_management_interface_alone():
    """The guard acts on the fabric interface only: a connection to the host's management
    address survives the guard's install and removal, and the forwarding setting is untouched."""
    import os
    import socket
    import subprocess
    import threading
    ns, peer = f"mgkg{os.getpid() % 100000}", f"mgkp{os.getpid() % 100000}"

    def sh(*a):
        subprocess.run(a, check=True, capture_output=True)
    try:
        for n in (ns, peer):
            sh("ip", "netns", "add", n)
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "fab0")
        sh("ip", "-n", ns, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt1", "netns", peer)
        sh("ip", "-n", ns, "addr", "add", "10.98.2.2/24", "dev", "eth0")
        sh("ip", "-n", ns, "addr", "add", "192.168.77.2/24", "dev", "mgmt0")
        sh("ip", "-n", peer, "addr", "add", "192.168.77.1/24", "dev", "mgmt1")
        for n, dev in ((ns, "eth0"), (ns, "mgmt0"), (ns, "lo"), (peer, "mgmt1"), (peer, "lo")):
            sh("ip", "-n", n, "link", "set", dev, "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        with in_netns(ns):
            srv = socket.create_server(("192.168.77.2", 2222))
        accepted: list = []
        t = threading.Thread(target=lambda: accepted.append(srv.accept()[0]), daemon=True)
        t.start()
        with in_netns(peer):
            cli = socket.create_connection(("192.168.77.2", 2222), timeout=5)
        t.join(5)
        conn = accepted[0]

        def echo(msg: bytes) -> bytes:
            cli.sendall(msg)
            got = conn.recv(100)
            conn.sendall(got)
            return cli.recv(100)
        with in_netns(ns):
            install_kernel_guard("10.98.2.2", "eth0")
        try:
            assert echo(b"during") == b"during"
            with in_netns(peer):
                s2 = socket.create_connection(("192.168.77.2", 2222), timeout=5)   # a new one too
            s2.close()
        finally:
            with in_netns(ns):
                remove_kernel_guard()
        assert echo(b"after") == b"after"
        out = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "1"
        for s in (cli, conn, srv):
            s.close()
    finally:
        for n in (ns, peer):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
