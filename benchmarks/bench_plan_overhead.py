"""Where the tiled plans' extra instructions go, against the fast plan, measured on QEMU.

model1's fast plan, its min plan and the cheapest plan within a 64 KiB arena are profiled per
step on QEMU mps2-an386 (-DDSMN_PROFILE: one mark per untiled step, one per tiled unit), each
tiled unit set against the fast plan's instructions for the same ops.

    python3 benchmarks/bench_plan_overhead.py [--tflite M] [--budget BYTES] [--out F.json]

A unit's `overhead` is its measured count minus the fast plan's count of the ops it runs once
(ops it runs again, the ECA recompute, are counted in `recompute`): band calls, halo rows and
columns, moves. `floor_ratio` is (fast + recompute) / fast: what the min plan would cost if
tiling itself were free, a bound no band or strip choice can beat while the plan recomputes.
`halo_columns` is the part of the overhead that is computing columns twice: for each step of a
unit in mel strips, (columns computed / the tensor's width - 1) x the fast plan's count of the
op (memory.json's `columns_computed`); `floor_with_halo_ratio` adds it to the floor, what the
plan would cost if band calls and line-buffer moves were free.
Instruction counts are deterministic (-icount shift=0); the build takes a few minutes (the min
plan's generated C is large).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchjson import write_result  # noqa: E402


def profile(tflite, plan, work, budget=None):
    """(memory.json, profile, the op indices each profiled step runs: its mark's unit's steps)."""
    from dsmn_host.compiler import generate
    from dsmn_host.deploy.runner import profile_qemu

    d = work / (plan or f"budget{budget}")
    rep = generate(tflite, d, plan=plan, ram_budget=budget)
    x = np.random.default_rng(0).integers(-128, 128, size=(1, rep["input_bytes"]), dtype=np.int8)
    prof = profile_qemu(d, x, rep["output_bytes"])
    ops = {m["mark"]: rep["units"][m["unit"]]["steps"] for m in rep["marks"]}
    return rep, prof, [ops[st["step"]] for st in prof["steps"]]


def breakdown(rep, prof, steps_ops, per_op, f):
    """A tiled plan against the fast plan's per-op counts `per_op` (fast total `f`)."""
    cols = {m["mark"]: rep["units"][m["unit"]]["columns_computed"] for m in rep["marks"]}
    seen, units, recompute, halo = set(), [], 0, 0
    for st, ops in zip(prof["steps"], steps_ops):
        again = [op for op in ops if op in seen]
        once = [op for op in ops if op not in seen]
        seen.update(ops)
        rc = sum(per_op.get(op, 0) for op in again)
        base = sum(per_op.get(op, 0) for op in once)
        hc = sum((c - 1.0) * per_op.get(op, 0) for op, c in zip(ops, cols[st["step"]]))
        recompute += rc
        halo += hc
        if len(ops) > 1:
            units.append({"step": st["step"], "ops": ops, "instructions": st["instructions"],
                          "fast_instructions_of_its_ops": base + rc, "recompute": rc,
                          "halo_columns": round(hc), "overhead": st["instructions"] - base - rc})
    m = prof["instructions"][0]
    return {"peak_bytes": rep["peak_activation_bytes"], "instructions": m,
            "estimated_instructions": rep["estimated_instructions"], "ratio": m / f,
            "recompute_instructions": recompute,
            "tiling_overhead_instructions": sum(u["overhead"] for u in units),
            "halo_columns_instructions": round(halo),
            "floor_ratio": (f + recompute) / f,
            "floor_with_halo_ratio": (f + recompute + halo) / f, "units": units}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", help="int8 model (default: the shipped models/model1)")
    ap.add_argument("--budget", type=int, default=65536,
                    help="activation arena of the budget plan also broken down (default 65536)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "plan_overhead.json"))
    args = ap.parse_args(argv)
    from dsmn_host.target.firmware import DEFAULT_MODEL

    tflite = Path(args.tflite or DEFAULT_MODEL)
    work = Path(tempfile.mkdtemp(prefix="bench_plan_overhead_"))
    fast_rep, fast, fast_ops = profile(tflite, "fast", work)
    per_op = {}
    for st, ops in zip(fast["steps"], fast_ops):
        for op in ops:
            per_op[op] = per_op.get(op, 0) + st["instructions"]
    f = fast["instructions"][0]
    mn = breakdown(*profile(tflite, "min", work), per_op, f)
    bud = breakdown(*profile(tflite, None, work, args.budget), per_op, f)
    result = {"benchmark": "plan_overhead", "model": os.path.relpath(tflite.resolve(), ROOT), "board": "qemu-an386 (DSP build)",
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "fast": {"peak_bytes": fast_rep["peak_activation_bytes"], "instructions": f},
              "min": {k: mn[k] for k in ("peak_bytes", "instructions", "estimated_instructions")},
              **{k: v for k, v in mn.items() if k not in ("peak_bytes", "instructions", "estimated_instructions")},
              # what tiling may cost at most for min <= 1.5x fast while the plan recomputes
              "overhead_budget_for_1_5x": round(1.5 * f) - f - mn["recompute_instructions"],
              "budget": {"ram_budget_bytes": args.budget, **bud}}
    write_result(result, args.out)
    for name, r in (("min", mn), (f"budget {args.budget}", bud)):
        print(f"fast {f:,}, {name}: peak {r['peak_bytes']:,} B, {r['instructions']:,} ({r['ratio']:.2f}x): "
              f"recompute {r['recompute_instructions']:,}, tiling overhead "
              f"{r['tiling_overhead_instructions']:,} (halo columns {r['halo_columns_instructions']:,}); "
              f"floor {r['floor_ratio']:.2f}x, with halo columns {r['floor_with_halo_ratio']:.2f}x")
        for u in r["units"]:
            print(f"  step {u['step']}: {len(u['ops'])} ops {u['instructions']:,} = fast {u['fast_instructions_of_its_ops']:,}"
                  f" (recompute {u['recompute']:,}) + overhead {u['overhead']:,} (halo columns {u['halo_columns']:,})")

if __name__ == "__main__":
    main()
