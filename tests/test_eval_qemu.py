"""`dsmn-host eval` against the real firmware in QEMU (mps2-an386, native runtime).

A small DSMN-shaped int8 model keeps the build and each inference short; the QEMU UART moves
~10-20 KB/s, so one 22.5 KB input is a second or two and every test stays at a handful of clips.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dsmn_host.link import evaluate
from dsmn_host.errors import DsmnError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from firmware_support import pipelined_counter_ticks  # noqa: E402

N_CLIPS = 4

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                                reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/bootstrap.sh)")


@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    """Firmware for model A; the cards of model A and of another model B."""
    from firmware_support import small_dsmn_tflite

    from dsmn_host.target.firmware import build_firmware
    from dsmn_host.deploy.modelcard import card_paths

    d = tmp_path_factory.mktemp("evalfw")
    a = small_dsmn_tflite(d / "a", seed=0)
    b = small_dsmn_tflite(d / "b", seed=1)
    rep = build_firmware(tflite=a, out=d / "build", quiet=True)
    return {"elf": rep["elf"], "card": card_paths(a)["json"], "other_card": card_paths(b)["json"]}


@pytest.fixture(scope="module")
def emu(fw):
    from dsmn_host.target.emulate import Emulator

    with Emulator(fw["elf"]) as e:
        yield e


@pytest.fixture(scope="module")
def clean_run(fw, emu, feature_cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-clean")
    rep = evaluate.run_eval([emu.url], source=feature_cache_dir, limit=N_CLIPS, stratify=True,
                            card_path=fw["card"], out_dir=out, baud=115200, log=lambda m: None)
    return out, rep


def test_board_agrees_exactly_with_host_int8(clean_run, fw, feature_cache_dir):
    from firmware_support import tflm_outputs

    from dsmn_host.data.features import open_features

    out, rep = clean_run
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == N_CLIPS == rep["n_clips"]
    assert len({r["filename"] for r in recs}) == N_CLIPS
    assert rep["agreement_exact"] == 1.0 and rep["mismatches"] == []
    # Independent host run: the training input of each row, quantized, through TFLM.
    cache = open_features(feature_cache_dir)
    card = json.loads(Path(fw["card"]).read_text())
    s, zp = card["input"]["scale"], card["input"]["zero_point"]
    xs = [evaluate.quantize(cache.inputs([r["row"]])[0].transpose(2, 1, 0), s, zp) for r in recs]
    want = tflm_outputs(Path(fw["card"]).with_name("small_int8.tflite"), xs)
    assert [r["output"] for r in recs] == want.astype(int).tolist()
    assert all(r["instructions"] > 0 and r["counter_kind"] == "systick" for r in recs)
    for name in ("report.json", "report.md", "confusion.png", "run.json"):
        assert (out / name).is_file()
    assert rep["latency"]["instructions"]["ms_p50"] > 0
    # Throughput accounting (the rates themselves are wall-clock: benchmarks/bench_eval.py measures them)
    tp = rep["throughput"]
    card = json.loads(Path(fw["card"]).read_text())
    input_bytes = int(np.prod(card["input"]["shape"]))
    assert tp["clips"] == N_CLIPS and tp["bytes"] == N_CLIPS * (input_bytes + 8)
    assert tp["clips_per_s"] > 0 and tp["limit_bytes_per_s"] > 0


def test_pipelined_eval_equals_one_request_at_a_time(clean_run, fw, emu, feature_cache_dir, tmp_path):
    """The clean run sends the next clip's first window while the board computes (the firmware's
    HELLO offers it); a host that waits for each RESULT first, as one without pipelining does,
    gets the same journal from the same board."""
    clean_dir, _ = clean_run
    assert json.loads((clean_dir / "run.json").read_text())["boards"][0]["stats"]["sent_ahead_chunks"] > 0
    evaluate.run_eval([emu.url], source=feature_cache_dir, limit=N_CLIPS, stratify=True, card_path=fw["card"],
                      out_dir=tmp_path, baud=115200, log=lambda m: None, pipelined=False)
    run = json.loads((tmp_path / "run.json").read_text())
    same_results(tmp_path / "results.jsonl", clean_dir / "results.jsonl", pipelined_counter_ticks(run))
    assert run["boards"][0]["stats"]["sent_ahead_chunks"] == 0


def test_board_with_another_model_is_refused(fw, emu, feature_cache_dir, tmp_path):
    other = json.loads(Path(fw["other_card"]).read_text())["sha256"]
    mine = json.loads(Path(fw["card"]).read_text())["sha256"]
    with pytest.raises(DsmnError) as err:
        evaluate.run_eval([emu.url], source=feature_cache_dir, limit=1, card_path=fw["other_card"],
                          out_dir=tmp_path, baud=115200, log=lambda m: None)
    assert other in str(err.value) and mine in str(err.value)
    assert not (tmp_path / "results.jsonl").read_bytes()


COUNTER_FIELDS = ("counter", "instructions", "cycles")


def same_results(a, b, max_ticks=1):
    """Journals equal line by line, byte for byte, except the board's time measurement, which
    may differ by one SysTick tick (40 instructions at 25 MHz): where in a tick the inference
    starts depends on UART timing; between pipelined runs by `max_ticks` (the next clip's
    bytes arriving during the inference: firmware_support.pipelined_counter_ticks). Returns
    the largest counter difference seen."""
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    assert len(la) == len(lb)
    worst = 0
    for x, y in zip(la, lb):
        rx, ry = json.loads(x), json.loads(y)
        worst = max(worst, abs(rx["counter"] - ry["counter"]))
        for r in (rx, ry):
            for k in COUNTER_FIELDS:
                r.pop(k, None)
        assert json.dumps(rx, sort_keys=True) == json.dumps(ry, sort_keys=True)
    assert worst <= max_ticks
    return worst


def test_faults_and_a_reset_give_identical_results(clean_run, fw, feature_cache_dir, tmp_path):
    """Bursts of dropped/corrupted bytes both ways (~1 % of bytes) plus one board power-cycle
    (QEMU restarted in the middle of the second clip) through a relay: the same journal."""
    from faultrelay import eval_through_faults

    clean_dir, _ = clean_run
    # The PING that measures the link is one input's size: reset during clip 2.
    stats, logs = eval_through_faults(fw["elf"], tmp_path, seed=7, reset_after_bytes=int(22_536 * 2.5),
                                      source=feature_cache_dir, limit=N_CLIPS, stratify=True,
                                      card_path=fw["card"])
    assert stats["resets"] == 1 and stats["dropped"] > 0 and stats["corrupted"] > 0
    assert 0.003 < stats["fraction"] < 0.03
    run = json.loads((tmp_path / "run.json").read_text())
    same_results(tmp_path / "results.jsonl", clean_dir / "results.jsonl", pipelined_counter_ticks(run))
    # The host sees the reset through the board's boot HELLO, unless the faults hit that frame
    # (the board's NAKs then restart the request: the same journal, above).
    assert stats["boot_hello_hit"] is not None, stats
    seen = not stats["boot_hello_hit"]
    assert run["boards"][0]["stats"]["resets"] == int(seen), (run["boards"][0]["stats"], stats)
    assert not seen or any("reset" in m for m in logs)
    assert run["boards"][0]["stats"]["sent_ahead_chunks"] > 0  # with pipelining on


def test_kill_9_and_resume_neither_loses_nor_repeats(clean_run, fw, emu, feature_cache_dir, tmp_path):
    clean_dir, _ = clean_run
    cmd = [sys.executable, "-m", "dsmn_host", "eval", "--port", emu.url, "--baud", "115200",
           "--cache", str(feature_cache_dir), "--limit", str(N_CLIPS), "--stratify",
           "--model-card", str(fw["card"]), "--out", str(tmp_path), "--resume"]
    results = tmp_path / "results.jsonl"
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and p.poll() is None:
        if results.is_file() and results.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the harness finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done_before = results.read_bytes().count(b"\n")
    assert 2 <= done_before < N_CLIPS
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{done_before} already in" in r.stdout
    same_results(results, clean_dir / "results.jsonl", pipelined_counter_ticks(json.loads((clean_dir / "run.json").read_text())))


def test_port_that_vanishes_is_reopened(clean_run, fw, emu, feature_cache_dir, tmp_path):
    from faultrelay import VanishingPort

    clean_dir, _ = clean_run
    logs = []
    with VanishingPort(emu.url, vanish_after_bytes=int(22_536 * 2.5), outage_s=2.0) as port:
        evaluate.run_eval([port.url], source=feature_cache_dir, limit=N_CLIPS, stratify=True,
                          card_path=fw["card"], out_dir=tmp_path, baud=115200, log=logs.append,
                          reopen_timeout=20)
        stats = dict(port.stats)
    assert stats["vanished"] == 1 and stats["connections"] >= 2
    assert any("reopening" in m for m in logs)
    run = json.loads((tmp_path / "run.json").read_text())
    same_results(tmp_path / "results.jsonl", clean_dir / "results.jsonl", pipelined_counter_ticks(run))
    assert run["boards"][0]["stats"]["reopens"] >= 1


def test_port_that_never_comes_back_fails_clearly(fw, feature_cache_dir, tmp_path):
    with pytest.raises(DsmnError, match="cannot open serial port /dev/nonexistent-dsmn"):
        evaluate.run_eval(["/dev/nonexistent-dsmn"], source=feature_cache_dir, limit=1,
                          card_path=fw["card"], out_dir=tmp_path, log=lambda m: None)


def test_two_boards_one_report(clean_run, fw, emu, feature_cache_dir, tmp_path):
    """`--port A --port B`: the clips are shared between two emulated boards, each checked for the
    model, and every clip comes back once with the same output as on one board."""
    from dsmn_host.target.emulate import Emulator

    with Emulator(fw["elf"]) as second:
        rep = evaluate.run_eval([emu.url, second.url], source=feature_cache_dir, limit=N_CLIPS, stratify=True,
                                card_path=fw["card"], out_dir=tmp_path, baud=115200, log=lambda m: None)
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    one = {json.loads(x)["filename"]: json.loads(x)["output"]
           for x in (clean_run[0] / "results.jsonl").read_text().splitlines()}
    assert sorted(r["filename"] for r in recs) == sorted(one)
    assert all(r["output"] == one[r["filename"]] for r in recs)
    run = json.loads((tmp_path / "run.json").read_text())
    assert sorted(b["port"] for b in run["boards"]) == sorted([emu.url, second.url])
    assert rep["n_clips"] == N_CLIPS
