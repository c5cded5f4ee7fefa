"""A small Python layer over libbpf (ctypes): objects, programs, maps, TC and XDP attach, test-run.

Life cycle as in libbpf-bootstrap: open -> (resize maps) -> load -> attach -> run -> detach ->
close. Each attach returns a handle that detaches only what it attached. Map keys and values are
bytes or ctypes structures; the structures shared with BPF live in `miresga.bpf.layouts`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from miresga.bpf.netns import in_netns

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TC_F_REPLACE = 1
BPF_FS = Path("/sys/fs/bpf")


class BpfError(OSError):
    pass


def _err(what: str, rc: int | None = None) -> BpfError:
    e = ctypes.get_errno() if rc is None or rc == -1 else -rc
    return BpfError(e, f"{what}: {os.strerror(e)}")


class _TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


class _TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32), ("priority", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32)]


class _XdpAttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int), ("_pad", ctypes.c_int)]


# XDP_FLAGS_* (linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST, XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, XDP_FLAGS_REPLACE = 1, 2, 4, 16


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16), ("_rest", ctypes.c_uint8 * 64)]


_P = ctypes.c_void_p
for name, res, args in [
    ("bpf_object__open_file", _P, [ctypes.c_char_p, _P]),
    ("bpf_object__load", ctypes.c_int, [_P]),
    ("bpf_object__close", None, [_P]),
    ("bpf_object__find_program_by_name", _P, [_P, ctypes.c_char_p]),
    ("bpf_object__find_map_by_name", _P, [_P, ctypes.c_char_p]),
    ("bpf_program__fd", ctypes.c_int, [_P]),
    ("bpf_program__type", ctypes.c_int, [_P]),
    ("bpf_map__fd", ctypes.c_int, [_P]),
    ("bpf_map__set_max_entries", ctypes.c_int, [_P, ctypes.c_uint32]),
    ("bpf_map__reuse_fd", ctypes.c_int, [_P, ctypes.c_int]),
    ("bpf_map__key_size", ctypes.c_uint32, [_P]),
    ("bpf_map__value_size", ctypes.c_uint32, [_P]),
    ("bpf_map__max_entries", ctypes.c_uint32, [_P]),
    ("bpf_map__set_initial_value", ctypes.c_int, [_P, _P, ctypes.c_size_t]),
    ("bpf_map_update_elem", ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
    ("bpf_map_lookup_elem", ctypes.c_int, [ctypes.c_int, _P, _P]),
    ("bpf_map_delete_elem", ctypes.c_int, [ctypes.c_int, _P]),
    ("bpf_map_lookup_and_delete_elem", ctypes.c_int, [ctypes.c_int, _P, _P]),
    ("ring_buffer__new", _P, [ctypes.c_int, _P, _P, _P]),
    ("ring_buffer__consume", ctypes.c_int, [_P]),
    ("ring_buffer__poll", ctypes.c_int, [_P, ctypes.c_int]),
    ("ring_buffer__epoll_fd", ctypes.c_int, [_P]),
    ("ring_buffer__free", None, [_P]),
    ("bpf_map_get_next_key", ctypes.c_int, [ctypes.c_int, _P, _P]),
    ("bpf_obj_pin", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
    ("bpf_obj_get", ctypes.c_int, [ctypes.c_char_p]),
    ("bpf_obj_get_info_by_fd", ctypes.c_int, [ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint32)]),
    ("bpf_prog_test_run_opts", ctypes.c_int, [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]),
    ("bpf_tc_hook_create", ctypes.c_int, [ctypes.POINTER(_TcHook)]),
    ("bpf_tc_hook_destroy", ctypes.c_int, [ctypes.POINTER(_TcHook)]),
    ("bpf_tc_attach", ctypes.c_int, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
    ("bpf_tc_detach", ctypes.c_int, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
    ("bpf_tc_query", ctypes.c_int, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
    ("libbpf_num_possible_cpus", ctypes.c_int, []),
    ("bpf_xdp_attach", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(_XdpAttachOpts)]),
    ("bpf_xdp_detach", ctypes.c_int, [ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(_XdpAttachOpts)]),
    ("bpf_xdp_query_id", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]),
    ("bpf_prog_get_fd_by_id", ctypes.c_int, [ctypes.c_uint32]),
]:
    f = getattr(_lib, name)
    f.restype, f.argtypes = res, args

# libbpf's own diagnostics go to stderr (they explain verifier rejections), except the notice that
# a clsact qdisc already exists, which is expected when ingress and egress share one, and that
# there is none, which a query of an interface without TC programs answers.
_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_QUIET = (b"Exclusivity flag on", b"Parent Qdisc doesn't exist")


@_PRINT_FN
def _libbpf_print(level: int, fmt: bytes, args: int) -> int:
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
    if level <= 1 and not any(q in buf.value for q in _QUIET):  # LIBBPF_WARN, LIBBPF_INFO
        os.write(2, buf.value)
    return 0


_lib.libbpf_set_print.restype = ctypes.c_void_p
_lib.libbpf_set_print.argtypes = [_PRINT_FN]
_lib.libbpf_set_print(_libbpf_print)

Buffer = bytes | bytearray | ctypes.Structure | ctypes.Array


def _buf(v: Buffer, size: int) -> ctypes.Array:
    raw = bytes(v)
    if len(raw) != size:
        raise ValueError(f"expected {size} bytes, got {len(raw)}")
    return ctypes.create_string_buffer(raw, size)


class Map:
    """A BPF map by file descriptor. Keys/values in, bytes out (wrap with a ctypes type to read)."""

    def __init__(self, fd: int, name: str, key_size: int, value_size: int, max_entries: int, owns_fd: bool = False):
        self.fd, self.name = fd, name
        self.key_size, self.value_size, self.max_entries = key_size, value_size, max_entries
        self._owns = owns_fd

    @classmethod
    def from_fd(cls, fd: int, owns_fd: bool = True) -> "Map":
        info = _MapInfo()
        n = ctypes.c_uint32(ctypes.sizeof(info))
        if _lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)) != 0:
            raise _err("bpf_obj_get_info_by_fd")
        return cls(fd, info.name.decode(), info.key_size, info.value_size, info.max_entries, owns_fd)

    @classmethod
    def from_pin(cls, path: str | Path) -> "Map":
        fd = _lib.bpf_obj_get(str(path).encode())
        if fd < 0:
            raise _err(f"bpf_obj_get {path}")
        return cls.from_fd(fd)

    def pin(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if _lib.bpf_obj_pin(self.fd, str(path).encode()) != 0:
            raise _err(f"bpf_obj_pin {path}")

    def update(self, key: Buffer, value: Buffer, flags: int = BPF_ANY) -> None:
        k, v = _buf(key, self.key_size), _buf(value, self.value_size)
        if _lib.bpf_map_update_elem(self.fd, k, v, flags) != 0:
            raise _err(f"update {self.name}")

    def try_update(self, key: Buffer, value: Buffer, flags: int = BPF_ANY) -> int:
        """0 on success, else the errno (E2BIG: full, EEXIST, ENOENT) — for batched callers."""
        k, v = _buf(key, self.key_size), _buf(value, self.value_size)
        return 0 if _lib.bpf_map_update_elem(self.fd, k, v, flags) == 0 else ctypes.get_errno()

    def lookup(self, key: Buffer) -> bytes | None:
        k, v = _buf(key, self.key_size), ctypes.create_string_buffer(self.value_size)
        if _lib.bpf_map_lookup_elem(self.fd, k, v) != 0:
            if ctypes.get_errno() == errno.ENOENT:
                return None
            raise _err(f"lookup {self.name}")
        return v.raw

    def lookup_and_delete(self, key: Buffer) -> bytes | None:
        """Read and remove in one step (hash maps): nothing written between the two is lost."""
        k, v = _buf(key, self.key_size), ctypes.create_string_buffer(self.value_size)
        if _lib.bpf_map_lookup_and_delete_elem(self.fd, k, v) != 0:
            if ctypes.get_errno() == errno.ENOENT:
                return None
            raise _err(f"lookup_and_delete {self.name}")
        return v.raw

    def percpu_u64_sum(self, key: Buffer) -> int:
        """Sum over CPUs of a per-CPU map's u64 value (`lookup` sizes for one CPU only)."""
        k = _buf(key, self.key_size)
        v = (ctypes.c_uint64 * num_possible_cpus())()
        if _lib.bpf_map_lookup_elem(self.fd, k, v) != 0:
            raise _err(f"lookup {self.name}")
        return sum(v)

    def delete(self, key: Buffer) -> bool:
        k = _buf(key, self.key_size)
        if _lib.bpf_map_delete_elem(self.fd, k) != 0:
            if ctypes.get_errno() == errno.ENOENT:
                return False
            raise _err(f"delete {self.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev = None
        while _lib.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            yield nxt.raw
            ctypes.memmove(cur, nxt, self.key_size)
            prev = cur

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def clear(self) -> None:
        for k in list(self.keys()):
            self.delete(k)

    def close(self) -> None:
        if self._owns and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_RINGBUF_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class RingBuffer:
    """A BPF ring buffer map read with libbpf's consumer. `consume()` returns the records
    waiting (as bytes) without blocking; `fileno()` is an epoll fd that is readable when records
    are waiting, for a selector."""

    def __init__(self, m: Map):
        self._records: list[bytes] = []

        def cb(_ctx, data, size):
            self._records.append(ctypes.string_at(data, size))
            return 0
        self._cb = _RINGBUF_CB(cb)   # keep the callback alive as long as the ring
        self._rb = _lib.ring_buffer__new(m.fd, ctypes.cast(self._cb, ctypes.c_void_p), None, None)
        if not self._rb:
            raise _err(f"ring_buffer__new {m.name}")

    def fileno(self) -> int:
        return _lib.ring_buffer__epoll_fd(self._rb)

    def consume(self) -> list[bytes]:
        rc = _lib.ring_buffer__consume(self._rb)
        if rc < 0:
            raise _err("ring_buffer__consume", rc)
        out, self._records = self._records, []
        return out

    def close(self) -> None:
        if self._rb:
            _lib.ring_buffer__free(self._rb)
            self._rb = None


@dataclass
class TestRunResult:
    retval: int
    data: bytes
    duration_ns: int


BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP = 3, 6


class Program:
    def __init__(self, fd: int, name: str, prog_type: int = BPF_PROG_TYPE_SCHED_CLS):
        self.fd, self.name, self.prog_type = fd, name, prog_type

    @property
    def is_xdp(self) -> bool:
        return self.prog_type == BPF_PROG_TYPE_XDP

    def pin(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if _lib.bpf_obj_pin(self.fd, str(path).encode()) != 0:
            raise _err(f"bpf_obj_pin {path}")

    @property
    def id(self) -> int:
        return prog_id(self.fd)

    def test_run(self, data: bytes, repeat: int = 1, ctx: bytes | None = None) -> TestRunResult:
        """Run the program on one packet with BPF_PROG_TEST_RUN; returns verdict and output packet."""
        out = ctypes.create_string_buffer(max(len(data) + 512, 256))
        inp = ctypes.create_string_buffer(data, len(data))
        o = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.cast(inp, ctypes.c_void_p),
                         data_out=ctypes.cast(out, ctypes.c_void_p), data_size_in=len(data),
                         data_size_out=len(out), repeat=repeat)
        if ctx is not None:
            cbuf = ctypes.create_string_buffer(ctx, len(ctx))
            o.ctx_in, o.ctx_size_in = ctypes.cast(cbuf, ctypes.c_void_p), len(ctx)
        rc = _lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(o))
        if rc != 0:
            raise _err(f"test_run {self.name}", rc)
        return TestRunResult(o.retval, out.raw[: o.data_size_out], o.duration)


class BpfObject:
    """One compiled `.bpf.o`: open, optionally resize maps, load; close releases everything."""

    def __init__(self, path: str | Path, max_entries: dict[str, int] | None = None,
                 reuse: dict[str, "Map"] | None = None):
        """`reuse`: maps of an earlier load (e.g. pinned) that this object's programs use instead of
        creating their own, with their contents (a restart or an upgrade keeps the tables)."""
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: BPF object not built (run `make bpf`)")
        self._obj = _lib.bpf_object__open_file(str(self.path).encode(), None)
        if not self._obj:
            raise _err(f"open {self.path}")
        try:
            for name, n in (max_entries or {}).items():
                m = _lib.bpf_object__find_map_by_name(self._obj, name.encode())
                if not m:
                    raise KeyError(f"{self.path.name}: no map {name!r}")
                if _lib.bpf_map__set_max_entries(m, n) != 0:
                    raise _err(f"resize {name}")
            for name, old in (reuse or {}).items():
                m = _lib.bpf_object__find_map_by_name(self._obj, name.encode())
                if not m:
                    raise KeyError(f"{self.path.name}: no map {name!r}")
                rc = _lib.bpf_map__reuse_fd(m, old.fd)
                if rc != 0:
                    raise _err(f"reuse map {name}", rc)
            rc = _lib.bpf_object__load(self._obj)
            if rc != 0:
                raise _err(f"load {self.path} (verifier log above)", rc)
        except BaseException:
            _lib.bpf_object__close(self._obj)
            self._obj = None
            raise

    def program(self, name: str) -> Program:
        p = _lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not p:
            raise KeyError(f"{self.path.name}: no program {name!r}")
        return Program(_lib.bpf_program__fd(p), name, _lib.bpf_program__type(p))

    def map(self, name: str) -> Map:
        m = _lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise KeyError(f"{self.path.name}: no map {name!r}")
        return Map(_lib.bpf_map__fd(m), name, _lib.bpf_map__key_size(m), _lib.bpf_map__value_size(m),
                   _lib.bpf_map__max_entries(m))

    def close(self) -> None:
        if self._obj:
            _lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TcAttachment:
    """A program attached to clsact ingress or egress of one interface (in a namespace)."""

    def __init__(self, netns: str | None, ifindex: int, direction: str, prog: Program, priority: int = 10,
                 replace: bool = False):
        """`replace`: take the place of a filter left at (handle, priority) by a process that
        died, instead of failing with EEXIST."""
        self.netns, self.ifindex, self.direction = netns, ifindex, direction
        point = BPF_TC_INGRESS if direction == "ingress" else BPF_TC_EGRESS
        self._hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=point)
        self._opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog.fd, handle=1, priority=priority,
                             flags=BPF_TC_F_REPLACE if replace else 0)
        with in_netns(netns):
            rc = _lib.bpf_tc_hook_create(ctypes.byref(self._hook))
            if rc not in (0, -errno.EEXIST):
                raise _err(f"tc hook create ifindex {ifindex}", rc)
            rc = _lib.bpf_tc_attach(ctypes.byref(self._hook), ctypes.byref(self._opts))
            if rc != 0:
                raise _err(f"tc attach {prog.name} {direction} ifindex {ifindex}", rc)

    def detach(self) -> None:
        opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=self._opts.handle, priority=self._opts.priority)
        try:
            with in_netns(self.netns):
                _lib.bpf_tc_detach(ctypes.byref(self._hook), ctypes.byref(opts))
        except OSError:
            pass  # namespace or interface already gone: nothing left to detach


class XdpAttachment:
    """A program attached as the native (driver) XDP program of one interface (in a namespace).

    Native only: generic (skb) XDP would be slower than the TC program it replaces, so a driver
    without native XDP is an error here and the caller's cue to use TC (attach: auto)."""

    def __init__(self, netns: str | None, ifindex: int, prog: Program, replace: bool = False):
        """`replace`: take the place of the XDP program already there (an adopted data plane's,
        in one step) instead of failing with EBUSY."""
        self.netns, self.ifindex, self.prog = netns, ifindex, prog
        flags = XDP_FLAGS_DRV_MODE | (0 if replace else XDP_FLAGS_UPDATE_IF_NOEXIST)
        with in_netns(netns):
            rc = _lib.bpf_xdp_attach(ifindex, prog.fd, flags, None)
        if rc != 0:
            raise _err(f"xdp attach {prog.name} (native) ifindex {ifindex}", rc)

    def detach(self) -> None:
        """Remove the program only if it is still ours."""
        try:
            _xdp_detach_fd(self.netns, self.ifindex, self.prog.fd)
        except OSError:
            pass  # namespace or interface already gone: nothing left to detach


def _xdp_detach_fd(netns: str | None, ifindex: int, fd: int) -> bool:
    """Detach the native XDP program only if it is still the one behind `fd` (XDP_FLAGS_REPLACE)."""
    opts = _XdpAttachOpts(sz=ctypes.sizeof(_XdpAttachOpts), old_prog_fd=fd)
    with in_netns(netns):
        return _lib.bpf_xdp_detach(ifindex, XDP_FLAGS_DRV_MODE | XDP_FLAGS_REPLACE, ctypes.byref(opts)) == 0


def xdp_prog_id(netns: str | None, ifindex: int) -> int | None:
    """Id of the native XDP program on the interface, or None."""
    pid = ctypes.c_uint32(0)
    with in_netns(netns):
        if _lib.bpf_xdp_query_id(ifindex, XDP_FLAGS_DRV_MODE, ctypes.byref(pid)) != 0:
            return None
    return pid.value or None


def xdp_detach_if(netns: str | None, ifindex: int, prog: int) -> bool:
    """Detach the native XDP program only if it is still program id `prog` (see tc_detach_if)."""
    fd = _lib.bpf_prog_get_fd_by_id(prog)
    if fd < 0:
        return False
    try:
        return _xdp_detach_fd(netns, ifindex, fd)
    finally:
        os.close(fd)


class map_ops:
    """Update / lookup-and-delete / delete on one map with a fixed key and value buffer (ctypes
    pointers the caller fills and reads): for hot paths, where building buffers per call costs
    more than the system call. Each returns 0 or the errno."""

    def __init__(self, fd: int, key, value):
        self.fd, self.key, self.value = fd, key, value

    def update(self, flags: int = BPF_ANY) -> int:
        return 0 if _lib.bpf_map_update_elem(self.fd, self.key, self.value, flags) == 0 else ctypes.get_errno()

    def lookup(self) -> int:
        return 0 if _lib.bpf_map_lookup_elem(self.fd, self.key, self.value) == 0 else ctypes.get_errno()

    def lookup_and_delete(self) -> int:
        return 0 if _lib.bpf_map_lookup_and_delete_elem(self.fd, self.key, self.value) == 0 else ctypes.get_errno()

    def delete(self) -> int:
        return 0 if _lib.bpf_map_delete_elem(self.fd, self.key) == 0 else ctypes.get_errno()


def num_possible_cpus() -> int:
    n = _lib.libbpf_num_possible_cpus()
    if n <= 0:
        raise _err("libbpf_num_possible_cpus", n)
    return n


def prog_id(fd: int) -> int:
    """Kernel id of the program behind `fd` (struct bpf_prog_info starts with {type, id})."""
    info = (ctypes.c_uint32 * 2)()
    n = ctypes.c_uint32(ctypes.sizeof(info))
    if _lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(n)) != 0:
        raise _err("bpf_obj_get_info_by_fd")
    return info[1]


def pinned_prog_id(path: str | Path) -> int | None:
    """Id of a pinned program, None if nothing is pinned there."""
    fd = _lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        return None
    try:
        return prog_id(fd)
    finally:
        os.close(fd)


def tc_prog_id(netns: str | None, ifindex: int, direction: str, handle: int, priority: int) -> int | None:
    """Id of the program in the TC filter at (handle, priority), or None if there is none."""
    point = BPF_TC_INGRESS if direction == "ingress" else BPF_TC_EGRESS
    hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=point)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    with in_netns(netns):
        if _lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts)) != 0:
            return None
    return opts.prog_id


def tc_detach_if(netns: str | None, ifindex: int, direction: str, handle: int, priority: int, prog: int) -> bool:
    """Detach the TC filter at (handle, priority) only if it still runs program id `prog`: a
    process that did not attach it (CLI `detach`) removes exactly what its peer put there."""
    point = BPF_TC_INGRESS if direction == "ingress" else BPF_TC_EGRESS
    hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=point)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    with in_netns(netns):
        if _lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts)) != 0 or opts.prog_id != prog:
            return False
        opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
        rc = _lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
        if rc != 0:
            raise _err(f"tc detach {direction} ifindex {ifindex}", rc)
    return True


def ensure_bpffs() -> None:
    if not os.path.ismount(BPF_FS):
        os.system(f"mount -t bpf bpf {BPF_FS}")


def build_dir() -> Path:
    """Where `make bpf` puts the objects (repo checkout), overridable by MIRESGA_BPF_DIR."""
    env = os.environ.get("MIRESGA_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "build" / "bpf"


def object_path(name: str) -> Path:
    return build_dir() / f"{name}.bpf.o"
