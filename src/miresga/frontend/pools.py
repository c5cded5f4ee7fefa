"""Which back-ends may take a new connection, and which config changes a running front-end accepts.

Pure. `Pools` holds the operator's state of each back-end — drained (`drain: true`: no new
connections, established ones finish) and its `max_connections` (beyond it the back-end is skipped
by selection; a 503 only when no back-end of the pool can take the request). `check_reload` says
why a new config cannot replace the running one (nothing of it is applied then).
"""

from __future__ import annotations

from typing import Sequence

from miresga.control.config import Backend, Deployment

# Keys of a back-end host that a reload may change; anything else (its address, service port,
# position) is wired into the switch's tables and the agents: those need a restart.
RELOADABLE_BACKEND_KEYS = {"weight", "drain", "max_connections"}
# Front-end keys that only take effect at start (sockets, maps sized at load, the kernel path).
RESTART_FRONTEND_KEYS = {"metrics_port", "metrics_address", "max_connections", "checksum", "kernel_path"}


class Pools:
    def __init__(self, backends: Sequence[Backend]):
        self.drain = [b.drain for b in backends]
        self.max_conns = [b.max_connections for b in backends]
        self._limited = any(self.drain) or any(self.max_conns)

    def eligible(self, healthy: list[bool], active: Sequence[int]) -> list[bool]:
        """Per back-end: may a new connection (or a re-routed request) go there."""
        if not self._limited:
            return healthy
        return [h and not d and (m == 0 or a < m)
                for h, d, m, a in zip(healthy, self.drain, self.max_conns, active)]

    def another(self, pool: Sequence[int], tried: Sequence[int], healthy: list[bool],
                active: Sequence[int]) -> int | None:
        """For a redispatch: the least loaded eligible back-end of `pool` not tried yet."""
        ok = self.eligible(healthy, active)
        left = [b for b in pool if ok[b] and b not in tried]
        return min(left, key=lambda b: active[b]) if left else None

    def why_none(self, pool: Sequence[int], healthy: list[bool], active: Sequence[int]) -> str:
        """The 503's reason when no back-end of `pool` is eligible."""
        if not any(healthy[b] for b in pool):
            return "no healthy back-end"
        if all(self.drain[b] or not healthy[b] for b in pool):
            return "every back-end is drained"
        return "every back-end is at max_connections"


def check_reload(old: Deployment, new: Deployment) -> list[str]:
    """Why `new` cannot be applied to processes running `old` (empty: it can). A config that
    parses is still refused when it changes what only a restart can change."""
    why = []
    ob = [b.name for b in old.hosts.backends]
    nb = [b.name for b in new.hosts.backends]
    if ob != nb:
        why.append("hosts.backends: the back-end hosts (names and order) cannot change in a reload "
                   f"(running {ob}, new {nb}): their positions index the switch's tables; "
                   "take one out with `miresga backend remove NAME` (drained, kept in the table)")
    else:
        for i, (a, b) in enumerate(zip(old.hosts.backends, new.hosts.backends)):
            changed = {k for k in Backend.model_fields if getattr(a, k) != getattr(b, k)} - RELOADABLE_BACKEND_KEYS
            if changed:
                why.append(f"hosts.backends.{i} ({a.name}): {', '.join(sorted(changed))} need a restart")
    ov = [(s.name, s.vip) for s in old.all_services()]
    nv = [(s.name, s.vip) for s in new.all_services()]
    if nv[:len(ov)][1:] != ov[1:]:
        why.append("services: the running services' names, VIPs and order need a restart (their positions "
                   "index the switch's tables); services may be added at the end, and every service's rules reload")
    for section in ("vip", "switch", "agent", "objects"):
        if getattr(old, section) != getattr(new, section):
            why.append(f"{section}: changes need a restart of the processes that use it")
    for key in ("clients", "frontends", "lb"):
        if getattr(old.hosts, key) != getattr(new.hosts, key):
            why.append(f"hosts.{key}: changes need a restart")
    for k in sorted(RESTART_FRONTEND_KEYS):
        if getattr(old.frontend, k) != getattr(new.frontend, k):
            why.append(f"frontend.{k}: takes effect only at start")
    return why
