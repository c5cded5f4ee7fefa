"""The rule compiler for the front-end's kernel path: the config's rules (rules.py) as the steps,
rule records and selection wheels that `bpf/lib/frontend_route.h` walks.

All services' rules are laid out one after the other, by their global indices (service 0's
first, as `Engine.rule_list`); each service has its stretch of rules and of steps, and the kernel
walks only those of the request's service.

Each step checks one condition of one rule (a method mask, a Host or path length, one byte); a
rule whose step fails is out, and the lowest rule still in is the match, as `RuleSet.match`
decides. Conditions the kernel cannot check (regex, headers) are not compiled: the rule is marked
for Python, so a request it might match goes up to the engine. A rule's offload and policy say
what the kernel may do with a request it matched (see `rule_flags`). Pure: the adapter
(maps.py) writes the result into the maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from miresga.control.config import Deployment, Rule
from miresga.frontend.rules import CompiledRule, RuleSet
from miresga.frontend.selection import WHEEL_POLICIES, wheel

# bpf/frontend.h: enum fe_op_kind, FE_M_*, FE_RULE_*, sizes
OP_METHOD, OP_HOST_LEN_EQ, OP_HOST_LEN_GE, OP_HOST_BYTE, OP_HOST_TAIL = 1, 2, 3, 4, 5
OP_PATH_LEN_EQ, OP_PATH_LEN_GE, OP_PATH_BYTE = 6, 7, 8
METHOD_BITS = {"GET": 1, "HEAD": 2}
RULE_KERNEL, RULE_STICKY, RULE_WHEEL, RULE_WATCH, RULE_LEASTCONN, RULE_HASH = 1, 2, 4, 8, 16, 32
PICKS = RULE_WHEEL | RULE_LEASTCONN | RULE_HASH   # the kernel picks a first request's back-end
OPS_MAX, RULES_MAX, WHEEL_SLOTS, BACKENDS_MAX = 1024, 64, 4096, 64
PATTERN_MAX = 1400   # longer patterns cannot match a request of one frame: left to Python


@dataclass(frozen=True)
class Op:
    kind: int
    rule: int
    arg: int
    byte: int = 0


@dataclass(frozen=True)
class KernelRule:
    pool: int             # bit b: back-end b in the pool
    flags: int            # RULE_*
    after_requests: int   # auto offload from this many requests (0: not by count)


@dataclass(frozen=True)
class ServiceRules:
    """A service's stretch of the rules and steps (bpf/frontend.h struct fe_service)."""

    first_rule: int
    n_rules: int
    first_op: int
    n_ops: int


@dataclass(frozen=True)
class KernelRules:
    ops: tuple[Op, ...]
    rules: tuple[KernelRule, ...]   # by global rule index (each service's RuleSet.all() in turn)
    usable: bool                    # False: too big for the maps; the kernel routes nothing
    why: str = ""
    services: tuple[ServiceRules, ...] = ()   # by service index


def _bytes(pattern: str) -> bytes | None:
    try:
        return pattern.encode("ascii")
    except UnicodeEncodeError:
        return None


def _steps(i: int, conf: Rule | None) -> tuple[list[Op], bool]:
    """(the steps of rule `i` (its global index) as the config wrote it, whether they are all of
    its conditions)."""
    if conf is None:
        return [], True             # the implicit default matches everything
    m = conf.match
    ops: list[Op] = []
    whole = m.path_regex is None and not m.headers
    if m.method is not None:
        mask = 0
        for name in m.method.split(","):
            mask |= METHOD_BITS.get(name.strip().upper(), 0)
        ops.append(Op(OP_METHOD, i, mask))
    if m.host is not None:
        host = _bytes(m.host.lower())
        if host is None or len(host) > PATTERN_MAX:
            whole = False
        elif host.startswith(b"*."):
            suffix = host[1:]
            ops.append(Op(OP_HOST_LEN_GE, i, len(suffix)))
            ops += [Op(OP_HOST_TAIL, i, k, suffix[-k]) for k in range(1, len(suffix) + 1)]
        else:
            ops.append(Op(OP_HOST_LEN_EQ, i, len(host)))
            ops += [Op(OP_HOST_BYTE, i, k, c) for k, c in enumerate(host)]
    for pattern, kind in ((m.path_exact, OP_PATH_LEN_EQ), (m.path_prefix, OP_PATH_LEN_GE)):
        if pattern is None:
            continue
        path = _bytes(pattern)
        if path is None or len(path) > PATTERN_MAX:
            whole = False
            continue
        ops.append(Op(kind, i, len(path)))
        ops += [Op(OP_PATH_BYTE, i, k, c) for k, c in enumerate(path)]
    return ops, whole


def rule_flags(rule: CompiledRule, whole: bool, weights: Sequence[int] = ()) -> int:
    """What the kernel may do with a request that matched `rule`. KERNEL: all its conditions were
    compiled and its offload is one the kernel follows (`auto` by response size or request count,
    `never`; not `always`, whose insert at the splice is the engine's, nor `offload_wait`).
    STICKY: a keep-alive request may stay on its back-end (not a hash policy). WHEEL, LEASTCONN,
    HASH: how the kernel picks a back-end (round robin and weighted; least connections; the
    client address's rendezvous hash when the pool's weights are equal — the weighted score needs
    a logarithm; `hash_header` stays Python's). WATCH: the response header is copied up."""
    flags = 0
    if rule.policy == "least_conn":
        flags |= RULE_LEASTCONN
    if rule.policy == "hash_client" and len({max(weights[b], 1) for b in rule.pool if b < len(weights)}) <= 1:
        flags |= RULE_HASH
    if whole and rule.offload in ("auto", "never") and not rule.offload_wait:
        flags |= RULE_KERNEL
    if rule.policy not in ("hash_client", "hash_header"):
        flags |= RULE_STICKY
    if rule.policy in WHEEL_POLICIES:
        flags |= RULE_WHEEL
    if rule.offload == "auto":
        flags |= RULE_WATCH
    return flags


def compile_rules(rulesets: Sequence[RuleSet], cfg: Deployment) -> KernelRules:
    """Every service's rules (`service_rules(cfg)`, by service index) as one program."""
    weights = [b.weight for b in cfg.hosts.backends]
    services = cfg.all_services()
    rules: list[CompiledRule] = []
    ops: list[Op] = []
    out: list[KernelRule] = []
    ranges: list[ServiceRules] = []
    for rs in rulesets:
        conf = services[rs.service].rules
        first_rule, first_op = len(rules), len(ops)
        for j, r in enumerate(rs.all()):
            if r.index != len(rules):
                raise ValueError(f"rule {r.name!r}: index {r.index}, expected {len(rules)} (global indices)")
            steps, whole = _steps(r.index, conf[j] if j < len(conf) else None)
            rules.append(r)
            ops += steps
            after = r.offload_after_requests if r.offload == "auto" else 0
            flags = rule_flags(r, whole, weights)
            if any(cfg.hosts.backends[b].max_connections for b in r.pool):
                flags &= ~PICKS     # a back-end's connection limit is the engine's to keep
            out.append(KernelRule(sum(1 << b for b in r.pool), flags, min(after, 0xFFFF)))
        ranges.append(ServiceRules(first_rule, len(rules) - first_rule, first_op, len(ops) - first_op))
    why = ""
    if len(rules) > RULES_MAX:
        why = f"{len(rules)} rules (the kernel path takes {RULES_MAX})"
    elif len(ops) > OPS_MAX:
        why = f"{len(ops)} compiled steps (the kernel path takes {OPS_MAX})"
    elif len(cfg.hosts.backends) > BACKENDS_MAX:
        why = f"{len(cfg.hosts.backends)} back-ends (the kernel path takes {BACKENDS_MAX})"
    return KernelRules(tuple(ops), tuple(out), not why, why, tuple(ranges))


def wheels(rulesets: Sequence[RuleSet], kr: KernelRules, healthy: Sequence[bool],
           weights: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Per global rule index: (offset, wheel) into the shared wheel array; an empty wheel for a
    rule the kernel does not pick for (or when the array is full: those rules' first requests go
    up)."""
    out: list[tuple[int, list[int]]] = []
    off = 0
    for r, k in zip((r for rs in rulesets for r in rs.all()), kr.rules):
        w = wheel(r, healthy, weights) if k.flags & PICKS else []
        if off + len(w) > WHEEL_SLOTS:
            w = []
        out.append((off, w))
        off += len(w)
    return out
