"""Shared helpers for the front-end engine tests: a config, clients with valid cookies, back-ends."""

from __future__ import annotations

from miresga import cookie
from miresga.control.config import DEFAULT_CONFIG, parse_config
from miresga.frontend.engine import Engine, OffloadDelete, OffloadInsert, Send
from miresga.frontend.segment import ACK, FIN, PSH, RST, SYN, Segment, ip_int, seq_add

NOW = 1_800_000_000.0  # TAI seconds, well inside one cookie key generation

RULES = """
rules:
  - {name: api, match: {path_prefix: /api/}, pool: [be2], policy: least_conn, offload: never}
  - {name: big, match: {path_prefix: /big/}, pool: [be1], offload: auto, offload_threshold: 65536}
  - {name: dl, match: {path_prefix: /dl/}, pool: [be3], offload: always}
  - {name: site2, match: {host: www.two.example}, pool: [be3], offload: never}
  - {name: default, pool: [be1], policy: round_robin, offload: auto}
frontend: {max_header_bytes: 1024, syn_retries: 2}
"""


def make_cfg(extra: str = RULES):
    text = DEFAULT_CONFIG.read_text()
    text = text[:text.index("rules:")] + extra
    return parse_config(text)


def get(path: str = "/", host: str = "a.example", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


class Client:
    """A client that did its handshake with the switch: knows c and the cookie s."""

    def __init__(self, eng: Engine, ip: str = "10.0.1.2", port: int = 40000, c: int = 0xFFFFFF00,
                 now: float = NOW, mss: int = 1460, wscale: int | None = 7, sack: bool = True,
                 key: cookie.CookieKey | None = None, bucket: int | None = None, svc: int = 0):
        cfg = eng.cfg
        self.eng = eng
        self.ip, self.port = ip_int(ip), port
        self.svc = svc                      # the service (VIP:port) it connects to
        self.vip, self.vport = eng.services[svc]
        self.c = c
        k = key or cookie.keys_at(cfg.switch.cookie.secret, now, cfg.switch.cookie.rotate_seconds)[0]
        b = cookie.bucket_of(now, cfg.switch.cookie.bucket_seconds) if bucket is None else bucket
        self.s = cookie.make_cookie(k, self.ip, port, self.vip, self.vport, b, mss, wscale, sack)
        self.sent = 0       # client bytes sent (payload)
        self.acked = 0      # server bytes the client has received

    @property
    def key(self):
        return (self.ip, self.port, self.svc)

    def seg(self, payload: bytes = b"", off: int | None = None, flags: int = ACK | PSH, ack: int | None = None,
            advance: bool = True) -> Segment:
        o = self.sent if off is None else off
        seg = Segment(self.ip, self.port, self.vip, self.vport, seq_add(self.c, 1 + o),
                      seq_add(self.s, 1 + self.acked) if ack is None else ack, flags, 502, b"", payload)
        if advance and off is None:
            self.sent += len(payload) + (1 if flags & FIN else 0)
        return seg

    def handshake_ack(self) -> Segment:
        return Segment(self.ip, self.port, self.vip, self.vport, seq_add(self.c, 1),
                       seq_add(self.s, 1), ACK, 502)


class Backend:
    """The back-end side of one client connection, in the switch's sequence space (as the agent
    makes it appear)."""

    def __init__(self, eng: Engine, index: int, client: Client, s: int | None = None, c: int | None = None):
        self.eng = eng
        self.ip, self.port = eng.backends[index]
        self.client = client
        self.s = client.s if s is None else s
        self.c = client.c if c is None else c
        self.sent = 0

    def synack(self) -> Segment:
        return Segment(self.ip, self.port, self.client.ip, self.client.port, self.s, seq_add(self.c, 1),
                       SYN | ACK, 65535, b"\x02\x04\x05\xb4")

    def seg(self, payload: bytes = b"", flags: int = ACK | PSH, client_bytes: int | None = None) -> Segment:
        cb = self.client.sent if client_bytes is None else client_bytes
        seg = Segment(self.ip, self.port, self.client.ip, self.client.port, seq_add(self.s, 1 + self.sent),
                      seq_add(self.c, 1 + cb), flags, 500, b"", payload)
        self.sent += len(payload) + (1 if flags & FIN else 0)
        return seg


def sends(actions, to: str | None = None) -> list[Segment]:
    return [a.seg for a in actions if isinstance(a, Send) and (to is None or a.to == to)]


def inserts(actions) -> list[OffloadInsert]:
    return [a for a in actions if isinstance(a, OffloadInsert)]


def deletes(actions) -> list[OffloadDelete]:
    return [a for a in actions if isinstance(a, OffloadDelete)]


def syn_to(actions) -> int:
    """The address of the one splice SYN among `actions`."""
    (syn,) = [s for s in sends(actions, "backend") if s.flags & SYN]
    return syn.dst


def open_on(eng: Engine, cl: Client, path: str, now: float = NOW) -> tuple[int, Backend]:
    """`cl` asks for `path`; the picked back-end answers the splice SYN: (its index, it)."""
    dst = syn_to(eng.segment(cl.seg(get(path)), now))
    b = [ip for ip, _ in eng.backends].index(dst)
    be = Backend(eng, b, cl)
    eng.segment(be.synack(), now)
    return b, be


__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "NOW", "Client", "Backend", "make_cfg", "get", "sends",
           "inserts", "deletes", "seq_add", "syn_to", "open_on"]
