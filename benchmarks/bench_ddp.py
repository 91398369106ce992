"""DDP scaling of `dsmn-host train` on this machine -> benchmarks/results/ddp.json.

One epoch of the full recipe (PCGrad, mixup, device response, SpecAugment; global batch 16)
on a small synthetic set, three ways: 1 process x 1 thread, 1 process x 2 threads, and
`torchrun --nproc_per_node 2` x 1 thread (gloo). Throughput is the epoch's clips/s as the run
itself records it in metrics.jsonl. CPU only here (no GPU on this machine); the 2 cores are
shared with other jobs while this runs, so the numbers are indicative only.

    nice -n 10 python3 benchmarks/bench_ddp.py [--clips-per-class 20] [--model model1]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def run(argv, env):
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=20)
    ap.add_argument("--model", default="model1")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--order", default="1x1,1x2,2x1",
                    help="configurations in order (1x1, 1x2, 2x1; repeat one, e.g. 1x1,2x1,1x1,2x1, to see drift)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ddp.json"))
    args = ap.parse_args()
    from dsmn_host.data.features import build_cache
    from dsmn_host.data.synth import write_synthetic_set

    work = Path(tempfile.mkdtemp(prefix="bench_ddp_"))
    write_synthetic_set(work / "data", clips_per_class=args.clips_per_class, seed=3)
    build_cache(work / "data", work / "cache", workers=1, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--data", str(work / "cache"), "--model", args.model, "--epochs", "1",
              "--batch-size", str(args.batch_size), "--no-progress"]
    configs = {
        "1x1": ("1 process x 1 thread", [sys.executable, "-m", "dsmn_host", "train", "--threads", "1"]),
        "1x2": ("1 process x 2 threads", [sys.executable, "-m", "dsmn_host", "train", "--threads", "2"]),
        "2x1": ("2 processes (torchrun, gloo) x 1 thread",
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "dsmn_host", "train", "--threads", "1"]),
    }
    results = []
    for i, key in enumerate(args.order.split(",")):
        name, argv = configs[key]
        out = work / f"run{i}"
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        run(argv + common + ["--out", str(out)], env)
        rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        results.append({"config": name, "processes": rec["processes"], "train_clips_per_s": rec["train_clips_per_s"],
                        "train_seconds": rec["train_seconds"], "load_average_1min_before": load})
        print(f"{name}: {rec['train_clips_per_s']:.2f} clips/s (load before {load})", flush=True)
    from dsmn_host.data.features import open_features

    n_train = len(open_features(work / "cache").indices("train"))
    doc = {"benchmark": "train epoch throughput, 1 vs 2 processes (CPU, gloo)", "model": args.model,
           "global_batch": args.batch_size, "train_clips": n_train, "results": results,
           "machine": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                       "note": "2 cores shared with other jobs while measured; no GPU"}}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
