"""Hand-over between the engine and the front-end's kernel path, as plain data (DESIGN.md §10).

A connection has one owner at a time. The engine hands a connection to the kernel with
`KernelHandover` (the relay state of one `fe_conns` entry); the kernel also takes new connections
itself (their first request: a REQUEST event tells the engine, which then keeps the same books
as if it had routed it). While the kernel holds a connection it relays and routes, and the engine
hears only `KernelEvent`s (a request, an end, a closing, a copy of a response's first bytes).
Whenever the engine must see a segment again — a request the kernel cannot judge, anything it
leaves alone — the adapter first takes the entry back (read and replaced by a marker in one
step: a marked connection's segments all go up) and gives it to `Engine.take_back`; the engine
may hand the connection over again afterwards. The engine never touches the kernel itself: these
are its requests and the adapter's answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from miresga.frontend.segment import Segment

Key = tuple[int, int, int]  # a connection: client ip, client port (host order), service index (which VIP:port)


class EvKind(enum.IntEnum):
    """bpf/frontend.h: enum fe_event_kind."""

    CLIENT_RST = 1   # client RST relayed; the entry is gone
    BACKEND_RST = 2  # back-end RST relayed; the entry is gone
    CLOSING = 3      # both FINs relayed; the entry stays for the close linger
    COPY = 4         # the first bytes of a response segment
    REQUEST = 5      # the kernel routed a request (REQ_FIRST: it opened the splice)


# KernelEvent.req_flags (bpf/frontend.h FE_REQ_*); the cookie's option bits are at bit 8
REQ_FIRST, REQ_CLOSE, REQ_HTTP10, REQ_KEEP = 1, 2, 4, 8


class Phase(enum.IntEnum):
    """bpf/frontend.h: enum fe_phase."""

    RELAY = 0        # spliced: the kernel relays (and may route next requests)
    SYN_SENT = 1     # the kernel sent the splice SYN; the request frame waits in the kernel
    PYTHON = 2       # a marker: the engine holds the connection


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
    phase: Phase = Phase.RELAY
    route_ok: bool = False    # engine -> kernel: the kernel may route the next request
    offloaded: bool = False   # engine -> kernel: the switch entry is asked for or in place
    last_req_ack: int | None = None  # the latest request's ack (the same again: pipelined)
    requests: int = 0         # requests routed on the connection
    backend: int = 0          # the back-end's index
    c: int = 0                # SYN_SENT: the splice SYN's seq and the switch ISN
    s: int = 0
    held: "Segment | None" = None  # kernel -> engine, SYN_SENT: the request it held


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
    rule: int = 0            # REQUEST: the rule's index and the back-end's
    backend: int = 0
    req_flags: int = 0       # REQUEST: REQ_*, the cookie's option bits << 8


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
class KernelMark:
    """Action: the engine took a connection the kernel has no entry for (a first request the
    kernel did not check, an adoption): leave a marker, so that the kernel passes all its
    segments up instead of dropping its ACKs or taking its data for a new connection."""

    key: Key


@dataclass(slots=True)
class KernelRemove:
    """Action: the engine forgot the connection; remove its entry. `cli_nxt`, for a connection
    the client had closed: the entry goes only if it is still that connection's (its client
    sequence ends there). The kernel may already have put a new connection on the reused port
    in its place, and the engine may not have read that record yet."""

    key: Key
    cli_nxt: int | None = None
