"""`miresga switch` (run the controller, loading the data plane if nobody has) and
`miresga status` (occupancy, queue, counters and membership, over the control API)."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import signal
import sys
import threading

from miresga.control.config import demo_refusal, load_config_or_exit

CLONE_NEWNET = 0x40000000


def _enter_netns(name: str | None) -> None:
    """Move the whole process (this thread, hence every thread started later) into `name`.
    Must run before gRPC starts its threads."""
    if not name:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {name}: {os.strerror(e)}")
    finally:
        os.close(fd)



def _switch(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    if args.unload:
        return _unload(args, cfg)
    why = demo_refusal(cfg, "miresga switch")
    if why:
        print(why, file=sys.stderr)
        return 2
    from miresga.control.certs import TlsDir  # no grpc before _enter_netns
    tls = TlsDir(cfg.switch.control.tls_dir) if cfg.switch.control.tls_dir is not None else None
    if tls is None and not args.insecure_control:
        print("miresga switch: refusing to start: switch.control.tls_dir is not set, so the control API would "
              "carry its token in clear and know no front-end by name; make certificates with `miresga certs make "
              "--out DIR --config CFG` and set switch.control.tls_dir: DIR (or pass --insecure-control in a lab)",
              file=sys.stderr)
        return 2
    if tls is not None:
        try:
            tls.pair(cfg.switch.name)
            tls.ca_pem()
        except OSError as e:
            print(f"miresga switch: switch.control.tls_dir: {e}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _enter_netns(args.netns)
    from miresga.metrics import Endpoint
    from miresga.bpf.attach import AttachError
    from miresga.switch.dataplane import (AdoptError, PortError, SwitchDataplane, default_pin_dir, frontend_hops,
                                          ports_for)
    from miresga.switch.metrics import SwitchMetrics
    from miresga.switch.server import ControlPlane, ControlServer, MapTables, internal_addresses

    pin_dir = default_pin_dir(args.netns)
    try:
        ports = ports_for(cfg, None)
        dp = SwitchDataplane(cfg, None, ports, pin_dir=pin_dir, adopt=True)
    except (PortError, AdoptError, AttachError) as e:
        print(f"miresga switch: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # bpffs, the object file, the kernel refusing the program
        print(f"miresga switch: cannot load the data plane: {e}", file=sys.stderr)
        return 2
    where = (f"{len(dp.attachments)} interfaces ({len(ports)} hosts; "
             f"{', '.join(f'{i} {m}' for i, m in dp.port_modes.items())})")
    if dp.adopted:
        changed = {k: v for k, v in dp.reconciled.items() if v}
        how = (f"running data plane adopted on {where} (maps at {pin_dir}; offloaded connections kept; "
               f"changed from config: {', '.join(f'{k} {v}' for k, v in changed.items()) or 'nothing'})")
    else:
        how = f"data plane loaded on {where}"
    stop, wake, hup = threading.Event(), threading.Event(), threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (stop.set(), wake.set()))
    # `miresga reload` signals the switch first, then the front-ends (they own rules, pools and
    # back-end state): here a reload adds the services appended to the config.
    signal.signal(signal.SIGHUP, lambda *_: (hup.set(), wake.set()))
    try:
        cp = ControlPlane(cfg, MapTables(dp.maps, frontend_hops(cfg, ports)), dead_after_s=args.dead_after)
        sw = cfg.switch
        with ControlServer(cp, args.listen or internal_addresses(cfg), tls=tls) as srv, \
                Endpoint(SwitchMetrics(cp, dp.port_modes), sw.metrics_port, str(sw.metrics_address)):
            print(f"miresga switch: {how}; services {cfg.services_line()}; control API on port {srv.port} "
                  f"({'mutual TLS' if tls else 'no TLS, token only'}), profile {cp.profile.name}; "
                  f"metrics on {sw.metrics_address}:{sw.metrics_port}", flush=True)
            while not stop.is_set():
                wake.wait()
                wake.clear()
                if hup.is_set() and not stop.is_set():
                    hup.clear()
                    cfg = _reload(args.config, cfg, dp, cp)
    except OSError as e:  # a listening address taken or missing (control API, metrics)
        print(f"miresga switch: {e}", file=sys.stderr)
        return 2
    finally:
        dp.close(keep=args.keep_dataplane)
        if args.keep_dataplane:
            print(f"miresga switch: stopped; data plane left running (maps at {pin_dir}): the next start "
                  "adopts it, `miresga switch --unload` removes it", flush=True)
    return 0


def _reload(path: str, cfg, dp, cp):
    """SIGHUP: apply the config file's services added at the end (the data plane's service tables
    and the controller's count); everything else the switch uses needs a restart, and the
    front-ends' rules and pools are theirs. Returns the config now running."""
    from miresga.control.config import ConfigError, load_config
    from miresga.frontend.pools import check_reload
    from miresga.switch.dataplane import reconcile
    try:
        new = load_config(path)
        why = check_reload(cfg, new)
    except (ConfigError, OSError) as e:
        why = [str(e)]
    if why:
        print("miresga switch: reload refused, nothing changed:\n  " + "\n  ".join(why), flush=True)
        return cfg
    if len(new.all_services()) == len(cfg.all_services()):
        print("miresga switch: reload: no service added; nothing here to change (the front-ends apply rules "
              "and pools)", flush=True)
        return cfg
    with cp.lock:   # the count first refuses, then allows, offloads of the new services
        changed = reconcile(dp.maps, new, dp.ports, dp.trace)
        cp.set_services(new)
    print(f"miresga switch: reload applied: services {new.services_line()} "
          f"({', '.join(f'{k} {v}' for k, v in changed.items() if v)})", flush=True)
    return new


def _unload(args: argparse.Namespace, cfg) -> int:
    """Remove a data plane left running by --keep-dataplane (or by a killed switch)."""
    from miresga.switch.dataplane import default_pin_dir, detach_switch
    pin_dir = default_pin_dir(args.netns)
    done = [i for i in sorted({h.interface for h in cfg.hosts.all() if h.interface})
            if detach_switch(args.netns, i)]
    had_pins = pin_dir.exists()
    shutil.rmtree(pin_dir, ignore_errors=True)
    if not done and not had_pins:
        print("miresga switch --unload: no data plane found", file=sys.stderr)
        return 1
    print(f"miresga switch: data plane removed from {', '.join(sorted(set(done))) or 'no port'}"
          + (f"; {pin_dir} unpinned" if had_pins else ""))
    return 0


def format_status(s: dict) -> str:
    rate = "unlimited" if not s["rate"] else f"{s['rate']:.0f} ops/s"
    lines = [f"profile   {s['profile']} ({rate})",
             f"offload   {s['installed']} / {s['capacity']} entries ({100.0 * s['installed'] / max(1, s['capacity']):.2f}%)",
             f"queue     {s['queue']} operations waiting",
             "writes    " + ", ".join(f"{k}={v}" for k, v in sorted(s["ops"].items())),
             f"auth      {s['unauthenticated']} unauthenticated calls refused; "
             f"{s.get('refused', {}).get('tls', 0)} connections without a trusted certificate, "
             f"{s.get('refused', {}).get('identity', 0)} calls denied to their identity",
             "front-ends:"]
    for m in s["members"]:
        lines.append(f"  {m['name']:<8} {m['state']:<7} {m['buckets']:>3} buckets  {m['address']}")
    lines.append(f"  bucket moves: {s['bucket_moves']}")
    nz = {k: v for k, v in s["counters"].items() if v}
    lines.append("data plane: " + (", ".join(f"{k}={v}" for k, v in sorted(nz.items())) or "no packets yet"))
    if s.get("attach"):
        lines.append("attached  " + ", ".join(f"{i} {m}" for i, m in s["attach"].items()))
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    _enter_netns(args.netns)
    import grpc
    from miresga.switch.client import SwitchClient
    address = args.address or f"127.0.0.1:{cfg.switch.control.port}"
    try:
        c = SwitchClient.from_config(cfg, address, args.identity, timeout=5.0)
    except OSError as e:
        print(f"status: switch.control.tls_dir: {e}", file=sys.stderr)
        return 1
    with c:
        try:
            s = c.stats()
        except grpc.RpcError as e:
            hint = ""
            if e.code() == grpc.StatusCode.UNAVAILABLE and cfg.switch.control.tls_dir is None:
                hint = ("\n(a switch serving mutual TLS needs its deployment's config, with switch.control.tls_dir; "
                        "a testbed instance's is /run/miresga/<id>/config.yaml)")
            print(f"status: {address}: {e.code().name}: {e.details()}{hint}", file=sys.stderr)
            return 1
    # read from this host's kernel (not the control API): empty when asked from another host
    from miresga.switch.dataplane import attached_modes
    s["attach"] = attached_modes(None, [h.interface for h in cfg.hosts.all() if h.interface])
    print(json.dumps(s, indent=1) if args.json else format_status(s))
    return 0


def register(sub) -> None:
    p = sub.add_parser("switch", help="run the switch controller (loads the eBPF data plane if needed)")
    p.add_argument("--config", help="deployment config (default: built-in)")
    p.add_argument("--netns", help="switch namespace (testbed: mg<inst>-sw)")
    p.add_argument("--listen", help="gRPC listen address (default: 127.0.0.1 and the front-ends' gateways, <switch.control.port>)")
    p.add_argument("--dead-after", type=float, default=3.0, help="seconds without heartbeat before a front-end is out")
    p.add_argument("--insecure-control", action="store_true",
                   help="serve the control API without TLS (token only) when switch.control.tls_dir is unset")
    p.add_argument("--keep-dataplane", action="store_true",
                   help="on stop, leave the data plane forwarding (offloaded connections keep flowing); the next "
                        "start adopts it and applies the config's changes (systemd units use this)")
    p.add_argument("--unload", action="store_true", help="remove a data plane left running and exit")
    p.set_defaults(func=_switch)
    s = sub.add_parser("status", help="switch table occupancy, queue, counters, front-ends")
    s.add_argument("--config", help="deployment config (default: built-in)")
    s.add_argument("--address", help="controller address (default 127.0.0.1:<switch.control.port>)")
    s.add_argument("--netns", help="namespace to call from (e.g. the switch's)")
    s.add_argument("--identity", default="admin", help="whose certificate to present with TLS (default admin: read-only)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status)
