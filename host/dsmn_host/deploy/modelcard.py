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


def card_paths(tflite_path):
    p = Path(tflite_path)
    stem = p.with_suffix("")
    return {"json": Path(f"{stem}.card.json"), "md": Path(f"{stem}.card.md")}


def summarize(path):
    """Tensors, ops, I/O quantization, params and MACs of a .tflite, read with the one graph
    reader (`tflite_reader`) and its MAC and parameter counts."""
    import numpy as np

    from dsmn_host.compiler.tflite_reader import op_macs, read_tflite, stored_params

    path = Path(path)
    g = read_tflite(path)
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise DsmnError(f"{path}: expected one input and one output, found {len(g.inputs)} and {len(g.outputs)}")

    def tensor_info(i):
        t = g.tensors[i]
        scale = [float(s) for s in np.atleast_1d(t.scale)]
        zp = [int(z) for z in np.atleast_1d(t.zero_point)]
        return {"shape": [int(d) for d in t.shape], "dtype": np.dtype(t.dtype).name,
                "scale": scale[0] if len(scale) == 1 else scale,
                "zero_point": zp[0] if len(zp) == 1 else zp}

    inp, out = g.inputs[0], g.outputs[0]
    ops = collections.Counter(op.name for op in g.operators)
    return {
        "input": tensor_info(inp), "output": tensor_info(out),
        "ops": dict(sorted(ops.items())), "n_ops": len(g.operators),
        "op_sequence": [op.name for op in g.operators],
        "input_consumers": [op.name for op in g.operators if inp in op.inputs],
        "params": stored_params(g), "macs": int(sum(op_macs(g, op) for op in g.operators)),
        "cross_kernel_zero_taps": _cross_zero_taps(g),
        "n_tensors": len(g.tensors), "has_tensor_names": any(t.name for t in g.tensors),
    }


def _cross_zero_taps(g):
    """Taps held at zero in cross-shaped 3×3 depthwise kernels (all four corners zero in every
    channel): stored, counted in `params`, and multiplied by kernels that do not skip them."""
    n = 0
    for op in g.operators:
        if op.name != "DEPTHWISE_CONV_2D":
            continue
        w = g.tensors[op.inputs[1]].data
        if w is not None and w.ndim == 4 and w.shape[1:3] == (3, 3):
            corners = w[:, [0, 0, 2, 2], [0, 2, 0, 2], :]
            if not corners.any():
                n += corners.size
    return n


def dcase_complexity(model_name):
    """The paper's / DCASE tools' count for a known variant (`dsmn-host complexity`), or None."""
    from dsmn_host.training.complexity import COUNTED

    if model_name not in COUNTED:
        return None
    params, macs = COUNTED[model_name]
    return {"params": params, "macs": macs,
            "counted": "DCASE 2023 Task 1 convention on the float PyTorch model (dsmn-host complexity): "
                       "conv weights+biases x output positions, BatchNorm and linear layers once"}


def check_io(info, path, *, dsmn_shape=True):
    """Refuse a model that is not fully int8 at its I/O (a float model), contains QUANTIZE /
    DEQUANTIZE, starts with a layout op, or (dsmn_shape) is not DSMN's 1×44×256×2 -> 1×13."""
    from dsmn_host.data.int8io import INPUT_SHAPE, OUTPUT_SHAPE

    inp, out = info["input"], info["output"]
    problems = []
    for what, t, shape in (("input", inp, INPUT_SHAPE), ("output", out, OUTPUT_SHAPE)):
        if t["dtype"] != "int8" or (dsmn_shape and tuple(t["shape"]) != shape):
            want = f"int8 {list(shape)}" if dsmn_shape else "int8"
            problems.append(f"{what} is {t['dtype']} {t['shape']}, expected {want}")
    if info["input_consumers"] and set(info["input_consumers"]) & {"TRANSPOSE", "RESHAPE", "PAD", "QUANTIZE"}:
        problems.append(f"input feeds layout/conversion ops {info['input_consumers']}")
    float_ops = [op for op in ("QUANTIZE", "DEQUANTIZE") if op in info["ops"]]
    if float_ops:
        problems.append(f"graph contains {', '.join(float_ops)} (not fully int8)")
    if problems:
        raise DsmnError(f"{path}: " + "; ".join(problems))
    return info


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
    from dsmn_host.data import features, tau

    tflite_path = Path(tflite_path)
    info = check_io(summarize(tflite_path), tflite_path, dsmn_shape=False)  # refuse float models
    arena, missing, tflm_error = tflm_measure(tflite_path)
    meta = {}
    if onnx_path and Path(onnx_path).is_file():
        from dsmn_host.deploy.export import read_metadata

        meta = read_metadata(onnx_path)
    sha = sha256_file(tflite_path)
    previous = _previous_card(tflite_path, sha)
    if not meta and previous.get("model"):  # regenerated without --onnx: keep what it came from
        meta = {"model": previous["model"], **previous.get("source", {})}
    model_bytes = tflite_path.stat().st_size
    inp = dict(info["input"], layout="NHWC (batch, time, mel, channel: 0 = log-mel, 1 = delta)")
    out = dict(info["output"], layout="logits in `labels` order (10 scenes, then 3 coarse classes)")
    card = {
        "file": tflite_path.name,
        "model": meta.get("model"),
        "sha256": sha,
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
        "params_counted": "elements of every constant the int8 graph stores (weights, int32 biases, other "
                          "constants; zero taps included)",
        "cross_kernel_zero_taps": info["cross_kernel_zero_taps"],
        "macs": info["macs"],
        "macs_counted": "CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED multiply-accumulates the int8 graph's "
                        "kernels execute (zero taps included)",
        "dcase_complexity": dcase_complexity(meta.get("model")),
        "tflm_arena_bytes": arena,
        "tflm_missing_ops": missing,
        "tflm_error": tflm_error,
        "tflm_arena_note": "TFLM Python interpreter (x86_64 host) after one invoke; a 32-bit target needs "
                           "slightly less (pointer-sized bookkeeping)",
        "preprocessing": {
            **features.PARAMS,
            "input": "per clip: log-mel and its delta, each normalised to zero mean / unit std, "
                     "laid out NHWC (time × mel × channel); quantize with round(x / scale) + zero_point, "
                     "ties away from zero (TFLite QUANTIZE; dsmn_host.data.int8io.quantize), clamp to int8",
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
    old_ranges = previous.get("quantization", {}).get("qat_vs_int8_ranges")
    if old_ranges and "qat_vs_int8_ranges" not in card["quantization"]:
        card["quantization"]["qat_vs_int8_ranges"] = old_ranges
    if not onnx_path and previous.get("source", {}).get("onnx"):
        card["source"]["onnx"] = previous["source"]["onnx"]
    if not conversion and previous.get("conversion"):
        card["conversion"] = previous["conversion"]
    for key in ("verification", "verified"):  # same bytes, same verification
        if key in previous:
            card[key] = previous[key]
    if extra:
        card.update(extra)
    return card


def _previous_card(tflite_path, sha):
    """The card already next to `tflite_path` if it describes these bytes, else {}."""
    path = card_paths(tflite_path)["json"]
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) and card.get("sha256") == sha else {}


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
        f"- params (stored constants of the int8 graph, {card.get('cross_kernel_zero_taps', 0):,} zero taps "
        f"included): {card['params']:,}",
        f"- MACs (int8 graph): {card['macs']:,} ({card['macs_counted']})",
    ]
    dcase = card.get("dcase_complexity")
    if dcase:
        lines.append(f"- params / MACs as the paper and `dsmn-host complexity` count them (DCASE convention, "
                     f"float model): {dcase['params']:,} / {dcase['macs']:,}")
    lines += [
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
            lines += [f"| {margin_span(b)} | {b['clips']} | {b['flips']} |" for b in g["by_margin"]]
    return "\n".join(lines) + "\n"


def _write(tflite_path, card):
    """X.card.json and X.card.md, each replaced whole (never left half-written)."""
    paths = card_paths(tflite_path)
    card = {k: v for k, v in card.items() if k != "paths"}
    for key, text in (("json", json.dumps(card, indent=2) + "\n"), ("md", render_markdown(card))):
        tmp = paths[key].with_name(paths[key].name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, paths[key])
        except OSError as exc:
            raise DsmnError(f"{paths[key]}: cannot write the model card ({exc.strerror or exc})") from None
    return dict(card, paths={k: str(v) for k, v in paths.items()})


def write_card(tflite_path, *, onnx_path=None, conversion=None, extra=None):
    """Write X.card.json and X.card.md next to X.tflite; returns the card with its paths."""
    return _write(tflite_path, build_card(tflite_path, onnx_path=onnx_path, conversion=conversion, extra=extra))


def record_verification(tflite_path, card, report, verify_path):
    """The card carries the headline numbers; the full table stays in X.verify.json."""
    card = {k: v for k, v in card.items() if k != "paths"}
    card["verification"] = verify_path.name
    card["verified"] = {
        "split": report["split"], "n": report["n"],
        "acc": {k: round(v["acc"], 4) for k, v in report["columns"].items()},
        "log_loss": {k: round(v["log_loss"], 4) for k, v in report["columns"].items()},
        "top1_agreement": {k: round(v["top1_agreement"], 4) for k, v in report["pairs"].items()},
    }
    if report.get("output_grid"):
        g = report["output_grid"]
        card["verified"]["output_grid"] = {"reference": g["reference"],
                                           "rounding_only_agreement": round(g["rounding_only_agreement"], 4),
                                           "by_margin": g["by_margin"]}
    if "tflm_vs_ref" in report:
        card["verified"]["tflm_vs_ref"] = report["tflm_vs_ref"]
    return _write(tflite_path, card)


def margin_span(margin_bin):
    """'0-1' or '>= 3': a bin's float top-2 margin range in output steps, for tables."""
    lo, hi = margin_bin["margin_steps"]
    return f"{lo:g}-{hi:g}" if hi is not None else f">= {lo:g}"


REQUIRED_KEYS = ("file", "sha256", "input", "output")


def read_card(card_path):
    """A model card from its X.card.json path, with the keys every reader relies on."""
    path = Path(card_path)
    if path.is_dir():
        raise DsmnError(f"{path}: is a directory, not a model card (X.card.json)")
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise DsmnError(f"{path}: no such model card") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DsmnError(f"{path}: corrupt model card ({exc})") from None
    if not isinstance(card, dict):
        raise DsmnError(f"{path}: not a model card (a JSON {type(card).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise DsmnError(f"{path}: model card has no {', '.join(repr(k) for k in missing)}")
    return card


def load_card(tflite_path):
    """The card of X.tflite (X.card.json next to it)."""
    path = card_paths(tflite_path)["json"]
    if not path.is_file():
        raise DsmnError(f"{path}: no model card next to {tflite_path}")
    return read_card(path)


def card_model(card_path, card=None):
    """The .tflite a card describes: its `file`, next to the card."""
    path = Path(card_path)
    card = card if card is not None else read_card(path)
    model = path.parent / card["file"]
    if not model.is_file():
        raise DsmnError(f"{path}: the model it describes is missing ({model})")
    return model


def checked_card(tflite_path):
    """The card of X.tflite, refused if it describes another file (sha256 differs)."""
    card = load_card(tflite_path)
    sha = sha256_file(tflite_path)
    if card["sha256"] != sha:
        raise DsmnError(f"{tflite_path}: model card says sha256 {card['sha256']} but the file has {sha}; "
                        "regenerate the card (dsmn-host card)")
    return card


def _cmd_card(args):
    card = write_card(args.tflite, onnx_path=args.onnx)
    print(f"wrote {card['paths']['json']} and {card['paths']['md']}")
    print(json.dumps({k: card[k] for k in ("sha256", "model_bytes", "params", "macs", "tflm_arena_bytes")}))


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser("card", help="(re)write the model card of an int8 .tflite",
                              description="Write X.card.json and X.card.md next to X.tflite, all read from or "
                                          "measured on the flatbuffer (TFLM arena with the tflite-micro interpreter).",
        **style("dsmn-host card models/model1/model1_int8.tflite", "dsmn-host card runs/m1/model1_int8.tflite --onnx runs/m1/model1.onnx"))
    p.add_argument("tflite", help="the .tflite model")
    p.add_argument("--onnx", help="the ONNX it came from (adds model name and source to the card)")
    p.set_defaults(func=_cmd_card)
