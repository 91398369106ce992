"""Model card next to every .tflite: what the firmware and the evaluation need to trust it.

Everything on the card is read back from the flatbuffer itself (I/O quantization, ops, params,
MACs) or measured on it (sha256, bytes, TFLM arena), so a card can be regenerated for any
.tflite and cannot drift from the file it describes.

The arena is measured by the tflite-micro Python interpreter on this 64-bit host: TFLM's own
structs (TfLiteEvalTensor, node/registration records) are pointer-sized, so a 32-bit Cortex-M
needs slightly less; tensor memory itself is identical.
"""

import collections
import contextlib
import datetime
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from dsmn_host.errors import DsmnError

_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8"}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "uint8": 1, "int64": 8, "bool": 1, "int16": 2, "int8": 1}
_WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def card_paths(tflite_path):
    p = Path(tflite_path)
    stem = p.with_suffix("")
    return {"json": Path(f"{stem}.card.json"), "md": Path(f"{stem}.card.md")}


def _op_names():
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _op_name(code, names):
    # Builtin codes above 127 live in `builtinCode`; the deprecated byte field saturates at 127.
    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    if value == 32:  # CUSTOM
        return f"CUSTOM:{code.customCode.decode() if code.customCode else '?'}"
    return names.get(value, f"BUILTIN_{value}")


def read_tflite(path):
    """Tensors, ops, I/O quantization, params and MACs of the first subgraph."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    try:
        data = path.read_bytes()
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise ValueError("missing TFL3 identifier")
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except (OSError, ValueError, IndexError) as exc:
        raise DsmnError(f"{path}: not a TFLite flatbuffer ({exc})") from None
    if not model.subgraphs:
        raise DsmnError(f"{path}: TFLite model has no subgraph")
    names = _op_names()
    sub = model.subgraphs[0]
    codes = [_op_name(c, names) for c in model.operatorCodes]

    def tensor_info(i):
        t = sub.tensors[i]
        q = t.quantization
        scale = [] if q is None or q.scale is None else [float(s) for s in np.atleast_1d(q.scale)]
        zp = [] if q is None or q.zeroPoint is None else [int(z) for z in np.atleast_1d(q.zeroPoint)]
        return {"shape": [int(d) for d in (t.shape if t.shape is not None else [])],
                "dtype": _DTYPES.get(t.type, str(t.type)),
                "scale": scale[0] if len(scale) == 1 else scale,
                "zero_point": zp[0] if len(zp) == 1 else zp}

    def is_const(i):
        b = sub.tensors[i].buffer
        return b > 0 and model.buffers[b].data is not None and len(model.buffers[b].data) > 0

    ops = collections.Counter()
    macs = 0
    params = 0
    seen_const = set()
    consumers = collections.defaultdict(list)
    for op in sub.operators:
        name = codes[op.opcodeIndex]
        ops[name] += 1
        ins = [int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0]
        outs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
        for i in ins:
            consumers[i].append(name)
        if name in _WEIGHT_OPS and len(ins) >= 2:
            out_elems = int(np.prod(sub.tensors[outs[0]].shape))
            w = [int(d) for d in sub.tensors[ins[1]].shape]
            if name == "CONV_2D":            # filter O×KH×KW×(I/groups)
                macs += out_elems * w[1] * w[2] * w[3]
            elif name == "DEPTHWISE_CONV_2D":  # filter 1×KH×KW×O
                macs += out_elems * w[1] * w[2]
            elif name == "FULLY_CONNECTED":    # filter O×I
                macs += out_elems * w[1]
            else:
                macs += out_elems * int(np.prod(w[1:]))
            # weights and bias of weight-bearing ops, plus any other float/int8 constants
        for i in ins:
            if i in seen_const or not is_const(i):
                continue
            seen_const.add(i)
            t = sub.tensors[i]
            dtype = _DTYPES.get(t.type)
            # int32 constants are shape/axis operands unless they are a bias (3rd input of a weight op)
            if dtype == "int32" and not (name in _WEIGHT_OPS and len(ins) > 2 and i == ins[2]):
                continue
            params += int(np.prod(t.shape)) if t.shape is not None and len(t.shape) else 1

    if len(sub.inputs) != 1 or len(sub.outputs) != 1:
        raise DsmnError(f"{path}: expected one input and one output, found {len(sub.inputs)} and {len(sub.outputs)}")
    inp, out = int(sub.inputs[0]), int(sub.outputs[0])
    return {
        "input": tensor_info(inp), "output": tensor_info(out),
        "ops": dict(sorted(ops.items())), "n_ops": int(sum(ops.values())),
        "op_sequence": [codes[op.opcodeIndex] for op in sub.operators],
        "input_consumers": consumers.get(inp, []),
        "params": params, "macs": int(macs), "n_tensors": len(sub.tensors),
        "has_tensor_names": any(t.name for t in sub.tensors),
    }


@contextlib.contextmanager
def _capture_fd2():
    """TFLM reports allocations and missing ops on the C stderr, not through Python."""
    import sys

    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def tflm_measure(tflite_path, arena_size=32 << 20):
    """(arena bytes, missing ops, error text) from the TFLM Python interpreter after one invoke."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    error = None
    with _capture_fd2() as construct:
        try:
            interp = runtime.Interpreter.from_file(str(tflite_path), arena_size=arena_size)
        except (RuntimeError, ValueError) as exc:
            interp, error = None, str(exc)
    missing = sorted(set(re.findall(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'", construct["text"])))
    if interp is None:
        return None, missing, (error + "\n" + construct["text"]).strip()
    details = interp.get_input_details(0)
    interp.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
    interp.invoke()
    with _capture_fd2() as alloc:
        interp.print_allocations()
    m = re.search(r"Arena allocation total (\d+) bytes", alloc["text"])
    return (int(m.group(1)) if m else None), missing, None


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_card(tflite_path, *, onnx_path=None, conversion=None, extra=None):
    from dsmn_host import features, tau

    tflite_path = Path(tflite_path)
    info = read_tflite(tflite_path)
    arena, missing, tflm_error = tflm_measure(tflite_path)
    meta = {}
    if onnx_path and Path(onnx_path).is_file():
        from dsmn_host.export import read_metadata

        meta = read_metadata(onnx_path)
    model_bytes = tflite_path.stat().st_size
    inp = dict(info["input"], layout="NHWC (batch, time, mel, channel: 0 = log-mel, 1 = delta)")
    out = dict(info["output"], layout="logits in `labels` order (10 scenes, then 3 coarse classes)")
    card = {
        "file": tflite_path.name,
        "model": meta.get("model"),
        "sha256": sha256_file(tflite_path),
        "model_bytes": model_bytes,
        "input": inp,
        "output": out,
        "labels": list(tau.LABELS),
        "scenes": list(tau.SCENES),
        "coarse": list(tau.COARSE),
        "scene_to_coarse": dict(tau.SCENE_TO_COARSE),
        "ops": info["ops"],
        "n_ops": info["n_ops"],
        "params": info["params"],
        "macs": info["macs"],
        "macs_counted": "CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED multiply-accumulates",
        "tflm_arena_bytes": arena,
        "tflm_missing_ops": missing,
        "tflm_error": tflm_error,
        "tflm_arena_note": "TFLM Python interpreter (x86_64 host) after one invoke; a 32-bit target needs "
                           "slightly less (pointer-sized bookkeeping)",
        "preprocessing": {
            **features.PARAMS,
            "input": "per clip: log-mel and its delta, each normalised to zero mean / unit std, "
                     "transposed to time × mel; quantize with round(x / scale) + zero_point, clamp to int8",
        },
        "quantization": {
            "weights": "int8 per-channel (symmetric), biases int32",
            "activations": "int8 per-tensor, calibrated by onnx2tf on representative training inputs",
            "qat_ranges_used": False,
            "qat_ranges_note": "onnx2tf recalibrates activations from the representative data (min/max); "
                               "`dsmn-host qat` computes its ranges the same way on the same clipped "
                               "calibration inputs, so they match rather than being passed through",
        },
        "source": {k: meta.get(k) for k in ("run_dir", "data", "weights", "layout") if meta.get(k)},
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if onnx_path:
        card["source"]["onnx"] = str(onnx_path)
    ranges = (meta.get("qat") or {}).get("act_ranges") or {}
    compare = {}
    for qname, key in (("q_input", "input"), ("q_logits", "output")):
        t = card[key]
        if qname in ranges and isinstance(t["scale"], float):
            compare[key] = {"qat_range": [round(float(v), 5) for v in ranges[qname]],
                            "int8_range": [round((-128 - t["zero_point"]) * t["scale"], 5),
                                           round((127 - t["zero_point"]) * t["scale"], 5)]}
    if compare:  # how far onnx2tf's recalibration moved the ranges QAT trained with
        card["quantization"]["qat_vs_int8_ranges"] = compare
    if conversion:
        card["conversion"] = {k: v for k, v in conversion.items() if k not in ("ops", "tflite", "onnx")}
    if extra:
        card.update(extra)
    return card


def render_markdown(card):
    inp, out = card["input"], card["output"]
    arena = card["tflm_arena_bytes"]
    lines = [
        f"# Model card: {card['file']}",
        "",
        f"Model **{card.get('model') or 'unknown'}**, fully int8 TFLite, {card['model_bytes']:,} bytes, "
        f"sha256 `{card['sha256']}`.",
        "",
        "| | shape | dtype | scale | zero point | layout |",
        "|---|---|---|---|---|---|",
        f"| input | {'×'.join(map(str, inp['shape']))} | {inp['dtype']} | {inp['scale']} | {inp['zero_point']} | {inp['layout']} |",
        f"| output | {'×'.join(map(str, out['shape']))} | {out['dtype']} | {out['scale']} | {out['zero_point']} | {out['layout']} |",
        "",
        f"- params (stored constants): {card['params']:,}",
        f"- MACs: {card['macs']:,} ({card['macs_counted']})",
        f"- TFLM arena: {arena:,} bytes ({card['tflm_arena_note']})" if arena else
        f"- TFLM arena: not measured ({card.get('tflm_error')})",
    ]
    if card.get("tflm_missing_ops"):
        lines.append(f"- **ops missing in TFLM: {', '.join(card['tflm_missing_ops'])}**")
    conv = card.get("conversion")
    if conv:
        lines.append(f"- converted by onnx2tf in {conv.get('convert_seconds')} s, calibrated on "
                     f"{conv.get('calibration_inputs')} {conv.get('calibration_split')} inputs")
    lines += ["", "## Labels", "", "| index | label |", "|---|---|"]
    lines += [f"| {i} | {name} |" for i, name in enumerate(card["labels"])]
    lines += ["", "## Ops", "", "| op | count |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in card["ops"].items()]
    lines += ["", "## Preprocessing", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card["preprocessing"].items()]
    q = card["quantization"]
    lines += ["", "## Quantization", "", f"- weights: {q['weights']}", f"- activations: {q['activations']}",
              f"- QAT ranges: {q['qat_ranges_note']}"]
    ver = card.get("verified")
    if ver:
        lines += ["", "## Verification", "",
                  f"{ver['split']} split, {ver['n']} clips (full table: `{card.get('verification')}`).", "",
                  "| form | accuracy | log loss |", "|---|---|---|"]
        lines += [f"| {k} | {ver['acc'][k]:.4f} | {ver['log_loss'][k]:.4f} |" for k in ver["acc"]]
        lines += ["", "| pair | top-1 agreement |", "|---|---|"]
        lines += [f"| {k.replace('|', ' vs ')} | {v:.4f} |" for k, v in ver["top1_agreement"].items()]
        if ver.get("tflm_vs_ref"):
            t = ver["tflm_vs_ref"]
            lines += ["", f"TFLM vs TFLite reference kernels: {t['differing']}/{t['outputs']} int8 outputs "
                          f"differ, max {t['max_lsb']} LSB."]
        if ver.get("output_grid"):
            g = ver["output_grid"]
            lines += ["", f"{g['reference']} vs int8 top-1 by the float top-2 margin in int8 output steps "
                          f"(rounding only the float logits onto the int8 output grid agrees "
                          f"{g['rounding_only_agreement']:.4f}):", "",
                      "| margin (output steps) | clips | flips |", "|---|---|---|"]
            from dsmn_host.verify import margin_span

            lines += [f"| {margin_span(b)} | {b['clips']} | {b['flips']} |" for b in g["by_margin"]]
    return "\n".join(lines) + "\n"


def write_card(tflite_path, *, onnx_path=None, conversion=None, extra=None):
    """Write X.card.json and X.card.md next to X.tflite; returns the card with its paths."""
    card = build_card(tflite_path, onnx_path=onnx_path, conversion=conversion, extra=extra)
    paths = card_paths(tflite_path)
    paths["json"].write_text(json.dumps(card, indent=2) + "\n")
    paths["md"].write_text(render_markdown(card))
    return dict(card, paths={k: str(v) for k, v in paths.items()})


def load_card(tflite_path):
    path = card_paths(tflite_path)["json"]
    if not path.is_file():
        raise DsmnError(f"{path}: no model card next to {tflite_path}")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DsmnError(f"{path}: corrupt model card ({exc})") from None


def _cmd_card(args):
    card = write_card(args.tflite, onnx_path=args.onnx)
    print(f"wrote {card['paths']['json']} and {card['paths']['md']}")
    print(json.dumps({k: card[k] for k in ("sha256", "model_bytes", "params", "macs", "tflm_arena_bytes")}))


def register(subparsers):
    p = subparsers.add_parser("card", help="(re)write the model card of an int8 .tflite",
                              description="Write X.card.json and X.card.md next to X.tflite, all read from or "
                                          "measured on the flatbuffer (TFLM arena with the tflite-micro interpreter).")
    p.add_argument("tflite", help="the .tflite model")
    p.add_argument("--onnx", help="the ONNX it came from (adds model name and source to the card)")
    p.set_defaults(func=_cmd_card)
