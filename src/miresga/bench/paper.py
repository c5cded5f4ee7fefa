"""The paper's evaluation from one bench run (`miresga bench --paper`): throughput and latency
against object size for every system, the mixes, and the ratios Miresga/HAProxy and Miresga/prism
set beside the ratios the paper reports (`data/paper_claims.yaml`, with its source).

Everything here is pure except the writers: `ratio_rows` and `claim_rows` take the run's records.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from miresga.bench.report import BUSY_PCT
from miresga.bench.systems import DIRECT, MIRESGA, PRISM
from miresga.testbed.objects import PAPER_SIZES, size_name

CLAIMS_FILE = Path(__file__).with_name("data") / "paper_claims.yaml"
PAPER_SYSTEMS = (DIRECT, "nginx", "haproxy", MIRESGA, PRISM)
SMALL_MAX = 16 << 10      # "small objects": up to 16 KB
LARGE_MIN = 1 << 20       # "large objects": 1 MB and up
REFERENCES = ("haproxy", PRISM)

Record = Mapping[str, Any]


def load_claims(path: Path = CLAIMS_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return round(a / b, 3)


def ratio_rows(records: Sequence[Record], of: str = MIRESGA,
               against: Sequence[str] = REFERENCES) -> list[dict[str, Any]]:
    """Per workload: `of`'s requests/s and p50 latency relative to each system of `against`
    (None where either did not measure)."""
    by = {(r["system"], r["workload"]): r for r in records if not r["failure"]}
    rows = []
    for w in dict.fromkeys(r["workload"] for r in records):
        mine = by.get((of, w))
        row: dict[str, Any] = {"workload": w, "size_bytes": next(r["size_bytes"] for r in records
                                                                 if r["workload"] == w),
                               "keepalive": next(r["keepalive"] for r in records if r["workload"] == w)}
        for ref in against:
            other = by.get((ref, w))
            row[f"throughput_vs_{ref}"] = _ratio(mine and mine["requests_per_s"], other and other["requests_per_s"])
            row[f"latency_vs_{ref}"] = _ratio(mine and mine["latency_p50_ms"], other and other["latency_p50_ms"])
        rows.append(row)
    return rows


def _geomean(xs: Iterable[float | None]) -> float | None:
    v = [x for x in xs if x]
    return round(math.exp(sum(math.log(x) for x in v) / len(v)), 3) if v else None


def claim_rows(rows: Sequence[Mapping[str, Any]], claims: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each claim of the paper beside what this run measured for the same comparison:
    `any` objects: the best workload (highest throughput ratio; lowest latency ratio);
    `small` / `large`: geometric mean over the single-object workloads of that class."""
    out = []
    for c in claims["claims"]:
        ref = c["against"]
        thr, lat = f"throughput_vs_{ref}", f"latency_vs_{ref}"
        if c["objects"] == "any":
            cands = [r for r in rows if r[thr] is not None]
            best_t = max(cands, key=lambda r: r[thr], default=None)
            cands = [r for r in rows if r[lat] is not None]
            best_l = min(cands, key=lambda r: r[lat], default=None)
            ours_t, ours_l = (best_t and best_t[thr]), (best_l and best_l[lat])
            where = (f"best: {best_t['workload']} (throughput), {best_l['workload']} (latency)"
                     if best_t and best_l else "not measured")
        else:
            sel = [r for r in rows if r["size_bytes"] is not None
                   and (r["size_bytes"] <= SMALL_MAX if c["objects"] == "small" else r["size_bytes"] >= LARGE_MIN)]
            ours_t, ours_l = _geomean(r[thr] for r in sel), _geomean(r[lat] for r in sel)
            where = (f"geometric mean over {', '.join(r['workload'] for r in sel)}" if sel else "not measured")
        out.append({"id": c["id"], "label": c["label"], "paper_throughput": c["throughput_ratio"],
                    "paper_latency": c["latency_ratio"], "ours_throughput": ours_t, "ours_latency": ours_l,
                    "where": where})
    return out


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def render_paper_markdown(records: Sequence[Record], claims: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    rows = ratio_rows(records)
    crow = claim_rows(rows, claims)
    src = claims["source"]
    lines = ["# The paper's evaluation, on this machine", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "## Against what the paper reports", "",
              f"Paper: {' '.join(src['citation'].split())} doi:{src['doi']} ({src['where']}). "
              f"Its testbed: {' '.join(src['testbed'].split())}.", "",
              "| comparison | paper throughput | ours | paper latency | ours | ours measured on |",
              "|---|---:|---:|---:|---:|---|"]
    for c in crow:
        lines.append(f"| {c['label']} | {c['paper_throughput']:.1f}x | {_x(c['ours_throughput'])} | "
                     f"{c['paper_latency']:.1f}x | {_x(c['ours_latency'])} | {c['where']} |")
    busy = sum(1 for r in records if _contended(r))
    lines += ["", "Throughput = requests/s ratio, latency = p50 ratio (below 1 is better), same run, same "
              "workload. Small objects: <= 16 KB; large: >= 1 MB."
              + (f" {busy} of {len(records)} points ran while processes outside the testbed used more than "
                 f"{BUSY_PCT:g} % CPU (`other CPU %` in report.md): those ratios measure the neighbours too."
                 if busy else ""), "",
              "## Miresga relative to HAProxy and to prism, per workload", "",
              "| workload | throughput vs haproxy | latency vs haproxy | throughput vs prism | latency vs prism |",
              "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {_x(r['throughput_vs_haproxy'])} | {_x(r['latency_vs_haproxy'])} | "
                     f"{_x(r['throughput_vs_prism'])} | {_x(r['latency_vs_prism'])} |")
    through = {r["system"]: (r["profile"], r["offload"]) for r in records if r["profile"]}
    if through:
        lines += ["", "Systems through the switch:", ""]
        lines += [f"- `{s}`: profile {p}; offload {o}" for s, (p, o) in through.items()]
    lines += ["", "Plots: `paper_throughput.png`, `paper_latency.png`; every point: `report.md`, `report.json`."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots

_STYLE = {"direct": ("#7f7f7f", "s", ":"), "nginx": ("#2a9d3a", "o", "-"), "haproxy": ("#1f6fb4", "^", "-"),
          MIRESGA: ("#d62728", "D", "-"), PRISM: ("#ff7f0e", "v", "-")}


def _contended(r: Record) -> bool:
    return (r.get("other_cpu_pct") or 0) > BUSY_PCT


def _style(system: str) -> tuple[str, str, str]:
    return _STYLE.get(system, ("#9467bd", "o", "-"))


def render_paper_plot(records: Sequence[Record], path: Path, metric: str, title: str = "") -> None:
    """metric "throughput" (Gbit/s of response bytes) or "latency" (p50 ms, p99 as a thin line):
    keep-alive and new-connection panels against object size, and the mixes as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    def value(r: Record, p99: bool = False) -> float | None:
        if r["failure"] or not r["requests"]:
            return None
        if metric == "throughput":
            return r["bytes_per_s"] * 8 / 1e9
        return r["latency_p99_ms"] if p99 else r["latency_p50_ms"]

    systems = [s for s in dict.fromkeys(r["system"] for r in records)]
    singles = [r for r in records if r["size_bytes"] is not None]
    mixes = [r for r in records if r["size_bytes"] is None]
    sizes = sorted({r["size_bytes"] for r in singles})
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [3, 3, 2]})
    ylabel = "throughput (Gbit/s)" if metric == "throughput" else "latency (ms, p50; thin: p99)"
    for ax, keepalive, name in ((axes[0], True, "keep-alive"), (axes[1], False, "new connection per request")):
        for s in systems:
            color, marker, ls = _style(s)
            pts = sorted((r["size_bytes"], value(r)) for r in singles if r["system"] == s
                         and r["keepalive"] == keepalive and value(r))
            if pts:
                ax.plot(*zip(*pts), linestyle=ls, marker=marker, color=color, label=s, linewidth=2, markersize=7)
                busy = sorted((r["size_bytes"], value(r)) for r in singles if r["system"] == s
                              and r["keepalive"] == keepalive and value(r) and _contended(r))
                if busy:   # measured while other processes were busy: hollow
                    ax.plot(*zip(*busy), linestyle="none", marker=marker, color=color, markersize=7,
                            markerfacecolor="white", markeredgewidth=1.5)
            if metric == "latency":
                pts = sorted((r["size_bytes"], value(r, True)) for r in singles if r["system"] == s
                             and r["keepalive"] == keepalive and value(r, True))
                if pts:
                    ax.plot(*zip(*pts), linestyle=ls, color=color, linewidth=0.8, alpha=0.6)
        ax.set_title(name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if sizes:
            ax.xaxis.set_major_locator(FixedLocator(sizes))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([size_name(x).upper() + "B" for x in sizes])
        ax.set_xlabel("object size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize=9)
    vals = [v for r in singles for v in (value(r), value(r, True) if metric == "latency" else None) if v]
    if vals:   # one scale for both panels, wide enough for every point of either
        for ax in axes[:2]:
            ax.set_ylim(min(vals) / 1.5, max(vals) * 1.5)
    ax = axes[2]
    names = list(dict.fromkeys(r["workload"] for r in mixes))
    if names:
        width = 0.8 / max(1, len(systems))
        for j, s in enumerate(systems):
            color, _, _ = _style(s)
            for i, m in enumerate(names):
                r = next((r for r in mixes if r["system"] == s and r["workload"] == m), None)
                v = value(r) if r else None
                if v:
                    ax.bar(i - 0.4 + width * (j + 0.5), v, width * 0.9, color=color, label=s if i == 0 else None)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no mixes measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("mixes T1-T3 (keep-alive)")
    title = title or ("Throughput" if metric == "throughput" else "Latency") + " against object size"
    if any(_contended(r) for r in records):
        title += f"\nhollow markers: other processes used > {BUSY_PCT:g} % CPU during that point"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_paper(records: Sequence[Record], out_dir: Path, meta: Mapping[str, Any],
                claims: Mapping[str, Any] | None = None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    claims = claims or load_claims()
    paths = {"md": out_dir / "paper.md", "throughput": out_dir / "paper_throughput.png",
             "latency": out_dir / "paper_latency.png"}
    paths["md"].write_text(render_paper_markdown(records, claims, meta))
    sub = str(meta.get("switch profile", ""))
    render_paper_plot(records, paths["throughput"], "throughput",
                      f"Throughput against object size (response bytes; switch profile {sub})")
    render_paper_plot(records, paths["latency"], "latency",
                      f"Latency against object size (wrk, request to end of response; switch profile {sub})")
    return paths


PAPER_MIXES = ("T1", "T2", "T3")
__all__ = ["PAPER_SIZES", "PAPER_SYSTEMS", "PAPER_MIXES", "load_claims", "ratio_rows", "claim_rows",
           "render_paper_markdown", "render_paper_plot", "write_paper"]
