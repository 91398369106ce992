"""Plan pass: buffer lifetimes -> arena offsets (liveness, then placement).

Works on any list of Steps; a tiled unit (tile.py) appears here as one Step whose scratch
is its band buffers, so one planner places both.
"""

from dataclasses import dataclass, field

ALIGN = 16


def _align(n, a=ALIGN):
    return (n + a - 1) // a * a


def arena_size(peak, min_arena_bytes=0):
    """The arena dsmn_model.c declares: the plan's peak, never an empty array, and at least
    `min_arena_bytes` (what the firmware lends the arena for between inferences)."""
    return max(peak, ALIGN, min_arena_bytes)


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


