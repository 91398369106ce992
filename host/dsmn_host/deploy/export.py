"""Float ONNX export of a trained DSMN, checked against PyTorch before anyone converts it.

The exported graph takes the time × mel layout the network computes in (1×2×44×256), so that
onnx2tf's NCHW→NHWC rewrite lands exactly on the device layout 1×44×256×2 and the int8 model
starts without a TRANSPOSE. Only the float graph is exported: fake-quant modules do not export
cleanly, and onnx2tf recalibrates activations anyway (QAT uses the converter's calibration so
the ranges agree), so QAT contributes its trained weights in the folded, equalized int8 form.

The dynamo exporter is the default because it folds `chunk` into a constant-sized Split; the
legacy TorchScript exporter writes Shape→Gather→Div→Slice chains that onnx2tf can only resolve
with onnxsim (not part of our pinned stack), so its output is constant-folded with onnxscript's
optimizer before saving.
"""

import json
from pathlib import Path

from dsmn_host.errors import DsmnError
from dsmn_host.paths import output_file

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORT_SHAPE = (1, 2, 44, 256)  # N, C, time, mel
# Float32 re-association between PyTorch and onnxruntime stays far below this on logits of
# magnitude ~10; anything larger means a wrong graph, not rounding.
DEFAULT_TOLERANCE = 1e-3
META_PREFIX = "dsmn."


def _check_inputs(model_inputs, n=8, seed=0):
    """Inputs for the PyTorch/ONNX comparison: the caller's (real features) or random normal."""
    import numpy as np

    if model_inputs is not None:
        x = np.asarray(model_inputs, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != EXPORT_SHAPE[1:]:
            raise DsmnError(f"check inputs must be N×{'×'.join(map(str, EXPORT_SHAPE[1:]))}, got {x.shape}")
        return x
    return np.random.default_rng(seed).standard_normal((n,) + EXPORT_SHAPE[1:]).astype(np.float32)


def _fold_constants(model_proto):
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model_proto)


def _tidy_for_onnx2tf(proto):
    """Graph edits that change no value but give onnx2tf a cleaner int8 graph.

    AveragePool without padding averages full windows either way, but onnx2tf converts
    count_include_pad=1 into the pool plus identity STRIDED_SLICE copies (two per pool, each a
    full activation copy on the device); count_include_pad=0 converts to the pool alone.
    """
    import onnx

    changed = 0
    for node in proto.graph.node:
        if node.op_type != "AveragePool":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        unpadded = not any(attrs.get("pads", [])) and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
        if unpadded and not attrs.get("ceil_mode", 0) and attrs.get("count_include_pad", 0):
            for a in node.attribute:
                if a.name == "count_include_pad":
                    a.i = 0
            changed += 1
    return changed


def export_model(model, out_path, *, exporter="dynamo", opset=18, check_inputs=None,
                 tolerance=DEFAULT_TOLERANCE, metadata=None, quiet=True):
    """Export `model` (forward takes N×2×44×256) to `out_path` with batch fixed at 1.

    Returns a report dict with the max |PyTorch − onnxruntime| over the check inputs; raises
    DsmnError if it exceeds `tolerance`.
    """
    import contextlib
    import io
    import warnings

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.zeros(EXPORT_SHAPE)
    sink = io.StringIO()
    quiet_ctx = contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()
    with warnings.catch_warnings(), quiet_ctx:
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                            verbose=False)
                proto = program.model_proto
            elif exporter == "legacy":
                buf = io.BytesIO()
                torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  do_constant_folding=True)
                proto = _fold_constants(onnx.load_from_string(buf.getvalue()))
            else:
                raise DsmnError(f"unknown exporter {exporter!r} (dynamo or legacy)")
        except DsmnError:
            raise
        except Exception as exc:  # exporter failures are model problems the user must see
            raise DsmnError(f"ONNX export ({exporter}) failed: {type(exc).__name__}: {exc}") from exc

    _tidy_for_onnx2tf(proto)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key = META_PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))

    x = _check_inputs(check_inputs)
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))])
    max_abs = float(np.abs(ref - got).max())
    report = {
        "onnx": str(out_path), "exporter": exporter, "opset": opset, "inputs_checked": int(len(x)),
        "max_abs_diff": max_abs, "max_abs_logit": float(np.abs(ref).max()), "tolerance": tolerance,
        "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
        "onnx_bytes": out_path.stat().st_size,
    }
    if not max_abs <= tolerance:
        raise DsmnError(f"{out_path}: onnxruntime differs from PyTorch by {max_abs:.3g} "
                        f"(> {tolerance:g}); the exported graph is wrong")
    return report


def read_metadata(onnx_path):
    """The dsmn.* metadata export wrote (model name, run dir, preprocessing, QAT info)."""
    import onnx

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise DsmnError(f"{onnx_path}: not a readable ONNX file ({exc})") from None
    meta = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(META_PREFIX):
            key = entry.key[len(META_PREFIX):]
            try:
                meta[key] = json.loads(entry.value)
            except ValueError:
                meta[key] = entry.value
    return meta


def _real_inputs(data_path, n=8):
    """A few validation inputs in the exported layout, if the run's data can be found."""
    import numpy as np

    from dsmn_host.data.features import open_features
    from dsmn_host.data.int8io import features_to_time_mel

    cache = open_features(data_path)
    idx = cache.indices("evaluate")[:n]
    if len(idx) == 0:
        return None
    return features_to_time_mel(np.asarray(cache.inputs(idx)))


def export_run(run_dir, out_path, *, exporter="dynamo", opset=18, data=None, tolerance=DEFAULT_TOLERANCE,
               require_qat=False):
    """Export the QAT-trained weights of RUN_DIR (BN folded) as float ONNX; without qat.pt the
    float best.pt (BN folded), unless `require_qat`."""
    import torch

    from dsmn_host.training.checkpoints import export_ready_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DsmnError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.json").is_file():
        raise DsmnError(f"{run_dir}: not a run directory (no config.json)")
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except ValueError as exc:
        raise DsmnError(f"{run_dir / 'config.json'}: not valid JSON ({exc})") from None
    if require_qat and not (run_dir / "qat.pt").is_file():
        raise DsmnError(f"{run_dir}: no qat.pt, so there are no QAT weights to export; run `dsmn-host qat "
                        f"{run_dir}` first, or pass --allow-float to export the float best.pt")
    output_file(out_path, "output .onnx")
    model, info = export_ready_model(run_dir)
    info["weights"] = "qat.pt" if info.get("qat") else "best.pt (float, BN folded; no QAT in this run)"
    data = data or config.get("data") or config.get("data_path") or config.get("features")
    check = None
    if data and Path(data).exists():
        check = _real_inputs(data)
    from dsmn_host.data import features, tau

    metadata = {
        "model": info.get("model") or config.get("model"),
        "run_dir": str(run_dir.resolve()),
        "data": str(data) if data else "",
        "layout": "NCHW (1, 2, time 44, mel 256); int8 TFLite: NHWC 1x44x256x2",
        "labels": list(tau.LABELS),
        "preprocessing": features.PARAMS,
        "weights": info.get("weights", "qat.pt"),
        "qat": {k: v for k, v in info.items() if k not in ("model", "weights")},
    }
    with torch.no_grad():
        return export_model(model, out_path, exporter=exporter, opset=opset, check_inputs=check,
                            tolerance=tolerance, metadata=metadata)


def _cmd_export(args):
    report = export_run(args.run_dir, args.out, exporter=args.exporter, opset=args.opset,
                        data=args.data, tolerance=args.tolerance, require_qat=not args.allow_float)
    print(f"wrote {report['onnx']} ({report['onnx_bytes']} bytes, {report['exporter']} exporter, "
          f"opset {report['opset']})")
    print(f"onnxruntime vs PyTorch on {report['inputs_checked']} inputs: max |diff| "
          f"{report['max_abs_diff']:.3g} (logits up to {report['max_abs_logit']:.3g}), "
          f"top-1 agreement {report['top1_agreement']:.0%}")


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "export", help="export a trained run as float ONNX (batch 1, time × mel), checked with onnxruntime",
        description="Export the QAT-trained weights of RUN_DIR (BatchNorm folded) as a float ONNX graph "
                    "taking 1×2×44×256 (channel, time, mel) and check it against PyTorch with onnxruntime.",
        **style("dsmn-host export runs/m1 --out runs/m1/model1.onnx"))
    p.add_argument("run_dir", help="run directory written by `dsmn-host train` (and `dsmn-host qat`)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                   help="torch.onnx exporter (default dynamo; legacy is constant-folded with onnxscript)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--data", help="feature cache or data dir for the check inputs (default: the run's data)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"max allowed |PyTorch − onnxruntime| on logits (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--allow-float", action="store_true",
                   help="export the float best.pt (BN folded) when the run has no qat.pt, instead of refusing")
    p.set_defaults(func=_cmd_export)
