"""The `miresga` command. Each part of the system adds its own subcommands through a
`register(subparsers)` function in its `cli` module, so this file stays a table of contents."""

from __future__ import annotations

import argparse
import importlib
import sys

from miresga.control.config import DEFAULT_CONFIG, load_config_or_exit

# Modules that contribute subcommands; a part not built yet is simply absent.
PARTS = ["miresga.testbed.cli", "miresga.switch.cli", "miresga.agent.cli", "miresga.frontend.cli",
         "miresga.bench.cli", "miresga.control.demo", "miresga.control.certs", "miresga.fuzz.cli",
         "miresga.control.operate"]


def _config_default(args: argparse.Namespace) -> int:
    sys.stdout.write(DEFAULT_CONFIG.read_text())
    return 0


def _check_config(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.file, status=1)
    print(f"{args.file}: ok ({len(cfg.hosts.frontends)} front-ends, {len(cfg.hosts.backends)} back-ends, "
          f"{len(cfg.rules)} rules, profile {cfg.switch.profile})")
    if cfg.services:
        for svc in cfg.all_services():
            print(f"  service {svc.name}: {svc.vip.address}:{svc.vip.port}, {len(svc.rules)} rules")
    for w in cfg.service_warnings():
        print(f"  warning: {w}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="miresga", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("config", help="config helpers")
    csub = c.add_subparsers(dest="config_cmd", required=True)
    csub.add_parser("default", help="print the built-in default config").set_defaults(func=_config_default)
    cc = sub.add_parser("check-config", help="validate a config file")
    cc.add_argument("file")
    cc.set_defaults(func=_check_config)
    for mod in PARTS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
