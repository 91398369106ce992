"""Report pass: memory.json / memory.txt - the plan chosen, the arena, the trade-off table,
per-step buffers and the step labels the profiling runner prints against."""

from dsmn_host.compiler.emit import scratch_checks
from dsmn_host.compiler.kernels import runtime_code_bytes_estimate
from dsmn_host.compiler.plan import arena_size


def _counts(items, attr="op_name"):
    """Op name -> count: of the generated steps (what runs), or of the model's operators."""
    c = {}
    for it in items:
        name = getattr(it, attr)
        c[name] = c.get(name, 0) + 1
    return c


def build_report(graph, tp, flash, path, plans, plan_name, budget, marks, folded, min_arena_bytes=0):
    plan, units = tp.plan, tp.units
    # band calls (calls) run per inference; call statements (loops rerolled) are the code
    statements = {m["unit"]: m["call_statements"] for m in marks}
    per_op, k = [], 0
    for ui, u in enumerate(units):
        for st in u.steps:
            outs = []
            for t in st.outputs:
                tt = graph.tensors[t]
                if t in u.streamed:
                    off0, cap, rb = u.buffers[t]
                    buf, off = f"band{ui}", plan.offsets[plan.scratch[ui]] + off0
                    held = cap * rb
                else:
                    buf, off, held = str(plan.owner[t]), plan.offsets.get(plan.owner[t]), tt.nbytes
                outs.append({"tensor": t, "name": tt.name or f"tensor {t}", "shape": list(tt.shape),
                             "bytes": tt.nbytes, "held_bytes": held, "buffer": buf, "offset": off})
            per_op.append({"step": k, "unit": ui, "op_index": st.op_index, "op": st.op_name,
                           "kind": st.kind, "note": st.note, "outputs": outs,
                           "scratch_bytes": st.scratch_bytes})
            k += 1
    live = []
    for b in plan.live_at_peak:
        if isinstance(b, str) and b.startswith("scratch"):
            ui = int(b[len("scratch"):])
            names = [f"band buffers of unit {ui}" if units[ui].tiled else "scratch"]
        else:
            names = [graph.tensors[t].name or f"tensor {t}" for t, o in plan.owner.items() if o == b]
        live.append({"buffer": str(b), "bytes": plan.sizes[b], "offset": plan.offsets[b],
                     "tensors": names, "lifetime": list(plan.lifetimes[b])})
    code = runtime_code_bytes_estimate()
    real_steps = [st for u in units for st in u.steps]
    return {
        "model": str(path),
        "plan": plan_name,
        "ram_budget_bytes": budget,
        "peak_activation_bytes": plan.arena_bytes,
        "arena_bytes": arena_size(plan.arena_bytes, min_arena_bytes),
        "arena_grown_for": ("the on-device front end's scratch (lent the arena)"
                            if min_arena_bytes > plan.arena_bytes else None),
        "estimated_instructions": int(round(tp.cost)),
        "live_sum_at_peak_bytes": sum(plan.sizes[b] for b in plan.live_at_peak),
        "scratch_bytes": max([st.scratch_bytes for st in tp.steps] or [0]),
        "input_bytes": graph.tensors[graph.inputs[0]].nbytes,
        "output_bytes": graph.tensors[graph.outputs[0]].nbytes,
        "flash_bytes": sum(flash.values()) + (code or 0),
        "flash_breakdown": dict(flash, kernel_code=code),
        "peak_step": plan.peak_step,
        "peak_op": tp.steps[plan.peak_step].op_name if tp.steps else None,
        "live_at_peak": live,
        "tradeoff": [dict(p.describe(), chosen=p is tp) for p in plans],
        "units": [{"unit": ui, "tiled": u.tiled, "bands": u.bands if u.tiled else 1,
                   "strips": u.strips if u.tiled else 1,
                   "steps": [st.op_index for st in u.steps],
                   "band_buffer_bytes": u.scratch_bytes if u.tiled else 0,
                   "calls": u.calls, "call_statements": statements.get(ui, 1),
                   "moved_bytes": u.moved_bytes,
                   # per step: columns computed over the tensor's width (> 1: halo columns
                   # recomputed in neighbouring mel strips)
                   "columns_computed": ([round(c, 4) for c in u.computed] if u.tiled and u.strips > 1
                                        else [1.0] * len(u.steps))} for ui, u in enumerate(units)],
        "marks": marks,
        "scratch_checks": len(scratch_checks(tp)),
        "ops": per_op,
        "op_counts": _counts(real_steps),
        "model_op_counts": _counts(graph.operators, attr="name"),
        "folded_op_counts": _counts([op for op in graph.operators if op.index in folded], attr="name"),
        "notes": "arena excludes the caller's input and output buffers; kernel_code is the "
                 "Cortex-M4 -Os text size of firmware/runtime (None if arm-none-eabi-gcc is missing); "
                 "estimated_instructions is the planner's cost model, not a measurement",
    }


def report_text(r):
    lines = [f"model: {r['model']}",
             f"plan: {r['plan']}" + (f" (budget {r['ram_budget_bytes']} B)" if r["ram_budget_bytes"] else ""),
             f"peak activation: {r['peak_activation_bytes']} B, arena {r['arena_bytes']} B"
             + (f" (grown for {r['arena_grown_for']})" if r["arena_grown_for"] else ""),
             f"estimated instructions: {r['estimated_instructions']}",
             f"flash: {r['flash_bytes']} B  " + ", ".join(f"{k}={v}" for k, v in r["flash_breakdown"].items()),
             "plans considered (peak B, est. instructions, tiled units/steps, mel strips, ECA keep/recompute):"]
    for p in r["tradeoff"]:
        lines.append(f"  {'*' if p['chosen'] else ' '} {p['peak_bytes']:>8}  {p['estimated_instructions']:>11}  "
                     f"{p['tiled_units']:>3}/{p['tiled_steps']:<3}  strips {p.get('strips', 1)}  "
                     f"keep {p['keep']} recompute {p['recompute']}")
    lines.append("tiled units (bands x mel strips, line buffer bytes):")
    for u in r["units"]:
        if u["tiled"]:
            lines.append(f"  unit {u['unit']:<3} {len(u['steps']):>3} steps  {u['bands']:>3} bands x "
                         f"{u['strips']} strips  {u['band_buffer_bytes']:>7} B")
    lines.append(f"peak at unit {r['peak_step']} ({r['peak_op']}); live buffers:")
    for b in r["live_at_peak"]:
        lines.append(f"  {b['bytes']:>8} B @ {b['offset']:>8}  units {b['lifetime']}  {', '.join(b['tensors'])}")
    lines.append("per-op outputs (held: bytes resident; band buffers hold a few rows):")
    for o in r["ops"]:
        for t in o["outputs"]:
            lines.append(f"  {o['step']:>4} u{o['unit']:<3} {o['op']:<18} {str(t['shape']):<22} {t['bytes']:>8} B "
                         f"held {t['held_bytes']:>7} buf {t['buffer']} @ {t['offset']}  {o['note']}")
    return "\n".join(lines) + "\n"
