"""Knowledge distillation on the default synthetic set -> benchmarks/results/kd.json.

model1 trained with distillation from an ensemble of two larger trained models (model2 +
model4) against model1 without it: same recipe, same epochs, same seeds; float accuracy of
best.pt and int8 accuracy of the converted .tflite (TFLite reference kernels), both on the
evaluate split. Every stage goes through the functions `dsmn-host` runs:

    synth-data (default set) -> features -> train teachers -> teacher-logits
    -> per seed and arm: train model1 -> qat (calibration only, --epochs 0 by default)
       -> export -> convert -> int8 accuracy

Each finished step is kept in --work and skipped when the script runs again, so several
instances may share the work (e.g. `--seeds 0,1` and `--seeds 2` on two cores); every run ends
by collecting all finished students into the JSON. A short recipe (Adam 3e-3, 1 warm-up epoch,
no mixup, batch 16: see dsmn_host.demo) because the paper's 100 epochs do not fit on this CPU.

    nice -n 10 python3 benchmarks/bench_kd.py [--seeds 0,1,2] [--arms kd,none] [--epochs 6]
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

SHORT = {"optimizer": "adam", "lr": 3e-3, "warmup_epochs": 1, "mixup_alpha": 0.0, "batch_size": 16}
TEACHERS = ("model2", "model4")
TEACHER_EPOCHS = 8
TEACHER_SEED = 100


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(work, threads):
    """The default synthetic set, its cache, the two teachers and their logits (each once)."""
    from dsmn_host.training.teachers import teacher_logits
    from dsmn_host.data.features import build_cache
    from dsmn_host.data.synth import write_synthetic_set
    from dsmn_host.training.train import train

    data, cache = work / "data", work / "data.features"
    if not (data / "meta.csv").is_file():
        _log("synthetic set (default: 120 clips per scene)")
        write_synthetic_set(data)
    if not (cache / "params.json").is_file():
        _log("feature cache")
        build_cache(data, cache, workers=1, progress=False)
    for name in TEACHERS:
        run = work / "runs" / f"teacher-{name}"
        if not (run / "last.pt").is_file() or _epochs_done(run) < TEACHER_EPOCHS:
            _log(f"teacher {name}")
            train(cache, run, name, {**SHORT, "epochs": TEACHER_EPOCHS}, seed=TEACHER_SEED, threads=threads,
                  progress=False, resume=(run / "config.json").is_file())
    logits = work / "teachers.npz"
    if not logits.is_file():
        _log("teacher logits")
        teacher_logits([work / "runs" / f"teacher-{n}" for n in TEACHERS], cache, logits, threads=threads)
    return cache, logits


def _epochs_done(run):
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def int8_accuracy(tflite, cache_path, split="evaluate"):
    """Top-1 scene accuracy of the int8 .tflite (TFLite reference kernels) on a split."""
    import numpy as np

    from dsmn_host.data.features import open_features
    from dsmn_host.deploy.modelcard import load_card
    from dsmn_host.data.int8io import features_to_nhwc, quantize
    from dsmn_host.deploy.verify import _tflite_ref_runner

    card = load_card(tflite)
    cache = open_features(cache_path)
    rows = np.sort(cache.indices(split))
    run = _tflite_ref_runner(tflite)
    correct = 0
    for start in range(0, len(rows), 64):
        r = rows[start:start + 64]
        x = features_to_nhwc(cache.inputs(r))   # B, time, mel, 2
        for i in range(len(r)):
            out = run(quantize(x[i:i + 1], card["input"]["scale"], card["input"]["zero_point"]))
            correct += int(np.asarray(out).reshape(-1)[:10].argmax() == int(cache.scene_idx[r[i]]))
    return correct / len(rows)


def student(work, cache, logits, arm, seed, epochs, qat_epochs, threads):
    from dsmn_host.deploy.convert import convert
    from dsmn_host.deploy.export import export_run
    from dsmn_host.deploy.modelcard import write_card
    from dsmn_host.training.qat import run_qat
    from dsmn_host.training.train import train

    run = work / "runs" / f"model1-{arm}-s{seed}"
    result_path = run / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    recipe = {**SHORT, "epochs": epochs}
    if arm == "kd":
        recipe.update(teacher_logits=str(logits), kd_weight=0.5, kd_temperature=2.0)
    if _epochs_done(run) < epochs:
        _log(f"student {arm} seed {seed}: train {epochs} epochs")
        train(cache, run, "model1", recipe, seed=seed, threads=threads, progress=False,
              resume=(run / "config.json").is_file())
    # Training time is the epochs' own (metrics.jsonl), so a resumed student reports all of it.
    t1 = time.time()
    _log(f"student {arm} seed {seed}: qat / export / convert")
    qat = run_qat(run, epochs=qat_epochs, threads=threads, progress=False)
    export_run(run, run / "model1.onnx", data=cache)
    conv = convert(run / "model1.onnx", cache, run / "model1_int8.tflite")
    write_card(run / "model1_int8.tflite", onnx_path=run / "model1.onnx", conversion=conv)
    history = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(history, key=lambda h: h["val_loss"])
    result = {"arm": arm, "seed": seed, "epochs": epochs, "best_epoch": best["epoch"],
              "float_acc": best["val_acc"], "float_loss": best["val_loss"],
              "qat_sim_acc": qat["qat"]["acc"],
              "int8_acc": int8_accuracy(run / "model1_int8.tflite", cache),
              "train_seconds": round(sum(h["train_seconds"] for h in history), 1), "deploy_seconds": round(time.time() - t1, 1)}
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    _log(f"student {arm} seed {seed}: float {result['float_acc']:.3f} int8 {result['int8_acc']:.3f}")
    return result


def report(work, out, epochs, qat_epochs):
    import numpy as np

    from dsmn_host.training.distill import read_logits

    results = [json.loads(p.read_text()) for p in sorted((work / "runs").glob("model1-*/result.json"))]
    results = [r for r in results if r["epochs"] == epochs]
    arms = {}
    for arm in ("none", "kd"):
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        summary = {"seeds": [r["seed"] for r in rs]}
        for key in ("float_acc", "int8_acc"):
            v = [r[key] for r in rs]
            summary[key] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None,
                            "values": v}
        arms[arm] = summary
    teachers = {}
    for name in TEACHERS:
        path = work / "runs" / f"teacher-{name}" / "metrics.jsonl"
        if path.is_file():
            best = min((json.loads(s) for s in path.read_text().splitlines()), key=lambda h: h["val_loss"])
            teachers[name] = {"epochs": TEACHER_EPOCHS, "best_epoch": best["epoch"], "float_acc": best["val_acc"]}
    if (work / "teachers.npz").is_file():
        _, _, info = read_logits(work / "teachers.npz")
        teachers["ensemble_acc_on_train_split"] = info.get("ensemble_acc_on_split")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    doc = {"benchmark": "knowledge distillation, model1 <- model2 + model4 ensemble, default synthetic set",
           "data": "synth-data defaults (120 clips per scene, medium): 840 train / 360 evaluate clips",
           "recipe": {**SHORT, "epochs": epochs, "kd_weight": 0.5, "kd_temperature": 2.0,
                      "qat_epochs": qat_epochs},
           "accuracy": "evaluate split; float = best.pt (lowest validation loss), int8 = converted .tflite, "
                       "TFLite reference kernels",
           "teachers": teachers, "arms": arms, "students": results,
           "machine": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "load_average_1min": load,
                       "note": "2 cores shared with other jobs; times are not comparable"}}
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    for arm, s in arms.items():
        f, q = s["float_acc"], s["int8_acc"]
        fmt = lambda d: f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f}" if d["std"] is not None else f"{100 * d['mean']:.1f}"  # noqa: E731
        print(f"{arm:5s} seeds {s['seeds']}: float {fmt(f)} %, int8 {fmt(q)} %")
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/dsmn-bench-kd", help="working directory (kept between runs)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default="kd,none")
    ap.add_argument("--epochs", type=int, default=6, help="student epochs (both arms)")
    ap.add_argument("--qat-epochs", type=int, default=0, help="QAT fine-tuning epochs before conversion")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kd.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        cache, logits = prepare(work, args.threads)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for arm in args.arms.split(","):
                student(work, cache, logits, arm, seed, args.epochs, args.qat_epochs, args.threads)
    report(work, args.out, args.epochs, args.qat_epochs)


if __name__ == "__main__":
    main()
