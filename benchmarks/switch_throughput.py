"""Forwarding throughput of the switch host, measured with real kernel TCP streams:

- `kernel`  : client -> back-end through the switch namespace's kernel routing (ip_forward);
- `routed`  : the same through the eBPF switch's LPM route (MAC rewrite + redirect);
- `offload` : a stream that takes the offloaded rewrite path both ways: the client connects to
  VIP:port (the switch answers the SYN with its cookie), and the back-end side is a socket put
  straight into ESTABLISHED with TCP_REPAIR using the sequence numbers the client holds — what
  the front-end and the agent arrange in the full system. Back-end segments are rewritten to
  VIP:port, the client's ACKs to the back-end, by the switch alone.

The stream runs from the back-end to the client (a download), in one process that enters each
namespace only to create its socket.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from miresga.bpf.netns import in_netns

TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS, TCP_REPAIR_WINDOW = 19, 20, 21, 22, 29
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM = 2, 3, 4
CHUNK = 1 << 20


def _stream(sender: socket.socket, receiver: socket.socket, total: int) -> float:
    """Send `total` bytes sender -> receiver; returns bytes/s at the receiver."""
    buf = bytearray(CHUNK)
    err: list[BaseException] = []

    def send() -> None:
        try:
            view = memoryview(bytes(CHUNK))
            left = total
            while left > 0:
                n = sender.send(view[: min(CHUNK, left)])
                left -= n
        except BaseException as e:  # surfaced below
            err.append(e)

    t = threading.Thread(target=send, daemon=True)
    got = 0
    t0 = time.perf_counter()
    t.start()
    receiver.settimeout(10)
    while got < total:
        n = receiver.recv_into(buf)
        if n == 0:
            break
        got += n
    dt = time.perf_counter() - t0
    t.join(timeout=10)
    if err:
        raise err[0]
    if got < total:
        raise RuntimeError(f"stream ended after {got} of {total} bytes")
    return total / dt


def plain_stream(client_ns: str, backend_ns: str, backend_ip: str, port: int, total: int) -> float:
    """Client connects to a listener on the back-end; the back-end sends."""
    with in_netns(backend_ns):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((backend_ip, port))
        ls.listen(1)
    try:
        with in_netns(client_ns):
            c = socket.create_connection((backend_ip, port), timeout=5)
        s, _ = ls.accept()
        try:
            return _stream(s, c, total)
        finally:
            s.close()
            c.close()
    finally:
        ls.close()


def _repair_seqs(s: socket.socket) -> tuple[int, int]:
    """(snd_nxt, rcv_nxt) of an established socket."""
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        snd = struct.unpack("=I", s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        rcv = struct.unpack("=I", s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
    finally:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
    return snd, rcv


def _client_wscale(s: socket.socket) -> int:
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return info[6] >> 4  # tcpi_rcv_wscale: what the client announced in its SYN


def repaired_backend(backend_ns: str, backend_ip: str, backend_port: int, client_ip: str, client_port: int,
                     snd_nxt: int, rcv_nxt: int, peer_wscale: int, own_wscale: int, mss: int) -> socket.socket:
    """A back-end socket in ESTABLISHED state continuing the client's view of the connection."""
    with in_netns(backend_ns):
        s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    s.bind((backend_ip, backend_port))
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    s.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("=I", snd_nxt))
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    s.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("=I", rcv_nxt))
    s.connect((client_ip, client_port))
    opts = struct.pack("=IIIIII", TCPOPT_MSS, mss, TCPOPT_WINDOW, peer_wscale | (own_wscale << 16),
                       TCPOPT_SACK_PERM, 0)
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts)
    win = 65535 << peer_wscale
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW,
                 struct.pack("=IIIII", rcv_nxt, win, win, 65535 << own_wscale, rcv_nxt))
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
    return s


def offload_stream(cfg, client_ns: str, backend_ns: str, backend_index: int, maps, total: int) -> float:
    """A download over the offloaded rewrite path (see the module docstring)."""
    be = cfg.hosts.backends[backend_index]
    client = cfg.hosts.clients[0]
    with in_netns(client_ns):
        c = socket.socket()
        c.settimeout(5)
        c.connect((str(cfg.vip.address), cfg.vip.port))
    try:
        cport = c.getsockname()[1]
        c_snd, c_rcv = _repair_seqs(c)
        b = repaired_backend(backend_ns, str(be.ip), be.port, str(client.ip), cport, snd_nxt=c_rcv, rcv_nxt=c_snd,
                             peer_wscale=_client_wscale(c), own_wscale=cfg.switch.window_scale, mss=cfg.switch.mss)
        try:
            err = maps.offload_insert(str(client.ip), cport, backend_index)
            if err:
                raise OSError(err, "offload insert")
            try:
                return _stream(b, c, total)
            finally:
                maps.offload_delete(str(client.ip), cport)
        finally:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            b.close()
    finally:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()


def measure(total: int = 1 << 30, repeats: int = 3, attach: str = "tc") -> dict:
    """Bring up a testbed and measure the three paths `repeats` times, interleaved (a loaded
    machine drifts; interleaving spreads that over all three). Bytes/s per run, and for the two
    eBPF paths the switch's packets/s (its counters over the stream's time). `attach`: the
    switch.attach mode (tc, xdp, auto); with XDP the testbed's hosts send MTU frames (veth turns
    GSO off toward an XDP peer) with software checksums (miresga.testbed.xdp), the kernel path too."""
    from miresga.bpf.netns import run
    from miresga.control.config import load_config
    from miresga.switch.dataplane import SwitchDataplane, ports_for
    from miresga.testbed import Testbed

    out: dict[str, list[float]] = {"kernel": [], "routed": [], "offload": [], "routed_pps": [], "offload_pps": []}
    base = load_config()
    base = base.model_copy(update={"switch": base.switch.model_copy(update={"attach": attach})})
    with Testbed(base) as tb:
        cfg, sw = tb.cfg, tb.ns_switch
        be = cfg.hosts.backends[0]
        c, b = tb.ns(cfg.hosts.clients[0].name), tb.ns(be.name)
        for i in range(repeats):
            out["kernel"].append(plain_stream(c, b, str(be.ip), 9100 + i, total))
            with SwitchDataplane(cfg, sw, ports_for(cfg, sw)) as dp:
                run(sw, "sysctl", "-qw", "net.ipv4.ip_forward=0")
                try:
                    for path, go in (("routed", lambda: plain_stream(c, b, str(be.ip), 9200 + i, total)),
                                     ("offload", lambda: offload_stream(cfg, c, b, 0, dp.maps, total))):
                        n0, t0 = sum(dp.maps.read_counters().values()), time.monotonic()
                        out[path].append(go())
                        dt = time.monotonic() - t0
                        out[f"{path}_pps"].append((sum(dp.maps.read_counters().values()) - n0) / dt)
                finally:
                    run(sw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return out


if __name__ == "__main__":
    import json
    import statistics
    import sys

    res = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30, int(sys.argv[2]) if len(sys.argv) > 2 else 3,
                  sys.argv[3] if len(sys.argv) > 3 else "tc")
    med = {k: statistics.median(v) for k, v in res.items()}
    print(json.dumps({"runs_bytes_per_s": res, "median_bytes_per_s": med,
                      "offload_over_kernel": med["offload"] / med["kernel"],
                      "routed_over_kernel": med["routed"] / med["kernel"]}, indent=1))
