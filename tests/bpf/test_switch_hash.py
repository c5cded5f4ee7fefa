"""The bucket hash and the shared layouts: C (switch.bpf.o) and Python must agree exactly."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import random
import re
import struct
import subprocess
from pathlib import Path

import pytest

from miresga.bpf import layouts
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.bpf.testrun import TC_ACT_REDIRECT
from miresga.switch.hashing import hash8
from miresga.switch.maps import DECISIONS, SW_F_TRACE, Counter, SwitchMaps, hop

REPO = Path(__file__).resolve().parents[2]
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
        m.set_config(vip=VIP, vport=80, key=(1, 2), mss=1460, wscale=7, sack=True, bucket_seconds=64,
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


def _btf_structs(obj: Path) -> dict[str, dict]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    return {t["name"]: t for t in json.loads(out)["types"] if t.get("kind") == "STRUCT"}


@pytest.mark.parametrize("mirror", [layouts.SwConfig, layouts.SwKey, layouts.FlowKey, layouts.OffloadEntry, layouts.Hop,
                                    layouts.BackendEntry, layouts.RouteKey, layouts.ArpEntry],
                         ids=lambda c: c.__name__)
def test_layout_matches_btf(mirror):
    btf = _btf_structs(object_path("switch"))[mirror._c_name]
    assert ctypes.sizeof(mirror) == btf["size"]
    fields = [f[0] for f in mirror._fields_]
    assert fields == [m["name"] for m in btf["members"]]
    for m in btf["members"]:
        assert getattr(mirror, m["name"]).offset * 8 == m["bits_offset"], m["name"]


def test_counter_enum_matches_header():
    text = (REPO / "bpf" / "switch.h").read_text()
    body = text[text.index("enum sw_counter"):]
    body = body[: body.index("};")]
    c = {name: int(v) for name, v in re.findall(r"SW_CNT_(\w+)\s*=\s*(\d+)", body)}
    assert c.pop("DECISIONS") == DECISIONS
    assert c == {k.name: int(k) for k in Counter}
