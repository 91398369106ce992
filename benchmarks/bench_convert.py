"""Export + int8 conversion of model1..model4: conversion time, peak memory, model bytes, TFLM arena.

Weights are random (seeded) unless --run-dir is given: none of the measured quantities except
accuracy depends on the trained values, and accuracy is `dsmn-host verify`'s job. Each model is
converted in its own child process so peak RSS is that conversion's alone.

    python3 benchmarks/bench_convert.py --calib CACHE_OR_NPY --out benchmarks/results/convert.json
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(name, calib, work, n_calib):
    import torch

    from dsmn_host.deploy.convert import convert
    from dsmn_host.deploy.export import export_model
    from dsmn_host.deploy.modelcard import write_card
    from dsmn_host.training.models import TimeMelWrapper, build_model
    from dsmn_host.training.deploy_form import fold_batchnorm

    torch.manual_seed(0)
    net = build_model(name).eval()
    for m in net.modules():  # non-trivial BN statistics so folding and ranges are exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    work = Path(work)
    t0 = time.time()
    # exported as `dsmn-host export` does it: BatchNorm folded (the Sparable's BN after the add
    # would otherwise stay as MUL + ADD over full feature maps)
    exp = export_model(TimeMelWrapper(fold_batchnorm(net)), work / f"{name}.onnx", metadata={"model": name})
    t1 = time.time()
    conv = convert(work / f"{name}.onnx", calib, work / f"{name}_int8.tflite", n_calib=n_calib)
    t2 = time.time()
    card = write_card(work / f"{name}_int8.tflite", onnx_path=work / f"{name}.onnx", conversion=conv)
    return {
        "model": name, "export_seconds": round(t1 - t0, 2), "convert_seconds": round(t2 - t1, 2),
        "onnx2tf_seconds": conv["convert_seconds"], "calibration_inputs": conv["calibration_inputs"],
        "export_max_abs_diff": exp["max_abs_diff"],
        "model_bytes": card["model_bytes"], "bytes_before_strip": conv["bytes_before_strip"],
        "tflm_arena_bytes": card["tflm_arena_bytes"], "tflm_missing_ops": card["tflm_missing_ops"],
        "params": card["params"], "macs": card["macs"], "ops": card["ops"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", required=True, help="feature cache, TAU data dir or N×44×256×2 .npy")
    ap.add_argument("--models", default="model1,model2,model3,model4")
    ap.add_argument("--n-calib", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/convert.json")
    ap.add_argument("--keep", metavar="DIR", help="keep the .onnx/.tflite/cards here (e.g. for bench_runtime.py)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.calib, args.work, args.n_calib)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        work = args.keep or tmp
        Path(work).mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            proc = subprocess.run([sys.executable, __file__, "--calib", args.calib, "--n-calib", str(args.n_calib),
                                   "--child", name, "--work", work], capture_output=True, text=True)
            if proc.returncode != 0:
                results.append({"model": name, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"host_cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
