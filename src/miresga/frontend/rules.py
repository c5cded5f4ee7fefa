"""L7 routing rules: compile the config's `rules` once, then match request heads (first match wins).

A request no rule matches goes to an implicit default rule named `default` over every back-end
(round robin, offload `auto`), so a config without a catch-all still routes everything; write
your own catch-all last to change that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from miresga.control.config import Deployment, Rule
from miresga.frontend.http import RequestHead

Predicate = Callable[[RequestHead], bool]


@dataclass(frozen=True)
class CompiledRule:
    name: str
    index: int                      # global: the service's first index + position in its rules (+ len: implicit default)
    pool: tuple[int, ...]           # back-end indices (positions in cfg.hosts.backends)
    policy: str
    hash_header: str | None
    offload: str
    offload_threshold: int
    offload_after_requests: int = 0
    predicates: tuple[Predicate, ...] = field(default=(), repr=False)
    offload_wait: bool = False      # hold each request until its entry is installed (Prism's sync)
    redispatch: int = 1             # other back-ends tried when the splice SYN fails, before a 503

    def matches(self, head: RequestHead) -> bool:
        for p in self.predicates:   # a plain loop: all() over a generator costs 3x per request
            if not p(head):
                return False
        return True


def _host_predicate(pattern: str) -> Predicate:
    pattern = pattern.lower()
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return lambda h: h.host is not None and h.host.endswith(suffix)
    return lambda h: h.host == pattern


def _predicates(rule: Rule) -> tuple[Predicate, ...]:
    m = rule.match
    out: list[Predicate] = []
    if m.host is not None:
        out.append(_host_predicate(m.host))
    if m.method is not None:
        methods = frozenset(x.strip().upper() for x in m.method.split(","))
        out.append(lambda h: h.method in methods)
    if m.path_exact is not None:
        exact = m.path_exact
        out.append(lambda h: h.path == exact)
    if m.path_prefix is not None:
        prefix = m.path_prefix
        out.append(lambda h: h.path.startswith(prefix))
    if m.path_regex is not None:
        rx = re.compile(m.path_regex)
        out.append(lambda h: rx.search(h.path) is not None)
    for name, pattern in m.headers.items():
        hrx, lname = re.compile(pattern), name.lower()
        out.append(lambda h, hrx=hrx, lname=lname: (v := h.headers.get(lname)) is not None
                   and hrx.search(v) is not None)
    return tuple(out)


class RuleSet:
    """One service's rules. Rule indices are global over all services (`service_rules`): the
    selectors, the kernel path's rule table and its REQUEST events all index by them."""

    def __init__(self, cfg: Deployment, service: int = 0, first: int = 0):
        index = {b.name: i for i, b in enumerate(cfg.hosts.backends)}
        svc = cfg.all_services()[service]
        rules = svc.rules
        self.service, self.first = service, first
        # Rule names in metrics and the access log: another service's are `service/rule`.
        prefix = f"{svc.name}/" if service else ""
        self.rules: list[CompiledRule] = [
            CompiledRule(prefix + r.name, first + i, tuple(index[n] for n in r.pool), r.policy, r.hash_header, r.offload,
                         r.offload_threshold, r.offload_after_requests, _predicates(r),
                         offload_wait=r.offload == "always" and r.offload_wait, redispatch=r.redispatch)
            for i, r in enumerate(rules)]
        self.default = CompiledRule(prefix + "default", first + len(rules), tuple(range(len(cfg.hosts.backends))),
                                    "round_robin", None, "auto", 65536,
                                    Rule.model_fields["offload_after_requests"].default, ())
        if self.rules and not self.rules[-1].predicates:
            self.default = self.rules[-1]
        # A response segment that carries the back-end's FIN ends the response: nothing is left
        # to offload, unless some `auto` rule offloads at 0 bytes to come.
        self.fin_ends_watch = all(r.offload_threshold > 0 for r in self.all() if r.offload == "auto")

    def match(self, head: RequestHead) -> CompiledRule:
        for r in self.rules:
            if r.matches(head):
                return r
        return self.default

    def all(self) -> list[CompiledRule]:
        return self.rules if self.default in self.rules else [*self.rules, self.default]


def service_rules(cfg: Deployment) -> list[RuleSet]:
    """Every service's rules, by service index, with global rule indices (service 0's first)."""
    out: list[RuleSet] = []
    first = 0
    for n in range(len(cfg.all_services())):
        out.append(RuleSet(cfg, n, first))
        first += len(out[-1].all())
    return out
