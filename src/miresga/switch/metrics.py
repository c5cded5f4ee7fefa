"""The switch's Prometheus metrics (`miresga_switch_*`): read from the control plane at each
scrape — its Stats (the same numbers as `miresga status`) and the data plane's per-CPU counters.
The control plane is thread-safe, so the HTTP thread may read it directly."""

from __future__ import annotations

from miresga.metrics import family

P = "miresga_switch_"
DROP = "drop_"
MEMBER_STATES = ("static", "alive", "dead")


def split_counters(counters: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """The data plane's counters as (decisions, drops by reason without the drop_ prefix)."""
    decisions = {k: v for k, v in counters.items() if not k.startswith(DROP)}
    drops = {k[len(DROP):]: v for k, v in counters.items() if k.startswith(DROP)}
    return decisions, drops


class SwitchMetrics:
    """Collector over a ControlPlane (miresga.switch.server)."""

    def __init__(self, cp, port_modes: dict[str, str] | None = None):
        """`port_modes`: interface -> "xdp" | "tc", how the data plane is attached there."""
        self.cp = cp
        self.port_modes = dict(port_modes or {})

    def collect(self):
        s = self.cp.stats()
        decisions, drops = split_counters(s["counters"])
        yield family("g", P + "info", "the switch's hardware profile (value 1)", ["profile"], {s["profile"]: 1})
        yield family("g", P + "service", "the VIP:port services the data plane serves (value 1); index is the "
                     "service index of offload entries", ["index", "service", "vip"],
                     {(str(i), sv.name, f"{sv.vip.address}:{sv.vip.port}"): 1
                      for i, sv in enumerate(self.cp.cfg.all_services())})
        yield family("g", P + "port_attach", "how the data plane is attached to each interface (value 1): "
                     "native XDP or TC (switch.attach)", ["interface", "mode"],
                     {(i, m): 1 for i, m in self.port_modes.items()})
        yield family("c", P + "packets", "data plane: packets by decision (to_client: offloaded responses, "
                     "the fast path)", ["decision"], decisions)
        yield family("c", P + "drops", "data plane: packets dropped, by reason", ["reason"], drops)
        yield family("g", P + "offload_entries", "offload table: entries installed in the data plane",
                     values=s["installed"])
        yield family("g", P + "offload_intended", "offload table: entries installed or waiting in the queue",
                     values=s["intended"])
        yield family("g", P + "offload_capacity", "offload table: entries the profile holds", values=s["capacity"])
        yield family("g", P + "offload_idle_entries", "offload entries idle longer than switch.idle_timeout_s "
                     "(last scan; front-ends delete them)", values=len(self.cp.idle()))
        yield family("g", P + "insert_queue", "offload operations waiting for the driver or in flight",
                     values=s["queue"])
        yield family("g", P + "insert_rate_limit", "offload operations per second the profile allows (0: unlimited)",
                     values=s["rate"] or 0)
        yield family("c", P + "offload_writes", "offload writes from front-ends, by operation and answer",
                     ["op", "status"], {(op, st): n for op, by in s["writes"].items() for st, n in by.items()})
        yield family("c", P + "offload_applied", "offload operations the driver completed (the insert and "
                     "delete rates)", ["op"], s["applied"])
        yield family("c", P + "offload_apply_failed", "operations the data plane refused (map smaller than the "
                     "profile)", values=s["ops"].get("apply_failed", 0))
        members = s["members"]
        yield family("g", P + "frontend_alive", "1 if the front-end is registered and heartbeating", ["frontend"],
                     {m["name"]: int(m["state"] == "alive") for m in members})
        yield family("g", P + "frontend_state", "1 for the front-end's membership state: static (configured, "
                     "never registered), alive, dead", ["frontend", "state"],
                     {(m["name"], st): int(m["state"] == st) for m in members for st in MEMBER_STATES})
        yield family("g", P + "frontend_buckets", "hash buckets (of 256) owned by the front-end", ["frontend"],
                     {m["name"]: m["buckets"] for m in members})
        yield family("c", P + "bucket_moves", "buckets moved between front-ends by membership changes",
                     values=s["bucket_moves"])
        yield family("c", P + "control_refused", "control API refusals: tls (connection without a trusted "
                     "certificate), token (wrong or missing token), identity (call not allowed to its "
                     "certificate)", ["reason"], s["refused"])
