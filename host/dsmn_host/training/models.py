"""DSMN networks model1..model4 (DCASE 2023 Task 1, Wang et al.).

The network computes in a time × mel layout (N, C, 44, 256). `forward` accepts the feature
layout (N, 2, 256, 44) and transposes; `forward_tm` takes time × mel directly so exported
graphs start without a transpose.

Deviations from the released code, all deliberate:
- the released code builds a sixth block that forward() never uses; it is left out here so
  the parameter count is that of the computed graph;
- ECA multiplies by broadcasting instead of `expand_as`, which converters would otherwise
  materialise as large constant tensors;
- model2/model3 are named after the published table (the released files are swapped);
- model4 does not build in the released code; it is reconstructed as model1's design with
  channels [24, 128, 128, 128, 128] and a 512-wide classifier input (see dsmn_host.training.complexity.MODEL_NOTES).
"""

import torch
from torch import nn

N_OUTPUTS = 13  # 10 scenes + 3 coarse classes, in dsmn_host.data.tau.LABELS order
N_SCENES = 10

# name -> (block kinds for the five blocks, channels of the five blocks)
VARIANTS = {
    "model1": (("split",) * 5, (24, 32, 64, 64, 64)),
    "model2": (("split",) + ("full",) * 4, (24, 32, 64, 64, 64)),
    "model3": (("full",) * 5, (24, 32, 64, 64, 64)),
    "model4": (("split",) * 5, (24, 128, 128, 128, 128)),
}

def model_names():
    return sorted(VARIANTS)


class QPoint(nn.Identity):
    """Marks a tensor the int8 TFLite graph materialises (and so quantizes).

    A no-op in the float model (tracing records nothing); `dsmn_host.training.qat` swaps each one for a
    fake-quantizer with a learned range, so QAT sees the same rounding the int8 model will.
    """


class Sparable(nn.Module):
    """Grouped 1×1 channel mix, then two dilated depthwise 1-D convs (time and mel) summed.

    Two cheap 3-tap dilated kernels along separate axes see a 5×5 neighbourhood at a fraction
    of the cost of a full 2-D depthwise kernel.
    """

    def __init__(self, cin, cout):
        super().__init__()
        self.ch_conv = nn.Conv2d(cin, cout, kernel_size=1, groups=cout, bias=False)
        self.time_conv = nn.Conv2d(cout, cout, kernel_size=(3, 1), padding=(2, 0), dilation=(2, 1),
                                   groups=cout, bias=False)
        self.mel_conv = nn.Conv2d(cout, cout, kernel_size=(1, 3), padding=(0, 2), dilation=(1, 2),
                                  groups=cout, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.q_ch, self.q_time, self.q_mel, self.q_out = QPoint(), QPoint(), QPoint(), QPoint()
        self.cross = None  # the int8 form: both kernels as one (dsmn_host.training.deploy_form.fold_batchnorm)

    def forward(self, x):
        x = self.q_ch(self.ch_conv(x))
        if self.cross is not None:
            return self.q_out(self.relu(self.cross(x)))
        y = self.norm(self.q_time(self.time_conv(x)) + self.q_mel(self.mel_conv(x)))
        return self.q_out(self.relu(y))


class ECA(nn.Module):
    """Efficient channel attention: a 3-tap conv across pooled channel means gates each channel."""

    def __init__(self, k_size=3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.q_mean, self.q_conv, self.q_gate, self.q_out = QPoint(), QPoint(), QPoint(), QPoint()
        self.q_gate.fixed_range = (0.0, 1.0)  # int8 LOGISTIC has a fixed output scale of 1/256

    def forward(self, x):
        y = self.q_mean(x.mean(dim=(2, 3), keepdim=True))                  # N, C, 1, 1
        y = self.q_conv(self.conv(y.flatten(1).unsqueeze(1)))              # N, 1, C
        y = self.q_gate(torch.sigmoid(y)).transpose(1, 2).unsqueeze(-1)    # N, C, 1, 1
        return self.q_out(x * y)  # broadcast, not expand_as: converters would bake big constants


class SplitBlock(nn.Module):
    """Spatblock_spilt: the mel axis is split in halves; low half through three Sparables.

    Halving mel by the split (not by pooling) is what makes model1 cheap: the output has half
    the mel bins, then time is halved by average pooling.
    """

    def __init__(self, cin, cout):
        super().__init__()
        half = cin // 2
        self.sep1 = Sparable(cin, cin)
        self.sep2 = Sparable(cin, cin)
        self.sep3 = Sparable(cin, half)
        self.proj_low = nn.Conv2d(cin, half, kernel_size=1)
        self.proj_high = nn.Conv2d(cin, half, kernel_size=1)
        self.att = ECA()
        self.out_conv = nn.Conv2d(half, cout, kernel_size=1)
        self.norm = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(kernel_size=(2, 1))
        self.q_low, self.q_high, self.q_sum2, self.q_sum3, self.q_out = (QPoint() for _ in range(5))

    def forward(self, x):
        a1, a2 = x.chunk(2, dim=3)
        x3 = self.sep3(self.sep2(self.sep1(a1)))
        o = self.q_sum2(self.q_low(self.proj_low(a1)) + self.q_high(self.proj_high(a2)))
        o = self.q_sum3(o + x3)
        o = self.out_conv(self.att(o))
        return self.pool(self.q_out(self.relu(self.norm(o))))


class FullBlock(nn.Module):
    """Spatblock: no split; input, first and third Sparable outputs are concatenated."""

    def __init__(self, cin, cout):
        super().__init__()
        half = cin // 2
        self.sep1 = Sparable(cin, cin)
        self.sep2 = Sparable(cin, cin)
        self.sep3 = Sparable(cin, half)
        self.proj_in = nn.Conv2d(cin, half, kernel_size=1)
        self.proj_sep1 = nn.Conv2d(cin, half, kernel_size=1)
        self.att = ECA()
        self.out_conv = nn.Conv2d(3 * half, cout, kernel_size=1)
        self.norm = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(kernel_size=2)
        self.q_in, self.q_sep1, self.q_cat, self.q_out = QPoint(), QPoint(), QPoint(), QPoint()

    def forward(self, x):
        x1 = self.sep1(x)
        x3 = self.sep3(self.sep2(x1))
        o = self.q_cat(torch.cat((self.q_in(self.proj_in(x)), self.q_sep1(self.proj_sep1(x1)), x3), dim=1))
        o = self.out_conv(self.att(o))
        return self.pool(self.q_out(self.relu(self.norm(o))))


BLOCKS = {"split": SplitBlock, "full": FullBlock}


class DSMN(nn.Module):
    def __init__(self, kinds, channels, n_outputs=N_OUTPUTS, dropout=0.3, stem_channels=16):
        super().__init__()
        self.stem = nn.Conv2d(2, stem_channels, kernel_size=1)
        blocks, cin = [], stem_channels
        for kind, cout in zip(kinds, channels):
            blocks.append(BLOCKS[kind](cin, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        # Multi-scale head: pooled outputs of blocks 2..5.
        self.l1 = nn.Linear(sum(channels[1:]), 100)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=dropout)
        self.l2 = nn.Linear(100, n_outputs)
        self.q_input, self.q_stem, self.q_cat, self.q_l1, self.q_logits = (QPoint() for _ in range(5))
        self.q_pooled = nn.ModuleList(QPoint() for _ in channels[1:])

    def forward(self, x):
        """x: N×2×256×44 (channel, mel, time) -> N×13 logits."""
        return self.forward_tm(x.transpose(2, 3))

    def forward_tm(self, x):
        """x: N×2×44×256 (channel, time, mel) -> N×13 logits."""
        x = self.q_stem(self.stem(self.q_input(x)))
        pooled = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= 1:
                pooled.append(self.q_pooled[i - 1](x.mean(dim=(2, 3))))
        x = self.q_cat(torch.cat(pooled, dim=1))
        x = self.dropout(self.q_l1(self.relu(self.l1(x))))
        return self.q_logits(self.l2(x))


class TimeMelWrapper(nn.Module):
    """Exposes forward_tm as forward, for exporters that call the module directly."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_tm(x)


def build_model(name):
    from dsmn_host.errors import DsmnError

    if name not in VARIANTS:
        raise DsmnError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    kinds, channels = VARIANTS[name]
    net = DSMN(kinds, channels)
    net.variant = name
    return net
