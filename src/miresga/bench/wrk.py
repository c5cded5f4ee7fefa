"""wrk as the load generator: its command line, its Lua scripts, and reading its results.

Every run loads a Lua `done()` that prints one JSON line (marked with MARK) with the request and
byte counts, the error counters and latency percentiles, so results are parsed, never scraped from
wrk's human-readable text. Mixes add a `request()` that walks a fixed schedule of pre-formatted
requests (one Lua table lookup per request; no `response()` callback, which would slow wrk down).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

MARK = "MIRESGA_WRK "
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")

# wrk's latency object is in microseconds; summary.duration too. %.0f keeps large counts exact
# (LuaJIT's %d goes through a C int on some builds).
DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"mean":%.1f,"max":%.1f}}\n',
    "__MARK__", summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
""".replace("__MARK__", MARK)

_MIX_LUA = r"""
local paths = {__PATHS__}
local reqs = {}
local n = #paths
local i = 0
init = function(args)
  -- formatted once per thread, with wrk's -H headers (e.g. Connection: close) and Host
  for k = 1, n do reqs[k] = wrk.format(nil, paths[k]) end
end
-- wrk calls request() once on thread 0 before the run (to detect pipelining): that thread's stream
-- starts one step into the cycle. Still the same sequence every run.
request = function()
  i = i % n + 1
  return reqs[i]
end
"""


def done_script() -> str:
    return DONE_LUA


def mix_script(paths: list[str]) -> str:
    """A wrk script that requests `paths` in this order, over and over, and reports like done_script."""
    if not paths:
        raise ValueError("a mix needs at least one path")
    for p in paths:
        if not p.startswith("/") or any(c in p for c in "\"\\\n\r "):
            raise ValueError(f"unsafe path for a Lua string: {p!r}")
    lua_list = ", ".join(f'"{p}"' for p in paths)
    return _MIX_LUA.replace("__PATHS__", lua_list) + DONE_LUA


def wrk_argv(url: str, *, duration_s: float, connections: int, threads: int, script: str,
             keepalive: bool, timeout_s: float, headers: tuple[str, ...] | list[str] = ()) -> list[str]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{_secs(duration_s)}", "--timeout", _secs(timeout_s),
            "-s", script]
    for h in headers:  # e.g. "Host: prism.bench" (wrk then leaves out its own Host)
        if "\n" in h or "\r" in h or ":" not in h:
            raise ValueError(f"bad header {h!r}")
        argv += ["-H", h]
    if not keepalive:
        # the server answers "Connection: close" and closes; wrk then reconnects for the next request
        argv += ["-H", "Connection: close"]
    return argv + [url]


def _secs(x: float) -> str:
    return f"{x:g}s" if x == int(x) else f"{int(x * 1000)}ms"


class WrkOutputError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    duration_s: float
    requests: int
    bytes: int
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)   # p50, p90, p99, mean, max

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())


def parse_wrk_output(stdout: str) -> WrkResult:
    """The result from wrk's stdout: the last MARK line printed by DONE_LUA."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        tail = stdout.strip().splitlines()[-3:]
        raise WrkOutputError(f"wrk printed no {MARK.strip()} line (was the done() script loaded?): {tail}")
    try:
        d = json.loads(lines[-1][len(MARK):])
        errors = {k: int(d["errors"][k]) for k in ERROR_KINDS}
        lat = {k: float(v) / 1000.0 for k, v in d["latency_us"].items()}
        res = WrkResult(duration_s=float(d["duration_us"]) / 1e6, requests=int(d["requests"]),
                        bytes=int(d["bytes"]), errors=errors, latency_ms=lat)
    except (ValueError, KeyError, TypeError) as e:
        raise WrkOutputError(f"bad wrk result line {lines[-1]!r}: {e}") from e
    if res.requests < 0 or res.bytes < 0 or res.duration_s < 0:
        raise WrkOutputError(f"negative counts in {lines[-1]!r}")
    return res
