"""`miresga bench`: the peer benchmark from the command line (docs/bench.md)."""

from __future__ import annotations

import argparse
import signal
import sys

from miresga.bench.paper import PAPER_MIXES, PAPER_SYSTEMS, write_paper
from miresga.bench.pressure import DEFAULT_CAPACITY, run_pressure
from miresga.bench.report import BUSY_PCT
from miresga.bench.runner import BenchError, run_bench
from miresga.bench.systems import SystemSpecError
from miresga.bench.workloads import DEFAULT_SIZES, MIXES, MODES, WorkloadError, build_workloads, parse_size
from miresga.control.config import ConfigError, load_config
from miresga.testbed.objects import PAPER_SIZES, size_name

DEFAULT_DURATION, QUICK_DURATION = 5.0, 2.0


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip() and x.strip().lower() != "none"]


def _bench(args: argparse.Namespace) -> int:
    if args.pressure:
        return _pressure(args)
    if args.connections_held:
        return _held(args)
    if args.paper:  # the paper's evaluation: its sizes, both modes, its mixes, under the Tofino limits
        args.sizes = args.sizes or ",".join(size_name(s) for s in PAPER_SIZES)
        args.mixes = args.mixes or ",".join(PAPER_MIXES)
        args.systems = args.systems or ",".join(PAPER_SYSTEMS)
        args.profile = args.profile or "tofino"
    args.sizes = args.sizes or ",".join(size_name(s) for s in DEFAULT_SIZES)
    args.mixes = args.mixes or ",".join(MIXES)
    try:
        sizes = [parse_size(s) for s in _csv(args.sizes)]
        workloads = build_workloads(sizes, _csv(args.modes), _csv(args.mixes))
    except WorkloadError as e:
        print(f"miresga bench: {e}", file=sys.stderr)
        return 2
    duration = args.duration or (QUICK_DURATION if args.quick else DEFAULT_DURATION)
    # A plain `kill` must still tear the testbed down: turn SIGTERM into an exception that unwinds
    # through the testbed's context manager.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    systems = _csv(args.systems) if args.systems else None
    if systems and "prism" in systems and args.lb == "none":
        print("miresga bench: prism runs on Miresga's switch and front-ends: it needs --lb miresga", file=sys.stderr)
        return 2
    meta = {"command": "miresga bench " + " ".join(sys.argv[2:])} if args.paper else {}
    tb = None
    try:
        if args.instance:
            from miresga.testbed.testbed import load_instance
            tb = load_instance(args.instance)
            cfg = tb.cfg
        else:
            cfg = load_config(args.config)
        records = run_bench(cfg, systems, workloads, duration, args.connections, args.out, testbed=tb,
                            threads=args.threads, timeout_s=args.timeout, repeat=args.repeat, lb=None if args.lb == "none" else args.lb,
                            retries=args.retries, max_other_cpu=args.max_other_cpu, profile=args.profile,
                            capacity=args.capacity, insert_rate=args.insert_rate, meta_extra=meta)
        if args.paper and records:
            from miresga.bench.systems import profile_words, with_profile
            prof = profile_words(with_profile(cfg, args.profile, args.capacity, args.insert_rate).switch)
            paths = write_paper(records, args.out, {**meta, "switch profile": prof,
                                                    "seconds per point": f"{duration:g}",
                                                    "wrk": f"1 thread, {args.connections} connections"})
            print(f"[bench] paper figures: {paths['md']}, {paths['throughput'].name}, {paths['latency'].name}")
    except ConfigError as e:
        print(f"invalid config:\n{e}", file=sys.stderr)
        return 2
    except (BenchError, SystemSpecError, FileNotFoundError) as e:
        print(f"miresga bench: {e}", file=sys.stderr)
        return 1
    failed = [r for r in records if r["failure"]]
    with_errors = [r for r in records if r["errors"]]
    print(f"[bench] {len(records)} points, {len(failed)} failed, {len(with_errors)} with errors; "
          f"see {args.out}/report.md")
    return 1 if failed else 0


def _pressure(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        cfg = load_config(args.config)
        r = run_pressure(cfg, args.out, capacity=args.capacity or DEFAULT_CAPACITY,
                         connections=args.connections if args.connections != 32 else None,
                         duration=args.duration or (5.0 if args.quick else 10.0))
    except ConfigError as e:
        print(f"invalid config:\n{e}", file=sys.stderr)
        return 2
    print(f"[pressure] {'PASS' if r['ok'] else 'FAIL'}: peak {r['peak_installed']} of {r['capacity']} entries, "
          f"{r['table_full_refusals']} refusals, peak queue {r['peak_queue']}, wrk errors {r['wrk'].get('errors')}, "
          f"{r['responses_exact']}/{r['responses_sampled']} sampled responses exact, "
          f"{r['final_installed']} entries after; see {args.out}/pressure.md")
    return 0 if r["ok"] else 1


def _held(args: argparse.Namespace) -> int:
    from miresga.bench.connhold import run_connections
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        counts = [int(float(x)) for x in _csv(args.connections_held)]
        r = run_connections(load_config(args.config), args.out, counts, idle_s=args.duration or 10.0,
                            max_connections=args.max_connections, partial=args.partial, progress=lambda m: print(f"[connections] {m}",
                                                                                          flush=True))
    except ValueError as e:
        print(f"miresga bench: {e}", file=sys.stderr)
        return 2
    bad = [x for x in r["results"] if x["generator"].get("timeout") or x["generator"].get("error")
           or not x["cleaned_up"]]
    print(f"[connections] see {args.out}/connections.md")
    return 1 if bad else 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmark direct / nginx / HAProxy (/ Miresga) with wrk",
                       description="Runs wrk from the client namespace against every system and workload; "
                                   "writes report.json, report.md and throughput.png into --out.")
    b.add_argument("--config", help="deployment YAML (default: built-in)")
    b.add_argument("--instance", help="use this running testbed instance instead of bringing one up")
    b.add_argument("--lb", choices=["miresga", "none"], default="miresga",
                   help="miresga (default): bring up Miresga (eBPF switch, front-ends, agents) with the testbed "
                        "and bench it on the VIP; none: only the peers")
    b.add_argument("--out", default="bench-report", help="output directory (default: %(default)s)")
    b.add_argument("--systems", help="comma list (default: all the testbed offers: direct,nginx,haproxy[,miresga])")
    b.add_argument("--sizes", help="object sizes, comma list (default: "
                   f"{','.join(size_name(s) for s in DEFAULT_SIZES)}; --paper: "
                   f"{','.join(size_name(s) for s in PAPER_SIZES)}; 'none' for mixes only)")
    b.add_argument("--modes", default=",".join(MODES), help="connection modes for the sizes (default: %(default)s)")
    b.add_argument("--mixes", help=f"mixes, comma list or 'none' (default: {','.join(MIXES)})")
    b.add_argument("--profile", choices=["software", "tofino"],
                   help="switch hardware profile of the testbed the bench brings up (default: the config's; "
                        "--paper: tofino): table capacity, insert rate and latency, for miresga and prism alike")
    b.add_argument("--capacity", type=int, help="offload table size override (default: the profile's 143,360; "
                                                f"--pressure: {DEFAULT_CAPACITY})")
    b.add_argument("--insert-rate", type=int,
                   help="tofino profile: table inserts + deletes per second (default: the config's 17,000)")
    b.add_argument("--connections-held", metavar="N,N,...",
                   help="many connections: hold N idle keep-alive connections (e.g. 10000,100000) and measure the "
                        "front-ends' memory and CPU per connection (--duration: idle seconds, default 10); "
                        "writes connections.md/.json")
    b.add_argument("--max-connections", type=int,
                   help="with --connections-held: frontend.max_connections of that testbed (beyond it: refused)")
    b.add_argument("--partial", action="store_true",
                   help="with --connections-held: hold each connection with an unfinished request header (engine "
                        "state only, no back-end connection: beyond the back-ends' descriptor limit)")
    b.add_argument("--paper", action="store_true",
                   help="the paper's evaluation: direct, nginx, haproxy, miresga, prism over the paper's sizes "
                        "and the mixes under the tofino profile; adds paper.md, paper_throughput.png, "
                        "paper_latency.png")
    b.add_argument("--pressure", action="store_true",
                   help="table pressure: more keep-alive connections (--connections, default 2 x --capacity) "
                        "than the tofino table holds; writes pressure.md/.json/.png")
    b.add_argument("--duration", type=float, help=f"seconds per point (default {DEFAULT_DURATION:g}, "
                                                  f"--quick {QUICK_DURATION:g})")
    b.add_argument("--connections", type=int, default=32, help="wrk connections (default: %(default)s)")
    b.add_argument("--threads", type=int, default=1,
                   help="wrk threads (default: %(default)s: leaves the other core to the servers)")
    b.add_argument("--timeout", type=float, default=10.0, help="wrk per-request timeout, s (default: %(default)s)")
    b.add_argument("--repeat", type=int, default=1,
                   help="runs per point, in rounds over the systems; the median is reported (default: %(default)s)")
    b.add_argument("--retries", type=int, default=0,
                   help="re-measure a point up to N times while processes outside the testbed use more than "
                        "--max-other-cpu %% CPU; the least disturbed run counts (default: %(default)s)")
    b.add_argument("--max-other-cpu", type=float, default=BUSY_PCT, help="see --retries (default: %(default)s)")
    b.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION:g} s per point (all workloads, under 3 min)")
    b.set_defaults(func=_bench)
