"""The results journal and host-side input preparation of `dsmn-host eval` (no board needed)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dsmn_host.link import evaluate
from dsmn_host.errors import DsmnError


def rec(i):
    return {"filename": f"audio/clip-{i}.wav", "scene": "bus", "device": "a", "output": [i % 128] * 13}


def test_append_resume_and_no_duplicates(tmp_path):
    path = tmp_path / "results.jsonl"
    j = evaluate.Journal(path)
    assert j.append(rec(0)) and j.append(rec(1))
    assert not j.append(rec(1))  # same clip again: refused, nothing written
    j.close()
    with pytest.raises(DsmnError, match="--resume"):
        evaluate.Journal(path)
    # a torn last line, as kill -9 in the middle of a write leaves it
    with open(path, "ab") as f:
        f.write(b'{"filename":"audio/clip-2.wav","sce')
    j = evaluate.Journal(path, resume=True)
    assert j.done == {"audio/clip-0.wav", "audio/clip-1.wav"}
    assert j.append(rec(2))
    j.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(x)["filename"] for x in lines] == [f"audio/clip-{i}.wav" for i in range(3)]


def test_corrupt_journal_is_refused(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + json.dumps(rec(0)) + "\n")
    with pytest.raises(DsmnError, match="twice"):
        evaluate.Journal(path, resume=True)
    path.write_text("garbage\n")
    with pytest.raises(DsmnError, match="line 1"):
        evaluate.Journal(path, resume=True)


WRITER = """
import sys
from dsmn_host.link.evaluate import Journal
j = Journal(sys.argv[1], resume=True)
i = 0
while True:
    r = {"filename": f"audio/clip-{i}.wav", "scene": "bus", "device": "a", "output": [1] * 13, "pad": "x" * 3000}
    if j.append(r):
        print(i, flush=True)
    i += 1
"""


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    """Every record whose append returned survives SIGKILL; resuming repeats none of them."""
    path = tmp_path / "results.jsonl"
    acked = []
    for _round in range(3):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while len(acked) < 40 * (_round + 1) and time.monotonic() < deadline:
            acked.append(int(p.stdout.readline()))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        acked += [int(x) for x in p.stdout.read().split()]
        j = evaluate.Journal(path, resume=True)
        names = [r["filename"] for r in j.records]
        j.close()
        assert len(names) == len(set(names))
        assert {f"audio/clip-{i}.wav" for i in acked} <= set(names)
        assert names == [f"audio/clip-{i}.wav" for i in range(len(names))]


def test_quantize_matches_tflite_rounding():
    x = np.array([0.0, 0.05, -0.05, 0.15, 10.0, -10.0, 0.049], dtype=np.float32)
    q = evaluate.quantize(x, 0.1, 3)
    # 0.5 and -0.5 round away from zero; saturation at the int8 limits
    assert q.tolist() == [3, 4, 2, 5, 103, -97, 3]
    assert evaluate.quantize(np.array([100.0]), 0.1, 0).tolist() == [127]
    assert evaluate.quantize(np.array([-100.0]), 0.1, 0).tolist() == [-128]


def test_prepare_input_is_training_preprocessing_in_nhwc():
    from dsmn_host.data.features import logmel_to_input

    rng = np.random.default_rng(0)
    lm = rng.normal(-3, 1, size=(256, 44)).astype(np.float32)
    scale, zp = 0.03, -5
    q = evaluate.prepare_input(lm, scale, zp)
    assert q.shape == (44, 256, 2) and q.dtype == np.int8
    x = logmel_to_input(lm)  # (2, 256, 44)
    deq = (q.astype(np.float32) - zp) * scale
    inside = np.abs(x) < 120 * scale
    # time x mel x channel: element [t, m, c] is channel c, mel m, frame t of the training input
    assert np.all(np.abs(deq - x.transpose(2, 1, 0))[inside.transpose(2, 1, 0)] <= scale / 2 + 1e-6)
    assert deq[5, 100, 1] == pytest.approx(x[1, 100, 5], abs=scale / 2 + 1e-6)


class _Cache:
    """Just the label arrays `_stratified` reads."""

    def __init__(self, scenes, devices):
        self.scene_idx = np.array(scenes)
        self.device = np.array(devices)


def test_stratified_selection_covers_classes_and_devices_deterministically():
    scenes = [s for s in range(10) for _ in range(6)]
    devices = ["a", "a", "a", "b", "c", "s1"] * 10
    cache = _Cache(scenes, devices)
    rows = list(range(60))
    pick = evaluate._stratified(cache, rows, 20)
    assert pick == sorted(pick) and len(set(pick)) == 20
    per_scene = np.bincount(cache.scene_idx[pick], minlength=10)
    assert per_scene.tolist() == [2] * 10
    # within a scene the second pick is another device than the first
    for s in range(10):
        devs = [devices[r] for r in pick if scenes[r] == s]
        assert len(set(devs)) == 2
    assert evaluate._stratified(cache, rows, 20) == pick


def test_eval_report_command_rebuilds_the_report(tmp_path):
    from dsmn_host.cli import main

    lines = []
    for i, scene in enumerate(["bus", "bus", "park", "tram"]):
        out = [0] * 13
        out[1 if i < 3 else 9] = 100  # predicts bus, bus, bus, tram
        lines.append(json.dumps({"filename": f"audio/{scene}-{i}.wav", "scene": scene, "device": "a",
                                 "output": out, "host_output": out}))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "run.json").write_text(json.dumps({"output_scale": 0.05, "output_zero_point": 0,
                                                   "model_sha256": "ab" * 32}))
    assert main(["eval-report", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["n_clips"] == 4 and rep["accuracy"] == 0.75 and rep["agreement_exact"] == 1.0


def test_eval_refuses_bad_arguments(capsys):
    from dsmn_host.cli import main

    assert main(["eval", "--port", "/dev/null", "--cache", "x", "--stratify"]) == 2
    assert "--stratify needs --limit" in capsys.readouterr().err
