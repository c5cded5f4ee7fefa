"""Attach an ingress program the way the config asks: `tc`, `xdp` (native) or `auto` (native XDP
where the driver takes it, TC otherwise), for the switch's ports and the agent's interface.

One program source builds both ways (bpf/lib/pkt_ctx.h); the caller hands over both builds of the
program and gets back the attachment and the mode that interface got, which it logs and reports.
"""

from __future__ import annotations

import json
import logging
import subprocess

from miresga.bpf.libbpf import (BpfError, Program, TcAttachment, XdpAttachment, tc_detach_if, tc_prog_id,
                                xdp_detach_if, xdp_prog_id)

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
            raise ValueError(f"attach mode {mode!r} needs the XDP build of the program")
        try:
            return XdpAttachment(netns, ifindex, xdp_prog, replace=replace), "xdp"
        except BpfError as e:
            if mode == "xdp":
                raise AttachError(f"{ifname}: the driver refuses native XDP for the {who} ({e.strerror}); "
                                  "set attach: tc (or auto) for this interface") from None
            log.info("%s: native XDP refused (%s), %s attached with TC", ifname, e.strerror, who)
    return TcAttachment(netns, ifindex, "ingress", tc_prog, priority=priority, replace=replace), "tc"


def prog_name(prog: int) -> str | None:
    """A loaded program's name by id (bpftool), None if there is none."""
    p = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog)], capture_output=True, text=True)
    return json.loads(p.stdout or "{}").get("name") if p.returncode == 0 else None


def detach_mode(netns: str | None, ifindex: int, mode: str, name: str, *, handle: int, priority: int) -> bool:
    """Remove the ingress program named `name` attached in `mode` (tc: the TC filter at
    (handle, priority); xdp: the native XDP program) from the interface, if it is there, and only
    it: someone else's program stays. A restart that changes an interface's mode uses it to remove
    the earlier mode's program (under XDP, packets passed on would meet it again in TC)."""
    if mode == "tc":
        prog = tc_prog_id(netns, ifindex, "ingress", handle, priority)
        if prog is None or prog_name(prog) != name:
            return False
        return tc_detach_if(netns, ifindex, "ingress", handle, priority, prog)
    prog = xdp_prog_id(netns, ifindex)
    if prog is None or prog_name(prog) != name:
        return False
    return xdp_detach_if(netns, ifindex, prog)
