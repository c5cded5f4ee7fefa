"""Python mirrors of the structs that BPF programs and user space share.

Each mirror names the C header it follows; tests/bpf/test_layouts.py checks sizes and field
offsets against the BTF of the built objects, so a drift breaks the build rather than the data.
"""

from __future__ import annotations

import ctypes


class IfCounters(ctypes.Structure):
    """bpf/counters.h: struct if_counters."""

    _c_name = "if_counters"
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]
