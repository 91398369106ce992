"""`dsmn-host train`: the paper's training recipe on a feature cache.

Reads top to bottom: data → model → augmentation → loss → metrics, one epoch at a time.
Every part of the recipe is a key of RECIPE (and a CLI option) defaulting to the paper's value,
so an ablation is a flag rather than a code change.

Repeatability: torch's global generator is re-seeded from (seed, epoch) at the start of every
epoch, so an epoch's shuffling, augmentation and dropout depend only on the seed and the
weights it starts from. A run killed mid-epoch and resumed from `last.pt` therefore replays
the interrupted epoch exactly as an uninterrupted run would have.
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


def pcgrad_backward(losses, params):
    """PCGrad (Yu et al. 2020): each task's gradient loses its component along any other task's
    gradient it conflicts with (negative dot product); the projected gradients are summed into
    `.grad`. Keeps the coarse-class head from pulling the shared trunk against the scene head."""
    import torch

    flat = []
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
        flat.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params)]))
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

    from dsmn_host.features import logmel_to_input
    from dsmn_host.tau import SCENES

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


def pick_device(name="auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DsmnError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def set_threads(threads):
    import torch

    torch.set_num_threads(max(1, threads or min(8, os.cpu_count() or 1)))


def train_one_epoch(model, optimizer, scaler, cache, train_rows, recipe, dev, mix_fraction=1.0,
                    use_amp=False, desc="train", progress=True):
    """One pass over the training rows in a random order: augment, forward, PCGrad step."""
    import torch
    from tqdm import tqdm

    from dsmn_host.augment import device_response, mixup, spec_augment
    from dsmn_host.features import logmel_to_input

    table = torch.as_tensor(cache.device_response, dtype=torch.float32).to(dev)
    is_reference = torch.from_numpy(cache.device == "a")
    params = [p for p in model.parameters() if p.requires_grad]
    order = train_rows[torch.randperm(len(train_rows)).numpy()]
    bs = recipe["batch_size"]
    model.train()
    t0, seen, loss_sum, correct = time.monotonic(), 0, 0.0, 0.0
    bar = tqdm(range(0, len(order), bs), desc=desc, disable=not progress, leave=False, unit="batch")
    for start in bar:
        rows, logmel, scene, coarse = load_batch(cache, order[start:start + bs], dev)
        y_scene = torch.nn.functional.one_hot(scene, N_SCENES).float()
        y_coarse = torch.nn.functional.one_hot(coarse, 3).float()
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
        # loss: summed cross-entropy on both heads, combined by PCGrad
        with torch.autocast(dev.type, enabled=use_amp):
            logits = model(x)
        loss_scene = soft_cross_entropy_sum(logits[:, :N_SCENES], y_scene)
        loss_coarse = soft_cross_entropy_sum(logits[:, N_SCENES:], y_coarse)
        optimizer.zero_grad(set_to_none=True)
        if recipe["pcgrad"]:
            pcgrad_backward([scaler.scale(loss_scene), scaler.scale(loss_coarse)], params)
        else:
            scaler.scale(loss_scene + loss_coarse).backward()
        scaler.step(optimizer)
        scaler.update()
        # metrics (accuracy against the dominant class of a mixed target)
        seen += len(rows)
        loss_sum += float(loss_scene.detach())
        correct += float((logits[:, :N_SCENES].argmax(1) == y_scene.argmax(1)).sum())
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    seconds = time.monotonic() - t0
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen,
            "train_seconds": seconds, "train_clips_per_s": seen / seconds}


def train(data, out, model_name="model1", recipe=None, seed=0, resume=False, device="auto",
          threads=None, progress=True, stop_after=None, amp=None):
    """Train (or resume) a run in `out`; returns the last epoch's metrics.

    `stop_after` ends this call after that many epochs, as if the process had been killed
    (tests use it; so can time-boxed jobs, followed by resume=True).
    """
    import torch

    from dsmn_host.features import open_features
    from dsmn_host.models import build_model

    out = Path(out)
    config_path, last_path = out / "config.json", out / "last.pt"
    if resume:
        if not config_path.is_file() or not last_path.is_file():
            raise DsmnError(f"{out}: nothing to resume (needs config.json and last.pt)")
        config = json.loads(config_path.read_text())
        model_name, recipe, seed, data = config["model"], config["recipe"], config["seed"], config["data"]
    else:
        if last_path.exists():
            raise DsmnError(f"{out}: already holds a run (last.pt); pass --resume or choose another --out")
        unknown = set(recipe or {}) - set(RECIPE)
        if unknown:
            raise DsmnError(f"unknown recipe keys: {', '.join(sorted(unknown))}")
        recipe = {**RECIPE, **(recipe or {})}
        if data is None:
            raise DsmnError("train needs --data (a TAU22 directory or a feature cache)")
    set_threads(threads)
    dev = pick_device(device)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp)

    # ---- data
    cache = open_features(data)
    train_rows, val_rows = cache.indices(recipe["train_split"]), cache.indices(recipe["val_split"])
    if len(train_rows) == 0:
        raise DsmnError(f"{cache.path}: split '{recipe['train_split']}' is empty")
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        config = {"model": model_name, "recipe": recipe, "seed": seed, "data": str(Path(data).resolve()),
                  "cache": str(Path(cache.path).resolve()), "features": cache.params}
        config_path.write_text(json.dumps(config, indent=2) + "\n")

    # ---- model, optimizer
    torch.manual_seed(seed)
    model = build_model(model_name).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe["optimizer"] not in ("radam", "adam"):
        raise DsmnError(f"optimizer {recipe['optimizer']!r}: use radam (the paper's) or adam")
    # RAdam damps its first few hundred steps; Adam lets very short runs (tests) learn.
    opt_class = torch.optim.RAdam if recipe["optimizer"] == "radam" else torch.optim.Adam
    optimizer = opt_class(params, lr=recipe["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best_loss, history = 0, float("inf"), []
    if resume:
        state = torch.load(last_path, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_loss = state["epoch"] + 1, state["best_val_loss"]
        history = [h for h in _read_jsonl(out / "metrics.jsonl") if h["epoch"] < start_epoch]
        _write_jsonl(out / "metrics.jsonl", history)

    epochs = recipe["epochs"]
    done_here = 0
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)
        lr = lr_at(epoch, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        mix_fraction = 1.0 if epoch < recipe["mixup_full_until"] * epochs else 0.5
        fit = train_one_epoch(model, optimizer, scaler, cache, train_rows, recipe, dev, mix_fraction,
                              use_amp, desc=f"epoch {epoch + 1}/{epochs}", progress=progress)
        val = evaluate(model, cache, val_rows, dev)
        record = {"epoch": epoch, "lr": lr, **fit,
                  "val_loss": val["loss"], "val_acc": val["acc"], "val_coarse_acc": val["coarse_acc"],
                  "val_per_device": val["per_device"], "val_per_class": val["per_class"]}
        history.append(record)
        _write_jsonl(out / "metrics.jsonl", [record], append=True)
        if val["loss"] < best_loss:
            best_loss = val["loss"]
            _save({"model_name": model_name, "model": model.state_dict(), "epoch": epoch,
                   "val_loss": val["loss"], "val_acc": val["acc"]}, out / "best.pt")
        _save({"model_name": model_name, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scaler": scaler.state_dict(), "epoch": epoch, "val_loss": val["loss"], "val_acc": val["acc"],
               "best_val_loss": best_loss}, last_path)
        plot_curves(history, out / "curves.png")
        if progress:
            print(f"epoch {epoch + 1}/{epochs} lr {lr:.2e} train loss {record['train_loss']:.4f} "
                  f"acc {record['train_acc']:.3f} | val loss {val['loss']:.4f} acc {val['acc']:.3f} "
                  f"| {record['train_clips_per_s']:.0f} clips/s")
        done_here += 1
        if stop_after is not None and done_here >= stop_after:
            break
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
              "device_response": not args.no_device_response, "specaug": not args.no_specaug}
    recipe = {k: v for k, v in recipe.items() if v is not None}
    last = train(args.data, args.out, args.model, recipe, seed=args.seed, resume=args.resume,
                 device=args.device, threads=args.threads, progress=not args.no_progress,
                 stop_after=args.stop_after)
    if last:
        print(f"{args.out}: epoch {last['epoch'] + 1}, validation accuracy {last['val_acc']:.3f}, "
              f"log loss {last['val_loss']:.4f}")
    return 0


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "train",
        help="train a DSMN model with the paper's recipe",
        description="Train model1..model4 on a feature cache (or a TAU22 directory, cached first) with the "
                    "paper's recipe: RAdam, warm-up + cosine, PCGrad over the scene and coarse heads, mixup, "
                    "device-response augmentation, SpecAugment. Writes config.json, best.pt, last.pt, "
                    "metrics.jsonl and curves.png to --out.",
        **style("dsmn-host train --model model1 --data data/tau22-synth --out runs/m1", "dsmn-host train --out runs/m1 --resume"),
    )
    p.add_argument("--model", default="model1", choices=("model1", "model2", "model3", "model4"),
                   help="network variant")
    p.add_argument("--data", help="TAU22-layout data directory or feature cache (not needed with --resume)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--epochs", type=int, help=f"default {RECIPE['epochs']}")
    p.add_argument("--batch-size", type=int, help=f"default {RECIPE['batch_size']}")
    p.add_argument("--optimizer", choices=("radam", "adam"), help="default radam")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {RECIPE['lr']})")
    p.add_argument("--warmup-epochs", type=int, help=f"default {RECIPE['warmup_epochs']} (at most a fifth of the run)")
    p.add_argument("--warmup-lr", type=float, help=f"default {RECIPE['warmup_lr']}")
    p.add_argument("--min-lr", type=float, help=f"cosine floor (default {RECIPE['min_lr']})")
    p.add_argument("--mixup-alpha", type=float, help=f"Beta(a, a) of mixup (default {RECIPE['mixup_alpha']})")
    p.add_argument("--no-mixup", action="store_true", help="train without mixup")
    p.add_argument("--no-pcgrad", action="store_true", help="sum the two head losses instead of PCGrad")
    p.add_argument("--no-device-response", action="store_true", help="without device-response augmentation")
    p.add_argument("--no-specaug", action="store_true", help="without SpecAugment")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--stop-after", type=int, help="stop after this many epochs of this invocation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
