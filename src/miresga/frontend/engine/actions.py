"""What the engine asks the world to do: each entry point returns a list of these (sans I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from miresga.frontend.kernel.handover import Key, KernelCheck, KernelHandover, KernelMark, KernelRemove
from miresga.frontend.segment import Segment


@dataclass(slots=True)
class Send:
    seg: Segment
    to: str  # "client" | "backend" (for metrics and tests; the adapter only needs seg)


class _ClientKey:
    """The connection key of an action that names client ip, port and service."""

    __slots__ = ()

    @property
    def key(self) -> Key:
        return (self.client_ip, self.client_port, self.svc)  # type: ignore[attr-defined]


@dataclass(slots=True)
class OffloadInsert(_ClientKey):
    client_ip: int
    client_port: int
    backend: int
    gen: int  # echo it back in offload_result
    svc: int = 0  # the service (VIP:port) the client reached


@dataclass(slots=True)
class OffloadDelete(_ClientKey):
    client_ip: int
    client_port: int
    svc: int = 0


@dataclass(slots=True)
class OffloadCheck(_ClientKey):
    """Ask the switch whether an entry we believe installed is still there (answer through
    offload_result with the same gen: installed|absent). An entry can vanish without us: another
    front-end acting on an idle report, a controller restart."""

    client_ip: int
    client_port: int
    gen: int
    svc: int = 0


Action = Union[Send, OffloadInsert, OffloadDelete, OffloadCheck, KernelHandover, KernelCheck, KernelMark,
               KernelRemove]
