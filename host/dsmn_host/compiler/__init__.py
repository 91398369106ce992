"""The dsmn ahead-of-time compiler: an int8 .tflite -> static C on one planned arena.

Passes, one module each, over one IR (ir.py):
  read -> fold -> fuse -> lower -> schedule -> tile -> plan -> emit (reroll) -> report
`generate` runs them and writes dsmn_model.c/.h, memory.json and memory.txt.
"""

import hashlib
import json
from pathlib import Path

from dsmn_host.compiler.emit import emit
from dsmn_host.compiler.kernels import (ARM_FLAGS, RUNTIME_DIR, TEMPLATE_DIR, runtime_include_dirs,
                                        runtime_sources)
from dsmn_host.compiler.lower import SUPPORTED_OPS, Lowering
from dsmn_host.compiler.plan import plan_memory
from dsmn_host.compiler.read import read_model
from dsmn_host.compiler.report import build_report, report_text
from dsmn_host.compiler.schedule import schedule_steps
from dsmn_host.compiler.tile import STRIPS, choose, refine_bands, search
from dsmn_host.errors import DsmnError

PLANS = ("fast", "min")
_PLANS = {}   # the last model's lowering and plans: generate() reads, never changes them


def compile_plans(graph, band_rows=None, strips=None):
    """Lower, schedule, and search the tiled plans of `graph`: (lowering, plans). band_rows:
    rows a tiled unit's sources advance per iteration, strips: mel strips of every tiled
    unit that can (None for both: plans for 1, 2 and 4 rows, and 1, 2 and 4 strips)."""
    low = Lowering(graph)
    steps = low.lower()
    reordered = schedule_steps(graph, steps)
    if plan_memory(graph, reordered).arena_bytes < plan_memory(graph, steps).arena_bytes:
        steps = reordered
    if band_rows is not None or strips is not None:
        return low, search(graph, steps, band_rows or 1, strips=strips or 1)
    # taller bands: fewer kernel calls (each re-does its setup), a few more rows held
    plans = search(graph, steps, 1)
    for rows in (2, 4):
        plans += search(graph, steps, rows)[1:]
    # branchy blocks (concatenated branches) need several cuts merged at once
    plans += search(graph, steps, 1, runs=True)[1:]
    # mel strips: line buffers a fraction of a row wide, halo columns recomputed
    for strips in STRIPS[1:]:
        plans += search(graph, steps, 1, strips=strips)[1:]
    return low, plans


def generate(tflite_path, out_dir, ram_budget=None, plan=None, board_ram=None, band_rows=None,
             strips=None, min_arena_bytes=0):
    """Write dsmn_model.c, dsmn_model.h, memory.json and memory.txt for `tflite_path`.

    plan: "fast" (untiled), "min" (smallest arena), or None: the fastest plan whose arena
    fits `ram_budget` bytes (no budget: fast). `min_arena_bytes`: the arena is at least this
    big (the firmware lends it to the on-device front end between inferences; arena_bytes in
    the report, the plan's peak stays peak_activation_bytes). Returns the report (memory.json's
    content).
    """
    if plan is not None and plan not in PLANS:
        raise DsmnError(f"unknown plan {plan!r}; use one of {', '.join(PLANS)}")
    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    key = (hashlib.sha256(tflite_path.read_bytes()).hexdigest() if tflite_path.is_file() else None,
           band_rows, strips)
    if key in _PLANS:   # same model again (another budget / plan): reuse the search
        graph, low, plans = _PLANS[key]
    else:
        graph = read_model(tflite_path)
        low, plans = compile_plans(graph, band_rows, strips)
        _PLANS.clear()
        _PLANS[key] = (graph, low, plans)
    chosen = choose(plans, ram_budget, plan)
    if chosen is None:
        smallest = min(p.peak for p in plans)
        where = f" ({board_ram})" if board_ram else ""
        raise DsmnError(f"{tflite_path}: no plan fits the RAM budget of {ram_budget} B{where}; the "
                        f"smallest activation arena reachable is {smallest} B (--plan min)")
    name = plan or ("fast" if chosen is plans[0] else
                    "min" if chosen.peak == min(p.peak for p in plans) else "budget")
    # strips asked for stay as asked (where a unit can take them); else refine picks
    refined = refine_bands(graph, chosen, chosen.peak,
                           strip_counts=STRIPS if strips is None else (strips,))
    plans = [refined if p is chosen else p for p in plans]
    chosen = refined
    # constants only band calls read (RowBand.consts): in this plan's C and flash if it has
    # them, once (a recomputed step is in two units)
    consts = list(dict.fromkeys(k for u in chosen.units if u.tiled for st in u.steps for k in st.band.consts))
    flash = dict(low.e.flash, tables=low.e.flash["tables"] + sum(b for _, b in consts))
    h, c, marks = emit(graph, chosen, low.e.decls + [d for d, _ in consts], tflite_path.name,
                       low.e.struct_sizes, min_arena_bytes)
    report = build_report(graph, chosen, flash, tflite_path, plans, name, ram_budget,
                          marks, low.folded, min_arena_bytes)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dsmn_model.h").write_text(h)
    (out_dir / "dsmn_model.c").write_text(c)
    (out_dir / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "memory.txt").write_text(report_text(report))
    return report


__all__ = ["generate", "compile_plans", "SUPPORTED_OPS", "ARM_FLAGS", "RUNTIME_DIR", "TEMPLATE_DIR",
           "runtime_sources", "runtime_include_dirs"]
