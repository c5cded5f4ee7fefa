"""`miresga testbed up|down|status`."""

from __future__ import annotations

import argparse
import json
import sys

from miresga.control.config import load_config_or_exit
from miresga.testbed.testbed import Testbed, load_instance, running_instances, teardown_instance


def _pick_instance(name: str | None) -> str | None:
    if name:
        return name
    inst = running_instances()
    if len(inst) == 1:
        return inst[0]
    if not inst:
        print("no testbed instance is running", file=sys.stderr)
    else:
        print(f"several instances are running ({', '.join(inst)}): pass --name", file=sys.stderr)
    return None


def _up(args: argparse.Namespace) -> int:
    cls = Testbed
    if args.layout == "realistic":
        from miresga.testbed.realistic import REALISTIC_CONFIG, RealisticTestbed as cls
    cfg = load_config_or_exit(args.config or (REALISTIC_CONFIG if args.layout == "realistic" else None), status=1)
    try:
        tb = cls(cfg, instance=args.name, switch=args.switch, verbose=True, lb=None if args.lb == "none" else args.lb)
    except ValueError as e:
        print(f"testbed up: {e}", file=sys.stderr)
        return 1
    tb.up()
    # The servers keep running after this command exits; `down` removes them.
    print(f"testbed {tb.instance} is up (namespaces mg{tb.instance}-*); `miresga testbed down --name {tb.instance}`")
    return 0


def _down(args: argparse.Namespace) -> int:
    names = running_instances() if args.all else [_pick_instance(args.name)]
    if None in names:
        return 1
    for n in names:
        teardown_instance(n)
        print(f"testbed {n} removed")
    return 0


def _status(args: argparse.Namespace) -> int:
    name = _pick_instance(args.name)
    if not name:
        return 1
    st = load_instance(name).status()
    if args.json:
        json.dump(st, sys.stdout, indent=1)
        print()
        return 0
    print(f"testbed {st['instance']}  vip: {st['vip'] or '(no load balancer yet)'}")
    for svc in st.get("services", [])[1:]:
        print(f"  service {svc['name']}: {svc['vip']['address']}:{svc['vip']['port']}")
    for h in st["hosts"]:
        c = h["counters"] or {}
        rx, tx = c.get("ingress", {}), c.get("egress", {})
        print(f"  {h['role']:9} {h['name']:5} {h['namespace']:14} {h['address']:15} "
              f"rx {rx.get('packets', 0):>9} pkts {rx.get('bytes', 0):>13} B  tx {tx.get('packets', 0):>9} pkts "
              f"{tx.get('bytes', 0):>13} B")
    for name_, p in st["peers"].items():
        print(f"  peer {name_:8} http://{p['address']}:{p['port']}/")
    print(f"  objects: {', '.join(o['path'] for o in st['objects'])}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("testbed", help="network-namespace testbed")
    ts = t.add_subparsers(dest="testbed_cmd", required=True)
    up = ts.add_parser("up", help="bring a testbed instance up")
    up.add_argument("--config")
    up.add_argument("--name", help="instance id (default: random)")
    up.add_argument("--lb", choices=["miresga", "none"], default="miresga",
                    help="miresga (default): the eBPF switch, its controller, front-ends and agents run too; "
                         "none: only hosts, back-ends and peers")
    up.add_argument("--switch", choices=["kernel", "ebpf"], default="kernel",
                    help="with --lb none: how the switch host forwards")
    up.add_argument("--layout", choices=["classic", "realistic"], default="classic",
                    help="classic (default): one veth per host, MACs derived from addresses; realistic: hosts as "
                         "docs/deploy.md builds them (kernel MACs and ARP, back-ends on one subnet, clients behind "
                         "an upstream router, a management network, components started from deploy/systemd)")
    up.set_defaults(func=_up)
    down = ts.add_parser("down", help="remove a testbed instance")
    down.add_argument("--name")
    down.add_argument("--all", action="store_true", help="every instance with a state file")
    down.add_argument("--config", help="ignored (accepted for symmetry)")
    down.set_defaults(func=_down)
    st = ts.add_parser("status", help="describe a running instance")
    st.add_argument("--name")
    st.add_argument("--json", action="store_true")
    st.add_argument("--config", help="ignored (the instance records its config)")
    st.set_defaults(func=_status)
