"""The `dsmn-host` command line: one subcommand per pipeline stage.

Stage modules own their arguments: each exposes `register(subparsers)`, which adds its
subcommand(s) and sets `func` to a callable taking the parsed arguments and returning an
exit code (or None for success).
"""

import argparse
import importlib
import sys

from dsmn_host import __version__
from dsmn_host.errors import DsmnError

# In pipeline order; `dsmn-host --help` lists subcommands in this order.
STAGE_MODULES = [
    "dsmn_host.synth",
    "dsmn_host.features",
    "dsmn_host.complexity",
    "dsmn_host.train",
    "dsmn_host.distill",
    "dsmn_host.qat",
    "dsmn_host.export",
    "dsmn_host.convert",
    "dsmn_host.modelcard",
    "dsmn_host.verify",
    "dsmn_host.codegen",
    "dsmn_host.firmware",
    "dsmn_host.emulate",
    "dsmn_host.evaluate",
    "dsmn_host.demo",
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dsmn-host",
        description="DSMN acoustic scene classification: TAU22 audio -> int8 model -> Cortex-M firmware -> on-board evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"dsmn-host {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except DsmnError as exc:
        print(f"dsmn-host {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsmn-host {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
