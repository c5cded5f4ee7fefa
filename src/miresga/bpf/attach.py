"""Attach an ingress program the way the config asks: `tc`, `xdp` (native) or `auto` (native XDP
where the driver takes it, TC otherwise), for the switch's ports and the agent's interface.

One program source builds both ways (bpf/lib/pkt_ctx.h); the caller hands over both builds of the
program and gets back the attachment and the mode that interface got, which it logs and reports.
"""

from __future__ import annotations

import logging

from miresga.bpf.libbpf import BpfError, Program, TcAttachment, XdpAttachment

log = logging.getLogger("miresga.attach")
MODES = ("auto", "xdp", "tc")


class AttachError(Exception):
    """`attach: xdp` on an interface whose driver refuses native XDP; the message says what to do."""


def attach_ingress(netns: str | None, ifindex: int, ifname: str, mode: str, tc_prog: Program,
                   xdp_prog: Program | None, *, priority: int, replace: bool = False,
                   who: str = "program") -> tuple[TcAttachment | XdpAttachment, str]:
    """Attach `who` to the ingress of `ifname`; returns (attachment, "xdp" | "tc").
    `replace`: take the place of an earlier instance (a restart adopting the running data plane)."""
    if mode not in MODES:
        raise ValueError(f"attach mode {mode!r}: one of {MODES}")
    if mode in ("auto", "xdp"):
        if xdp_prog is None:
            raise ValueError("attach mode {mode!r} needs the XDP build of the program")
        try:
            return XdpAttachment(netns, ifindex, xdp_prog, replace=replace), "xdp"
        except BpfError as e:
            if mode == "xdp":
                raise AttachError(f"{ifname}: the driver refuses native XDP for the {who} ({e.strerror}); "
                                  "set attach: tc (or auto) for this interface") from None
            log.info("%s: native XDP refused (%s), %s attached with TC", ifname, e.strerror, who)
    return TcAttachment(netns, ifindex, "ingress", tc_prog, priority=priority, replace=replace), "tc"
