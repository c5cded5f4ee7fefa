"""Fuzz target: the back-end agent (bpf/agent.bpf.c, `agent_ingress` and `agent_egress`) through
BPF_PROG_TEST_RUN, both programs sharing one flow table as on a back-end's NIC.

Inputs follow a small pool of spliced connections through their life (splice SYN, re-splice,
SYN retransmission, the back-end's SYN-ACK, data and ACKs both ways with SACK blocks and
windows, FINs, RSTs, a plain SYN reusing the port, the direct port, other protocols), with
switch and back-end ISNs near the 2^32 wrap; a share of them is mutated. A sweep (as the
manager's) now and then removes flows outside the pool.

Checked on every input:
- counted: a drop moves exactly one drop reason by one, and nothing else moves one;
- state: a flow appears only for a splice SYN to the service port (the connection that justifies
  it); every 256 inputs the whole table equals what the inputs justified;
- bytes and addresses: only seq (egress), ack and SACK edges (ingress), the window (egress) and
  the TCP checksum change; addresses, ports, lengths and the IP header never;
- translation: ingress ack and every SACK edge the kernel would read + diff, egress seq - diff
  (diff from the SYN-ACK), the window rescaled to the promised scale; a segment of a flow whose
  SYN-ACK was not seen is dropped (counted) unless it is a RST;
- checksums: the TCP checksum residue is kept (valid stays valid, bad is not laundered).
"""

from __future__ import annotations

import ctypes
import ipaddress
import random
import socket
import struct

from miresga.agent.manager import AGENT_FLOW_ESTABLISHED, AGENT_FLOW_SYN, AGENT_WSCALE_NONE
from miresga.bpf.drop_reasons import DropReason
from miresga.bpf.layouts import AgentConfig, AgentFlow
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.control.config import Deployment
from miresga.fuzz.bpfrun import TC_ACT_OK, TC_ACT_SHOT, ArrayReader, FastRunner, deltas
from miresga.fuzz.harness import Harness, Input, Violation
from miresga.fuzz.mutate import SEQ_EDGES, Pools, mutate
from miresga.fuzz.wire import (ACK, FIN, PSH, RST, SYN, Layout, kernel_options, l3_frame, l4_residue, tcp_fields,
                               tcp_frame)

M32 = 0xFFFFFFFF
FLOWS_MAX = 32
SWEEP_EVERY = 4096


def ip_int(a) -> int:
    return int(ipaddress.IPv4Address(a))


def rescale(win: int, frm: int, to: int) -> int:
    w = min((win << frm) >> to, 0xFFFF)
    return 1 if w == 0 and win else w


class Flow:
    """One spliced connection as the fuzzer drives it (switch space for the client, back-end
    space for the back-end)."""

    def __init__(self, ip: int, port: int):
        self.ip, self.port = ip, port
        self.new_isns(random.Random((ip << 16) | port))

    def new_isns(self, rng: random.Random) -> None:
        pick = (lambda: rng.choice(SEQ_EDGES) - rng.randrange(3000)) if rng.random() < 0.4 else \
            (lambda: rng.getrandbits(32))
        self.s, self.b, self.c = pick() & M32 or 1, pick() & M32, rng.getrandbits(32)
        self.cli, self.srv = 0, 0     # bytes sent by each side


class AgentHarness(Harness):
    name = "agent"

    def __init__(self, cfg: Deployment, backend: int = 0):
        super().__init__(cfg)
        be = cfg.hosts.backends[backend]
        self.bip, self.bport, self.direct = ip_int(be.ip), be.port, be.direct_port
        self.service = {b.port for b in cfg.hosts.backends if b.name == be.name}
        self.promised = cfg.switch.window_scale
        self.obj = BpfObject(object_path("agent"), max_entries={"agent_flows": FLOWS_MAX})
        try:
            c = AgentConfig()
            for i, p in enumerate(sorted(self.service)):
                c.service_ports[i] = socket.htons(p)
            c.window_scale = self.promised
            self.obj.map("agent_config").update(ctypes.c_uint32(0), c)
            self.flows = self.obj.map("agent_flows")
            self.runners = {n: FastRunner(self.obj.program(n)) for n in ("agent_ingress", "agent_egress")}
            self.drops = ArrayReader(self.obj.map("agent_drops"), percpu=True)
            self.stat_reader = ArrayReader(self.obj.map("agent_stats"), percpu=True)
        except BaseException:
            self.obj.close()
            raise
        client = ip_int(cfg.hosts.clients[0].ip)
        self.pool = [Flow(client, 40000 + i) for i in range(6)] + [Flow(ip_int("203.0.113.7"), 50000 + i)
                                                                  for i in range(2)]
        self.pool_keys = {self._key(f.ip, f.port) for f in self.pool}
        self.cmac, self.bmac = bytes.fromhex("024d0a000102"), bytes.fromhex("024d0a000402")
        self.cache: dict[bytes, bytes] = {}      # the flow table as the inputs made it
        self.pools = Pools([client, self.bip, ip_int("203.0.113.7"), 0, 0xFFFFFFFF],
                           [self.bport, self.direct, 40000, 40001, 50000, 0, 65535])
        self.n = 0
        self._last: dict = {}

    def close(self) -> None:
        self.obj.close()

    @staticmethod
    def _key(ip: int, port: int) -> bytes:
        return ip.to_bytes(4, "big") + port.to_bytes(2, "big") + b"\0\0"

    # ------------------------------------------------------------------ inputs

    def generate(self, rng: random.Random) -> Input:
        self.n += 1
        if self.n % SWEEP_EVERY == 0:
            self.sweep(rng)
        fl = rng.choice(self.pool)
        kind = rng.choices(KINDS, WEIGHTS)[0]
        held = self.cache.get(self._key(fl.ip, fl.port))
        if held is None and rng.random() < 0.5:
            kind = "splice_syn"           # walk connections deeper than their first segment
        elif held is not None and held[24] == AGENT_FLOW_SYN and rng.random() < 0.5:
            kind = "synack"
        entry, frame = getattr(self, "_gen_" + kind)(rng, fl)
        if rng.random() < 0.4:
            m = mutate(rng, bytes(frame), self.pools)
            return Input(entry, bytes(m.data), 0, [kind, *m.names])
        return Input(entry, bytes(frame), 0, [kind, "valid"])

    def sweep(self, rng: random.Random) -> None:
        """As the manager's idle sweep: strangers go, and now and then a pool flow."""
        for k in list(self.cache):
            if k not in self.pool_keys or rng.random() < 0.2:
                self.flows.delete(k)
                del self.cache[k]

    def _in(self, fl: Flow, flags: int, seq: int, ack: int, opts: bytes = b"", payload: bytes = b"",
            dport: int | None = None) -> tuple[str, bytearray]:
        return "agent_ingress", tcp_frame(self.cmac, self.bmac, fl.ip, self.bip, fl.port, dport or self.bport,
                                          seq, ack, flags, 502, opts, payload)

    def _out(self, fl: Flow, flags: int, seq: int, ack: int, opts: bytes = b"", payload: bytes = b"",
             window: int = 502) -> tuple[str, bytearray]:
        return "agent_egress", tcp_frame(self.bmac, self.cmac, self.bip, fl.ip, self.bport, fl.port, seq, ack,
                                         flags, window, opts, payload)

    def _gen_splice_syn(self, rng, fl):
        if rng.random() < 0.4:
            fl.new_isns(rng)       # a new splice (or re-splice) of this client ip:port
        return self._in(fl, SYN, fl.c, fl.s, rng.choice([b"\x02\x04\x05\xb4\x01\x03\x03\x07\x04\x02", b""]))

    def _gen_plain_syn(self, rng, fl):
        return self._in(fl, SYN, rng.getrandbits(32), 0, b"\x02\x04\x05\xb4")

    def _gen_synack(self, rng, fl):
        ws = rng.choice([None, 0, 7, 7, 10, 14, 15, 255])
        opts = b"\x02\x04\x05\xb4" + (b"" if ws is None else bytes([1, 3, 3, ws]))
        return self._out(fl, SYN | ACK, fl.b, fl.c + 1, opts)

    def _sack(self, rng, base: int) -> bytes:
        n = rng.randrange(1, 5)
        body = b"".join(struct.pack("!II", (base + 1000 * i) & M32, (base + 1000 * i + 500) & M32) for i in range(n))
        lead = rng.choice([b"\x01\x01", b"\x01", b""])
        return lead + bytes([5, 2 + 8 * n]) + body

    def _gen_c_seg(self, rng, fl):
        payload = rng.choice([b"", b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", rng.randbytes(rng.randrange(1, 1400))])
        opts = self._sack(rng, fl.s + 1 + fl.srv + 2000) if rng.random() < 0.4 else \
            rng.choice([b"", b"\x01\x01\x08\x0a" + rng.randbytes(8)])
        ack = (fl.s + 1 + fl.srv + rng.choice([0, 0, -1, 1, 1 << 31])) & M32
        seg = self._in(fl, ACK | (PSH if payload else 0), fl.c + 1 + fl.cli, ack, opts, payload)
        fl.cli += len(payload)
        return seg

    def _gen_b_seg(self, rng, fl):
        payload = rng.choice([b"", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", rng.randbytes(1448)])
        win = rng.choice([0, 1, 2, 500, 0x7FFF, 0xFFFF])
        opts = self._sack(rng, fl.c + 1 + fl.cli) if rng.random() < 0.2 else b""
        seg = self._out(fl, ACK | (PSH if payload else 0), fl.b + 1 + fl.srv, fl.c + 1 + fl.cli, opts, payload, win)
        fl.srv += len(payload)
        return seg

    def _gen_c_fin(self, rng, fl):
        seg = self._in(fl, FIN | ACK, fl.c + 1 + fl.cli, fl.s + 1 + fl.srv + rng.choice([0, 1]))
        fl.cli += 1
        return seg

    def _gen_b_fin(self, rng, fl):
        seg = self._out(fl, FIN | ACK, fl.b + 1 + fl.srv, fl.c + 1 + fl.cli + rng.choice([0, 1]))
        fl.srv += 1
        return seg

    def _gen_c_rst(self, rng, fl):
        return self._in(fl, rng.choice([RST, RST | ACK]), fl.c + 1 + fl.cli, fl.s + 1 + fl.srv)

    def _gen_b_rst(self, rng, fl):
        return self._out(fl, rng.choice([RST, RST | ACK]), fl.b + 1 + fl.srv, fl.c + 1 + fl.cli)

    def _gen_direct(self, rng, fl):
        return self._in(fl, rng.choice([SYN, ACK, ACK | PSH]), fl.c, fl.s, b"", b"", dport=self.direct)

    def _gen_other(self, rng, fl):
        f = l3_frame(self.cmac, self.bmac, fl.ip, self.bip, rng.choice([17, 1]),
                     b"\x00\x50\x00\x50\x00\x0c\x00\x00abcd")
        return rng.choice(["agent_ingress", "agent_egress"]), f

    # ------------------------------------------------------------------ checks

    def _flow_key(self, entry: str, f: bytes, lay: Layout) -> bytes | None:
        """The flow key the program uses, if it looks at this frame at all."""
        if not lay.tcp_ok:
            return None
        l3, l4 = lay.l3, lay.l4
        if entry == "agent_ingress":
            if int.from_bytes(f[l4 + 2:l4 + 4], "big") not in self.service:
                return None
            return bytes(f[l3 + 12:l3 + 16] + f[l4:l4 + 2]) + b"\0\0"
        if int.from_bytes(f[l4:l4 + 2], "big") not in self.service:
            return None
        return bytes(f[l3 + 16:l3 + 20] + f[l4 + 2:l4 + 4]) + b"\0\0"

    def execute(self, inp: Input) -> list[Violation]:
        f = inp.data
        lay = Layout(f)
        key = self._flow_key(inp.entry, f, lay)
        before = self.cache.get(key) if key else None
        self._last = {"key": key.hex() if key else None, "flow": before.hex() if before else None}
        d0 = self.drops.read()
        verdict, out = self.runners[inp.entry].run(f)
        d = deltas(d0, self.drops.read())
        after = None
        if key is not None:
            after = self.flows.lookup(key)
            if after is None:
                self.cache.pop(key, None)
            else:
                self.cache[key] = after
        return self.check(inp, lay, key, before, after, verdict, out, d)

    def check(self, inp, lay, key, before, after, verdict, out, d) -> list[Violation]:
        st = self.stats[inp.entry]
        self.inputs[inp.entry] += 1
        f = inp.data
        v: list[Violation] = []
        if verdict == TC_ACT_SHOT:
            if len(d) != 1 or next(iter(d.values())) != 1:
                return [Violation("uncounted", f"dropped with drop counters {d}")]
            reason = DropReason(-next(iter(d)))
            st[f"drop_{reason.name.lower()}"] += 1
        elif verdict == TC_ACT_OK:
            if d:
                v.append(Violation("uncounted", f"passed but drop counters moved {d}"))
            st["pass"] += 1
        else:
            return [Violation("verdict", f"verdict {verdict}")]
        if key is None:
            if verdict != TC_ACT_OK or out != f:
                v.append(Violation("bytes", "a frame not of the service port was changed or dropped"))
            return v
        l4 = lay.l4
        _sport, _dport, seq, ack, flags, win = tcp_fields(f, l4)
        ingress = inp.entry == "agent_ingress"
        splice_syn = ingress and flags & (SYN | ACK | RST) == SYN and ack != 0
        if before is None and after is not None and not splice_syn:
            v.append(Violation("state", f"flow created by a segment that is no splice SYN (flags {flags:#x})"))
        if verdict == TC_ACT_SHOT:
            reason = DropReason(-next(iter(d)))
            ok = {DropReason.AGENT_TABLE_FULL} if splice_syn else {DropReason.AGENT_NOT_SPLICED}
            if reason not in ok and reason != DropReason.REWRITE_FAILED:
                v.append(Violation("verdict", f"dropped as {reason.name}"))
            if reason == DropReason.AGENT_NOT_SPLICED and (before is None or
                                                          AgentFlow.from_buffer_copy(before).state != AGENT_FLOW_SYN):
                v.append(Violation("verdict", "NOT_SPLICED drop of a flow that is not waiting for its SYN-ACK"))
            if reason == DropReason.AGENT_TABLE_FULL and len(self.cache) < FLOWS_MAX:
                v.append(Violation("state", f"table full refusal with {len(self.cache)} flows"))
            return v
        if len(out) != len(f):
            return v + [Violation("bytes", f"length {len(f)} -> {len(out)}")]
        # expected output: the input with the translated fields
        e = bytearray(f)
        e[l4 + 16:l4 + 18] = out[l4 + 16:l4 + 18]          # the checksum: judged by its residue
        bf = AgentFlow.from_buffer_copy(before) if before is not None else None
        if ingress:
            if splice_syn:
                e[l4 + 8:l4 + 12] = b"\0\0\0\0"
            elif bf is not None and bf.state == AGENT_FLOW_ESTABLISHED and flags & ACK:
                e[l4 + 8:l4 + 12] = ((ack + bf.diff) & M32).to_bytes(4, "big")
                if lay.thl > 20:
                    for off in kernel_options(f, l4, lay.thl)[0]:
                        for o in (off, off + 4):
                            e[o:o + 4] = ((int.from_bytes(f[o:o + 4], "big") + bf.diff) & M32).to_bytes(4, "big")
            elif bf is not None and bf.state != AGENT_FLOW_ESTABLISHED and not flags & RST and not splice_syn \
                    and flags & (SYN | ACK | RST) != SYN:
                v.append(Violation("verdict", "a segment before the SYN-ACK passed"))
        elif bf is not None:
            established = bf.state == AGENT_FLOW_ESTABLISHED
            diff, bws, pws = bf.diff, bf.backend_wscale, bf.promised_wscale
            if flags & (SYN | ACK) == (SYN | ACK):
                diff = (seq - bf.switch_isn) & M32
                ws = kernel_options(f, l4, lay.thl)[1]
                bws, pws, established = (AGENT_WSCALE_NONE if ws is None else ws), self.promised, True
            if established:
                e[l4 + 4:l4 + 8] = ((seq - diff) & M32).to_bytes(4, "big")
                if not flags & SYN and bws != AGENT_WSCALE_NONE and bws != pws:
                    e[l4 + 14:l4 + 16] = rescale(win, bws, pws).to_bytes(2, "big")
        if e != out:
            diffs = [i for i in range(len(e)) if e[i] != out[i]]
            v.append(Violation("bytes", f"{inp.entry}: output differs from the translation at offsets {diffs[:8]}"))
        if l4_residue(out, lay) != l4_residue(f, lay):
            v.append(Violation("checksum", f"{inp.entry}: TCP checksum residue changed"))
        return v

    def periodic(self) -> list[Violation]:
        got = {k: v for k, v in self.flows.items()}
        if set(got) != set(self.cache):
            extra = [k.hex() for k in set(got) - set(self.cache)]
            return [Violation("state", f"flow table holds {len(got)} flows, inputs justify {len(self.cache)}; "
                                       f"unjustified {extra[:4]}")]
        return []

    def finish(self) -> list[Violation]:
        totals = self.stat_reader.read()
        from miresga.agent.manager import AgentStat
        self.stats["agent_stats"].update({s.name.lower(): totals[s] for s in AgentStat if totals[s]})
        return self.periodic()

    def case_state(self) -> dict:
        return dict(self._last)

    def replay(self, inp: Input, state: dict) -> list[Violation]:
        self.flows.clear()
        self.cache.clear()
        if state.get("key") and state.get("flow"):
            k, fl = bytes.fromhex(state["key"]), bytes.fromhex(state["flow"])
            self.flows.update(k, fl)
            self.cache[k] = fl
        return self.execute(inp)


KINDS = ["splice_syn", "plain_syn", "synack", "c_seg", "b_seg", "c_fin", "b_fin", "c_rst", "b_rst", "direct",
         "other"]
WEIGHTS = [8, 2, 6, 30, 30, 4, 4, 2, 2, 3, 3]
