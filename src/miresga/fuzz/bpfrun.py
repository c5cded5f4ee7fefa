"""The fuzzer's side of BPF_PROG_TEST_RUN and of the counter maps, built for a hot loop: buffers
and option structs are made once, and a whole counter array is read with one system call
(BPF_MAP_LOOKUP_BATCH) so that every input can be checked against the counters it moved."""

from __future__ import annotations

import ctypes
import errno
import os

from miresga.bpf.libbpf import Map, Program, _err, _lib, _TestRunOpts, num_possible_cpus

_lib.bpf_map_lookup_batch.restype = ctypes.c_int
_lib.bpf_map_lookup_batch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
SKB_CTX_SIZE = 192
SKB_INGRESS_IFINDEX_OFF = 36
SKB_IFINDEX_OFF = 40
MAX_DATA = 4096


class TestRunRefused(Exception):
    """BPF_PROG_TEST_RUN refused the input itself (e.g. a frame shorter than Ethernet + IPv4):
    such a frame never reaches the program, on the wire either (the stack drops it first)."""


class FastRunner:
    """One program, run on one frame at a time with reused buffers."""

    def __init__(self, prog: Program):
        self.prog = prog
        self._in = ctypes.create_string_buffer(MAX_DATA)
        self._out = ctypes.create_string_buffer(MAX_DATA + 512)
        self._ctx = ctypes.create_string_buffer(SKB_CTX_SIZE)
        self._opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
        self._in_p = ctypes.cast(self._in, ctypes.c_void_p)
        self._out_p = ctypes.cast(self._out, ctypes.c_void_p)
        self._ctx_p = ctypes.cast(self._ctx, ctypes.c_void_p)

    def run(self, data: bytes, ingress_ifindex: int = 0) -> tuple[int, bytes]:
        n = len(data)
        if n > MAX_DATA:
            raise ValueError("frame too large for the runner")
        ctypes.memmove(self._in, data, n)
        o = self._opts
        o.data_in, o.data_size_in = self._in_p, n
        o.data_out, o.data_size_out = self._out_p, MAX_DATA + 512
        o.repeat, o.retval, o.duration = 1, 0, 0
        if ingress_ifindex:
            ctypes.memset(self._ctx, 0, SKB_CTX_SIZE)
            self._ctx[SKB_INGRESS_IFINDEX_OFF:SKB_INGRESS_IFINDEX_OFF + 4] = ingress_ifindex.to_bytes(4, "little")
            o.ctx_in, o.ctx_size_in = self._ctx_p, SKB_CTX_SIZE
        else:
            o.ctx_in, o.ctx_size_in = None, 0
        rc = _lib.bpf_prog_test_run_opts(self.prog.fd, ctypes.byref(o))
        if rc != 0:
            e = ctypes.get_errno() if rc == -1 else -rc
            if e in (errno.EINVAL, errno.E2BIG):
                raise TestRunRefused(os.strerror(e))
            raise _err(f"test_run {self.prog.name}", rc)
        return o.retval, self._out.raw[:o.data_size_out]


class ArrayReader:
    """All slots of an ARRAY or PERCPU_ARRAY map of u64 in one BPF_MAP_LOOKUP_BATCH (per-CPU slots
    summed): a tuple indexed by key."""

    def __init__(self, m: Map, percpu: bool = False):
        self.m = m
        self.n = m.max_entries
        self.ncpu = num_possible_cpus() if percpu else 1
        self._keys = (ctypes.c_uint32 * self.n)()
        self._vals = (ctypes.c_uint64 * (self.n * self.ncpu))()
        self._tok = ctypes.create_string_buffer(8)

    def read(self) -> tuple[int, ...]:
        count = ctypes.c_uint32(self.n)
        rc = _lib.bpf_map_lookup_batch(self.m.fd, None, self._tok, self._keys, self._vals, ctypes.byref(count), None)
        if rc != 0 and ctypes.get_errno() != errno.ENOENT:
            raise _err(f"lookup_batch {self.m.name}")
        if count.value != self.n:
            raise OSError(f"lookup_batch {self.m.name}: {count.value} of {self.n} slots")
        v = self._vals
        if self.ncpu == 1:
            return tuple(v)
        c = self.ncpu
        return tuple(sum(v[i * c:(i + 1) * c]) for i in range(self.n))


def deltas(before: tuple[int, ...], after: tuple[int, ...]) -> dict[int, int]:
    return {i: a - b for i, (b, a) in enumerate(zip(before, after)) if a != b}
