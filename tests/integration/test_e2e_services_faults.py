"""A front-end dies while one client ip:port downloads from three services on the slow path, on
both testbed layouts (its own testbed: the test breaks it on purpose).

A back-end's segment does not say which VIP its client reached. When the front-end holding a
connection dies, the one that takes its bucket adopts the connection from the back-end's next
segment, and must answer the client from the right VIP:port — which it can tell only when one
service's rules use that back-end (docs/deploy.md, "Several VIPs"). The config makes both cases:

    default  VIP:80      web      → be1, be2   (be1 shared with `shared`)
    api      VIP:8080    api      → be3         (be3 only api's)
    shared   VIP+1:80    shared   → be1         (be1 also default's)

One client port opens `shared` (be1), then `default` (be2: never be1 for the same client port),
then `api` (be3); all three hash to one bucket, so one front-end holds them all. It is killed
mid-download. The default and api downloads must complete byte-exact through the survivor
(adopted, answered from VIP:80 and VIP:8080: from any other address the client's kernel would
not take them); the shared one cannot be adopted (be1 serves two services): its back-end's
segments are dropped and counted, and the other two are not disturbed.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import signal
import socket
import threading
import time

import pytest

from test_e2e import e2e_config, layout_testbed, objects, sha, wait_for
from test_e2e_services import connect, read_paced
from miresga.bpf.netns import in_netns
from miresga.control.config import Endpoint, Rule, Service

pytestmark = pytest.mark.netns

PORT = 47411
SIZE = 100 << 20
RATE = 8e6          # bytes/s: the download lasts ~13 s, the front-end is killed ~2 s in


def faults_config(path=None):
    cfg = e2e_config(path)
    vip = cfg.vip.address
    web = Rule(name="web", pool=["be1", "be2"], offload="never")
    api = Service(name="api", vip=Endpoint(address=vip, port=8080),
                  rules=[Rule(name="api", pool=["be3"], offload="never")])
    shared = Service(name="shared", vip=Endpoint(address=ipaddress.IPv4Address(int(vip) + 1), port=80),
                     rules=[Rule(name="shared", pool=["be1"], offload="never")])
    return cfg.model_copy(update={"rules": [web], "services": [api, shared]})


@pytest.fixture(scope="module", params=["classic", "realistic"])
def tb(request):
    with layout_testbed(request.param, faults_config) as t:
        yield t


def fe_metrics(tb) -> dict[str, dict]:
    return {f.name: tb.frontend_metrics(f.name) for f in tb.cfg.hosts.frontends}


def held_by(tb) -> str | None:
    """The front-end holding all three connections (metrics are published once a second)."""
    for name, m in fe_metrics(tb).items():
        if sum(m.get("connections", {}).values()) >= 3:
            return name
    return None


def test_frontend_killed_adopts_each_services_connection_from_its_vip(tb):
    obj = objects(tb)[SIZE]
    results: dict[str, object] = {}

    def download(name: str, c) -> None:
        try:
            c.request("GET", "/download/100m")
            r = c.getresponse()
            results[name] = (r.status, read_paced(r, RATE))
        except (OSError, http.client.HTTPException) as e:   # shared's is to fail; checked below
            results[name] = e

    with in_netns(tb.ns("c1")):
        conns = {name: connect(tb, name, PORT, timeout=20) for name in ("shared", "default", "api")}
    readers = [threading.Thread(target=download, args=item) for item in conns.items()]
    try:
        for t in readers:
            t.start()
        victim = wait_for(lambda: held_by(tb), 10, "one front-end to hold the three connections")
        survivor = next(f.name for f in tb.cfg.hosts.frontends if f.name != victim)
        time.sleep(1.0)
        assert all(t.is_alive() for t in readers), "a download ended before the kill: nothing was tested"
        os.kill(tb.state["procs"][f"frontend-{victim}"], signal.SIGKILL)
        for t in readers:
            t.join(60)
    finally:
        for c in conns.values():
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    time.sleep(1.2)                            # metrics are published once a second
    m = tb.frontend_metrics(survivor)
    seen = {k: v if not isinstance(v, tuple) else (v[0], len(v[1])) for k, v in results.items()}
    for name in ("default", "api"):
        got = results[name]
        assert isinstance(got, tuple), f"{name}: {seen}"
        status, body = got
        assert status == 200 and len(body) == SIZE and sha(body) == obj["sha256"], (name, seen)
    assert not isinstance(results["shared"], tuple), f"the shared back-end's download ended: {seen}"
    # Adopted: default's and api's, never shared's. be1's segments are dropped and counted: as
    # adopt_ambiguous, or as stale_backend while the port's default connection (whose rules could
    # have used be1) is held — either way not answered from a guessed VIP.
    assert m["events"].get("adopted", 0) == 2, m["events"]
    assert m["drops"].get("adopt_ambiguous", 0) + m["drops"].get("stale_backend", 0) >= 1, m["drops"]
