"""Selection policies and health hysteresis."""

from __future__ import annotations

import collections

from miresga.frontend.health import HealthTracker
from miresga.frontend.http import RequestHead
from miresga.frontend.rules import CompiledRule
from miresga.frontend.selection import Selector

NAMES = [f"be{i}" for i in range(1, 9)]


def sel(policy, pool=(0, 1, 2), weights=(1,) * 8, header=None):
    return Selector(CompiledRule("r", 0, tuple(pool), policy, header, "auto", 0), NAMES, list(weights))


def test_round_robin_even_and_skips_unhealthy():
    s = sel("round_robin")
    got = collections.Counter(s.pick([True] * 3, [0] * 3, 1, None) for _ in range(300))
    assert got == {0: 100, 1: 100, 2: 100}
    got = collections.Counter(s.pick([True, False, True], [0] * 3, 1, None) for _ in range(100))
    assert set(got) == {0, 2} and abs(got[0] - got[2]) <= 1
    assert s.pick([False] * 3, [0] * 3, 1, None) is None


def test_weighted_distribution_and_smoothness():
    s = sel("weighted", weights=(5, 1, 0))
    picks = [s.pick([True] * 3, [0] * 3, 1, None) for _ in range(600)]
    got = collections.Counter(picks)
    assert got == {0: 500, 1: 100}          # weight 0 never chosen
    # smooth: the light back-end is spread out, never two in a row
    assert all(not (a == b == 1) for a, b in zip(picks, picks[1:]))


def test_least_conn_picks_the_idlest_and_rotates_ties():
    s = sel("least_conn")
    assert s.pick([True] * 3, [5, 2, 9], 1, None) == 1
    assert s.pick([True, False, True], [5, 2, 9], 1, None) == 0
    ties = {s.pick([True] * 3, [1, 1, 1], 1, None) for _ in range(6)}
    assert ties == {0, 1, 2}


def test_hash_client_consistent_when_a_backend_leaves_or_joins():
    pool = tuple(range(5))
    s = sel("hash_client", pool=pool)
    clients = list(range(0x0A000000, 0x0A000000 + 4000))
    before = {c: s.pick([True] * 5 + [False] * 3, [0] * 8, c, None) for c in clients}
    assert max(collections.Counter(before.values()).values()) < 4000 / 5 * 1.25   # balanced
    # be3 leaves: only its clients move
    after = {c: s.pick([True, True, False, True, True] + [False] * 3, [0] * 8, c, None) for c in clients}
    moved = [c for c in clients if before[c] != after[c]]
    assert all(before[c] == 2 for c in moved) and len(moved) == sum(1 for v in before.values() if v == 2)
    # a sixth back-end joins: only ~1/6 of clients move, all of them to the newcomer
    s6 = sel("hash_client", pool=tuple(range(6)))
    joined = {c: s6.pick([True] * 6 + [False] * 2, [0] * 8, c, None) for c in clients}
    moved = [c for c in clients if before[c] != joined[c]]
    assert all(joined[c] == 5 for c in moved) and 0.10 < len(moved) / len(clients) < 0.23


def test_hash_header_uses_header_then_client():
    s = sel("hash_header", header="X-User")
    h = lambda v: RequestHead("GET", "/", "", None, {"x-user": v})
    a = {s.pick([True] * 3, [0] * 3, ip, h("alice")) for ip in range(50)}
    assert len(a) == 1                       # same header, any client: same back-end
    spread = {s.pick([True] * 3, [0] * 3, 1, h(f"u{i}")) for i in range(60)}
    assert spread == {0, 1, 2}
    no_hdr = RequestHead("GET", "/", "", None, {})
    assert s.pick([True] * 3, [0] * 3, 7, no_hdr) == sel("hash_client").pick([True] * 3, [0] * 3, 7, None)


def test_health_rise_and_fall():
    t = HealthTracker(2, rise=2, fall=3)
    assert [t.observe(0, False) for _ in range(3)] == [None, None, False]
    assert t.healthy == [False, True]
    assert [t.observe(0, True), t.observe(0, False), t.observe(0, True), t.observe(0, True)] == \
        [None, None, None, True]             # a flap resets the streak
    assert t.observe(1, True) is None
