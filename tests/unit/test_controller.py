"""Controller logic with a fake clock: capacity, rate, queueing, entry states, idle reports,
membership moves, API errors."""

from __future__ import annotations

import collections

import pytest

from miresga.control.config import load_config
from miresga.switch.controller import (BUCKETS, ApiError, Controller, EntryState, Membership, OffloadTable, Status,
                                       idle_entries)
from miresga.switch.profiles import TOFINO_OFFLOAD_CAPACITY, Profile, profile_from_config

SOFT = Profile("software", 1000, None, 0.0)


def tofino(rate=1000.0, latency=0.001, capacity=TOFINO_OFFLOAD_CAPACITY):
    return Profile("tofino", capacity, rate, latency)


def ins(n, start=0, backend=0):
    return [(0x0A000102, 1024 + start + i, 0, backend) for i in range(n)]


def test_profiles_from_config():
    cfg = load_config()
    assert profile_from_config(cfg.switch).rate is None
    t = profile_from_config(cfg.switch.model_copy(update={"profile": "tofino"}))
    assert (t.capacity, t.rate, t.batch_latency_s) == (143_360, 17000.0, 0.001)


def test_software_profile_installs_at_once():
    t = OffloadTable(SOFT, 3, now=0)
    assert t.write(ins(3), [], now=0) == [Status.OK] * 3
    done = t.tick(0)
    assert [op.key[1] for op in done] == [1024, 1025, 1026]
    assert t.read([(0x0A000102, 1024, 0), (0x0A000102, 9, 0)]) == {(0x0A000102, 1024, 0): EntryState.INSTALLED,
                                                            (0x0A000102, 9, 0): EntryState.ABSENT}


def test_statuses_exists_not_found():
    t = OffloadTable(SOFT, 3, now=0)
    t.write(ins(1), [], 0)
    t.tick(0)
    assert t.write(ins(1), [(0x0A000102, 1024, 0), (0x0A000102, 5000, 0)], 0) == [
        Status.EXISTS, Status.OK, Status.NOT_FOUND]
    assert [op.kind for op in t.tick(0)] == ["delete"]
    assert t.read([(0x0A000102, 1024, 0)])[(0x0A000102, 1024, 0)] == EntryState.ABSENT


def test_capacity_enforced_and_visible():
    t = OffloadTable(Profile("software", 10, None, 0.0), 3, now=0)
    st = t.write(ins(12), [], 0)
    assert st == [Status.OK] * 10 + [Status.TABLE_FULL] * 2
    t.tick(0)
    assert len(t.installed) == 10 and t.stats["table_full"] == 2
    t.write([], [(0x0A000102, 1024, 0)], 0)       # a delete frees one slot
    assert t.write(ins(1, start=50), [], 0) == [Status.OK]


def test_rate_limit_queues_and_applies_over_time():
    t = OffloadTable(tofino(rate=1000, latency=0.001), 3, now=0)
    st = t.write(ins(100), [], now=0)
    assert st == [Status.QUEUED] * 100
    first = t.tick(0)                      # burst = 10 ms worth = 10 ops, handed to the driver ...
    assert first == [] and t.queue_length() == 100
    assert len(t.tick(0.001)) == 10        # ... and installed one batch latency later
    applied = 10
    now = 0.001
    while now < 0.2 and t.queue_length():
        now += 0.001
        applied += len(t.tick(now))
    assert applied == 100                  # none lost ...
    assert 0.085 <= now <= 0.1             # ... at 1000 ops/s (90 after the burst take ~90 ms)
    assert len(t.installed) == 100 and t.stats["applied"] == 100


def test_rate_is_shared_by_deletes_and_keeps_order():
    t = OffloadTable(tofino(rate=100, latency=0.0), 3, now=0)
    t.write(ins(1), [], 0)
    t.tick(0)
    assert t.write([], [(0x0A000102, 1024, 0)], 0) == [Status.QUEUED]
    assert t.write(ins(1, backend=2), [], 0) == [Status.QUEUED]   # re-insert after the delete
    assert t.read([(0x0A000102, 1024, 0)])[(0x0A000102, 1024, 0)] == EntryState.INSTALLED  # still, until applied
    now, seen = 0.0, []
    while len(seen) < 2:
        now += 0.01
        seen += [(op.kind, op.backend) for op in t.tick(now)]
    assert seen == [("delete", 0), ("insert", 2)]
    assert t.installed == {(0x0A000102, 1024, 0): 2}


def test_delete_of_queued_insert_cancels_it():
    t = OffloadTable(tofino(rate=1, latency=0.0), 3, now=0)
    t.write(ins(2), [], 0)
    ops = t.tick(0)  # the burst (one op) goes at once; the second waits for a token
    assert t.read([(0x0A000102, 1025, 0)])[(0x0A000102, 1025, 0)] == EntryState.QUEUED
    assert t.write([], [(0x0A000102, 1025, 0)], 0) == [Status.OK]
    assert t.read([(0x0A000102, 1025, 0)])[(0x0A000102, 1025, 0)] == EntryState.ABSENT
    for s in range(1, 5):
        ops += t.tick(float(s))
    assert [(o.kind, o.key[1]) for o in ops] == [("insert", 1024)]


def test_next_due_tells_the_adapter_when_to_wake():
    t = OffloadTable(tofino(rate=100, latency=0.005), 3, now=0)
    assert t.next_due() is None
    t.write(ins(5), [], 0)
    t.tick(0)               # one op (burst 1) in flight until 0.005
    assert t.next_due() == pytest.approx(0.005)


@pytest.mark.parametrize("inserts,deletes,code,words", [
    ([(1, 80, 0, 7)], [], "INVALID_ARGUMENT", "backend index 7"),
    ([(1, 0, 0, 0)], [], "INVALID_ARGUMENT", "port 0"),
    ([(1 << 33, 80, 0, 0)], [], "INVALID_ARGUMENT", "not an IPv4"),
    ([], [(1, 70000, 0)], "INVALID_ARGUMENT", "entry 0"),
    ([(1, 80, 16, 0)], [], "INVALID_ARGUMENT", "service 16 out of range 0..15"),
    ([], [(1, 80, 0), (1, 80, -1)], "INVALID_ARGUMENT", "entry 1: service -1"),
    (ins(40000) + ins(30000, start=40000), [], "INVALID_ARGUMENT", "limit"),
])
def test_bad_writes_refused_whole_with_code(inserts, deletes, code, words):
    t = OffloadTable(SOFT, 3, now=0)
    with pytest.raises(ApiError) as e:
        t.write(inserts, deletes, 0)
    assert e.value.code == code and words in e.value.message
    assert not t.intended  # nothing of a refused batch is applied


def test_one_client_port_holds_an_entry_per_service():
    """Keys are (client ip, client port, svc): the same client port offloaded towards two services
    is two entries, each deleted on its own; a service beyond the configured ones is answered on
    its own (`unknown_service`; a delete `not_found`), the rest of the call applied."""
    t = OffloadTable(SOFT, 3, now=0, n_services=3)
    ip = 0x0A000102
    assert t.write([(ip, 40000, 0, 0), (ip, 40000, 2, 1), (ip, 40000, 2, 2)], [], 0) == [
        Status.OK, Status.OK, Status.EXISTS]
    t.tick(0)
    assert t.installed == {(ip, 40000, 0): 0, (ip, 40000, 2): 1}
    assert t.write([], [(ip, 40000, 2), (ip, 40000, 1)], 0) == [Status.OK, Status.NOT_FOUND]
    t.tick(0)
    assert t.read([(ip, 40000, 0), (ip, 40000, 2)]) == {(ip, 40000, 0): EntryState.INSTALLED,
                                                       (ip, 40000, 2): EntryState.ABSENT}
    assert t.write([(ip, 40001, 3, 0), (ip, 40002, 0, 1)], [(ip, 40001, 3)], 0) == [
        Status.UNKNOWN_SERVICE, Status.OK, Status.NOT_FOUND]
    t.tick(0)
    assert (ip, 40002, 0) in t.installed and not any(k[2] == 3 for k in t.intended)


def test_idle_entries():
    hits = {(1, 1): 0, (1, 2): 9_000_000_000, (1, 3): 10_500_000_000}
    assert idle_entries(hits, 11_000_000_000, 1.5) == [(1, 1), (1, 2)]


# --- membership -----------------------------------------------------------------------------------

def test_static_members_share_buckets_before_registering():
    m = Membership(["fe1", "fe2", "fe3"], now=0)
    c = collections.Counter(m.assign)
    assert sorted(c.values()) == [85, 85, 86]
    assert m.tick(100) == {}  # never registered: never declared dead


def test_dead_member_buckets_spread_and_return_moves_few():
    m = Membership(["fe1", "fe2", "fe3"], now=0, dead_after_s=3)
    for n in ("fe1", "fe2", "fe3"):
        m.register(n, "10.0.2.2", 0)
    before = list(m.assign)
    for n in ("fe1", "fe3"):
        m.heartbeat(n, 2.5)
    moved = m.tick(3.5)
    assert set(moved) == {b for b in range(BUCKETS) if before[b] == "fe2"}  # only fe2's buckets move
    assert set(moved.values()) == {"fe1", "fe3"}
    assert sorted(collections.Counter(m.assign).values()) == [128, 128]
    # fe2 returns: it gets a fair share back, and only that many buckets move
    back = m.register("fe2", "10.0.3.2:0", 4.0)
    assert set(back.values()) == {"fe2"}
    assert len(back) == 85
    assert all(before[b] == "fe2" for b in back)  # its own buckets, where possible
    assert sorted(collections.Counter(m.assign).values()) == [85, 85, 86]


def test_last_member_dying_keeps_assignment():
    m = Membership(["fe1"], now=0, dead_after_s=1)
    m.register("fe1", "", 0)
    assert m.tick(5) == {}
    assert m.assign.count("fe1") == BUCKETS


def test_unknown_member_refused():
    m = Membership(["fe1"], now=0)
    with pytest.raises(ApiError) as e:
        m.register("fe9", "10.0.2.2", 0)
    assert e.value.code == "NOT_FOUND" and "fe9" in e.value.message
    with pytest.raises(ApiError) as e:
        m.register("fe1", "not-an-ip", 0)
    assert e.value.code == "INVALID_ARGUMENT"


def test_controller_bundles_actions():
    c = Controller(["fe1", "fe2"], 3, SOFT, idle_timeout_s=1.0, now=0, dead_after_s=2)
    st, act = c.write(ins(2), [], 0)
    assert st == [Status.OK, Status.OK] and len(act.ops) == 2
    buckets, _ = c.register("fe1", "10.0.2.2", 0)
    c.register("fe2", "10.0.3.2", 0)
    assert len(buckets) == 128
    c.heartbeat("fe1", 1.5)
    act = c.tick(2.5)
    assert len(act.buckets) == 128 and set(act.buckets.values()) == {"fe1"}
    s = c.stats()
    assert s["installed"] == 2 and s["members"][1]["state"] == "dead" and s["bucket_moves"] == 128
