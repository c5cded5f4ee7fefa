"""A fuzz campaign: every target in turn, from a printed seed, for a budget of inputs (and a time
limit), with invariant violations counted, the first of each kind saved as a test case file, and
a summary of what each entry point reached.

Reproducible: target `t` draws from `random.Random(f"{seed}/{t}")`, so the same seed and budget
give the same inputs. A saved case holds the input and the state it met (the flow entry of an
agent input; the whole epoch of engine events), and `replay_case` runs it again.
"""

from __future__ import annotations

import collections
import json
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from miresga.control.config import Deployment
from miresga.fuzz.bpfrun import TestRunRefused
from miresga.fuzz.harness import TARGETS, Input, Violation, make_harness

PERIODIC_EVERY = 256
MAX_EXAMPLES = 20


@dataclass
class TargetResult:
    target: str
    seed: int
    inputs: dict[str, int] = field(default_factory=dict)       # per entry point (engine: per event kind)
    units: int = 0                                              # what the budget counts: runs / segments
    refused: int = 0                                            # frames BPF_PROG_TEST_RUN refused itself
    seconds: float = 0.0
    violations: collections.Counter = field(default_factory=collections.Counter)
    examples: list[dict] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    reached: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())

    def as_dict(self) -> dict:
        return {"target": self.target, "seed": self.seed, "inputs": self.inputs, "units": self.units,
                "refused_by_test_run": self.refused, "seconds": round(self.seconds, 1),
                "violations": dict(self.violations), "examples": self.examples, "cases": self.cases,
                "reached": self.reached, "skipped": self.skipped}


def _units(h, name: str) -> int:
    return h.segments if name == "engine" else sum(h.inputs.values())


def run_target(cfg: Deployment, name: str, seed: int, budget: int, time_limit: float | None = None,
               cases_dir: Path | None = None, max_cases: int = 5,
               progress: Callable[[str], None] | None = None) -> TargetResult:
    res = TargetResult(name, seed)
    try:
        h = make_harness(name, cfg)
    except FileNotFoundError as e:     # a BPF object not built: say so, do not pretend it passed
        res.skipped = str(e)
        return res
    rng = random.Random(f"{seed}/{name}")
    t0 = time.monotonic()
    next_report = t0 + 10
    index = 0
    saved: collections.Counter = collections.Counter()
    with h:
        while _units(h, name) < budget:
            if time_limit is not None and time.monotonic() - t0 > time_limit:
                break
            index += 1
            inp = h.generate(rng)
            try:
                v = h.execute(inp)
            except TestRunRefused:
                res.refused += 1
                continue
            except Exception as e:  # noqa: BLE001 - a crash of the harness or a program run is a finding
                v = [Violation("exception", f"{type(e).__name__}: {e}: {traceback.format_exc(limit=-2)}")]
            if index % PERIODIC_EVERY == 0:
                v += h.periodic()
            if v:
                _record(res, h, inp, v, index, saved, cases_dir, max_cases)
            if progress and time.monotonic() > next_report:
                next_report = time.monotonic() + 10
                progress(f"  {name}: {_units(h, name)} / {budget}, {res.total_violations} violations")
        for x in h.finish():
            res.violations[x.invariant] += 1
            if len(res.examples) < MAX_EXAMPLES:
                res.examples.append({"index": "end", "invariant": x.invariant, "detail": x.detail})
        res.units = _units(h, name)
        res.inputs = dict(h.inputs)
        res.reached = {k: dict(c.most_common()) for k, c in h.stats.items()}
    res.seconds = time.monotonic() - t0
    return res


def _record(res: TargetResult, h, inp: Input, v: list[Violation], index: int, saved, cases_dir, max_cases) -> None:
    for x in v:
        res.violations[x.invariant] += 1
    if len(res.examples) < MAX_EXAMPLES:
        res.examples.append({"index": index, "entry": inp.entry, "ops": inp.ops,
                             "violations": [f"{x.invariant}: {x.detail}" for x in v]})
    kind = v[0].invariant
    if cases_dir is not None and saved[kind] < max_cases:
        saved[kind] += 1
        case = {"target": res.target, "seed": res.seed, "index": index, "entry": inp.entry, "data": inp.data.hex(),
                "ifindex": inp.ifindex, "ops": inp.ops, "extra": inp.extra, "state": h.case_state(),
                "violations": [f"{x.invariant}: {x.detail}" for x in v]}
        cases_dir.mkdir(parents=True, exist_ok=True)
        path = cases_dir / f"{res.target}-{res.seed}-{index}-{kind}.json"
        path.write_text(json.dumps(case, indent=1, default=list) + "\n")
        res.cases.append(str(path))


def replay_case(cfg: Deployment, path: Path) -> list[Violation]:
    """Run a saved case again; [] when whatever it found is fixed."""
    case = json.loads(Path(path).read_text())
    extra = dict(case.get("extra") or {})
    if "ev" in extra:
        extra["ev"] = tuple(extra["ev"])
    inp = Input(case["entry"], bytes.fromhex(case["data"]), case.get("ifindex", 0), case.get("ops", []), extra)
    with make_harness(case["target"], cfg) as h:
        return h.replay(inp, case.get("state") or {})


def run_campaign(cfg: Deployment, targets: list[str], seed: int, budget: int | dict[str, int],
                 time_limit: float | None = None, cases_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> list[TargetResult]:
    out = []
    for name in targets:
        if name not in TARGETS:
            raise KeyError(f"unknown fuzz target {name!r} (known: {', '.join(TARGETS)})")
        b = budget[name] if isinstance(budget, dict) else budget
        if progress:
            progress(f"{name}: seed {seed}, budget {b}" + (f", at most {time_limit:.0f} s" if time_limit else ""))
        out.append(run_target(cfg, name, seed, b, time_limit, cases_dir, progress=progress))
    return out


def summary(results: list[TargetResult]) -> str:
    lines = []
    for r in results:
        if r.skipped:
            lines.append(f"{r.target}: SKIPPED ({r.skipped})")
            continue
        unit = "segments" if r.target == "engine" else "runs"
        per = ", ".join(f"{k} {n}" for k, n in sorted(r.inputs.items()))
        rate = r.units / r.seconds if r.seconds else 0
        lines.append(f"{r.target}: {r.units} {unit} in {r.seconds:.1f} s ({rate:.0f}/s; {per}), "
                     f"refused by test-run {r.refused}, violations {r.total_violations}"
                     + (f" {dict(r.violations)}" if r.violations else ""))
        for e in r.examples[:5]:
            lines.append(f"    {e}")
        for c in r.cases:
            lines.append(f"    saved {c}")
    return "\n".join(lines)
