"""`dsmn-host qat RUN_DIR`: quantization-aware fine-tuning that models the int8 TFLite graph.

What the int8 model will do, and how it is simulated here:
- BatchNorm is folded into the preceding convs before fine-tuning (the converter folds it too),
  so the weights that get quantized are the folded ones;
- weights: per-output-channel symmetric int8 in [-127, 127] (TFLite's scheme), re-derived from
  the current weights at every step;
- activations: per-tensor asymmetric int8 at every tensor the TFLite graph materialises (the
  `QPoint`s of dsmn_host.models), with ranges tracked by an exponential moving average; the
  sigmoid gate uses TFLite's fixed LOGISTIC output quantization (scale 1/256, zero point −128);
- rounding uses the straight-through estimator (gradients pass inside the range, stop outside).

The checkpoint `qat.pt` stores plain float weights of the BN-folded network (they quantize to
exactly the int8 values QAT saw) and the learned activation ranges, so the export stage builds
an ordinary float graph and the converter can reuse the ranges.
"""

import json
from pathlib import Path

from dsmn_host.errors import DsmnError

QAT_DEFAULTS = {"epochs": 10, "lr": 1e-4, "min_lr": 1e-6, "calibration_batches": 8, "ema": 0.01}


def fold_batchnorm(model):
    """A copy of a DSMN model with every BatchNorm folded into the conv(s) feeding it.

    In a Sparable the BN follows the sum of two depthwise convs, so its scale goes into both
    and its shift becomes the bias of the time conv. The folded copy keeps the module tree
    (BN replaced by Identity), so `fold_batchnorm(build_model(name))` is the skeleton that a
    folded state dict loads into.
    """
    import copy

    import torch
    from torch import nn

    from dsmn_host.models import FullBlock, Sparable, SplitBlock

    model = copy.deepcopy(model)

    def scale_shift(bn):
        if isinstance(bn, nn.Identity):
            return None
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return s, bn.bias - bn.running_mean * s

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Sparable) and not isinstance(m.norm, nn.Identity):
                s, t = scale_shift(m.norm)
                m.time_conv.weight.mul_(s[:, None, None, None])
                m.mel_conv.weight.mul_(s[:, None, None, None])
                m.time_conv.bias = nn.Parameter(t.clone())
                m.norm = nn.Identity()
            elif isinstance(m, (SplitBlock, FullBlock)) and not isinstance(m.norm, nn.Identity):
                s, t = scale_shift(m.norm)
                conv = m.out_conv
                conv.weight.mul_(s[:, None, None, None])
                conv.bias.copy_(conv.bias * s + t)
                m.norm = nn.Identity()
    return model


def _qparams(lo, hi):
    """Scale and zero point of int8 asymmetric quantization covering [lo, hi] and 0."""
    import torch

    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
    zero_point = torch.clamp(torch.round(-128 - lo / scale), -128, 127).to(torch.int32)
    return scale.reshape(1), zero_point.reshape(1)


def _make_act_quantizer(fixed_range=None, ema=0.01):
    import torch
    from torch import nn

    class FakeQuantAct(nn.Module):
        """Per-tensor asymmetric int8 fake quantization with an EMA range observer."""

        def __init__(self):
            super().__init__()
            self.fixed = fixed_range is not None
            lo, hi = fixed_range if self.fixed else (0.0, 0.0)
            # not persistent: the folded float state dict must stay loadable into the plain model
            self.register_buffer("lo", torch.tensor(float(lo)), persistent=False)
            self.register_buffer("hi", torch.tensor(float(hi)), persistent=False)
            self.seen = self.fixed
            self.observe = True
            self.quantize = False

        def forward(self, x):
            if self.observe and not self.fixed and (self.training or not self.seen):
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if self.seen:
                    lo, hi = self.lo + ema * (lo - self.lo), self.hi + ema * (hi - self.hi)
                self.lo.copy_(lo), self.hi.copy_(hi)
                self.seen = True
            if not self.quantize:
                return x
            if self.fixed:  # int8 LOGISTIC output: scale 1/256, zero point -128
                return torch.fake_quantize_per_tensor_affine(x, 1.0 / 256, -128, -128, 127)
            scale, zp = _qparams(self.lo, self.hi)
            return torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)

        def range(self):
            if self.fixed:
                return [0.0, 255.0 / 256]
            return [float(min(self.lo, 0.0)), float(max(self.hi, 0.0))]

    return FakeQuantAct()


def _make_weight_quantizer():
    import torch
    from torch import nn

    class FakeQuantWeight(nn.Module):
        """Per-output-channel symmetric int8 ([-127, 127]) weights, scale from the current max |w|."""

        def forward(self, w):
            scale = torch.clamp(w.detach().abs().flatten(1).amax(dim=1) / 127.0, min=1e-12)
            zp = torch.zeros_like(scale, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -127, 127)

    return FakeQuantWeight()


def prepare_qat(folded, ema=0.01):
    """Swap QPoints for activation quantizers and parametrize conv/linear weights in place."""
    from torch import nn
    from torch.nn.utils import parametrize

    from dsmn_host.models import QPoint

    for name, m in list(folded.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, QPoint):
                setattr(m, child_name, _make_act_quantizer(getattr(child, "fixed_range", None), ema))
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", _make_weight_quantizer())
    return folded


def act_quantizers(model):
    return {n: m for n, m in model.named_modules() if hasattr(m, "quantize") and hasattr(m, "range")}


def set_mode(model, observe=None, quantize=None):
    for m in act_quantizers(model).values():
        if observe is not None:
            m.observe = observe
        if quantize is not None:
            m.quantize = quantize


def strip_qat(model):
    """Plain float weights of a QAT model (parametrizations removed, quantizers back to QPoints)."""
    import copy

    from torch.nn.utils import parametrize

    from dsmn_host.models import QPoint

    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        for child_name, child in list(m.named_children()):
            if hasattr(child, "quantize") and hasattr(child, "range"):
                q = QPoint()
                if child.fixed:
                    q.fixed_range = (0.0, 1.0)
                setattr(m, child_name, q)
    return model


def run_qat(run_dir, epochs=None, lr=None, batch_size=None, calibration_batches=None, seed=0,
            device="auto", threads=None, progress=True):
    """Fine-tune best.pt with fake quantization; writes qat.pt and qat_metrics.json."""
    import math

    import torch

    from dsmn_host.features import logmel_to_input, open_features
    from dsmn_host.models import build_model
    from dsmn_host.train import _save, evaluate, load_batch, pick_device, set_threads, train_one_epoch

    run_dir = Path(run_dir)
    config_path, best_path = run_dir / "config.json", run_dir / "best.pt"
    if not config_path.is_file() or not best_path.is_file():
        raise DsmnError(f"{run_dir}: not a finished training run (needs config.json and best.pt)")
    config = json.loads(config_path.read_text())
    recipe = dict(config["recipe"])
    settings = {**QAT_DEFAULTS}
    for key, value in (("epochs", epochs), ("lr", lr), ("calibration_batches", calibration_batches)):
        if value is not None:
            settings[key] = value
    if batch_size:
        recipe["batch_size"] = batch_size
    set_threads(threads)
    dev = pick_device(device)

    # ---- data and the float model
    cache = open_features(config.get("cache") or config["data"])
    train_rows, val_rows = cache.indices(recipe["train_split"]), cache.indices(recipe["val_split"])
    model = build_model(config["model"])
    state = torch.load(best_path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    float_metrics = evaluate(model, cache, val_rows, dev)

    # ---- fold BN, insert fake quantizers, calibrate ranges on clean training clips
    folded = fold_batchnorm(model).to(dev).eval()
    folded_metrics = evaluate(folded, cache, val_rows, dev)
    qmodel = prepare_qat(fold_batchnorm(model), settings["ema"]).to(dev)
    set_mode(qmodel, observe=True, quantize=False)
    torch.manual_seed(seed)

    calib = train_rows[torch.randperm(len(train_rows)).numpy()]
    bs = recipe["batch_size"]
    qmodel.eval()
    for i in range(min(settings["calibration_batches"], -(-len(calib) // bs))):
        _, logmel, _, _ = load_batch(cache, calib[i * bs:(i + 1) * bs], dev)
        calibrate(qmodel, logmel_to_input(logmel), first=i == 0)
    set_mode(qmodel, observe=True, quantize=True)
    ptq_metrics = evaluate(qmodel, cache, val_rows, dev)

    # ---- fine-tune with the paper's augmentations (late-phase mixup: half the batch)
    optimizer = torch.optim.Adam([p for p in qmodel.parameters() if p.requires_grad], lr=settings["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    history = []
    for epoch in range(settings["epochs"]):
        torch.manual_seed(seed * 1_000_003 + 7919 + epoch)
        frac = epoch / max(1, settings["epochs"] - 1)
        lr_now = settings["min_lr"] + 0.5 * (settings["lr"] - settings["min_lr"]) * (1 + math.cos(math.pi * frac))
        for g in optimizer.param_groups:
            g["lr"] = lr_now
        fit = train_one_epoch(qmodel, optimizer, scaler, cache, train_rows, recipe, dev, 0.5,
                              desc=f"qat {epoch + 1}/{settings['epochs']}", progress=progress)
        set_mode(qmodel, observe=False)
        val = evaluate(qmodel, cache, val_rows, dev)
        set_mode(qmodel, observe=True)
        history.append({"epoch": epoch, "lr": lr_now, **fit, "val_loss": val["loss"], "val_acc": val["acc"]})
        if progress:
            print(f"qat {epoch + 1}/{settings['epochs']} train loss {fit['train_loss']:.4f} | "
                  f"val loss {val['loss']:.4f} acc {val['acc']:.3f}")

    set_mode(qmodel, observe=False, quantize=True)
    qat_metrics = evaluate(qmodel, cache, val_rows, dev)
    ranges = {name: q.range() for name, q in act_quantizers(qmodel).items()}
    plain = strip_qat(qmodel).cpu()
    _save({"model_name": config["model"], "folded": True, "model": plain.state_dict(),
           "act_ranges": ranges, "weight_quant": "int8 symmetric per output channel [-127, 127]",
           "act_quant": "int8 asymmetric per tensor", "val_loss": qat_metrics["loss"],
           "val_acc": qat_metrics["acc"]}, run_dir / "qat.pt")
    report = {"model": config["model"], "settings": settings, "float": float_metrics,
              "float_bn_folded": folded_metrics, "post_training_quant": ptq_metrics, "qat": qat_metrics,
              "history": history}
    (run_dir / "qat_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def calibrate(qmodel, x, first):
    """Observe one clean batch; the first sets every range, later ones only widen them."""
    import torch

    qs = [q for q in act_quantizers(qmodel).values() if not q.fixed]
    before = [(q.lo.clone(), q.hi.clone()) for q in qs]
    for q in qs:
        q.seen = False
    with torch.no_grad():
        qmodel(x)
    if not first:
        for q, (lo, hi) in zip(qs, before):
            q.lo.copy_(torch.minimum(q.lo, lo))
            q.hi.copy_(torch.maximum(q.hi, hi))


def export_ready_model(run_dir):
    """(module, info): the QAT-trained, BN-folded float network in eval mode whose forward takes
    N×2×44×256 (time × mel), for ONNX export. Falls back to best.pt (folded) if QAT has not run,
    with info["qat"] = False."""
    import torch

    from dsmn_host.models import TimeMelWrapper, build_model

    run_dir = Path(run_dir)
    qat_path, best_path = run_dir / "qat.pt", run_dir / "best.pt"
    if qat_path.is_file():
        state = torch.load(qat_path, map_location="cpu", weights_only=False)
        net = fold_batchnorm(build_model(state["model_name"]))
        net.load_state_dict(state["model"])
        info = {"model": state["model_name"], "qat": True, "checkpoint": str(qat_path),
                "act_ranges": state.get("act_ranges", {}), "val_acc": state.get("val_acc")}
    elif best_path.is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=False)
        net = build_model(state["model_name"])
        net.load_state_dict(state["model"])
        net = fold_batchnorm(net)
        info = {"model": state["model_name"], "qat": False, "checkpoint": str(best_path),
                "act_ranges": {}, "val_acc": state.get("val_acc")}
    else:
        raise DsmnError(f"{run_dir}: no qat.pt or best.pt (run `dsmn-host train` and `dsmn-host qat` first)")
    return TimeMelWrapper(net).eval(), info


def load_qat_model(run_dir):
    """(module, info): the fake-quantized network as QAT left it (eval mode, ranges frozen),
    taking N×2×256×44 like the float model; the reference for what the int8 model should do."""
    import torch

    from dsmn_host.models import build_model

    qat_path = Path(run_dir) / "qat.pt"
    if not qat_path.is_file():
        raise DsmnError(f"{run_dir}: no qat.pt (run `dsmn-host qat {run_dir}` first)")
    state = torch.load(qat_path, map_location="cpu", weights_only=False)
    net = fold_batchnorm(build_model(state["model_name"]))
    net.load_state_dict(state["model"])
    qnet = prepare_qat(net)
    for name, q in act_quantizers(qnet).items():
        if not q.fixed:
            lo, hi = state["act_ranges"][name]
            q.lo.fill_(lo), q.hi.fill_(hi)
            q.seen = True
    set_mode(qnet, observe=False, quantize=True)
    return qnet.eval(), {"model": state["model_name"], "act_ranges": state["act_ranges"]}


def _run(args):
    rep = run_qat(args.run_dir, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                  calibration_batches=args.calibration_batches, seed=args.seed, device=args.device,
                  threads=args.threads, progress=not args.no_progress)
    print(f"{args.run_dir}: float accuracy {rep['float']['acc']:.3f} (log loss {rep['float']['loss']:.4f}); "
          f"int8 before QAT {rep['post_training_quant']['acc']:.3f}; "
          f"after QAT {rep['qat']['acc']:.3f} (log loss {rep['qat']['loss']:.4f})")
    return 0


def register(subparsers):
    p = subparsers.add_parser(
        "qat",
        help="quantization-aware fine-tuning of a trained run (adds qat.pt, qat_metrics.json)",
        description="Fold BatchNorm, simulate int8 (per-channel symmetric weights, per-tensor asymmetric "
                    "activations), fine-tune best.pt of RUN_DIR, and report float vs quantized accuracy.",
    )
    p.add_argument("run_dir", help="a run directory written by `dsmn-host train`")
    p.add_argument("--epochs", type=int, help=f"fine-tuning epochs (default {QAT_DEFAULTS['epochs']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate, cosine to 1e-6 (default {QAT_DEFAULTS['lr']})")
    p.add_argument("--batch-size", type=int, help="default: the training run's")
    p.add_argument("--calibration-batches", type=int,
                   help=f"batches that set the initial activation ranges (default {QAT_DEFAULTS['calibration_batches']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
