"""C and Python agree: every struct mirror in miresga.bpf.layouts against the BTF of the object
that uses it, and every enum Python mirrors (drop reasons, switch counters, agent counters)
against the C header that defines it."""

from __future__ import annotations

import ctypes
import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from miresga.agent.manager import AgentStat
from miresga.bpf import layouts
from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.libbpf import object_path
from miresga.switch.maps import DECISIONS, Counter

REPO = Path(__file__).resolve().parents[2]

MIRRORS = {   # object -> the mirrors of the structs it shares with user space
    "switch": [layouts.SwConfig, layouts.SwKey, layouts.FlowKey, layouts.OffloadEntry, layouts.Hop,
               layouts.BackendEntry, layouts.RouteKey, layouts.ArpEntry, layouts.SwService],
    "agent": [layouts.AgentFlowKey, layouts.AgentFlow, layouts.AgentConfig],
    "frontend": [layouts.FeKey, layouts.FeService, layouts.FeVipKey, layouts.FeConn, layouts.FeConfig, layouts.FeEvent, layouts.FeOp, layouts.FeRule,
                 layouts.FeBackend, layouts.FeCookieKey, layouts.FeHeld],
    "counters": [layouts.IfCounters],
}


@lru_cache(maxsize=None)
def btf_structs(obj: str) -> dict[str, dict]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", obj], capture_output=True, text=True,
                         check=True).stdout
    return {t["name"]: t for t in json.loads(out)["types"] if t.get("kind") == "STRUCT"}


def layout_mismatches(obj: str, mirror: type[ctypes.Structure]) -> list[str]:
    """Differences between a ctypes mirror (named by `_c_name`) and the C struct: size, the
    members in order (padding included) and every member's byte offset."""
    btf = btf_structs(obj).get(mirror._c_name)
    if btf is None:
        return [f"no struct {mirror._c_name} in {obj}"]
    problems = []
    if ctypes.sizeof(mirror) != btf["size"]:
        problems.append(f"size {ctypes.sizeof(mirror)} != {btf['size']}")
    fields = [f[0] for f in mirror._fields_]
    if fields != [m["name"] for m in btf["members"]]:
        problems.append(f"members {fields} != {[m['name'] for m in btf['members']]}")
    for m in btf["members"]:
        if m["name"] in fields and getattr(mirror, m["name"]).offset * 8 != m["bits_offset"]:
            problems.append(f"{m['name']}: offset {getattr(mirror, m['name']).offset} != {m['bits_offset'] // 8}")
    return problems


@pytest.mark.parametrize("obj,mirror", [(o, m) for o, ms in MIRRORS.items() for m in ms],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_layout_matches_btf(obj, mirror):
    assert layout_mismatches(str(object_path(obj)), mirror) == []


def test_every_mirror_is_checked():
    mirrors = {c for c in vars(layouts).values() if isinstance(c, type) and hasattr(c, "_c_name")}
    assert mirrors == {m for ms in MIRRORS.values() for m in ms}


def header_enum(header: str, prefix: str, start: str | None = None) -> dict[str, int]:
    """NAME -> value of `PREFIX_NAME = value` in a C header (from `start` to the next `};`)."""
    text = (REPO / "bpf" / header).read_text()
    if start is not None:
        text = text[text.index(start):]
        text = text[:text.index("};")]
    return {n: int(v) for n, v in re.findall(rf"\b{prefix}_([A-Z_0-9]+)\s*=\s*(-?\d+)", text)}


def test_drop_reasons_mirror_header():
    c = header_enum("lib/drop_reasons.h", "DROP")
    assert c.pop("REASON_MAX") == len(DropReason)
    assert c == {r.name: r.value for r in DropReason}


def test_switch_counters_mirror_header():
    c = header_enum("switch.h", "SW_CNT", start="enum sw_counter")
    assert c.pop("DECISIONS") == DECISIONS
    assert c == {k.name: int(k) for k in Counter}


def test_switch_services_max_is_the_configs():
    from miresga.control.config import MAX_SERVICES
    text = (REPO / "bpf" / "switch.h").read_text()
    assert int(re.search(r"#define SW_SERVICES_MAX (\d+)", text).group(1)) == layouts.SW_SERVICES_MAX == MAX_SERVICES


def test_agent_stats_mirror_header():
    c = header_enum("agent.h", "AGENT_STAT")
    assert c.pop("MAX") == len(AgentStat)
    assert c == {s.name: s.value for s in AgentStat}


def test_event_decoder_matches_the_struct():
    from miresga.frontend.kernel.maps import _EV
    assert _EV.size == ctypes.sizeof(layouts.FeEvent)
    names = [f[0] for f in layouts.FeEvent._fields_]
    assert len(names) == len(_EV.format.lstrip("<"))
