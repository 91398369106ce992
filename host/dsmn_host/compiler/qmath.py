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


def conv1x1_prep(w, bias, input_offset, shifts):
    """base2 of dsmn_conv1x1_prep for a 1x1 filter `w` (out channels x gc int8): per output
    channel 2 * (bias + input_offset * sum of weights); None when some channel would leave
    dsmn_conv1x1_s8's fast path (which the prepared kernel stands for): a left shift or a
    right shift beyond 1..31, an accumulator bound of 2^29 or more, groups over 64 channels."""
    w = np.asarray(w, dtype=np.int64).reshape(len(shifts), -1)
    b = np.zeros(len(shifts), dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    base = b + int(input_offset) * w.sum(axis=1)
    bound = np.abs(base) + 128 * np.abs(w).sum(axis=1)
    if w.shape[1] > 64 or any(not -31 <= s <= -1 for s in shifts) or np.any(bound >= (1 << 29)):
        return None
    return [int(v) for v in 2 * base]


DW_CHUNK, DW_MAXT = 16, 9   # DSMN_DW_CHUNK, DSMN_DW_MAXT


def dw_prep(w, bias, input_offset, mults, shifts):
    """(ch, taps) of dsmn_dw_prep for a depthwise filter `w` (taps x channels int8, depth
    multiplier 1), or None when some channel would leave the kernel's fast path (which these
    constants stand for): more than DW_MAXT taps, a shift outside -31..-1, an accumulator bound
    of 2^29 or more. Per chunk of DW_CHUNK channels the taps non-zero in any of them; per
    channel doubled base, multiplier, right shift and half."""
    w = np.asarray(w, dtype=np.int64)
    kt, n = w.shape
    b = np.zeros(n, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    base = b + int(input_offset) * w.sum(axis=0)
    bound = np.abs(base) + 128 * np.abs(w).sum(axis=0)
    if kt > DW_MAXT or any(not -31 <= s <= -1 for s in shifts) or np.any(bound >= (1 << 29)):
        return None
    ch, taps = [], []
    for c0 in range(0, n, DW_CHUNK):
        used = [t for t in range(kt) if np.any(w[t, c0:c0 + DW_CHUNK] != 0)]
        taps += [len(used)] + used + [0] * (DW_MAXT - len(used))
    for c in range(n):
        ch += [2 * int(base[c]), int(mults[c]), -int(shifts[c]), 1 << (-int(shifts[c]) - 1)]
    return ch, taps


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

