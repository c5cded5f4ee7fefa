"""The front-end's connection states and the one table of allowed transitions.

A connection is keyed by the client's ip:port. `engine.Engine` classifies every segment into an
`Ev`, looks up (state, event) here and calls the named handler; a pair that is not in the table is
a counted protocol drop (`drops["protocol:<state>:<event>"]`), never an exception.

    HEADER     cookie verified, collecting the first request's header (nothing sent yet)
    SYN_SENT   back-end chosen, splice SYN sent, request segments held until the SYN-ACK
    SPLICED    both halves joined: slow-path relay both ways, maybe offloaded to the switch;
               a new request on it is parsed and routed again (same back-end, or re-route)
    CLOSING    both FINs seen: offload entry gone, relaying the last ACKs for a short linger
    RESPONDED  the front-end answered itself (400/431/503 + FIN); waiting for the client to
               acknowledge, then forgotten (431: then reset)
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    HEADER = "header"
    SYN_SENT = "syn_sent"
    SPLICED = "spliced"
    CLOSING = "closing"
    RESPONDED = "responded"


class Ev(enum.Enum):
    C_DATA = "client_data"      # client segment with payload and/or FIN
    C_ACK = "client_ack"        # client segment without payload, SYN, FIN or RST
    C_RST = "client_rst"
    C_SYN = "client_syn"        # the switch answers SYNs; one reaching us is out of place
    B_SYNACK = "backend_synack"
    B_SEG = "backend_segment"   # back-end data, ACK or FIN
    B_RST = "backend_rst"
    B_SYN = "backend_syn"


class Offload(enum.Enum):
    NONE = "none"               # slow path
    REQUESTED = "requested"     # insert sent to the switch controller, no answer yet
    QUEUED = "queued"           # controller accepted it into its rate-limited queue
    INSTALLED = "installed"     # entry confirmed in the switch table


S, E = State, Ev
# (state, event) -> handler method of Engine
TRANSITIONS: dict[tuple[State, Ev], str] = {
    (S.HEADER, E.C_DATA): "client_stream",
    (S.HEADER, E.C_ACK): "ignore",
    (S.HEADER, E.C_RST): "client_abort",

    (S.SYN_SENT, E.C_DATA): "client_stream",
    (S.SYN_SENT, E.C_ACK): "ignore",
    (S.SYN_SENT, E.C_RST): "client_abort",
    (S.SYN_SENT, E.B_SYNACK): "backend_synack",
    (S.SYN_SENT, E.B_RST): "backend_refused",
    (S.SYN_SENT, E.B_SEG): "backend_in_time_wait",  # an old connection's ACK where the SYN-ACK should be

    (S.SPLICED, E.C_DATA): "client_stream",
    (S.SPLICED, E.C_ACK): "relay_to_backend",
    (S.SPLICED, E.C_RST): "client_abort",
    (S.SPLICED, E.B_SEG): "backend_segment",
    (S.SPLICED, E.B_SYNACK): "ignore",          # retransmitted SYN-ACK: the client's retransmit heals it
    (S.SPLICED, E.B_RST): "backend_abort",

    (S.CLOSING, E.C_DATA): "closing_client_data",
    (S.CLOSING, E.C_ACK): "relay_to_backend",
    (S.CLOSING, E.C_RST): "client_abort",
    (S.CLOSING, E.B_SEG): "relay_to_client",
    (S.CLOSING, E.B_RST): "backend_abort",

    (S.RESPONDED, E.C_DATA): "responded_client",
    (S.RESPONDED, E.C_ACK): "responded_client",
    (S.RESPONDED, E.C_RST): "drop_conn",
}
