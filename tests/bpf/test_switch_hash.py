"""The bucket hash: C (switch.bpf.o) and Python (miresga.switch.hashing) must agree exactly.
(Struct layouts and enums: test_layouts.py.)"""

from __future__ import annotations

import ipaddress
import random
import struct


from miresga.bpf.libbpf import BpfObject, object_path
from miresga.bpf.testrun import TC_ACT_REDIRECT
from miresga.switch.hashing import hash8
from miresga.switch.maps import SW_F_TRACE, SwitchMaps, hop

VIP = "10.0.100.1"


def _syn_free_ack(cip: int, cport: int) -> bytes:
    """Ethernet/IPv4/TCP payload segment to VIP:80 (checksums irrelevant to the switch)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 41, 0, 0, 64, 6, 0, struct.pack("!I", cip),
                     ipaddress.IPv4Address(VIP).packed)
    tcp = struct.pack("!HHIIBBHHH", cport, 80, 1, 1, 0x50, 0x18, 100, 0, 0)
    return bytes(6) + bytes(6) + b"\x08\x00" + ip + tcp + b"x"


def test_hash8_c_and_python_agree():
    rng = random.Random(8)
    with BpfObject(object_path("switch"), max_entries={"sw_offload": 16}) as obj:
        m = SwitchMaps(obj)
        m.set_config(services=[(VIP, 80)], key=(1, 2), mss=1460, wscale=7, sack=True, bucket_seconds=64,
                     flags=SW_F_TRACE)
        for b in range(256):
            m.set_bucket(b, hop(1000 + b, "02:00:00:00:00:01", "02:00:00:00:00:02"))
        prog = obj.program("switch_ingress")
        seen = set()
        inputs = [(rng.getrandbits(32), rng.getrandbits(16)) for _ in range(3000)]
        inputs += [(0, 0), (0xFFFFFFFF, 0xFFFF), (int(ipaddress.IPv4Address("10.0.1.2")), 40000)]
        for cip, cport in inputs:
            r = prog.test_run(_syn_free_ack(cip, cport))
            assert r.retval == TC_ACT_REDIRECT
            got = m.last_redirect() - 1000
            assert got == hash8(cip, cport), (cip, cport)
            seen.add(got)
    assert len(seen) == 256  # and it spreads over every bucket
