"""Fake quantization: the int8 arithmetic of the TFLite graph simulated in float for QAT.

- weights: per-output-channel symmetric int8 in [-127, 127] (TFLite's scheme), re-derived from
  the current weights at every step (`FakeQuantWeight`, a parametrization of each conv/linear);
- activations: per-tensor asymmetric int8 at every tensor the int8 graph materialises (the
  `QPoint`s of dsmn_host.training.models become `FakeQuantAct`s), ranges = min/max over the converter's
  calibration inputs (`recalibrate`), tied where the converter ties them
  (`converter_range_ties`); the sigmoid gate uses TFLite's fixed LOGISTIC output quantization
  (scale 1/256, zero point -128);
- rounding uses the straight-through estimator (gradients pass inside the range, stop outside).

`prepare_qat` puts these into a network in the deploy form (`dsmn_host.training.deploy_form`),
`strip_qat` takes them out again.
"""

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from dsmn_host.training.models import QPoint


def qparams(lo, hi):
    """Scale and zero point of int8 asymmetric quantization covering [lo, hi] and 0."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
    zero_point = torch.clamp(torch.round(-128 - lo / scale), -128, 127).to(torch.int32)
    return scale.reshape(1), zero_point.reshape(1)


class FakeQuantAct(nn.Module):
    """Per-tensor asymmetric int8 fake quantization; `observe` sets the range from a batch
    (see `calibrate`, which widens it over many). `fixed_range` is a range the int8 graph
    fixes whatever the data (the LOGISTIC output)."""

    def __init__(self, fixed_range=None):
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
        scale, zp = qparams(self.lo, self.hi)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)

    def range(self):
        if self.fixed:
            return [0.0, 255.0 / 256]
        return [float(min(self.lo, 0.0)), float(max(self.hi, 0.0))]


class FakeQuantWeight(nn.Module):
    """Per-output-channel symmetric int8 ([-127, 127]) weights, scale from the current max |w|."""

    def forward(self, w):
        scale = torch.clamp(w.detach().abs().flatten(1).amax(dim=1) / 127.0, min=1e-12)
        zp = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -127, 127)


def prepare_qat(folded):
    """Swap QPoints for activation quantizers and parametrize conv/linear weights in place."""
    for name, m in list(folded.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, QPoint):
                setattr(m, child_name, FakeQuantAct(getattr(child, "fixed_range", None)))
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", FakeQuantWeight())
    return folded


def act_quantizers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantAct)}


def set_mode(model, observe=None, quantize=None):
    for m in act_quantizers(model).values():
        if observe is not None:
            m.observe = observe
        if quantize is not None:
            m.quantize = quantize


def strip_qat(model):
    """Plain float weights of a QAT model (parametrizations removed, quantizers back to QPoints)."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        for child_name, child in list(m.named_children()):
            if isinstance(child, FakeQuantAct):
                q = QPoint()
                if child.fixed:
                    q.fixed_range = (0.0, 1.0)
                setattr(m, child_name, q)
    return model


def recalibrate(qmodel, x, batch=64):
    """Set every activation range to the min/max over `x` (what the converter will measure),
    then freeze the ranges and quantize."""
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
    qs = [q for q in act_quantizers(qmodel).values() if not q.fixed]
    before = [(q.lo.clone(), q.hi.clone()) for q in qs]
    with torch.no_grad():
        qmodel(x)
    if not first:
        for q, (lo, hi) in zip(qs, before):
            q.lo.copy_(torch.minimum(q.lo, lo))
            q.hi.copy_(torch.maximum(q.hi, hi))
