"""Hardware profiles: the limits a real switch's driver imposes on the offload table.

`software` lifts them; `tofino` keeps the reference program's table size (143,360 entries) and the
insert rate reported for P4Runtime writes on a Tofino target (17,000 entries/s by default), with
the batch latency a driver round trip costs. Inserts and deletes share the rate.
"""

from __future__ import annotations

from dataclasses import dataclass

TOFINO_OFFLOAD_CAPACITY = 143_360
SOFTWARE_OFFLOAD_CAPACITY = 143_360  # the BPF map's default size (SW_OFFLOAD_MAX)


@dataclass(frozen=True)
class Profile:
    name: str
    capacity: int
    rate: float | None          # table operations per second; None: unlimited
    batch_latency_s: float      # from the moment a batch is handed to the "driver" to installed
    batch_interval_s: float = 0.01  # burst allowance: at most rate * interval ops per batch

    @property
    def limited(self) -> bool:
        return self.rate is not None

    @property
    def burst(self) -> float:
        return max(1.0, (self.rate or 0) * self.batch_interval_s)


def profile_from_config(sw) -> Profile:
    """`sw` is config.Switch."""
    if sw.profile == "tofino":
        return Profile("tofino", sw.offload_capacity or TOFINO_OFFLOAD_CAPACITY, float(sw.insert_rate),
                       sw.batch_latency_ms / 1000.0)
    return Profile("software", sw.offload_capacity or SOFTWARE_OFFLOAD_CAPACITY, None, 0.0)
