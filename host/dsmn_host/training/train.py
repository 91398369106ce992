"""`dsmn-host train`: the paper's training recipe on a feature cache.

Reads top to bottom: data → model → augmentation → loss → metrics, one epoch at a time.
Every part of the recipe is a key of RECIPE (and a CLI option) defaulting to the paper's value,
so an ablation is a flag rather than a code change.

Repeatability: torch's global generator is re-seeded from (seed, epoch) at the start of every
epoch, so an epoch's shuffling, augmentation and dropout depend only on the seed and the
weights it starts from. A run killed mid-epoch and resumed from `last.pt` therefore replays
the interrupted epoch exactly as an uninterrupted run would have.

Distributed (`torchrun --nproc_per_node N -m dsmn_host train ...`, gloo on CPU, nccl on CUDA):
`--batch-size` stays the *global* batch, so a run means the same recipe on 1 or N processes,
and a step on N processes computes what one process computes on the same global batch:
- a DistributedSampler (seeded from the run's seed and the epoch) gives each rank its share;
  the global batch is the union of the ranks' shares, which is exactly the one-process batch;
- every random draw of a step (mixup pairs and weight, device-response rows, SpecAugment
  stripes, dropout masks) is made for the whole global batch from the same per-epoch seed on
  every rank, and each rank keeps the rows it trains on. Augmentation is cheap next to the
  network, so each rank augments the global batch (reading its rows from the memory-mapped
  cache) rather than exchanging them; mixup then still pairs clips across the whole batch;
- BatchNorm uses the statistics of the global batch (`GlobalBatchNorm`; torch's SyncBatchNorm
  refuses CPU tensors), so per-rank batches of 32/N do not change the normalisation;
- the two heads' gradients are summed over ranks *separately* and PCGrad projects the sums:
  projection is not linear, so projecting per rank and then reducing would not be the
  one-process gradient of the global batch.
Rank 0 alone writes config, checkpoints, metrics and curves; `--resume` works the same.
"""

import json
import math
import os
import time
from pathlib import Path

from dsmn_host.errors import DsmnError

RECIPE = {
    "epochs": 100,
    "batch_size": 32,
    "optimizer": "radam",
    "lr": 1e-3,
    "warmup_epochs": 5,
    "warmup_lr": 5e-5,
    "min_lr": 1e-6,
    "loss": "cross_entropy_sum",
    "pcgrad": True,            # project conflicting gradients of the scene and coarse heads
    "mixup_alpha": 0.2,        # 0 disables mixup
    "mixup_full_until": 0.6,   # fraction of epochs mixing the whole batch; half the batch after
    "device_response": True,
    "device_response_skip_one_in": 13,
    "specaug": True,
    "time_stripes": 2,
    "freq_stripes": 2,
    "stripe_width": 2,
    "train_split": "train",
    "val_split": "evaluate",
    "teacher_logits": None,    # knowledge distillation (dsmn_host.training.distill): .npz of teacher logits
    "kd_weight": 0.5,          # scene loss = (1 - w) * label loss + w * T^2 * KL(teacher_T || student_T)
    "kd_temperature": 2.0,
    "sync_batchnorm": True,    # under DDP: BatchNorm statistics of the global batch
}

N_SCENES = 10


def lr_at(epoch, recipe):
    """Linear warm-up from warmup_lr, then cosine from lr down to min_lr at the last epoch.

    Warm-up is clipped to a fifth of the run so short runs (tests, demos) still reach the peak.
    """
    epochs, lr, lo = recipe["epochs"], recipe["lr"], recipe["min_lr"]
    warm = min(recipe["warmup_epochs"], epochs // 5)
    if epoch < warm:
        return recipe["warmup_lr"] + (lr - recipe["warmup_lr"]) * epoch / warm
    span = max(1, epochs - warm - 1)
    return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * min(1.0, (epoch - warm) / span)))


def soft_cross_entropy_sum(logits, target):
    """Cross-entropy summed over the batch, with soft (mixup) targets."""
    import torch

    return -(target * torch.log_softmax(logits.float(), dim=1)).sum()


def pcgrad_backward(losses, params, reduce=None):
    """PCGrad (Yu et al. 2020): each task's gradient loses its component along any other task's
    gradient it conflicts with (negative dot product); the projected gradients are summed into
    `.grad`. Keeps the coarse-class head from pulling the shared trunk against the scene head.

    `reduce` (distributed training) sums the stacked task gradients over ranks in place before
    the projection, so every rank projects the gradients of the global batch."""
    import torch

    flat = []
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
        flat.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params)]))
    if reduce is not None:
        stacked = torch.stack(flat)
        reduce(stacked)
        flat = list(stacked)
    total = torch.zeros_like(flat[0])
    for i, gi in enumerate(flat):
        g = gi.clone()
        for j, gj in enumerate(flat):
            dot = torch.dot(g, gj)
            if j != i and dot < 0:
                g = g - dot / gj.pow(2).sum().clamp_min(1e-20) * gj
        total += g
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = total[offset:offset + n].view_as(p).clone()
        offset += n


def load_batch(cache, rows, device):
    """Raw log-mel and labels of cache rows (sorted, so the memmap is read forwards)."""
    import numpy as np
    import torch

    rows = np.sort(rows)
    logmel = torch.from_numpy(np.ascontiguousarray(cache.logmel[rows])).to(device)
    scene = torch.from_numpy(np.asarray(cache.scene_idx[rows], dtype=np.int64)).to(device)
    coarse = torch.from_numpy(np.asarray(cache.coarse_idx[rows], dtype=np.int64)).to(device)
    return rows, logmel, scene, coarse


def evaluate(model, cache, rows, device, batch_size=256, forward=None):
    """Scene accuracy, log loss (mean cross-entropy) and coarse accuracy, overall, per device
    and per class; `forward` overrides model(x) (QAT evaluates a fake-quantized copy)."""
    import numpy as np
    import torch

    from dsmn_host.data.features import logmel_to_input
    from dsmn_host.data.tau import SCENES

    forward = forward or model
    model.eval()
    losses, correct, coarse_ok, order = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            r, logmel, scene, coarse = load_batch(cache, rows[start:start + batch_size], device)
            logits = forward(logmel_to_input(logmel)).float()
            losses.append(torch.nn.functional.cross_entropy(logits[:, :N_SCENES], scene, reduction="none").cpu())
            correct.append((logits[:, :N_SCENES].argmax(1) == scene).cpu())
            coarse_ok.append((logits[:, N_SCENES:].argmax(1) == coarse).cpu())
            order.append(r)
    if not order:
        raise DsmnError(f"{cache.path}: the evaluation split is empty")
    losses, correct = torch.cat(losses).numpy(), torch.cat(correct).numpy()
    order = np.concatenate(order)
    devices, scenes = np.asarray(cache.device)[order], np.asarray(cache.scene_idx)[order]
    return {
        "loss": float(losses.mean()),
        "acc": float(correct.mean()),
        "coarse_acc": float(torch.cat(coarse_ok).numpy().mean()),
        "n": int(len(order)),
        "per_device": {str(d): float(correct[devices == d].mean()) for d in sorted(set(devices.tolist()))},
        "per_class": {SCENES[c]: float(correct[scenes == c].mean()) for c in sorted(set(scenes.tolist()))},
    }


def _save(obj, path):
    """Write via a temporary file so a kill never leaves a half-written checkpoint."""
    import torch

    tmp = Path(str(path) + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def plot_curves(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] + 1 for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_acc"] for h in history], label="train")
    a1.plot(ep, [h["val_acc"] for h in history], label="validation")
    a1.set_title("scene accuracy"), a1.set_xlabel("epoch"), a1.legend()
    a2.plot(ep, [h["train_loss"] for h in history], label="train")
    a2.plot(ep, [h["val_loss"] for h in history], label="validation")
    a2.set_title("log loss"), a2.set_xlabel("epoch"), a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def set_threads(threads):
    import torch

    torch.set_num_threads(max(1, threads or min(8, os.cpu_count() or 1)))


def positive_int(text):
    """argparse type: an integer >= 1 (an epoch count or batch size of 0 has no meaning)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def train_one_epoch(model, optimizer, scaler, cache, train_rows, recipe, dev, mix_fraction=1.0,
                    use_amp=False, desc="train", progress=True, ctx=None, seed=0, epoch=0, teacher=None,
                    amp_dtype=None):
    """One pass over the training rows in a random order: augment, forward, PCGrad step.

    `teacher` (N_cache × 10 teacher probabilities at the KD temperature, see dsmn_host.training.distill)
    adds the distillation term; the teacher targets are mixed by mixup exactly like the labels."""
    import torch
    from tqdm import tqdm

    from dsmn_host.data.augment import device_response, mixup, spec_augment
    from dsmn_host.training.distill import kd_loss
    from dsmn_host.training.distributed import Distributed, global_batches, reduce_grads, set_dropout_rows
    from dsmn_host.data.features import logmel_to_input

    ctx = ctx or Distributed()
    table = torch.as_tensor(cache.device_response, dtype=torch.float32).to(dev)
    is_reference = torch.from_numpy(cache.device == "a")
    params = [p for p in model.parameters() if p.requires_grad]
    bs = recipe["batch_size"]
    w, temp = float(recipe.get("kd_weight", 0.0)), float(recipe.get("kd_temperature", 1.0))
    steps = list(global_batches(train_rows, bs, ctx, seed, epoch))
    model.train()
    t0, seen, loss_sum, correct = time.monotonic(), 0, 0.0, 0.0
    bar = tqdm(steps, desc=desc, disable=not (progress and ctx.main), leave=False, unit="batch")
    reduce = ctx.all_reduce if ctx.world > 1 else None
    for rows, mine in bar:
        # the global batch, augmented identically on every rank; this rank keeps `mine`
        rows, logmel, scene, coarse = load_batch(cache, rows, dev)
        y_scene = torch.nn.functional.one_hot(scene, N_SCENES).float()
        y_coarse = torch.nn.functional.one_hot(coarse, 3).float()
        if teacher is not None:   # ride along with the labels through mixup
            y_scene = torch.cat([y_scene, torch.as_tensor(teacher[rows], dtype=torch.float32).to(dev)], 1)
        # augmentation: mixup and device response on raw log-mel, then features, then SpecAugment
        if recipe["mixup_alpha"] > 0:
            logmel, y_scene, y_coarse = mixup(logmel, y_scene, y_coarse, recipe["mixup_alpha"], mix_fraction)
        if recipe["device_response"]:
            logmel = device_response(logmel, is_reference[rows].to(dev), table,
                                     recipe["device_response_skip_one_in"])
        x = logmel_to_input(logmel)
        if recipe["specaug"]:
            x = spec_augment(x, recipe["time_stripes"], recipe["stripe_width"],
                             recipe["freq_stripes"], recipe["stripe_width"])
        pos = torch.as_tensor(mine, device=dev)
        x, y_scene, y_coarse = x[pos], y_scene[pos], y_coarse[pos]
        set_dropout_rows(model, len(rows), pos)
        # loss: summed cross-entropy on both heads (scene: with distillation), combined by PCGrad
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            logits = model(x)
        y_label = y_scene[:, :N_SCENES]
        loss_label = soft_cross_entropy_sum(logits[:, :N_SCENES], y_label)
        if teacher is not None:
            loss_scene = (1 - w) * loss_label + w * kd_loss(logits[:, :N_SCENES], y_scene[:, N_SCENES:], temp)
        else:
            loss_scene = loss_label
        loss_coarse = soft_cross_entropy_sum(logits[:, N_SCENES:], y_coarse)
        optimizer.zero_grad(set_to_none=True)
        if recipe["pcgrad"]:
            pcgrad_backward([scaler.scale(loss_scene), scaler.scale(loss_coarse)], params, reduce=reduce)
        else:
            scaler.scale(loss_scene + loss_coarse).backward()
            if reduce is not None:
                reduce_grads(params, reduce)
        scaler.step(optimizer)
        scaler.update()
        # metrics (accuracy against the dominant class of a mixed target)
        seen += len(mine)
        loss_sum += float(loss_label.detach())
        correct += float((logits[:, :N_SCENES].argmax(1) == y_label.argmax(1)).sum())
        bar.set_postfix(loss=f"{loss_sum / max(1, seen):.3f}", acc=f"{correct / max(1, seen):.3f}")
    bar.close()
    set_dropout_rows(model, None, None)
    totals = ctx.all_reduce(torch.tensor([float(seen), loss_sum, correct], dtype=torch.float64))
    seen, loss_sum, correct = int(totals[0]), float(totals[1]), float(totals[2])
    seconds = time.monotonic() - t0
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen,
            "train_seconds": seconds, "train_clips_per_s": seen / seconds, "processes": ctx.world}


RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.jsonl")


def _check_out(out, resume):
    """Refuse an --out that cannot hold this run, before anything is written (one line each)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DsmnError(f"--out {out}: is a file, not a run directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DsmnError(f"--out {out}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK) and not out.exists():
                raise DsmnError(f"--out {out}: cannot create it ({parent} is not writable)")
            break
    if resume:
        if not (out / "config.json").is_file():
            raise DsmnError(f"{out}: nothing to resume (needs config.json and last.pt)")
    else:
        held = [n for n in RUN_FILES if (out / n).exists()]
        if held:
            raise DsmnError(f"{out}: already holds a run ({', '.join(held)}); pass --resume to continue it "
                            f"or choose another --out")


def train(data, out, model_name="model1", recipe=None, seed=0, resume=False, device="auto",
          threads=None, progress=True, stop_after=None, amp=None, compile=False):
    """Train (or resume) a run in `out`; returns the last epoch's metrics.

    `stop_after` ends this call after that many epochs, as if the process had been killed
    (tests use it; so can time-boxed jobs, followed by resume=True). Under torchrun each process
    calls this; rank 0 writes. `amp` is None (full float), "bf16" or "fp16" autocast (CUDA only;
    fp16 with a gradient scaler); `compile` wraps the network in torch.compile (CUDA only).
    """
    from dsmn_host.training.distributed import pick_device
    from dsmn_host.data.features import open_features

    out = Path(out)
    config_path = out / "config.json"
    _check_out(out, resume)
    if resume:
        config = json.loads(config_path.read_text())
        model_name, recipe, seed, data = config["model"], {**RECIPE, **config["recipe"]}, config["seed"], config["data"]
        amp, compile = config.get("amp", amp), config.get("compile", compile)
    else:
        unknown = set(recipe or {}) - set(RECIPE)
        if unknown:
            raise DsmnError(f"unknown recipe keys: {', '.join(sorted(unknown))}")
        recipe = {**RECIPE, **(recipe or {})}
        if data is None:
            raise DsmnError("train needs --data (a TAU22 directory or a feature cache)")
    for key in ("epochs", "batch_size"):
        if not isinstance(recipe[key], int) or recipe[key] < 1:
            raise DsmnError(f"--{key.replace('_', '-')} {recipe[key]}: must be at least 1")
    if not 0.0 <= float(recipe["kd_weight"]) <= 1.0 or float(recipe["kd_temperature"]) <= 0:
        raise DsmnError(f"--kd-weight {recipe['kd_weight']} must be in [0, 1] and --kd-temperature "
                        f"{recipe['kd_temperature']} above 0")
    if amp not in (None, False, "bf16", "fp16"):
        raise DsmnError(f"--amp {amp}: use bf16 or fp16")
    set_threads(threads)
    if (amp or compile) and pick_device(device).type != "cuda":
        raise DsmnError(f"--amp/--compile are CUDA options (the device here is {pick_device(device).type})")

    # ---- data (and teacher logits, checked against the training clips before anything is written)
    cache = open_features(data)
    train_rows, val_rows = cache.indices(recipe["train_split"]), cache.indices(recipe["val_split"])
    if len(train_rows) == 0:
        raise DsmnError(f"{cache.path}: split '{recipe['train_split']}' is empty")
    teacher = None
    if recipe["teacher_logits"]:
        from dsmn_host.training.distill import teacher_targets

        teacher = teacher_targets(recipe["teacher_logits"], cache, train_rows, recipe["kd_temperature"])
        if resume and config.get("teacher"):
            from dsmn_host.training.distill import describe_logits

            if describe_logits(recipe["teacher_logits"])["sha256"] != config["teacher"]["sha256"]:
                raise DsmnError(f"{recipe['teacher_logits']}: changed since this run started (sha256 differs "
                                f"from {config_path}); resume needs the same teacher logits")

    from dsmn_host.training.distributed import Distributed

    ctx = Distributed.setup(device)
    try:
        dev = ctx.device(device)
        return _train(ctx, cache, data, out, model_name, recipe, seed, resume, dev, progress, stop_after,
                      amp, compile, teacher, train_rows, val_rows)
    finally:
        ctx.close()


def _train(ctx, cache, data, out, model_name, recipe, seed, resume, dev, progress, stop_after, amp, compile,
           teacher, train_rows, val_rows):
    import torch

    from dsmn_host.training.distributed import prepare_for_ranks
    from dsmn_host.training.models import build_model

    config_path, last_path = out / "config.json", out / "last.pt"
    if recipe["batch_size"] % ctx.world:    # before anything is written
        raise DsmnError(f"--batch-size {recipe['batch_size']} is the global batch: it must be a multiple of "
                        f"the {ctx.world} processes")
    if not resume and ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        config = {"model": model_name, "recipe": recipe, "seed": seed, "data": str(Path(data).resolve()),
                  "cache": str(Path(cache.path).resolve()), "features": cache.params,
                  "processes": ctx.world, "amp": amp or None, "compile": bool(compile)}
        if recipe["teacher_logits"]:
            from dsmn_host.training.distill import describe_logits

            config["teacher"] = describe_logits(recipe["teacher_logits"])
        tmp = config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, config_path)

    # ---- model, optimizer
    torch.manual_seed(seed)
    model = build_model(model_name).to(dev)
    if recipe["optimizer"] not in ("radam", "adam"):
        raise DsmnError(f"optimizer {recipe['optimizer']!r}: use radam (the paper's) or adam")
    start_epoch, best_loss, history = 0, float("inf"), []
    state = None
    if resume and last_path.is_file():   # (config.json without last.pt: killed in epoch 1, start over)
        state = torch.load(last_path, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
    model = prepare_for_ranks(model, ctx, recipe.get("sync_batchnorm", True))
    ctx.broadcast_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # RAdam damps its first few hundred steps; Adam lets very short runs (tests) learn.
    opt_class = torch.optim.RAdam if recipe["optimizer"] == "radam" else torch.optim.Adam
    optimizer = opt_class(params, lr=recipe["lr"])
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_loss = state["epoch"] + 1, state["best_val_loss"]
        history = [h for h in _read_jsonl(out / "metrics.jsonl") if h["epoch"] < start_epoch]
        if state.get("record") and not any(h["epoch"] == state["epoch"] for h in history):
            history.append(state["record"])   # killed after last.pt, before its metrics line
        if ctx.main:
            _write_jsonl(out / "metrics.jsonl", history)
    elif resume and ctx.main:
        _write_jsonl(out / "metrics.jsonl", [])
    net = torch.compile(model) if compile else model

    epochs = recipe["epochs"]
    done_here = 0
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)
        lr = lr_at(epoch, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mix_fraction = 1.0 if epoch < recipe["mixup_full_until"] * epochs else 0.5
        fit = train_one_epoch(net, optimizer, scaler, cache, train_rows, recipe, dev, mix_fraction,
                              amp_dtype is not None, desc=f"epoch {epoch + 1}/{epochs}", progress=progress,
                              ctx=ctx, seed=seed, epoch=epoch, teacher=teacher, amp_dtype=amp_dtype)
        if ctx.main:
            val = evaluate(model, cache, val_rows, dev)
            record = {"epoch": epoch, "lr": lr, **fit,
                      "val_loss": val["loss"], "val_acc": val["acc"], "val_coarse_acc": val["coarse_acc"],
                      "val_per_device": val["per_device"], "val_per_class": val["per_class"]}
            history.append(record)
            if val["loss"] < best_loss:
                best_loss = val["loss"]
                _save({"model_name": model_name, "model": model.state_dict(), "epoch": epoch,
                       "val_loss": val["loss"], "val_acc": val["acc"]}, out / "best.pt")
            # last.pt before the journal line: a kill between them leaves a checkpoint the journal
            # does not mention yet (resume writes the line from last.pt), never the reverse
            _save({"model_name": model_name, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scaler": scaler.state_dict(), "epoch": epoch, "val_loss": val["loss"], "val_acc": val["acc"],
                   "best_val_loss": best_loss, "record": record}, last_path)
            _write_jsonl(out / "metrics.jsonl", [record], append=True)
            plot_curves(history, out / "curves.png")
            if progress:
                print(f"epoch {epoch + 1}/{epochs} lr {lr:.2e} train loss {record['train_loss']:.4f} "
                      f"acc {record['train_acc']:.3f} | val loss {val['loss']:.4f} acc {val['acc']:.3f} "
                      f"| {record['train_clips_per_s']:.0f} clips/s", flush=True)
        done_here += 1
        if stop_after is not None and done_here >= stop_after:
            break
    ctx.barrier()   # the other ranks wait for rank 0's last checkpoint before the job ends
    return history[-1] if history else None


def _read_jsonl(path):
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path, records, append=False):
    with open(path, "a" if append else "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _run(args):
    recipe = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
              "warmup_epochs": args.warmup_epochs, "warmup_lr": args.warmup_lr, "min_lr": args.min_lr,
              "mixup_alpha": 0.0 if args.no_mixup else args.mixup_alpha, "pcgrad": not args.no_pcgrad,
              "device_response": not args.no_device_response, "specaug": not args.no_specaug,
              "teacher_logits": str(Path(args.teacher_logits).resolve()) if args.teacher_logits else None,
              "kd_weight": args.kd_weight, "kd_temperature": args.kd_temperature,
              "sync_batchnorm": False if args.no_sync_batchnorm else None}
    recipe = {k: v for k, v in recipe.items() if v is not None}
    if args.resume:
        given = [k for k in ("epochs", "batch_size", "teacher_logits") if k in recipe]
        if given:
            raise DsmnError(f"--resume continues the recipe in {args.out}/config.json; drop "
                            f"{', '.join('--' + k.replace('_', '-') for k in given)}")
    last = train(args.data, args.out, args.model, recipe, seed=args.seed, resume=args.resume,
                 device=args.device, threads=args.threads, progress=not args.no_progress,
                 stop_after=args.stop_after, amp=args.amp, compile=args.compile)
    if last:
        print(f"{args.out}: epoch {last['epoch'] + 1}, validation accuracy {last['val_acc']:.3f}, "
              f"log loss {last['val_loss']:.4f}")
    return 0


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "train",
        help="train a DSMN model with the paper's recipe (torchrun for several processes/GPUs)",
        description="Train model1..model4 on a feature cache (or a TAU22 directory, cached first) with the "
                    "paper's recipe: RAdam, warm-up + cosine, PCGrad over the scene and coarse heads, mixup, "
                    "device-response augmentation, SpecAugment; optionally distilled from teacher logits "
                    "(`dsmn-host teacher-logits`). Writes config.json, best.pt, last.pt, "
                    "metrics.jsonl and curves.png to --out. Under torchrun every process trains a share "
                    "of each global batch (DDP, gloo on CPU, nccl on CUDA) and rank 0 writes.",
        **style("dsmn-host train --model model1 --data data/tau22-synth --out runs/m1",
                "dsmn-host train --out runs/m1 --resume",
                "torchrun --nproc_per_node 4 -m dsmn_host train --data tau22.features --out runs/model1 "
                "--teacher-logits teachers.npz --amp bf16"),
    )
    p.add_argument("--model", default="model1", choices=("model1", "model2", "model3", "model4"),
                   help="architecture (default model1)")
    p.add_argument("--data", help="TAU22-layout data directory or feature cache (not needed with --resume)")
    p.add_argument("--out", required=True, help="run directory (must not hold a run unless --resume)")
    p.add_argument("--epochs", type=positive_int, help=f"default {RECIPE['epochs']}")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"global batch over all processes (default {RECIPE['batch_size']})")
    p.add_argument("--optimizer", choices=("radam", "adam"), help="default radam")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {RECIPE['lr']})")
    p.add_argument("--warmup-epochs", type=int, help=f"default {RECIPE['warmup_epochs']} (at most a fifth of the run)")
    p.add_argument("--warmup-lr", type=float, help=f"default {RECIPE['warmup_lr']}")
    p.add_argument("--min-lr", type=float, help=f"cosine floor (default {RECIPE['min_lr']})")
    p.add_argument("--mixup-alpha", type=float, help=f"Beta(a, a) of mixup (default {RECIPE['mixup_alpha']})")
    p.add_argument("--no-mixup", action="store_true", help="turn mixup off")
    p.add_argument("--no-pcgrad", action="store_true", help="sum the two head losses instead of PCGrad")
    p.add_argument("--no-device-response", action="store_true", help="turn the device-response augmentation off")
    p.add_argument("--no-specaug", action="store_true", help="turn SpecAugment off")
    p.add_argument("--teacher-logits", help="knowledge distillation from this logits .npz "
                                            "(`dsmn-host teacher-logits` / `convert-logits`)")
    p.add_argument("--kd-weight", type=float,
                   help=f"scene loss = (1 - w) label + w distillation (default {RECIPE['kd_weight']})")
    p.add_argument("--kd-temperature", type=float, help=f"softmax temperature T (default {RECIPE['kd_temperature']})")
    p.add_argument("--no-sync-batchnorm", action="store_true",
                   help="under torchrun: BatchNorm statistics of each process's share instead of the global batch")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="mixed-precision autocast (CUDA only; default off)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA only)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--stop-after", type=positive_int, help="stop after this many epochs of this invocation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch per process (default: up to 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=_run)
