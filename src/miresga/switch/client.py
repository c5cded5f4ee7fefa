"""Client of the switch controller's gRPC API, for front-ends and `miresga status`.

Keys are (client ip as int in host order, client port). Statuses and states are plain strings:
write -> "ok" | "exists" | "not_found" | "table_full" | "queued"; read -> "installed" | "queued" |
"absent". RPC failures raise grpc.RpcError (its .code() and .details() say why).
"""

from __future__ import annotations

import grpc

from miresga._proto import control_pb2 as pb
from miresga._proto import control_pb2_grpc as pb_grpc

_STATUS = {pb.WRITE_OK: "ok", pb.WRITE_EXISTS: "exists", pb.WRITE_NOT_FOUND: "not_found",
           pb.WRITE_TABLE_FULL: "table_full", pb.WRITE_QUEUED: "queued"}
_STATE = {pb.ENTRY_ABSENT: "absent", pb.ENTRY_QUEUED: "queued", pb.ENTRY_INSTALLED: "installed"}


class SwitchClient:
    def __init__(self, address: str, token: str, timeout: float = 5.0):
        self.address, self.timeout = address, timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.SwitchControlStub(self._channel)
        self._md = (("authorization", f"Bearer {token}"),)

    def _call(self, method, request):
        return method(request, metadata=self._md, timeout=self.timeout)

    def write(self, inserts: list[tuple[int, int, int]], deletes: list[tuple[int, int]]) -> list[str]:
        """One status per insert, then one per delete."""
        req = pb.WriteRequest(
            inserts=[pb.InsertEntry(client_ip=ip, client_port=port, backend=b) for ip, port, b in inserts],
            deletes=[pb.FlowKey(client_ip=ip, client_port=port) for ip, port in deletes])
        return [_STATUS[s] for s in self._call(self._stub.Write, req).statuses]

    def read(self, keys: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
        keys = [tuple(k) for k in keys]
        req = pb.ReadRequest(keys=[pb.FlowKey(client_ip=ip, client_port=port) for ip, port in keys])
        return {k: _STATE[s] for k, s in zip(keys, self._call(self._stub.Read, req).states)}

    def idle(self) -> list[tuple[int, int]]:
        return [(k.client_ip, k.client_port) for k in self._call(self._stub.Idle, pb.IdleRequest()).keys]

    def register(self, name: str, address: str) -> dict:
        r = self._call(self._stub.Register, pb.RegisterRequest(name=name, address=address))
        return {"buckets": list(r.buckets), "dead_after_ms": r.dead_after_ms}

    def heartbeat(self, name: str) -> dict:
        r = self._call(self._stub.Heartbeat, pb.HeartbeatRequest(name=name))
        return {"buckets": list(r.buckets), "dead_after_ms": r.dead_after_ms}

    def stats(self) -> dict:
        r = self._call(self._stub.Stats, pb.StatsRequest())
        return {"profile": r.profile, "capacity": r.capacity, "installed": r.installed, "queue": r.queue,
                "rate": r.rate or None, "counters": dict(r.counters), "ops": dict(r.ops),
                "members": [{"name": m.name, "state": m.state, "address": m.address, "buckets": m.buckets}
                            for m in r.members],
                "unauthenticated": r.unauthenticated, "bucket_moves": r.bucket_moves}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SwitchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
