"""One client connection as the engine keeps it, the engine's counters, and its limits."""

from __future__ import annotations

import collections

from miresga import cookie
from miresga.frontend.engine.states import Offload, State
from miresga.frontend.http import RequestStream, ResponseWatcher
from miresga.frontend.kernel.handover import Key
from miresga.frontend.rules import CompiledRule
from miresga.frontend.segment import Segment, seq_add

UNKNOWN_OPTS = cookie.ClientOptions(mss=536, wscale=None, sack=False)
MAX_WINDOW_AHEAD = 1 << 22  # a client segment further ahead than this is not in any window we gave
WATCH_COPIES = 2  # response segments the kernel copies for a watcher (a header beyond them is not read)


class Stats:
    """Counters the metrics adapter exports (plain dicts: cheap to bump, easy to assert on)."""

    def __init__(self) -> None:
        self.drops: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.requests_rule: collections.Counter[str] = collections.Counter()
        self.requests_backend: collections.Counter[int] = collections.Counter()
        self.responses_local: collections.Counter[int] = collections.Counter()
        self.offload: collections.Counter[str] = collections.Counter()
        self.bytes: collections.Counter[str] = collections.Counter()  # slow_to_client/slow_to_backend/offloaded_est


class Conn:
    """One client connection (both halves of the splice)."""

    __slots__ = ("key", "state", "c", "s", "opts", "nxt", "ooo", "ooo_bytes", "held", "held_bytes",
                 "parser", "parser_idle", "req_ack", "req_start", "last_req_ack", "pipelined", "holding",
                 "backend", "rule", "deadline", "tries", "cli_fin", "srv_fin", "srv_end", "cli_ack",
                 "offload", "offload_gen", "watch", "watch_next", "slow_srv_bytes", "resp", "reset_after",
                 "resp_acked", "s0", "ever_installed", "adopted", "fe_acked", "rtx", "rtx_at", "rtx_tries",
                 "want_offload", "reinserted", "bad_request",
                 "start_certain", "requests", "ack_held", "kernel", "kbase", "tried", "alog")

    def __init__(self, key: Key, s: int, opts: cookie.ClientOptions, parser: RequestStream):
        self.key = key
        self.state = State.HEADER
        self.c = 0                  # client ISN of the current back-end connection
        self.s = s                  # "switch ISN" of the current back-end connection
        self.s0 = s                 # the cookie: start of the client's view of the server stream
        self.ever_installed = False
        self.adopted = 0            # 1: taken over without its start (see Engine._adopt); 2: checked
        self.fe_acked: int | None = None  # client bytes up to here acknowledged by us, not the back-end
        self.rtx: list[Segment] | None = None  # released segments we acknowledged: resent until confirmed
        self.rtx_at = 0.0
        self.rtx_tries = 0
        self.want_offload = False
        self.reinserted = False
        self.bad_request: str | None = None  # HEADER: a parse error at a start that was a guess
        self.start_certain = False  # the stream's first segment began with a whole method and SP
        self.requests = 0           # request headers routed on this client connection
        self.ack_held: list[Segment | None] | None = None  # [to back-end, to client]: see Engine._hold
        self.kernel = False         # the kernel path relays it (handover.py); the engine waits for it back
        self.kbase = 0              # slow_srv_bytes when handed over (the kernel counts from there)
        self.tried: tuple[int, ...] = ()  # back-ends whose splice SYN failed for this request (redispatch)
        self.alog = None            # the access log's record of the current request (access_log.py)
        self.opts = opts
        self.nxt: int | None = None  # next in-order client sequence number to parse
        self.ooo: dict[int, Segment] = {}
        self.ooo_bytes = 0
        self.held: list[Segment] = []
        self.held_bytes = 0
        self.parser = parser
        self.parser_idle = True
        self.req_ack = seq_add(s, 1)  # client's ack on the current request = where the response starts
        self.req_start = 0
        self.last_req_ack: int | None = None
        self.pipelined = False
        self.holding = False
        self.backend: int | None = None
        self.rule: CompiledRule | None = None
        self.deadline = 0.0
        self.tries = 0
        self.cli_fin = False
        self.srv_fin = False
        self.srv_end = seq_add(s, 1)  # highest back-end seq seen (switch space)
        self.cli_ack = seq_add(s, 1)
        self.offload = Offload.NONE
        self.offload_gen = 0
        self.watch: ResponseWatcher | None = None
        self.watch_next = 0
        self.slow_srv_bytes = 0
        self.resp: Segment | None = None
        self.reset_after = False
        self.resp_acked = False
