"""Prometheus conventions shared by every Miresga process (switch, front-ends, agents).

Each process has one collector that yields metric families named `miresga_<component>_<name>`;
counters end in `_total` on the wire, gauges do not; a process does not label its own name (the
scrape target's `instance` says which). Each serves `/metrics` on `<component>.metrics_address`
(default 127.0.0.1) and `<component>.metrics_port`, never on the fabric address clients reach.
The reference of every metric: docs/metrics.md.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from miresga.bpf.netns import in_netns


def family(kind: str, name: str, doc: str, labels: Iterable[str] = (),
           values: Mapping | float | int = 0):
    """A counter ("c") or gauge ("g") family. With labels, `values` maps a label value (one
    label) or a tuple of label values to a number; without, it is the number."""
    labels = list(labels)
    m = (CounterMetricFamily if kind == "c" else GaugeMetricFamily)(name, doc, labels=labels)
    if not labels:
        m.add_metric([], values)
        return m
    for k, v in sorted(values.items()):
        m.add_metric([str(x) for x in (k if isinstance(k, tuple) else (k,))], v)
    return m


class Endpoint:
    """A collector's /metrics on address:port (in namespace `netns`, when given: the listening
    socket is made there, the serving thread needs nothing else). Context manager."""

    def __init__(self, collector, port: int, address: str = "127.0.0.1", netns: str | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(collector)
        try:
            with in_netns(netns):
                self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as e:
            raise OSError(e.errno, f"metrics endpoint {address}:{port}: {e.strerror or e}") from None
        self.port = self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scrape_samples(url: str, timeout: float = 2.0) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of an endpoint: {sample name (with _total): {sorted label pairs: value}}."""
    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.name.endswith("_created"):
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape_in(netns: str | None, address: str, port: int, timeout: float = 2.0):
    """scrape_samples() of http://address:port/metrics from inside `netns`."""
    with in_netns(netns):
        return scrape_samples(f"http://{address}:{port}/metrics", timeout)


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords,
    label names (in {...} or by/without/on/ignoring lists), durations or Grafana variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                # strings (label values)
    e = re.sub(r"\{[^}]*\}", "", e)                                 # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)                              # $__rate_interval, ${var}
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word, rest = m.group(0), e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS or e[m.start() - 1:m.start()].isdigit():
            continue  # a function, a keyword, or a duration's unit (5m)
        names.add(word)
    return names


def dashboard_metrics(path: str | Path) -> set[str]:
    """Every metric name the PromQL targets of a Grafana dashboard JSON read (rows' nested panels too)."""
    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))
    d = json.loads(Path(path).read_text())
    return {n for p in panels(d["panels"]) for t in p.get("targets", []) for n in promql_metrics(t.get("expr", ""))}
