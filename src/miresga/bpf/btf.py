"""Read struct layouts from a BPF object's BTF (via bpftool), to check the Python mirrors."""

from __future__ import annotations

import ctypes
import json
import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def _types(obj: str) -> list[dict]:
    out = subprocess.run(["bpftool", "btf", "dump", "file", obj, "-j"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["types"]


def struct_layout(obj: str | Path, name: str) -> tuple[int, dict[str, int]]:
    """(size, {member: byte offset}) of `struct name` in the object's BTF."""
    for t in _types(str(obj)):
        if t.get("kind") == "STRUCT" and t.get("name") == name:
            return t["size"], {m["name"]: m["bits_offset"] // 8 for m in t["members"]}
    raise KeyError(f"{obj}: no struct {name} in BTF")


def mirror_mismatches(obj: str | Path, mirror: type[ctypes.Structure]) -> list[str]:
    """Differences between a ctypes mirror (with `_c_name`) and the C struct; empty if they agree."""
    size, offsets = struct_layout(obj, mirror._c_name)
    problems = []
    if ctypes.sizeof(mirror) != size:
        problems.append(f"size {ctypes.sizeof(mirror)} != {size}")
    for fname, *_ in mirror._fields_:
        if fname.startswith("_pad"):
            continue
        want = offsets.get(fname)
        got = getattr(mirror, fname).offset
        if want != got:
            problems.append(f"{fname}: offset {got} != {want}")
    return problems
