"""Emit pass: the chosen plan as C (layout in templates/runtime/, decisions made here)."""

from dsmn_host.compiler.ir import row_bytes
from dsmn_host.compiler.kernels import TEMPLATE_DIR
from dsmn_host.compiler.plan import arena_size
from dsmn_host.compiler.reroll import reroll_unit
from dsmn_host.compiler.tile import emit_unit


def render(name, **ctx):
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template(name).render(**ctx)


def scratch_checks(tp):
    """The checks dsmn_init() makes: per kernel call of every step, its kernel's
    *_scratch_bytes() call (a band call's own in a tiled unit) against the bytes the plan
    reserved for the step, labelled with the step's DSMN_MARK number."""
    checks, mark = [], 0
    for u, st in zip(tp.units, tp.steps):
        if st.kind == "alias":
            continue
        for s in u.steps:
            sc = s.band.scratch_calls if u.tiled and s.band.scratch_calls is not None else s.scratch_calls
            checks += [{"expr": e, "bytes": s.scratch_bytes, "mark": mark,
                        "label": f"op {s.op_index} {s.op_name}"} for e in sc]
        mark += 1
    return checks


def emit(graph, tp, decls, model_name, struct_sizes=None, min_arena_bytes=0):
    """(dsmn_model.h, dsmn_model.c, marks): marks label every DSMN_MARK (unit) in order."""
    plan = tp.plan

    def ptr_full(t, row=0):
        b = plan.owner[t]
        off = row * row_bytes(graph.tensors[t]) if row else 0
        if b == "in":
            return f"((const int8_t *)input + {off})" if off else "((const int8_t *)input)"
        if b == "out":
            return f"(output + {off})" if off else "output"
        return f"(dsmn_arena + {plan.offsets[b] + off})"

    calls, marks, units = [], [], []
    for k, (u, st) in enumerate(zip(tp.units, tp.steps)):
        if st.kind == "alias":
            continue
        if u.tiled:
            # one function per tiled unit: small functions compile fast and profile per unit
            fname = f"dsmn_unit{k}"
            # a unit whose tensors are all held whole has no scratch of its own
            body = reroll_unit(emit_unit(graph, u, ptr_full, plan.offsets[plan.scratch[k]]
                                         if k in plan.scratch else 0))
            units.append({"name": fname, "code": "\n    ".join(s.replace("\n", "\n    ") for s in body)})
            # what the code's size follows once bands are loops (the band calls it makes: u.calls)
            statements = sum(1 for s in body for line in s.split("\n") if line.rstrip().endswith(");"))
            code = f"{fname}(input, output);"
            label = (f"ops {', '.join(str(s.op_index) for s in u.steps)}: "
                     f"{len(u.steps)} steps in {u.bands} bands")
            kernel = "tiled"
        else:
            ptrs = {t: ptr_full(t) for t in st.inputs + st.outputs}
            scratch = f"(dsmn_arena + {plan.offsets[plan.scratch[k]]})" if k in plan.scratch else "NULL"
            code = st.code(ptrs, scratch)
            tshapes = " ".join(str(list(graph.tensors[t].shape)) for t in st.outputs)
            label = f"op {st.op_index}: {st.op_name} {st.note} -> {tshapes}".strip()
            kernel = code.split("(", 1)[0].strip("{ ").split()[-1] if "(" in code else "memcpy"
        traced = sorted(u.materialized) if u.tiled else st.outputs
        calls.append({"comment": label, "code": code,   # trace: -DDSMN_TRACE (dsmn_host.deploy.compare)
                      "trace": [{"tensor": t, "ptr": ptr_full(t), "bytes": graph.tensors[t].nbytes}
                                for t in traced]})
        marks.append({"mark": len(marks), "label": label, "kernel": kernel, "unit": k,
                      "call_statements": statements if u.tiled else 1})
    gin, gout = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    tail = []
    if plan.owner[graph.outputs[0]] == "in":
        tail.append(f"memcpy(output, input, {gout.nbytes});")
    ctx = dict(model_name=model_name, decls=decls, calls=calls, tail=tail, units=units,
               scratch_checks=scratch_checks(tp),
               struct_sizes=sorted((struct_sizes or {}).items()),
               arena_bytes=arena_size(plan.arena_bytes, min_arena_bytes), input_bytes=gin.nbytes,
               output_bytes=gout.nbytes, input_shape=list(gin.shape), output_shape=list(gout.shape),
               input_scale=float(gin.scale[0]) if len(gin.scale) else 0.0,
               input_zero_point=int(gin.zero_point[0]) if len(gin.zero_point) else 0,
               output_scale=float(gout.scale[0]) if len(gout.scale) else 0.0,
               output_zero_point=int(gout.zero_point[0]) if len(gout.zero_point) else 0)
    return render("dsmn_model.h.j2", **ctx), render("dsmn_model.c.j2", **ctx), marks
