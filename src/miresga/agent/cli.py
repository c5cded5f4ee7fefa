"""`miresga agent attach|detach|stats|sweep --iface IF [--netns NS] [--config FILE]`.

`attach` loads the agent, pins its maps and programs under /sys/fs/bpf/miresga/<netns>/agent/ and
exits; the TC filters keep it running. The other commands find it through those pins.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from miresga.agent.manager import AgentManager, AgentSettings, pin_dir
from miresga.bpf.attach import AttachError
from miresga.agent.metrics import AgentMetrics
from miresga.bpf.netns import ifindex
from miresga.control.config import ConfigError, load_config
from miresga.metrics import Endpoint


def _config(args: argparse.Namespace):
    """The config, with --backend checked and --iface defaulted to that back-end's nic; or None
    after a message."""
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"invalid config:\n{e}", file=sys.stderr)
        return None
    except OSError as e:
        print(f"agent: cannot read config: {e}", file=sys.stderr)
        return None
    names = [b.name for b in cfg.hosts.backends]
    if args.backend is not None and args.backend not in names:
        print(f"agent: --backend {args.backend}: no such back-end in hosts.backends (have: {', '.join(names)})",
              file=sys.stderr)
        return None
    if args.iface is None:
        if args.backend is None:
            print("agent: give --iface, or --backend NAME to use that back-end's hosts.backends.*.nic",
                  file=sys.stderr)
            return None
        args.iface = cfg.backend(args.backend).nic
    return cfg


def _settings(args: argparse.Namespace) -> AgentSettings | None:
    cfg = _config(args)
    return AgentSettings.from_config(cfg, args.backend) if cfg is not None else None


def _attach(args: argparse.Namespace) -> int:
    s = _settings(args)
    if s is None:
        return 1
    try:
        m = AgentManager(s, args.netns, args.iface, pin=True).attach()
    except AttachError as e:
        print(f"agent: {e}", file=sys.stderr)
        return 2
    print(f"agent attached on {args.iface} in {args.netns or 'host'} (ingress {m.ingress_mode}): service ports "
          f"{list(s.service_ports)}, "
          f"window scale {s.window_scale}, capacity {s.capacity}; pinned at {pin_dir(args.netns)}")
    return 0  # exit without detaching: the filters and the pins keep the agent alive


def _run(args: argparse.Namespace) -> int:
    """Attach, serve metrics (in the agent's namespace), sweep idle flows until SIGINT/SIGTERM,
    detach."""
    cfg = _config(args)
    if cfg is None:
        return 1
    s = AgentSettings.from_config(cfg, args.backend)
    a = cfg.agent
    try:
        ifindex(args.netns, args.iface)
    except OSError:
        print(f"agent: no interface {args.iface!r}" + (f" in namespace {args.netns}" if args.netns else ""),
              file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # `miresga reload` signals the front-ends (they own rules, pools and back-end state); a SIGHUP
    # here must not end the process (its default action)
    signal.signal(signal.SIGHUP, lambda *_: print("miresga agent: SIGHUP: nothing to reload here (front-ends "
                                                  "apply rules and pools; agent settings need a restart)", flush=True))
    try:
        m = AgentManager(s, args.netns, args.iface, pin=True, adopt=True).attach()
    except (OSError, AttachError) as e:
        print(f"agent: {e}", file=sys.stderr)
        return 2
    if m.adopted:
        print(f"agent: running agent adopted on {args.iface} (flows kept)", flush=True)
    m.keep = args.keep_dataplane
    try:
        try:
            endpoint = Endpoint(AgentMetrics(m), a.metrics_port, str(a.metrics_address), netns=args.netns)
        except OSError as e:
            print(f"agent: {e}", file=sys.stderr)
            return 2  # released on the way out (detached, unless kept)
        with endpoint:
            print(f"agent running on {args.iface} in {args.netns or 'host'} (ingress {m.ingress_mode}); "
                  f"sweeping flows idle > "
                  f"{s.idle_timeout_s}s; metrics on {a.metrics_address}:{a.metrics_port}", flush=True)
            m.run_forever(stop)
        print(json.dumps(m.stats()))
    finally:
        if m.keep:
            m.close_kept()
            print("agent: stopped; left attached (the next start adopts it, `miresga agent detach` removes it)",
                  flush=True)
        else:
            m.detach()
    return 0


def _pinned(args: argparse.Namespace) -> AgentManager | None:
    if args.iface is None and _config(args) is None:
        return None
    try:
        return AgentManager.from_pins(args.netns, args.iface)
    except FileNotFoundError as e:
        print(str(e), file=sys.stderr)
        return None


def _detach(args: argparse.Namespace) -> int:
    m = _pinned(args)
    if m is None:
        return 1
    m.detach()
    print(f"agent detached from {args.iface} in {args.netns or 'host'}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    m = _pinned(args)
    if m is None:
        return 1
    try:
        print(json.dumps(m.stats(), indent=2))
    finally:
        for mp in m.maps.values():
            mp.close()
    return 0


def _sweep(args: argparse.Namespace) -> int:
    m = _pinned(args)
    if m is None:
        return 1
    s = _settings(args)
    if s is None:
        return 1
    try:
        n = m.sweep(idle_timeout_s=args.idle if args.idle is not None else s.idle_timeout_s)
    finally:
        for mp in m.maps.values():
            mp.close()
    print(f"removed {n} idle flows")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("agent", help="back-end agent (eBPF sequence translation)")
    sub = p.add_subparsers(dest="agent_cmd", required=True)
    for name, func, help_ in [("attach", _attach, "load, pin and attach the agent"),
                              ("run", _run, "attach, sweep idle flows until stopped, detach"),
                              ("detach", _detach, "remove the agent's filters and pins"),
                              ("stats", _stats, "print the agent's counters as JSON"),
                              ("sweep", _sweep, "remove flows idle longer than the timeout")]:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--iface", default=None, help="the back-end's fabric interface (default: --backend's nic)")
        c.add_argument("--netns", default=None)
        c.add_argument("--config", default=None, help="deployment YAML (default: built-in)")
        c.add_argument("--backend", default=None, help="back-end name whose service port to translate "
                                                          "(default: every back-end's)")
        if name == "run":
            c.add_argument("--keep-dataplane", action="store_true",
                           help="on stop, leave the agent attached (spliced connections keep their translation); "
                                "the next `run` adopts it (systemd units use this)")
        if name == "sweep":
            c.add_argument("--idle", type=float, default=None, help="seconds (default cfg.agent.idle_timeout_s)")
        c.set_defaults(func=func)
