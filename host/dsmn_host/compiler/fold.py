"""Fold pass: evaluate shape-only subgraphs at generation time.

Every tensor shape is static, so SHAPE -> STRIDED_SLICE -> PACK -> ... -> RESHAPE's new_shape
chains are constants; folding them here means the kernels never see them and they cost no
flash.
"""

import numpy as np

from dsmn_host.compiler.ir import op_error as _err


def fold_shapes(ir):
    """Evaluate shape-only subgraphs (SHAPE -> STRIDED_SLICE -> PACK -> ... -> RESHAPE's
    new_shape) here, in numpy: every tensor shape is static, so an op whose inputs are all
    constants (or whose only input is read by SHAPE) and whose outputs are int32/int64 is
    a constant too. Its outputs get constant data (consumers then treat them like any
    other constant operand); the op itself emits no code and no flash."""
    ir.folded = {}
    for op in ir.g.operators:
        fn = _FOLDERS.get(op.name)
        if fn is None or not op.outputs:
            continue
        if any(ir.t(o).dtype not in (np.int32, np.int64) for o in op.outputs):
            if op.name == "RESHAPE" and op.inputs:
                # A data RESHAPE: fix a placeholder output shape now, so that a later
                # SHAPE of its output sees the real one.
                resolve_reshape(ir, op, strict=False)
            continue
        ins = [i for i in op.inputs if i >= 0]
        if op.name != "SHAPE" and any(ir.t(i).data is None for i in ins):
            continue
        if op.name != "SHAPE" and any(not np.issubdtype(ir.t(i).dtype, np.integer)
                                      for i in ins):
            continue
        try:
            vals = fn(ir, op)
        except (ValueError, IndexError, TypeError, AttributeError, ZeroDivisionError):
            # malformed or unusual options: leave the op to the lowering (or refusal)
            vals = None
        if vals is None:
            continue
        for o, v in zip(op.outputs, vals):
            t = ir.t(o)
            v = np.asarray(v).astype(t.dtype)
            if v.size == int(np.prod(t.shape, dtype=np.int64)):
                v = v.reshape(t.shape)
            else:  # placeholder shape of a dynamic-shape tensor: the value decides
                t.shape = tuple(v.shape)
            t.data = v
        ir.folded[op.index] = op.name


def resolve_reshape(ir, op, strict):
    """The output keeps its stored shape (as TFLM does) unless that shape is a
    placeholder left by a dynamic dimension (wrong element count): then the new_shape
    input, constant or folded from a SHAPE chain, gives it, with -1 resolved."""
    x, y = op.inputs[0], op.outputs[0]
    n_in = int(np.prod(ir.t(x).shape, dtype=np.int64))
    ty = ir.t(y)
    if int(np.prod(ty.shape, dtype=np.int64)) != n_in:
        new = None
        if len(op.inputs) > 1 and op.inputs[1] >= 0 and ir.t(op.inputs[1]).data is not None:
            new = [int(v) for v in ir.t(op.inputs[1]).data.reshape(-1)]
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
                           f"elements, input {list(ir.t(x).shape)} has {n_in}, and the new "
                           f"shape {new} does not resolve it")
        ty.shape = tuple(new)


# Generation-time evaluation of shape-only ops. Each returns the output values, or None to
# leave the op alone (it is then lowered or refused as usual).

def _fold_shape(ir, op):
    return [np.asarray(ir.t(op.inputs[0]).shape, np.int64)]


def _fold_strided_slice(ir, op):
    o = op.options
    x, b, e, s = (ir.t(i).data for i in op.inputs[:4])
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


def _fold_pack(ir, op):
    return [np.stack([ir.t(i).data for i in op.inputs], axis=int(op.options.axis))]


def _fold_concat(ir, op):
    if op.options.fusedActivationFunction:
        return None
    return [np.concatenate([ir.t(i).data.reshape(ir.t(i).shape or (1,)) for i in op.inputs],
                           axis=int(op.options.axis))]


def _fold_gather(ir, op):
    o = op.options
    if o is not None and getattr(o, "batchDims", 0):
        return None
    axis = int(o.axis) if o is not None else 0
    return [np.take(ir.t(op.inputs[0]).data, ir.t(op.inputs[1]).data, axis=axis)]


def _fold_binary(fn):
    def fold(ir, op):
        if op.options is not None and getattr(op.options, "fusedActivationFunction", 0):
            return None
        a, b = (ir.t(i).data.astype(np.int64) for i in op.inputs[:2])
        return [fn(a, b)]
    return fold


def _floor_div(a, b):
    if np.any(b == 0):
        raise ZeroDivisionError("integer division by zero")
    return np.floor_divide(a, b)


def _fold_reduce_prod(ir, op):
    axes = tuple(int(a) for a in ir.t(op.inputs[1]).data.reshape(-1))
    keep = bool(getattr(op.options, "keepDims", False))
    return [np.prod(ir.t(op.inputs[0]).data.astype(np.int64), axis=axes, keepdims=keep)]


def _fold_same_values(ir, op):
    """RESHAPE/SQUEEZE/EXPAND_DIMS/CAST of an integer constant: same values, output shape."""
    return [ir.t(op.inputs[0]).data.reshape(-1)]


_FOLDERS = {
    "SHAPE": _fold_shape, "STRIDED_SLICE": _fold_strided_slice, "PACK": _fold_pack,
    "CONCATENATION": _fold_concat, "GATHER": _fold_gather,
    "ADD": _fold_binary(np.add), "SUB": _fold_binary(np.subtract),
    "MUL": _fold_binary(np.multiply), "FLOOR_DIV": _fold_binary(_floor_div),
    "REDUCE_PROD": _fold_reduce_prod, "RESHAPE": _fold_same_values,
    "SQUEEZE": _fold_same_values, "EXPAND_DIMS": _fold_same_values, "CAST": _fold_same_values,
}


