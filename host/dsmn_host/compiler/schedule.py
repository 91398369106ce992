"""Schedule pass: the one operator scheduler (used by `convert` on TFLite operators too).

Greedy list scheduling: always run the ready node that grows live memory least (frees most),
ties in the given order. It never changes a value, only the order; a caller keeps the new
order only when its own planner says the peak went down.
"""


def min_memory_order(nodes, sizes, keep=(), root=None):
    """A topological order of `nodes` (each a pair (inputs, outputs) of tensor ids).

    sizes: bytes of each tensor that occupies memory (others are free: constants, views);
    keep: tensors never freed (graph outputs); root: tensor -> storage it shares (a view and
    its source are one buffer, alive until the last reader of either). Returns indices.
    """
    root = root or {}

    def r(t):
        return root.get(t, t)

    producer = {}
    for k, (_, outs) in enumerate(nodes):
        for t in outs:
            producer[t] = k
    deps = [{producer[t] for t in ins if t in producer and producer[t] != k}
            for k, (ins, _) in enumerate(nodes)]
    remaining = {}
    for k, (ins, _) in enumerate(nodes):
        for t in set(map(r, ins)):
            remaining.setdefault(t, set()).add(k)
    keep = {r(t) for t in keep}
    allocated = set()
    done, order = set(), []
    while len(order) < len(nodes):
        best, best_key = None, None
        for k in range(len(nodes)):
            if k in done or not deps[k] <= done:
                continue
            ins, outs = nodes[k]
            grow = sum(sizes.get(r(t), 0) for t in set(map(r, outs)) if r(t) not in allocated)
            free = sum(sizes.get(t, 0) for t in set(map(r, ins))
                       if t not in keep and remaining.get(t, set()) <= {k})
            key = (grow - free, k)
            if best_key is None or key < best_key:
                best, best_key = k, key
        if best is None:   # a cycle: not a DAG, keep the given order
            return list(range(len(nodes)))
        order.append(best)
        done.add(best)
        allocated.update(map(r, nodes[best][1]))
        for t in set(map(r, nodes[best][0])):
            remaining.get(t, set()).discard(best)
    return order


def schedule_steps(graph, steps):
    """Steps reordered by min_memory_order (DSMN blocks profit: the shortcut 1x1 convs on
    the split halves run first, so the halves die before the long depthwise chain)."""
    root = {}
    for st in steps:
        if st.kind == "alias":
            root[st.outputs[0]] = root.get(st.inputs[0], st.inputs[0])
    sizes = {}
    for st in steps:
        if st.kind != "alias":
            for t in st.outputs:
                sizes[t] = graph.tensors[t].nbytes
    order = min_memory_order([(st.inputs, st.outputs) for st in steps], sizes,
                             keep=graph.outputs, root=root)
    return [steps[k] for k in order]
