"""Tile pass: run chains of row-local Steps in time bands, so their intermediates exist only
as a few rows.

A unit is a run of consecutive scheduled Steps that all have a RowBand. It executes as N
iterations; in iteration i every Step computes the next rows of its outputs, as many as the
unit's sinks (tensors other units read, and reductions) need by then - lazily, or eagerly
as far as its inputs allow when that narrows the data. A tensor produced and consumed inside
the unit (streamed) lives in a line buffer holding only the rows some consumer can still
read; when the buffer is full, the rows still needed move to its start (the halo rows are
kept, never recomputed). A global reduction (the ECA MEAN) inside a unit accumulates band by
band; a later consumer of the reduced tensor either reads it kept whole (keep) or its unit
recomputes the chain that produced it (recompute), trading instructions for RAM.

A unit whose every Step is also local along mel (W; RowBand.cols) can in addition run in
mel strips: the whole time schedule once per strip, each line buffer only strip-wide. The
sinks (tensors held whole, reduction inputs) are split into equal column ranges; walking
back, each tensor holds the columns its consumers in the strip reach (halo columns
recomputed in both neighbouring strips), as pieces: a producer feeding two distant column
ranges (a SPLIT into sub-bands that an ADD joins again) holds two pieces, not the span. A
reduction accumulates its strip's own columns, so the sums add up across strips.

The plan pass sees each unit as one Step whose scratch is its line buffers, so one planner
places everything; the search below walks from the untiled plan (fast) by merging units and
switching reductions to recompute, and records every plan it accepts (the trade-off table).
"""

import math
from dataclasses import dataclass, field

from dsmn_host.compiler.ir import Step, row_bytes

STRIPS = (1, 2, 4)   # mel strip counts the search and refine_bands try
from dsmn_host.compiler.plan import ALIGN, plan_memory


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


# Instruction estimate (Cortex-M4 + DSP). Calibrated loosely on model1's measured 48.1 M
# instructions for 8.6 M MACs; a ranking between plans, not a measurement (bench_plans.py
# measures the chosen plans on QEMU).
INSTR_PER_MAC = 3.0
INSTR_PER_ELEM = 10.0
INSTR_PER_CALL = 400.0
# A kernel call on one band re-does its border handling and the setup the generator did not
# prepare (RowBand.consts); measured on model1's min plan (QEMU mps2-an386: 5.3 M over 5,473
# band calls once recompute, halo columns and line-buffer moves are taken off).
INSTR_PER_BAND_CALL = 1000.0
INSTR_PER_MOVED_BYTE = 0.7   # the min plan's 2.52 MB of line-buffer moves took 1.79 M
# A banded Sparable runs the kernel's generic per-pixel path (its fast path needs the output
# window to match the input rows); an estimate of the extra per MAC over the fast path.
INSTR_PER_SPARABLE_BAND_MAC = 6.0


def step_cost(graph, st):
    if st.kind == "alias":
        return 0.0
    elems = sum(int(graph.tensors[t].nbytes) for t in st.outputs)
    return INSTR_PER_MAC * st.macs + INSTR_PER_ELEM * elems + INSTR_PER_CALL


@dataclass
class Unit:
    steps: list
    bands: int = 1
    band_rows: int = 1     # rows the sources advance per iteration
    # filled by analyse()
    materialized: set = field(default_factory=set)
    streamed: set = field(default_factory=set)
    externals: list = field(default_factory=list)
    runs: list = field(default_factory=list)        # (iteration, step j, lo, hi, lows) in order
    bases: list = field(default_factory=list)       # per run: streamed t -> first row held
    buffers: dict = field(default_factory=dict)     # streamed t -> (offset, cap rows, row bytes)
    accum: dict = field(default_factory=dict)       # j -> scratch offset (reductions)
    scratch_bytes: int = 0
    call_scratch: int = 0
    calls: int = 0
    moved_bytes: int = 0
    strips: int = 1        # mel strips (1: time bands only)
    pieces: list = field(default_factory=list)   # per strip: tensor -> [(a, b)] columns held
    outs: list = field(default_factory=list)     # per strip, per step j: tensor -> [(a, b)]
    computed: list = field(default_factory=list)  # per step j: columns computed / its width

    @property
    def tiled(self):
        return len(self.steps) > 1


def _width(graph, t):
    return int(graph.tensors[t].shape[2])


def _pix(graph, t):
    """Bytes of one pixel (all channels) of a 4-D tensor."""
    return row_bytes(graph.tensors[t]) // _width(graph, t)


def _merge(intervals):
    out = []
    for a, b in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _sinks(u):
    """Tensors whose columns a strip must produce exactly (its own range): those held
    whole, except reduction results, and reduction inputs."""
    reduced = {t for st in u.steps if st.band.reduce for t in st.outputs}
    return ([t for t in sorted(u.materialized) if t not in reduced] +
            [st.inputs[0] for st in u.steps if st.band.reduce])


def strippable(graph, u, strips):
    """The unit can run in `strips` mel strips: every step local along W, every tensor
    4-D, every sink at least `strips` columns wide."""
    if strips <= 1 or not u.tiled:
        return False
    for st in u.steps:
        if st.band.tile is None or st.band.cols is None:
            return False
        if any(len(graph.tensors[t].shape) != 4 for t in st.inputs + st.outputs):
            return False
    return all(_width(graph, t) >= strips for t in _sinks(u))


def strip_windows(graph, u):
    """Per strip: the columns every step computes (u.outs) and every tensor holds
    (u.pieces), walking back from the sinks' equal column ranges."""
    n = u.strips
    u.pieces, u.outs = [], []
    done = [0] * len(u.steps)
    for s in range(n):
        def part(t):
            w = _width(graph, t)
            return (s * w // n, (s + 1) * w // n)
        need = {t: [part(t)] for t in _sinks(u)}
        outs, pieces = [None] * len(u.steps), {}
        for j in range(len(u.steps) - 1, -1, -1):
            st = u.steps[j]
            if st.band.reduce:
                x = st.inputs[0]
                outs[j] = {x: [part(x)]}
                done[j] += part(x)[1] - part(x)[0]
                continue
            o = {}
            for t in st.outputs:
                o[t] = pieces[t] = _merge(need.get(t, []))
                done[j] += sum(b - a for a, b in o[t])
                for a, b in o[t]:
                    for i, cm in st.band.cols[t].items():
                        need.setdefault(i, []).append(cm.need(a, b))
            outs[j] = o
        for t in u.externals:
            pieces[t] = _merge(need.get(t, []))
        u.pieces.append(pieces)
        u.outs.append(outs)
    u.computed = []
    for j, st in enumerate(u.steps):
        ts = st.inputs[:1] if st.band.reduce else st.outputs
        u.computed.append(done[j] / max(1, sum(_width(graph, t) for t in ts)))


def build_units(steps, cuts, recompute, band_rows=1):
    """Units of the scheduled `steps`: tileable runs split at `cuts` (step positions), each
    non-tileable step alone; then recompute closures for the reductions in `recompute`
    (positions of reduce steps)."""
    units, cur = [], []
    for k, st in enumerate(steps):
        if st.band is None:
            if cur:
                units.append(Unit(cur))
                cur = []
            units.append(Unit([st]))
            continue
        reduced = {t for s in cur if s.band.reduce for t in s.outputs}
        if cur and (k in cuts or reduced & set(st.inputs)):
            units.append(Unit(cur))
            cur = []
        cur.append(st)
    if cur:
        units.append(Unit(cur))
    for u in units:
        u.band_rows = band_rows
    pos = {id(st): k for k, st in enumerate(steps)}
    for k in sorted(recompute):
        red = steps[k]
        t = red.inputs[0]
        home = next(u for u in units if any(s is red for s in u.steps))
        if not any(t in s.outputs for s in home.steps):
            continue
        for u in units:
            if u is home or not any(t in s.inputs for s in u.steps):
                continue
            if any(t in s.outputs for s in u.steps):
                continue
            if any(s.band is None for s in u.steps) or pos[id(u.steps[0])] < pos[id(red)]:
                continue
            u.steps = _closure(home.steps, t) + u.steps
    return units


def _closure(steps, t):
    """The steps of `steps` (in order) that `t` depends on inside them."""
    want, picked = {t}, []
    for st in reversed(steps):
        if st.band is not None and not st.band.reduce and want & set(st.outputs):
            picked.append(st)
            want.update(st.inputs)
    return list(reversed(picked))


def materialize_sets(graph, units):
    """Per unit, the tensors it must write whole: read by a unit that does not compute them
    itself, or graph outputs; only the first unit producing a tensor owns it."""
    owner = {}
    for u in units:
        for st in u.steps:
            for t in st.outputs:
                owner.setdefault(t, u)
    readers = {}
    for u in units:
        produced = {t for st in u.steps for t in st.outputs}
        for st in u.steps:
            for t in st.inputs:
                if t not in produced:
                    readers.setdefault(t, []).append(u)
    outs = set(graph.outputs)
    for u in units:
        produced = [t for st in u.steps for t in st.outputs]
        u.materialized = {t for t in produced if owner[t] is u and (
            t in outs or readers.get(t) or not u.tiled or
            any(st.band is not None and st.band.reduce and t in st.outputs for st in u.steps))}


def analyse(graph, u):
    """analyse_order under the better of two orders within an iteration: graph order, and
    graph order with the steps off the longest path moved to the end (a residual shortcut
    then writes its next row after the join has read the old one: one row less held)."""
    if len(u.steps) <= 1:
        return analyse_order(graph, u, list(range(len(u.steps))))
    steps = u.steps
    produced = {t: j for j, st in enumerate(steps) for t in st.outputs}
    depth = [0] * len(steps)
    for j in range(len(steps) - 1, -1, -1):
        cons = [c for c in range(j + 1, len(steps)) if set(steps[j].outputs) & set(steps[c].inputs)]
        depth[j] = 1 + max([depth[c] for c in cons] or [0])
    longest = max(depth)
    start = [0] * len(steps)
    for j, st in enumerate(steps):
        start[j] = max([start[produced[t]] + 1 for t in st.inputs if t in produced] or [0])
    critical = [start[j] + depth[j] == longest for j in range(len(steps))]
    late = [j for j in range(len(steps)) if critical[j]] + [j for j in range(len(steps)) if not critical[j]]
    best = None
    for order in (list(range(len(steps))), late):
        analyse_order(graph, u, order)
        if best is None or u.scratch_bytes < best[0]:
            best = (u.scratch_bytes, order)
    return analyse_order(graph, u, best[1])


def analyse_order(graph, u, order):
    """Rows per iteration, line buffer sizes, scratch layout and cost counters of a unit.

    Each iteration runs the unit's steps in `order`; a step reads the rows its producers
    have made so far (this iteration's when they ran before it). Sources (steps reading nothing the unit produces) advance one band per
    iteration; every other step runs as far as its inputs allow, at most its own rate, so
    line buffers stay a kernel window tall; the last iterations drain the chain."""
    steps = u.steps
    produced = {}
    for j, st in enumerate(steps):
        for t in st.outputs:
            produced.setdefault(t, j)
    u.streamed = {t for t in produced if t not in u.materialized}
    ext = []
    for st in steps:
        for t in st.inputs:
            if t not in produced and t not in ext:
                ext.append(t)
    u.externals = ext
    if not u.tiled:
        st = steps[0]
        u.scratch_bytes, u.calls = st.scratch_bytes, 1
        return u
    consumers = {}
    for j, st in enumerate(steps):
        for t in st.inputs:
            if t in produced:
                consumers.setdefault(t, []).append(j)
    source = [not any(t in produced for t in st.inputs) for st in steps]
    n = math.ceil(max([st.band.rows for st, s in zip(steps, source) if s] or [1]) / u.band_rows)
    cur = [0] * len(steps)
    need_cap = {t: 1 for t in u.streamed}
    runs = []          # (iteration, j, lo, hi, {t: first row still read}) in execution order
    i = 0
    while not all(cur[j] >= st.band.rows for j, st in enumerate(steps)) and i <= 4 * n + 64:
        for j in order:
            st = steps[j]
            h, lo = st.band.rows, cur[j]
            if source[j]:
                hi = min(h, math.ceil((i + 1) * h / n))
            else:
                hi, top = lo, min(h, lo + max(1, math.ceil(h / n)))
                while hi < top and all(st.band.maps[t].need(hi + 1) <= cur[produced[t]]
                                       for t in st.inputs if t in produced):
                    hi += 1
            if hi <= lo:
                continue
            cur[j] = hi
            lows = {}
            for t in st.outputs:
                if t in u.streamed and produced[t] == j:
                    cs = consumers.get(t, [])
                    lows[t] = min([steps[c].band.maps[t].first(cur[c]) for c in cs] or [hi])
                    need_cap[t] = max(need_cap[t], hi - lows[t])
            runs.append((i, j, lo, hi, lows))
        i += 1
    u.bands = i
    u.runs = runs
    if u.strips > 1:
        strip_windows(graph, u)
    off, u.buffers, u.accum = 0, {}, {}
    for t in sorted(u.streamed):
        rb = row_bytes(graph.tensors[t])
        if u.strips > 1:   # the widest strip's pieces, side by side
            rb = max(sum(b - a for a, b in p.get(t, [])) for p in u.pieces) * _pix(graph, t)
        u.buffers[t] = (off, need_cap[t], rb)
        off = _align(off + need_cap[t] * rb)
    per_call = 0
    for j, st in enumerate(steps):
        if st.band.reduce:
            u.accum[j] = off
            off = _align(off + st.scratch_bytes)
        else:
            per_call = max(per_call, st.scratch_bytes)
    u.call_scratch = off
    u.scratch_bytes = off + _align(per_call)
    u.calls = len(runs)
    u.moved_bytes = sum(nbytes for _, _, _, nbytes in _schedule_moves(u))
    if u.strips > 1:
        u.calls = sum(sum(len(p) for p in outs[j].values()) for outs in u.outs for _, j, _, _, _ in runs)
        u.moved_bytes *= u.strips
    return u


def _schedule_moves(u):
    """(run index, tensor, (old first row, new first row, rows up to), bytes) of every
    line-buffer shift; fills u.bases[run index] = {tensor: first held row} at that run."""
    base = {t: 0 for t in u.streamed}
    u.bases, moves = [], []
    for k, (i, j, lo, hi, lows) in enumerate(u.runs):
        for t, low in lows.items():
            _, cap, rb = u.buffers[t]
            if hi - base[t] > cap:
                moves.append((k, t, (base[t], low, lo), max(0, lo - low) * rb))
                base[t] = low
        u.bases.append(dict(base))
    return moves


def unit_cost(graph, u):
    if not u.tiled:
        return step_cost(graph, u.steps[0])
    if u.strips > 1:   # halo columns computed twice
        work = sum((step_cost(graph, st) - INSTR_PER_CALL) * c for st, c in zip(u.steps, u.computed))
    else:
        work = sum(step_cost(graph, st) - INSTR_PER_CALL for st in u.steps)
    return (work
            + INSTR_PER_SPARABLE_BAND_MAC * sum(st.macs for st in u.steps if st.op_name == "SPARABLE")
            + INSTR_PER_BAND_CALL * u.calls + INSTR_PER_MOVED_BYTE * u.moved_bytes)


def pseudo_step(u):
    """The Step the plan pass sees for a unit."""
    if not u.tiled:
        return u.steps[0]
    first = u.steps[0]
    return Step(first.op_index, "TILED", "kernel", list(u.externals), sorted(u.materialized),
                scratch_bytes=u.scratch_bytes,
                note=f"{len(u.steps)} steps in {u.bands} bands" +
                (f" x {u.strips} mel strips" if u.strips > 1 else ""),
                macs=sum(s.macs for s in u.steps))


@dataclass
class TiledPlan:
    units: list
    steps: list          # pseudo steps (what plan_memory placed)
    plan: object
    cost: float
    cuts: frozenset
    recompute: frozenset

    @property
    def peak(self):
        return self.plan.arena_bytes

    def describe(self):
        tiled = [u for u in self.units if u.tiled]
        return {"peak_bytes": self.peak, "estimated_instructions": int(round(self.cost)),
                "band_rows": max([u.band_rows for u in self.units if u.tiled] or [0]),
                "strips": max([u.strips for u in tiled] or [1]),
                "tiled_units": len(tiled),
                "tiled_steps": sum(len(u.steps) for u in tiled),
                "recompute": len(self.recompute),
                "keep": sum(1 for u in tiled for s in u.steps if s.band.reduce) - len(self.recompute)}


def evaluate(graph, steps, cuts, recompute, cache=None, band_rows=1, strips=1):
    """The plan for these cuts and recompute choices, every tiled unit that can in `strips`
    mel strips; `cache` (dict) reuses the analysis of units that recur between the plans a
    search evaluates."""
    units = build_units(steps, cuts, recompute, band_rows)
    materialize_sets(graph, units)
    for k, u in enumerate(units):
        u.strips = strips if strippable(graph, u, strips) else 1
        key = (tuple(id(s) for s in u.steps), frozenset(u.materialized), band_rows, u.strips)
        if cache is not None and key in cache:
            units[k] = cache[key]
            continue
        analyse(graph, u)
        if cache is not None:
            cache[key] = u
    pseudo = [pseudo_step(u) for u in units]
    plan = plan_memory(graph, pseudo)
    cost = sum(unit_cost(graph, u) for u in units)
    return TiledPlan(units, pseudo, plan, cost, frozenset(cuts), frozenset(recompute))


def _footprint(tp):
    return sum(tp.plan.sizes[b] for b in tp.plan.sizes if b not in ("in", "out"))


def search(graph, steps, band_rows=1, runs=False, strips=1):
    """Plans from the untiled one (fast) towards the smallest peak (min), each accepted move
    lowering the peak or, at equal peak, the bytes allocated. `runs`: when no single move
    helps, try merging runs of cuts (a greedy path that can end lower or higher than the
    single-move one: the caller keeps both). Returns the list of plans."""
    all_cuts = {k for k in range(1, len(steps))
                if steps[k].band is not None and steps[k - 1].band is not None}
    reducers = [k for k, st in enumerate(steps) if st.band is not None and st.band.reduce]
    cache = {}
    cur = evaluate(graph, steps, all_cuts, set(), cache, band_rows, strips)
    plans = [cur]

    def key(tp):
        return (tp.peak, _footprint(tp), tp.cost)
    # Phase 1 merges units only (no recompute: cheap moves first, so the plans a budget
    # picks early in the table pay only band overheads); phase 2 adds recompute moves.
    for allow_rc in (False, True):
        improved = True
        while improved:
            improved = False
            moves = [("cut", k) for k in sorted(cur.cuts)]
            if allow_rc:
                moves += [("rc", k) for k in reducers]
            for kind, k in moves:
                cuts, rc = set(cur.cuts), set(cur.recompute)
                if kind == "cut":
                    if k not in cuts:
                        continue
                    cuts.discard(k)
                else:
                    rc ^= {k}
                    cuts.discard(k)   # the reduction runs in the unit producing its input
                cand = evaluate(graph, steps, cuts, rc, cache, band_rows, strips)
                if key(cand) < key(cur):
                    cur = cand
                    plans.append(cur)
                    improved = True
            if not improved and runs:
                improved = _merge_runs(graph, steps, cur, plans, key, cache, band_rows, strips)
                cur = plans[-1]
    return plans


def _merge_runs(graph, steps, cur, plans, key, cache, band_rows, strips=1, longest=12):
    """When no single cut helps: the best merge of a run of consecutive cuts. A tensor read
    by several later steps (a branch point, a concatenation's inputs) stops being held whole
    only when every reader joins the unit, which no one merge achieves alone."""
    cuts = sorted(cur.cuts)
    best = None
    for n in range(2, longest + 1):
        for a in range(len(cuts) - n + 1):
            run = cuts[a:a + n]
            if run[-1] - run[0] != n - 1:
                continue
            cand = evaluate(graph, steps, set(cur.cuts) - set(run), set(cur.recompute), cache,
                            band_rows, strips)
            if key(cand) < key(best or cur):
                best = cand
    if best is None:
        return False
    plans.append(best)
    return True


def refine_bands(graph, tp, limit, heights=(2, 3, 4, 6, 8, 11, 16, 22, 44), strip_counts=STRIPS):
    """The plan `tp` with each tiled unit's band height raised and mel strip count changed
    where that lowers the cost and keeps the peak <= `limit`: a unit running while less is
    live than at the peak (the ECA's first, mean-only pass) can take tall bands and whole
    rows, paying fewer per-call setups and no halo columns, while the unit at the peak keeps
    its short bands and narrow strips."""
    import copy
    units = list(tp.units)
    best_cost, best_plan, best_steps = tp.cost, tp.plan, tp.steps
    for k, u in enumerate(tp.units):
        if not u.tiled:
            continue
        pick = None
        counts = strip_counts if u.strips in strip_counts else (u.strips,)
        for rows, strips in [(r, n) for r in (u.band_rows,) + tuple(heights) for n in counts]:
            if rows < u.band_rows or (rows, strips) == (u.band_rows, u.strips):
                continue
            if strips > 1 and not strippable(graph, u, strips):
                continue
            v = copy.copy(u)
            v.band_rows, v.strips = rows, strips
            analyse(graph, v)
            trial = units[:k] + [v] + units[k + 1:]
            pseudo = [pseudo_step(w) for w in trial]
            plan = plan_memory(graph, pseudo)
            cost = sum(unit_cost(graph, w) for w in trial)
            if plan.arena_bytes <= limit and cost < best_cost:
                best_cost, pick, best_plan, best_steps = cost, v, plan, pseudo
        if pick is not None:
            units[k] = pick
    if best_cost >= tp.cost:
        return tp
    return TiledPlan(units, best_steps, best_plan, best_cost, tp.cuts, tp.recompute)


def choose(plans, budget=None, mode=None):
    """mode 'fast' / 'min' forces an end; otherwise the cheapest plan whose peak fits
    `budget` (None: the fastest plan). Returns (plan, reason) or (None, smallest peak)."""
    if mode == "fast":
        return plans[0]
    if mode == "min":
        return min(plans, key=lambda p: (p.peak, p.cost))
    if budget is None:
        return plans[0]
    fit = [p for p in plans if p.peak <= budget]
    if not fit:
        return None
    return min(fit, key=lambda p: (p.cost, p.peak))


def _line_addr(off):
    """Row 0's address of a line buffer whose first held row is `off` bytes into the arena:
    below the arena once the band has moved on (the kernels index rows globally). One form
    for both signs, so the reroll pass sees the address advance band by band."""
    return f"DSMN_AT(dsmn_arena, {off})"


def emit_unit(graph, u, ptr_full, arena_off):
    """C statements of a tiled unit. ptr_full(t, row): address of row `row` of a tensor held
    whole (external or materialized); the unit's line buffers start at arena offset
    `arena_off`."""
    moves = {}
    for k, t, mv, _ in _schedule_moves(u):
        moves.setdefault(k, []).append((t, mv))
    lines = []

    def make_ptr(base):
        def ptr(t, row):
            if t in u.streamed:
                off0, _, rb = u.buffers[t]
                return _line_addr(arena_off + off0 + (row - base[t]) * rb)
            return ptr_full(t, row)
        return ptr

    for j, st in enumerate(u.steps):
        if st.band.reduce:
            lines.append(st.band.init(f"(dsmn_arena + {arena_off + u.accum[j]})"))
    if u.strips > 1:
        lines += _emit_strips(graph, u, ptr_full, arena_off, moves)
    for k, (i, j, lo, hi, _) in enumerate(u.runs if u.strips == 1 else []):
        st = u.steps[j]
        for t, (old, new, upto) in moves.get(k, []):
            off0, _, rb = u.buffers[t]
            if upto > new:
                lines.append(f"memmove(dsmn_arena + {arena_off + off0}, dsmn_arena + "
                             f"{arena_off + off0 + (new - old) * rb}, {(upto - new) * rb});")
        scratch = (f"(dsmn_arena + {arena_off + u.accum[j]})" if st.band.reduce
                   else f"(dsmn_arena + {arena_off + u.call_scratch})")
        lines.append(f"/* band {i}: op {st.op_index} {st.op_name} rows [{lo}, {hi}) */")
        lines.append(st.band.code(make_ptr(u.bases[k]), lo, hi, scratch))
    final = u.bases[-1] if u.bases else {}
    for j, st in enumerate(u.steps):
        if st.band.reduce:
            lines.append(st.band.finish(make_ptr(final), f"(dsmn_arena + {arena_off + u.accum[j]})"))
    return lines


def _emit_strips(graph, u, ptr_full, arena_off, moves):
    """The runs of a unit once per mel strip. A streamed tensor's pieces lie side by side in
    its line buffer, each `cap` rows of its own width (row stride); loc() is the address
    RowBand.tile asks for."""
    lines = []

    def piece_at(s, t, a, b):
        off0, cap, _ = u.buffers[t]
        poff, pix = off0, _pix(graph, t)
        for pa, pb in u.pieces[s][t]:
            if pa <= a and b <= pb:
                return poff, pa, pb - pa, pix
            poff += cap * (pb - pa) * pix
        raise AssertionError(f"tensor {t}: columns [{a}, {b}) not held in strip {s}")

    for s in range(u.strips):
        for k, (i, j, lo, hi, _) in enumerate(u.runs):
            st = u.steps[j]
            base = u.bases[k]
            for t, (old, new, upto) in moves.get(k, []):
                off0, cap, _ = u.buffers[t]
                if upto <= new:
                    continue
                poff, pix = off0, _pix(graph, t)
                for pa, pb in u.pieces[s].get(t, []):
                    prb = (pb - pa) * pix
                    lines.append(f"memmove(dsmn_arena + {arena_off + poff}, dsmn_arena + "
                                 f"{arena_off + poff + (new - old) * prb}, {(upto - new) * prb});")
                    poff += cap * prb

            def loc(t, row, a, b, s=s, base=base):
                if t in u.streamed:
                    poff, pa, w, pix = piece_at(s, t, a, b)
                    return _line_addr(arena_off + poff + (row - base[t]) * w * pix), pa, w
                return ptr_full(t, row), 0, _width(graph, t)
            outs = u.outs[s][j]
            if not any(outs.values()):
                continue
            scratch = (f"(dsmn_arena + {arena_off + u.accum[j]})" if st.band.reduce
                       else f"(dsmn_arena + {arena_off + u.call_scratch})")
            lines.append(f"/* strip {s} band {i}: op {st.op_index} {st.op_name} rows [{lo}, {hi}) */")
            lines.append(st.band.tile(loc, lo, hi, outs, scratch))
    return lines
