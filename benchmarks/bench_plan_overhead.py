"""Where the min plan's extra instructions go: model1's fast and min plans profiled per step on
QEMU mps2-an386 (-DDSMN_PROFILE: one mark per untiled step, one per tiled unit), each tiled
unit set against the fast plan's instructions for the same ops.

    python3 benchmarks/bench_plan_overhead.py [--tflite M] [--out F.json]

A unit's `overhead` is its measured count minus the fast plan's count of the ops it runs once
(ops it runs again, the ECA recompute, are counted in `recompute`): band calls, halo rows and
columns, moves. `floor_ratio` is (fast + recompute) / fast: what the min plan would cost if
tiling itself were free, a bound no band or strip choice can beat while the plan recomputes.
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


def profile(tflite, plan, work):
    """(memory.json, profile, the op indices each profiled step runs: its mark's unit's steps)."""
    from dsmn_host.compiler import generate
    from dsmn_host.deploy.runner import profile_qemu

    d = work / plan
    rep = generate(tflite, d, plan=plan)
    x = np.random.default_rng(0).integers(-128, 128, size=(1, rep["input_bytes"]), dtype=np.int8)
    prof = profile_qemu(d, x, rep["output_bytes"])
    ops = {m["mark"]: rep["units"][m["unit"]]["steps"] for m in rep["marks"]}
    return rep, prof, [ops[st["step"]] for st in prof["steps"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", help="int8 model (default: the shipped models/model1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "plan_overhead.json"))
    args = ap.parse_args(argv)
    from dsmn_host.target.firmware import DEFAULT_MODEL

    tflite = Path(args.tflite or DEFAULT_MODEL)
    work = Path(tempfile.mkdtemp(prefix="bench_plan_overhead_"))
    fast_rep, fast, fast_ops = profile(tflite, "fast", work)
    min_rep, mn, min_ops = profile(tflite, "min", work)
    per_op = {}
    for st, ops in zip(fast["steps"], fast_ops):
        for op in ops:
            per_op[op] = per_op.get(op, 0) + st["instructions"]
    seen, units, recompute = set(), [], 0
    for st, ops in zip(mn["steps"], min_ops):
        again = [op for op in ops if op in seen]
        once = [op for op in ops if op not in seen]
        seen.update(ops)
        rc = sum(per_op.get(op, 0) for op in again)
        base = sum(per_op.get(op, 0) for op in once)
        recompute += rc
        if len(ops) > 1:
            units.append({"step": st["step"], "ops": ops, "instructions": st["instructions"],
                          "fast_instructions_of_its_ops": base + rc, "recompute": rc,
                          "overhead": st["instructions"] - base - rc})
    f, m = fast["instructions"][0], mn["instructions"][0]
    result = {"benchmark": "plan_overhead", "model": os.path.relpath(tflite.resolve(), ROOT), "board": "qemu-an386 (DSP build)",
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "fast": {"peak_bytes": fast_rep["peak_activation_bytes"], "instructions": f},
              "min": {"peak_bytes": min_rep["peak_activation_bytes"], "instructions": m,
                      "estimated_instructions": min_rep["estimated_instructions"]},
              "ratio": m / f, "recompute_instructions": recompute,
              "tiling_overhead_instructions": sum(u["overhead"] for u in units),
              "floor_ratio": (f + recompute) / f,
              # what tiling may cost at most for min <= 1.5x fast while the plan recomputes
              "overhead_budget_for_1_5x": round(1.5 * f) - f - recompute, "units": units}
    write_result(result, args.out)
    print(f"fast {f:,} min {m:,} ({m / f:.2f}x): recompute {recompute:,}, tiling overhead "
          f"{result['tiling_overhead_instructions']:,}; floor {result['floor_ratio']:.2f}x, overhead budget "
          f"for 1.5x {result['overhead_budget_for_1_5x']:,}")
    for u in units:
        print(f"  step {u['step']}: {len(u['ops'])} ops {u['instructions']:,} = fast {u['fast_instructions_of_its_ops']:,}"
              f" (recompute {u['recompute']:,}) + overhead {u['overhead']:,}")


if __name__ == "__main__":
    main()
