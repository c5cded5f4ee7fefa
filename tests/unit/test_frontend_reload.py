"""The front-end's reload (operations.py) against a stand-in for the server: applied whole or
refused whole."""

from __future__ import annotations

from types import SimpleNamespace

import yaml

from frontend_helpers import make_cfg
from miresga.frontend.engine import Engine
from miresga.frontend.health import HealthTracker
from miresga.frontend.operations import Operations

RULES = """
rules:
  - {name: api, match: {path_prefix: /api/}, pool: [be1, be2], offload: never}
  - {name: default, pool: [be1, be2, be3]}
"""


def server(tmp_path, cfg):
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    srv = SimpleNamespace(cfg=cfg, engine=Engine(cfg), health=HealthTracker(3),
                          health_worker=SimpleNamespace(path="/health", interval=1.0, timeout=0.5),
                          opts=SimpleNamespace(name="fe1"), kernel_rules=lambda: None)
    return srv, f, Operations(srv, f)


def edit(f, change):
    d = yaml.safe_load(f.read_text())
    change(d)
    f.write_text(yaml.safe_dump(d, sort_keys=False))


def test_reload_applies_rules_drain_timeouts_and_log(tmp_path):
    srv, f, ops = server(tmp_path, make_cfg(RULES))
    log = tmp_path / "a-{frontend}.log"

    def change(d):
        d["rules"][0]["pool"] = ["be3"]
        d["hosts"]["backends"][1]["drain"] = True
        d["frontend"]["idle_timeout_s"] = 5.0
        d["frontend"]["health_path"] = "/ready"
        d["frontend"]["access_log"] = {"file": str(log), "format": "combined"}
    edit(f, change)
    assert ops.reload() == []
    eng = srv.engine
    assert eng.rulesets[0].rules[0].pool == (2,) and eng.pools.drain == [False, True, False]
    assert eng.fe.idle_timeout_s == 5.0 and srv.health_worker.path == "/ready"
    assert eng.alog is not None and eng.alog.fmt == "combined" and (tmp_path / "a-fe1.log").exists()
    assert eng.stats.events["reload_ok"] == 1
    ops.close()


def test_refused_reload_changes_nothing(tmp_path):
    srv, f, ops = server(tmp_path, make_cfg(RULES))
    eng, rules, before = srv.engine, srv.engine.rulesets, srv.cfg
    edit(f, lambda d: d["rules"][0].update(pool=["be9"]))
    assert "unknown back-ends ['be9']" in ops.reload()[0]

    def unwritable_log(d):
        d["rules"][0]["pool"] = ["be3"]
        d["frontend"]["access_log"] = {"file": str(tmp_path / "no" / "such" / "dir.log")}
    edit(f, unwritable_log)
    assert "No such file" in ops.reload()[0]

    def host_moved(d):
        d["rules"][0]["pool"] = ["be3"]
        d["hosts"]["backends"][0]["address"] = "10.0.4.9/24"     # another address in its subnet
    edit(f, host_moved)
    assert "hosts.backends.0 (be1): address need a restart" in ops.reload()
    assert srv.cfg is before and eng.rulesets is rules and eng.alog is None and ops.file is None
    assert eng.stats.events["reload_refused"] == 3 and eng.stats.events["reload_ok"] == 0
