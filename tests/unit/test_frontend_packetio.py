"""Frame codec of the packet I/O adapter: Segments <-> frames, checked with scapy."""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from miresga.frontend.packetio import VNET, FrameCodec, ones_sum
from miresga.frontend.segment import ACK, PSH, SYN, Segment, ip_int, syn_options

SRC, DST = bytes.fromhex("024d0a000202"), bytes.fromhex("02530a000201")


def seg(payload=b"hello", flags=ACK | PSH, options=b""):
    return Segment(ip_int("10.0.1.2"), 40000, ip_int("10.0.4.2"), 80, 123456789, 987654321, flags, 502,
                   options, payload)


def frame(codec, s):
    hdr, payload = codec.build(s)
    return hdr[:10], hdr[10:] + payload


def test_software_checksum_is_complete_and_valid():
    c = FrameCodec(SRC, DST, 1500, "software")
    for s in (seg(), seg(b"x" * 1001), seg(b"", SYN, syn_options(1460, 7, True))):
        vnet, raw = frame(c, s)
        assert VNET.unpack(vnet)[0] == 0          # nothing left for the kernel to do
        p = Ether(raw)
        want = Ether(bytes(p.copy().__class__(raw)))  # re-parse
        tcp_ck, ip_ck = p[TCP].chksum, p[IP].chksum
        del p[TCP].chksum, p[IP].chksum
        p2 = Ether(bytes(p))
        assert (p2[TCP].chksum, p2[IP].chksum) == (tcp_ck, ip_ck)
        assert p2[IP].src == "10.0.1.2" and p2[TCP].dport == 80 and bytes(p2[TCP].payload) == s.payload
        assert want[TCP].seq == s.seq


def test_offload_checksum_is_partial_pseudo_header():
    c = FrameCodec(SRC, DST, 1500, "offload")
    s = seg(b"abc")
    vnet, raw = frame(c, s)
    flags, gso, hdr_len, gso_size, cstart, coff = VNET.unpack(vnet)
    assert (flags, gso, cstart, coff) == (1, 0, 34, 16)
    # completing it as a NIC would (sum from csum_start, checksum field holding the pseudo sum)
    # must give the real checksum
    done = bytearray(raw)
    ck = ~_fold(ones_sum(bytes(done[cstart:]))) & 0xFFFF
    struct.pack_into("!H", done, cstart + coff, ck)
    p = Ether(bytes(done))
    ck_got = p[TCP].chksum
    del p[TCP].chksum
    assert Ether(bytes(p))[TCP].chksum == ck_got


def _fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_large_payload_goes_out_as_gso():
    c = FrameCodec(SRC, DST, 1500, "software")
    vnet, raw = frame(c, seg(b"z" * 20000))
    flags, gso, hdr_len, gso_size, cstart, coff = VNET.unpack(vnet)
    assert (flags, gso, hdr_len, gso_size) == (1, 1, 54, 1460)


def test_parse_roundtrip_and_gso_frames():
    c = FrameCodec(SRC, DST, 1500, "software")
    s = seg(b"q" * 3000, options=b"\x01\x01\x08\x0a" + b"\0" * 8)
    hdr, payload = c.build(s)
    back = c.parse(memoryview(hdr + payload))
    assert back == s
    # Ethernet padding after a short IP packet is not payload
    hdr, payload = c.build(seg(b""))
    assert c.parse(memoryview(hdr + payload + b"\0" * 6)).payload == b""
    # not TCP / not IPv4
    raw = bytearray(hdr)
    raw[10 + 23] = 17
    assert c.parse(memoryview(bytes(raw))) is None


def test_parse_refuses_truncated_and_impossible_headers():
    """Found by `miresga fuzz` (engine target): IP options followed by less than a TCP header made
    `parse` raise struct.error instead of refusing the frame; a data offset below 5 made header
    bytes into payload."""
    c = FrameCodec(SRC, DST, 1500, "software")
    good = bytes(Ether(src=SRC, dst=DST) / IP(src="10.0.1.2", dst="10.0.4.2", options=b"\x01\x01\x01\x01")
                 / TCP(sport=40000, dport=80, flags="PA") / b"hi")
    vnet = bytes(10)
    assert c.parse(memoryview(vnet + good)) is not None
    assert c.parse(memoryview(vnet + good[:14 + 24 + 12])) is None          # options, then 12 bytes of TCP
    short_doff = bytearray(good)
    short_doff[14 + 24 + 12] = 0x20                                          # doff 2
    assert c.parse(memoryview(vnet + bytes(short_doff))) is None
    plain = bytearray(bytes(Ether(src=SRC, dst=DST) / IP(src="10.0.1.2", dst="10.0.4.2") / TCP(flags="A") / b"x"))
    plain[14 + 20 + 12] = 0x00                                               # doff 0, no IP options
    assert c.parse(memoryview(vnet + bytes(plain))) is None
