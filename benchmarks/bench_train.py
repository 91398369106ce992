"""Training throughput (clips/s) of the full training step, written to benchmarks/train.json.

The step is the one `dsmn-host train` runs: mixup, device response, deltas + normalisation,
SpecAugment, forward, PCGrad over both heads, RAdam. Inputs are random log-mel batches, so no
data set is needed; augmentation and optimiser cost do not depend on the content.

    python3 benchmarks/bench_train.py [--models model1,model2] [--steps 10] [--threads N]
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path


def bench(model_name, steps, batch_size, threads):
    import torch

    from dsmn_host.data.augment import device_response, mixup, spec_augment
    from dsmn_host.data.features import logmel_to_input
    from dsmn_host.training.models import build_model
    from dsmn_host.training.train import pcgrad_backward, soft_cross_entropy_sum

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name).train()
    params = list(model.parameters())
    opt = torch.optim.RAdam(params, lr=1e-3)
    table = torch.randn(20, 256) * 0.3
    logmel = torch.randn(batch_size, 256, 44) - 3
    scene = torch.randint(10, (batch_size,))
    is_ref = torch.rand(batch_size) < 0.5

    def step():
        y = torch.nn.functional.one_hot(scene, 10).float()
        yc = torch.nn.functional.one_hot(scene % 3, 3).float()
        lm, y, yc = mixup(logmel, y, yc, 0.2, 1.0)
        x = spec_augment(logmel_to_input(device_response(lm, is_ref, table)))
        out = model(x)
        opt.zero_grad()
        pcgrad_backward([soft_cross_entropy_sum(out[:, :10], y), soft_cross_entropy_sum(out[:, 10:], yc)], params)
        opt.step()

    step()  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        x = logmel_to_input(logmel)
        model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        infer_s = time.perf_counter() - t0
    return {"model": model_name, "batch_size": batch_size, "steps": steps, "threads": threads,
            "train_clips_per_s": steps * batch_size / train_s,
            "eval_clips_per_s": steps * batch_size / infer_s}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="model1")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default=str(Path(__file__).with_name("train.json")))
    args = ap.parse_args()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    results = [bench(m.strip(), args.steps, args.batch_size, args.threads) for m in args.models.split(",")]
    report = {"benchmark": "training step throughput (CPU)", "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "load_average_1min_at_start": load, "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['model']}: train {r['train_clips_per_s']:.1f} clips/s, eval {r['eval_clips_per_s']:.1f} clips/s "
              f"(batch {r['batch_size']}, {r['threads']} threads)")


if __name__ == "__main__":
    main()
