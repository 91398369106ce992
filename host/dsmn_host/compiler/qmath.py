"""TFLite's integer helpers, re-done in Python (formulas from quantization_util.cc).

Every number a kernel needs is computed here with the same double-precision formulas
TFLite-Micro uses in its Prepare step; that is what keeps outputs bit-identical.
"""

import math

import numpy as np


def quantize_multiplier(real):
    """(multiplier, shift) such that real ~= multiplier * 2^(shift - 31), TFLite's way."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(math.floor(q * (1 << 31) + 0.5)) if q > 0 else -int(math.floor(-q * (1 << 31) + 0.5))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    return q_fixed, shift


def _srdhm(a, b):
    return (a * b + (1 << 30)) >> 31


def _rdbpot(x, e):
    mask = (1 << e) - 1
    return (x >> e) + (1 if (x & mask) > ((mask >> 1) + (1 if x < 0 else 0)) else 0)


def mbqm(x, m, s):
    """TFLite MultiplyByQuantizedMultiplier in Python integers (same results as the C)."""
    left, right = max(s, 0), max(-s, 0)
    x = ((x << left) + (1 << 31)) % (1 << 32) - (1 << 31)
    return _rdbpot(_srdhm(x, m), right)


def add_one(f, a, b):
    """f: (off1, off2, out_off, left, m1, s1, m2, s2, mo, so, lo, hi) as in dsmn_add_params."""
    o1, o2, oo, left, m1, s1, m2, s2, mo, so, lo, hi = f
    ra = mbqm((a + o1) * (1 << left), m1, s1)
    rb = mbqm((b + o2) * (1 << left), m2, s2)
    return min(max(mbqm(ra + rb, mo, so) + oo, lo), hi)


def add_tables(f):
    """(doubled, 512 int32) of dsmn_add_tabled_params for AddParams `f`: both inputs' rescaled
    values for v = -128..127, doubled when dsmn_add_s8 would double them (no left shift on the
    output, a right shift of 1..31, sums of magnitude below 2^29)."""
    s = 1 << f.left_shift
    ta = [mbqm((v + f.input1_offset) * s, f.input1_multiplier, f.input1_shift) for v in range(-128, 128)]
    tb = [mbqm((v + f.input2_offset) * s, f.input2_multiplier, f.input2_shift) for v in range(-128, 128)]
    right = max(-f.output_shift, 0)
    doubled = (f.output_shift <= 0 and 1 <= right <= 31
               and max(map(abs, ta)) + max(map(abs, tb)) < (1 << 29))
    k = 2 if doubled else 1
    return doubled, [k * v for v in ta + tb]


def mul_one(f, a, b):
    o1, o2, oo, mo, so, lo, hi = f
    return min(max(mbqm((a + o1) * (b + o2), mo, so) + oo, lo), hi)


def round_away(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def activation_range(act, scale, zero_point):
    """TFLite's CalculateActivationRangeQuantized for int8 (float32 division, std::round)."""
    qmin, qmax = -128, 127

    def q(f):
        return int(zero_point) + int(round_away(float(np.float32(f) / np.float32(scale))))

    if act == 0:
        return qmin, qmax
    if act == 1:   # RELU
        return max(qmin, q(0.0)), qmax
    if act == 2:   # RELU_N1_TO_1
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    if act == 3:   # RELU6
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    return None


ACT_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


def tflite_padding(padding, in_size, filt, stride, dil, out_size):
    if padding == 1:  # VALID
        return 0
    eff = (filt - 1) * dil + 1
    return max(0, (out_size - 1) * stride + eff - in_size) // 2


def dims4(shape):
    shape = list(shape)
    if len(shape) > 4:
        raise ValueError("rank > 4")
    return [1] * (4 - len(shape)) + shape

