"""A raw-packet peer that plays "switch + front-end" toward one back-end, to test the agent against
a real TCP stack without either of them (DESIGN.md §3 steps 3-6 from the client's side).

It sends the splice SYN (seq c, acknowledgement field s, no ACK flag), expects the back-end's
SYN-ACK to arrive already in the switch's space (seq s), sends the request with ack s+1, and
receives the response in the switch's space as a client would: reassembling, acknowledging every
frame, with SACK blocks for out-of-order data and a DSACK block for duplicates. Then it closes
gracefully. Every wait is bounded by one deadline.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import time
from dataclasses import dataclass, field

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from miresga.bpf.netns import in_netns
from miresga.frontend.packetio import csum_fold, ones_sum  # the one checksum of the project
from miresga.frontend.segment import ACK, FIN, OPT_WSCALE, RST, SYN, Segment, parse_options

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
M32 = 1 << 32
RTO = 0.3


@dataclass
class FetchResult:
    body: bytes = b""
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    synack_wscale: int | None = None
    windows: list[int] = field(default_factory=list)  # window fields of the back-end's segments
    data_frames: int = 0
    ooo_frames: int = 0
    dup_frames: int = 0
    acks_with_sack: int = 0
    acks_with_dsack: int = 0
    max_sack_blocks: int = 0
    closed: bool = False  # both FINs exchanged and acknowledged
    next_seq: int = 0     # the client's next sequence number after the request
    next_ack: int = 0     # the client's acknowledgement after the response (switch space)


class SplicePeer:
    def __init__(self, netns: str, iface: str, mac: str, peer_mac: str, ip: str, peer_ip: str, port: int,
                 cport: int, wscale: int = 7, mss: int = 1460):
        self.mac, self.peer_mac, self.ip, self.peer_ip = mac, peer_mac, ip, peer_ip
        self.port, self.cport, self.wscale, self.mss = port, cport, wscale, mss
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            self.sock.bind((iface, ETH_P_IP))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE: 64 KB frames queue up
        self.sock.settimeout(0.02)
        self.tx_lost = 0
        # Only when the back-end completes its checksums in software (tx checksum offload off):
        # veth otherwise hands over partial checksums, which are right only after a real NIC.
        self.verify_checksums = False
        self.csum_good = self.csum_bad = 0
        self._ip_be, self._peer_ip_be = socket.inet_aton(ip), socket.inet_aton(peer_ip)

    def close(self) -> None:
        self.sock.close()

    # -- raw I/O --------------------------------------------------------------------------

    def send(self, flags: str, seq: int, ack: int, payload: bytes = b"", options=(), window: int = 65535) -> None:
        p = (Ether(src=self.mac, dst=self.peer_mac) / IP(src=self.ip, dst=self.peer_ip) /
             TCP(sport=self.cport, dport=self.port, flags=flags, seq=seq % M32, ack=ack % M32, window=window,
                 options=list(options)))
        if payload:
            p = p / payload
        try:
            self.sock.send(bytes(p))
        except OSError as e:
            if e.errno != errno.ENOBUFS:  # dropped on the way out (a loss rule): a lost packet
                raise
            self.tx_lost += 1

    def recv(self) -> Segment | None:
        """One segment of our connection from the back-end, or None after a short wait."""
        try:
            data, addr = self.sock.recvfrom(1 << 17)
        except (TimeoutError, socket.timeout):
            return None
        if addr[2] == PACKET_OUTGOING or len(data) < 54 or data[12:14] != b"\x08\x00":
            return None
        ihl = (data[14] & 0x0F) * 4
        tot = struct.unpack_from("!H", data, 16)[0]
        if data[23] != 6 or data[26:30] != self._peer_ip_be or data[30:34] != self._ip_be:
            return None
        t = 14 + ihl
        sport, dport, seq, ack, off_flags, window = struct.unpack_from("!HHIIHH", data, t)
        if sport != self.port or dport != self.cport:
            return None
        doff = (off_flags >> 12) * 4
        if self.verify_checksums:
            seg = data[t:14 + tot]
            if csum_fold(ones_sum(data[26:34] + b"\x00\x06" + len(seg).to_bytes(2, "big") + seg)) == 0xFFFF:
                self.csum_good += 1
            else:
                self.csum_bad += 1
        return Segment(int.from_bytes(data[26:30], "big"), sport, int.from_bytes(data[30:34], "big"), dport,
                       seq, ack, off_flags & 0x3F, window, data[t + 20:t + doff], data[t + doff:14 + tot])

    # -- one request ------------------------------------------------------------------------

    def fetch(self, path: str, c: int | None = None, s: int | None = None, timeout: float = 30.0,
              close: bool = True, closed_when=None) -> FetchResult:
        """GET `path`; with `close`, end with a graceful close. `closed_when()` (optional) tells when
        the close is complete from outside (e.g. the agent forgot the flow): until then the peer
        keeps answering retransmitted FINs, in case its last ACK was lost."""
        c = random.getrandbits(32) if c is None else c
        s = random.getrandbits(32) if s is None else s
        deadline = time.monotonic() + timeout
        res = FetchResult()
        syn_opts = [("MSS", self.mss), ("SAckOK", b""), ("NOP", None), ("WScale", self.wscale)]

        # 1. splice SYN until the SYN-ACK comes back in the switch's space
        last = 0.0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("no SYN-ACK")
            if time.monotonic() - last > RTO:
                self.send("S", c, s, options=syn_opts, window=64240)
                last = time.monotonic()
            seg = self.recv()
            if seg and seg.flags & RST:
                raise ConnectionResetError(f"back-end reset the splice SYN (seq {seg.seq:#x})")
            if seg and seg.flags & (SYN | ACK) == SYN | ACK:
                if seg.seq != s % M32 or seg.ack != (c + 1) % M32:
                    raise AssertionError(f"SYN-ACK seq {seg.seq:#x} ack {seg.ack:#x}, want {s % M32:#x} "
                                         f"{(c + 1) % M32:#x}")
                ws = parse_options(seg.options).get(OPT_WSCALE)
                res.synack_wscale = ws[0] if ws else None
                break

        # 2. request with ack s+1 (completes the back-end's handshake), then the response
        req = f"GET {path} HTTP/1.1\r\nHost: {self.peer_ip}\r\n\r\n".encode()
        base = (s + 1) % M32  # offsets of the response stream are relative to this
        snd_nxt = (c + 1 + len(req)) % M32
        rcv = bytearray()
        ooo: dict[int, bytes] = {}
        order: list[int] = []  # ooo start offsets, most recent last
        req_acked, need, hdr_len = False, None, None
        last = 0.0
        while need is None or len(rcv) < need:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"response incomplete: {len(rcv)} of {need} bytes")
            if not req_acked and now - last > RTO:
                self.send("PA", c + 1, base, req)
                last = now
            seg = self.recv()
            if seg is None:
                continue
            if seg.flags & RST:
                raise ConnectionResetError("back-end reset the connection")
            if seg.flags & ACK and (seg.ack - snd_nxt) % M32 < (1 << 31):
                req_acked = True
            if not seg.payload:
                continue
            res.data_frames += 1
            res.windows.append(seg.window)
            off = (seg.seq - base) % M32
            end = off + len(seg.payload)
            dsack = None
            if off >= (1 << 31) or end <= len(rcv):
                res.dup_frames += 1
                dsack = (seg.seq, (seg.seq + len(seg.payload)) % M32)
            elif off <= len(rcv):
                rcv += seg.payload[len(rcv) - off:]
                while True:  # drain what is now in order
                    nxt = [o for o in ooo if o <= len(rcv)]
                    if not nxt:
                        break
                    for o in nxt:
                        d = ooo.pop(o)
                        order.remove(o)
                        if o + len(d) > len(rcv):
                            rcv += d[len(rcv) - o:]
            else:
                res.ooo_frames += 1
                if off not in ooo or len(ooo[off]) < len(seg.payload):
                    ooo[off] = seg.payload
                    if off in order:
                        order.remove(off)
                    order.append(off)
            blocks = self._sack_blocks(ooo, order, base)
            if dsack:
                blocks = [dsack, *blocks[:3]]
                res.acks_with_dsack += 1
            opts = [("NOP", None), ("NOP", None), ("SAck", tuple(x for b in blocks for x in b))] if blocks else []
            if blocks:
                res.acks_with_sack += 1
                res.max_sack_blocks = max(res.max_sack_blocks, len(blocks))
            self.send("A", snd_nxt, base + len(rcv), options=opts)
            if hdr_len is None and b"\r\n\r\n" in rcv:
                head, _ = bytes(rcv).split(b"\r\n\r\n", 1)
                hdr_len = len(head) + 4
                lines = head.decode("latin-1").split("\r\n")
                res.status = int(lines[0].split()[1])
                res.headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
                need = hdr_len + int(res.headers.get("content-length", 0))
        res.body = bytes(rcv[hdr_len:need])
        res.next_seq, res.next_ack = snd_nxt, (base + len(rcv)) % M32
        if close:
            res.closed = self._close(snd_nxt, (base + len(rcv)) % M32, deadline, closed_when)
        return res

    def reset(self, seq: int) -> None:
        """RST toward the back-end (what a front-end sends before re-routing, DESIGN.md step 8)."""
        self.send("R", seq, 0)

    @staticmethod
    def _sack_blocks(ooo: dict[int, bytes], order: list[int], base: int) -> list[tuple[int, int]]:
        """Merged out-of-order ranges as SACK blocks, the most recently received first (RFC 2018)."""
        ranges: list[list[int]] = []
        for o in sorted(ooo):
            e = o + len(ooo[o])
            if ranges and o <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], e)
            else:
                ranges.append([o, e])
        recent = order[::-1]

        def rank(r):
            return min((i for i, o in enumerate(recent) if r[0] <= o < r[1]), default=len(recent))

        ranges.sort(key=rank)
        return [((base + a) % M32, (base + b) % M32) for a, b in ranges[:4]]

    def _close(self, snd_nxt: int, rcv_nxt: int, deadline: float, closed_when=None) -> bool:
        """FIN, then wait for the back-end's ACK of it and its own FIN, which we acknowledge."""
        fin_acked = peer_fin = False
        last = quiet_since = 0.0
        while time.monotonic() < deadline:
            if not fin_acked and time.monotonic() - last > RTO:
                self.send("FA", snd_nxt, rcv_nxt)
                last = time.monotonic()
            seg = self.recv()
            if seg is None:
                if fin_acked and peer_fin:
                    if closed_when is not None:
                        if closed_when():
                            return True
                    elif time.monotonic() - quiet_since > 2 * RTO:
                        return True  # nothing more came: our last ACK got through
                continue
            quiet_since = time.monotonic()
            if seg.flags & RST:
                return False
            if seg.flags & ACK and seg.ack == (snd_nxt + 1) % M32:
                fin_acked = True
            if seg.flags & FIN:
                peer_fin = True
                rcv_nxt = (seg.seq + len(seg.payload) + 1) % M32
                self.send("A", snd_nxt + 1, rcv_nxt)  # again for every retransmitted FIN
        return False
