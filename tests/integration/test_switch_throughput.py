"""A real kernel TCP stream over the switch's offloaded rewrite path (back-end -> client as
VIP:port, client ACKs -> back-end), next to kernel routing and the eBPF routed path."""

from __future__ import annotations

import pytest

from benchmarks import switch_throughput as throughput

pytestmark = pytest.mark.netns


def test_offloaded_stream_flows_and_is_measured(record_property):
    res = throughput.measure(total=128 << 20, repeats=1)
    rates = {k: v for k, v in res.items() if not k.endswith("_pps")}
    for k, v in rates.items():
        record_property(f"{k}_bytes_per_s", int(v[0]))
        print(f"{k}: {v[0] / 1e9:.2f} GB/s")
    assert all(v[0] > 10e6 for v in rates.values())  # every path carried the whole stream
    assert res["routed_pps"][0] > 0 and res["offload_pps"][0] > 0   # ... through the switch program
