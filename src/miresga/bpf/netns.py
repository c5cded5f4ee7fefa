"""Enter a network namespace for the calling thread, and come back.

setns(2) on a network namespace changes only the calling thread, so a `with in_netns(name):` block
can open sockets, look up interfaces or attach BPF programs inside a testbed host and return.
BPF program and map file descriptors are not tied to a namespace; only netlink/ifindex work is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import subprocess
import threading
from typing import Iterator, Sequence

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block inside namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    own = os.open(f"/proc/self/task/{_gettid()}/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def _gettid() -> int:
    return threading.get_native_id()


def ns_cmd(ns: str | None, argv: Sequence[str]) -> list[str]:
    """argv prefixed so that it runs inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run(ns: str | None, *argv: str, check: bool = True, capture: bool = True,
        timeout: float | None = 60, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command inside a namespace; on failure raise with its stderr in the message."""
    p = subprocess.run(ns_cmd(ns, argv), capture_output=capture, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} (netns {ns}) failed rc={p.returncode}: {(p.stderr or '').strip()}")
    return p


def ifindex(ns: str | None, ifname: str) -> int:
    with in_netns(ns):
        return socket.if_nametoindex(ifname)
