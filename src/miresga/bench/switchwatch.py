"""The switch controller's table over time, for the report: occupancy, insert queue depth and the
write statuses (inserts accepted, refused as `table_full`, ...), sampled every `interval` seconds.

The controller listens inside the switch namespace only, so the sampler is a small process that
enters it (`python -m miresga.bench.switchwatch --config C --netns NS`) and prints one JSON line
per sample; `SwitchWatch` runs it for the whole bench and keeps the samples, and `switch_probe`
turns the samples of one point into report columns. The summaries are pure functions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

Sample = dict[str, Any]   # {"t": unix time, "installed", "queue", "capacity", "ops": {status: count}}


class SwitchWatch:
    """`with SwitchWatch(config_path, netns) as w:` ... `w.between(t0, t1)`."""

    def __init__(self, config: str, netns: str, interval: float = 0.25):
        self.argv = [sys.executable, "-m", "miresga.bench.switchwatch", "--config", str(config), "--netns", netns,
                     "--interval", f"{interval:g}"]
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._p: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> "SwitchWatch":
        self._p = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, name="switchwatch", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._p is not None and self._p.stdout is not None
        for line in self._p.stdout:
            try:
                s = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if "error" in s:
                    self.errors.append(s["error"])
                else:
                    self.samples.append(s)

    def wait_first(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.samples:
                return True
            if self._p is not None and self._p.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def latest(self) -> Sample | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def between(self, t0: float, t1: float) -> list[Sample]:
        """The samples taken in [t0, t1], with the last one before t0 first (the baseline)."""
        with self._lock:
            before = [s for s in self.samples if s["t"] < t0][-1:]
            return before + [s for s in self.samples if t0 <= s["t"] <= t1]

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.terminate()
            try:
                self._p.wait(5)
            except subprocess.TimeoutExpired:
                self._p.kill()
                self._p.wait()
        if self._reader is not None:
            self._reader.join(2)


def summarize(samples: Sequence[Sample]) -> dict[str, float]:
    """Report columns for one point from its samples (first = baseline before the point)."""
    if len(samples) < 2:
        return {}
    first, last = samples[0], samples[-1]
    dt = max(1e-9, last["t"] - first["t"])

    def delta(k: str) -> int:
        return int(last["ops"].get(k, 0)) - int(first["ops"].get(k, 0))
    accepted = delta("ok") + delta("queued")
    return {
        "switch_inserts_per_s": round(accepted / dt, 1),     # inserts + deletes the controller accepted
        "switch_applied_per_s": round(delta("applied") / dt, 1),
        "switch_table_full": delta("table_full"),
        "switch_queue_peak": max(int(s["queue"]) for s in samples),
        "switch_installed_peak": max(int(s["installed"]) for s in samples),
    }


def switch_probe(watch: SwitchWatch, settle: float = 0.3) -> Callable[[], Callable[[], dict[str, float]]]:
    """A System probe (systems.Probe) from a running watch."""
    def begin() -> Callable[[], dict[str, float]]:
        t0 = time.time()

        def end() -> dict[str, float]:
            t1 = time.time()
            time.sleep(settle)   # the sample just after the point ends
            got = watch.between(t0, t1 + settle)
            return summarize(got)
        return end
    return begin


def series(samples: Sequence[Sample], t0: float) -> dict[str, list[float]]:
    """Time series for a plot: seconds since t0, occupancy, queue depth, refusals so far."""
    if not samples:
        return {"t": [], "installed": [], "queue": [], "table_full": []}
    base = int(samples[0]["ops"].get("table_full", 0))
    return {"t": [round(s["t"] - t0, 3) for s in samples],
            "installed": [int(s["installed"]) for s in samples],
            "queue": [int(s["queue"]) for s in samples],
            "table_full": [int(s["ops"].get("table_full", 0)) - base for s in samples]}


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--netns", required=True)
    ap.add_argument("--interval", type=float, default=0.25)
    args = ap.parse_args(argv)
    from miresga.control.config import load_config
    from miresga.switch.cli import _enter_netns
    cfg = load_config(args.config)
    _enter_netns(args.netns)   # before gRPC starts its threads
    from miresga.switch.client import SwitchClient
    # as `miresga status` does: with TLS, the read-only `admin` certificate
    with SwitchClient.from_config(cfg, f"127.0.0.1:{cfg.switch.control.port}", "admin", timeout=5.0) as c:
        while True:
            t = time.time()
            try:
                s = c.stats()
                line: Mapping[str, Any] = {"t": round(t, 3), "installed": s["installed"], "queue": s["queue"],
                                           "capacity": s["capacity"], "ops": s["ops"]}
            except Exception as e:  # noqa: BLE001 - the controller may be restarting: say so, go on
                line = {"t": round(t, 3), "error": str(e)[:200]}
            try:
                print(json.dumps(line), flush=True)
            except BrokenPipeError:
                return 0
            time.sleep(max(0.0, args.interval - (time.time() - t)))


if __name__ == "__main__":
    sys.exit(_main())
