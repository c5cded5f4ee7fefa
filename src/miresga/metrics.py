"""Prometheus conventions shared by every Miresga process (switch, front-ends, agents).

Each process has one collector that yields metric families named `miresga_<component>_<name>`;
counters end in `_total` on the wire, gauges do not; a process does not label its own name (the
scrape target's `instance` says which). Each serves `/metrics` on `<component>.metrics_address`
(default 127.0.0.1) and `<component>.metrics_port`, never on the fabric address clients reach.
The reference of every metric: docs/metrics.md.
"""

from __future__ import annotations

import urllib.request
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
