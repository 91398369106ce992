"""Ahead-of-time int8 runtime: compile a .tflite model into static C (dsmn_model.c/.h).

The generated C calls the hand-written kernels in firmware/runtime/ in graph order on one
statically planned activation arena. Every number the kernels need (requantisation
multipliers, paddings, broadcast strides) is computed here, in Python, with the same
double-precision formulas TFLite-Micro uses in its Prepare step; that is what keeps the
outputs bit-identical with the interpreter.
"""

import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsmn_host.errors import DsmnError

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_DIR = ROOT / "firmware" / "runtime"
RUNNER_DIR = RUNTIME_DIR / "runner"
TEMPLATE_DIR = ROOT / "templates" / "runtime"
ALIGN = 16

SUPPORTED_OPS = (
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "MEAN",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS",
    "STRIDED_SLICE", "SPLIT", "SPLIT_V", "TRANSPOSE", "QUANTIZE", "LOGISTIC", "TANH", "SOFTMAX",
    "PAD", "PADV2",
)


def runtime_sources():
    """The kernel sources every generated model links against (for CMake and tests)."""
    return sorted(RUNTIME_DIR.glob("*.c"))


def runtime_include_dirs():
    return [RUNTIME_DIR]


# ---------------------------------------------------------------------------------------
# TFLite's integer helpers, re-done in Python (formulas from quantization_util.cc).

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


def _mbqm(x, m, s):
    """TFLite MultiplyByQuantizedMultiplier in Python integers (same results as the C)."""
    left, right = max(s, 0), max(-s, 0)
    x = ((x << left) + (1 << 31)) % (1 << 32) - (1 << 31)
    return _rdbpot(_srdhm(x, m), right)


def _add_one(f, a, b):
    """f: (off1, off2, out_off, left, m1, s1, m2, s2, mo, so, lo, hi) as in dsmn_add_params."""
    o1, o2, oo, left, m1, s1, m2, s2, mo, so, lo, hi = f
    ra = _mbqm((a + o1) * (1 << left), m1, s1)
    rb = _mbqm((b + o2) * (1 << left), m2, s2)
    return min(max(_mbqm(ra + rb, mo, so) + oo, lo), hi)


def _mul_one(f, a, b):
    o1, o2, oo, mo, so, lo, hi = f
    return min(max(_mbqm((a + o1) * (b + o2), mo, so) + oo, lo), hi)


def _round_away(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def activation_range(act, scale, zero_point):
    """TFLite's CalculateActivationRangeQuantized for int8 (float32 division, std::round)."""
    qmin, qmax = -128, 127

    def q(f):
        return int(zero_point) + int(_round_away(float(np.float32(f) / np.float32(scale))))

    if act == 0:
        return qmin, qmax
    if act == 1:   # RELU
        return max(qmin, q(0.0)), qmax
    if act == 2:   # RELU_N1_TO_1
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    if act == 3:   # RELU6
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    return None


_ACT_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


def _padding(padding, in_size, filt, stride, dil, out_size):
    if padding == 1:  # VALID
        return 0
    eff = (filt - 1) * dil + 1
    return max(0, (out_size - 1) * stride + eff - in_size) // 2


def _dims4(shape):
    shape = list(shape)
    if len(shape) > 4:
        raise ValueError("rank > 4")
    return [1] * (4 - len(shape)) + shape


# ---------------------------------------------------------------------------------------
# Lowering: one Step per kernel call.

@dataclass
class Step:
    op_index: int
    op_name: str
    kind: str               # "kernel" or "alias"
    inputs: list            # activation tensor indices read
    outputs: list           # activation tensor indices written
    code: object = None     # callable(ptr: dict[int,str], scratch: str) -> C statements
    scratch_bytes: int = 0
    note: str = ""
    macs: int = 0


class _Emitter:
    def __init__(self):
        self.decls = []
        self.flash = {"weights": 0, "bias": 0, "requant": 0, "params": 0, "tables": 0}
        self._n = 0

    def name(self, base):
        self._n += 1
        return f"{base}{self._n}"

    def array(self, ctype, values, base, kind, align=4):
        values = np.asarray(values).reshape(-1)
        n = self.name(base)
        per_line = 24
        body = ",\n    ".join(", ".join(str(int(v)) for v in values[i:i + per_line])
                               for i in range(0, len(values), per_line))
        self.decls.append(f"static const {ctype} {n}[{max(len(values), 1)}] "
                          f"__attribute__((aligned({align}))) = {{\n    {body or '0'}\n}};")
        self.flash[kind] += len(values) * {"int8_t": 1, "int32_t": 4}[ctype]
        return n

    def struct(self, ctype, fields, base, size):
        n = self.name(base)
        self.decls.append(f"static const {ctype} {n} = {fields};")
        self.flash["params"] += size
        return n


def _err(op, msg):
    return DsmnError(f"op {op.index} ({op.name}): {msg}")


class _Lowering:
    def __init__(self, graph):
        self.g = graph
        self.e = _Emitter()
        self.steps = []

    def t(self, i):
        return self.g.tensors[i]

    def qp(self, i):
        t = self.t(i)
        if t.scale is None or len(t.scale) == 0:
            return 0.0, 0
        return float(t.scale[0]), int(t.zero_point[0])

    def check_int8(self, op, idxs):
        for i in idxs:
            t = self.t(i)
            if t.dtype is not np.int8:
                raise _err(op, f"tensor {i} ({t.name}) is {np.dtype(t.dtype).name}; only int8 "
                               "activations are supported (quantise the model fully to int8)")

    def act(self, op, act_code, out_idx):
        s, zp = self.qp(out_idx)
        r = activation_range(act_code, s, zp)
        if r is None:
            raise _err(op, f"fused activation {_ACT_NAMES.get(act_code, act_code)} is not supported "
                           "(supported: NONE, RELU, RELU6, RELU_N1_TO_1)")
        return r

    def dims_struct(self, shape):
        n, h, w, c = _dims4(shape)
        return self.e.struct("dsmn_dims", f"{{{n}, {h}, {w}, {c}}}", "dims", 16)

    def per_channel(self, op, in_idx, f_idx, out_idx, n_ch):
        s_in, _ = self.qp(in_idx)
        s_out, _ = self.qp(out_idx)
        fs = self.t(f_idx).scale
        if len(fs) not in (1, n_ch):
            raise _err(op, f"filter has {len(fs)} scales for {n_ch} output channels")
        mult, shift = [], []
        for c in range(n_ch):
            m, s = quantize_multiplier(float(s_in) * float(fs[c if len(fs) > 1 else 0]) / float(s_out))
            mult.append(m)
            shift.append(s)
        return (self.e.array("int32_t", mult, "mult", "requant"),
                self.e.array("int32_t", shift, "shift", "requant"))

    def bias(self, op, idx):
        if idx < 0:
            return "NULL"
        t = self.t(idx)
        if t.data is None or t.dtype is not np.int32:
            raise _err(op, f"bias tensor {idx} must be constant int32")
        return self.e.array("int32_t", t.data, "bias", "bias")

    def weights(self, op, idx, layout=None):
        """The int8 filter as a C array; `layout` reorders its axes first (np.transpose order)."""
        t = self.t(idx)
        if t.data is None:
            raise _err(op, f"weight tensor {idx} ({t.name}) is not constant; "
                           "only constant filters can be compiled")
        if t.dtype is not np.int8:
            raise _err(op, f"weight tensor {idx} is {np.dtype(t.dtype).name}; need int8")
        if len(t.zero_point) and np.any(t.zero_point != 0):
            raise _err(op, "filter zero points must be 0 (symmetric int8 weights)")
        data = t.data if layout is None else np.ascontiguousarray(t.data.transpose(layout))
        return self.e.array("int8_t", data, "w", "weights", align=4)

    # ---- ops -------------------------------------------------------------------------

    def _consumers(self):
        cons = {}
        for op in self.g.operators:
            if op.index in self.folded:
                continue
            for i in op.inputs:
                if i >= 0:
                    cons.setdefault(i, []).append(op)
        return cons

    def _fold_shapes(self):
        """Evaluate shape-only subgraphs (SHAPE -> STRIDED_SLICE -> PACK -> ... -> RESHAPE's
        new_shape) here, in numpy: every tensor shape is static, so an op whose inputs are all
        constants (or whose only input is read by SHAPE) and whose outputs are int32/int64 is
        a constant too. Its outputs get constant data (consumers then treat them like any
        other constant operand); the op itself emits no code and no flash."""
        self.folded = {}
        for op in self.g.operators:
            fn = _FOLDERS.get(op.name)
            if fn is None or not op.outputs:
                continue
            if any(self.t(o).dtype not in (np.int32, np.int64) for o in op.outputs):
                if op.name == "RESHAPE" and op.inputs:
                    # A data RESHAPE: fix a placeholder output shape now, so that a later
                    # SHAPE of its output sees the real one.
                    self._resolve_reshape(op, strict=False)
                continue
            ins = [i for i in op.inputs if i >= 0]
            if op.name != "SHAPE" and any(self.t(i).data is None for i in ins):
                continue
            if op.name != "SHAPE" and any(not np.issubdtype(self.t(i).dtype, np.integer)
                                          for i in ins):
                continue
            try:
                vals = fn(self, op)
            except (ValueError, IndexError, TypeError, AttributeError, ZeroDivisionError):
                # malformed or unusual options: leave the op to the lowering (or refusal)
                vals = None
            if vals is None:
                continue
            for o, v in zip(op.outputs, vals):
                t = self.t(o)
                v = np.asarray(v).astype(t.dtype)
                if v.size == int(np.prod(t.shape, dtype=np.int64)):
                    v = v.reshape(t.shape)
                else:  # placeholder shape of a dynamic-shape tensor: the value decides
                    t.shape = tuple(v.shape)
                t.data = v
            self.folded[op.index] = op.name

    def _find_fusions(self):
        """Pick the rewrites an ahead-of-time compiler can do: SPLIT written by its producer,
        and the Sparable unit (two depthwise + ADD + constant MUL/ADD tail) as one kernel."""
        cons = self._consumers()
        outs = set(self.g.outputs)
        producer = {o: op for op in self.g.operators for o in op.outputs}
        self.split_parts, self.skip, self.sparable = {}, set(), {}
        for op in self.g.operators:
            if op.name not in ("SPLIT", "SPLIT_V"):
                continue
            x = op.inputs[1] if op.name == "SPLIT" else op.inputs[0]
            ax_t = op.inputs[0] if op.name == "SPLIT" else op.inputs[2]
            src = producer.get(x)
            if (src is None or src.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D",
                                                "MAX_POOL_2D") or len(cons.get(x, [])) != 1
                    or x in outs or self.t(ax_t).data is None):
                continue
            shape = self.t(x).shape
            axis = int(self.t(ax_t).data.reshape(-1)[0]) % len(shape)
            if axis not in (1, 2) or len(shape) != 4 or any(self.qp(y) != self.qp(x) for y in op.outputs):
                continue
            parts, start = [], 0
            for y in op.outputs:
                n = self.t(y).shape[axis]
                parts.append((y, axis, start, n))
                start += n
            self.split_parts[x] = parts
            self.skip.add(op.index)
        for op in self.g.operators:
            if op.name != "ADD" or op.index in self.skip:
                continue
            q, r = op.inputs[:2]
            pq, pr = producer.get(q), producer.get(r)
            if not (pq and pr and pq.name == pr.name == "DEPTHWISE_CONV_2D"):
                continue
            if pq.inputs[0] != pr.inputs[0] or q in outs or r in outs:
                continue
            if len(cons.get(q, [])) != 1 or len(cons.get(r, [])) != 1:
                continue
            if q in self.split_parts or r in self.split_parts:
                continue
            shp = self.t(q).shape
            if shp != self.t(pq.inputs[0]).shape or shp != self.t(r).shape:
                continue  # stride 1, multiplier 1 only
            if (op.options.fusedActivationFunction or 0) not in (0, 1, 3):
                continue
            tail, cur = [], op
            while len(tail) < 4:
                y = cur.outputs[0]
                nxt = cons.get(y, [])
                if y in outs or len(nxt) != 1 or nxt[0].name not in ("ADD", "SUB", "MUL"):
                    break
                n = nxt[0]
                other = [i for i in n.inputs[:2] if i != y]
                if len(other) != 1 or self.t(other[0]).data is None or self.t(other[0]).dtype is not np.int8:
                    break
                k = self.t(other[0])
                if int(np.prod(k.shape)) not in (1, shp[3]) or (len(k.shape) and k.shape[-1] not in (1, shp[3])):
                    break
                if n.outputs[0] in self.split_parts:
                    break
                tail.append(n)
                cur = n
            self.sparable[op.index] = (pq, pr, tail)
            self.skip.update({pq.index, pr.index} | {n.index for n in tail})

    def lower(self):
        self._fold_shapes()
        self._find_fusions()
        for op in self.g.operators:
            if op.index in self.folded:
                continue
            if op.index in self.sparable:
                self._sparable(op, *self.sparable[op.index])
                continue
            if op.index in self.skip:
                continue
            fn = getattr(self, "op_" + op.name, None)
            if fn is None:
                raise DsmnError(
                    f"op {op.index} ({op.name}) is not supported by the dsmn runtime; supported ops: "
                    f"{', '.join(SUPPORTED_OPS)}. Add a kernel in firmware/runtime/ and a lowering in "
                    "dsmn_host/codegen.py, or change the model to avoid it")
            fn(op)
        return self.steps

    def _conv_setup(self, op, depthwise):
        """Everything a conv/depthwise call needs except the output window."""
        o = op.options
        x, w = op.inputs[0], op.inputs[1]
        b = op.inputs[2] if len(op.inputs) > 2 else -1
        y = op.outputs[0]
        self.check_int8(op, [x, y])
        ish, wsh, osh = self.t(x).shape, self.t(w).shape, self.t(y).shape
        if len(ish) != 4:
            raise _err(op, f"input rank {len(ish)}; need 4 (NHWC)")
        dil_h, dil_w = int(o.dilationHFactor or 1), int(o.dilationWFactor or 1)
        pad_h = _padding(o.padding, ish[1], wsh[1], o.strideH, dil_h, osh[1])
        pad_w = _padding(o.padding, ish[2], wsh[2], o.strideW, dil_w, osh[2])
        amin, amax = self.act(op, o.fusedActivationFunction, y)
        _, zin = self.qp(x)
        _, zout = self.qp(y)
        n_ch = osh[3]
        if depthwise:
            mult = n_ch // ish[3]
            if mult * ish[3] != n_ch:
                raise _err(op, "output channels are not a multiple of input channels")
        else:
            mult = 0
            if ish[3] % wsh[3] or n_ch % (ish[3] // wsh[3]):
                raise _err(op, f"input channels {ish[3]} / filter channels {wsh[3]} do not form "
                               "whole groups")
        m, s = self.per_channel(op, x, w, y, n_ch)
        fields = (f"{-zin}, {zout}, {o.strideH}, {o.strideW}, {dil_h}, {dil_w}, {pad_h}, {pad_w}, "
                  f"{amin}, {amax}, {mult}")
        return dict(x=x, y=y, w=w, b=b, ish=ish, wsh=wsh, osh=osh, fields=fields, m=m, s=s,
                    dil=(dil_h, dil_w), stride=(o.strideH, o.strideW), mult=mult)

    def _windows(self, y, osh):
        """Output windows: one per SPLIT part when the output feeds a fusible SPLIT."""
        parts = self.split_parts.get(y)
        if not parts:
            return [(y, 0, 0, list(osh))]
        wins = []
        for t, axis, start, size in parts:
            dims = list(osh)
            dims[axis] = size
            wins.append((t, start if axis == 1 else 0, start if axis == 2 else 0, dims))
        return wins

    def _conv_like(self, op, depthwise, channelwise=False):
        """`channelwise`: a CONV_2D whose groups are single channels (filter O×H×W×1, O = input
        channels) is the same arithmetic as a depthwise conv; run it with that kernel, filter
        reordered to 1×H×W×O (the converter writes pooling-as-conv this way)."""
        c = self._conv_setup(op, depthwise)
        q = self.e.struct("dsmn_requant", f"{{{c['m']}, {c['s']}}}", "rq", 8)
        layout = (3, 1, 2, 0) if channelwise else None
        wd, bd = self.weights(op, c["w"], layout), self.bias(op, c["b"])
        wsh = [c["wsh"][i] for i in layout] if channelwise else c["wsh"]
        di, df = self.dims_struct(c["ish"]), self.dims_struct(wsh)
        fn = "dsmn_depthwise_conv2d_s8" if depthwise else "dsmn_conv2d_s8"
        x = c["x"]
        wins = self._windows(c["y"], c["osh"])
        calls = []
        for t, y0, x0, dims in wins:
            p = self.e.struct("dsmn_conv_params", f"{{{c['fields']}, {y0}, {x0}}}", "cp", 52)
            do = self.dims_struct(dims)
            calls.append((t, p, do))

        def code(ptr, scratch):
            return "\n    ".join(f"{fn}(&{p}, &{q}, &{di}, {ptr[x]}, &{df}, {wd}, {bd}, &{do}, {ptr[t]});"
                                  for t, p, do in calls)
        kind = ("channelwise" if channelwise else "depthwise") if depthwise else (
            "grouped" if c["ish"][3] != c["wsh"][3] else "conv")
        note = (f"{kind} {c['wsh'][1]}x{c['wsh'][2]} s{c['stride'][0]}x{c['stride'][1]} "
                f"d{c['dil'][0]}x{c['dil'][1]}" + (" +split" if len(wins) > 1 else ""))
        self.steps.append(Step(op.index, op.name, "kernel", [x], [t for t, _, _ in calls], code,
                               note=note, macs=self._macs(c)))

    @staticmethod
    def _macs(c):
        osh, wsh = c["osh"], c["wsh"]
        per_out = wsh[1] * wsh[2] * (1 if c["mult"] else wsh[3])
        return int(np.prod(osh)) * per_out

    def op_CONV_2D(self, op):
        ish, wsh, osh = (self.t(i).shape for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
        channelwise = (len(ish) == len(wsh) == len(osh) == 4 and wsh[3] == 1 and ish[3] > 1
                       and ish[3] == osh[3] == wsh[0])
        self._conv_like(op, channelwise, channelwise)

    def op_DEPTHWISE_CONV_2D(self, op):
        self._conv_like(op, True)

    def _binary_fields(self, op, a, b, y):
        act = op.options.fusedActivationFunction if op.options is not None else 0
        amin, amax = self.act(op, act, y)
        (s1, z1), (s2, z2), (so, zo) = self.qp(a), self.qp(b), self.qp(y)
        if op.name in ("ADD", "SUB"):
            left = 20
            twice = 2 * max(s1, s2)
            m1, sh1 = quantize_multiplier(s1 / twice)
            m2, sh2 = quantize_multiplier(s2 / twice)
            mo, sho = quantize_multiplier(twice / ((1 << left) * so))
            if op.name == "SUB":
                m2 = -m2
            t = (-z1, -z2, zo, left, m1, sh1, m2, sh2, mo, sho, amin, amax)
            return "add", "{" + ", ".join(map(str, t)) + "}", t
        mo, sho = quantize_multiplier(float(s1) * float(s2) / float(so))
        t = (-z1, -z2, zo, mo, sho, amin, amax)
        return "mul", "{" + ", ".join(map(str, t)) + "}", t

    def _sparable(self, add, pq, pr, tail):
        cq, cr = self._conv_setup(pq, True), self._conv_setup(pr, True)
        x = cq["x"]
        last = (tail[-1] if tail else add)
        y = last.outputs[0]
        self.check_int8(add, [add.inputs[0], add.inputs[1], add.outputs[0]])
        _, addf, _ = self._binary_fields(add, add.inputs[0], add.inputs[1], add.outputs[0])
        tails, tail_fns = [], []
        cur = add.outputs[0]
        n_ch = self.t(y).shape[-1]
        zero_add = "{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}"
        zero_mul = "{0, 0, 0, 0, 0, 0, 0}"
        for n in tail:
            self.check_int8(n, list(n.inputs[:2]) + [n.outputs[0]])
            kind, f, ft = self._binary_fields(n, n.inputs[0], n.inputs[1], n.outputs[0])
            kidx = n.inputs[1] if n.inputs[0] == cur else n.inputs[0]
            kvals = np.asarray(self.t(kidx).data).reshape(-1).astype(int)
            tail_fns.append((kind, ft, int(n.inputs[0] == kidx), kvals))
            karr = self.e.array("int8_t", self.t(kidx).data, "k", "weights")
            per_ch = int(np.prod(self.t(kidx).shape)) > 1
            first = int(n.inputs[0] == kidx)
            tails.append(f"{{{int(kind == 'mul')}, {first}, {int(per_ch)}, {karr}, "
                         f"{f if kind == 'add' else zero_add}, {f if kind == 'mul' else zero_mul}}}")
            cur = n.outputs[0]
        tails += ["{0}"] * (4 - len(tails))
        lut = "NULL"
        if tail_fns:
            table = np.zeros((n_ch, 256), np.int64)
            for c in range(n_ch):
                for r0 in range(-128, 128):
                    r = r0
                    for kind, ft, kfirst, kv in tail_fns:
                        k = int(kv[c if len(kv) > 1 else 0])
                        a1, a2 = (k, r) if kfirst else (r, k)
                        r = _mul_one(ft, a1, a2) if kind == "mul" else _add_one(ft, a1, a2)
                    table[c, r0 + 128] = r
            lut = self.e.array("int8_t", table, "lut", "tables")
        wq, bq = self.weights(pq, cq["w"]), self.bias(pq, cq["b"])
        wr, br = self.weights(pr, cr["w"]), self.bias(pr, cr["b"])
        fq, fr = _dims4(cq["wsh"]), _dims4(cr["wsh"])
        # Operand order of the ADD: q is its first input.
        if add.inputs[0] != pq.outputs[0]:
            cq, cr, wq, wr, bq, br, fq, fr = cr, cq, wr, wq, br, bq, fr, fq
        p = self.e.struct(
            "dsmn_sparable_params",
            "{\n    {{" + cq["fields"] + ", 0, 0}, {" + cr["fields"] + ", 0, 0}},\n"
            f"    {{{{{cq['m']}, {cq['s']}}}, {{{cr['m']}, {cr['s']}}}}},\n"
            f"    {{{{{', '.join(map(str, fq))}}}, {{{', '.join(map(str, fr))}}}}},\n"
            f"    {{{wq}, {wr}}}, {{{bq}, {br}}},\n    {addf}, {len(tail)},\n"
            "    {" + ", ".join(tails) + "},\n    " + lut + "\n}", "sp", 0)
        di, do = self.dims_struct(self.t(x).shape), self.dims_struct(self.t(y).shape)

        def code(ptr, scratch):
            return f"dsmn_sparable_s8(&{p}, &{di}, {ptr[x]}, &{do}, {ptr[y]});"
        macs = self._macs(cq) + self._macs(cr)
        self.steps.append(Step(add.index, "SPARABLE", "kernel", [x], [y], code,
                               note=f"ops {pq.index},{pr.index},{add.index}" +
                                    "".join(f",{n.index}" for n in tail) + " fused", macs=macs))

    def op_FULLY_CONNECTED(self, op):
        o = op.options
        x, w = op.inputs[0], op.inputs[1]
        b = op.inputs[2] if len(op.inputs) > 2 else -1
        y = op.outputs[0]
        self.check_int8(op, [x, y])
        wsh = self.t(w).shape
        out_depth, depth = wsh
        total = int(np.prod(self.t(x).shape))
        if total % depth:
            raise _err(op, f"input {list(self.t(x).shape)} is not a whole number of rows of {depth}")
        batches = total // depth
        if batches * out_depth != int(np.prod(self.t(y).shape)):
            raise _err(op, f"output {list(self.t(y).shape)} does not hold {batches} rows of "
                           f"{out_depth}")
        amin, amax = self.act(op, o.fusedActivationFunction, y)
        _, zin = self.qp(x)
        _, zout = self.qp(y)
        m, s = self.per_channel(op, x, w, y, out_depth)
        p = self.e.struct("dsmn_fc_params",
                          f"{{{-zin}, {zout}, {batches}, {depth}, {out_depth}, {amin}, {amax}}}",
                          "fp", 28)
        q = self.e.struct("dsmn_requant", f"{{{m}, {s}}}", "rq", 8)
        wd, bd = self.weights(op, w), self.bias(op, b)

        def code(ptr, scratch):
            return f"dsmn_fully_connected_s8(&{p}, &{q}, {ptr[x]}, {wd}, {bd}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               note=f"{depth}->{out_depth}"))

    def _broadcast(self, op, a, b, y):
        sa, sb, sy = (_dims4(self.t(i).shape) for i in (a, b, y))
        if sa == sb == sy:
            return "NULL", int(np.prod(sy))

        def strides(s):
            st, acc = [0] * 4, 1
            for k in range(3, -1, -1):
                st[k] = 0 if s[k] == 1 and sy[k] != 1 else acc
                acc *= s[k]
            return st
        for s in (sa, sb):
            if any(s[k] not in (1, sy[k]) for k in range(4)):
                raise _err(op, f"shapes {self.t(a).shape} and {self.t(b).shape} do not broadcast")
        st1, st2 = strides(sa), strides(sb)
        bc = self.e.struct("dsmn_broadcast",
                           f"{{{{{', '.join(map(str, sy))}}}, {{{', '.join(map(str, st1))}}}, "
                           f"{{{', '.join(map(str, st2))}}}}}", "bc", 48)
        return "&" + bc, int(np.prod(sy))

    def _const_operand(self, op, idx):
        """Elementwise ops may take a constant operand (e.g. a folded BatchNorm scale)."""
        t = self.t(idx)
        if t.data is not None:
            if t.dtype is not np.int8:
                raise _err(op, f"constant operand {idx} is {np.dtype(t.dtype).name}; need int8")
            return self.e.array("int8_t", t.data, "k", "weights")
        return None

    def _binary(self, op, kind):
        a, b = op.inputs[:2]
        y = op.outputs[0]
        self.check_int8(op, [a, b, y])
        act = op.options.fusedActivationFunction if op.options is not None else 0
        amin, amax = self.act(op, act, y)
        (s1, z1), (s2, z2), (so, zo) = self.qp(a), self.qp(b), self.qp(y)
        if kind in ("ADD", "SUB"):
            left = 20
            twice = 2 * max(s1, s2)
            m1, sh1 = quantize_multiplier(s1 / twice)
            m2, sh2 = quantize_multiplier(s2 / twice)
            mo, sho = quantize_multiplier(twice / ((1 << left) * so))
            if kind == "SUB":
                m2 = -m2
            p = self.e.struct("dsmn_add_params",
                              f"{{{-z1}, {-z2}, {zo}, {left}, {m1}, {sh1}, {m2}, {sh2}, {mo}, {sho}, "
                              f"{amin}, {amax}}}", "ap", 48)
            fn = "dsmn_add_s8"
        else:
            mo, sho = quantize_multiplier(float(s1) * float(s2) / float(so))
            p = self.e.struct("dsmn_mul_params",
                              f"{{{-z1}, {-z2}, {zo}, {mo}, {sho}, {amin}, {amax}}}", "mp", 28)
            fn = "dsmn_mul_s8"
        bc, count = self._broadcast(op, a, b, y)
        ca, cb = self._const_operand(op, a), self._const_operand(op, b)
        ins = [i for i, c in ((a, ca), (b, cb)) if c is None]

        def code(ptr, scratch):
            pa = ca if ca is not None else ptr[a]
            pb = cb if cb is not None else ptr[b]
            return f"{fn}(&{p}, {bc}, {count}, {pa}, {pb}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", ins, [y], code,
                               note="broadcast" if bc != "NULL" else ""))

    def op_ADD(self, op):
        self._binary(op, "ADD")

    def op_SUB(self, op):
        self._binary(op, "SUB")

    def op_MUL(self, op):
        self._binary(op, "MUL")

    def op_MEAN(self, op):
        x, ax = op.inputs[:2]
        y = op.outputs[0]
        self.check_int8(op, [x, y])
        shape = list(self.t(x).shape)
        axes = self.t(ax).data
        if axes is None:
            raise _err(op, "axis tensor must be constant")
        axes = sorted({int(a) % len(shape) for a in np.asarray(axes).reshape(-1)})
        if axes != list(range(axes[0], axes[-1] + 1)):
            raise _err(op, f"reduction axes {axes} are not contiguous; only a contiguous block of "
                           "axes can be reduced")
        outer = int(np.prod(shape[:axes[0]]))
        red = int(np.prod(shape[axes[0]:axes[-1] + 1]))
        inner = int(np.prod(shape[axes[-1] + 1:]))
        (si, zi), (so, zo) = self.qp(x), self.qp(y)
        m, s = quantize_multiplier(float(si) / float(so))
        # Fold 1/red into the multiplier exactly as reference_ops::QuantizedMeanOrSum does.
        sh = red.bit_length() - 1
        sh = min(sh, 32, 31 + s)
        m = int((m << sh) // red) if sh >= 0 else int((m >> -sh) // red)
        s = s - sh
        p = self.e.struct("dsmn_mean_params", f"{{{outer}, {red}, {inner}, {zi}, {zo}, {m}, {s}}}",
                          "mn", 28)

        def code(ptr, scratch):
            return f"dsmn_mean_s8(&{p}, {ptr[x]}, (int32_t *){scratch}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               scratch_bytes=4 * outer * inner, note=f"axes {axes}"))

    def _pool(self, op, fn):
        o = op.options
        x, y = op.inputs[0], op.outputs[0]
        self.check_int8(op, [x, y])
        ish, osh = self.t(x).shape, self.t(y).shape
        if (self.qp(x) != self.qp(y)):
            raise _err(op, "input and output quantisation differ; pooling needs them equal")
        pad_h = _padding(o.padding, ish[1], o.filterHeight, o.strideH, 1, osh[1])
        pad_w = _padding(o.padding, ish[2], o.filterWidth, o.strideW, 1, osh[2])
        amin, amax = self.act(op, o.fusedActivationFunction, y)
        di = self.dims_struct(ish)
        calls = []
        for t, y0, x0, dims in self._windows(y, osh):
            p = self.e.struct("dsmn_pool_params",
                              f"{{{o.strideH}, {o.strideW}, {o.filterHeight}, {o.filterWidth}, {pad_h}, "
                              f"{pad_w}, {amin}, {amax}, {y0}, {x0}}}", "pp", 40)
            calls.append((t, p, self.dims_struct(dims)))

        def code(ptr, scratch):
            return "\n    ".join(f"{fn}(&{p}, &{di}, {ptr[x]}, &{do}, {ptr[t]});" for t, p, do in calls)
        self.steps.append(Step(op.index, op.name, "kernel", [x], [t for t, _, _ in calls], code,
                               note=f"{o.filterHeight}x{o.filterWidth}" + (" +split" if len(calls) > 1 else "")))

    def op_AVERAGE_POOL_2D(self, op):
        self._pool(op, "dsmn_avg_pool_s8")

    def op_MAX_POOL_2D(self, op):
        self._pool(op, "dsmn_max_pool_s8")

    def op_CONCATENATION(self, op):
        o = op.options
        y = op.outputs[0]
        ins = list(op.inputs)
        self.check_int8(op, ins + [y])
        if o.fusedActivationFunction:
            raise _err(op, "fused activation on CONCATENATION is not supported")
        for i in ins:
            if self.qp(i) != self.qp(y):
                raise _err(op, f"input {i} quantisation {self.qp(i)} differs from the output's "
                               f"{self.qp(y)}; requantising concatenation is not supported")
        shape = list(self.t(y).shape)
        axis = int(o.axis) % len(shape)
        outer = int(np.prod(shape[:axis]))
        inner = [int(np.prod(self.t(i).shape[axis:])) for i in ins]
        arr = self.e.array("int32_t", inner, "cat", "params")
        consts = {i: self._const_operand(op, i) for i in ins}

        def code(ptr, scratch):
            lst = ", ".join(consts[i] or ptr[i] for i in ins)
            return (f"{{ const int8_t *const srcs[{len(ins)}] = {{{lst}}}; "
                    f"dsmn_concat_s8({len(ins)}, srcs, {arr}, {outer}, {ptr[y]}); }}")
        self.steps.append(Step(op.index, op.name, "kernel", [i for i in ins if consts[i] is None],
                               [y], code, note=f"axis {axis}"))

    def _alias(self, op):
        x, y = op.inputs[0], op.outputs[0]
        self.check_int8(op, [x, y])
        if self.qp(x) != self.qp(y):
            raise _err(op, "reshape changes quantisation")
        self.steps.append(Step(op.index, op.name, "alias", [x], [y], None, note="view"))

    op_SQUEEZE = op_EXPAND_DIMS = _alias

    def op_RESHAPE(self, op):
        self._resolve_reshape(op, strict=True)
        self._alias(op)

    def _resolve_reshape(self, op, strict):
        """The output keeps its stored shape (as TFLM does) unless that shape is a
        placeholder left by a dynamic dimension (wrong element count): then the new_shape
        input, constant or folded from a SHAPE chain, gives it, with -1 resolved."""
        x, y = op.inputs[0], op.outputs[0]
        n_in = int(np.prod(self.t(x).shape, dtype=np.int64))
        ty = self.t(y)
        if int(np.prod(ty.shape, dtype=np.int64)) != n_in:
            new = None
            if len(op.inputs) > 1 and op.inputs[1] >= 0 and self.t(op.inputs[1]).data is not None:
                new = [int(v) for v in self.t(op.inputs[1]).data.reshape(-1)]
            elif op.options is not None and getattr(op.options, "newShape", None) is not None:
                new = [int(v) for v in op.options.newShape]
            if new is not None and new.count(-1) == 1:
                known = int(np.prod([d for d in new if d != -1], dtype=np.int64))
                if known > 0 and n_in % known == 0:
                    new[new.index(-1)] = n_in // known
            if new is None or int(np.prod(new, dtype=np.int64)) != n_in or min(new, default=1) < 0:
                if not strict:
                    return
                raise _err(op, f"output shape {list(ty.shape)} has {int(np.prod(ty.shape))} "
                               f"elements, input {list(self.t(x).shape)} has {n_in}, and the new "
                               f"shape {new} does not resolve it")
            ty.shape = tuple(new)

    def _gather(self, op, x, y, offset, dims, strides, note):
        p = self.e.struct("dsmn_gather_params",
                          f"{{{{{', '.join(map(str, dims))}}}, {{{', '.join(map(str, strides))}}}, {offset}}}",
                          "gp", 36)

        def code(ptr, scratch):
            return f"dsmn_gather_s8(&{p}, {ptr[x]}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code, note=note))

    @staticmethod
    def _elem_strides(shape):
        st, acc = [0] * len(shape), 1
        for k in range(len(shape) - 1, -1, -1):
            st[k] = acc
            acc *= shape[k]
        return st

    def _slice(self, op, x, y, begins, sizes, steps, note):
        """Lower a per-axis (begin, size, step) slice of x to a gather into y."""
        shape = list(self.t(x).shape)
        if len(shape) > 4:
            raise _err(op, "rank > 4")
        est = self._elem_strides(shape)
        offset = sum(b * s for b, s in zip(begins, est))
        dims = [1] * (4 - len(shape)) + list(sizes)
        strides = [0] * (4 - len(shape)) + [st * sp for st, sp in zip(est, steps)]
        self._gather(op, x, y, offset, dims, strides, note)

    def op_STRIDED_SLICE(self, op):
        o = op.options
        x, bt, et, st = op.inputs[:4]
        y = op.outputs[0]
        self.check_int8(op, [x, y])
        if self.qp(x) != self.qp(y):
            raise _err(op, "slice changes quantisation")
        if o.ellipsisMask or o.newAxisMask:
            raise _err(op, "ellipsis_mask/new_axis_mask are not supported")
        for i in (bt, et, st):
            if self.t(i).data is None:
                raise _err(op, "begin/end/strides must be constant")
        shape = list(self.t(x).shape)
        begin, end, stride = (list(self.t(i).data.reshape(-1)) for i in (bt, et, st))
        begins, sizes, steps = [], [], []
        for k, d in enumerate(shape):
            b = None if (o.beginMask >> k) & 1 else int(begin[k])
            e = None if (o.endMask >> k) & 1 else int(end[k])
            s = int(stride[k])
            if (o.shrinkAxisMask >> k) & 1:
                b0 = int(begin[k]) % d
                begins.append(b0)
                sizes.append(1)
                steps.append(1)
                continue
            if getattr(o, "offset", False) and e is not None and b is not None:
                e = b + e
            start, stop, step = slice(b, e, s).indices(d)
            begins.append(start)
            sizes.append(len(range(start, stop, step)))
            steps.append(step)
        if int(np.prod(sizes)) != int(np.prod(self.t(y).shape)):
            raise _err(op, f"computed slice size {sizes} does not match output {self.t(y).shape}")
        self._slice(op, x, y, begins, sizes, steps, f"begin {begins} size {sizes}")

    def _split_common(self, op, x, axis, sizes):
        self.check_int8(op, [x] + list(op.outputs))
        shape = list(self.t(x).shape)
        axis %= len(shape)
        start = 0
        for y, n in zip(op.outputs, sizes):
            if self.qp(x) != self.qp(y):
                raise _err(op, "split changes quantisation")
            begins = [0] * len(shape)
            begins[axis] = start
            sz = list(shape)
            sz[axis] = n
            self._slice(op, x, y, begins, sz, [1] * len(shape), f"axis {axis} [{start}:{start + n}]")
            start += n

    def op_SPLIT(self, op):
        ax, x = op.inputs[:2]
        if self.t(ax).data is None:
            raise _err(op, "split axis must be constant")
        axis = int(self.t(ax).data.reshape(-1)[0])
        d = self.t(x).shape[axis % len(self.t(x).shape)]
        n = len(op.outputs)
        self._split_common(op, x, axis, [d // n] * n)

    def op_SPLIT_V(self, op):
        x, sz, ax = op.inputs[:3]
        if self.t(ax).data is None:
            raise _err(op, "split axis must be constant")
        axis = int(self.t(ax).data.reshape(-1)[0])
        shape = self.t(x).shape
        sizes = [self.t(y).shape[axis % len(shape)] for y in op.outputs]
        self._split_common(op, x, axis, sizes)

    def op_TRANSPOSE(self, op):
        x, pt = op.inputs[:2]
        y = op.outputs[0]
        self.check_int8(op, [x, y])
        if self.t(pt).data is None:
            raise _err(op, "permutation must be constant")
        perm = [int(v) for v in self.t(pt).data.reshape(-1)]
        shape = list(self.t(x).shape)
        if len(shape) > 4:
            raise _err(op, "rank > 4")
        est = self._elem_strides(shape)
        dims = [1] * (4 - len(shape)) + [shape[p] for p in perm]
        strides = [0] * (4 - len(shape)) + [est[p] for p in perm]
        self._gather(op, x, y, 0, dims, strides, f"perm {perm}")

    def op_QUANTIZE(self, op):
        x, y = op.inputs[0], op.outputs[0]
        self.check_int8(op, [x, y])
        (si, zi), (so, zo) = self.qp(x), self.qp(y)
        m, s = quantize_multiplier(float(si) / float(so))
        p = self.e.struct("dsmn_requant_params", f"{{{zi}, {zo}, {m}, {s}}}", "qp", 16)
        count = int(np.prod(self.t(y).shape))

        def code(ptr, scratch):
            return f"dsmn_requantize_s8(&{p}, {count}, {ptr[x]}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code))

    @staticmethod
    def _q4_input_params(si, zi):
        """Input multiplier/shift/range radius for LOGISTIC and TANH (4 integer bits), as
        TFLM's Prepare computes them: frexp of scale * 2^27, radius from CalculateInputRadius."""
        real = float(si) * float(1 << (31 - 4))
        q, left = math.frexp(real)
        mult = int(_round_away(q * (1 << 31)))
        radius = int(math.floor(1.0 * ((1 << 4) - 1) * (1 << (31 - 4)) / (1 << left))) if left >= 0 else \
            int(math.floor(1.0 * ((1 << 4) - 1) * (1 << (31 - 4)) * (1 << -left)))
        return f"{{{zi}, {radius}, {mult}, {left}}}"

    def _q4_activation(self, op, fn, out_scale, out_zp):
        x, y = op.inputs[0], op.outputs[0]
        self.check_int8(op, [x, y])
        (si, zi), (so, zo) = self.qp(x), self.qp(y)
        if zo != out_zp or np.float32(so) != np.float32(out_scale):
            raise _err(op, f"output quantisation must be scale 1/{int(1 / out_scale)}, zero point "
                           f"{out_zp} (got {so}, {zo})")
        p = self.e.struct("dsmn_logistic_params", self._q4_input_params(si, zi), "lp", 16)
        count = int(np.prod(self.t(y).shape))

        def code(ptr, scratch):
            return f"{fn}(&{p}, {count}, {ptr[x]}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code))

    def op_LOGISTIC(self, op):
        self._q4_activation(op, "dsmn_logistic_s8", 1.0 / 256, -128)

    def op_TANH(self, op):
        self._q4_activation(op, "dsmn_tanh_s8", 1.0 / 128, 0)

    def op_SOFTMAX(self, op):
        x, y = op.inputs[0], op.outputs[0]
        self.check_int8(op, [x, y])
        (si, zi), (so, zo) = self.qp(x), self.qp(y)
        if zo != -128 or np.float32(so) != np.float32(1.0 / 256):
            raise _err(op, f"output quantisation must be scale 1/256, zero point -128 (got {so}, {zo})")
        shape = list(self.t(x).shape)
        depth = int(shape[-1]) if shape else 1
        outer = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        if depth > 256:
            raise _err(op, f"softmax over {depth} > 256 elements is not supported (the reference's "
                           "final shift would exceed 31 bits)")
        beta = float(np.float32(op.options.beta if op.options is not None else 1.0))
        # PreprocessSoftmaxScaling (double rounding build): beta * scale into Q5.26, capped.
        real = min(beta * float(si) * float(1 << (31 - 5)), float((1 << 31) - 1))
        if not real > 1.0:
            raise _err(op, f"beta * input scale = {beta * float(si):g} is too small "
                           "(TFLite requires beta * scale * 2^26 > 1)")
        mult, left = quantize_multiplier(real)
        radius = int(math.floor(1.0 * ((1 << 5) - 1) * (1 << (31 - 5)) / (1 << left)))
        p = self.e.struct("dsmn_softmax_params", f"{{{mult}, {left}, {-radius}}}", "sm", 12)

        def code(ptr, scratch):
            return f"dsmn_softmax_s8(&{p}, {outer}, {depth}, {ptr[x]}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               note=f"{outer}x{depth} beta {beta:g}"))

    def op_PAD(self, op):
        x, pt = op.inputs[:2]
        y = op.outputs[0]
        self.check_int8(op, [x, y])
        if self.t(pt).data is None:
            raise _err(op, "paddings must be constant")
        shape = list(self.t(x).shape)
        if len(shape) > 4:
            raise _err(op, "rank > 4")
        pads = np.asarray(self.t(pt).data).reshape(-1, 2).astype(np.int64)
        if pads.shape[0] != len(shape) or np.any(pads < 0):
            raise _err(op, f"paddings {pads.tolist()} do not fit input shape {shape}")
        if op.name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
            cv = self.t(op.inputs[2])
            if cv.data is None or cv.dtype is not np.int8:
                raise _err(op, "constant_values must be a constant int8 tensor")
            pad_value = int(np.asarray(cv.data).reshape(-1)[0])
        else:
            pad_value = self.qp(y)[1]  # TFLM pads with the output zero point
        out = [d + int(a) + int(b) for d, (a, b) in zip(shape, pads)]
        if out != list(self.t(y).shape):
            raise _err(op, f"padded shape {out} does not match output {self.t(y).shape}")
        ind, outd = _dims4(shape), _dims4(out)
        before = [0] * (4 - len(shape)) + [int(a) for a, _ in pads]
        p = self.e.struct("dsmn_pad_params",
                          f"{{{{{', '.join(map(str, ind))}}}, {{{', '.join(map(str, outd))}}}, "
                          f"{{{', '.join(map(str, before))}}}, {pad_value}}}", "pd", 52)

        def code(ptr, scratch):
            return f"dsmn_pad_s8(&{p}, {ptr[x]}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               note=f"pads {pads.tolist()} value {pad_value}"))

    op_PADV2 = op_PAD


# ---------------------------------------------------------------------------------------
# Generation-time evaluation of shape-only ops (see _Lowering._fold_shapes). Each returns the
# output values, or None to leave the op alone (it is then lowered or refused as usual).

def _fold_shape(low, op):
    return [np.asarray(low.t(op.inputs[0]).shape, np.int64)]


def _fold_strided_slice(low, op):
    o = op.options
    x, b, e, s = (low.t(i).data for i in op.inputs[:4])
    if o.ellipsisMask or o.newAxisMask:
        return None
    b, e, s = (list(v.reshape(-1)) for v in (b, e, s))
    idx = []
    for k in range(x.ndim):
        if (o.shrinkAxisMask >> k) & 1:
            idx.append(int(b[k]))
            continue
        bk = None if (o.beginMask >> k) & 1 else int(b[k])
        ek = None if (o.endMask >> k) & 1 else int(e[k])
        if getattr(o, "offset", False) and bk is not None and ek is not None:
            ek = bk + ek
        idx.append(slice(bk, ek, int(s[k])))
    return [x[tuple(idx)]]


def _fold_pack(low, op):
    return [np.stack([low.t(i).data for i in op.inputs], axis=int(op.options.axis))]


def _fold_concat(low, op):
    if op.options.fusedActivationFunction:
        return None
    return [np.concatenate([low.t(i).data.reshape(low.t(i).shape or (1,)) for i in op.inputs],
                           axis=int(op.options.axis))]


def _fold_gather(low, op):
    o = op.options
    if o is not None and getattr(o, "batchDims", 0):
        return None
    axis = int(o.axis) if o is not None else 0
    return [np.take(low.t(op.inputs[0]).data, low.t(op.inputs[1]).data, axis=axis)]


def _fold_binary(fn):
    def fold(low, op):
        if op.options is not None and getattr(op.options, "fusedActivationFunction", 0):
            return None
        a, b = (low.t(i).data.astype(np.int64) for i in op.inputs[:2])
        return [fn(a, b)]
    return fold


def _floor_div(a, b):
    if np.any(b == 0):
        raise ZeroDivisionError("integer division by zero")
    return np.floor_divide(a, b)


def _fold_reduce_prod(low, op):
    axes = tuple(int(a) for a in low.t(op.inputs[1]).data.reshape(-1))
    keep = bool(getattr(op.options, "keepDims", False))
    return [np.prod(low.t(op.inputs[0]).data.astype(np.int64), axis=axes, keepdims=keep)]


def _fold_same_values(low, op):
    """RESHAPE/SQUEEZE/EXPAND_DIMS/CAST of an integer constant: same values, output shape."""
    return [low.t(op.inputs[0]).data.reshape(-1)]


_FOLDERS = {
    "SHAPE": _fold_shape, "STRIDED_SLICE": _fold_strided_slice, "PACK": _fold_pack,
    "CONCATENATION": _fold_concat, "GATHER": _fold_gather,
    "ADD": _fold_binary(np.add), "SUB": _fold_binary(np.subtract),
    "MUL": _fold_binary(np.multiply), "FLOOR_DIV": _fold_binary(_floor_div),
    "REDUCE_PROD": _fold_reduce_prod, "RESHAPE": _fold_same_values,
    "SQUEEZE": _fold_same_values, "EXPAND_DIMS": _fold_same_values, "CAST": _fold_same_values,
}


# ---------------------------------------------------------------------------------------
# Memory planning.

def _align(n, a=ALIGN):
    return (n + a - 1) // a * a


@dataclass
class Plan:
    offsets: dict           # buffer id -> arena offset
    sizes: dict             # buffer id -> bytes
    lifetimes: dict         # buffer id -> (first step, last step)
    owner: dict             # tensor index -> buffer id ("in", "out" or int)
    arena_bytes: int
    peak_step: int
    live_at_peak: list
    scratch: dict = field(default_factory=dict)   # step index -> buffer id


def schedule_min_memory(graph, steps):
    """Reorder steps (respecting data dependencies) to keep the live set small: repeatedly
    run the ready step that grows live memory least (frees most), ties in graph order.

    DSMN blocks profit: the shortcut 1x1 convs on the split halves can run first, so the
    halves die before the long depthwise chain instead of living across it.
    """
    producer = {}
    for k, st in enumerate(steps):
        for t in st.outputs:
            producer[t] = k
    deps = [set(producer[t] for t in st.inputs if t in producer) for st in steps]
    users = {}
    for k, st in enumerate(steps):
        for t in st.inputs:
            users.setdefault(t, set()).add(k)
    # Aliases (reshape views) extend the life of their source: treat a view's users as users
    # of the source tensor.
    root = {}
    for st in steps:
        if st.kind == "alias":
            root[st.outputs[0]] = root.get(st.inputs[0], st.inputs[0])
    group_users = {}
    for t, us in users.items():
        group_users.setdefault(root.get(t, t), set()).update(us)
    keep = {root.get(t, t) for t in graph.outputs}
    done, order = set(), []
    remaining = {root.get(t, t): set(u) for t, u in group_users.items()}
    while len(order) < len(steps):
        ready = [k for k in range(len(steps)) if k not in done and deps[k] <= done]
        best, best_key = None, None
        for k in ready:
            st = steps[k]
            grow = 0 if st.kind == "alias" else sum(graph.tensors[t].nbytes for t in st.outputs)
            free = 0
            for t in set(root.get(i, i) for i in st.inputs):
                if t in keep or t not in remaining:
                    continue
                if remaining[t] <= {k} and t in producer:
                    free += graph.tensors[t].nbytes
            key = (grow - free, k)
            if best_key is None or key < best_key:
                best, best_key = k, key
        order.append(best)
        done.add(best)
        for t in set(root.get(i, i) for i in steps[best].inputs):
            if t in remaining:
                remaining[t].discard(best)
    return [steps[k] for k in order]


def plan_memory(graph, steps):
    """Greedy-by-size placement over buffer lifetimes (TFLM's strategy), with RESHAPE views.

    A buffer is a set of tensors sharing storage (a tensor and its reshape views); the graph
    input stays in the caller's buffer and the graph output is written straight into the
    caller's output buffer, so neither costs arena.
    """
    parent = {}

    def find(i):
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    for st in steps:
        if st.kind == "alias":
            parent[find(st.outputs[0])] = find(st.inputs[0])

    gin, gout = graph.inputs[0], graph.outputs[0]
    owner = {}
    tensors = set()
    for st in steps:
        tensors.update(st.inputs)
        tensors.update(st.outputs)
    tensors.update([gin, gout])
    groups = {}
    for t in tensors:
        groups.setdefault(find(t), []).append(t)
    for root, members in groups.items():
        if gin in members:
            bid = "in"
        elif gout in members:
            bid = "out"
        else:
            bid = root
        for t in members:
            owner[t] = bid

    first, last, sizes = {}, {}, {}
    for k, st in enumerate(steps):
        for t in st.outputs:
            b = owner[t]
            first.setdefault(b, k)
            last[b] = max(last.get(b, k), k)
            sizes[b] = max(sizes.get(b, 0), graph.tensors[t].nbytes)
        for t in st.inputs:
            b = owner[t]
            first.setdefault(b, k)
            last[b] = max(last.get(b, k), k)
    scratch = {}
    for k, st in enumerate(steps):
        if st.scratch_bytes:
            b = f"scratch{k}"
            scratch[k] = b
            first[b] = last[b] = k
            sizes[b] = st.scratch_bytes
    arena_ids = [b for b in sizes if b not in ("in", "out")]

    def place(order):
        offsets, placed = {}, []
        for b in order:
            conflicts = sorted((offsets[p], sizes[p]) for p in placed
                               if not (last[p] < first[b] or last[b] < first[p]))
            off = 0
            for o, s in conflicts:
                if off + sizes[b] <= o:
                    break
                off = max(off, _align(o + s))
            offsets[b] = off
            placed.append(b)
        return offsets, max([_align(offsets[b] + sizes[b]) for b in offsets] or [0])

    # TFLM's greedy planner places by decreasing size; an offline planner can afford to try
    # a few orders and keep the smallest arena.
    keys = [lambda b: (-sizes[b], first[b]), lambda b: (first[b], -sizes[b]),
            lambda b: (-(last[b] - first[b]), -sizes[b]),
            lambda b: (-sizes[b] * (last[b] - first[b] + 1), first[b]),
            lambda b: (-sizes[b], -(last[b] - first[b]))]
    offsets, arena = min((place(sorted(arena_ids, key=k)) for k in keys), key=lambda r: r[1])
    # Peak: the step with the largest sum of live arena buffers.
    peak_step, peak, live_peak = 0, -1, []
    for k in range(len(steps)):
        live = [b for b in offsets if first[b] <= k <= last[b]]
        tot = sum(sizes[b] for b in live)
        if tot > peak:
            peak, peak_step, live_peak = tot, k, live
    lifetimes = {b: (first[b], last[b]) for b in sizes}
    return Plan(offsets, sizes, lifetimes, owner, arena, peak_step, live_peak, scratch)


# ---------------------------------------------------------------------------------------
# Generation.

def _render(name, **ctx):
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template(name).render(**ctx)


def generate(tflite_path, out_dir):
    """Write dsmn_model.c, dsmn_model.h and memory.json for `tflite_path` into `out_dir`.

    Returns the memory report (the content of memory.json).
    """
    from dsmn_host.tflite_reader import read_tflite

    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    graph = read_tflite(tflite_path)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise DsmnError(f"{tflite_path}: model has {len(graph.inputs)} inputs and "
                        f"{len(graph.outputs)} outputs; exactly one of each is supported")
    for idx, what in ((graph.inputs[0], "input"), (graph.outputs[0], "output")):
        if graph.tensors[idx].dtype is not np.int8:
            raise DsmnError(f"{tflite_path}: model {what} tensor is "
                            f"{np.dtype(graph.tensors[idx].dtype).name}; need int8 "
                            "(convert with int8 input/output)")
    low = _Lowering(graph)
    steps = low.lower()
    plan = plan_memory(graph, steps)
    reordered = schedule_min_memory(graph, steps)
    plan2 = plan_memory(graph, reordered)
    if plan2.arena_bytes < plan.arena_bytes:
        steps, plan = reordered, plan2

    def ptr(t):
        b = plan.owner[t]
        if b == "in":
            return "((const int8_t *)input)"
        if b == "out":
            return "output"
        return f"(dsmn_arena + {plan.offsets[b]})"

    calls = []
    for k, st in enumerate(steps):
        if st.kind == "alias":
            continue
        ptrs = {t: ptr(t) for t in st.inputs + st.outputs}
        scratch = f"(dsmn_arena + {plan.offsets[plan.scratch[k]]})" if k in plan.scratch else "NULL"
        tshapes = " ".join(str(list(graph.tensors[t].shape)) for t in st.outputs)
        calls.append({"comment": f"op {st.op_index}: {st.op_name} {st.note} -> {tshapes}".strip(),
                      "code": st.code(ptrs, scratch),
                      "trace": [{"tensor": t, "ptr": ptrs[t], "bytes": graph.tensors[t].nbytes}
                                for t in st.outputs]})  # -DDSMN_TRACE (dsmn_host.compare)
    gin, gout = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    tail = []
    if plan.owner[graph.outputs[0]] == "in":
        tail.append(f"memcpy(output, input, {gout.nbytes});")
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = dict(model_name=tflite_path.name, decls=low.e.decls, calls=calls, tail=tail,
               arena_bytes=max(plan.arena_bytes, ALIGN), input_bytes=gin.nbytes,
               output_bytes=gout.nbytes, input_shape=list(gin.shape), output_shape=list(gout.shape),
               input_scale=float(gin.scale[0]) if len(gin.scale) else 0.0,
               input_zero_point=int(gin.zero_point[0]) if len(gin.zero_point) else 0,
               output_scale=float(gout.scale[0]) if len(gout.scale) else 0.0,
               output_zero_point=int(gout.zero_point[0]) if len(gout.zero_point) else 0)
    (out_dir / "dsmn_model.h").write_text(_render("dsmn_model.h.j2", **ctx))
    (out_dir / "dsmn_model.c").write_text(_render("dsmn_model.c.j2", **ctx))
    report = _report(graph, steps, plan, low.e.flash, tflite_path)
    report["folded_op_counts"] = _counts(
        [op for op in graph.operators if op.index in low.folded], attr="name")
    (out_dir / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "memory.txt").write_text(_report_text(report))
    return report


def _report(graph, steps, plan, flash, path):
    per_op = []
    for k, st in enumerate(steps):
        per_op.append({
            "step": k, "op_index": st.op_index, "op": st.op_name, "kind": st.kind, "note": st.note,
            "outputs": [{"tensor": t, "name": graph.tensors[t].name or f"tensor {t}",
                         "shape": list(graph.tensors[t].shape), "bytes": graph.tensors[t].nbytes,
                         "buffer": str(plan.owner[t]),
                         "offset": plan.offsets.get(plan.owner[t])} for t in st.outputs],
            "scratch_bytes": st.scratch_bytes,
        })
    live = []
    for b in plan.live_at_peak:
        names = [graph.tensors[t].name or f"tensor {t}" for t, o in plan.owner.items() if o == b]
        live.append({"buffer": str(b), "bytes": plan.sizes[b], "offset": plan.offsets[b],
                     "tensors": names, "lifetime": list(plan.lifetimes[b])})
    data_bytes = sum(flash.values())
    code = runtime_code_bytes_estimate()
    return {
        "model": str(path),
        "peak_activation_bytes": plan.arena_bytes,
        "arena_bytes": plan.arena_bytes,
        "live_sum_at_peak_bytes": sum(plan.sizes[b] for b in plan.live_at_peak),
        "scratch_bytes": max([st.scratch_bytes for st in steps] or [0]),
        "input_bytes": graph.tensors[graph.inputs[0]].nbytes,
        "output_bytes": graph.tensors[graph.outputs[0]].nbytes,
        "flash_bytes": data_bytes + (code or 0),
        "flash_breakdown": dict(flash, kernel_code=code),
        "peak_step": plan.peak_step,
        "peak_op": steps[plan.peak_step].op_name if steps else None,
        "live_at_peak": live,
        "ops": per_op,
        "op_counts": _counts(steps),
        "model_op_counts": _counts(graph.operators, attr="name"),
        "folded_op_counts": {},   # shape-only ops evaluated at generation time (no code)
        "notes": "arena excludes the caller's input and output buffers; kernel_code is the "
                 "Cortex-M4 -Os text size of firmware/runtime (None if arm-none-eabi-gcc is missing)",
    }


def _counts(items, attr="op_name"):
    """Op name -> count: of the generated steps (what runs), or of the model's operators."""
    c = {}
    for it in items:
        name = getattr(it, attr)
        c[name] = c.get(name, 0) + 1
    return c


def _report_text(r):
    lines = [f"model: {r['model']}",
             f"peak activation (arena): {r['peak_activation_bytes']} B",
             f"flash: {r['flash_bytes']} B  " + ", ".join(f"{k}={v}" for k, v in r["flash_breakdown"].items()),
             f"peak at step {r['peak_step']} ({r['peak_op']}); live buffers:"]
    for b in r["live_at_peak"]:
        lines.append(f"  {b['bytes']:>8} B @ {b['offset']:>8}  steps {b['lifetime']}  {', '.join(b['tensors'])}")
    lines.append("per-op outputs:")
    for o in r["ops"]:
        for t in o["outputs"]:
            lines.append(f"  {o['step']:>4} {o['op']:<18} {str(t['shape']):<22} {t['bytes']:>8} B "
                         f"buf {t['buffer']} @ {t['offset']}  {o['note']}")
    return "\n".join(lines) + "\n"


_CODE_SIZE_CACHE = {}


def runtime_code_bytes_estimate():
    """Text+data of the kernels built for Cortex-M4 (-Os), measured with the real toolchain;
    None when arm-none-eabi-gcc is not installed."""
    gcc = shutil.which("arm-none-eabi-gcc")
    size = shutil.which("arm-none-eabi-size")
    if not gcc or not size:
        return None
    objs = runtime_objects(gcc, [*ARM_FLAGS, "-std=c99", "-Os"])
    key = tuple(str(o) for o in objs)
    if key not in _CODE_SIZE_CACHE:
        out = subprocess.run([size, *key], check=True, capture_output=True, text=True).stdout
        total = 0
        for line in out.splitlines()[1:]:
            text, data = line.split()[:2]
            total += int(text) + int(data)
        _CODE_SIZE_CACHE[key] = total
    return _CODE_SIZE_CACHE[key]


# ---------------------------------------------------------------------------------------
# Building and running generated code (host gcc, or arm-none-eabi-gcc + QEMU mps2-an386).

ARM_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]
HOST_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wno-unused-const-variable"]


def runtime_objects(cc, flags):
    """Kernel objects for compiler `cc` and `flags`, compiled once and cached by content hash,
    so building many generated models only compiles each model's own .c."""
    import hashlib
    h = hashlib.sha256(" ".join([cc, *flags]).encode())
    for src in sorted(RUNTIME_DIR.glob("*.[ch]")):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    cache = Path(tempfile.gettempdir()) / f"dsmn_rt_{os.getuid()}_{h.hexdigest()[:16]}"
    objs = [cache / (src.stem + ".o") for src in runtime_sources()]
    if all(o.exists() for o in objs):
        return objs
    tmp = Path(tempfile.mkdtemp(prefix="dsmn_rt_build_"))
    for src, obj in zip(runtime_sources(), objs):
        cmd = [cc, *flags, f"-I{RUNTIME_DIR}", "-c", str(src), "-o", str(tmp / obj.name)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise DsmnError(f"kernel build failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    try:
        tmp.rename(cache)
    except OSError:  # another process won the race; its objects are identical
        shutil.rmtree(tmp, ignore_errors=True)
    return objs


def _kernel_flags(cflags):
    """DSMN_TRACE only changes the generated model and the runners, not the kernels: traced
    builds reuse the cached kernel objects of a normal build."""
    return [f for f in cflags if f != "-DDSMN_TRACE"]


def build_host_runner(gen_dir, exe=None, cflags=()):
    """Compile the generated model + kernels + host runner; returns the executable path."""
    gen_dir = Path(gen_dir)
    exe = Path(exe or gen_dir / "dsmn_runner")
    objs = runtime_objects("gcc", [*HOST_FLAGS, *_kernel_flags(cflags)])
    srcs = [gen_dir / "dsmn_model.c", RUNNER_DIR / "host_runner.c"]
    cmd = ["gcc", *HOST_FLAGS, *cflags, f"-I{gen_dir}", f"-I{RUNTIME_DIR}",
           *map(str, srcs), *map(str, objs), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise DsmnError(f"host build failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    return exe


def run_batch(gen_dir, inputs, target="host", timeout=600):
    """Run generated code on int8 `inputs` (N x input shape); returns N x output bytes int8."""
    gen_dir = Path(gen_dir)
    meta = json.loads((gen_dir / "memory.json").read_text())
    inputs = np.ascontiguousarray(inputs, dtype=np.int8)
    n = inputs.shape[0]
    if inputs.size != n * meta["input_bytes"]:
        raise DsmnError(f"inputs have {inputs.size // max(n, 1)} elements per item; the model "
                        f"takes {meta['input_bytes']}")
    if target == "host":
        exe = build_host_runner(gen_dir)
        with tempfile.TemporaryDirectory() as d:
            fi, fo = Path(d) / "in.bin", Path(d) / "out.bin"
            inputs.tofile(fi)
            r = subprocess.run([str(exe), str(fi), str(fo), str(n)], capture_output=True,
                               text=True, timeout=timeout)
            if r.returncode != 0:
                raise DsmnError(f"runner failed ({r.returncode}): {r.stderr[-2000:]}")
            out = np.fromfile(fo, dtype=np.int8)
        return out.reshape(n, meta["output_bytes"])
    if target == "qemu-an386":
        out, _ = run_qemu(build_qemu_runner(gen_dir), inputs, meta["output_bytes"], timeout=timeout)
        return out
    raise DsmnError(f"unknown target {target!r}; use host or qemu-an386")


QEMU_RUNNER_DIR = RUNTIME_DIR / "qemu_runner"
ARM_OPT = ["-std=c99", "-O2", "-ffunction-sections", "-fdata-sections", "-Wall",
           "-Wno-unused-const-variable"]


def build_qemu_runner(gen_dir, elf=None, cflags=()):
    """Cross-compile the generated model + kernels + semihosting runner for mps2-an386."""
    gcc = shutil.which("arm-none-eabi-gcc")
    if not gcc:
        raise DsmnError("arm-none-eabi-gcc not found (run scripts/bootstrap.sh)")
    gen_dir = Path(gen_dir)
    elf = Path(elf or gen_dir / "dsmn_runner_an386.elf")
    flags = [*ARM_FLAGS, *ARM_OPT, *cflags]
    objs = runtime_objects(gcc, [*ARM_FLAGS, *ARM_OPT, *_kernel_flags(cflags)])
    cmd = [gcc, *flags, f"-I{gen_dir}", f"-I{RUNTIME_DIR}", str(gen_dir / "dsmn_model.c"),
           str(QEMU_RUNNER_DIR / "qemu_runner.c"), *map(str, objs), "-nostartfiles",
           "--specs=nano.specs", "-Wl,--gc-sections", f"-T{QEMU_RUNNER_DIR / 'link.ld'}",
           "-o", str(elf)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise DsmnError(f"arm build failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    return elf


def run_qemu(elf, inputs, output_bytes, timeout=600, extra_files=()):
    """Run a runner ELF on QEMU mps2-an386 (-icount shift=0); returns (outputs, stats) where
    stats has per-inference instruction counts converted from SysTick ticks, and
    stats["files"] the bytes of each of `extra_files` the runner wrote by semihosting."""
    qemu = shutil.which("qemu-system-arm")
    if not qemu:
        raise DsmnError("qemu-system-arm not found (run scripts/bootstrap.sh)")
    inputs = np.ascontiguousarray(inputs, dtype=np.int8)
    n = inputs.shape[0]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        with open(d / "in.bin", "wb") as f:
            f.write(np.uint32(n).tobytes())
            f.write(inputs.tobytes())
        cmd = [qemu, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "null",
               "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
               "-kernel", str(Path(elf).resolve())]
        try:
            r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise DsmnError(f"QEMU run timed out after {timeout} s") from exc
        if r.returncode != 0:
            raise DsmnError(f"QEMU runner failed (exit {r.returncode}): {r.stderr[-2000:]}")
        out = np.fromfile(d / "out.bin", dtype=np.int8)
        stats_txt = (d / "stats.txt").read_text()
        files = {f: (d / f).read_bytes() for f in extra_files if (d / f).exists()}
    if out.size != n * output_bytes:
        raise DsmnError(f"QEMU runner wrote {out.size} bytes, expected {n * output_bytes}")
    cal_instr, cal_ticks, ticks, steps = 0, 0, [], {}
    for line in stats_txt.splitlines():
        parts = line.split()
        if parts[0] == "calibration_instructions":
            cal_instr, cal_ticks = int(parts[1]), int(parts[2])
        elif parts[0] == "ticks":
            ticks.append(int(parts[1]))
        elif parts[0] == "step":
            steps[int(parts[1])] = int(parts[2])
    per_tick = cal_instr / cal_ticks if cal_ticks else float("nan")
    stats = {"ticks": ticks, "instructions_per_tick": per_tick,
             "instructions": [round(t * per_tick) for t in ticks],
             "calibration": {"instructions": cal_instr, "ticks": cal_ticks},
             "step_instructions": {k: round(v * per_tick / max(n, 1)) for k, v in steps.items()},
             "files": files}
    return out.reshape(n, output_bytes), stats


def step_labels(gen_dir):
    """(comment, kernel) of every step of a generated dsmn_model.c, indexed like the step
    numbers a -DDSMN_PROFILE QEMU build reports (run_qemu's stats["step_instructions"])."""
    import re
    src = (Path(gen_dir) / "dsmn_model.c").read_text()
    body = src.split("int dsmn_invoke", 1)[1]
    labels = []
    for m in re.finditer(r"/\* (.*?) \*/\n(.*?)DSMN_MARK\((\d+)\);", body, re.S):
        kernel = re.search(r"\b(dsmn_\w+)\(", m.group(2))
        labels.append((m.group(1), kernel.group(1) if kernel else "memcpy"))
    return labels


def profile_qemu(gen_dir, inputs, output_bytes, cflags=()):
    """Per-step and per-kernel instructions of one inference on QEMU (-DDSMN_PROFILE build)."""
    gen_dir = Path(gen_dir)
    elf = build_qemu_runner(gen_dir, elf=gen_dir / "dsmn_runner_profile.elf",
                            cflags=["-DDSMN_PROFILE", *cflags])
    _, stats = run_qemu(elf, inputs, output_bytes)
    labels = step_labels(gen_dir)
    steps = [{"step": k, "op": labels[k][0] if k < len(labels) else "?",
              "kernel": labels[k][1] if k < len(labels) else "?", "instructions": n}
             for k, n in sorted(stats["step_instructions"].items())]
    per_kernel = {}
    for st in steps:
        per_kernel[st["kernel"]] = per_kernel.get(st["kernel"], 0) + st["instructions"]
    per_kernel = dict(sorted(per_kernel.items(), key=lambda kv: -kv[1]))
    return {"instructions": stats["instructions"], "per_kernel": per_kernel, "steps": steps}


# ---------------------------------------------------------------------------------------
# CLI.

def _cmd_codegen(args):
    report = generate(args.model, args.out)
    print(f"wrote {Path(args.out) / 'dsmn_model.c'}, dsmn_model.h, memory.json")
    print(f"peak activation RAM {report['peak_activation_bytes']} B, flash {report['flash_bytes']} B")
    if args.run:
        inp, outp = args.run
        from dsmn_host.paths import read_int8_npy
        x = read_int8_npy(inp, "--run inputs")
        y = run_batch(args.out, x, target=args.target)
        from dsmn_host.tflite_reader import read_tflite
        g = read_tflite(args.model)
        y = y.reshape((x.shape[0],) + tuple(g.tensors[g.outputs[0]].shape[1:]))
        np.save(outp, y)
        print(f"ran {x.shape[0]} inputs on {args.target}; outputs -> {outp}")


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "codegen", help="compile an int8 .tflite into static C (dsmn runtime) + memory report",
        description="Generate dsmn_model.c/.h and memory.json from an int8 TFLite model; "
                    "optionally build and run it on a batch of int8 inputs.",
        **style("dsmn-host codegen models/model1/model1_int8.tflite --out build/gen", "dsmn-host codegen model.tflite --out build/gen --run inputs.npy outputs.npy --target qemu-an386"))
    p.add_argument("model", help="int8 .tflite model")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--run", nargs=2, metavar=("INPUTS.npy", "OUTPUTS.npy"),
                   help="build the generated code and run it on N x input-shape int8 inputs")
    p.add_argument("--target", choices=("host", "qemu-an386"), default="host",
                   help="where --run executes (default: host gcc)")
    p.set_defaults(func=_cmd_codegen)
