"""Per-layer comparison of the generated C against TFLite's reference kernels.

When a model's int8 outputs are not bit-exact, the logits only say that something is wrong;
this stage says where. The generated code is built with -DDSMN_TRACE, which makes every
step hand each tensor it wrote to the runner (a file on the host, semihosting on QEMU)
right after the step, so the arena plan and the kernels are the very ones of a normal build.
The same inputs go through TFLite's interpreter with its reference kernels
(OpResolverType.BUILTIN_REF) keeping every intermediate tensor; each op's output is compared
element by element. Tensors the runtime never stores (the inside of a fused Sparable) are
listed as fused, views (RESHAPE, SQUEEZE, EXPAND_DIMS) are compared through the tensor they
view.
"""

import json
import subprocess
import tempfile
from pathlib import Path

from dsmn_host.errors import DsmnError

VIEW_OPS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")


def read_trace(data):
    """Records of a -DDSMN_TRACE run (int32 tensor, int32 bytes, bytes; one set per
    inference): tensor index -> list of int8 arrays, one per inference."""
    import numpy as np

    out, k = {}, 0
    buf = memoryview(data)
    while k < len(buf):
        if k + 8 > len(buf):
            raise DsmnError(f"trace ends inside a record header at byte {k}")
        t, n = np.frombuffer(buf[k:k + 8], dtype="<i4")
        if n < 0 or k + 8 + n > len(buf):
            raise DsmnError(f"trace record for tensor {t} at byte {k} is cut short")
        out.setdefault(int(t), []).append(np.frombuffer(buf[k + 8:k + 8 + n], dtype=np.int8).copy())
        k += 8 + int(n)
    return out


def run_traced(gen_dir, inputs, target="host", timeout=600):
    """Build the generated code in `gen_dir` with -DDSMN_TRACE and run `inputs` (N x input
    bytes, int8) on `target`; returns (outputs, {tensor: [array per input]})."""
    from dsmn_host.deploy.runner import run_batch

    out, trace = run_batch(gen_dir, inputs, target=target, timeout=timeout, trace=True)
    return out, read_trace(trace)


def reference_tensors(model_path, inputs):
    """Every tensor of every inference through TFLite's reference kernels: tensor index ->
    list of arrays (one per input). Inputs are N x the model input's shape (batch 1)."""
    import numpy as np
    import tensorflow as tf

    it = tf.lite.Interpreter(
        model_path=str(model_path),
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    details = it.get_tensor_details()
    out = {}
    for x in inputs:
        it.set_tensor(inp["index"], np.asarray(x, np.int8).reshape(inp["shape"]))
        it.invoke()
        for d in details:
            try:
                v = it.get_tensor(d["index"])
            except ValueError:  # tensors without data (e.g. optional inputs)
                continue
            out.setdefault(d["index"], []).append(np.array(v, copy=True))
    return out


def compare_tensors(graph, ours, ref, tolerance=1):
    """One row per operator in graph order: its int8 output against the reference, over
    all inputs. Returns the result dict (rows, first differing op, first beyond tolerance)."""
    import numpy as np

    rows = []
    view_src = {}
    for op in graph.operators:
        for t in op.outputs:
            tt = graph.tensors[t]
            row = {"op_index": op.index, "op": op.name, "tensor": t,
                   "name": tt.name or f"tensor {t}", "shape": [int(s) for s in tt.shape]}
            rows.append(row)
            if tt.dtype is not np.int8:
                row["status"] = f"not compared ({np.dtype(tt.dtype).name}, shape-only)"
                continue
            src = t
            if src not in ours and op.name in VIEW_OPS and op.inputs:
                src = view_src.get(op.inputs[0], op.inputs[0])
                view_src[t] = src
            if src == graph.inputs[0]:
                got = [x.reshape(-1) for x in ref.get(src, [])]
            elif src in ours:
                got = ours[src]
            else:
                row["status"] = "fused (not stored by the runtime)"
                continue
            if t not in ref:
                row["status"] = "no reference tensor"
                continue
            want = [np.asarray(r).reshape(-1) for r in ref[t]]
            if len(got) != len(want) or any(g.size != w.size for g, w in zip(got, want)):
                row["status"] = "size mismatch"
                row["max_abs_diff"] = None
                continue
            d = np.concatenate([np.abs(g.astype(np.int32) - w.astype(np.int32))
                                for g, w in zip(got, want)])
            row.update(max_abs_diff=int(d.max()) if d.size else 0,
                       n_differ=int((d > 0).sum()), n_elements=int(d.size),
                       status="equal" if not d.any() else "differs")
            if src != t:
                row["status"] += f" (view of tensor {src})"
    compared = [r for r in rows if "max_abs_diff" in r]
    first = next((r for r in compared if r["max_abs_diff"] is None or r["max_abs_diff"] > 0), None)
    beyond = next((r for r in compared
                   if r["max_abs_diff"] is None or r["max_abs_diff"] > tolerance), None)
    return {"rows": rows, "tolerance": tolerance,
            "first_differing": first and {k: first[k] for k in ("op_index", "op", "tensor")},
            "first_beyond_tolerance": beyond and {k: beyond[k] for k in ("op_index", "op", "tensor")},
            "all_equal": first is None}


def compare(model_path, inputs, target="host", work_dir=None, tolerance=1):
    """Generate C for `model_path`, run `inputs` traced on `target`, compare every op's
    output with TFLite's reference kernels. Returns the result dict of compare_tensors plus
    the final outputs' agreement."""
    from dsmn_host.deploy import codegen
    from dsmn_host.compiler.tflite_reader import read_tflite

    model_path = Path(model_path)
    if not model_path.is_file():
        raise DsmnError(f"{model_path}: no such model file")
    graph = read_tflite(model_path)
    inputs = _inputs_for(graph, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(work_dir) if work_dir else Path(tmp) / "gen"
        codegen.generate(model_path, gen)
        out, ours = run_traced(gen, inputs, target)
    ref = reference_tensors(model_path, inputs)
    result = compare_tensors(graph, ours, ref, tolerance)
    result.update(model=str(model_path), target=target, n_inputs=int(inputs.shape[0]),
                  output_vs_tflm=_output_vs_tflm(model_path, inputs, out))
    t = result["output_vs_tflm"]
    result["ok"] = result["first_beyond_tolerance"] is None and (
        t["n_differ"] == 0 if t is not None else result["all_equal"])
    return result


def tflm_outputs(model_path, inputs, timeout=600):
    """Final outputs of the TFLite-Micro Python interpreter (the runtime's bit-exactness
    contract), run in a child process: TFLM aborts the process on models it rejects.
    Returns None when the tflite_micro package is not installed."""
    import numpy as np
    import importlib.util
    import sys

    if importlib.util.find_spec("tflite_micro") is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        fi, fo = Path(d) / "in.npy", Path(d) / "out.npy"
        np.save(fi, inputs)
        code = ("import sys, numpy as np\n"
                "from tflite_micro.python.tflite_micro import runtime\n"
                "it = runtime.Interpreter.from_file(sys.argv[1], arena_size=64 << 20)\n"
                "outs = []\n"
                "for x in np.load(sys.argv[2]):\n"
                "    it.set_input(x[None], 0)\n"
                "    it.invoke()\n"
                "    outs.append(np.array(it.get_output(0), copy=True).reshape(-1))\n"
                "np.save(sys.argv[3], np.stack(outs))\n")
        r = subprocess.run([sys.executable, "-c", code, str(model_path), str(fi), str(fo)],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not fo.exists():
            raise DsmnError(f"TFLM interpreter failed on {model_path} (exit {r.returncode}): "
                            f"{(r.stderr.strip().splitlines() or ['no message'])[-1]}")
        return np.load(fo)


def _output_vs_tflm(model_path, inputs, out):
    """TFLite's reference kernels and TFLM can disagree by an LSB (measured on a per-channel
    FULLY_CONNECTED), so the final output is also checked against TFLM itself."""
    import numpy as np

    ref = tflm_outputs(model_path, inputs)
    if ref is None:
        return None
    d = np.abs(out.reshape(ref.shape).astype(np.int32) - ref.astype(np.int32))
    return {"max_abs_diff": int(d.max()), "n_differ": int((d > 0).sum()), "n_elements": int(d.size)}


def _inputs_for(graph, x):
    """N x input-shape int8 inputs (a single unbatched input is taken as N = 1)."""
    import numpy as np

    t = graph.tensors[graph.inputs[0]]
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise DsmnError(f"inputs must be int8 (got {x.dtype}); quantise them with the model "
                        f"input's scale {float(t.scale[0]) if len(t.scale) else 0:g} and zero point "
                        f"{int(t.zero_point[0]) if len(t.zero_point) else 0}")
    per = int(np.prod(t.shape))
    if x.size % per or x.size == 0:
        raise DsmnError(f"inputs of shape {list(x.shape)} are not a whole number of model inputs "
                        f"of shape {list(t.shape)}")
    return x.reshape((x.size // per,) + tuple(int(s) for s in t.shape[1:]))


def format_table(result):
    lines = [f"{'op':>4}  {'type':<18} {'output':<28} {'max|d|':>6}  {'differ':>16}  status"]
    for r in result["rows"]:
        out = f"t{r['tensor']} {r['shape']}".replace(" ", "") if len(str(r['shape'])) < 22 else f"t{r['tensor']}"
        if "n_elements" in r:
            md, nd = str(r["max_abs_diff"]), f"{r['n_differ']}/{r['n_elements']}"
        else:
            md, nd = "-", "-"
        lines.append(f"{r['op_index']:>4}  {r['op']:<18} {out:<28} {md:>6}  {nd:>16}  {r['status']}")
    fb, fd = result["first_beyond_tolerance"], result["first_differing"]
    lines.append("first op differing: " + (f"op {fd['op_index']} ({fd['op']}, tensor {fd['tensor']})"
                                           if fd else "none (every compared tensor is bit-exact)"))
    lines.append(f"first op differing by more than {result['tolerance']} LSB: " +
                 (f"op {fb['op_index']} ({fb['op']}, tensor {fb['tensor']})" if fb else "none"))
    t = result.get("output_vs_tflm")
    if t is not None:
        lines.append(f"final output vs the TFLite-Micro interpreter: {t['n_differ']}/{t['n_elements']} "
                     f"elements differ, max |d| {t['max_abs_diff']}")
    elif "output_vs_tflm" in result:
        lines.append("final output vs the TFLite-Micro interpreter: not checked (tflite_micro "
                     "package not installed)")
    return "\n".join(lines)


def _cmd_compare(args):
    import numpy as np

    inp = Path(args.inputs)
    if not inp.is_file():
        raise DsmnError(f"{inp}: no such inputs file")
    try:
        x = np.load(inp)
    except (ValueError, OSError) as exc:
        raise DsmnError(f"{inp}: not a .npy array ({exc})") from exc
    result = compare(args.model, x, target=args.target, tolerance=args.tolerance)
    print(f"{result['model']} on {result['target']}, {result['n_inputs']} input(s), "
          "vs TFLite reference kernels:")
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result["ok"] else 1


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "compare", help="per-layer int8 comparison of the generated C with TFLite's reference kernels",
        description="Run the dsmn runtime's generated code with every intermediate tensor kept "
                    "(-DDSMN_TRACE build) and compare each op's output with TFLite's reference "
                    "kernels (BUILTIN_REF, all tensors preserved): max |delta|, elements "
                    "differing, and the first op that differs; the final output is also "
                    "compared with the TFLite-Micro interpreter (the runtime's bit-exactness "
                    "contract; TFLite's reference kernels can differ from TFLM by 1 LSB, e.g. "
                    "on per-channel FULLY_CONNECTED). Exit status 0 when no op differs by more "
                    "than --tolerance and the final output equals TFLM's (or, without the "
                    "tflite_micro package, every tensor equals TFLite's), 1 otherwise.",
        **style("dsmn-host compare model_int8.tflite inputs.npy",
                "dsmn-host compare model_int8.tflite inputs.npy --target qemu-an386 --json compare.json"))
    p.add_argument("model", help="int8 .tflite model")
    p.add_argument("inputs", help=".npy of N x input-shape int8 inputs")
    p.add_argument("--target", choices=("host", "qemu-an386"), default="host",
                   help="where the generated code runs (default: host gcc)")
    p.add_argument("--tolerance", type=int, default=1,
                   help="report the first op differing by more than this many LSB (default 1)")
    p.add_argument("--json", metavar="PATH", help="also write the full result as JSON")
    p.set_defaults(func=_cmd_compare)
