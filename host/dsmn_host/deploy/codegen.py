"""`dsmn-host codegen`: compile an int8 .tflite into static C for the dsmn runtime.

The compiler itself is the dsmn_host.compiler package (one module per pass); building and
running the result is dsmn_host.deploy.runner. This module is the CLI and keeps the names other
modules import from it.
"""

from pathlib import Path


# The names other modules import from here, resolved on first use (PEP 562) so that
# `dsmn-host --help` does not load the compiler and numpy.
_EXPORTS = {
    "generate": "dsmn_host.compiler", "runtime_sources": "dsmn_host.compiler",
    "runtime_include_dirs": "dsmn_host.compiler", "ARM_FLAGS": "dsmn_host.compiler",
    "RUNTIME_DIR": "dsmn_host.compiler", "TEMPLATE_DIR": "dsmn_host.compiler",
    "SUPPORTED_OPS": "dsmn_host.compiler",
    "quantize_multiplier": "dsmn_host.compiler.qmath", "activation_range": "dsmn_host.compiler.qmath",
    "run_batch": "dsmn_host.deploy.runner", "build_host_runner": "dsmn_host.deploy.runner",
    "build_qemu_runner": "dsmn_host.deploy.runner", "profile_qemu": "dsmn_host.deploy.runner",
    "run_qemu": "dsmn_host.deploy.runner", "step_labels": "dsmn_host.deploy.runner",
}
__all__ = [*_EXPORTS, "register"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _cmd_codegen(args):
    import numpy as np

    from dsmn_host.compiler import generate
    from dsmn_host.deploy.runner import run_batch

    report = generate(args.model, args.out, ram_budget=args.ram_budget, plan=args.plan)
    print(f"wrote {Path(args.out) / 'dsmn_model.c'}, dsmn_model.h, memory.json")
    print(f"plan {report['plan']}: peak activation RAM {report['peak_activation_bytes']} B, "
          f"flash {report['flash_bytes']} B, ~{report['estimated_instructions'] / 1e6:.1f} M "
          "instructions (estimate)")
    if args.run:
        inp, outp = args.run
        from dsmn_host.paths import read_int8_npy
        x = read_int8_npy(inp, "--run inputs")
        y = run_batch(args.out, x, target=args.target)
        from dsmn_host.compiler.tflite_reader import read_tflite
        g = read_tflite(args.model)
        y = y.reshape((x.shape[0],) + tuple(g.tensors[g.outputs[0]].shape[1:]))
        np.save(outp, y)
        print(f"ran {x.shape[0]} inputs on {args.target}; outputs -> {outp}")


def ram_budget_arg(text):
    """BYTES, or with a K/KiB suffix (1 K = 1024 B)."""
    t = text.strip().lower()
    for suffix, mul in (("kib", 1024), ("k", 1024)):
        if t.endswith(suffix):
            return int(float(t[:-len(suffix)]) * mul)
    return int(t)


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "codegen", help="compile an int8 .tflite into static C (dsmn runtime) + memory report",
        description="Generate dsmn_model.c/.h and memory.json from an int8 TFLite model; "
                    "optionally build and run it on a batch of int8 inputs. Chains of "
                    "convolutions can run in time bands (tiled) so their intermediates take a "
                    "few rows of RAM: --ram-budget picks the fastest plan that fits, --plan "
                    "forces an end.",
        **style("dsmn-host codegen models/model1/model1_int8.tflite --out build/gen",
                "dsmn-host codegen model.tflite --out gen --ram-budget 96K",
                "dsmn-host codegen model.tflite --out gen --plan min --run x.npy y.npy --target qemu-an386"))
    p.add_argument("model", help="int8 .tflite model")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ram-budget", type=ram_budget_arg, metavar="BYTES",
                   help="largest activation arena allowed (e.g. 65536 or 64K): the fastest plan "
                        "that fits is chosen; refused, naming the smallest reachable arena, if none")
    p.add_argument("--plan", choices=("fast", "min"),
                   help="fast: untiled (fewest instructions); min: smallest arena")
    p.add_argument("--run", nargs=2, metavar=("INPUTS.npy", "OUTPUTS.npy"),
                   help="build the generated code and run it on N x input-shape int8 inputs")
    p.add_argument("--target", choices=("host", "qemu-an386"), default="host",
                   help="where --run executes (default: host gcc)")
    p.set_defaults(func=_cmd_codegen)
