"""The front-end's Python layer: the splice engine, sans I/O, the authority and the executable
specification of what the kernel path does (DESIGN.md §3 steps 1-3, 5-9).

Where each step is:
- core.py: the entry points (`segment`, `tick`, `flush`, ...) and the dispatch through the
  (state, event) table in states.py, the one place that says what may happen when;
- arrival.py: a segment of no known connection (a first request, an adoption);
- client_stream.py: the client's byte stream and where requests start in it;
- routing.py: a request's rule and back-end, redispatch, the held request released;
- backend_side.py: the back-end's SYN-ACK, data, refusals;
- closing.py: relaying after the request, closing, aborts, local answers, timers;
- offload.py: the switch's fast path as the engine asks for it;
- kernel_side.py: the hand-over to and from the kernel path (frontend/kernel/);
- wire.py: what goes on the wire, and forgetting a connection;
- conn.py, actions.py: the connection record, counters, and the actions returned.
"""

from miresga.frontend.engine.actions import Action, OffloadCheck, OffloadDelete, OffloadInsert, Send
from miresga.frontend.engine.conn import Conn, Key, Stats
from miresga.frontend.engine.core import Engine

__all__ = ["Action", "Conn", "Engine", "Key", "OffloadCheck", "OffloadDelete", "OffloadInsert", "Send", "Stats"]
