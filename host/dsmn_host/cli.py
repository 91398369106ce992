"""The `dsmn-host` command line: one subcommand per pipeline stage.

Stage modules own their arguments: each exposes `register(subparsers)`, which adds its
subcommand(s) and sets `func` to a callable taking the parsed arguments and returning an
exit code (or None for success).
"""

import argparse
import importlib
import sys

from dsmn_host import __version__
from dsmn_host.clihelp import HelpFormatter
from dsmn_host.errors import DsmnError

# In pipeline order; `dsmn-host --help` lists subcommands in this order.
STAGE_MODULES = [
    "dsmn_host.data.synth",
    "dsmn_host.data.features",
    "dsmn_host.training.complexity",
    "dsmn_host.training.train",
    "dsmn_host.training.distill",
    "dsmn_host.training.teachers",
    "dsmn_host.training.qat",
    "dsmn_host.deploy.export",
    "dsmn_host.deploy.convert",
    "dsmn_host.deploy.modelcard",
    "dsmn_host.deploy.verify",
    "dsmn_host.deploy.codegen",
    "dsmn_host.deploy.compare",
    "dsmn_host.target.firmware",
    "dsmn_host.target.flash",
    "dsmn_host.target.tflm",
    "dsmn_host.target.emulate",
    "dsmn_host.link.evaluate",
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
    for p in sub.choices.values():  # one help style for every subcommand (dsmn_host.clihelp)
        p.formatter_class = HelpFormatter
    return parser


def resolve_command(func):
    """`func` may be "module:function", so a stage can name a command it must not import."""
    if isinstance(func, str):
        module, name = func.split(":")
        return getattr(importlib.import_module(module), name)
    return func


def _explain(exc):
    """One line for an OSError on a path: name the file that is in the way, if one is."""
    import errno
    from pathlib import Path

    path = Path(exc.filename)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        for p in (path, *path.parents):
            if p.exists() and not p.is_dir():
                return f"{path}: cannot create it: {p} is a file, not a directory"
    return f"{path}: {exc.strerror or exc}"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = resolve_command(args.func)(args)
    except DsmnError as exc:
        print(f"dsmn-host {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug, keep the traceback
            raise
        print(f"dsmn-host {args.command}: error: {_explain(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsmn-host {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
