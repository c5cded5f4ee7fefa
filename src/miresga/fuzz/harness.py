"""What every fuzz target provides, and the table of targets.

A target loads its program(s) (or the engine), generates inputs from a seeded `random.Random`,
runs one input and returns the invariant violations it saw. Adding an eBPF program to the
campaign is one `TARGETS` entry pointing at its harness class.
"""

from __future__ import annotations

import collections
import importlib
import random
from dataclasses import dataclass, field
from typing import Any

from miresga.control.config import Deployment


@dataclass
class Input:
    entry: str                      # entry point: a program name, or "engine"
    data: bytes = b""               # the frame (eBPF targets)
    ifindex: int = 0                # skb->ingress_ifindex
    ops: list[str] = field(default_factory=list)   # mutations applied ("valid": none)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Violation:
    invariant: str    # checksum | address | state | uncounted_drop | verdict | exception | ...
    detail: str


class Harness:
    """Base of the targets. `stats` counts outcomes by entry point (what the campaign reached)."""

    name = "?"

    def __init__(self, cfg: Deployment):
        self.cfg = cfg
        self.stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.inputs: collections.Counter[str] = collections.Counter()

    def generate(self, rng: random.Random) -> Input:
        raise NotImplementedError

    def execute(self, inp: Input) -> list[Violation]:
        raise NotImplementedError

    def periodic(self) -> list[Violation]:
        """Whole-table checks, every few hundred inputs (what one input cannot show)."""
        return []

    def case_state(self) -> dict:
        """What a replay of the last executed input needs restored (JSON-able)."""
        return {}

    def replay(self, inp: Input, state: dict) -> list[Violation]:
        """Run a saved input from the state it failed in."""
        raise NotImplementedError

    def finish(self) -> list[Violation]:
        """End of the campaign: e.g. everything ended must leave no state."""
        return []

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class Target:
    name: str
    module: str        # miresga.fuzz.<module>
    cls: str           # its Harness class
    bpf_object: str | None = None   # build/bpf/<name>.bpf.o it needs (None: pure Python)
    default_budget: int = 1_000_000


# One entry per entry point family: adding a program to the campaign is one line here (and its harness).
TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("switch", "switch_fuzz", "SwitchHarness", "switch"),
    Target("agent", "agent_fuzz", "AgentHarness", "agent"),
    Target("frontend", "frontend_fuzz", "FrontendHarness", "frontend"),
    Target("engine", "engine_fuzz", "EngineHarness", None),
]}


def make_harness(name: str, cfg: Deployment) -> Harness:
    t = TARGETS[name]
    mod = importlib.import_module(f"miresga.fuzz.{t.module}")
    return getattr(mod, t.cls)(cfg)
