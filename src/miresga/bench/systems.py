"""The systems under test: a name, the address:port the client hits, and optional extra columns.

Adding a system is one entry: `System("miresga", vip, port, probe=...)`. A probe is called just
before a measurement point and returns a function that, called just after it, gives extra report
columns for that point (for example the share of bytes that took the switch fast path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

Extras = dict[str, float]
Probe = Callable[[], Callable[[], Extras]]

DIRECT = "direct"
PEERS = ("nginx", "haproxy")     # the software L7 load balancers: "best peer" is the best of these
ORDER = (DIRECT, *PEERS, "miresga")


class SystemSpecError(ValueError):
    pass


@dataclass(frozen=True)
class System:
    name: str
    address: str
    port: int
    probe: Probe | None = None

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}{path}"


def systems_from_status(status: Mapping[str, Any]) -> dict[str, System]:
    """Every system a testbed offers (`testbed status --json`): the peers, and `miresga` on the VIP
    once the load balancer exists. Ordered direct, nginx, haproxy, miresga, then any others."""
    found = {name: System(name, p["address"], int(p["port"])) for name, p in status.get("peers", {}).items()}
    vip = status.get("vip")
    if vip:
        found["miresga"] = System("miresga", vip["address"], int(vip["port"]))
    return dict(sorted(found.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0])))



def resolve_systems(wanted: Sequence[str | System] | Mapping[str, System | tuple[str, int]] | None,
                    available: Mapping[str, System]) -> list[System]:
    """Names are looked up in `available`; System objects and name -> (address, port) pairs are
    taken as given (so a caller can add a system the testbed does not describe, or attach a probe)."""
    if wanted is None:
        return list(available.values())
    items: list[tuple[str, Any]]
    if isinstance(wanted, Mapping):
        items = list(wanted.items())
    else:
        items = [(w.name if isinstance(w, System) else w, w) for w in wanted]
    out: list[System] = []
    for name, spec in items:
        if isinstance(spec, System):
            out.append(spec)
        elif isinstance(spec, tuple):
            out.append(System(name, spec[0], int(spec[1])))
        elif spec in available:
            out.append(available[spec])
        else:
            raise SystemSpecError(f"unknown system {spec!r}: this testbed offers {', '.join(available) or 'none'}")
    names = [s.name for s in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemSpecError(f"system(s) listed twice: {', '.join(sorted(dup))}")
    return out
