"""Client of the switch controller's gRPC API, for front-ends and `miresga status`.

Keys are (client ip as int in host order, client port, service index: the position of the VIP:port
in the config's all_services(), 0 = the top-level vip). Statuses and states are plain strings:
write -> "ok" | "exists" | "not_found" | "table_full" | "queued"; read -> "installed" | "queued" |
"absent". RPC failures raise grpc.RpcError (its .code() and .details() say why).

With TLS (config switch.control.tls_dir) the client presents its own certificate (a front-end's
name, or `admin` for read-only tools) and checks the server's against the CA under the switch's
name: `SwitchClient.from_config(cfg, address, identity)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from miresga._proto import control_pb2 as pb
from miresga._proto import control_pb2_grpc as pb_grpc

Key = tuple[int, int, int]   # client ip, client port, service index


def _flow_key(key) -> pb.FlowKey:
    ip, port, svc = key
    return pb.FlowKey(client_ip=ip, client_port=port, service=svc)


_STATUS = {pb.WRITE_OK: "ok", pb.WRITE_EXISTS: "exists", pb.WRITE_NOT_FOUND: "not_found",
           pb.WRITE_TABLE_FULL: "table_full", pb.WRITE_QUEUED: "queued",
           pb.WRITE_UNKNOWN_SERVICE: "unknown_service"}
_STATE = {pb.ENTRY_ABSENT: "absent", pb.ENTRY_QUEUED: "queued", pb.ENTRY_INSTALLED: "installed"}


@dataclass(frozen=True)
class ClientTls:
    """What a client needs for mutual TLS: the CA to check the server with, the name the server's
    certificate must carry (the switch's name, not its address), and its own key and certificate
    (None: present none, which the server refuses)."""

    ca: bytes
    server_name: str
    key: bytes | None = None
    cert: bytes | None = None

    @classmethod
    def from_dir(cls, tls_dir: str | Path, identity: str, server_name: str) -> "ClientTls":
        from miresga.control.certs import TlsDir
        d = TlsDir(Path(tls_dir))
        key, cert = d.pair(identity)
        return cls(d.ca_pem(), server_name, key, cert)

    def channel(self, address: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                             certificate_chain=self.cert)
        return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", self.server_name)])


class SwitchClient:
    def __init__(self, address: str, token: str, timeout: float = 5.0, tls: ClientTls | None = None):
        self.address, self.timeout = address, timeout
        self._channel = tls.channel(address) if tls is not None else grpc.insecure_channel(address)
        self._stub = pb_grpc.SwitchControlStub(self._channel)
        self._md = (("authorization", f"Bearer {token}"),)

    @classmethod
    def from_config(cls, cfg, address: str, identity: str, timeout: float = 5.0) -> "SwitchClient":
        """A client as `identity` (a front-end's name, or "admin"), with TLS if the config has a
        tls_dir; reads the certificate files now, so a missing one fails here."""
        ctl = cfg.switch.control
        tls = ClientTls.from_dir(ctl.tls_dir, identity, cfg.switch.name) if ctl.tls_dir is not None else None
        return cls(address, ctl.token, timeout, tls)

    def _call(self, method, request):
        return method(request, metadata=self._md, timeout=self.timeout)

    def write(self, inserts: list[tuple[int, int, int, int]], deletes: list[Key]) -> list[str]:
        """`inserts`: (client ip, client port, svc, backend); `deletes`: keys. One status per
        insert, then one per delete."""
        req = pb.WriteRequest(
            inserts=[pb.InsertEntry(client_ip=ip, client_port=port, service=svc, backend=b)
                     for ip, port, svc, b in inserts],
            deletes=[_flow_key(k) for k in deletes])
        return [_STATUS[s] for s in self._call(self._stub.Write, req).statuses]

    def read(self, keys: list[Key]) -> dict[Key, str]:
        keys = [tuple(k) for k in keys]
        req = pb.ReadRequest(keys=[_flow_key(k) for k in keys])
        return {k: _STATE[s] for k, s in zip(keys, self._call(self._stub.Read, req).states)}

    def idle(self) -> list[Key]:
        return [(k.client_ip, k.client_port, k.service) for k in self._call(self._stub.Idle, pb.IdleRequest()).keys]

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
                "unauthenticated": r.unauthenticated, "bucket_moves": r.bucket_moves, "refused": dict(r.refused)}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SwitchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
