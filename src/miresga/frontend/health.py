"""Back-end health: the pure part decides (rise/fall hysteresis), a thin adapter probes.

`HealthTracker.observe(index, ok)` returns the new state when a back-end crosses its threshold;
`probe(url, timeout)` is the only I/O (one HTTP GET to the back-end's *direct* port, never the
service port, so probes never look like spliced traffic to the switch).
"""

from __future__ import annotations

import http.client


class HealthTracker:
    def __init__(self, n: int, rise: int = 2, fall: int = 2):
        self.healthy = [True] * n   # start healthy: serve at once, checks prune within `fall` rounds
        self.rise, self.fall = rise, fall
        self._streak = [0] * n      # consecutive results contradicting the current state

    def observe(self, index: int, ok: bool) -> bool | None:
        """Feed one check result; the new health if it changed, else None."""
        if ok == self.healthy[index]:
            self._streak[index] = 0
            return None
        self._streak[index] += 1
        if self._streak[index] >= (self.rise if ok else self.fall):
            self.healthy[index] = ok
            self._streak[index] = 0
            return ok
        return None


def check_ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 400


def probe(host: str, port: int, path: str, timeout: float) -> int | None:
    """HTTP status of GET path, or None if the back-end did not answer."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close", "User-Agent": "miresga-health"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None
