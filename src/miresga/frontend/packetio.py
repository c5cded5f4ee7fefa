"""Packet I/O for the front-end: an AF_PACKET socket on the host's interface, frames <-> Segments.

The only place where the front-end touches packets. Notes on what the kernel hands us:
- PACKET_VNET_HDR: every frame comes with a virtio_net_hdr. On veth, a sender's segmentation
  offload shows up as GSO super-frames (up to 64 KB, gso_type TCPV4) whose TCP checksum is only
  partial (NEEDS_CSUM). We never forward those bytes as they are: we rebuild headers and either
  hand the kernel a partial checksum to complete (checksum="offload": NEEDS_CSUM with the
  pseudo-header sum, GSO with gso_size for payloads larger than the MTU allows), or compute the
  full checksum ourselves (checksum="software"; large payloads are still sent as GSO).
- A classic BPF filter (compiled by tcpdump) keeps only the spliced traffic: to VIP:port, and from
  the back-ends' service ip:port. The namespace's own traffic (gRPC, health checks, metrics)
  never reaches this socket; the engine still classifies and counts anything odd.
- Our own transmissions are not looped back (PACKET_IGNORE_OUTGOING).
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from miresga.frontend.segment import Segment, ip_str

if TYPE_CHECKING:
    from miresga.control.config import Deployment

SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
PACKET_STATISTICS = 6
ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
SIOCGIFMTU = 0x8921
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE, VNET_GSO_TCPV4 = 0, 1
VNET = struct.Struct("<BBHHHH")
ETH_IP_TCP = struct.Struct("!6s6sH BBHHHBBH4s4s HHIIHHHH")  # eth + 20-byte IPv4 + 20-byte TCP
IP_HDR = struct.Struct("!BBHHHBBH4s4s")
TCP_HDR = struct.Struct("!HHIIHHHH")
_VNET_PLAIN = VNET.pack(0, 0, 0, 0, 0, 0)
# from the IP header on (offset 24 = vnet 10 + Ethernet 14): ver/ihl, total length, fragment
# word, protocol, addresses; then a 20-byte TCP header when the IP header has no options
_RX = struct.Struct("!B x H 2x H x B 2x I I HHIIHH")
# IPv4 (no options, DF, ttl 64, tcp) + TCP header: the parts that vary are parameters
_TX = struct.Struct("!BBHHHBBHIIHHIIHHHH")


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def csum_fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ones_sum(data: bytes | memoryview) -> int:
    """16-bit ones'-complement sum of `data` in network byte order (not folded, not inverted)."""
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
    a = array.array("H")
    a.frombytes(data)
    if sys.byteorder == "little":
        s = csum_fold(sum(a))
        return ((s & 0xFF) << 8) | (s >> 8)
    return sum(a)


def ip_checksum(hdr: bytes) -> int:
    return ~csum_fold(ones_sum(hdr)) & 0xFFFF


def capture_spec(cfg: "Deployment") -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """What a front-end captures (`compile_filter`'s arguments): every service's VIP:port, and
    every back-end's service ip:port."""
    return cfg.service_addresses(), [(str(b.ip), b.port) for b in cfg.hosts.backends]


def compile_filter(vips: list[tuple[str, int]], backends: list[tuple[str, int]]) -> bytes:
    """A classic BPF program (struct sock_fprog payload) for SO_ATTACH_FILTER: TCP to any
    service's VIP:port, or from any back-end's service ip:port."""
    parts = [f"(dst host {ip} and dst port {port})" for ip, port in vips]
    parts += [f"(src host {ip} and src port {port})" for ip, port in backends]
    expr = f"tcp and ({' or '.join(parts)})"
    out = subprocess.run(["tcpdump", "-ddd", "-y", "EN10MB", expr], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    n = int(out[0])
    ins = b"".join(struct.pack("HBBI", *map(int, line.split())) for line in out[1:1 + n])
    return ins


@dataclass
class IoStats:
    rx: int = 0
    tx: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_gso: int = 0
    tx_gso: int = 0
    rx_skipped: int = 0
    tx_errors: int = 0
    truncated: int = 0
    kernel_drops: int = 0      # frames the kernel dropped because our receive queue was full
    by_errno: dict[int, int] = field(default_factory=dict)


class FrameCodec:
    """Frames (virtio_net_hdr + Ethernet + IPv4 + TCP) <-> Segments; no socket, so tests use it."""

    def __init__(self, src_mac: bytes, dst_mac: bytes, mtu: int = 1500, checksum: str = "offload",
                 stats: IoStats | None = None):
        self.mtu = mtu
        self.checksum = checksum
        self.stats = stats or IoStats()
        self._eth = dst_mac + src_mac + b"\x08\x00"

    def parse(self, frame: memoryview) -> Segment | None:
        """vnet header + Ethernet + IPv4 + TCP -> Segment (None if not a TCP/IPv4 frame we handle)."""
        if len(frame) < 10 + 54:
            return None
        gso_type = frame[1]
        if gso_type & 0x7F not in (VNET_GSO_NONE, VNET_GSO_TCPV4) or frame[22] != 0x08 or frame[23] != 0:
            return None
        if gso_type:
            self.stats.rx_gso += 1
        (vihl, tot, frag, proto, src, dst, sport, dport, seq, ack, off, win) = _RX.unpack_from(frame, 24)
        if proto != 6 or vihl >> 4 != 4 or frag & 0x3FFF:    # not TCP, not IPv4, a fragment
            return None
        ihl = (vihl & 0x0F) * 4
        t = 24 + ihl
        if ihl != 20:
            if ihl < 20 or t + 20 > len(frame):    # IP options and no whole TCP header after them
                return None
            sport, dport, seq, ack, off, win, _csum, _urg = TCP_HDR.unpack_from(frame, t)
        doff = (off >> 12) * 4
        end = 24 + tot if tot else len(frame)
        if end > len(frame) or t + doff > end or doff < 20:
            return None
        return Segment(src, sport, dst, dport, seq, ack, off & 0x3F, win,
                       bytes(frame[t + 20:t + doff]) if doff > 20 else b"", bytes(frame[t + doff:end]))

    def build(self, seg: Segment) -> tuple[bytes, bytes]:
        """(vnet header + Ethernet/IP/TCP headers, payload) for `seg`."""
        opts = seg.options
        if len(opts) & 3:
            opts = opts + b"\0" * (4 - (len(opts) & 3))
        thl = 20 + len(opts)
        plen = len(seg.payload)
        tcp_len = thl + plen
        src, dst = seg.src, seg.dst
        tot = min(20 + tcp_len, 0xFFFF)
        addr_sum = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
        # IPv4 header words: 0x4500, tot, id 0, 0x4000 (DF), 0x4006 (ttl 64, tcp), addresses
        ip_ck = ~csum_fold(0x4500 + tot + 0x4000 + 0x4006 + addr_sum) & 0xFFFF
        pseudo = addr_sum + 6 + tcp_len
        mss = self.mtu - 20 - thl
        gso = plen > mss
        off_flags = ((thl // 4) << 12) | seg.flags
        if self.checksum == "offload" or gso:
            check = csum_fold(pseudo)
            vnet = VNET.pack(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4 if gso else VNET_GSO_NONE,
                             14 + 20 + thl, mss if gso else 0, 14 + 20, 16)
            if gso:
                self.stats.tx_gso += 1
        else:
            words = (seg.sport + seg.dport + (seg.seq >> 16) + (seg.seq & 0xFFFF) + (seg.ack >> 16)
                     + (seg.ack & 0xFFFF) + off_flags + seg.window)
            check = ~csum_fold(pseudo + words + (ones_sum(opts) if opts else 0) + ones_sum(seg.payload)) & 0xFFFF
            vnet = _VNET_PLAIN
        hdr = _TX.pack(0x45, 0, tot, 0, 0x4000, 64, 6, ip_ck, src, dst, seg.sport, seg.dport, seg.seq, seg.ack,
                       off_flags, seg.window, check, 0)
        return vnet + self._eth + hdr + opts, seg.payload


class PacketIO:
    """One AF_PACKET socket on `ifname` (inside the current network namespace)."""

    def __init__(self, ifname: str, dst_mac: str, *,
                 filter_spec: tuple[list[tuple[str, int]], list[tuple[str, int]]] | None = None,
                 checksum: str = "offload", bufsize: int = 1 << 18):
        """`filter_spec`: (every service's VIP:port, every back-end's service ip:port), see
        `compile_filter`; None: no filter."""
        self.ifname = ifname
        self.checksum = checksum
        self.stats = IoStats()
        # protocol 0: receive nothing until bind(), so no unfiltered frame is ever queued
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            except OSError:
                pass
            # FORCE: beyond net.core.rmem_max (208 KB by default: three GSO super-frames), as root
            for opt, force in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, force, 32 << 20)
                except OSError:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt, 32 << 20)
            if filter_spec is not None:
                self._attach_filter(compile_filter(*filter_spec))
            self.sock.bind((ifname, ETH_P_IP))   # Python converts the protocol to network order
            self.src_mac = self.sock.getsockname()[4]
            ifr = struct.pack("16si12x", ifname.encode(), 0)
            self.mtu = struct.unpack("16si12x", fcntl.ioctl(self.sock.fileno(), SIOCGIFMTU, ifr))[1]
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.codec = FrameCodec(self.src_mac, mac_bytes(dst_mac), self.mtu, checksum, self.stats)
        self.parse = self.codec.parse
        self.build = self.codec.build
        self._buf = bytearray(bufsize)
        self._view = memoryview(self._buf)

    def set_filter(self, vips: list[tuple[str, int]], backends: list[tuple[str, int]]) -> None:
        """Replace the filter (a reload added a service): the kernel swaps it in one step."""
        self._attach_filter(compile_filter(vips, backends))

    def _attach_filter(self, prog: bytes) -> None:
        n = len(prog) // 8
        buf = array.array("B", prog)
        addr, _ = buf.buffer_info()
        fprog = struct.pack("HL", n, addr)
        self._filter_keep = buf   # the kernel copies it, but keep it alive until then
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def poll_kernel_stats(self) -> None:
        """Add the kernel's packet-socket drop count (reading it resets it) to our stats."""
        packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self.stats.kernel_drops += drops

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "PacketIO":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ receive

    def recv_batch(self, limit: int = 64) -> list[Segment]:
        out: list[Segment] = []
        sock, buf, view, st = self.sock, self._buf, self._view, self.stats
        for _ in range(limit):
            try:
                n = sock.recv_into(buf, 0, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                break
            if n > len(buf):
                st.truncated += 1
                continue
            seg = self.parse(view[:n])
            if seg is None:
                st.rx_skipped += 1
                continue
            st.rx += 1
            st.rx_bytes += n
            out.append(seg)
        return out

    def send(self, seg: Segment) -> bool:
        hdr, payload = self.build(seg)
        try:
            n = self.sock.sendmsg([hdr, payload]) if payload else self.sock.send(hdr)
        except OSError as e:
            self.stats.tx_errors += 1
            self.stats.by_errno[e.errno] = self.stats.by_errno.get(e.errno, 0) + 1
            return False
        self.stats.tx += 1
        self.stats.tx_bytes += n
        return True


def describe(seg: Segment) -> str:
    return f"{ip_str(seg.src)}:{seg.sport} > {ip_str(seg.dst)}:{seg.dport}"


__all__ = ["PacketIO", "compile_filter", "ones_sum", "ip_checksum", "describe"]
