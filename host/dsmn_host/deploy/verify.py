"""Side-by-side check of every form of the network on the validation split.

Float PyTorch (best.pt), QAT-trained PyTorch (the float graph export starts from), ONNX in
onnxruntime, int8 TFLite with TFLite's *reference* kernels, and int8 in the TFLM interpreter.
The reference kernels are the oracle: TFLite's optimized kernels round differently (several
LSB), whereas TFLM's kernels are meant to match the reference bit for bit, so the TFLM column
also reports how many int8 outputs differ from it and by how much.

Board fit (TFLM arena vs RAM, model bytes vs flash) and ops TFLM lacks are reported by name
here, before anyone builds firmware.
"""

import json
from pathlib import Path

from dsmn_host.errors import DsmnError

N_SCENES = 10
VAL_SPLIT = "evaluate"


def _metrics(logits, scene, coarse, devices):
    import numpy as np

    s = logits[:, :N_SCENES].astype(np.float64)
    s = s - s.max(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    pred = logits[:, :N_SCENES].argmax(1)
    correct = pred == scene
    return {
        "acc": float(correct.mean()),
        "log_loss": float(-logp[np.arange(len(scene)), scene].mean()),
        "coarse_acc": float((logits[:, N_SCENES:].argmax(1) == coarse).mean()),
        "per_device": {str(d): float(correct[devices == d].mean()) for d in sorted(set(devices.tolist()))},
    }


MARGIN_BINS = (0.0, 1.0, 3.0)  # float top-2 margin, in int8 output steps


def output_grid_check(float_logits, int8_logits, scale, zero_point):
    """How much of the float-vs-int8 top-1 disagreement the int8 output grid alone explains.

    An int8 output tensor cannot separate two classes whose float logits are closer than about
    one output step: rounding the float logits onto that grid (`rounding_only_agreement`) is the
    best top-1 agreement any int8 model with this output scale can reach. Flips are also counted
    by the float top-2 margin measured in output steps: flips among clips with a wide margin are
    conversion error; flips among near ties are the model's own indecision made visible.
    """
    import numpy as np

    from dsmn_host.data.int8io import dequantize, quantize

    f, q = float_logits[:, :N_SCENES], int8_logits[:, :N_SCENES]
    top_f, top_q = f.argmax(1), q.argmax(1)
    ranked = np.sort(f, axis=1)
    margin = (ranked[:, -1] - ranked[:, -2]) / scale
    rounded = dequantize(quantize(f, scale, zero_point), scale, zero_point)
    bins = []
    for lo, hi in zip(MARGIN_BINS, MARGIN_BINS[1:] + (None,)):
        sel = (margin >= lo) & (margin < hi) if hi is not None else margin >= lo
        n = int(sel.sum())
        bins.append({"margin_steps": [lo, hi], "clips": n, "flips": int((top_f != top_q)[sel].sum()),
                     "agreement": float((top_f == top_q)[sel].mean()) if n else None})
    return {"output_step": float(scale), "rounding_only_agreement": float((rounded.argmax(1) == top_f).mean()),
            "by_margin": bins}


def _tflite_ref_runner(path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def run(q):
        interp.set_tensor(i, q)
        interp.invoke()
        return interp.get_tensor(o).copy()
    return run


def _tflm_runner(path):
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_file(str(path), arena_size=32 << 20)

    def run(q):
        interp.set_input(q, 0)
        interp.invoke()
        return interp.get_output(0).copy()
    return run


def _torch_models(run_dir, model_name):
    """{column: callable(x NCHW feature layout) -> logits} for the PyTorch forms in a run dir."""
    from dsmn_host.training import checkpoints
    from dsmn_host.data.int8io import features_to_time_mel

    out = {}
    run_dir = Path(run_dir)
    if (run_dir / "best.pt").is_file():
        net, _state = checkpoints.load_float_model(run_dir, model_name)
        out["float"] = lambda x, net=net: net(x)
    if (run_dir / "qat.pt").is_file():
        net_q, _info = checkpoints.load_qat_model(run_dir)   # the fake-quantized network QAT trained
        out["qat"] = lambda x, m=net_q: m(x)
        model, _info = checkpoints.export_ready_model(run_dir)
        out["qat_float"] = lambda x, m=model: m(features_to_time_mel(x))
    return out


def verify(tflite_path, *, onnx_path=None, run_dir=None, data=None, split=VAL_SPLIT, limit=None,
           board=None, ram_limit=None, flash_limit=None, batch=64):
    """Run every available form on `split`; returns the report (also written as X.verify.json)."""
    import numpy as np
    import torch

    from dsmn_host.deploy import modelcard
    from dsmn_host.data.features import open_features
    from dsmn_host.data.int8io import dequantize, features_to_nhwc, features_to_time_mel, quantize

    tflite_path = Path(tflite_path)
    if not tflite_path.is_file():
        raise DsmnError(f"{tflite_path}: no such .tflite")
    # a float model or one of another shape cannot be fed DSMN's int8 inputs: say so first
    modelcard.check_io(modelcard.summarize(tflite_path), tflite_path)
    try:
        card = modelcard.load_card(tflite_path)
    except DsmnError:
        card = modelcard.write_card(tflite_path, onnx_path=onnx_path)
    if card["sha256"] != modelcard.sha256_file(tflite_path):
        raise DsmnError(f"{tflite_path}: its model card is stale (sha256 differs); rerun `dsmn-host card`")
    meta = {}
    onnx_path = onnx_path or card.get("source", {}).get("onnx")
    if onnx_path and Path(onnx_path).is_file():
        from dsmn_host.deploy.export import read_metadata

        meta = read_metadata(onnx_path)
    else:
        onnx_path = None
    run_dir = run_dir or meta.get("run_dir") or card.get("source", {}).get("run_dir")
    recorded = not data
    data = data or meta.get("data") or card.get("source", {}).get("data")
    if not data:
        raise DsmnError(f"{tflite_path}: no validation data given (--data) or recorded in the ONNX metadata")
    if recorded and not Path(data).exists():
        raise DsmnError(f"{data}: the validation data recorded for {tflite_path.name} does not exist here; "
                        "pass --data DATA_OR_CACHE")
    if board:
        from dsmn_host.boards import get_board

        get_board(board)  # an unknown board name fails now, not after the whole split has run
    cache = open_features(data)
    idx = np.asarray(cache.indices(split))
    if limit:
        idx = idx[np.linspace(0, len(idx) - 1, min(limit, len(idx))).astype(int)] if len(idx) else idx
    if len(idx) == 0:
        raise DsmnError(f"{data}: split {split!r} is empty")
    idx = np.sort(idx)
    scene = np.asarray(cache.scene_idx)[idx].astype(int)
    coarse = np.asarray(cache.coarse_idx)[idx].astype(int)
    devices = np.asarray(cache.device)[idx]

    runners = {}
    if run_dir and Path(run_dir).is_dir():
        runners.update(_torch_models(run_dir, card.get("model") or meta.get("model")))
    sess = None
    if onnx_path:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
    ref = _tflite_ref_runner(tflite_path)
    tflm = None
    if not card.get("tflm_missing_ops") and card.get("tflm_arena_bytes"):
        tflm = _tflm_runner(tflite_path)
    in_q, out_q = card["input"], card["output"]

    logits = {k: [] for k in list(runners) + (["onnx"] if sess else []) + ["int8_ref"] + (["int8_tflm"] if tflm else [])}
    raw_ref, raw_tflm = [], []
    for start in range(0, len(idx), batch):
        rows = idx[start:start + batch]
        x = cache.inputs(rows)                                      # (B, 2, mel, time)
        with torch.no_grad():
            xt = torch.from_numpy(x)
            for name, fn in runners.items():
                logits[name].append(fn(xt).float().numpy())
        x_tm = features_to_time_mel(x)                              # (B, 2, time, mel)
        if sess:
            logits["onnx"].append(np.concatenate([sess.run(None, {in_name: x_tm[i:i + 1]})[0] for i in range(len(x))]))
        x_nhwc = features_to_nhwc(x)                                # (B, time, mel, 2)
        for i in range(len(x)):
            q = quantize(x_nhwc[i:i + 1], in_q["scale"], in_q["zero_point"])
            raw_ref.append(ref(q))
            if tflm:
                raw_tflm.append(tflm(q))
    raw_ref = np.concatenate(raw_ref).astype(np.int32)
    logits["int8_ref"] = [dequantize(raw_ref, out_q["scale"], out_q["zero_point"])]
    if tflm:
        raw_tflm = np.concatenate(raw_tflm).astype(np.int32)
        logits["int8_tflm"] = [dequantize(raw_tflm, out_q["scale"], out_q["zero_point"])]
    logits = {k: np.concatenate(v).astype(np.float64) for k, v in logits.items()}

    columns = {k: _metrics(v, scene, coarse, devices) for k, v in logits.items()}
    names = list(logits)
    pairs = {}
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            pairs[f"{a}|{b}"] = {
                "top1_agreement": float((logits[a][:, :N_SCENES].argmax(1) == logits[b][:, :N_SCENES].argmax(1)).mean()),
                "max_abs_logit_diff": float(np.abs(logits[a] - logits[b]).max()),
            }
    reference = next((k for k in ("onnx", "qat_float", "float") if k in logits), None)
    grid = None
    if reference:
        grid = {"reference": reference, **output_grid_check(logits[reference], logits["int8_ref"],
                                                            out_q["scale"], out_q["zero_point"])}
    report = {
        "tflite": str(tflite_path), "onnx": str(onnx_path) if onnx_path else None,
        "run_dir": str(run_dir) if run_dir else None, "data": str(data), "split": split, "n": int(len(idx)),
        "columns": columns, "pairs": pairs,
        "int8_kernels": "TFLite BUILTIN_REF (no XNNPACK) and TFLM",
        "output_grid": grid,
    }
    if tflm:
        diff = np.abs(raw_ref - raw_tflm)
        report["tflm_vs_ref"] = {"outputs": int(diff.size), "differing": int((diff > 0).sum()),
                                 "max_lsb": int(diff.max())}
    report["board"] = board_check(card, board=board, ram_limit=ram_limit, flash_limit=flash_limit)
    out = tflite_path.with_suffix("").with_name(tflite_path.with_suffix("").name + ".verify.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    report["path"] = str(out)
    modelcard.record_verification(tflite_path, card, report, out)
    return report


def board_check(card, *, board=None, ram_limit=None, flash_limit=None):
    """Problems (by name) that would stop the model on a board; empty list when it fits."""
    problems = []
    result = {"board": board, "ram_limit": ram_limit, "flash_limit": flash_limit, "problems": problems}
    if board:
        from dsmn_host.boards import get_board

        b = get_board(board)
        ram_limit = ram_limit or b.ram.length
        flash_limit = flash_limit or b.flash.length
        result.update(ram_limit=ram_limit, flash_limit=flash_limit)
    for op in card.get("tflm_missing_ops") or []:
        problems.append(f"op {op} is not available in TFLite-Micro")
    if card.get("tflm_error") and not card.get("tflm_missing_ops"):
        problems.append(f"TFLM could not load the model: {card['tflm_error'].splitlines()[0]}")
    arena, size = card.get("tflm_arena_bytes"), card["model_bytes"]
    where = f"board {board}" if board else "the given limit"
    if ram_limit and arena and arena > ram_limit:
        problems.append(f"TFLM arena {arena} bytes exceeds the RAM of {where} ({ram_limit} bytes)")
    if flash_limit and size > flash_limit:
        problems.append(f"model {size} bytes exceeds the flash of {where} ({flash_limit} bytes)")
    return result


def format_report(report):
    from dsmn_host.deploy import modelcard

    cols = report["columns"]
    lines = [f"{report['split']} split, {report['n']} clips ({report['data']})", "",
             f"{'':<11}{'acc':>8}{'log loss':>10}{'coarse':>8}   per device"]
    for name, m in cols.items():
        dev = " ".join(f"{d}:{v:.2f}" for d, v in m["per_device"].items())
        lines.append(f"{name:<11}{m['acc']:>8.3f}{m['log_loss']:>10.3f}{m['coarse_acc']:>8.3f}   {dev}")
    lines += ["", f"{'pair':<24}{'top-1 agree':>12}{'max |Δlogit|':>14}"]
    for pair, p in report["pairs"].items():
        lines.append(f"{pair.replace('|', ' vs '):<24}{p['top1_agreement']:>12.3f}{p['max_abs_logit_diff']:>14.4g}")
    if "tflm_vs_ref" in report:
        t = report["tflm_vs_ref"]
        lines.append(f"\nTFLM vs TFLite reference kernels: {t['differing']}/{t['outputs']} int8 outputs differ, "
                     f"max {t['max_lsb']} LSB")
    grid = report.get("output_grid")
    if grid:
        lines.append(f"\n{grid['reference']} vs int8_ref by float top-2 margin (int8 output step {grid['output_step']:.4g}); "
                     f"rounding only the {grid['reference']} logits onto the output grid agrees "
                     f"{grid['rounding_only_agreement']:.3f}")
        for b in grid["by_margin"]:
            agree = f"{b['agreement']:.3f}" if b["agreement"] is not None else "-"
            lines.append(f"  margin {modelcard.margin_span(b) + ' steps':<12} {b['clips']:>5} clips {b['flips']:>4} flips   "
                         f"agreement {agree}")
    problems = report["board"]["problems"]
    lines.append("board check: " + ("; ".join(problems) if problems else "ok"))
    return "\n".join(lines)


def run_verify(tflite_path, **kwargs):
    report = verify(tflite_path, **kwargs)
    print(format_report(report))
    print(f"wrote {report['path']}")
    return 1 if report["board"]["problems"] else 0


def _cmd_verify(args):
    return run_verify(args.tflite, onnx_path=args.onnx, run_dir=args.run_dir, data=args.data, split=args.split,
                      limit=args.limit, board=args.board, ram_limit=args.ram_limit, flash_limit=args.flash_limit)


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "verify", help="compare float / QAT / ONNX / int8 (TFLite reference kernels, TFLM) on the validation split",
        description="Accuracy and log loss per form and per device, pairwise top-1 agreement and max |Δlogit|, "
                    "TFLM vs TFLite reference kernels bit for bit, the float-vs-int8 flips binned by how many "
                    "int8 output steps separated the float top two (with the agreement that rounding only the "
                    "float logits onto the int8 output grid would give), and whether the model fits a board.",
        **style("dsmn-host verify runs/m1/model1_int8.tflite --board nucleo-h743zi2", "dsmn-host verify models/model1/model1_int8.tflite --data data/tau22-synth --limit 200"))
    p.add_argument("tflite", help="int8 .tflite (with its .card.json next to it)")
    p.add_argument("--onnx", help="the float ONNX it came from (default: recorded in the card)")
    p.add_argument("--run-dir", help="training run directory (default: recorded in the ONNX metadata)")
    p.add_argument("--data", help="feature cache or data dir (default: recorded in the ONNX metadata)")
    p.add_argument("--split", default=VAL_SPLIT, help=f"split to verify on (default {VAL_SPLIT})")
    p.add_argument("--limit", type=int, help="use at most this many clips (spread over the split)")
    p.add_argument("--board", help="board name (dsmn_host.boards) to check RAM and flash against")
    p.add_argument("--ram-limit", type=int, help="RAM budget in bytes for the TFLM arena")
    p.add_argument("--flash-limit", type=int, help="flash budget in bytes for the model")
    p.set_defaults(func=_cmd_verify)
