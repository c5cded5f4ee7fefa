"""The eBPF switch on a testbed's switch host, with real TCP stacks around it: the client's
connect() completes against the switch's SYN-ACK, its data reaches the bucket's front-end, an
offload entry carries a back-end segment to the client as VIP:port, other traffic is routed.
The config has three services (the default VIP:port, the same address on port 8080, a second
address): one client port connects to all three at once, and holds offload entries of two of them
on two back-ends at once."""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from miresga import cookie
from miresga.bpf.netns import in_netns, run
from miresga.bpf.testrun import checksums_ok
from miresga.switch.controller import home_assignment
from miresga.switch.dataplane import SwitchDataplane, ports_for
from miresga.switch.hashing import hash8

pytestmark = pytest.mark.netns

ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_CSUMNOTREADY = 263, 8, 1 << 3


def services_config(cfg):
    """Services 1 and 2: the VIP address on port 8080, and the next address on the VIP's port."""
    from miresga.control.config import Endpoint, Service
    vip = cfg.vip
    return cfg.model_copy(update={"services": [
        Service(name="api", vip=Endpoint(address=vip.address, port=8080)),
        Service(name="alt", vip=Endpoint(address=vip.address + 1, port=vip.port))]})


@pytest.fixture(scope="module", params=["tc", "xdp"])
def net(request):
    """The switch attached with TC, or with native XDP on every port (veth supports it)."""
    from miresga.control.config import load_config
    from miresga.testbed import Testbed
    cfg = services_config(load_config())
    cfg = cfg.model_copy(update={"switch": cfg.switch.model_copy(update={"attach": request.param})})
    with Testbed(cfg) as tb:
        cfg = tb.cfg
        sw = tb.ns_switch
        with SwitchDataplane(cfg, sw, ports_for(cfg, sw), trace=True) as dp:
            assert set(dp.port_modes.values()) == {request.param}
            yield tb, dp


class Capture:
    """AF_PACKET capture on one namespace's eth0 (with the kernel's checksum status)."""

    def __init__(self, ns: str):
        with in_netns(ns):
            self.s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.s.bind(("eth0", 0))
        self.s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)

    def packets(self, match, timeout=2.0, want=1):
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            r, _, _ = select.select([self.s], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            data, anc, _, addr = self.s.recvmsg(65536, socket.CMSG_SPACE(32))
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            status = 0
            for level, typ, cdata in anc:
                if level == SOL_PACKET and typ == PACKET_AUXDATA:
                    status = struct.unpack_from("=I", cdata)[0]
            p = Ether(data)
            if match(p):
                got.append((p, status))
        return got

    def close(self):
        self.s.close()


def tcp_checksum_ok(p: Ether, status: int) -> bool:
    """Full checksums valid; for a CHECKSUM_PARTIAL frame (the checksum is completed by whoever
    transmits it last), complete it as a NIC would and check that."""
    if not status & TP_STATUS_CSUMNOTREADY:
        return checksums_ok(p)
    raw = bytearray(bytes(p[TCP]))
    s = sum(struct.unpack(f"!{len(raw) // 2}H", bytes(raw[: len(raw) & ~1])))
    if len(raw) & 1:
        s += raw[-1] << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    q = p.copy()
    q[TCP].chksum = (~s) & 0xFFFF
    return checksums_ok(q)


def connect_vip(tb, port=0, timeout=3.0, svc=0) -> socket.socket:
    vip = tb.cfg.all_services()[svc].vip
    with in_netns(tb.ns("c1")):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # one local port, several services
        s.bind(("0.0.0.0", port))
        s.settimeout(timeout)
        s.connect((str(vip.address), vip.port))
    return s


def frontend_of(cfg, ip, port) -> str:
    return home_assignment([h.name for h in cfg.hosts.frontends])[hash8(ip, port)]


@pytest.mark.parametrize("tx_offload", ["on", "off"])
def test_connect_completes_against_switch_synack(net, tx_offload):
    """With transmit checksum offload on, the SYN is CHECKSUM_PARTIAL (the other branch of the
    SYN-ACK's checksum); off, the client's kernel verifies the full checksum itself. XDP always
    builds a complete checksum (its frame leaves as a new one, without the skb's state)."""
    tb, dp = net
    xdp = dp.port_modes[tb.cfg.hosts.clients[0].interface] == "xdp"
    usual = "off" if xdp else "on"  # the testbed's setting (miresga.testbed.xdp)
    cfg = tb.cfg
    run(tb.ns("c1"), "ethtool", "-K", "eth0", "tx", tx_offload)
    cap = Capture(tb.ns("c1"))
    before = dp.maps.read_counters()["synack"]
    try:
        s = connect_vip(tb)
        cport = s.getsockname()[1]
        synacks = cap.packets(lambda p: TCP in p and p[TCP].flags == "SA" and p[TCP].dport == cport)
    finally:
        run(tb.ns("c1"), "ethtool", "-K", "eth0", "tx", usual)
        cap.close()
    try:
        assert synacks, "no SYN-ACK captured"
        p, status = synacks[0]
        # offload on: the SYN was CHECKSUM_PARTIAL and so is the SYN-ACK built from it
        assert bool(status & TP_STATUS_CSUMNOTREADY) == (tx_offload == "on" and not xdp)
        assert p[IP].src == str(cfg.vip.address) and p[TCP].sport == cfg.vip.port
        assert tcp_checksum_ok(p, status)
        cip = int(ipaddress.IPv4Address(cfg.hosts.clients[0].ip))
        keys = cookie.keys_at(cfg.switch.cookie.secret, cookie.tai_seconds(), cfg.switch.cookie.rotate_seconds)
        got = cookie.check_cookie(p[TCP].seq, keys, cip, cport, int(cfg.vip.address), cfg.vip.port,
                                  cookie.bucket_of(cookie.tai_seconds(), cfg.switch.cookie.bucket_seconds))
        assert got is not None and got.sack and got.wscale is not None  # Linux offers both
        assert dict(p[TCP].options)["MSS"] == cfg.switch.mss
        assert dp.maps.read_counters()["synack"] > before
    finally:
        s.close()


def test_data_reaches_the_bucket_frontend(net):
    tb, dp = net
    cfg = tb.cfg
    caps = {h.name: Capture(tb.ns(h.name)) for h in cfg.hosts.frontends}
    try:
        s = connect_vip(tb)
        cport = s.getsockname()[1]
        want = frontend_of(cfg, cfg.hosts.clients[0].ip, cport)
        s.sendall(b"GET /obj/1k HTTP/1.1\r\nHost: x\r\n\r\n")

        def match(p):
            return TCP in p and p[TCP].sport == cport and Raw in p

        got = caps[want].packets(match)
        assert got, f"data did not reach {want}"
        p, status = got[0]
        fe = next(h for h in cfg.hosts.frontends if h.name == want)
        assert p[Ether].dst == ":".join(f"{b:02x}" for b in (2, 0x4D, *fe.ip.packed))
        assert (p[IP].dst, p[TCP].dport) == (str(cfg.vip.address), cfg.vip.port)  # L3/L4 untouched
        assert bytes(p[Raw].load).startswith(b"GET /obj/1k")
        for other, cap in caps.items():
            if other != want:
                assert not cap.packets(match, timeout=0.3), f"data also reached {other}"
        s.close()
    finally:
        for c in caps.values():
            c.close()


def _send_from(ns: str, frame: bytes) -> None:
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("eth0", 0))
    try:
        s.send(frame)
    finally:
        s.close()


def test_offload_entry_carries_backend_segment_to_client(net):
    tb, dp = net
    cfg = tb.cfg
    be = cfg.hosts.backends[1]
    client = cfg.hosts.clients[0]
    cport = 47001
    assert dp.maps.offload_insert(str(client.ip), cport, 1) == 0
    body = bytes(range(256)) * 5
    gw_mac = ":".join(f"{b:02x}" for b in (2, 0x53, *be.gateway.packed))
    be_mac = ":".join(f"{b:02x}" for b in (2, 0x4D, *be.ip.packed))
    frame = (Ether(src=be_mac, dst=gw_mac) / IP(src=str(be.ip), dst=str(client.ip))
             / TCP(sport=be.port, dport=cport, flags="PA", seq=777, ack=888) / Raw(body))
    cap = Capture(tb.ns("c1"))
    before = dp.maps.read_counters()["to_client"]
    try:
        _send_from(tb.ns(be.name), bytes(frame))
        got = cap.packets(lambda p: TCP in p and p[TCP].dport == cport)
    finally:
        cap.close()
        dp.maps.offload_delete(str(client.ip), cport)
    assert got, "segment did not reach the client"
    p, status = got[0]
    assert (p[IP].src, p[TCP].sport) == (str(cfg.vip.address), cfg.vip.port)
    assert (p[TCP].seq, p[TCP].ack) == (777, 888)  # never touched
    assert bytes(p[Raw].load) == body
    assert checksums_ok(p)
    assert dp.maps.read_counters()["to_client"] == before + 1


def test_client_ack_with_entry_reaches_backend(net):
    tb, dp = net
    cfg = tb.cfg
    be = cfg.hosts.backends[0]
    client = cfg.hosts.clients[0]
    cport = 47002
    dp.maps.offload_insert(str(client.ip), cport, 0)
    cmac = ":".join(f"{b:02x}" for b in (2, 0x4D, *client.ip.packed))
    gw = ":".join(f"{b:02x}" for b in (2, 0x53, *client.gateway.packed))
    frame = Ether(src=cmac, dst=gw) / IP(src=str(client.ip), dst=str(cfg.vip.address)) / TCP(
        sport=cport, dport=cfg.vip.port, flags="A", seq=5, ack=6)
    cap = Capture(tb.ns(be.name))
    try:
        _send_from(tb.ns("c1"), bytes(frame))
        got = cap.packets(lambda p: TCP in p and p[TCP].sport == cport)
    finally:
        cap.close()
        dp.maps.offload_delete(str(client.ip), cport)
    assert got
    p, _ = got[0]
    assert (p[IP].dst, p[TCP].dport) == (str(be.ip), be.port)
    assert checksums_ok(p)


def test_other_traffic_routed_by_the_switch(net):
    """Client to a back-end's direct port: plain TCP through LPM routing (no kernel forwarding:
    the switch host's ip_forward is switched off for this test)."""
    tb, dp = net
    be = tb.cfg.hosts.backends[2]
    run(tb.ns_switch, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    before = dp.maps.read_counters()["routed"]
    try:
        p = tb.run("c1", "curl", "-sf", "-m", "5", f"http://{be.ip}:{be.direct_port}/whoami")
    finally:
        run(tb.ns_switch, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert p.stdout.strip() == be.name
    assert dp.maps.read_counters()["routed"] >= before + 4


def test_arp_for_gateway_answered_with_the_ports_own_mac_and_vip_not_at_all(net):
    """The switch answers ARP for its gateway addresses with the MAC of the interface the kernel
    gave that port (read, not derived); the VIP lies on no link and is routed, never ARPed."""
    tb, dp = net
    cfg = tb.cfg
    c = cfg.hosts.clients[0]
    from scapy.layers.l2 import ARP

    from miresga.neighbours import link_mac
    port_mac = link_mac(c.interface, tb.ns_switch)
    cmac = ":".join(f"{b:02x}" for b in (2, 0x4D, *c.ip.packed))
    got = {}
    for target in (str(c.gateway), str(cfg.vip.address)):
        req = Ether(src=cmac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=cmac, psrc=str(c.ip), pdst=target)
        cap = Capture(tb.ns("c1"))
        try:
            _send_from(tb.ns("c1"), bytes(req))
            got[target] = cap.packets(lambda p: ARP in p and p[ARP].op == 2 and p[ARP].psrc == target)
        finally:
            cap.close()
    assert got[str(c.gateway)] and got[str(c.gateway)][0][0][ARP].hwsrc == port_mac
    assert not got[str(cfg.vip.address)]


def test_one_client_port_completes_a_handshake_with_every_service(net):
    """Three connect()s from one client ip:port, one per service, all open at once: each is
    answered by the switch as its own VIP:port (the client's kernel accepts nothing else), with a
    cookie over that VIP:port, and each handshake's last ACK is absorbed."""
    tb, dp = net
    cfg = tb.cfg
    cip = int(ipaddress.IPv4Address(cfg.hosts.clients[0].ip))
    keys = cookie.keys_at(cfg.switch.cookie.secret, cookie.tai_seconds(), cfg.switch.cookie.rotate_seconds)
    cap = Capture(tb.ns("c1"))
    before = dp.maps.read_counters()
    socks = []
    try:
        for svc in range(3):
            socks.append(connect_vip(tb, 47100, svc=svc))
        assert [s.getsockname()[1] for s in socks] == [47100] * 3
        got = cap.packets(lambda p: TCP in p and p[TCP].flags == "SA" and p[TCP].dport == 47100, want=3)
    finally:
        cap.close()
        for s in socks:
            s.close()
    want = {(str(svc.vip.address), svc.vip.port) for svc in cfg.all_services()}
    assert len(want) == 3 and {(p[IP].src, p[TCP].sport) for p, _ in got} == want
    b = cookie.bucket_of(cookie.tai_seconds(), cfg.switch.cookie.bucket_seconds)
    for p, _ in got:
        assert cookie.check_cookie(p[TCP].seq, keys, cip, 47100, int(ipaddress.IPv4Address(p[IP].src)),
                                   p[TCP].sport, b) is not None
    after = dp.maps.read_counters()
    assert after["synack"] - before["synack"] == 3
    assert after["handshake_ack"] - before["handshake_ack"] == 3
    assert after["drop_not_tcp_to_vip"] == before["drop_not_tcp_to_vip"]


def _mac(kind: int, ip) -> str:
    return ":".join(f"{b:02x}" for b in (2, kind, *ip.packed))   # testbed MACs: 0x4D host, 0x53 switch port


def _backend_segment(be, client, cport, payload):
    return (Ether(src=_mac(0x4D, be.ip), dst=_mac(0x53, be.gateway)) / IP(src=str(be.ip), dst=str(client.ip))
            / TCP(sport=be.port, dport=cport, flags="PA", seq=777, ack=888) / Raw(payload))


def _client_ack(client, cport, vip):
    return (Ether(src=_mac(0x4D, client.ip), dst=_mac(0x53, client.gateway))
            / IP(src=str(client.ip), dst=str(vip.address)) / TCP(sport=cport, dport=vip.port, flags="A", seq=5, ack=6))


def test_one_client_port_offloaded_to_two_services_on_two_backends(net):
    """Client port P holds an entry of service 1 (VIP:8080) on be2 and one of service 2 (the
    second address) on be1, at once: each back-end's segments reach the client as its own
    service's VIP:port, the client's ACKs to each VIP:port reach that service's back-end, and be3
    (no entry of P names it) goes to the front-end, counted as a mismatch."""
    tb, dp = net
    cfg = tb.cfg
    client = cfg.hosts.clients[0]
    be1, be2, be3 = cfg.hosts.backends[:3]
    api, alt = cfg.all_services()[1].vip, cfg.all_services()[2].vip
    cport = 47200
    assert dp.maps.offload_insert(str(client.ip), cport, 1, svc=1) == 0    # service api on be2
    assert dp.maps.offload_insert(str(client.ip), cport, 0, svc=2) == 0    # service alt on be1
    before = dp.maps.read_counters()
    try:
        to_client = {}
        for be in (be1, be2):
            body = be.name.encode() * 300
            cap = Capture(tb.ns("c1"))
            try:
                _send_from(tb.ns(be.name), bytes(_backend_segment(be, client, cport, body)))
                got = cap.packets(lambda p: TCP in p and p[TCP].dport == cport and Raw in p)
            finally:
                cap.close()
            assert got, f"{be.name}'s segment did not reach the client"
            p, _ = got[0]
            assert bytes(p[Raw].load) == body and (p[TCP].seq, p[TCP].ack) == (777, 888) and checksums_ok(p)
            to_client[be.name] = (p[IP].src, p[TCP].sport)
        assert to_client == {"be1": (str(alt.address), alt.port), "be2": (str(api.address), api.port)}
        for vip, be in ((api, be2), (alt, be1)):
            caps = {b.name: Capture(tb.ns(b.name)) for b in (be1, be2)}
            try:
                _send_from(tb.ns("c1"), bytes(_client_ack(client, cport, vip)))
                got = {n: c.packets(lambda p: TCP in p and p[TCP].sport == cport, timeout=1.0)
                       for n, c in caps.items()}
            finally:
                for c in caps.values():
                    c.close()
            assert [n for n, g in got.items() if g] == [be.name], (vip, got)
            p, _ = got[be.name][0]
            assert (p[IP].dst, p[TCP].dport) == (str(be.ip), be.port) and checksums_ok(p)
        fe = frontend_of(cfg, client.ip, cport)
        cap = Capture(tb.ns(fe))
        try:
            _send_from(tb.ns(be3.name), bytes(_backend_segment(be3, client, cport, b"not offloaded here")))
            got = cap.packets(lambda p: TCP in p and p[TCP].dport == cport)
        finally:
            cap.close()
        assert got and (got[0][0][IP].src, got[0][0][TCP].sport) == (str(be3.ip), be3.port)  # untouched
    finally:
        dp.maps.offload_delete(str(client.ip), cport, 1)
        dp.maps.offload_delete(str(client.ip), cport, 2)
    after = dp.maps.read_counters()
    assert after["to_client"] - before["to_client"] == 2 and after["to_backend"] - before["to_backend"] == 2
    assert after["offload_mismatch"] - before["offload_mismatch"] == 1
