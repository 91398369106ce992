"""report.py on hand-made results whose expected metrics are worked out here, by hand."""

import json
import math

import pytest

from dsmn_host.data import tau
from dsmn_host.link import report
from dsmn_host.errors import DsmnError


def logits(scene_winner, coarse_winner, high=50, low=-10):
    """13 int8 logits: `high` at the winning scene and coarse slots, `low` elsewhere."""
    out = [low] * 13
    out[tau.SCENES.index(scene_winner)] = high
    out[10 + tau.COARSE.index(coarse_winner)] = high
    return out


# (true scene, device, predicted scene, predicted coarse)
CASES = [
    ("airport", "a", "airport", "indoor"),          # right, right
    ("airport", "b", "bus", "indoor"),              # wrong, coarse right
    ("bus", "s1", "bus", "transportation"),         # right, right
    ("park", "s4", "park", "indoor"),               # right, coarse wrong
    ("park", "s4", "tram", "transportation"),       # wrong, coarse wrong
    ("tram", "c", "tram", "transportation"),        # right, right
]


def make_results():
    res = []
    for i, (scene, dev, pred, cpred) in enumerate(CASES):
        out = logits(pred, cpred)
        host = list(out)
        if i == 4:
            host[0] += 1  # differs from the board in one logit, top-1 unchanged
        res.append({"filename": f"audio/{scene}-x-{i}-{dev}.wav", "scene": scene, "device": dev,
                    "output": out, "host_output": host, "cycles": 1000 * (i + 1)})
    return res


META = {"output_scale": 0.1, "output_zero_point": -10, "clock_hz": 1_000_000,
        "link": {"bytes": 6 * 22_600, "seconds": 12.0, "clips": 6,
                 "limit_bytes_per_s": 92_160, "bytes_per_clip": 22_600}}


def test_metrics_match_hand_computation():
    r = report.compute_report(make_results(), META)
    assert r["n_clips"] == 6
    assert r["accuracy"] == pytest.approx(4 / 6)
    # classes present: airport 1/2, bus 1/1, park 1/2, tram 1/1
    assert r["macro_class_accuracy"] == pytest.approx((0.5 + 1 + 0.5 + 1) / 4)
    assert r["coarse_accuracy"] == pytest.approx(4 / 6)
    # dequantized: winner (50+10)*0.1 = 6.0, others 0.0; softmax over 10 scenes
    p_right = math.exp(6) / (math.exp(6) + 9)
    p_wrong = 1 / (math.exp(6) + 9)
    expect_ll = -(4 * math.log(p_right) + 2 * math.log(p_wrong)) / 6
    assert r["log_loss"] == pytest.approx(expect_ll, rel=1e-9)
    assert r["per_device"]["s4"] == pytest.approx({"n": 2, "accuracy": 0.5,
                                                   "log_loss": -(math.log(p_right) + math.log(p_wrong)) / 2})
    assert list(r["per_device"]) == ["a", "b", "c", "s1", "s4"]
    assert r["per_device_group"]["real"]["n"] == 3
    assert r["per_device_group"]["real"]["accuracy"] == pytest.approx(2 / 3)
    assert r["per_device_group"]["seen"] == pytest.approx({"n": 1, "accuracy": 1.0, "log_loss": -math.log(p_right)})
    assert r["per_device_group"]["unseen"]["accuracy"] == pytest.approx(0.5)
    assert r["per_class"]["airport"] == {"n": 2, "accuracy": 0.5}
    assert r["per_class"]["metro"] == {"n": 0, "accuracy": None}
    cm = r["confusion"]
    a, b, p, t = (tau.SCENES.index(s) for s in ("airport", "bus", "park", "tram"))
    assert cm[a][a] == 1 and cm[a][b] == 1 and cm[p][t] == 1 and cm[t][t] == 1
    assert sum(map(sum, cm)) == 6
    assert r["agreement_top1"] == 1.0
    assert r["agreement_exact"] == pytest.approx(5 / 6)
    assert [m["filename"] for m in r["mismatches"]] == ["audio/park-x-4-s4.wav"]
    assert r["mismatches"][0]["max_abs_diff"] == 1
    cyc = r["latency"]["cycles"]
    # cycles 1000..6000 at 1 MHz -> 1..6 ms; p50 = 3.5, p95 = 5 + 0.75 = 5.75 (linear interpolation)
    assert cyc["ms_mean"] == pytest.approx(3.5)
    assert cyc["ms_p50"] == pytest.approx(3.5)
    assert cyc["ms_p95"] == pytest.approx(5.75)
    tp = r["throughput"]
    assert tp["clips_per_s"] == pytest.approx(0.5)
    assert tp["link_utilisation"] == pytest.approx(6 * 22_600 / 12 / 92_160)
    assert tp["limit_clips_per_s"] == pytest.approx(92_160 / 22_600)


def test_write_report_files(tmp_path):
    r = report.write_report(tmp_path, make_results(), META)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    for key in ("n_clips", "accuracy", "log_loss", "per_device", "per_class", "agreement_top1", "agreement_exact"):
        assert key in on_disk
    assert on_disk["accuracy"] == r["accuracy"]
    md = (tmp_path / "report.md").read_text()
    assert "66.7 %" in md and "audio/park-x-4-s4.wav" in md
    png = (tmp_path / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_malformed_and_empty_results_are_user_errors():
    with pytest.raises(DsmnError, match="empty"):
        report.compute_report([], META)
    bad = make_results()
    bad[0]["output"] = bad[0]["output"][:12]
    with pytest.raises(DsmnError, match="shape"):
        report.compute_report(bad, META)
