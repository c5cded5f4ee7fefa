"""Hand-over between the engine and the front-end's kernel path, as plain data (DESIGN.md §10).

A spliced connection has one owner at a time. The engine hands a connection to the kernel with
`KernelHandover` (the relay state of one `fe_conns` entry); from then on the kernel relays its
segments and the engine hears only `KernelEvent`s (an end, a closing, a copy of a response's
first bytes). Whenever the engine must see a segment again — client payload, anything the
kernel leaves alone — the adapter first takes the entry back (read and removed in one step) and
gives it to `Engine.take_back`; the engine may hand the connection over again afterwards. The
engine never touches the kernel itself: these are its requests and the adapter's answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Key = tuple[int, int]  # client ip, client port (host order)


class EvKind(enum.IntEnum):
    """bpf/frontend.h: enum fe_event_kind."""

    CLIENT_RST = 1   # client RST relayed; the entry is gone
    BACKEND_RST = 2  # back-end RST relayed; the entry is gone
    CLOSING = 3      # both FINs relayed; the entry stays for the close linger
    COPY = 4         # the first bytes of a response segment


@dataclass(slots=True)
class KernelEntry:
    """The relay state of a kernel-held connection (sequence numbers host order)."""

    backend_ip: int
    backend_port: int
    cli_nxt: int
    cli_ack: int
    srv_end: int
    cli_fin: bool = False
    srv_fin: bool = False
    closing: bool = False
    watch_next: int = 0
    watch_segs: int = 0      # copies of response segments still wanted
    to_client_bytes: int = 0  # relayed by the kernel since the hand-over
    idle_s: float = 0.0       # time since the last segment (kernel -> engine: as the kernel saw it)


@dataclass(slots=True)
class KernelEvent:
    kind: EvKind
    key: Key
    cli_ack: int = 0
    srv_end: int = 0
    cli_nxt: int = 0
    to_client_bytes: int = 0
    seq: int = 0             # COPY: the segment's sequence number
    payload_len: int = 0     # COPY: its whole payload length
    data: bytes = b""        # COPY: its first bytes (at most FE_COPY_MAX, bpf/frontend.h)


@dataclass(slots=True)
class KernelHandover:
    """Action: install this entry; the kernel relays the connection from now on."""

    key: Key
    entry: KernelEntry


@dataclass(slots=True)
class KernelCheck:
    """Action: the connection's idle timer is due; take the entry back and give it to
    `Engine.kernel_checked` (only the kernel knows when it last relayed a segment)."""

    key: Key


@dataclass(slots=True)
class KernelRemove:
    """Action: the engine forgot the connection; remove its entry."""

    key: Key
