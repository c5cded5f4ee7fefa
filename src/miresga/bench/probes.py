"""Extra report columns measured around a point (see systems.Probe).

`fast_path_byte_share`: of the bytes the back-ends sent during the point, the share that did not
pass through a front-end, i.e. took the switch fast path. It is read from the testbed's per-host
eBPF counters (`testbed status`, `hosts[].counters`) as 1 - (bytes the front-ends received) /
(bytes the back-ends sent). Front-end ingress also holds the clients' requests and ACKs, so this
is a lower bound (1 KB keep-alive: ~8 % low); it is clamped to [0, 1]. Only meaningful while one
system runs through the front-ends (the peers never touch them).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from miresga.bench.systems import Extras

Totals = dict[str, int]


def role_bytes(status: Mapping[str, Any]) -> Totals:
    """Bytes per (role, direction) summed over hosts, e.g. {"frontend_ingress": ..., "backend_egress": ...}."""
    out: Totals = {}
    for h in status.get("hosts", []):
        for direction in ("ingress", "egress"):
            c = (h.get("counters") or {}).get(direction) or {}
            key = f"{h['role']}_{direction}"
            out[key] = out.get(key, 0) + int(c.get("bytes", 0))
    return out


def fast_path_share(before: Totals, after: Totals) -> float | None:
    sent = after.get("backend_egress", 0) - before.get("backend_egress", 0)
    relayed = after.get("frontend_ingress", 0) - before.get("frontend_ingress", 0)
    if sent <= 0:
        return None
    return round(min(1.0, max(0.0, 1.0 - relayed / sent)), 4)


def fast_path_probe(status: Callable[[], Mapping[str, Any]]) -> Callable[[], Callable[[], Extras]]:
    """A System probe from a status function (e.g. `tb.status`)."""
    def begin() -> Callable[[], Extras]:
        before = role_bytes(status())

        def end() -> Extras:
            share = fast_path_share(before, role_bytes(status()))
            return {} if share is None else {"fast_path_byte_share": share}
        return end
    return begin
