"""The agent's Prometheus metrics (`miresga_agent_*`): read from its maps at each scrape (the
same numbers as `miresga agent stats`)."""

from __future__ import annotations

from miresga.metrics import family

P = "miresga_agent_"


class AgentMetrics:
    """Collector over an attached AgentManager."""

    def __init__(self, manager):
        self.m = manager

    def collect(self):
        m = self.m
        c = m.counters()
        flows = sum(1 for _ in m.maps["agent_flows"].keys())
        yield family("g", P + "flows", "spliced flows in the table", values=flows)
        yield family("g", P + "ingress_attach", "how the ingress program is attached (value 1): native XDP "
                     "or TC (agent.attach)", ["mode"], {m.ingress_mode: 1} if m.ingress_mode else {})
        yield family("g", P + "flow_capacity", "flow table entries (agent.capacity)",
                     values=m.maps["agent_flows"].max_entries)
        yield family("c", P + "translations", "segments whose sequence numbers were translated: in (ack of "
                     "client segments), out (seq of back-end segments)", ["direction"],
                     {"in": c["xlate_in"], "out": c["xlate_out"]})
        yield family("c", P + "drops", "segments dropped, by reason", ["reason"], m.drops(zeros=True))
        yield family("c", P + "stats", "the agent's counters (splice_syn, resplice, synack, removed_*, "
                     "insert_refused, ...; docs/agent.md)", ["counter"], c)
        yield family("c", P + "swept", "idle flows removed by the sweep", values=m.swept)
