"""The systems under test: a name, the address:port the client hits, and optional extra columns.

Adding a system is one entry: `System("miresga", vip, port, probe=...)`. A probe is called just
before a measurement point and returns a function that, called just after it, gives extra report
columns for that point (for example the share of bytes that took the switch fast path).

`prism` is Miresga's own switch, agents and front-ends configured as Prism works (docs/bench.md):
a rule matched by `Host: prism.bench` offloads every request (`always`) and holds it until its
entry is installed (`offload_wait`). The bench adds that rule to the deployment it brings up
(`with_prism`); a testbed whose status lists such a rule offers `prism` on the VIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from miresga.control.config import Deployment

Extras = dict[str, float]
Probe = Callable[[], Callable[[], Extras]]

DIRECT = "direct"
PEERS = ("nginx", "haproxy")     # the software L7 load balancers: "best peer" is the best of these
MIRESGA, PRISM = "miresga", "prism"
ORDER = (DIRECT, *PEERS, MIRESGA, PRISM)
PRISM_HOST = "prism.bench"


class SystemSpecError(ValueError):
    pass


@dataclass(frozen=True)
class System:
    name: str
    address: str
    port: int
    probe: Probe | None = None
    headers: tuple[str, ...] = ()      # extra request headers (wrk -H), e.g. prism's Host
    profile: str | None = None         # switch hardware profile it runs under (through the switch only)
    offload: str | None = None         # its offload policy, in words

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}{path}"


def systems_from_status(status: Mapping[str, Any]) -> dict[str, System]:
    """Every system a testbed offers (`testbed status --json`): the peers, and `miresga` on the VIP
    once the load balancer exists. Ordered direct, nginx, haproxy, miresga, then any others."""
    found = {name: System(name, p["address"], int(p["port"])) for name, p in status.get("peers", {}).items()}
    vip = status.get("vip")
    if vip:
        found[MIRESGA] = System(MIRESGA, vip["address"], int(vip["port"]))
        host = prism_host(status.get("rules", []))
        if host:
            found[PRISM] = System(PRISM, vip["address"], int(vip["port"]), headers=(f"Host: {host}",))
    return dict(sorted(found.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0])))


def prism_host(rules: Sequence[Mapping[str, Any]]) -> str | None:
    """The Host of the first rule configured as Prism (offload always + offload_wait), if any."""
    for r in rules:
        if r.get("offload") == "always" and r.get("offload_wait") and (r.get("match") or {}).get("host"):
            return r["match"]["host"]
    return None


def offload_policy(rule: Mapping[str, Any] | None) -> str:
    """A rule's offload policy in words, as the report shows it."""
    if rule is None:
        return "auto (implicit default rule)"
    o = rule.get("offload", "auto")
    if o == "always":
        return ("always, request held until its entry is installed (2 table ops per request)"
                if rule.get("offload_wait") else "always")
    if o == "auto":
        n = rule.get("offload_after_requests", 0)
        return (f"auto (>= {size_words(rule.get('offload_threshold', 65536))} still to come"
                + (f", or from a connection's request {n} on)" if n else ")"))
    return o


def size_words(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 and n % (1 << 20) == 0 else (
        f"{n >> 10} KB" if n >= 1024 and n % 1024 == 0 else f"{n} B")


def rule_for_path(rules: Sequence[Mapping[str, Any]], path: str) -> Mapping[str, Any] | None:
    """The first rule a plain GET of `path` without a Host of its own would match (the bench's
    objects: host and header rules are passed over)."""
    for r in rules:
        m = r.get("match") or {}
        if m.get("host") or m.get("headers") or m.get("path_regex") or (m.get("method") not in (None, "GET")):
            continue
        if m.get("path_exact") not in (None, path) or not path.startswith(m.get("path_prefix") or ""):
            continue
        return r
    return None


def with_prism(cfg: Deployment, host: str = PRISM_HOST) -> Deployment:
    """The deployment plus a first rule that makes requests for `host` work as Prism does."""
    d = cfg.model_dump(mode="json")
    if prism_host(d["rules"]) == host:
        return cfg
    pool = [b["name"] for b in d["hosts"]["backends"]]
    d["rules"] = [{"name": "prism", "match": {"host": host}, "pool": pool, "policy": "round_robin",
                   "offload": "always", "offload_wait": True}, *d["rules"]]
    return Deployment.model_validate(d)


def with_profile(cfg: Deployment, profile: str | None = None, capacity: int | None = None,
                 insert_rate: int | None = None) -> Deployment:
    """The deployment under another switch hardware profile, offload table capacity and/or
    (tofino) table operations per second."""
    if profile is None and capacity is None and insert_rate is None:
        return cfg
    d = cfg.model_dump(mode="json")
    if profile is not None:
        d["switch"]["profile"] = profile
    if capacity is not None:
        d["switch"]["offload_capacity"] = capacity
    if insert_rate is not None:
        d["switch"]["insert_rate"] = insert_rate
    return Deployment.model_validate(d)


def with_objects(cfg: Deployment, sizes: Sequence[int]) -> Deployment:
    """The deployment serving at least these object sizes."""
    have = set(cfg.objects.sizes)
    if set(sizes) <= have:
        return cfg
    d = cfg.model_dump(mode="json")
    d["objects"]["sizes"] = sorted(have | set(sizes))
    return Deployment.model_validate(d)


def profile_words(sw: Any) -> str:
    """config.Switch -> e.g. 'tofino (143,360 entries, 17,000 ops/s, 1 ms per batch)'."""
    from miresga.switch.profiles import profile_from_config
    p = profile_from_config(sw)
    if not p.limited:
        return f"{p.name} ({p.capacity:,} entries, no rate limit)"
    return f"{p.name} ({p.capacity:,} entries, {p.rate:,.0f} ops/s, {p.batch_latency_s * 1000:g} ms per batch)"


def resolve_systems(wanted: Sequence[str | System] | Mapping[str, System | tuple[str, int]] | None,
                    available: Mapping[str, System]) -> list[System]:
    """Names are looked up in `available`; System objects and name -> (address, port) pairs are
    taken as given (so a caller can add a system the testbed does not describe, or attach a probe)."""
    if wanted is None:
        return list(available.values())
    items: list[tuple[str, Any]]
    if isinstance(wanted, Mapping):
        items = list(wanted.items())
    else:
        items = [(w.name if isinstance(w, System) else w, w) for w in wanted]
    out: list[System] = []
    for name, spec in items:
        if isinstance(spec, System):
            out.append(spec)
        elif isinstance(spec, tuple):
            out.append(System(name, spec[0], int(spec[1])))
        elif spec in available:
            out.append(available[spec])
        else:
            raise SystemSpecError(f"unknown system {spec!r}: this testbed offers {', '.join(available) or 'none'}")
    names = [s.name for s in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemSpecError(f"system(s) listed twice: {', '.join(sorted(dup))}")
    return out
