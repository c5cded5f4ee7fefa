"""Fuzz target: the front-end's kernel path (bpf/frontend.bpf.c, `frontend_ingress`) through
BPF_PROG_TEST_RUN.

A pool of connections is handed over to it as the engine would (one `fe_conns` entry each:
back-end, client's next seq and ack, back-end's end, FIN bits, response copies wanted) and handed
over again after the kernel drops one (RST). There are two services at least (the config's, and
one more VIP:port if it has only one), and each client ip:port of the pool has a connection to
each service, with another back-end (as the engine picks them). Inputs: client segments to VIP:port of those
connections and of strangers (ACKs, FINs in and out of order, retransmitted FINs, RSTs, data,
SYNs), back-end segments from the entry's back-end, another back-end or its direct port (data,
FINs, RSTs, retransmitted SYN-ACKs), other traffic; a share mutated. The ring buffer is drained
now and then, as the server does.

Checked on every input:
- counted: a drop moves a counter (`synack_dropped`, or `drop_no_entry` for a bare client
  segment of no connection: the only drops the kernel path makes); a
  pass to the engine moves a pass counter and leaves the frame untouched; a redirect moves
  `to_client` or `to_backend`;
- addresses: a redirect goes back out its port with the MACs swapped; to a client only as its
  connection's service VIP:port, only for a connection handed over, from that connection's
  back-end; to a back-end only the entry's back-end service ip:port (a configured one), only from
  its client to that service's VIP:port;
- bytes and checksums: only that endpoint's address and port and the checksums change (sequence
  numbers never), and the IP and TCP checksum residues are kept;
- state: the kernel path never creates an entry (every 256 inputs: its table holds only what was
  handed over).

Struct layouts are taken as a prefix (fields the kernel path has had from its first version), so
the target keeps working while the program grows.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

from miresga.bpf import layouts as L
from miresga.bpf.libbpf import BpfObject, RingBuffer, object_path
from miresga.control.config import Deployment
from miresga.fuzz.bpfrun import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, ArrayReader, FastRunner, deltas
from miresga.fuzz.harness import Harness, Input, Violation
from miresga.fuzz.mutate import SEQ_EDGES, Pools, mutate
from miresga.frontend.kernel.maps import FeStat
from miresga.fuzz.wire import ACK, FIN, PSH, RST, SYN, Layout, ip_residue, l3_frame, l4_residue, tcp_frame

M32 = 0xFFFFFFFF
POOL = 8
# enum fe_stat (bpf/frontend.h), the slots this target judges by
TO_BACKEND, TO_CLIENT, PASS_DATA, PASS_NO_ENTRY, PASS_OTHER, NOT_OURS, SYNACK_DROPPED = 0, 1, 4, 5, 6, 7, 8
REWRITE_FAILED, PASS_PYTHON, DROP_NO_ENTRY = 14, 19, 20
PASSES = {PASS_DATA, PASS_NO_ENTRY, PASS_OTHER, NOT_OURS, REWRITE_FAILED, PASS_PYTHON}
DROPS = {SYNACK_DROPPED, DROP_NO_ENTRY}
STAT_NAMES = {s.value: s.name.lower() for s in FeStat}
OFF = {n: getattr(L.FeConn, n).offset for n, *_ in L.FeConn._fields_}


def ip_int(a) -> int:
    return int(ipaddress.IPv4Address(a))


class FrontendHarness(Harness):
    name = "frontend"

    def __init__(self, cfg: Deployment):
        super().__init__(cfg)
        self.vip, self.vport = ip_int(cfg.vip.address), cfg.vip.port
        self.services = cfg.vip_endpoints()
        if len(self.services) == 1:
            self.services.append((self.vip, self.vport % 65535 + 1))
        self.by_vip = {ep: i for i, ep in enumerate(self.services)}
        self.backends = [(ip_int(b.ip), b.port, b.direct_port) for b in cfg.hosts.backends]
        self.obj = BpfObject(object_path("frontend"), max_entries={"fe_conns": 64})
        try:
            conf = self.obj.map("fe_config")
            raw = bytearray(conf.value_size)         # n_services first; zero: no kernel rules
            raw[0:2] = struct.pack("=H", len(self.services))
            conf.update(struct.pack("=I", 0), bytes(raw))
            svcs, vips = self.obj.map("fe_services"), self.obj.map("fe_vips")
            for i, (vip, vport) in enumerate(self.services):
                ep = struct.pack("=IHH", socket.htonl(vip), socket.htons(vport), 0)
                svcs.update(struct.pack("=I", i), ep + bytes(svcs.value_size - len(ep)))
                vips.update(ep, struct.pack("=I", i))
            self.conns = self.obj.map("fe_conns")
            self.runner = FastRunner(self.obj.program("frontend_ingress"))
            self.stat_reader = ArrayReader(self.obj.map("fe_stats"), percpu=True)
            self.ring = RingBuffer(self.obj.map("fe_events"))
        except BaseException:
            self.obj.close()
            raise
        client = ip_int(cfg.hosts.clients[0].ip)
        n = len(self.services)
        self.clients = [(client, 40000 + i // n, i % n) for i in range(POOL)]   # (ip, port, service)
        self.model: dict[tuple[int, int, int], dict] = {}  # the engine's view at hand-over
        self.cache: dict[bytes, bytes] = {}                # the table as hand-overs and inputs left it
        self.cmac, self.fmac = bytes.fromhex("02530a000201"), bytes.fromhex("024d0a000202")
        self.pools = Pools([client, *{v for v, _ in self.services}, *(b[0] for b in self.backends), 0],
                           [*{p for _, p in self.services}, *(b[1] for b in self.backends), 8080, 40000, 40001, 0])
        self.n = 0
        self._last: dict = {}
        rng = random.Random(1)
        for k in self.clients:
            self.handover(k, rng)

    def close(self) -> None:
        self.ring.close()
        self.obj.close()

    @staticmethod
    def _key(ip: int, port: int, svc: int) -> bytes:
        return ip.to_bytes(4, "big") + port.to_bytes(2, "big") + svc.to_bytes(2, "little")

    def handover(self, key: tuple[int, int, int], rng: random.Random) -> None:
        # never a back-end that another service's connection of this client ip:port has
        taken = {m["b"] for k, m in self.model.items() if k[:2] == key[:2] and k != key}
        b = rng.choice([i for i in range(len(self.backends)) if i not in taken] or [0])
        m = {"b": b, "cli_nxt": rng.choice([rng.getrandbits(32), *SEQ_EDGES]), "srv_end": rng.getrandbits(32),
             "cli_ack": rng.getrandbits(32), "cli_fin": rng.random() < 0.2, "srv_fin": rng.random() < 0.2,
             "watch": rng.choice([0, 0, 1, 2])}
        m["watch_next"] = m["srv_end"]
        v = bytearray(self.conns.value_size)
        bip, bport, _ = self.backends[b]
        struct.pack_into("=IH", v, OFF["backend_ip"], socket.htonl(bip), socket.htons(bport))
        v[OFF["cli_fin"]], v[OFF["srv_fin"]] = m["cli_fin"], m["srv_fin"]
        for f in ("cli_nxt", "cli_ack", "srv_end", "watch_next"):
            struct.pack_into("=I", v, OFF[f], m[f])
        struct.pack_into("=I", v, OFF["watch_segs"], m["watch"])
        k = self._key(*key)
        self.conns.update(k, bytes(v))
        self.cache[k] = bytes(v)
        self.model[key] = m

    # ------------------------------------------------------------------ inputs

    def generate(self, rng: random.Random) -> Input:
        self.n += 1
        key = rng.choice(self.clients)
        if self._key(*key) not in self.cache and rng.random() < 0.5:
            self.handover(key, rng)           # the engine hands the connection over again
        m = self.model[key]
        r = rng.random()
        if r < 0.45:
            kind, frame = self._client(rng, key, m)
        elif r < 0.92:
            kind, frame = self._backend(rng, key, m)
        else:
            kind = "other"
            frame = l3_frame(self.cmac, self.fmac, key[0], self.services[key[2]][0], rng.choice([17, 1]),
                             b"\0\x50\0\x50\0\x0c\0\0abcd")
        if rng.random() < 0.5:
            mu = mutate(rng, bytes(frame), self.pools)
            return Input("frontend_ingress", bytes(mu.data), 0, [kind, *mu.names])
        return Input("frontend_ingress", bytes(frame), 0, [kind, "valid"])

    def _client(self, rng, key, m):
        if rng.random() < 0.1:
            key = (key[0], rng.randrange(1024, 65536), key[2])   # a connection the kernel does not hold
        r = rng.random()
        seq, ack, payload = m["cli_nxt"], (m["srv_end"] + rng.choice([0, 0, -1, 1])) & M32, b""
        if r < 0.45:
            flags, kind = ACK, "c_ack"
        elif r < 0.65:
            flags, kind = FIN | ACK, "c_fin"
            seq = (seq + rng.choice([0, 0, -1, 1, 100])) & M32
        elif r < 0.75:
            flags, kind = rng.choice([RST, RST | ACK]), "c_rst"
        elif r < 0.92:
            flags, kind, payload = ACK | PSH, "c_data", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        else:
            flags, kind = rng.choice([SYN, SYN | ACK, 0]), "c_odd"
        vip, vport = self.services[key[2]]
        return kind, tcp_frame(self.cmac, self.fmac, key[0], vip, key[1], vport, seq, ack, flags,
                               rng.choice([502, 0, 65535]), b"", payload)

    def _backend(self, rng, key, m):
        b = m["b"] if rng.random() < 0.85 else rng.randrange(len(self.backends))
        bip, bport, direct = self.backends[b]
        if rng.random() < 0.05:
            bport = direct
        seq = m["srv_end"]
        r = rng.random()
        payload = b""
        if r < 0.5:
            flags, kind = ACK | PSH, "b_data"
            payload = rng.choice([b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", rng.randbytes(1448),
                                  rng.randbytes(rng.randrange(1, 2000))])
            m["srv_end"] = (seq + len(payload)) & M32
        elif r < 0.7:
            flags, kind = ACK, "b_ack"
        elif r < 0.85:
            flags, kind = FIN | ACK, "b_fin"
        elif r < 0.93:
            flags, kind = rng.choice([RST, RST | ACK]), "b_rst"
        else:
            flags, kind = SYN | ACK, "b_synack"
        return kind, tcp_frame(self.fmac, self.cmac, bip, key[0], bport, key[1], seq, m["cli_nxt"], flags,
                               rng.choice([500, 0, 65535]), b"", payload)

    # ------------------------------------------------------------------ checks

    def _backend_of(self, entry: bytes) -> tuple[int, int]:
        return (socket.ntohl(struct.unpack_from("=I", entry, OFF["backend_ip"])[0]),
                socket.ntohs(struct.unpack_from("=H", entry, OFF["backend_port"])[0]))

    def execute(self, inp: Input) -> list[Violation]:
        f = inp.data
        lay = Layout(f)
        key, keys = None, []
        if lay.tcp_ok:
            l3, l4 = lay.l3, lay.l4
            dst, dport = int.from_bytes(f[l3 + 16:l3 + 20], "big"), int.from_bytes(f[l4 + 2:l4 + 4], "big")
            svc = self.by_vip.get((dst, dport))
            if svc is not None:
                key = self._key(int.from_bytes(f[l3 + 12:l3 + 16], "big"), int.from_bytes(f[l4:l4 + 2], "big"), svc)
                keys = [key]
            else:
                # a back-end's: the connection (of any service) whose entry has the sender
                src, sport = int.from_bytes(f[l3 + 12:l3 + 16], "big"), int.from_bytes(f[l4:l4 + 2], "big")
                keys = [self._key(dst, dport, s) for s in range(len(self.services))]
                key = next((k for k in keys if k in self.cache and self._backend_of(self.cache[k]) == (src, sport)),
                           keys[0])
        before = self.cache.get(key) if key else None
        self._last = {"key": key.hex() if key else None, "entry": before.hex() if before else None}
        s0 = self.stat_reader.read()
        verdict, out = self.runner.run(f)
        d = deltas(s0, self.stat_reader.read())
        after = None
        for k in keys:
            a = self.conns.lookup(k)
            if a is None:
                self.cache.pop(k, None)
            else:
                self.cache[k] = a
            if k == key:
                after = a
        return self.check(inp, lay, before, after, verdict, out, d, key)

    def check(self, inp, lay, before, after, verdict, out, d, key=None) -> list[Violation]:
        st = self.stats[inp.entry]
        self.inputs[inp.entry] += 1
        for i in d:
            st[STAT_NAMES.get(i, f"stat_{i}")] += 1
        f = inp.data
        v: list[Violation] = []
        if before is None and after is not None:
            v.append(Violation("state", "the kernel path created a connection entry"))
        if verdict == TC_ACT_SHOT:
            if not DROPS & set(d):
                v.append(Violation("uncounted", f"dropped with counters {self._named(d)}"))
            return v
        if verdict == TC_ACT_OK:
            if not PASSES & set(d):
                v.append(Violation("uncounted", f"passed with counters {self._named(d)}"))
            if out != f:
                v.append(Violation("bytes", "a frame passed to the engine was changed"))
            return v
        if verdict != TC_ACT_REDIRECT:
            return v + [Violation("verdict", f"verdict {verdict}")]
        to_client, to_backend = TO_CLIENT in d, TO_BACKEND in d
        if to_client == to_backend:
            return v + [Violation("uncounted", f"redirect with counters {self._named(d)}")]
        if before is None or not lay.tcp_ok:
            return v + [Violation("address", "relayed without a connection handed over")]
        if len(out) != len(f) or out[0:6] != f[6:12] or out[6:12] != f[0:6]:
            v.append(Violation("address", "not bounced back with the MACs swapped"))
            return v
        l3, l4 = lay.l3, lay.l4
        ent_ip, ent_port = self._backend_of(before)
        vip, vport = self.services[int.from_bytes(key[6:8], "little")]
        src, dst = int.from_bytes(f[l3 + 12:l3 + 16], "big"), int.from_bytes(f[l3 + 16:l3 + 20], "big")
        sport, dport = struct.unpack_from("!HH", f, l4)
        o_src, o_dst = int.from_bytes(out[l3 + 12:l3 + 16], "big"), int.from_bytes(out[l3 + 16:l3 + 20], "big")
        o_sport, o_dport = struct.unpack_from("!HH", out, l4)
        if to_client:
            if (src, sport) != (ent_ip, ent_port) or (o_src, o_sport) != (vip, vport) or \
                    (o_dst, o_dport) != (dst, dport):
                v.append(Violation("address", "to a client not from its back-end, or not as VIP:port"))
            allowed = [(l3 + 10, l3 + 16), (l4, l4 + 2)]
        else:
            if (dst, dport) != (vip, vport) or (o_dst, o_dport) != (ent_ip, ent_port) or \
                    (ent_ip, ent_port) not in {(b[0], b[1]) for b in self.backends} or (o_src, o_sport) != (src, sport):
                v.append(Violation("address", "to a back-end that is not the entry's configured service"))
            allowed = [(l3 + 10, l3 + 12), (l3 + 16, l3 + 20), (l4 + 2, l4 + 4)]
        e = bytearray(f)
        e[0:12] = out[0:12]
        for a, b in allowed + [(l4 + 16, l4 + 18)]:
            e[a:b] = out[a:b]
        if e != out:
            v.append(Violation("bytes", "changed bytes outside the endpoint rewrite"))
        if ip_residue(out, lay) != ip_residue(f, lay) or l4_residue(out, lay) != l4_residue(f, lay):
            v.append(Violation("checksum", "checksum residue changed"))
        return v

    def _named(self, d):
        return {STAT_NAMES.get(i, str(i)): n for i, n in d.items()}

    def periodic(self) -> list[Violation]:
        self.ring.consume()
        got = set(self.conns.keys())
        if not got <= set(self.cache):
            return [Violation("state", f"{len(got - set(self.cache))} entries nobody handed over")]
        return []

    def finish(self) -> list[Violation]:
        return self.periodic()

    def case_state(self) -> dict:
        return dict(self._last)

    def replay(self, inp: Input, state: dict) -> list[Violation]:
        self.conns.clear()
        self.cache.clear()
        if state.get("key") and state.get("entry"):
            k, e = bytes.fromhex(state["key"]), bytes.fromhex(state["entry"])
            self.conns.update(k, e)
            self.cache[k] = e
        return self.execute(inp)
