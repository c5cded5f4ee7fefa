"""`miresga fuzz`: run a fuzz campaign over the packet entry points (see docs/hardening.md).

    miresga fuzz                                   # every target, 10^6 inputs each, a random seed (printed)
    miresga fuzz --seed 7 --budget 20000 --targets switch,agent
    miresga fuzz --replay tests/fuzz_cases/*.json  # run saved failing inputs again
    miresga flood --seconds 10 --out DIR           # floods on a testbed while a client downloads
    miresga soak --minutes 30 --out DIR            # mixes and faults; RSS and state over time

Exit status 0 when no invariant was violated (and no target skipped), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from miresga.control.config import load_config_or_exit
from miresga.fuzz.campaign import replay_case, run_campaign, summary
from miresga.fuzz.harness import TARGETS


def _fuzz(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    if args.replay:
        bad = 0
        for p in args.replay:
            v = replay_case(cfg, Path(p))
            bad += bool(v)
            print(f"{p}: " + ("ok" if not v else "; ".join(f"{x.invariant}: {x.detail}" for x in v)))
        return 1 if bad else 0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    targets = [t for t in args.targets.split(",") if t] if args.targets else list(TARGETS)
    budget: dict[str, int] = {t: args.budget for t in targets}
    for item in args.target_budget or []:
        name, _, n = item.partition("=")
        budget[name] = int(n)
    print(f"miresga fuzz: seed {seed} (same inputs again: --seed {seed}), targets {','.join(targets)}", flush=True)
    results = run_campaign(cfg, targets, seed, budget, args.time_limit, Path(args.cases) if args.cases else None,
                           progress=lambda s: print(s, flush=True))
    print(summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=1, default=str) + "\n")
    failed = any(r.total_violations or r.skipped for r in results)
    print("FAILED" if failed else "ok: no invariant violated")
    return 1 if failed else 0


def register(sub) -> None:
    p = sub.add_parser("fuzz", help="fuzz the switch, agent and front-end entry points (invariants on every input)")
    p.add_argument("--config", help="deployment config (default: built-in)")
    p.add_argument("--targets", help=f"comma list of {', '.join(TARGETS)} (default: all)")
    p.add_argument("--seed", type=int, help="campaign seed (default: random, printed)")
    p.add_argument("--budget", type=int, default=1_000_000,
                   help="inputs per target: program runs (eBPF), segments (engine); default 10^6")
    p.add_argument("--target-budget", action="append", metavar="TARGET=N", help="a target's own budget")
    p.add_argument("--time-limit", type=float, help="seconds per target at most")
    p.add_argument("--cases", default="tests/fuzz_cases", help="where failing inputs are saved ('' = nowhere)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--replay", nargs="+", metavar="CASE", help="replay saved cases instead of fuzzing")
    p.set_defaults(func=_fuzz)
    f = sub.add_parser("flood", help="floods on a fresh testbed while a client downloads (docs/hardening.md)")
    f.add_argument("--seconds", type=float, default=10.0, help="per flood")
    f.add_argument("--holders", type=int, default=1000, help="half-header / garbage connections")
    f.add_argument("--out", default="flood-out", help="floods.json goes here")
    f.set_defaults(func=_flood)
    k = sub.add_parser("soak", help="mixes T1-T3 with faults on a testbed; RSS, connections, entries over time")
    k.add_argument("--minutes", type=float, default=30.0)
    k.add_argument("--out", default="soak-out", help="soak.json and soak.png go here")
    k.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    k.add_argument("--rss-tolerance", type=float, default=0.10,
                   help="allowed growth of a cycle's highest RSS at the same load high-water mark")
    k.set_defaults(func=_soak)


def _soak(args: argparse.Namespace) -> int:
    from miresga.fuzz.soak import run
    rep = run(args.minutes, Path(args.out), args.sample, args.rss_tolerance)
    print(json.dumps(rep["verdict"], indent=1))
    return 0 if rep["verdict"]["ok"] else 1


def _flood(args: argparse.Namespace) -> int:
    from miresga.fuzz.flood import run
    report = run(args.seconds, Path(args.out), args.holders)
    bad = [r["flood"] for r in report["floods"]
           if r["client"].get("responses_bad") or r["client"].get("errors") or any(r["left_after"].values())]
    print("FAILED: " + ", ".join(bad) if bad else "ok: every response byte-exact, nothing left")
    return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="miresga")
    register(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args()
    sys.exit(a.func(a))
