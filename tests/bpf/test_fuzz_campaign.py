"""The fuzz campaign in `make test` (docs/hardening.md): every target, a fixed seed, 100k inputs
and at most 12 s each (under a minute in all); no invariant may be violated. Saved failing inputs replay clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from miresga.control.config import DEFAULT_CONFIG, parse_config
from miresga.fuzz.campaign import replay_case, run_campaign, summary
from miresga.fuzz.harness import TARGETS

SEED = 20261128
BUDGET = 100_000
TIME_LIMIT_S = 12.0
MIN_UNITS = 2_000        # even on a loaded machine, a run that did less would prove little
CASES = sorted((Path(__file__).parents[1] / "fuzz_cases").glob("*.json"))


@pytest.fixture(scope="module")
def cfg():
    return parse_config(DEFAULT_CONFIG.read_text())


@pytest.mark.parametrize("target", list(TARGETS))
def test_short_campaign_violates_nothing(cfg, target, tmp_path):
    (r,) = run_campaign(cfg, [target], SEED, BUDGET, TIME_LIMIT_S, cases_dir=tmp_path)
    assert r.skipped is None, r.skipped
    assert r.total_violations == 0, summary([r])
    assert r.units >= MIN_UNITS, summary([r])
    # the run reached the decisions that matter, not only parse errors
    reached = {k for counts in r.reached.values() for k in counts}
    want = {"switch": {"synack", "to_frontend", "to_backend", "to_client", "routed", "handshake_ack"},
            "agent": {"xlate_in", "xlate_out", "sack_blocks", "window_rescaled", "drop_agent_not_spliced"},
            "frontend": {"to_client", "to_backend", "client_rst", "backend_rst", "synack_dropped", "copies"},
            "engine": {"default", "api", "400",      # and with several services (half the epochs):
                       "api/api-all", "adopted", "adopt_ambiguous", "port_shared"}}.get(target, set())
    assert want <= reached, f"not reached: {want - reached}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_saved_case_replays_clean(cfg, case):
    assert replay_case(cfg, case) == []
