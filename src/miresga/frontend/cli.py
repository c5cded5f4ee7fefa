"""`miresga frontend`: run one front-end (normally inside its host's namespace), or show the
status of a running one (`--status`, read from its metrics endpoint)."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import threading

from miresga.control.config import demo_refusal, load_config_or_exit


def _status(args: argparse.Namespace, cfg) -> int:
    from miresga.bpf.netns import in_netns
    from miresga.frontend.metrics import format_summary, scrape
    url = f"http://{cfg.frontend.metrics_address}:{cfg.frontend.metrics_port}/metrics"
    try:
        with in_netns(args.netns):
            m = scrape(url)
    except OSError as e:
        print(f"front-end {args.name}: no metrics at {url}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    print(f"front-end {args.name} ({url})")
    print("\n".join(format_summary(m)))
    return 0


def _run(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    host = next((h for h in cfg.hosts.frontends if h.name == args.name), None)
    if host is None:
        print(f"miresga frontend: no front-end named {args.name!r} in hosts.frontends (have: "
              f"{', '.join(h.name for h in cfg.hosts.frontends)})", file=sys.stderr)
        return 2
    if args.status:
        return _status(args, cfg)
    why = demo_refusal(cfg, "miresga frontend")
    if why:
        print(why, file=sys.stderr)
        return 2
    if cfg.switch.control.tls_dir is not None and not args.no_switch:
        from miresga.control.certs import TlsDir
        try:  # fail now, not in the offload worker's first connection
            d = TlsDir(cfg.switch.control.tls_dir)
            d.pair(args.name)
            d.ca_pem()
        except OSError as e:
            print(f"miresga frontend: switch.control.tls_dir: {e}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR2)   # `kill -USR2 <pid>`: every thread's stack to stderr
    from miresga.bpf.netns import in_netns
    from miresga.frontend.server import FrontendServer, ServerOptions
    opts = ServerOptions(name=args.name, iface=args.iface or host.nic, gateway_mac=args.gateway_mac,
                         switch_address="" if args.no_switch else args.switch, health=not args.no_health,
                         config_path=args.config)
    # Threads started inside the block inherit the namespace; the whole process lives there.
    from miresga.neighbours import NeighbourError
    with in_netns(args.netns):
        try:
            server = FrontendServer(cfg, opts)
        except NeighbourError as e:
            print(f"miresga frontend: the switch's MAC (gateway {host.gateway} on {opts.iface}): {e}; or pass "
                  "--gateway-mac", file=sys.stderr)
            return 2
        except OSError as e:   # the interface missing, no permission for packet sockets or BPF
            print(f"miresga frontend: {opts.iface}: {e}", file=sys.stderr)
            return 2

        def stop(*_):
            server.stop.set()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            signal.signal(signal.SIGHUP, server.ops.want_reload)    # `miresga reload`
            signal.signal(signal.SIGUSR1, server.ops.want_reopen)   # logrotate: reopen the access log
        server.run()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frontend", help="run a front-end (splice engine + packet I/O)", description=__doc__)
    p.add_argument("--config", help="deployment config (default: built-in)")
    p.add_argument("--name", required=True, help="front-end name from hosts.frontends")
    p.add_argument("--netns", help="network namespace to run in (the host's)")
    p.add_argument("--iface", help="fabric interface (default: the front-end's hosts.frontends.*.nic, eth0)")
    p.add_argument("--gateway-mac", help="MAC of the switch port (default: the neighbour table's, ARP)")
    p.add_argument("--switch", help="switch controller host:port (default: gateway:control.port)")
    p.add_argument("--no-switch", action="store_true", help="no controller: everything on the slow path")
    p.add_argument("--no-health", action="store_true", help="no active health checks")
    p.add_argument("--status", action="store_true", help="show a running front-end's metrics and exit")
    p.add_argument("--json", action="store_true", help="with --status: JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)
