"""The switch-controller adapter of the front-end, against a fake client with the SwitchClient
methods: order of inserts and deletes, queued inserts polled to the end, failures, keys of
several services (client ip, client port, svc)."""

from __future__ import annotations

import queue
import time

import pytest

from frontend_helpers import NOW, Backend, Client, deletes, get, inserts, make_cfg, sends
from miresga.frontend.engine import Engine, OffloadCheck, OffloadDelete, OffloadInsert
from miresga.frontend.switch_link import (FetchIdle, Heartbeat, OffloadBatcher, OffloadWorker, Read,
                                          Register, Write)
from miresga.frontend.engine.states import Offload


class FakeSwitchClient:
    """Same semantics as switch.controller.OffloadTable for what we use: inserts before deletes
    within one write; queue mode answers "queued" and installs on the next read."""

    def __init__(self, queue_mode=False, fail_writes=0, idle=()):
        self.table, self.queued, self.calls = {}, {}, []
        self.idle_keys = list(idle)
        self.queue_mode, self.fail_writes = queue_mode, fail_writes

    def register(self, name, address):
        self.calls.append(("register", name))

    def heartbeat(self, name):
        pass

    def idle(self):
        return list(self.idle_keys)

    def write(self, ins, dels):
        self.calls.append(("write", list(ins), list(dels)))
        if self.fail_writes:
            self.fail_writes -= 1
            raise ConnectionError("controller unreachable")
        out = []
        for ip, port, svc, b in ins:
            k = (ip, port, svc)
            if k in self.table or k in self.queued:
                out.append("exists")
            elif self.queue_mode:
                self.queued[k] = b
                out.append("queued")
            else:
                self.table[k] = b
                out.append("ok")
        for k in dels:
            k = tuple(k)
            out.append("ok" if self.table.pop(k, None) is not None or self.queued.pop(k, None) is not None
                       else "not_found")
        return out

    def read(self, keys):
        self.table.update(self.queued)
        self.queued.clear()
        return {k: "installed" if k in self.table else "absent" for k in keys}


def run_worker(fake, actions, wait=0.3):
    results = queue.SimpleQueue()
    w = OffloadWorker(lambda: fake, "fe1", "10.0.2.2", results, lambda: None, idle_interval=0.05,
                      poll_interval=0.01)
    for a in actions:
        w.submit(a)
    w.start()
    time.sleep(wait)
    w.stop.set()
    w.join(2)
    out = []
    while not results.empty():
        out.append(results.get())
    return out


def test_insert_then_delete_of_one_key_keep_their_order():
    fake = FakeSwitchClient()
    res = run_worker(fake, [OffloadInsert(1, 2, 0, 7), OffloadDelete(1, 2), OffloadInsert(3, 4, 1, 8)])
    writes = [c for c in fake.calls if c[0] == "write"]
    assert writes[0][1:] == ([(1, 2, 0, 0), (3, 4, 0, 1)], [])   # split: the delete must come after
    assert writes[1][1:] == ([], [(1, 2, 0)])
    assert fake.table == {(3, 4, 0): 1}
    assert ("offload", 1, 2, 7, "ok", 0) in res and ("offload", 3, 4, 8, "ok", 0) in res


def test_delete_then_insert_of_many_keys_takes_two_writes():
    fake = FakeSwitchClient()
    fake.table.update({(1, p, 0): 0 for p in range(10)})
    acts = [a for p in range(10) for a in (OffloadDelete(1, p), OffloadInsert(1, p, 1, 100 + p))]
    res = run_worker(fake, acts)
    writes = [c for c in fake.calls if c[0] == "write"]
    assert len(writes) == 2 and writes[0][1] == [] and len(writes[0][2]) == 10 and len(writes[1][1]) == 10
    assert fake.table == {(1, p, 0): 1 for p in range(10)}
    assert sorted(r[3] for r in res if r[0] == "offload" and r[4] == "ok") == list(range(100, 110))


def test_queued_insert_polled_until_installed():
    fake = FakeSwitchClient(queue_mode=True)
    res = run_worker(fake, [OffloadInsert(1, 2, 0, 7)])
    assert [r for r in res if r[0] == "offload"] == [("offload", 1, 2, 7, "queued", 0),
                                                      ("offload", 1, 2, 7, "installed", 0)]


def test_failed_write_reports_error_and_retries_deletes():
    fake = FakeSwitchClient(fail_writes=1)
    fake.table[(9, 9, 0)] = 0
    res = run_worker(fake, [OffloadInsert(1, 2, 0, 7), OffloadDelete(9, 9)], wait=1.0)
    assert ("offload", 1, 2, 7, "error", 0) in res
    assert fake.table == {}, "the delete was retried after the failure"


def test_check_reports_absent_entry():
    fake = FakeSwitchClient()
    res = run_worker(fake, [OffloadCheck(5, 6, 3)])
    assert ("offload", 5, 6, 3, "absent", 0) in res


def test_engine_verifies_installed_entry_on_idle_timer():
    eng = Engine(make_cfg())
    cl = Client(eng)
    eng.segment(cl.seg(get("/dl/x")), NOW)
    acts = eng.segment(Backend(eng, 2, cl).synack(), NOW)
    (ins,) = inserts(acts)
    eng.offload_result(cl.ip, cl.port, ins.gen, "ok", NOW)
    t = NOW + eng.fe.idle_timeout_s + 1
    (chk,) = [a for a in eng.tick(t) if isinstance(a, OffloadCheck)]
    assert (chk.client_ip, chk.client_port, chk.gen) == (cl.ip, cl.port, ins.gen)
    eng.offload_result(cl.ip, cl.port, chk.gen, "installed", t)
    assert eng.conns[cl.key].offload is Offload.INSTALLED
    eng.offload_result(cl.ip, cl.port, chk.gen, "absent", t)      # someone removed it
    assert eng.conns[cl.key].offload is Offload.NONE
    a = eng.tick(t + eng.fe.idle_timeout_s + 1)                   # now our own timer expires it
    assert not eng.conns and not deletes(a) and sends(a)


# ---------------------------------------------------------------------- the batcher, without a thread

def cycle(link, fake, actions, now):
    """One cycle of OffloadWorker.run with the fake as the controller, synchronously."""
    link.start(actions, now)
    out = []
    try:
        while (call := link.next_call()) is not None:
            if isinstance(call, Register):
                fake.register(call.name, call.address)
                reply = None
            elif isinstance(call, Write):
                reply = fake.write(list(call.inserts), list(call.deletes))
            elif isinstance(call, Read):
                reply = fake.read(list(call.keys))
            elif isinstance(call, FetchIdle):
                reply = fake.idle()
            else:
                reply = fake.heartbeat(call.name)
            out += link.answer(reply)
    except ConnectionError:
        out += link.failed()
    return out


class DownFake(FakeSwitchClient):
    """A controller that can be switched off: every call fails, registration included."""

    def __init__(self):
        super().__init__()
        self.down = False

    def register(self, name, address):
        if self.down:
            raise ConnectionError("controller unreachable")
        super().register(name, address)

    def heartbeat(self, name):
        if self.down:
            raise ConnectionError("controller unreachable")


def test_delete_of_reused_key_is_retried_when_reconnect_fails():
    """A delete of key k answered in one cycle must not count as answered in a later cycle: a
    new connection from the same client ip:port offloaded and closed while the controller is
    down must have its delete retried."""
    fake, link, k = DownFake(), OffloadBatcher("fe1", "10.0.2.2"), (1, 2, 0)
    cycle(link, fake, [OffloadInsert(1, 2, 0, 7)], NOW)
    # k's first connection ends and the same ip:port comes back at once, offloaded again
    cycle(link, fake, [OffloadDelete(1, 2), OffloadInsert(1, 2, 0, 8)], NOW + 0.1)
    assert fake.table == {k: 0}
    fake.down = True
    cycle(link, fake, [], NOW + 2)                              # the heartbeat fails: link lost
    assert not link.registered
    cycle(link, fake, [OffloadDelete(1, 2)], NOW + 2.1)         # reconnect fails: delete unanswered
    assert link.retry_deletes == [k]
    fake.down = False
    cycle(link, fake, [], NOW + 3)
    assert fake.table == {}, "the delete was retried once the controller answered"


def test_retried_delete_is_kept_when_its_write_fails():
    fake, link, k = FakeSwitchClient(), OffloadBatcher("fe1", "10.0.2.2"), (9, 9, 0)
    fake.table[k] = 0
    fake.fail_writes = 2
    res = cycle(link, fake, [OffloadInsert(1, 2, 0, 7), OffloadDelete(9, 9)], NOW)
    assert res == [("offload", 1, 2, 7, "error", 0)] and link.retry_deletes == [(1, 2, 0), k]
    cycle(link, fake, [], NOW + 0.5)                            # the retry's Write fails too
    cycle(link, fake, [], NOW + 1)
    assert fake.table == {}, "the retried deletes outlived their failed Write"


def test_second_delete_of_a_key_in_one_batch_is_retried_when_its_write_fails():
    """delete k, insert k, delete k in one batch take three Writes; when only the last fails, the
    first delete's answer must not stand for the second."""
    fake, link, k = FakeSwitchClient(), OffloadBatcher("fe1", "10.0.2.2"), (1, 2, 0)
    fake.table[k] = 0
    writes = []
    real_write = fake.write

    def write(ins, dels):
        writes.append((ins, dels))
        if len(writes) == 3:
            raise ConnectionError("controller unreachable")
        return real_write(ins, dels)
    fake.write = write
    cycle(link, fake, [OffloadDelete(1, 2), OffloadInsert(1, 2, 0, 8), OffloadDelete(1, 2)], NOW)
    assert len(writes) == 3 and fake.table == {k: 0}
    assert link.retry_deletes == [k]
    cycle(link, fake, [], NOW + 0.5)
    assert fake.table == {}


# ---------------------------------------------------------------------- several services


def test_one_client_port_two_services_are_two_keys():
    """The same client ip:port offloaded towards two services (two back-ends): one Write, two
    entries; deleting one service's leaves the other's; answers carry the service."""
    fake, link = FakeSwitchClient(), OffloadBatcher("fe1", "10.0.2.2")
    res = cycle(link, fake, [OffloadInsert(1, 2, 0, 7, 0), OffloadInsert(1, 2, 1, 8, 2)], NOW)
    writes = [c for c in fake.calls if c[0] == "write"]
    assert writes == [("write", [(1, 2, 0, 0), (1, 2, 2, 1)], [])]   # not split: the keys differ
    assert fake.table == {(1, 2, 0): 0, (1, 2, 2): 1}
    assert ("offload", 1, 2, 7, "ok", 0) in res and ("offload", 1, 2, 8, "ok", 2) in res
    cycle(link, fake, [OffloadDelete(1, 2, 2), OffloadCheck(1, 2, 7, 0), OffloadCheck(1, 2, 8, 2)], NOW + 0.1)
    assert fake.table == {(1, 2, 0): 0}
    res = cycle(link, fake, [OffloadCheck(1, 2, 7, 0), OffloadCheck(1, 2, 8, 2)], NOW + 0.2)
    assert ("offload", 1, 2, 7, "installed", 0) in res and ("offload", 1, 2, 8, "absent", 2) in res


def test_queued_insert_of_a_service_polled_by_its_key_and_idle_keys_keep_the_service():
    fake = FakeSwitchClient(queue_mode=True, idle=[(5, 6, 3)])
    res = run_worker(fake, [OffloadInsert(1, 2, 0, 7, 1)])
    assert [r for r in res if r[0] == "offload"] == [("offload", 1, 2, 7, "queued", 1),
                                                      ("offload", 1, 2, 7, "installed", 1)]
    assert fake.table == {(1, 2, 1): 0}
    assert ("idle", [(5, 6, 3)]) in res
