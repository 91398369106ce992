"""Lower pass: one Step per kernel call, with every kernel parameter computed here.

Validation and TFLite's quantisation math (qmath) decide each kernel's parameters; the C
structs are emitted as const data through the Emitter. Steps that can run on row bands
also get a RowBand (see ir.py) so the tile pass can stream them.
"""

import math
from dataclasses import replace

import numpy as np

from dsmn_host.errors import DsmnError
from dsmn_host.compiler.fold import fold_shapes, resolve_reshape
from dsmn_host.compiler.fuse import find_fusions
from dsmn_host.compiler.ir import (IR, ColMap, RowBand, RowMap, Step, op_error as _err, rows_of,
                                   row_bytes)
from dsmn_host.compiler.params import (MAX_TAIL, AddParams, AddTabledParams, Broadcast, Conv1x1Prep,
                                       ConvParams, Dims, DwPrep, FcParams, GatherParams,
                                       LogisticParams, MeanParams, MulParams, PadParams, PoolParams,
                                       Requant, RequantParams, SoftmaxParams, SparableParams, TailOp)
from dsmn_host.compiler.qmath import (ACT_NAMES, activation_range, add_one, add_tables, conv1x1_prep,
                                      dims4, dw_prep, mul_one, quantize_multiplier, round_away,
                                      tflite_padding)

SUPPORTED_OPS = (
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "MEAN",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS",
    "STRIDED_SLICE", "SPLIT", "SPLIT_V", "TRANSPOSE", "QUANTIZE", "LOGISTIC", "TANH", "SOFTMAX",
    "PAD", "PADV2",
)


def _at(addr, k):
    """C address `addr` moved by `k` bytes."""
    return addr if k == 0 else f"({addr} + {k})"


class Emitter:
    def __init__(self):
        self.decls = []
        self.flash = {"weights": 0, "bias": 0, "requant": 0, "params": 0, "tables": 0}
        self.struct_sizes = {}
        self._n = 0

    def name(self, base):
        self._n += 1
        return f"{base}{self._n}"

    def _array_decl(self, ctype, values, base, align=4):
        """(name, C declaration, flash bytes) of a const array."""
        values = np.asarray(values).reshape(-1)
        n = self.name(base)
        per_line = 24
        body = ",\n    ".join(", ".join(str(int(v)) for v in values[i:i + per_line])
                               for i in range(0, len(values), per_line))
        decl = (f"static const {ctype} {n}[{max(len(values), 1)}] "
                f"__attribute__((aligned({align}))) = {{\n    {body or '0'}\n}};")
        return n, decl, len(values) * {"int8_t": 1, "int32_t": 4}[ctype]

    def _struct_decl(self, s, base):
        """(name, C declaration, flash bytes) of a const struct from its dataclass (params.py);
        its Cortex-M size is what a _Static_assert in the generated C checks."""
        self.struct_sizes[s.CTYPE] = (s.size(), s.has_pointer())
        n = self.name(base)
        return n, f"static const {s.CTYPE} {n} = {s.initializer()};", s.size()

    def array(self, ctype, values, base, kind, align=4):
        n, decl, nbytes = self._array_decl(ctype, values, base, align)
        self.decls.append(decl)
        self.flash[kind] += nbytes
        return n

    def struct(self, s, base):
        """A const struct, counted in the flash accounting's params."""
        n, decl, nbytes = self._struct_decl(s, base)
        self.decls.append(decl)
        self.flash["params"] += nbytes
        return n

    def add_table_consts(self, f, base):
        """dsmn_add_tabled_params for AddParams `f` as (name, [(C declaration, flash bytes)]),
        not registered: a RowBand's consts, emitted only by plans that run it in bands."""
        doubled, table = add_tables(f)
        tname, tdecl, tbytes = self._array_decl("int32_t", table, base + "t")
        pname, pdecl, pbytes = self._struct_decl(AddTabledParams(f, int(doubled), tname), base)
        return pname, [(tdecl, tbytes), (pdecl, pbytes)]

    def conv1x1_prep_consts(self, base2, filt, rq, gc, base):
        """dsmn_conv1x1_prep of qmath.conv1x1_prep's base2 (the filter array already emitted)
        as (name, [(C declaration, flash bytes)]), not registered: a RowBand's consts, like
        add_table_consts."""
        bn, bdecl, bbytes = self._array_decl("int32_t", base2, base + "b")
        pname, pdecl, pbytes = self._struct_decl(Conv1x1Prep(bn, filt, rq.multiplier, rq.shift, gc),
                                                 base)
        return pname, [(bdecl, bbytes), (pdecl, pbytes)]

    def dw_prep_consts(self, ch, taps, base):
        """dsmn_dw_prep of qmath.dw_prep's arrays as (name, [(C declaration, flash bytes)])."""
        cn, cdecl, cbytes = self._array_decl("int32_t", ch, base + "c")
        tn, tdecl, tbytes = self._array_decl("int32_t", taps, base + "t")
        pname, pdecl, pbytes = self._struct_decl(DwPrep(cn, tn), base)
        return pname, [(cdecl, cbytes), (tdecl, tbytes), (pdecl, pbytes)]


class Lowering(IR):
    def __init__(self, graph):
        super().__init__(graph)
        self.e = Emitter()
        self.steps = []

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
            raise _err(op, f"fused activation {ACT_NAMES.get(act_code, act_code)} is not supported "
                           "(supported: NONE, RELU, RELU6, RELU_N1_TO_1)")
        return r

    def dims_struct(self, shape):
        return self.e.struct(Dims(*dims4(shape)), "dims")

    def per_channel(self, op, in_idx, f_idx, out_idx, n_ch):
        return self.requant_arrays(*self.rq_values(op, in_idx, f_idx, out_idx, n_ch))

    def requant_arrays(self, mult, shift):
        return (self.e.array("int32_t", mult, "mult", "requant"),
                self.e.array("int32_t", shift, "shift", "requant"))

    def rq_values(self, op, in_idx, f_idx, out_idx, n_ch):
        """Per-output-channel (multipliers, shifts) of a conv's requantisation."""
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
        return mult, shift

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

    def lower(self):
        fold_shapes(self)
        find_fusions(self)
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
                    "dsmn_host/compiler/lower.py, or change the model to avoid it")
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
        pad_h = tflite_padding(o.padding, ish[1], wsh[1], o.strideH, dil_h, osh[1])
        pad_w = tflite_padding(o.padding, ish[2], wsh[2], o.strideW, dil_w, osh[2])
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
        cp = ConvParams(-zin, zout, o.strideH, o.strideW, dil_h, dil_w, pad_h, pad_w, amin, amax, mult)
        rq_values = self.rq_values(op, x, w, y, n_ch)   # (multipliers, shifts): the preps read them
        return dict(x=x, y=y, w=w, b=b, ish=ish, wsh=wsh, osh=osh, cp=cp,
                    q=Requant(*self.requant_arrays(*rq_values)), rq_values=rq_values, pad_h=pad_h,
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
        q = self.e.struct(c["q"], "rq")
        layout = (3, 1, 2, 0) if channelwise else None
        wd, bd = self.weights(op, c["w"], layout), self.bias(op, c["b"])
        wsh = [c["wsh"][i] for i in layout] if channelwise else c["wsh"]
        di, df = self.dims_struct(c["ish"]), self.dims_struct(wsh)
        fn = "dsmn_depthwise_conv2d_s8" if depthwise else "dsmn_conv2d_s8"
        x = c["x"]
        wins = self._windows(c["y"], c["osh"])
        calls = []
        for t, y0, x0, dims in wins:
            p = self.e.struct(replace(c["cp"], out_y0=y0, out_x0=x0), "cp")
            do = self.dims_struct(dims)
            calls.append((t, p, do))

        args = lambda p, do, xin: f"&{p}, &{q}, &{di}, {xin}, &{df}, {wd}, {bd}, &{do}"
        code, band_code = self._window_calls(fn, x, calls, args)
        band = None
        if rows_of(c["ish"]) and rows_of(c["osh"]) and all(y0 == 0 for _, y0, _, _ in wins):
            cols = {t: {x: ColMap(c["stride"][1], c["cp"].pad_w, c["dil"][1], c["wsh"][2],
                                  c["ish"][2], x0)} for t, _, x0, _ in wins}
            # band calls take per-call setup (weight sums, packing, tap lists) the generator
            # prepared, emitted only by plans that band the step
            bfn, bargs, consts = fn, args, []
            if depthwise:
                prep = self._dw_prep(op, c, layout)
                if prep is not None:
                    pname, consts = prep
                    bfn = "dsmn_depthwise_conv2d_prep_s8"
                    bargs = lambda p, do, xin: f"&{pname}, {args(p, do, xin)}"
            else:
                prep = self._conv1x1_prep(op, c, wd)
                if prep is not None:
                    pname, consts = prep
                    bfn = "dsmn_conv1x1_prep_s8"
                    bargs = lambda p, do, xin: f"&{pname}, &{p}, &{di}, {xin}, &{do}"
            band_code = self._window_calls(bfn, x, calls, bargs)[1]
            band = RowBand({x: RowMap(c["stride"][0], c["pad_h"], c["dil"][0], c["wsh"][1],
                                      c["ish"][1])}, band_code, rows=c["osh"][1], cols=cols,
                           tile=self._window_tile(bfn, x, calls, bargs, cols), consts=consts)
        kind = ("channelwise" if channelwise else "depthwise") if depthwise else (
            "grouped" if c["ish"][3] != c["wsh"][3] else "conv")
        note = (f"{kind} {c['wsh'][1]}x{c['wsh'][2]} s{c['stride'][0]}x{c['stride'][1]} "
                f"d{c['dil'][0]}x{c['dil'][1]}" + (" +split" if len(wins) > 1 else ""))
        self.steps.append(Step(op.index, op.name, "kernel", [x], [t for t, _, _ in calls], code,
                               note=note, macs=self._macs(c), band=band, scratch_bytes=0,
                               scratch_calls=[f"{fn}_scratch_bytes(&{p}, &{di}, &{df}, &{do})"
                                              for _, p, do in calls]))

    def _dw_prep(self, op, c, layout):
        """(name, RowBand consts) of the dsmn_dw_prep a depthwise step's band calls take, or
        None where the kernel's fast path would not run (dsmn_depthwise_fast.h's conditions)."""
        w = self.t(c["w"]).data
        if layout is not None:
            w = w.transpose(layout)
        n = int(c["osh"][3])
        if (c["mult"] != 1 or c["stride"][1] != 1 or c["ish"][3] != n or n > 128
                or w.shape[3] != n):
            return None
        bias = None if c["b"] < 0 else self.t(c["b"]).data
        mult, shift = c["rq_values"]
        prep = dw_prep(w.reshape(-1, n), bias, c["cp"].input_offset, mult, shift)
        if prep is None:
            return None
        return self.e.dw_prep_consts(*prep, "dwp")

    def _conv1x1_prep(self, op, c, filt):
        """(name, RowBand consts) of the dsmn_conv1x1_prep a 1x1 unpadded CONV_2D's band calls
        take, or None where the kernel would not take its fast path on every channel."""
        wsh = c["wsh"]
        if wsh[1] != 1 or wsh[2] != 1 or c["pad_h"] or c["cp"].pad_w:
            return None
        bias = None if c["b"] < 0 else self.t(c["b"]).data
        prep = conv1x1_prep(self.t(c["w"]).data, bias, c["cp"].input_offset, c["rq_values"][1])
        if prep is None:
            return None
        return self.e.conv1x1_prep_consts(prep, filt, c["q"], int(wsh[3]), "c1")

    @staticmethod
    def _window_calls(fn, x, calls, args):
        """(code, band_code) of a kernel called once per output window (conv, depthwise, pool):
        `calls` are (output tensor, params, out dims); args(params, out dims, input address) the
        arguments before the output, and in a band the rows, of the kernel's _rows_ entry."""
        def code(ptr, scratch):
            return "\n    ".join(f"{fn}({args(p, do, ptr[x])}, {ptr[t]});" for t, p, do in calls)

        def band_code(ptr, lo, hi, scratch):
            return "\n    ".join(f"{fn[:-3]}_rows_s8({args(p, do, ptr(x, 0))}, {lo}, {hi - lo}, "
                                  f"{ptr(t, lo)});" for t, p, do in calls)
        return code, band_code

    def _window_tile(self, fn, x, calls, args, cols):
        """tile code (RowBand.tile) of a kernel called once per output window: per column
        piece, its _tile_ entry on the input columns the window's ColMap reaches."""
        def tile(loc, lo, hi, outs, scratch):
            lines = []
            for t, p, do in calls:
                ch = int(self.t(t).shape[3])
                for a, b in outs.get(t, []):
                    xin, ix0, iw = loc(x, 0, *cols[t][x].need(a, b))
                    yo, ox0, ow = loc(t, lo, a, b)
                    lines.append(f"{fn[:-3]}_tile_s8({args(p, do, xin)}, {lo}, {hi - lo}, {a}, "
                                 f"{b - a}, {ix0}, {iw}, {ow}, {_at(yo, (a - ox0) * ch)});")
            return "\n    ".join(lines)
        return tile

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
            return AddParams(-z1, -z2, zo, left, m1, sh1, m2, sh2, mo, sho, amin, amax)
        mo, sho = quantize_multiplier(float(s1) * float(s2) / float(so))
        return MulParams(-z1, -z2, zo, mo, sho, amin, amax)

    def _sparable(self, add, pq, pr, tail):
        cq, cr = self._conv_setup(pq, True), self._conv_setup(pr, True)
        x = cq["x"]
        last = (tail[-1] if tail else add)
        y = last.outputs[0]
        self.check_int8(add, [add.inputs[0], add.inputs[1], add.outputs[0]])
        addp = self._binary_fields(add, add.inputs[0], add.inputs[1], add.outputs[0])
        tails, tail_fns = [], []
        cur = add.outputs[0]
        n_ch = self.t(y).shape[-1]
        for n in tail:
            self.check_int8(n, list(n.inputs[:2]) + [n.outputs[0]])
            f = self._binary_fields(n, n.inputs[0], n.inputs[1], n.outputs[0])
            is_mul = isinstance(f, MulParams)
            kidx = n.inputs[1] if n.inputs[0] == cur else n.inputs[0]
            kvals = np.asarray(self.t(kidx).data).reshape(-1).astype(int)
            first = int(n.inputs[0] == kidx)
            tail_fns.append((is_mul, f.values(), first, kvals))
            karr = self.e.array("int8_t", self.t(kidx).data, "k", "weights")
            per_ch = int(np.prod(self.t(kidx).shape)) > 1
            tails.append(TailOp(int(is_mul), first, int(per_ch), karr,
                                AddParams() if is_mul else f, f if is_mul else MulParams()))
            cur = n.outputs[0]
        tails += [TailOp() for _ in range(MAX_TAIL - len(tails))]
        lut = "NULL"
        if tail_fns:
            table = np.zeros((n_ch, 256), np.int64)
            for c in range(n_ch):
                for r0 in range(-128, 128):
                    r = r0
                    for is_mul, ft, kfirst, kv in tail_fns:
                        k = int(kv[c if len(kv) > 1 else 0])
                        a1, a2 = (k, r) if kfirst else (r, k)
                        r = mul_one(ft, a1, a2) if is_mul else add_one(ft, a1, a2)
                    table[c, r0 + 128] = r
            lut = self.e.array("int8_t", table, "lut", "tables")
        wq, bq = self.weights(pq, cq["w"]), self.bias(pq, cq["b"])
        wr, br = self.weights(pr, cr["w"]), self.bias(pr, cr["b"])
        fq, fr = Dims(*dims4(cq["wsh"])), Dims(*dims4(cr["wsh"]))
        # Operand order of the ADD: q is its first input.
        if add.inputs[0] != pq.outputs[0]:
            cq, cr, wq, wr, bq, br, fq, fr = cr, cq, wr, wq, br, bq, fr, fq
        p = self.e.struct(SparableParams([cq["cp"], cr["cp"]], [cq["q"], cr["q"]], [fq, fr],
                                         [wq, wr], [bq, br], addp, len(tail), tails, lut), "sp")
        di, do = self.dims_struct(self.t(x).shape), self.dims_struct(self.t(y).shape)

        def code(ptr, scratch):
            return f"dsmn_sparable_s8(&{p}, &{di}, {ptr[x]}, &{do}, {ptr[y]});"
        macs = self._macs(cq) + self._macs(cr)
        self.steps.append(Step(add.index, "SPARABLE", "kernel", [x], [y], code, scratch_bytes=0,
                               scratch_calls=[f"dsmn_sparable_s8_scratch_bytes(&{p}, &{di}, &{do})"],
                               note=f"ops {pq.index},{pr.index},{add.index}" +
                                    "".join(f",{n.index}" for n in tail) + " fused", macs=macs,
                               band=self._sparable_band(cq, cr, x, y, p, di, do)))

    def _sparable_band(self, cq, cr, x, y, p, di, do):
        """RowBand of a fused Sparable: its input rows are the union of both convs' windows
        (stride 1), so one RowMap spanning the larger top and bottom reach describes them."""
        ish, osh = self.t(x).shape, self.t(y).shape
        if not (rows_of(ish) and rows_of(osh)):
            return None
        top = max(c["pad_h"] for c in (cq, cr))
        bottom = max((c["wsh"][1] - 1) * c["dil"][0] - c["pad_h"] for c in (cq, cr))
        if min(c["pad_h"] for c in (cq, cr)) < 0 or bottom < 0:
            return None

        def band_code(ptr, lo, hi, scratch):
            return (f"dsmn_sparable_rows_s8(&{p}, &{di}, {ptr(x, 0)}, &{do}, {lo}, {hi - lo}, "
                    f"{ptr(y, lo)});")
        return RowBand({x: RowMap(1, top, 1, top + bottom + 1, ish[1])}, band_code, rows=osh[1])

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
        rq = Requant(*self.per_channel(op, x, w, y, out_depth))
        p = self.e.struct(FcParams(-zin, zout, batches, depth, out_depth, amin, amax), "fp")
        q = self.e.struct(rq, "rq")
        wd, bd = self.weights(op, w), self.bias(op, b)

        def code(ptr, scratch):
            return f"dsmn_fully_connected_s8(&{p}, &{q}, {ptr[x]}, {wd}, {bd}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               note=f"{depth}->{out_depth}"))

    def _broadcast(self, op, a, b, y):
        sa, sb, sy = (dims4(self.t(i).shape) for i in (a, b, y))
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
        bc = self.e.struct(Broadcast(list(sy), st1, st2), "bc")
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
        f = self._binary_fields(op, a, b, y)
        p = self.e.struct(f, "mp" if isinstance(f, MulParams) else "ap")
        fn = "dsmn_mul_s8" if isinstance(f, MulParams) else "dsmn_add_s8"
        bc, count = self._broadcast(op, a, b, y)
        ca, cb = self._const_operand(op, a), self._const_operand(op, b)
        ins = [i for i, c in ((a, ca), (b, cb)) if c is None]

        def code(ptr, scratch):
            pa = ca if ca is not None else ptr[a]
            pb = cb if cb is not None else ptr[b]
            return f"{fn}(&{p}, {bc}, {count}, {pa}, {pb}, {ptr[y]});"

        h = rows_of(self.t(y).shape)
        band = None
        if h and all(rows_of(self.t(i).shape) in (h, None) and len(self.t(i).shape) == 4
                     for i in (a, b)):
            ry = row_bytes(self.t(y))

            def operand(i, cst, lo, ptr):
                full = rows_of(self.t(i).shape) == h
                if cst is not None:
                    return f"({cst} + {lo * row_bytes(self.t(i))})" if full else cst
                return ptr(i, lo if full else 0)

            # ADD/SUB of same-shape tensors: band calls take the generator's rescaling tables
            # (dsmn_add_s8 builds them only for runs of 1,024 elements and more)
            tabled, consts = None, []
            if isinstance(f, AddParams) and bc == "NULL" and ca is None and cb is None:
                tabled, consts = self.e.add_table_consts(f, "atp")

            def band_code(ptr, lo, hi, scratch):
                pa, pb = operand(a, ca, lo, ptr), operand(b, cb, lo, ptr)
                if tabled:
                    return f"dsmn_add_tabled_s8(&{tabled}, {(hi - lo) * ry}, {pa}, {pb}, {ptr(y, lo)});"
                if bc == "NULL":
                    return f"{fn}(&{p}, NULL, {(hi - lo) * ry}, {pa}, {pb}, {ptr(y, lo)});"
                return (f"{fn[:-3]}_rows_s8(&{p}, {bc}, {hi - lo}, {(hi - lo) * ry}, {pa}, {pb}, "
                        f"{ptr(y, lo)});")
            band = RowBand({i: RowMap(h=self.t(i).shape[1] if len(self.t(i).shape) == 4 else 1,
                                      whole=rows_of(self.t(i).shape) != h)
                            for i in ins}, band_code, rows=h, consts=consts)
            self._binary_tile(band, fn, p, bc, ((a, ca), (b, cb)), y, tabled)
        self.steps.append(Step(op.index, op.name, "kernel", ins, [y], code,
                               note="broadcast" if bc != "NULL" else "", band=band))

    def _binary_tile(self, band, fn, p, bc, operands, y, tabled=None):
        """Mel strips of an ADD/MUL whose operands are as wide as the output or width 1
        (broadcast along mel): each operand at the strip's columns, its own row stride;
        `tabled`: the ADD's dsmn_add_tabled_params (band_code's)."""
        ysh = list(self.t(y).shape)
        h, w, ch = ysh[1], ysh[2], ysh[3]
        shapes = {i: list(self.t(i).shape) for i, _ in operands}
        if any(len(sh) != 4 or sh[2] not in (w, 1) for sh in shapes.values()):
            return
        band.cols = {y: {i: ColMap(w=shapes[i][2], whole=shapes[i][2] != w)
                         for i, cst in operands if cst is None}}

        def operand(i, cst, loc, lo, a, b):
            sh = shapes[i]
            full_h, full_w = sh[1] == h and h > 1, sh[2] == w and w > 1
            row, c0 = (lo if full_h else 0), (a if full_w else 0)
            if cst is not None:
                return _at(cst, (row * sh[2] + c0) * sh[3]), sh[2] * sh[3] if full_h else 0
            addr, x0, held = loc(i, row, c0, b if full_w else 1)
            return _at(addr, (c0 - x0) * sh[3]), held * sh[3] if full_h else 0

        def tile(loc, lo, hi, outs, scratch):
            lines = []
            for a, b in outs.get(y, []):
                (pa, sa), (pb, sb) = (operand(i, cst, loc, lo, a, b) for i, cst in operands)
                yo, x0, held = loc(y, lo, a, b)
                head = (f"dsmn_add_tabled_tile_s8(&{tabled}, " if tabled else
                        f"{fn[:-3]}_tile_s8(&{p}, {bc}, ")
                lines.append(f"{head}{hi - lo}, {b - a}, {(b - a) * ch}, "
                             f"{pa}, {sa}, {pb}, {sb}, {_at(yo, (a - x0) * ch)}, {held * ch});")
            return "\n    ".join(lines)
        band.tile = tile

    def _rowwise_band(self, x, y, call):
        """RowBand of an elementwise op on same-shape tensors: rows map one to one."""
        h = rows_of(self.t(y).shape)
        if not h or list(self.t(x).shape) != list(self.t(y).shape):
            return None
        rb = row_bytes(self.t(y))
        w = int(self.t(y).shape[2]) if len(self.t(y).shape) == 4 else 0
        pix = rb // w if w else 0

        def tile(loc, lo, hi, outs, scratch):
            """Per column piece: one call when both strips are as wide as the piece, else a
            call a row (the rows of x and y are their own strides apart)."""
            lines = []
            for a, b in outs.get(y, []):
                (xa, x0, xw), (ya, y0, yw) = loc(x, lo, a, b), loc(y, lo, a, b)
                xa, ya = _at(xa, (a - x0) * pix), _at(ya, (a - y0) * pix)
                if xw == yw == b - a:
                    lines.append(call((hi - lo) * (b - a) * pix, xa, ya))
                    continue
                lines += [call((b - a) * pix, _at(xa, r * xw * pix), _at(ya, r * yw * pix))
                          for r in range(hi - lo)]
            return "\n    ".join(lines)
        return RowBand({x: RowMap(h=h)}, lambda ptr, lo, hi, scratch: call((hi - lo) * rb, ptr(x, lo), ptr(y, lo)),
                       rows=h, cols={y: {x: ColMap(w=w)}} if w else None, tile=tile if w else None)

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
        mp = MeanParams(outer, red, inner, zi, zo, m, s)
        p = self.e.struct(mp, "mn")

        def code(ptr, scratch):
            return f"dsmn_mean_s8(&{p}, {ptr[x]}, (int32_t *){scratch}, {ptr[y]});"
        band = None
        h = rows_of(shape)
        if h and outer == 1 and axes[0] == 1:
            per_row = red // h

            def band_code(ptr, lo, hi, scratch):
                return (f"dsmn_mean_accumulate_s8({inner}, {(hi - lo) * per_row}, {ptr(x, lo)}, "
                        f"(int32_t *){scratch});")
            band = RowBand({x: RowMap(h=h)}, band_code, reduce=True, rows=h,
                           init=lambda scratch: f"memset({scratch}, 0, {4 * inner});",
                           finish=lambda ptr, scratch: f"dsmn_mean_finish_s8(&{p}, (const int32_t *){scratch}, {ptr(y, 0)});",
                           scratch_calls=[f"dsmn_mean_accumulate_s8_scratch_bytes({inner})"])
            if axes == [1, 2] and len(shape) == 4:
                # over time and mel: the sums of each strip's own columns add up
                def tile(loc, lo, hi, outs, scratch):
                    (a, b), = outs[x]
                    addr, x0, held = loc(x, lo, a, b)
                    return (f"dsmn_mean_accumulate_tile_s8({inner}, {hi - lo}, {b - a}, "
                            f"{_at(addr, (a - x0) * inner)}, {held * inner}, (int32_t *){scratch});")
                band.cols, band.tile = {x: {x: ColMap(w=shape[2])}}, tile
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               scratch_bytes=mp.scratch_bytes(), note=f"axes {axes}", band=band,
                               scratch_calls=[f"dsmn_mean_s8_scratch_bytes(&{p})"]))

    def _pool(self, op, fn):
        o = op.options
        x, y = op.inputs[0], op.outputs[0]
        self.check_int8(op, [x, y])
        ish, osh = self.t(x).shape, self.t(y).shape
        if (self.qp(x) != self.qp(y)):
            raise _err(op, "input and output quantisation differ; pooling needs them equal")
        pad_h = tflite_padding(o.padding, ish[1], o.filterHeight, o.strideH, 1, osh[1])
        pad_w = tflite_padding(o.padding, ish[2], o.filterWidth, o.strideW, 1, osh[2])
        amin, amax = self.act(op, o.fusedActivationFunction, y)
        di = self.dims_struct(ish)
        calls = []
        for t, y0, x0, dims in self._windows(y, osh):
            p = self.e.struct(PoolParams(o.strideH, o.strideW, o.filterHeight, o.filterWidth, pad_h,
                                         pad_w, amin, amax, y0, x0), "pp")
            calls.append((t, p, self.dims_struct(dims)))

        args = lambda p, do, xin: f"&{p}, &{di}, {xin}, &{do}"
        code, band_code = self._window_calls(fn, x, calls, args)
        wins = self._windows(y, osh)
        band = None
        if rows_of(ish) and rows_of(osh) and all(y0 == 0 for _, y0, _, _ in wins):
            cols = {t: {x: ColMap(o.strideW, pad_w, 1, o.filterWidth, ish[2], x0)}
                    for t, _, x0, _ in wins}
            band = RowBand({x: RowMap(o.strideH, pad_h, 1, o.filterHeight, ish[1])}, band_code,
                           rows=osh[1], cols=cols, tile=self._window_tile(fn, x, calls, args, cols))
        self.steps.append(Step(op.index, op.name, "kernel", [x], [t for t, _, _ in calls], code,
                               note=f"{o.filterHeight}x{o.filterWidth}" + (" +split" if len(calls) > 1 else ""),
                               band=band))

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
                               [y], code, note=f"axis {axis}",
                               band=self._concat_band(ins, y, axis, arr, consts)))

    def _concat_band(self, ins, y, axis, arr, consts):
        """RowBand of a CONCATENATION along mel or channels: each output row is the inputs'
        same rows side by side, so a band is the same copy with fewer outer rows."""
        shape = list(self.t(y).shape)
        if axis < 2 or not rows_of(shape) or any(consts[i] is not None for i in ins):
            return None
        if any(list(self.t(i).shape[:2]) != shape[:2] for i in ins):
            return None
        per_row = int(np.prod(shape[2:axis]))

        def band_code(ptr, lo, hi, scratch):
            lst = ", ".join(ptr(i, lo) for i in ins)
            return (f"{{ const int8_t *const srcs[{len(ins)}] = {{{lst}}}; "
                    f"dsmn_concat_s8({len(ins)}, srcs, {arr}, {(hi - lo) * per_row}, {ptr(y, lo)}); }}")
        return RowBand({i: RowMap(h=shape[1]) for i in ins}, band_code, rows=shape[1])

    def _alias(self, op):
        x, y = op.inputs[0], op.outputs[0]
        self.check_int8(op, [x, y])
        if self.qp(x) != self.qp(y):
            raise _err(op, "reshape changes quantisation")
        self.steps.append(Step(op.index, op.name, "alias", [x], [y], None, note="view"))

    op_SQUEEZE = op_EXPAND_DIMS = _alias

    def op_RESHAPE(self, op):
        resolve_reshape(self, op, strict=True)
        self._alias(op)

    def _gather(self, op, x, y, offset, dims, strides, note):
        p = self.e.struct(GatherParams(list(dims), list(strides), offset), "gp")

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
        p = self.e.struct(RequantParams(zi, zo, m, s), "qp")
        count = int(np.prod(self.t(y).shape))

        def code(ptr, scratch):
            return f"dsmn_requantize_s8(&{p}, {count}, {ptr[x]}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               band=self._rowwise_band(x, y, lambda n, a, o: f"dsmn_requantize_s8(&{p}, {n}, {a}, {o});")))

    @staticmethod
    def _q4_input_params(si, zi):
        """Input multiplier/shift/range radius for LOGISTIC and TANH (4 integer bits), as
        TFLM's Prepare computes them: frexp of scale * 2^27, radius from CalculateInputRadius."""
        real = float(si) * float(1 << (31 - 4))
        q, left = math.frexp(real)
        mult = int(round_away(q * (1 << 31)))
        radius = int(math.floor(1.0 * ((1 << 4) - 1) * (1 << (31 - 4)) / (1 << left))) if left >= 0 else \
            int(math.floor(1.0 * ((1 << 4) - 1) * (1 << (31 - 4)) * (1 << -left)))
        return LogisticParams(zi, radius, mult, left)

    def _q4_activation(self, op, fn, out_scale, out_zp):
        x, y = op.inputs[0], op.outputs[0]
        self.check_int8(op, [x, y])
        (si, zi), (so, zo) = self.qp(x), self.qp(y)
        if zo != out_zp or np.float32(so) != np.float32(out_scale):
            raise _err(op, f"output quantisation must be scale 1/{int(1 / out_scale)}, zero point "
                           f"{out_zp} (got {so}, {zo})")
        p = self.e.struct(self._q4_input_params(si, zi), "lp")
        count = int(np.prod(self.t(y).shape))

        def code(ptr, scratch):
            return f"{fn}(&{p}, {count}, {ptr[x]}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               band=self._rowwise_band(x, y, lambda n, a, o: f"{fn}(&{p}, {n}, {a}, {o});")))

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
        p = self.e.struct(SoftmaxParams(mult, left, -radius), "sm")

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
        ind, outd = dims4(shape), dims4(out)
        before = [0] * (4 - len(shape)) + [int(a) for a, _ in pads]
        p = self.e.struct(PadParams(list(ind), list(outd), before, pad_value), "pd")

        def code(ptr, scratch):
            return f"dsmn_pad_s8(&{p}, {ptr[x]}, {ptr[y]});"
        self.steps.append(Step(op.index, op.name, "kernel", [x], [y], code,
                               note=f"pads {pads.tolist()} value {pad_value}"))

    op_PADV2 = op_PAD


