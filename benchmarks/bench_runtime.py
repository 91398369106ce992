"""Benchmark the dsmn ahead-of-time runtime on DSMN int8 models; writes benchmarks/runtime.json.

For each model: peak activation RAM (our arena) against TFLite-Micro's arena (the model card's
figure when the model ships with one, else measured here by bisecting the smallest arena the
TFLM Python interpreter accepts), flash (weights + tables + parameters + kernel code), and
bit-exactness against the TFLM interpreter on a few inputs. For model1 (or --qemu-model) also
instructions per inference on QEMU mps2-an386 under -icount shift=0, portable C and DSP paths.

Models come from models/<name>/<name>_int8.tflite when shipped; otherwise (or with
--tflite NAME=PATH) from the given file. Usage:

    python3 benchmarks/bench_runtime.py [--models model1 model2] [--tflite model1=/path.tflite]
        [--profile]   # + per-kernel / per-step instructions (-DDSMN_PROFILE QEMU builds)
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tflm_arena_bytes(model_bytes):
    """Smallest arena (16-byte steps) with which the TFLM interpreter allocates the model."""
    lo, hi = 1024, 8 << 20

    def ok(size):
        pid = os.fork()
        if pid == 0:
            import faulthandler
            faulthandler.disable()
            code = 1
            try:
                from tflite_micro.python.tflite_micro import runtime
                runtime.Interpreter.from_bytes(model_bytes, arena_size=size)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    if not ok(hi):
        return None
    while hi - lo > 16:
        mid = (lo + hi) // 2 // 16 * 16
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def tflm_outputs(model_bytes, xs):
    from tflite_micro.python.tflite_micro import runtime
    it = runtime.Interpreter.from_bytes(model_bytes, arena_size=8 << 20)
    outs = []
    for x in xs:
        it.set_input(x[None], 0)
        it.invoke()
        outs.append(np.array(it.get_output(0), copy=True).reshape(-1))
    return np.stack(outs)


def card_arena(tflite):
    card = Path(str(tflite)[:-len(".tflite")] + ".card.json")
    if card.is_file():
        data = json.loads(card.read_text())
        for key in ("tflm_arena_bytes", "arena_bytes"):
            if key in data:
                return int(data[key]), str(card)
    return None, None


def main(argv=None):
    from dsmn_host.deploy import codegen
    from dsmn_host.compiler.tflite_reader import read_tflite

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["model1", "model2", "model3", "model4"])
    ap.add_argument("--tflite", nargs="*", default=[], metavar="NAME=PATH")
    ap.add_argument("--qemu-model", default="model1")
    ap.add_argument("--inputs", type=int, default=4, help="inputs for the bit-exact check")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "runtime.json"))
    ap.add_argument("--profile", action="store_true",
                    help="also record per-kernel and per-step instructions of the QEMU model "
                         "(-DDSMN_PROFILE builds, one inference)")
    args = ap.parse_args(argv)
    paths = {m: ROOT / "models" / m / f"{m}_int8.tflite" for m in args.models}
    for item in args.tflite:
        name, path = item.split("=", 1)
        paths[name] = Path(path)
    result = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}}
    for name, path in paths.items():
        if not path.is_file():
            result["models"][name] = {"skipped": f"{path} not found"}
            print(f"{name}: skipped ({path} not found)")
            continue
        buf = path.read_bytes()
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            rep = codegen.generate(path, d)
            gen_s = time.time() - t0
            g = read_tflite(path)
            shape = g.tensors[g.inputs[0]].shape[1:]
            xs = np.random.default_rng(0).integers(-128, 128, (args.inputs,) + tuple(shape)).astype(np.int8)
            ref = tflm_outputs(buf, xs)
            got = codegen.run_batch(d, xs).reshape(ref.shape)
            arena, src = card_arena(path)
            if arena is None:
                arena, src = tflm_arena_bytes(buf), "measured (TFLM Python interpreter, reference kernels)"
            entry = {
                "tflite": str(path), "model_bytes": len(buf),
                "peak_activation_bytes": rep["peak_activation_bytes"],
                "live_sum_at_peak_bytes": rep["live_sum_at_peak_bytes"],
                "flash_bytes": rep["flash_bytes"], "flash_breakdown": rep["flash_breakdown"],
                "tflm_arena_bytes": arena, "tflm_arena_source": src,
                "ram_ratio_vs_tflm": round(rep["peak_activation_bytes"] / arena, 3) if arena else None,
                "op_counts": rep["op_counts"], "generate_seconds": round(gen_s, 2),
                "bit_exact_inputs": int(len(xs)), "bit_exact": bool(np.array_equal(got, ref)),
            }
            if name == args.qemu_model:
                for variant, flags in (("portable", ["-DDSMN_NO_DSP"]), ("dsp", [])):
                    elf = codegen.build_qemu_runner(d, elf=Path(d) / f"{variant}.elf", cflags=flags)
                    out, stats = codegen.run_qemu(elf, xs[:2], rep["output_bytes"])
                    entry[f"qemu_{variant}"] = {
                        "instructions_per_inference": stats["instructions"],
                        "bit_exact": bool(np.array_equal(out.reshape(ref[:2].shape), ref[:2])),
                        "instructions_per_tick": stats["instructions_per_tick"],
                    }
                    if args.profile:
                        prof = codegen.profile_qemu(d, xs[:1], rep["output_bytes"], cflags=flags)
                        entry[f"qemu_{variant}"]["per_kernel"] = prof["per_kernel"]
                        entry[f"qemu_{variant}"]["steps"] = prof["steps"]
                        print(f"{name} {variant} per kernel: "
                              + ", ".join(f"{k} {v}" for k, v in prof["per_kernel"].items()))
        result["models"][name] = entry
        print(f"{name}: peak {entry['peak_activation_bytes']} B (TFLM {arena}), flash "
              f"{entry['flash_bytes']} B, bit-exact {entry['bit_exact']}"
              + "".join(f", {v}: {entry[f'qemu_{v}']['instructions_per_inference']} instr"
                        for v in ("portable", "dsp") if f"qemu_{v}" in entry))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
