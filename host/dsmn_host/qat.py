"""`dsmn-host qat RUN_DIR`: quantization-aware fine-tuning that models the int8 TFLite graph.

What the int8 model will do, and how it is simulated here:
- the network is first put in the form the int8 graph computes (`fold_batchnorm`: BN folded,
  per-channel scalars folded into the depthwise convs; `equalize`: channel ranges balanced by
  exact rescaling), so the weights that get quantized are the ones the converter sees;
- weights: per-output-channel symmetric int8 in [-127, 127] (TFLite's scheme), re-derived from
  the current weights at every step;
- activations: per-tensor asymmetric int8 at every tensor the TFLite graph materialises (the
  `QPoint`s of dsmn_host.models), ranges = min/max over the converter's calibration inputs
  (inputs clipped as the converter's are), refreshed after every epoch; the sigmoid gate uses
  TFLite's fixed LOGISTIC output quantization (scale 1/256, zero point −128);
- rounding uses the straight-through estimator (gradients pass inside the range, stop outside).

The checkpoint `qat.pt` stores plain float weights of the folded network (they quantize to
exactly the int8 values QAT saw) and the activation ranges, so the export stage builds an
ordinary float graph.
"""

import copy
import json
from pathlib import Path

from dsmn_host.convert import DEFAULT_CALIB
from dsmn_host.errors import DsmnError

DEPLOY_FORM = 4  # 1: BN folded; 2: + channel scalars folded, equalized; 3: + pools as depthwise convs;
#                 4: + each Sparable's two depthwise kernels as one cross-shaped kernel
QAT_DEFAULTS = {"epochs": 10, "lr": 1e-4, "min_lr": 1e-6, "calibration_inputs": DEFAULT_CALIB}


def fold_batchnorm(model):
    """A copy of a DSMN model in the form the int8 graph computes, with the same outputs.

    - every BatchNorm is folded into the conv(s) feeding it; in a Sparable the BN follows the
      sum of two depthwise convs, so its scale goes into both and its shift becomes the bias of
      the time conv;
    - a Sparable whose channel conv is one scalar per channel (groups == in == out channels:
      sep1 and sep2) has that scalar folded into both depthwise convs, and the conv and its
      quantization point are removed. As its own int8 tensor it was the worst-quantized in the
      network: channel ranges differ up to 1000x (a small scalar that the BN-folded depthwise
      weights scale back up), so one per-tensor scale rounded the small channels away;
    - each Sparable's time and mel kernels become one cross-shaped depthwise kernel, so only
      their sum is quantized (see `_cross_conv_class`);
    - each block's average pool becomes a frozen depthwise conv with its own quantized output
      (see `_pool_as_depthwise`).

    The folded copy keeps the module tree otherwise, so `fold_batchnorm(build_model(name))` is
    the skeleton that a folded state dict loads into.
    """
    import copy

    import torch
    from torch import nn

    from dsmn_host.models import FullBlock, QPoint, Sparable, SplitBlock

    model = copy.deepcopy(model)
    CrossConv = _cross_conv_class()

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
            if isinstance(m, Sparable) and _per_channel_scale(m.ch_conv):
                w = m.ch_conv.weight[:, 0, 0, 0]
                m.time_conv.weight.mul_(w[:, None, None, None])
                m.mel_conv.weight.mul_(w[:, None, None, None])
                m.ch_conv, m.q_ch = nn.Identity(), nn.Identity()
            if isinstance(m, Sparable) and m.cross is None:
                m.cross = CrossConv.merge(m.time_conv, m.mel_conv)
                m.time_conv = m.mel_conv = m.q_time = m.q_mel = None
            if isinstance(m, (SplitBlock, FullBlock)) and isinstance(m.pool, nn.AvgPool2d):
                m.pool = nn.Sequential(_pool_as_depthwise(m.pool, m.out_conv.out_channels), QPoint())
    return model


def _cross_conv_class():
    import torch
    from torch import nn

    class CrossConv(nn.Conv2d):
        """A Sparable's time (3×1) and mel (1×3) dilated depthwise kernels summed into one 3×3
        depthwise kernel with dilation 2 whose four corner taps are held at zero.

        As two convs and an ADD, the int8 graph quantizes both partial outputs. Their ranges are
        set by large values of opposite sign that the sum cancels, so their rounding noise is
        large against the sum: measured on model1, these tensors carried ~70 % of the noise in
        the int8 top-2 logit margin. One conv quantizes only the sum, and computes the same float
        outputs."""

        def __init__(self, channels):
            super().__init__(channels, channels, kernel_size=3, padding=2, dilation=2, groups=channels, bias=True)
            mask = torch.zeros(1, 1, 3, 3)
            mask[0, 0, 1, :] = mask[0, 0, :, 1] = 1.0
            self.register_buffer("mask", mask, persistent=False)

        def forward(self, x):
            return self._conv_forward(x, self.weight * self.mask, self.bias)

        @classmethod
        def merge(cls, time_conv, mel_conv):
            conv = cls(time_conv.out_channels)
            with torch.no_grad():
                w = torch.zeros_like(conv.weight)
                w[:, 0, :, 1] = time_conv.weight[:, 0, :, 0]
                w[:, 0, 1, :] += mel_conv.weight[:, 0, 0, :]
                conv.weight.copy_(w)
                bias = torch.zeros(conv.out_channels)
                for c in (time_conv, mel_conv):
                    if c.bias is not None:
                        bias += c.bias
                conv.bias.copy_(bias)
            return conv

    return CrossConv


def _pool_as_depthwise(pool, channels):
    """The block's average pool as a frozen depthwise conv (weights 1/window, stride = window).

    int8 AVERAGE_POOL_2D keeps its input's scale and rounds each window's integer sum half away
    from zero: a 2-value average ties on every odd sum, and on ReLU outputs (zero point -128,
    mostly negative integers) those ties all round down, a bias that survives the pooled means
    of the head (measured: int8-vs-float top-1 agreement 80 % instead of the simulated 96 %).
    A depthwise conv gets its own output scale, so its requantization rarely ties."""
    import torch
    from torch import nn

    k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * 2
    conv = nn.Conv2d(channels, channels, kernel_size=k, stride=k, groups=channels, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0 / (k[0] * k[1]))
    conv.weight.requires_grad_(False)
    return conv


def _per_channel_scale(conv):
    from torch import nn

    return (isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels
            and conv.kernel_size == (1, 1) and conv.bias is None)


def equalize(folded, x):
    """Rescale channels of a folded model so per-tensor int8 ranges fit every channel (exact).

    Cross-layer equalization, driven by real inputs `x` (N×2×256×44): a channel c of a tensor
    that is (up to ReLU, which commutes with a positive scale) a linear function of the weights
    before it is multiplied by s_c there and its readers' weights are divided by s_c. Applied to
    the stem output, the Sparable channel-conv output of sep3, and the outputs of sep1/sep2.
    s_c = sqrt(max range / range_c) where readers are full convs (their per-output-channel weight
    scales then carry part of the imbalance), the full ratio where the only readers are
    depthwise. Every rescaling is undone by its readers, so all channel ranges are measured in
    one pass before any is applied. Returns the largest gain per tensor, for the report.
    """
    import torch

    from dsmn_host.models import FullBlock, SplitBlock

    def reads(sep):
        """The convs that read a Sparable's input."""
        return [sep.cross] if isinstance(sep.ch_conv, torch.nn.Identity) else [sep.ch_conv]

    # (name, module whose output is rescaled, its readers, sqrt gains?)
    sites = []
    block0 = folded.blocks[0]
    proj = [block0.proj_low, block0.proj_high] if isinstance(block0, SplitBlock) else [block0.proj_in]
    sites.append(("stem", folded.stem, reads(block0.sep1) + proj, True))
    for b, block in enumerate(folded.blocks):
        extra = [block.proj_sep1] if isinstance(block, FullBlock) else []
        sites.append((f"blocks.{b}.sep1", block.sep1, reads(block.sep2) + extra, True))
        sites.append((f"blocks.{b}.sep2", block.sep2, reads(block.sep3), True))
        if not isinstance(block.sep3.ch_conv, torch.nn.Identity):
            sites.append((f"blocks.{b}.sep3.ch_conv", block.sep3.ch_conv,
                          [block.sep3.cross], False))

    absmax = {}
    hooks = [mod.register_forward_hook(
        lambda m, i, o, n=name: absmax.__setitem__(n, torch.maximum(absmax.get(n, o.new_zeros(o.shape[1])),
                                                                    o.detach().abs().amax(dim=(0, 2, 3)))))
        for name, mod, _, _ in sites]
    try:
        with torch.no_grad():
            for i in range(0, len(x), 64):
                folded(x[i:i + 64])
    finally:
        for h in hooks:
            h.remove()

    def produce(mod, g):
        """Multiply what `mod` writes to channel c by g_c."""
        if isinstance(mod, torch.nn.Conv2d):
            mod.weight.mul_(g[:, None, None, None])
            if mod.bias is not None:
                mod.bias.mul_(g)
        else:  # a Sparable
            produce(mod.cross, g)

    def read(conv, g):
        """Divide what `conv` reads from channel c by g_c (dense, grouped and depthwise alike:
        output channel o of group k reads input channels k*per .. k*per + per - 1)."""
        per = conv.in_channels // conv.groups
        g = g.reshape(conv.groups, per).repeat_interleave(conv.out_channels // conv.groups, 0)
        conv.weight.div_(g[:, :, None, None])

    applied = {}
    with torch.no_grad():
        for name, mod, readers, sqrt in sites:
            r = absmax[name].clamp(min=float(absmax[name].max()) * 1e-4)
            g = r.max() / r
            g = g.sqrt() if sqrt else g
            produce(mod, g)
            for conv in readers:
                read(conv, g)
            applied[name] = round(float(g.max()), 3)
    return applied


def _qparams(lo, hi):
    """Scale and zero point of int8 asymmetric quantization covering [lo, hi] and 0."""
    import torch

    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
    zero_point = torch.clamp(torch.round(-128 - lo / scale), -128, 127).to(torch.int32)
    return scale.reshape(1), zero_point.reshape(1)


def _make_act_quantizer(fixed_range=None):
    import torch
    from torch import nn

    class FakeQuantAct(nn.Module):
        """Per-tensor asymmetric int8 fake quantization; `observe` sets the range from a batch
        (see `calibrate`, which widens it over many)."""

        def __init__(self):
            super().__init__()
            self.fixed = fixed_range is not None
            lo, hi = fixed_range if self.fixed else (0.0, 0.0)
            # not persistent: the folded float state dict must stay loadable into the plain model
            self.register_buffer("lo", torch.tensor(float(lo)), persistent=False)
            self.register_buffer("hi", torch.tensor(float(hi)), persistent=False)
            self.observe = True
            self.quantize = False

        def forward(self, x):
            if self.observe and not self.fixed:
                self.lo.copy_(x.detach().min().float())
                self.hi.copy_(x.detach().max().float())
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


def prepare_qat(folded):
    """Swap QPoints for activation quantizers and parametrize conv/linear weights in place."""
    from torch import nn
    from torch.nn.utils import parametrize

    from dsmn_host.models import QPoint

    for name, m in list(folded.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, QPoint):
                setattr(m, child_name, _make_act_quantizer(getattr(child, "fixed_range", None)))
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


def run_qat(run_dir, epochs=None, lr=None, batch_size=None, calibration_inputs=None, seed=0,
            device="auto", threads=None, progress=True):
    """Fine-tune best.pt with fake quantization; writes qat.pt and qat_metrics.json.

    Activation ranges are not learned by a moving average over augmented batches: they are the
    min/max over the same calibration inputs `dsmn-host convert` hands the converter, recomputed
    after every epoch and frozen while training. onnx2tf recalibrates and cannot take QAT's
    ranges, so this is how the ranges QAT trains against are the ones the int8 model gets.
    """
    import math

    import torch

    from dsmn_host import convert
    from dsmn_host.features import open_features
    from dsmn_host.models import build_model
    from dsmn_host.train import _save, evaluate, pick_device, set_threads, train_one_epoch

    run_dir = Path(run_dir)
    config_path, best_path = run_dir / "config.json", run_dir / "best.pt"
    if not config_path.is_file() or not best_path.is_file():
        raise DsmnError(f"{run_dir}: not a finished training run (needs config.json and best.pt)")
    config = json.loads(config_path.read_text())
    recipe = dict(config["recipe"])
    settings = {**QAT_DEFAULTS}
    for key, value in (("epochs", epochs), ("lr", lr), ("calibration_inputs", calibration_inputs)):
        if value is not None:
            settings[key] = value
    if batch_size:
        recipe["batch_size"] = batch_size
    set_threads(threads)
    pick_device(device)
    from dsmn_host.distributed import Distributed, prepare_for_ranks  # torchrun: ranks share, rank 0 writes
    ctx = Distributed.setup(device)
    dev = ctx.device(device)

    # ---- data and the float model
    source = config.get("cache") or config["data"]
    cache = open_features(source)
    train_rows, val_rows = cache.indices(recipe["train_split"]), cache.indices(recipe["val_split"])
    model = build_model(config["model"])
    state = torch.load(best_path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    float_metrics = evaluate(model, cache, val_rows, dev)

    # ---- the int8 form: BN and channel scalars folded, channels equalized (same outputs)
    calib_nhwc, clip = convert.calibration_inputs(source, n=settings["calibration_inputs"], with_clip=True)
    calib = torch.from_numpy(calib_nhwc.transpose(0, 3, 2, 1).copy()).to(dev)   # N, 2, mel, time
    folded = fold_batchnorm(model).to(dev).eval()
    gains = equalize(folded, calib)
    folded_metrics = evaluate(folded, cache, val_rows, dev)
    qmodel = prepare_for_ranks(prepare_qat(copy.deepcopy(folded)).to(dev), ctx)
    recalibrate(qmodel, calib)
    ptq_metrics = evaluate(qmodel, cache, val_rows, dev)

    # ---- fine-tune with the paper's augmentations (late-phase mixup: half the batch)
    optimizer = torch.optim.Adam([p for p in qmodel.parameters() if p.requires_grad], lr=settings["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    history = []
    # kept like training's best.pt: the state with the lowest validation loss, starting from the
    # calibrated network itself (epoch -1), so fine-tuning can only be kept where it helped
    best = {"epoch": -1, "loss": ptq_metrics["loss"], "model": copy.deepcopy(qmodel)}
    for epoch in range(settings["epochs"]):
        torch.manual_seed(seed * 1_000_003 + 7919 + epoch)
        frac = epoch / max(1, settings["epochs"] - 1)
        lr_now = settings["min_lr"] + 0.5 * (settings["lr"] - settings["min_lr"]) * (1 + math.cos(math.pi * frac))
        for g in optimizer.param_groups:
            g["lr"] = lr_now
        fit = train_one_epoch(qmodel, optimizer, scaler, cache, train_rows, recipe, dev, 0.5,
                              desc=f"qat {epoch + 1}/{settings['epochs']}", progress=progress,
                              ctx=ctx, seed=seed, epoch=7919 + epoch)
        recalibrate(qmodel, calib)
        val = evaluate(qmodel, cache, val_rows, dev)
        history.append({"epoch": epoch, "lr": lr_now, **fit, "val_loss": val["loss"], "val_acc": val["acc"]})
        if val["loss"] < best["loss"]:
            best = {"epoch": epoch, "loss": val["loss"], "model": copy.deepcopy(qmodel)}
        if progress and ctx.main:
            print(f"qat {epoch + 1}/{settings['epochs']} train loss {fit['train_loss']:.4f} | "
                  f"val loss {val['loss']:.4f} acc {val['acc']:.3f}")

    qmodel = best["model"]
    qat_metrics = evaluate(qmodel, cache, val_rows, dev)
    ranges = {name: q.range() for name, q in act_quantizers(qmodel).items()}
    plain = strip_qat(qmodel).cpu()
    if not ctx.main:
        ctx.close()
        return {"qat": qat_metrics, "processes": ctx.world}
    _save({"model_name": config["model"], "folded": True, "form": DEPLOY_FORM, "model": plain.state_dict(),
           "act_ranges": ranges, "weight_quant": "int8 symmetric per output channel [-127, 127]",
           "act_quant": "int8 asymmetric per tensor, min/max over the calibration inputs",
           "input_clip": clip, "equalization_gains": gains, "kept_epoch": best["epoch"],
           "val_loss": qat_metrics["loss"],
           "val_acc": qat_metrics["acc"]}, run_dir / "qat.pt")
    report = {"model": config["model"], "settings": settings, "input_clip": clip, "equalization_gains": gains,
              "float": float_metrics, "float_bn_folded": folded_metrics, "post_training_quant": ptq_metrics,
              "qat": qat_metrics, "kept_epoch": best["epoch"], "history": history, "processes": ctx.world}
    (run_dir / "qat_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    ctx.close()
    return report


def recalibrate(qmodel, x, batch=64):
    """Set every activation range to the min/max over `x` (what the converter will measure),
    then freeze the ranges and quantize."""
    import torch

    set_mode(qmodel, observe=True, quantize=False)
    was_training = qmodel.training
    qmodel.eval()
    for i in range(0, len(x), batch):
        calibrate(qmodel, x[i:i + batch], first=i == 0)
    qs = act_quantizers(qmodel)
    for dst, src in converter_range_ties(qs):
        qs[dst].lo.copy_(qs[src].lo), qs[dst].hi.copy_(qs[src].hi)
    set_mode(qmodel, observe=False, quantize=True)
    qmodel.train(was_training)


def converter_range_ties(names):
    """(tensor, takes the range of) pairs, in order, where the int8 model does not quantize a
    tensor with its own min/max.

    - CONCATENATION: TFLite's int8 spec requires every input to share the output's scale and
      zero point, so the pooled block outputs of the head and the three branches of a full
      block are quantized with the range of their concatenation (up to ~5x coarser);
    - measured with onnx2tf 1.28.8 + TensorFlow 2.21 on split blocks: the low-half projection
      conv gets the range of the projection sum, and that sum the range of the block sum.
    QAT copies these so it trains against the steps the int8 model really has.
    """
    names = set(names)
    ties = []
    for name in sorted(names):
        if name.startswith("q_pooled.") and "q_cat" in names:
            ties.append((name, "q_cat"))
        if name.endswith(".q_cat") and name.startswith("blocks."):
            block = name[:-len("q_cat")]
            ties += [(block + part, name) for part in ("q_in", "q_sep1", "sep3.q_out") if block + part in names]
        if name.endswith(".q_low"):
            block = name[:-len("q_low")]
            if block + "q_sum2" in names and block + "q_sum3" in names:
                ties += [(block + "q_low", block + "q_sum2"), (block + "q_sum2", block + "q_sum3")]
    return ties


def calibrate(qmodel, x, first):
    """Observe one clean batch; the first sets every range, later ones only widen them."""
    import torch

    qs = [q for q in act_quantizers(qmodel).values() if not q.fixed]
    before = [(q.lo.clone(), q.hi.clone()) for q in qs]
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
        state = _load_qat_state(qat_path)
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


def _load_qat_state(path):
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("form", 1) != DEPLOY_FORM:
        raise DsmnError(f"{path}: written by an older dsmn-host (network form {state.get('form', 1)}, "
                        f"this one reads form {DEPLOY_FORM}); rerun `dsmn-host qat {path.parent}`")
    return state


def load_qat_model(run_dir):
    """(module, info): the fake-quantized network as QAT left it (eval mode, ranges frozen),
    taking N×2×256×44 like the float model; the reference for what the int8 model should do."""
    import torch

    from dsmn_host.models import build_model

    qat_path = Path(run_dir) / "qat.pt"
    if not qat_path.is_file():
        raise DsmnError(f"{run_dir}: no qat.pt (run `dsmn-host qat {run_dir}` first)")
    state = _load_qat_state(qat_path)
    net = fold_batchnorm(build_model(state["model_name"]))
    net.load_state_dict(state["model"])
    qnet = prepare_qat(net)
    for name, q in act_quantizers(qnet).items():
        if not q.fixed:
            lo, hi = state["act_ranges"][name]
            q.lo.fill_(lo), q.hi.fill_(hi)
    set_mode(qnet, observe=False, quantize=True)
    return qnet.eval(), {"model": state["model_name"], "act_ranges": state["act_ranges"]}


def _run(args):
    rep = run_qat(args.run_dir, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                  calibration_inputs=args.calibration_inputs, seed=args.seed, device=args.device,
                  threads=args.threads, progress=not args.no_progress)
    if "float" not in rep:   # a torchrun rank other than 0: rank 0 reports
        return 0
    print(f"{args.run_dir}: float accuracy {rep['float']['acc']:.3f} (log loss {rep['float']['loss']:.4f}); "
          f"int8 before QAT {rep['post_training_quant']['acc']:.3f}; "
          f"after QAT {rep['qat']['acc']:.3f} (log loss {rep['qat']['loss']:.4f}); "
          + (f"kept epoch {rep['kept_epoch'] + 1}" if rep["kept_epoch"] >= 0
             else "kept the calibrated network: fine-tuning did not lower the validation loss"))
    return 0


def register(subparsers):
    p = subparsers.add_parser(
        "qat",
        help="quantization-aware fine-tuning of a trained run (adds qat.pt, qat_metrics.json)",
        description="Put best.pt of RUN_DIR in the form the int8 graph computes (BatchNorm and channel "
                    "scalars folded, each Sparable's two kernels as one cross-shaped kernel, channels equalized, pools as "
                    "convs; same outputs), simulate int8 "
                    "(per-channel symmetric weights, per-tensor asymmetric activations with the converter's "
                    "calibration ranges), fine-tune, keep the state with the lowest validation loss, and "
                    "report float vs quantized accuracy.",
    )
    p.add_argument("run_dir", help="a run directory written by `dsmn-host train`")
    p.add_argument("--epochs", type=int, help=f"fine-tuning epochs (default {QAT_DEFAULTS['epochs']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate, cosine to 1e-6 (default {QAT_DEFAULTS['lr']})")
    p.add_argument("--batch-size", type=int, help="default: the training run's")
    p.add_argument("--calibration-inputs", type=int,
                   help="training inputs whose min/max set the activation ranges; use the same number as "
                        f"`dsmn-host convert --n-calib` (default {QAT_DEFAULTS['calibration_inputs']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
