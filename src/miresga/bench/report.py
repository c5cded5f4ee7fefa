"""Benchmark results: one record per (system, workload), ratios between systems, and the three
output files (report.json, report.md, throughput.png). Everything here is pure except the writers.

Ratios compare requests/s within one workload of one run (every system saw the same request
stream, so bytes/s ratios are the same up to the cut-off at the end of the run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from miresga.bench.systems import DIRECT, PEERS
from miresga.bench.wrk import ERROR_KINDS, WrkResult
from miresga.bench.workloads import Workload
from miresga.testbed.objects import size_name

BUSY_PCT = 30.0  # other processes' CPU above which a point is called contended

# Fields every record has (README "report.json"); `extra` holds a system's own columns.
RECORD_FIELDS = (
    "system", "workload", "size_bytes", "keepalive", "mix", "profile", "offload",
    "duration_s", "connections", "threads",
    "requests", "bytes", "requests_per_s", "bytes_per_s",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "latency_max_ms",
    "errors", "errors_by_kind", "failure", "runs", "other_cpu_pct",
    "best_peer", "ratio_to_best_peer", "ratio_to_direct", "extra",
)


def make_record(system: str, workload: Workload, result: WrkResult | None, *, connections: int, threads: int,
                failure: str | None = None, extra: Mapping[str, float] | None = None,
                other_cpu_pct: float | None = None, profile: str | None = None,
                offload: str | None = None) -> dict[str, Any]:
    """A record for one point. `result` None (wrk failed) gives zeros and the failure text.
    `profile` / `offload`: the switch hardware profile and offload policy of a system that runs
    through the switch (None for the peers and `direct`)."""
    r = result or WrkResult(0.0, 0, 0, {k: 0 for k in ERROR_KINDS}, {})
    lat = r.latency_ms if r.requests else {}  # wrk reports 0 ms percentiles for no requests
    rec = {
        "system": system,
        "workload": workload.name,
        "size_bytes": workload.size_bytes,
        "keepalive": workload.keepalive,
        "mix": [list(x) for x in workload.mix] if workload.mix else None,
        "profile": profile,
        "offload": offload,
        "duration_s": round(r.duration_s, 3),
        "connections": connections,
        "threads": threads,
        "requests": r.requests,
        "bytes": r.bytes,
        "requests_per_s": round(r.requests_per_s, 1),
        "bytes_per_s": round(r.bytes_per_s, 1),
        "latency_p50_ms": _ms(lat.get("p50")),
        "latency_p90_ms": _ms(lat.get("p90")),
        "latency_p99_ms": _ms(lat.get("p99")),
        "latency_mean_ms": _ms(lat.get("mean")),
        "latency_max_ms": _ms(lat.get("max")),
        "errors": r.errors_total + (1 if failure else 0),
        "errors_by_kind": {k: r.errors.get(k, 0) for k in ERROR_KINDS},
        "failure": failure,
        "runs": [round(r.requests_per_s, 1)],
        "other_cpu_pct": other_cpu_pct,
        "best_peer": None,
        "ratio_to_best_peer": None,
        "ratio_to_direct": None,
        "extra": dict(extra or {}),
    }
    assert tuple(rec) == RECORD_FIELDS
    return rec


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def pick_median(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """Of several runs of one point, the one with the median requests/s (the lower one of an even
    count), with every run's requests/s in `runs` so the spread stays visible."""
    if not tries:
        raise ValueError("no runs to pick from")
    ordered = sorted(tries, key=lambda r: r["requests_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [x for r in tries for x in r["runs"]]
    chosen["errors"] = sum(r["errors"] for r in tries)  # an error in any run is an error of the point
    chosen["errors_by_kind"] = {k: sum(r["errors_by_kind"][k] for r in tries) for k in chosen["errors_by_kind"]}
    chosen["failure"] = next((r["failure"] for r in tries if r["failure"]), None)
    return chosen


def add_ratios(records: list[dict[str, Any]], peers: Iterable[str] = PEERS,
               direct: str = DIRECT) -> list[dict[str, Any]]:
    """Fill best_peer / ratio_to_best_peer / ratio_to_direct per workload (requests/s), in place.

    The best peer is the peer with the most requests/s in that workload; ratios are left None when
    the reference is absent or measured nothing (a ratio to zero says nothing)."""
    peers = tuple(peers)
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_workload.setdefault(r["workload"], []).append(r)
    for group in by_workload.values():
        cand = [r for r in group if r["system"] in peers and r["requests_per_s"] > 0]
        best = max(cand, key=lambda r: r["requests_per_s"], default=None)
        ref_direct = next((r for r in group if r["system"] == direct and r["requests_per_s"] > 0), None)
        for r in group:
            r["best_peer"] = best["system"] if best else None
            r["ratio_to_best_peer"] = round(r["requests_per_s"] / best["requests_per_s"], 3) if best else None
            r["ratio_to_direct"] = round(r["requests_per_s"] / ref_direct["requests_per_s"], 3) if ref_direct else None
    return records


def validate_records(records: list[dict[str, Any]]) -> None:
    """The report.json contract (README): raise ValueError naming the first bad record and field."""
    types: dict[str, tuple[type, ...]] = {
        "system": (str,), "workload": (str,), "size_bytes": (int, type(None)), "keepalive": (bool,),
        "requests_per_s": (int, float), "bytes_per_s": (int, float), "errors": (int,),
        "latency_p50_ms": (int, float, type(None)), "latency_p90_ms": (int, float, type(None)),
        "latency_p99_ms": (int, float, type(None)), "extra": (dict,),
        "ratio_to_best_peer": (int, float, type(None)), "ratio_to_direct": (int, float, type(None)),
        "runs": (list,), "other_cpu_pct": (int, float, type(None)),
        "profile": (str, type(None)), "offload": (str, type(None)),
    }
    if not isinstance(records, list):
        raise ValueError("report.json must hold a list of records")
    for i, r in enumerate(records):
        missing = [f for f in RECORD_FIELDS if f not in r]
        if missing:
            raise ValueError(f"record {i}: missing {missing}")
        for f, t in types.items():
            if not isinstance(r[f], t) or (t == (int,) and isinstance(r[f], bool)):
                raise ValueError(f"record {i} ({r.get('system')}/{r.get('workload')}): {f}={r[f]!r} has the wrong type")
        if (r["size_bytes"] is None) != (r["mix"] is not None):
            raise ValueError(f"record {i}: exactly one of size_bytes and mix must be set")


# ---------------------------------------------------------------- report.md

def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _fmt_mbs(x: float) -> str:
    return f"{x / 1e6:,.1f}" if x < 1e9 else f"{x / 1e6:,.0f}"


def _fmt_opt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{spec}}{suffix}"


def _fmt_spread(runs: list[float]) -> str:
    """Half the range of the runs as a share of their median: how far to trust a ratio."""
    mid = sorted(runs)[(len(runs) - 1) // 2]
    return f"{50 * (max(runs) - min(runs)) / mid:.0f}%" if mid > 0 and len(runs) > 1 else "–"


def _fmt_extra(key: str, v: Any) -> str:
    if isinstance(v, (int, float)) and key.endswith("_share"):
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def extra_columns(records: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in records:
        for k in r["extra"]:
            if k not in cols:
                cols.append(k)
    return cols


def render_markdown(records: list[dict[str, Any]], meta: Mapping[str, Any]) -> str:
    systems = list(dict.fromkeys(r["system"] for r in records))
    workloads = list(dict.fromkeys(r["workload"] for r in records))
    extras = extra_columns(records)
    lines = ["# Miresga benchmark", ""]
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Throughput (requests/s; MB/s = 10^6 bytes/s read by wrk, headers included), "
              "latency percentiles (ms), errors "
              "(socket errors + non-2xx/3xx), and requests/s relative to the best peer "
              f"({' or '.join(PEERS)}) and to `{DIRECT}` in the same workload.", ""]
    spread = any(len(r["runs"]) > 1 for r in records)
    busy = any(r["other_cpu_pct"] is not None for r in records)
    if busy:
        n_busy = sum(1 for r in records if (r["other_cpu_pct"] or 0) > BUSY_PCT)
        lines += [f"`other CPU %`: CPU time used during the point by processes outside this testbed "
                  f"(100 = one core of {os.cpu_count()}). {n_busy} of {len(records)} points ran while others used "
                  f"more than {BUSY_PCT:g} %: those numbers measure the neighbours too.", ""]
    through = {r["system"]: (r["profile"], r["offload"]) for r in records if r["profile"] or r["offload"]}
    if through:
        lines += ["Systems through the switch: hardware profile of the switch's offload table, offload policy "
                  "(the peers and `direct` never touch the switch):", ""]
        lines += [f"- `{s}`: profile {p or '–'}; offload {o or '–'}" for s, (p, o) in through.items()]
        lines.append("")
    if spread:
        lines += ["`runs ±`: half the range of the repeated runs' requests/s, relative to the median run "
                  "(the one reported).", ""]
    head = ["workload", "system", "req/s", *(["runs ±"] if spread else []), "MB/s", "p50 ms", "p90 ms", "p99 ms",
            "errors", "× best peer", "× direct", *(["other CPU %"] if busy else []), *extras]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for w in workloads:
        for r in (r for r in records if r["workload"] == w):
            err = str(r["errors"]) if not r["failure"] else f"{r['errors']} (failed)"
            cells = [w, r["system"], _fmt_rate(r["requests_per_s"]), *([_fmt_spread(r["runs"])] if spread else []),
                     _fmt_mbs(r["bytes_per_s"]),
                     _fmt_opt(r["latency_p50_ms"]), _fmt_opt(r["latency_p90_ms"]), _fmt_opt(r["latency_p99_ms"]),
                     err, _fmt_opt(r["ratio_to_best_peer"], suffix="x"), _fmt_opt(r["ratio_to_direct"], suffix="x"),
                     *([_fmt_opt(r["other_cpu_pct"], ".0f")] if busy else []),
                     *(_fmt_extra(k, r["extra"][k]) if k in r["extra"] else "" for k in extras)]
            lines.append("| " + " | ".join(cells) + " |")
    # compact view: the ratio matrix
    lines += ["", "Requests/s relative to the best peer (rows: workloads; columns: systems):", "",
              "| workload | " + " | ".join(systems) + " | best peer |",
              "|---|" + "---:|" * len(systems) + "---|"]
    for w in workloads:
        group = {r["system"]: r for r in records if r["workload"] == w}
        best = next(iter(group.values()))["best_peer"]
        cells = [_fmt_opt(group[s]["ratio_to_best_peer"], suffix="x") if s in group else "" for s in systems]
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {best or '–'} |")
    failed = [r for r in records if r["failure"]]
    if failed:
        lines += ["", "Failed points:", ""] + [f"- {r['system']} / {r['workload']}: {r['failure']}" for r in failed]
    errs = [r for r in records if r["errors"] and not r["failure"]]
    if errs:
        lines += ["", "Errors by kind:", ""] + [
            f"- {r['system']} / {r['workload']}: " + ", ".join(f"{k} {v}" for k, v in r["errors_by_kind"].items() if v)
            for r in errs]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- throughput.png

_COLORS = {"direct": "#555555", "nginx": "#2a9d3a", "haproxy": "#1f6fb4", "miresga": "#d62728"}
_MARKERS = {"direct": "s", "nginx": "o", "haproxy": "^", "miresga": "D"}


def render_plot(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter, FixedLocator, LogLocator, NullLocator

    systems = list(dict.fromkeys(r["system"] for r in records))
    extra_colors = iter(["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"])
    color = {s: _COLORS.get(s) or next(extra_colors, "#000000") for s in systems}
    marker = {s: _MARKERS.get(s, "o") for s in systems}
    singles = [r for r in records if r["size_bytes"] is not None]
    mixes = [r for r in records if r["size_bytes"] is None]
    sizes = sorted({r["size_bytes"] for r in singles})

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    (ax_ka, ax_nc), (ax_rps, ax_mix) = axes
    ax_nc.sharey(ax_ka)  # the same scale, so keep-alive and new-connection panels compare at a glance

    def log_y(ax, unit: str = ""):
        # labels at 1, 2 and 5 of every decade: values can be read off without counting gridlines
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(EngFormatter(unit=unit))

    def size_axis(ax):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([size_name(s).upper().replace("K", " KB").replace("M", " MB") for s in sizes])
        ax.set_xlabel("object size")
        ax.grid(True, which="both", alpha=0.3)

    def hollow(ax, s: str, keepalive: bool, key: str, size: float) -> None:
        """Points measured while other processes were busy: drawn hollow over the line."""
        pts = sorted((r["size_bytes"], r[key]) for r in singles if r["system"] == s and r["keepalive"] == keepalive
                     and r[key] > 0 and _contended(r))
        if pts:
            ax.plot(*zip(*pts), linestyle="none", marker=marker[s], markersize=size, color=color[s],
                    markerfacecolor="white", markeredgewidth=1.5)

    for ax, keepalive, name in ((ax_ka, True, "keep-alive"), (ax_nc, False, "new connection per request")):
        plotted = False
        for s in systems:
            pts = sorted((r["size_bytes"], r["bytes_per_s"]) for r in singles
                         if r["system"] == s and r["keepalive"] == keepalive and r["bytes_per_s"] > 0)
            if pts:
                ax.plot(*zip(*pts), marker=marker[s], color=color[s], label=s, linewidth=2, markersize=7)
                hollow(ax, s, keepalive, "bytes_per_s", 7)
                plotted = True
        ax.set_title(f"Throughput, {name}")
        ax.set_ylabel("bytes/s (body + headers)")
        if plotted:
            size_axis(ax)
            log_y(ax, "B/s")
            ax.legend(loc="lower right")
        else:
            _empty(ax, "not measured")

    plotted = False
    for s in systems:
        for keepalive, style in ((True, "-"), (False, "--")):
            pts = sorted((r["size_bytes"], r["requests_per_s"]) for r in singles
                         if r["system"] == s and r["keepalive"] == keepalive and r["requests_per_s"] > 0)
            if pts:
                ax_rps.plot(*zip(*pts), style, marker=marker[s], color=color[s], linewidth=2, markersize=6,
                            label=f"{s}, {'keep-alive' if keepalive else 'new conn'}")
                hollow(ax_rps, s, keepalive, "requests_per_s", 6)
                plotted = True
    ax_rps.set_title("Requests/s (solid: keep-alive, dashed: new connection)")
    ax_rps.set_ylabel("requests/s")
    if plotted:
        size_axis(ax_rps)
        log_y(ax_rps)
        ax_rps.legend(fontsize=8, ncol=2, loc="lower left")
    else:
        _empty(ax_rps, "not measured")

    mix_names = list(dict.fromkeys(r["workload"] for r in mixes))
    if mix_names:
        width = 0.8 / len(systems)
        labelled: set[str] = set()
        for j, s in enumerate(systems):
            for i, m in enumerate(mix_names):
                r = next((r for r in mixes if r["system"] == s and r["workload"] == m), None)
                if not r or r["bytes_per_s"] <= 0:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                ax_mix.bar(x, r["bytes_per_s"], width * 0.9, color=color[s],
                           **({"hatch": "//", "edgecolor": "white"} if _contended(r) else {}))
                labelled.add(s)
                ax_mix.text(x, r["bytes_per_s"] * 1.08, f"{r['requests_per_s'] / 1000:.1f}k/s", ha="center",
                            va="bottom", fontsize=7, rotation=90)
        ax_mix.set_xticks(range(len(mix_names)))
        ax_mix.set_xticklabels([_mix_label(next(r for r in mixes if r["workload"] == m)) for m in mix_names])
        log_y(ax_mix, "B/s")
        measured = [r["bytes_per_s"] for r in mixes if r["bytes_per_s"] > 0]
        if measured:  # log bars: start well below the smallest so every bar shows its height
            ax_mix.set_ylim(min(measured) / 4, max(measured) * 6)
        ax_mix.set_ylabel("bytes/s (labels: requests/s)")
        ax_mix.legend(handles=[Patch(color=color[s], label=s) for s in systems if s in labelled],
                      loc="upper left", fontsize=8)
        ax_mix.grid(True, axis="y", which="both", alpha=0.3)
    else:
        _empty(ax_mix, "no mixes measured")
    ax_mix.set_title("Mixes (keep-alive)")
    if any(_contended(r) for r in records):
        title = (title + "\n" if title else "") + (f"hollow markers / hatched bars: other processes used > "
                                                    f"{BUSY_PCT:g} % CPU during that point")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _contended(r: Mapping[str, Any]) -> bool:
    return (r.get("other_cpu_pct") or 0) > BUSY_PCT


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.tick_params(which="both", left=False, bottom=False, labelleft=False, labelbottom=False)
    ax.set_ylabel("")
    for side in ax.spines.values():
        side.set_color("#cccccc")


def _mix_label(r: dict[str, Any]) -> str:
    parts = "/".join(str(w) for _, w in r["mix"])
    sizes = "/".join(size_name(s) for s, _ in r["mix"])
    return f"{r['workload']}\n{parts}\n{sizes}" if len(r["mix"]) > 1 else f"{r['workload']}\n100% {sizes}"


# ---------------------------------------------------------------- files

def write_report(records: list[dict[str, Any]], out_dir: Path, meta: Mapping[str, Any],
                 plot: bool = True) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    validate_records(records)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "throughput.png"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    tmp.replace(paths["json"])
    paths["md"].write_text(render_markdown(records, meta))
    if plot:
        title = " · ".join(str(meta[k]) for k in ("title",) if k in meta)
        render_plot(records, paths["png"], title=title)
    return paths

