"""The network in the form the int8 graph computes.

`fold_batchnorm` and `equalize` rewrite a trained DSMN into the form onnx2tf's int8 graph
computes, with the same float outputs. QAT fake-quantizes this form (`dsmn_host.training.fakequant`)
and trains it (`dsmn_host.training.qat`); `checkpoints` rebuilds it from qat.pt for export and
verification; which version of the form a checkpoint holds is `checkpoints.DEPLOY_FORM`.
A torch module: the stages that need it import it inside their command bodies.
"""

import copy

import torch
from torch import nn

from dsmn_host.training.models import FullBlock, QPoint, Sparable, SplitBlock



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
      their sum is quantized (see `CrossConv`);
    - each block's average pool becomes a frozen depthwise conv with its own quantized output
      (see `_pool_as_depthwise`).

    The folded copy keeps the module tree otherwise, so `fold_batchnorm(build_model(name))` is
    the skeleton that a folded state dict loads into.
    """
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


def _pool_as_depthwise(pool, channels):
    """The block's average pool as a frozen depthwise conv (weights 1/window, stride = window).

    int8 AVERAGE_POOL_2D keeps its input's scale and rounds each window's integer sum half away
    from zero: a 2-value average ties on every odd sum, and on ReLU outputs (zero point -128,
    mostly negative integers) those ties all round down, a bias that survives the pooled means
    of the head (measured: int8-vs-float top-1 agreement 80 % instead of the simulated 96 %).
    A depthwise conv gets its own output scale, so its requantization rarely ties."""
    k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * 2
    conv = nn.Conv2d(channels, channels, kernel_size=k, stride=k, groups=channels, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0 / (k[0] * k[1]))
    conv.weight.requires_grad_(False)
    return conv


def _per_channel_scale(conv):
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
