"""Metrics of an on-board evaluation, computed from `results.jsonl`, written as JSON/Markdown/PNG.

The report is recomputed from the journal rather than accumulated during the run so that a
resumed, interrupted or multi-board run produces exactly the report a single clean run would:
the journal is the only state, and this module is a pure function of it (plus the run's
metadata: quantization of the output tensor, board clock, link statistics).

One results record (one line of `results.jsonl`) holds at least
`filename`, `scene`, `device`, `output` (13 int8 logits in `tau.LABELS` order) and optionally
`host_output` (the host TFLM interpreter's 13 int8 logits on the same input tensor),
`cycles` and/or `instructions` (per inference, as the board reports them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dsmn_host.errors import DsmnError

# Device groups of the DCASE 2023 Task 1 evaluation.
DEVICE_GROUPS = {
    "real": ("a", "b", "c"),
    "seen": ("s1", "s2", "s3"),
    "unseen": ("s4", "s5", "s6"),
}

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "confusion.png"


def _labels():
    from dsmn_host.data import tau

    return tau.SCENES, tau.COARSE, tau.SCENE_TO_COARSE


def dequantize(q, scale, zero_point):
    import numpy as np

    return (np.asarray(q, dtype=np.float64) - float(zero_point)) * float(scale)


def _log_softmax(z):
    import numpy as np

    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _percentile(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def _group_stats(correct, nll, mask):
    n = int(mask.sum())
    if n == 0:
        return {"n": 0, "accuracy": None, "log_loss": None}
    return {
        "n": n,
        "accuracy": float(correct[mask].mean()),
        "log_loss": float(nll[mask].mean()),
    }


def compute_report(results, meta=None) -> dict:
    """Every metric of the run as a JSON-ready dict.

    `meta` supplies `output_scale`, `output_zero_point` (needed for the log loss: the board's
    int8 logits are dequantized before the softmax), `clock_hz` (cycles -> ms), and optionally
    `link` statistics ({"bytes", "seconds", "clips", "limit_bytes_per_s"}) and free-form
    fields copied into the report's `run` section.
    """
    import numpy as np

    meta = dict(meta or {})
    scenes, coarse, scene_to_coarse = _labels()
    n_scenes = len(scenes)
    results = list(results)
    if not results:
        raise DsmnError("no results to report on (results.jsonl is empty)")
    try:
        out = np.array([r["output"] for r in results], dtype=np.int64)
        y = np.array([scenes.index(r["scene"]) for r in results])
        devices = np.array([r["device"] for r in results])
    except (KeyError, ValueError) as exc:
        raise DsmnError(f"malformed results record: {exc}") from None
    if out.ndim != 2 or out.shape[1] != n_scenes + len(coarse):
        raise DsmnError(f"results hold outputs of shape {out.shape[1:]}, expected ({n_scenes + len(coarse)},)")
    scale = meta.get("output_scale")
    zp = meta.get("output_zero_point", 0)

    scene_logits = out[:, :n_scenes]
    pred = scene_logits.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    if scale is not None:
        logp = _log_softmax(dequantize(scene_logits, scale, zp))
        nll = -logp[np.arange(len(y)), y]
    else:
        nll = np.full(len(y), np.nan)

    y_coarse = np.array([coarse.index(scene_to_coarse[scenes[i]]) for i in y])
    coarse_pred = out[:, n_scenes:].argmax(axis=1)

    confusion = np.zeros((n_scenes, n_scenes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)

    per_class = {}
    for k, name in enumerate(scenes):
        mask = y == k
        per_class[name] = {
            "n": int(mask.sum()),
            "accuracy": float(correct[mask].mean()) if mask.any() else None,
        }
    present = [v["accuracy"] for v in per_class.values() if v["n"]]
    per_device = {}
    for dev in sorted(set(devices.tolist()), key=_device_order):
        per_device[dev] = _group_stats(correct, nll, devices == dev)
    per_group = {g: _group_stats(correct, nll, np.isin(devices, devs)) for g, devs in DEVICE_GROUPS.items()}

    report = {
        "n_clips": len(results),
        "accuracy": float(correct.mean()),
        "macro_class_accuracy": float(np.mean(present)),
        "log_loss": float(nll.mean()) if scale is not None else None,
        "coarse_accuracy": float((coarse_pred == y_coarse).mean()),
        "per_device": per_device,
        "per_device_group": per_group,
        "per_class": per_class,
        "labels": list(scenes),
        "confusion": confusion.tolist(),
    }
    report.update(_agreement(results, out))
    report["latency"] = _latency(results, meta.get("clock_hz"))
    report["throughput"] = _throughput(meta.get("link"), len(results))
    fe = _front_end(results, meta.get("clock_hz"), n_scenes)
    if fe is not None:
        report["front_end"] = fe
    report["run"] = {k: v for k, v in meta.items() if k != "link"}
    return report


def _front_end(results, clock_hz, n_scenes):
    """Audio mode: the board's front end against the host's, over all clips and per clip.

    elements_equal is over every int8 input element of every clip whose input was read back;
    top1_agreement_features compares the board's top-1 with the host-features path (the cached
    features of the original clip through the host int8 model)."""
    audio = [r for r in results if r.get("input") == "audio"]
    if not audio:
        return None
    checked = [r for r in audio if r.get("input_elements")]
    n_el = sum(r["input_elements"] for r in checked)
    out = {
        "n_clips": len(audio),
        "n_clips_input_checked": len(checked),
        "elements": n_el,
        "elements_equal": (sum(r["input_elements_equal"] * r["input_elements"] for r in checked) / n_el
                           if n_el else None),
        "max_abs_lsb": max((r["input_max_abs_lsb"] for r in checked), default=None),
    }
    with_feat = [r for r in audio if r.get("features_host_output") is not None]
    out["top1_agreement_features"] = (
        sum(_argmax(r["output"][:n_scenes]) == _argmax(r["features_host_output"][:n_scenes]) for r in with_feat)
        / len(with_feat) if with_feat else None)
    for key in ("frontend_instructions", "frontend_cycles"):
        vals = [r[key] for r in audio if r.get(key) is not None]
        if vals:
            out[key + "_mean"] = float(sum(vals) / len(vals))
            out[key + "_max"] = int(max(vals))
    net = [r.get("instructions", r.get("cycles")) for r in audio]
    fe = [r.get("frontend_instructions", r.get("frontend_cycles")) for r in audio]
    if clock_hz and all(v is not None for v in net + fe):
        # seconds of compute per 1 s clip at the board's clock, counting one instruction (or
        # cycle) per clock tick: < 1 is faster than real time
        out["real_time_factor"] = float(sum(a + b for a, b in zip(net, fe)) / len(audio) / clock_hz)
    out["per_clip"] = [{
        "filename": r["filename"],
        "elements_equal": r.get("input_elements_equal"),
        "max_abs_lsb": r.get("input_max_abs_lsb"),
        "top1_agrees_features": (None if r.get("features_host_output") is None else
                                 _argmax(r["output"][:n_scenes]) == _argmax(r["features_host_output"][:n_scenes])),
        "frontend_counter": r.get("frontend_counter"),
        "frontend_instructions": r.get("frontend_instructions"),
        "network_instructions": r.get("instructions"),
        "network_cycles": r.get("cycles"),
    } for r in audio]
    return out


def _argmax(v):
    return max(range(len(v)), key=lambda i: (v[i], -i))


def _device_order(dev):
    from dsmn_host.data import tau

    return (tau.DEVICES.index(dev) if dev in tau.DEVICES else len(tau.DEVICES), dev)


def _agreement(results, out):
    """Board vs host TFLM int8 outputs: the same int8 graph on the same bytes should agree."""
    import numpy as np

    have = [i for i, r in enumerate(results) if r.get("host_output") is not None]
    if not have:
        return {"agreement_top1": None, "agreement_exact": None, "agreement_n": 0, "mismatches": []}
    host = np.array([results[i]["host_output"] for i in have], dtype=np.int64)
    board = out[have]
    n_scenes = len(_labels()[0])
    top1 = host[:, :n_scenes].argmax(1) == board[:, :n_scenes].argmax(1)
    exact = (host == board).all(axis=1)
    mismatches = []
    for j, i in enumerate(have):
        if not exact[j]:
            diff = int(np.abs(host[j] - board[j]).max())
            mismatches.append({
                "filename": results[i].get("filename"),
                "max_abs_diff": diff,
                "top1_agrees": bool(top1[j]),
                "board": board[j].tolist(),
                "host": host[j].tolist(),
            })
    return {
        "agreement_top1": float(top1.mean()),
        "agreement_exact": float(exact.mean()),
        "agreement_n": len(have),
        "mismatches": mismatches,
    }


def _latency(results, clock_hz):
    out = {}
    for key in ("cycles", "instructions"):
        vals = [r[key] for r in results if r.get(key) is not None]
        if not vals:
            continue
        entry = {"n": len(vals), "mean": float(sum(vals) / len(vals)),
                 "p50": _percentile(vals, 50), "p95": _percentile(vals, 95)}
        if clock_hz:
            ms = [v / float(clock_hz) * 1e3 for v in vals]
            entry["ms_mean"] = float(sum(ms) / len(ms))
            entry["ms_p50"] = _percentile(ms, 50)
            entry["ms_p95"] = _percentile(ms, 95)
        out[key] = entry
    if clock_hz:
        out["clock_hz"] = clock_hz
    return out


def _throughput(link, n):
    """Clips/s and bytes/s over the link, against what the link could carry at most."""
    if not link or not link.get("seconds"):
        return None
    secs = float(link["seconds"])
    clips = link.get("clips", n)
    out = {"clips": clips, "seconds": secs, "clips_per_s": clips / secs}
    if link.get("bytes") is not None:
        out["bytes"] = link["bytes"]
        out["bytes_per_s"] = link["bytes"] / secs
    limit = link.get("limit_bytes_per_s")
    if limit:
        out["limit_bytes_per_s"] = limit
        if link.get("bytes") is not None:
            out["link_utilisation"] = out["bytes_per_s"] / limit
        if link.get("bytes_per_clip"):
            out["limit_clips_per_s"] = limit / link["bytes_per_clip"]
    return out


def _fmt(v, pct=False, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if pct:
        return f"{100 * v:.1f} %"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(report) -> str:
    r = report
    lines = [
        "# On-device evaluation",
        "",
        f"{r['n_clips']} clips. Model `{r['run'].get('model_sha256', '?')[:16]}`"
        + (f", board `{r['run'].get('board')}`" if r["run"].get("board") else "") + ".",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy (10 scenes) | {_fmt(r['accuracy'], True)} |",
        f"| macro class accuracy | {_fmt(r['macro_class_accuracy'], True)} |",
        f"| log loss | {_fmt(r['log_loss'])} |",
        f"| 3-class head accuracy | {_fmt(r['coarse_accuracy'], True)} |",
        f"| agreement with host int8, top-1 | {_fmt(r['agreement_top1'], True)} ({r['agreement_n']} clips) |",
        f"| agreement with host int8, exact | {_fmt(r['agreement_exact'], True)} |",
    ]
    lat = r.get("latency") or {}
    for key in ("cycles", "instructions"):
        if key in lat:
            e = lat[key]
            lines.append(f"| {key} / inference (mean, p50, p95) | {e['mean']:,.0f}, {e['p50']:,.0f}, {e['p95']:,.0f} |")
            if "ms_mean" in e:
                lines.append(f"| latency ms at {lat['clock_hz'] / 1e6:g} MHz (mean, p50, p95) "
                             f"| {e['ms_mean']:.2f}, {e['ms_p50']:.2f}, {e['ms_p95']:.2f} |")
    tp = r.get("throughput")
    if tp:
        s = f"{tp['clips_per_s']:.3f} clips/s"
        if "bytes_per_s" in tp:
            s += f", {tp['bytes_per_s']:,.0f} B/s"
        if "limit_bytes_per_s" in tp:
            s += f" (link limit {tp['limit_bytes_per_s']:,.0f} B/s"
            if "limit_clips_per_s" in tp:
                s += f" = {tp['limit_clips_per_s']:.3f} clips/s"
            s += ")"
        lines.append(f"| throughput | {s} |")
    fe = r.get("front_end")
    if fe:
        lines.append(f"| front end: input elements equal to host | {_fmt(fe['elements_equal'], True)} "
                     f"(max {fe['max_abs_lsb']} LSB, {fe['n_clips_input_checked']} clips) |")
        lines.append(f"| front end: top-1 = host features path | {_fmt(fe['top1_agreement_features'], True)} |")
        if "frontend_instructions_mean" in fe:
            lines.append(f"| front end: instructions / clip (mean) | {fe['frontend_instructions_mean']:,.0f} |")
        if "real_time_factor" in fe:
            lines.append(f"| real-time factor (front end + network, 1 s clip) | {fe['real_time_factor']:.3f} |")
    lines += ["", "## Per device", "", "| device | clips | accuracy | log loss |", "|---|---|---|---|"]
    for dev, e in r["per_device"].items():
        lines.append(f"| {dev} | {e['n']} | {_fmt(e['accuracy'], True)} | {_fmt(e['log_loss'])} |")
    for g, e in r["per_device_group"].items():
        lines.append(f"| **{g}** ({', '.join(DEVICE_GROUPS[g])}) | {e['n']} | {_fmt(e['accuracy'], True)} | {_fmt(e['log_loss'])} |")
    lines += ["", "## Per class", "", "| scene | clips | accuracy |", "|---|---|---|"]
    for name, e in r["per_class"].items():
        lines.append(f"| {name} | {e['n']} | {_fmt(e['accuracy'], True)} |")
    lines += ["", f"Confusion matrix: [{REPORT_PNG}]({REPORT_PNG})", ""]
    if r["mismatches"]:
        lines += ["## Board ≠ host int8", "", "| clip | max abs diff | top-1 agrees |", "|---|---|---|"]
        for m in r["mismatches"]:
            lines.append(f"| {m['filename']} | {m['max_abs_diff']} | {m['top1_agrees']} |")
        lines.append("")
    return "\n".join(lines)


def plot_confusion(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.array(report["confusion"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    labels = report["labels"]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"On-device confusion ({report['n_clips']} clips, accuracy {100 * report['accuracy']:.1f} %)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="row-normalised")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report_dir, results, meta=None) -> dict:
    """Compute the report and write report.json, report.md and confusion.png into `report_dir`."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    report = compute_report(results, meta)
    (report_dir / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
    (report_dir / REPORT_MD).write_text(render_markdown(report))
    plot_confusion(report, report_dir / REPORT_PNG)
    return report
