"""Every fast path of the dsmn runtime, on both sides of the condition that switches it on,
bit-exact with the TFLite-Micro interpreter (host gcc build).

The randomised op tests (test_runtime_ops.py) draw small shapes, so they never reach the
paths that switch on above 512 pixels or 1,024 elements, at more than 16/64/128 channels,
or for quantisations the converter's calibration rarely gives (an effective multiplier
>= 0.5, equal input and output quantisation). Each case here is one small model aimed at
one such condition (named in the case id), with calibration statistics, weight and bias
scales drawn from a seed derived from the id (random quantisation, reproducible), and
where needed an output quantisation patched in the flatbuffer (TFLM runs the same patched
model). The conditions, from firmware/runtime/*.c:

  conv1x1 (CONV_2D 1x1, no padding): filter channels per group <= 64 (C1_MAXG) -> weight
    buffer, else a dot product; fast doubled-accumulator requantisation when the shift is a
    right shift of 1..31 bits and |bias + offset*sum(w)| + 128*sum|w| < 2^29; unrolled kinds
    for 1, 2, 4, 8, 12, 16, 24, 32 channels per group, a generic loop otherwise (packed SMLAD pairs
    on DSP when % 4 == 0); a whole-image run at stride 1 and full width, rows otherwise;
    full int8 clamp (the output offset folded into the rounding constant for right shifts of
    <= 23 bits) or an activation range.
  depthwise: 1x1 pointwise per channel tabulated from 512 pixels; dw_fast (multiplier 1,
    stride 1 along mel and any along time, <= 128 channels, <= 9 taps, 16-channel chunks,
    all-zero taps of a chunk left out, 5- and 2-tap unrolled bodies, a row's interior run of
    >= 4 pixels channel by channel (5- and 2-tap spans), the same requantisation
    bound as conv1x1; whole rows, or any window: a SPLIT part); tap lists (multiplier 1,
    <= 25 taps); the generic loop.
  Sparable (two 3-tap depthwise + ADD + constant tail): <= 64 channels, 16-channel chunks,
    a tabulated tail; generic otherwise.
  ADD/SUB same shapes from 1,024 elements: tabulated input rescaling, doubled fast
    requantisation when the output shift is a right shift (an output multiplier < 0.5) and
    the tables' sum < 2^29 (always, for int8 inputs and TFLite's left shift of 20), the
    output offset folded into it for a full clamp and a right shift <= 23 bits.
  MUL of a dense tensor by a per-channel one: tabulated per channel from 512 pixels, each
    element computed below, channel by channel (doubled requantisation when the output shift
    is a right shift, the output offset folded into it for a full clamp and <= 23 bits).
  AVERAGE_POOL_2D windows of 2 elements; MEAN with equal input/output quantisation.
"""

import os
import zlib

import numpy as np
import pytest

import runtime_support as rs

tf = pytest.importorskip("tensorflow")


# Local sweeps: DSMN_RT_SALT=k draws other quantisations for every case, DSMN_RT_TARGET=
# qemu-an386 runs the cases on the Cortex-M4 build (DSP paths); CI uses the defaults.
SALT = os.environ.get("DSMN_RT_SALT", "")
TARGET = os.environ.get("DSMN_RT_TARGET", "host")


def _rng(case):
    return np.random.default_rng(zlib.crc32((case + SALT).encode()))


def _calib(rng):
    return float(rng.uniform(-1.5, 1.5)), float(rng.uniform(0.3, 3.0))


def _conv1x1(rng, hw, cin, cout, groups=1, stride=1, act=None, bias_std=0.3):
    W = rs.Weights(int(rng.integers(1 << 30)))
    f = W((1, 1, cin // groups, cout), float(rng.uniform(0.2, 1.5)))
    b = W((cout,), bias_std)

    def fn(x):
        return rs.act(tf.nn.conv2d(x, f, stride, "VALID") + b, act)
    return fn, (hw[0], hw[1], cin)


def _dw(rng, hw, c, k, stride=1, padding="SAME", act=None, mult=1, zero_corners=False,
        explicit_pad=0, kshape=None, strides=None, dilation=1):
    """kshape (kh, kw) and strides (time, mel) override the square k and stride."""
    W = rs.Weights(int(rng.integers(1 << 30)))
    kh, kw = kshape or (k, k)
    f = np.array(W((kh, kw, c, mult), float(rng.uniform(0.2, 1.2))))
    if zero_corners:
        for ky, kx in ((0, 0), (0, k - 1), (k - 1, 0), (k - 1, k - 1)):
            f[ky, kx] = 0.0
    b = W((c * mult,), 0.3)

    def fn(x):
        if explicit_pad:
            p = explicit_pad
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        sh, sw = strides or (stride, stride)
        y = tf.nn.depthwise_conv2d(x, f, [1, sh, sw, 1], padding, dilations=[dilation, dilation])
        return rs.act(y + b, act)
    return fn, (hw[0], hw[1], c)


def _sparable(rng, hw, c):
    W = rs.Weights(int(rng.integers(1 << 30)))
    f1, f2 = W((3, 1, c, 1), 0.7), W((1, 3, c, 1), 0.7)
    b1, b2 = W((c,), 0.3), W((c,), 0.3)
    gamma, beta = W((c,), 0.3) + 1.0, W((c,), 0.3)

    def fn(x):
        u = tf.nn.depthwise_conv2d(x, f1, [1, 1, 1, 1], "SAME", dilations=[1, 1]) + b1
        v = tf.nn.depthwise_conv2d(x, f2, [1, 1, 1, 1], "SAME", dilations=[2, 2]) + b2
        return tf.nn.relu((u + v) * gamma + beta)
    return fn, (hw[0], hw[1], c)


def _binary(rng, shape, kind, other="same", act=None):
    """x (op) y where y = 1x1 conv of x (a real second activation with its own scale),
    reduced to one value per channel for `other == "channel"`; `act` fused after an ADD or MUL."""
    c = shape[2]
    k = rs.Weights(int(rng.integers(1 << 30)))((1, 1, c, c), float(rng.uniform(0.3, 3.0)))

    def fn(x):
        y = tf.nn.conv2d(x, k, 1, "SAME")
        if other == "channel":
            y = tf.math.sigmoid(tf.reduce_mean(y, axis=[1, 2], keepdims=True))
        if kind == "add":
            return rs.act(x + y, act)
        if kind == "sub":
            return x - y
        return rs.act(x * y if other != "channel_first" else y * x, act)
    return fn, tuple(shape)


def _conv(rng, hw, cin, cout, k, stride, explicit_pad, act="relu"):
    W = rs.Weights(int(rng.integers(1 << 30)))
    f, b = W((k, k, cin, cout), float(rng.uniform(0.1, 0.5))), W((cout,), 0.3)

    def fn(x):
        if explicit_pad:
            x = tf.pad(x, [[0, 0], [explicit_pad, explicit_pad], [explicit_pad, explicit_pad], [0, 0]])
        return rs.act(tf.nn.conv2d(x, f, stride, "VALID") + b, act)
    return fn, (hw[0], hw[1], cin)


# case id -> (builder(rng) -> (fn, input shape), patch or None, ops the model must hold)
CASES = {
    # conv1x1: unrolled kinds and the generic loop (packed on DSP when gc % 4 == 0)
    **{f"conv1x1_gc{g}": (lambda r, g=g: _conv1x1(r, (9, 7), g, 6), None, ["CONV_2D"])
       for g in (1, 2, 3, 4, 8, 12, 16, 20, 22, 24, 32)},
    # the weight buffer holds 64 channels per group; 65 takes the dot-product path
    "conv1x1_gc64": (lambda r: _conv1x1(r, (5, 6), 64, 5, act="relu"), None, ["CONV_2D"]),
    "conv1x1_gc65": (lambda r: _conv1x1(r, (5, 6), 65, 5, act="relu"), None, ["CONV_2D"]),
    "conv1x1_wide_gc320": (lambda r: _conv1x1(r, (3, 3), 320, 33), None, ["CONV_2D"]),
    "conv1x1_grouped_gc4": (lambda r: _conv1x1(r, (6, 6), 8, 6, groups=2), None, ["CONV_2D"]),
    # rows instead of one whole-image run
    "conv1x1_stride2": (lambda r: _conv1x1(r, (9, 10), 8, 7, stride=2, act="relu6"), None,
                        ["CONV_2D"]),
    # effective multiplier >= 0.5 (shift >= 0): the exact requantisation, not the fast one
    "conv1x1_left_shift": (lambda r: _conv1x1(r, (6, 6), 8, 6),
                           lambda b: rs.requantize_output(b, "CONV_2D", 1 / 256), ["CONV_2D"]),
    "conv1x1_gc65_left_shift": (lambda r: _conv1x1(r, (4, 4), 65, 5),
                                lambda b: rs.requantize_output(b, "CONV_2D", 1 / 256), ["CONV_2D"]),
    # a full int8 clamp folds the output offset into the rounding constant up to a right
    # shift of 23 bits (DSMN_FOLD_MAXRIGHT); beyond, the body that adds it
    "conv1x1_gc8_shift_over_23": (lambda r: _conv1x1(r, (6, 6), 8, 6),
                                  lambda b: rs.requantize_output(b, "CONV_2D", 2.0 ** 18,
                                                                 zero_point=100), ["CONV_2D"]),
    # |bias| beyond the fast path's 2^29 accumulator bound
    "conv1x1_huge_bias": (lambda r: _conv1x1(r, (6, 6), 8, 6, bias_std=3e5), None, ["CONV_2D"]),
    # depthwise 1x1 pointwise: tabulated from 512 pixels
    "dw1x1_511px": (lambda r: _dw(r, (7, 73), 5, 1), None, ["DEPTHWISE_CONV_2D"]),
    "dw1x1_512px": (lambda r: _dw(r, (16, 32), 5, 1, act="relu"), None, ["DEPTHWISE_CONV_2D"]),
    # dw_fast: 16-channel chunks, 128-channel limit, 9-tap limit, the 5-tap cross body
    "dw3x3_c16": (lambda r: _dw(r, (7, 6), 16, 3), None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_c17_relu6": (lambda r: _dw(r, (6, 7), 17, 3, act="relu6"), None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_c128": (lambda r: _dw(r, (5, 5), 128, 3), None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_c129": (lambda r: _dw(r, (5, 5), 129, 3), None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_cross_c20": (lambda r: _dw(r, (6, 6), 20, 3, zero_corners=True), None,
                        ["DEPTHWISE_CONV_2D"]),
    "dw3x3_cross_c20_relu": (lambda r: _dw(r, (6, 6), 20, 3, zero_corners=True, act="relu"),
                             None, ["DEPTHWISE_CONV_2D"]),
    # DSMN's dilated cross: interior runs of a row go channel by channel (dwf_span5), from
    # DWF_SPAN_MIN = 4 columns; 3 interior columns stay on the per-pixel body
    "dw3x3_cross_d2_span16": (lambda r: _dw(r, (6, 20), 24, 3, zero_corners=True, dilation=2),
                              None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_cross_d2_span16_relu": (lambda r: _dw(r, (6, 20), 24, 3, zero_corners=True,
                                                 dilation=2, act="relu"),
                                   None, ["DEPTHWISE_CONV_2D"]),
    # a right shift over 23 bits: the output offset cannot ride in the rounding constant,
    # so the chunk stays on the per-pixel body
    "dw3x3_cross_d2_span16_shift_over_23": (
        lambda r: _dw(r, (6, 20), 16, 3, zero_corners=True, dilation=2),
        lambda b: rs.requantize_output(b, "DEPTHWISE_CONV_2D", 2.0 ** 18, zero_point=100),
        ["DEPTHWISE_CONV_2D"]),
    "dw3x3_cross_d2_span4": (lambda r: _dw(r, (6, 8), 8, 3, zero_corners=True, dilation=2),
                             None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_cross_d2_span3": (lambda r: _dw(r, (6, 7), 8, 3, zero_corners=True, dilation=2),
                             None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_left_shift": (lambda r: _dw(r, (6, 6), 18, 3),
                         lambda b: rs.requantize_output(b, "DEPTHWISE_CONV_2D", 1 / 256),
                         ["DEPTHWISE_CONV_2D"]),
    # dw_fast at a stride along time only: the 2-tap body (DSMN's 2x1 average pools), a
    # padded 3x3; a stride along mel leaves it (tap lists)
    "dw2x1_s2x1_c24": (lambda r: _dw(r, (9, 6), 24, 0, padding="VALID", kshape=(2, 1),
                                     strides=(2, 1)), None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_s2x1_c20_relu": (lambda r: _dw(r, (7, 6), 20, 3, act="relu", strides=(2, 1)), None,
                            ["DEPTHWISE_CONV_2D"]),
    "dw3x3_s1x2_taps": (lambda r: _dw(r, (6, 7), 8, 3, strides=(1, 2)), None,
                        ["DEPTHWISE_CONV_2D"]),
    "dw5x5_taps": (lambda r: _dw(r, (7, 7), 6, 5), None, ["DEPTHWISE_CONV_2D"]),
    "dw7x7_generic": (lambda r: _dw(r, (8, 8), 4, 7), None, ["DEPTHWISE_CONV_2D"]),
    "dw3x3_mult2": (lambda r: _dw(r, (6, 6), 5, 3, mult=2), None, ["DEPTHWISE_CONV_2D"]),
    # explicit PAD then a stride-2 VALID depthwise at a wide channel count (tap lists)
    "pad_dw3x3_s2_c144": (lambda r: _dw(r, (8, 8), 144, 3, stride=2, padding="VALID",
                                        explicit_pad=1, act="relu6"), None,
                          ["PAD", "DEPTHWISE_CONV_2D"]),
    # Sparable: 16-channel chunks and the 64-channel limit
    **{f"sparable_c{c}": (lambda r, c=c: _sparable(r, (5, 6), c), None, ["DEPTHWISE_CONV_2D"])
       for c in (16, 17, 64, 65)},
    # ADD/SUB: tables from 1,024 elements; output shift >= 0 takes the exact requantisation
    "add_1023": (lambda r: _binary(r, (11, 31, 3), "add"), None, ["ADD"]),
    "add_1024": (lambda r: _binary(r, (16, 16, 4), "add"), None, ["ADD"]),
    "sub_1024": (lambda r: _binary(r, (8, 32, 4), "sub"), None, ["SUB"]),
    # the doubled requantisation folds the output offset into its rounding for a full clamp
    # and a right shift <= 23 bits; an activation range or a longer shift adds it
    "add_1024_relu6_range": (lambda r: _binary(r, (16, 16, 4), "add", act="relu6"),
                             lambda b: rs.requantize_output(b, "ADD", 4.0), ["ADD"]),
    "add_1024_shift_over_23": (lambda r: _binary(r, (16, 16, 4), "add"),
                               lambda b: rs.requantize_output(b, "ADD", 2.0 ** 7, zero_point=100),
                               ["ADD"]),
    # output multiplier 0.75 (no right shift; TFLM refuses ADDs whose output multiplier is
    # >= 1, so this is the edge of the valid range)
    "add_1024_no_right_shift": (
        lambda r: _binary(r, (16, 16, 4), "add"),
        lambda b: rs.requantize_output(b, "ADD", scale_fn=lambda s: 2 * max(s) / (2 ** 20 * 0.75)),
        ["ADD"]),
    # MUL by a per-channel gate: tabulated from 512 pixels, either operand order; below, each
    # element on its own (doubled requantisation for a right shift, exact for a left one)
    "mul_gate_511px": (lambda r: _binary(r, (7, 73, 3), "mul", "channel"), None, ["MUL"]),
    "mul_gate_20px_left_shift": (lambda r: _binary(r, (4, 5, 6), "mul", "channel_first"),
                                 lambda b: rs.requantize_output(b, "MUL", 1 / 512), ["MUL"]),
    # below 512 pixels channel by channel: the output offset folded into the rounding for a
    # full clamp and a right shift <= 23 bits, added otherwise (an activation range, a longer
    # shift)
    "mul_gate_20px_relu6_range": (lambda r: _binary(r, (4, 5, 6), "mul", "channel", act="relu6"),
                                  lambda b: rs.requantize_output(b, "MUL", 4.0), ["MUL"]),
    "mul_gate_20px_shift_over_23": (lambda r: _binary(r, (4, 5, 6), "mul", "channel"),
                                    lambda b: rs.requantize_output(b, "MUL", 2.0 ** 18,
                                                                   zero_point=100), ["MUL"]),
    "mul_gate_512px": (lambda r: _binary(r, (16, 32, 3), "mul", "channel"), None, ["MUL"]),
    "mul_gate_first_512px": (lambda r: _binary(r, (16, 32, 3), "mul", "channel_first"), None,
                             ["MUL"]),
    # AVERAGE_POOL_2D: the 2-element window body, and a 7x7 global one (PyTorch's avgpool)
    "avgpool_2x1": (lambda r: ((lambda x: tf.nn.avg_pool2d(x, (2, 1), (2, 1), "VALID")), (8, 6, 5)),
                    None, ["AVERAGE_POOL_2D"]),
    "avgpool_7x7_global": (lambda r: ((lambda x: tf.nn.avg_pool2d(x, 7, 7, "VALID")), (7, 7, 40)),
                           None, ["AVERAGE_POOL_2D"]),
    # MEAN with the output quantisation equal to the input's (no plain-division shortcut)
    "mean_same_quant": (lambda r: ((lambda x: tf.reduce_mean(x, axis=[1, 2], keepdims=True)),
                                   (7, 7, 16)),
                        lambda b: rs.requantize_output(b, "MEAN", same_as_input=True), ["MEAN"]),
    # explicit PAD before stride-2 VALID convs (image-network stems), wide channels
    "pad_conv3x3_s2_wide": (lambda r: _conv(r, (16, 16), 32, 96, 3, 2, 1), None, ["PAD", "CONV_2D"]),
    "pad_conv7x7_s2": (lambda r: _conv(r, (20, 20), 3, 16, 7, 2, 3), None, ["PAD", "CONV_2D"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_bit_exact(tmp_path, case):
    build, patch, ops = CASES[case]
    rng = _rng(case)
    fn, shape = build(rng)
    mean, std = _calib(rng)
    buf = rs.to_int8_tflite(fn, shape, seed=int(rng.integers(1000)), mean=mean, std=std)
    if patch is not None:
        buf = patch(buf)
    names = rs.model_op_names(buf)
    for op in ops:
        assert op in names, (case, names)
    xs = rs.random_inputs(buf, 4, int(rng.integers(1000)))
    rs.assert_bit_exact(buf, xs, tmp_path, target=TARGET)
