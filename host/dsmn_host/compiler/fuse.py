"""Fuse pass: pick the rewrites an ahead-of-time compiler can do.

The decisions are recorded on the IR (split_parts, skip, sparable) and the lower pass reads
them; nothing is emitted here.
"""

import numpy as np


def find_fusions(ir):
    """Pick the rewrites an ahead-of-time compiler can do: SPLIT written by its producer,
    and the Sparable unit (two depthwise + ADD + constant MUL/ADD tail) as one kernel."""
    cons = ir.consumers()
    outs = set(ir.g.outputs)
    producer = {o: op for op in ir.g.operators for o in op.outputs}
    ir.split_parts, ir.skip, ir.sparable = {}, set(), {}
    for op in ir.g.operators:
        if op.name not in ("SPLIT", "SPLIT_V"):
            continue
        x = op.inputs[1] if op.name == "SPLIT" else op.inputs[0]
        ax_t = op.inputs[0] if op.name == "SPLIT" else op.inputs[2]
        src = producer.get(x)
        if (src is None or src.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D",
                                            "MAX_POOL_2D") or len(cons.get(x, [])) != 1
                or x in outs or ir.t(ax_t).data is None):
            continue
        shape = ir.t(x).shape
        axis = int(ir.t(ax_t).data.reshape(-1)[0]) % len(shape)
        if axis not in (1, 2) or len(shape) != 4 or any(ir.qp(y) != ir.qp(x) for y in op.outputs):
            continue
        parts, start = [], 0
        for y in op.outputs:
            n = ir.t(y).shape[axis]
            parts.append((y, axis, start, n))
            start += n
        ir.split_parts[x] = parts
        ir.skip.add(op.index)
    for op in ir.g.operators:
        if op.name != "ADD" or op.index in ir.skip:
            continue
        q, r = op.inputs[:2]
        pq, pr = producer.get(q), producer.get(r)
        if not (pq and pr and pq.name == pr.name == "DEPTHWISE_CONV_2D"):
            continue
        if pq.inputs[0] != pr.inputs[0] or q in outs or r in outs:
            continue
        if len(cons.get(q, [])) != 1 or len(cons.get(r, [])) != 1:
            continue
        if q in ir.split_parts or r in ir.split_parts:
            continue
        shp = ir.t(q).shape
        if shp != ir.t(pq.inputs[0]).shape or shp != ir.t(r).shape:
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
            if len(other) != 1 or ir.t(other[0]).data is None or ir.t(other[0]).dtype is not np.int8:
                break
            k = ir.t(other[0])
            if int(np.prod(k.shape)) not in (1, shp[3]) or (len(k.shape) and k.shape[-1] not in (1, shp[3])):
                break
            if n.outputs[0] in ir.split_parts:
                break
            tail.append(n)
            cur = n
        ir.sparable[op.index] = (pq, pr, tail)
        ir.skip.update({pq.index, pr.index} | {n.index for n in tail})
