"""The on-device front end (firmware/frontend) against the host's (dsmn_host.data.features).

The C code is compiled here for the host with the same CMSIS-DSP sources and flags as the
firmware (tests/frontend_harness.c), so every clip of the synthetic evaluate split is checked
in well under a second; tests/test_eval_qemu.py checks the board's own bytes over the link.
"""

import json
import shutil

import numpy as np
import pytest

from dsmn_host.target import frontend

SCALE, ZP = 0.04637303948402405, 0  # the shipped model1's input quantization

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="needs a host C compiler")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    from frontend_support import build_native

    return build_native(tmp_path_factory.mktemp("frontend-native"))


def _check(native, pcms):
    from frontend_support import run_native

    board = run_native(native, pcms, SCALE, ZP)
    host = np.stack([frontend.reference_input(p, SCALE, ZP) for p in pcms])
    return board, host


def test_synthetic_evaluate_split_matches_host(native, synth_data_dir):
    from dsmn_host.data import tau

    clips = tau.read_split(synth_data_dir, "evaluate")
    pcms = [frontend.to_pcm16(tau.load_wav(c.path)) for c in clips]
    board, host = _check(native, pcms)
    overall = frontend.compare(board, host)
    assert overall["elements"] == len(clips) * 44 * 256 * 2
    assert overall["elements_equal"] >= 0.999 and overall["max_abs_lsb"] <= 1, overall
    for i in range(len(pcms)):
        assert frontend.compare(board[i], host[i])["elements_equal"] >= 0.999


@pytest.mark.parametrize("name", ["silence", "white_noise", "clipping", "click"])
def test_odd_sounds_match_host(native, name):
    from frontend_support import odd_sounds

    board, host = _check(native, [odd_sounds()[name]])
    c = frontend.compare(board, host)
    assert c["elements_equal"] >= 0.999 and c["max_abs_lsb"] <= 1, c


def test_full_scale_sine_within_one_lsb(native):
    from frontend_support import odd_sounds

    board, host = _check(native, [odd_sounds()["sine_full_scale"]])
    assert frontend.compare(board, host)["max_abs_lsb"] <= 1


@pytest.mark.xfail(strict=True, reason="measured 98.98 % equal (max 1 LSB). Not a bug on either side: the "
                   "1 kHz full-scale tone leaves bands 0-40 at 1e-13 to 1e-11 of the peak's power (amplitude "
                   "4e-7 to 3e-6 of it), at float32's resolution, so any float32 STFT reads rounding noise "
                   "there; test_float32_cannot_resolve_a_full_scale_sine measures that a float32 host "
                   "(numpy) misses 99.9 % too, and the board matches a float32-window host no better "
                   "than the float64 one")
def test_full_scale_sine_999_equal(native):
    from frontend_support import odd_sounds

    board, host = _check(native, [odd_sounds()["sine_full_scale"]])
    assert frontend.compare(board, host)["elements_equal"] >= 0.999


def _float32_host(pcm, window32=True, fft32=True):
    """features.logmel's STFT with the window and/or the FFT in float32 (what a float32 device,
    or torch's float32 hann_window and stft, computes), then the same mel, log and quantizer."""
    from dsmn_host.data import features as F, int8io

    wave = frontend.pcm16_to_wave(pcm).astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(wave, (2048, 2048), mode="reflect"), 4096)[::1024]
    w = F._window().astype(np.float32) if window32 else F._window()
    x = frames * w
    spec = np.fft.rfft(x.astype(np.float32) if fft32 else x, axis=-1)
    lm = np.log10(F.mel_power((spec.real ** 2 + spec.imag ** 2).T) + np.float32(F.LOG_OFFSET)).astype(np.float32)
    return int8io.prepare_input(lm, SCALE, ZP)


def test_float32_cannot_resolve_a_full_scale_sine():
    """Why the board misses 99.9 % on the pure tone: float32 itself. numpy's float32 FFT (a more
    accurate one than CMSIS-DSP's) also misses it, and rounding only the window's coefficients to
    float32, all else float64, already costs 0.2 %; on white noise the same float32 host is exact."""
    from frontend_support import odd_sounds

    sounds = odd_sounds()
    sine = sounds["sine_full_scale"]
    host = frontend.reference_input(sine, SCALE, ZP)
    assert (_float32_host(sine, fft32=False, window32=False) == host).all()  # the variant is features
    assert frontend.compare(_float32_host(sine), host)["elements_equal"] < 0.999
    assert frontend.compare(_float32_host(sine, fft32=False), host)["elements_equal"] < 0.999
    noise = sounds["white_noise"]
    assert frontend.compare(_float32_host(noise), frontend.reference_input(noise, SCALE, ZP))["elements_equal"] == 1.0


def test_streaming_split_does_not_matter(native):
    """The harness pushes each clip in a different piece pattern; the same clip twice (pattern
    offset by one) gives the same bytes, so frames do not depend on where chunks split."""
    from frontend_support import odd_sounds, run_native

    noise = odd_sounds()["white_noise"]
    out = run_native(native, [noise, noise, noise], SCALE, ZP)
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()


def test_tables_come_from_features(tmp_path):
    """The generated mel segments hold features' filterbank bit for bit: rebuilt from the
    (segment, weight pair) form, every band equals its row, zeros included."""
    from dsmn_host.data import features

    ctx = frontend.table_context()
    fb = features.mel_filterbank()
    seg = ctx["seg"]
    pair = np.array([float.fromhex(v[:-1]) for v in ctx["pair"]], dtype=np.float32).reshape(-1, 2)
    assert len(seg) == fb.shape[0] + 2 and seg == sorted(seg) and len(pair) == seg[-1] - seg[0]
    rebuilt = np.zeros_like(fb)
    for s in range(fb.shape[0] + 1):
        for k in range(seg[s], seg[s + 1]):
            if s > 0:
                rebuilt[s - 1, k] = pair[k - seg[0], 0]
            if s < fb.shape[0]:
                rebuilt[s, k] = pair[k - seg[0], 1]
            else:
                assert pair[k - seg[0], 1] == 0
    assert (rebuilt == fb).all()
    path = frontend.render_tables(tmp_path)
    assert path.read_text().count("0x") > 4000


def test_mel_segments_refuse_a_bin_in_three_bands():
    from dsmn_host.errors import DsmnError

    fb = np.zeros((4, 8), dtype=np.float32)
    fb[0, 1:4] = fb[1, 3:6] = fb[2, 5:7] = 1.0
    seg, pair = frontend.mel_segments(fb)
    assert seg == [1, 3, 5, 7, 7, 7] and len(pair) == 2 * 6
    fb[2, 3] = 1.0
    with pytest.raises(DsmnError, match="mel bin 3 adds to bands \\[0, 1, 2\\]"):
        frontend.mel_segments(fb)


def test_log10_within_two_ulp(native):
    """The front end's table log10 against float64 log10, over the mel sums' whole range
    (1e-10 .. 2^31), densely around 1 (where the result is near 0 and both sides of the top
    mantissa cell meet) and at every cell edge."""
    import subprocess

    rng = np.random.default_rng(1)
    lo, hi = np.array([1e-10, 2.0 ** 31], dtype=np.float32).view(np.uint32)
    near_one = np.float32(1.0).view(np.uint32) + np.arange(-20000, 20000, dtype=np.int64)
    edges = (np.arange(-33, 31, dtype=np.int64)[:, None] + 127 << 23 | np.arange(256)[None, :] << 15).ravel()
    bits = np.concatenate([rng.integers(lo, hi, 400000), near_one, edges, edges - 1]).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[(x >= 1e-10) & (x < 2.0 ** 31)]
    out = subprocess.run([str(native), "--log10"], input=x.astype("<f4").tobytes(), capture_output=True,
                         check=True).stdout
    got = np.frombuffer(out, dtype="<f4").astype(np.float64)
    ref = np.log10(x.astype(np.float64))
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    err = np.abs(got - ref) / ulp
    assert len(got) == len(x) and err.max() <= 2.0, (err.max(), x[err.argmax()])


def test_missing_cmsis_dsp_is_one_clear_error(monkeypatch, tmp_path):
    from dsmn_host.errors import DsmnError

    monkeypatch.setenv("DSMN_CMSISDSP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DsmnError, match="CMSIS-DSP 1.10.3 sources not there.*bootstrap"):
        frontend.cmsis_dsp_dir()


# ----------------------------------------------------------------------------------------------
# On the board: qemu-an386 running the shipped model1 with the front end in its arena

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                                reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/bootstrap.sh)")
N_AUDIO_CLIPS = 2


@pytest.fixture(scope="module")
def audio_fw(tmp_path_factory):
    from dsmn_host.target.firmware import DEFAULT_MODEL, build_firmware
    from dsmn_host.deploy.modelcard import card_paths

    rep = build_firmware(out=tmp_path_factory.mktemp("fw-audio"), quiet=True)
    return {"report": rep, "elf": rep["elf"], "card": card_paths(DEFAULT_MODEL)["json"]}


@pytest.fixture(scope="module")
def audio_run(audio_fw, feature_cache_dir, tmp_path_factory):
    from dsmn_host.link import evaluate
    from dsmn_host.target.emulate import Emulator

    out = tmp_path_factory.mktemp("eval-audio")
    with Emulator(audio_fw["elf"]) as emu:
        rep = evaluate.run_eval([emu.url], source=feature_cache_dir, limit=N_AUDIO_CLIPS, stratify=True,
                                card_path=audio_fw["card"], out_dir=out, baud=115200, log=lambda m: None,
                                input_mode="audio")
    return out, rep


@needs_qemu
def test_front_end_shares_the_arena(audio_fw):
    fe = audio_fw["report"]["front_end"]
    assert fe["scratch"] == "network arena" and fe["own_scratch_bytes"] == 0
    assert audio_fw["report"]["flash_bytes"] <= audio_fw["report"]["estimate"]["flash_bytes"]


@needs_qemu
def test_audio_eval_board_input_equals_host(audio_run):
    out, rep = audio_run
    fe = rep["front_end"]
    assert fe["n_clips"] == fe["n_clips_input_checked"] == N_AUDIO_CLIPS
    assert fe["elements"] == N_AUDIO_CLIPS * 44 * 256 * 2
    assert fe["elements_equal"] >= 0.999 and fe["max_abs_lsb"] <= 1
    assert all(c["elements_equal"] >= 0.999 for c in fe["per_clip"])
    # the network on the board's input vs the host model on the host's input from the same samples
    assert rep["agreement_top1"] == 1.0
    assert fe["top1_agreement_features"] is not None
    for c in fe["per_clip"]:
        assert 1e6 < c["frontend_instructions"] < 40e6 and c["network_instructions"] > 1e6
    assert fe["real_time_factor"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["input"] == "audio" and run["link"]["bytes_per_clip"] == 8 + 88200
    md = (out / "report.md").read_text()
    assert "front end: input elements equal to host" in md


@needs_qemu
def test_odd_sounds_on_the_board(audio_fw):
    from frontend_support import odd_sounds

    from dsmn_host.target import protocol
    from dsmn_host.target.emulate import Emulator

    sounds = odd_sounds()
    with Emulator(audio_fw["elf"]) as emu, protocol.Session.open(emu.url, response_timeout=300) as s:
        assert s.hello.audio and s.hello.window > 1 and s.hello.revision == 2
        for name in ("click",):  # silence and the rest: natively, above
            r = s.audio(5, sounds[name])
            assert r.status == 0 and r.frontend_counter > 0
            board = np.frombuffer(s.read_input(), dtype=np.int8).reshape(44, 256, 2)
            c = frontend.compare(board, frontend.reference_input(sounds[name], s.hello.input_scale,
                                                                 s.hello.input_zero_point))
            assert c["elements_equal"] >= 0.999 and c["max_abs_lsb"] <= 1, (name, c)
        with pytest.raises(protocol.DsmnError, match="44100 samples"):
            s.audio(6, sounds["click"][:1000])


@needs_qemu
def test_windowed_link_under_uniform_byte_errors(audio_fw):
    """1 % of bytes dropped or corrupted, uniformly, both ways: the chunk size shrinks and the
    board still receives every byte (PONG's length and CRC); a stop-and-wait (v1-style) host
    and the windowed one get the same RESULT from the revision-2 board."""
    from faultrelay import FaultRelay

    from dsmn_host.target import protocol
    from dsmn_host.target.emulate import Emulator

    x = np.random.default_rng(0).integers(-128, 128, (44, 256, 2)).astype(np.int8)
    with Emulator(audio_fw["elf"]) as emu:
        with protocol.Session.open(emu.url, response_timeout=120) as s:
            windowed = s.infer(1, x)
        with protocol.Session.open(emu.url, response_timeout=120, windowed=False) as s:
            saw = s.infer(1, x)
        assert saw.output == windowed.output
        with FaultRelay(emu.url, rate=0.01, max_burst=1, seed=5) as relay, \
                protocol.Session.open(relay.port, ack_timeout=0.3, boot_timeout=60) as s:
            payload = bytes((i * 41) & 0xFF for i in range(4096))
            assert s.ping(payload) == (len(payload), protocol.crc32(payload))
            stats = dict(relay.stats)
            assert s.chunk < s.hello.max_chunk and s.stats["restarts"] > 0
    assert stats["dropped"] > 0 and stats["corrupted"] > 0
    assert 0.005 < (stats["dropped"] + stats["corrupted"]) / (stats["to_board"] + stats["to_host"]) < 0.02


@needs_qemu
def test_audio_eval_through_faults_and_a_reset_is_identical(audio_fw, audio_run, feature_cache_dir, tmp_path):
    """The windowed link in audio mode (88 KB a clip) under bursts of dropped and corrupted
    bytes both ways (~1 %) and one power cycle in the middle of the second clip's stream: the
    same journal as the clean run of audio_run (outputs, board inputs against the host's,
    agreement); the front end's instruction count is a measurement, not a result: the receive
    interrupts of the bytes that arrive while it transforms a frame land inside it, and how many
    do depends on the line's pace (a clean pipelined line keeps the ring fuller than a lossy
    one: 15.15 M clean vs 14.99 M faulty measured for clip 1 here), so the two may differ by at
    most the interrupts of one clip's bytes."""
    from faultrelay import eval_through_faults

    clean_dir, _ = audio_run
    # The link-limit PING is one input (22,536 B), then 88,208 B per clip: reset in clip 2.
    stats, _ = eval_through_faults(audio_fw["elf"], tmp_path, seed=11, reset_after_bytes=22_536 + int(88_208 * 1.5),
                                   source=feature_cache_dir, limit=N_AUDIO_CLIPS, stratify=True,
                                   card_path=audio_fw["card"], input_mode="audio")
    assert stats["resets"] == 1 and stats["dropped"] > 0 and stats["corrupted"] > 0
    assert 0.003 < stats["fraction"] < 0.03
    timing = ("counter", "instructions", "cycles", "frontend_counter", "frontend_instructions", "frontend_cycles")
    faulty = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    clean = [json.loads(x) for x in (clean_dir / "results.jsonl").read_text().splitlines()]
    assert len(faulty) == len(clean) == N_AUDIO_CLIPS
    from firmware_support import RX_ISR_INSTRUCTIONS_PER_BYTE, pipelined_counter_ticks

    # The next clip's first window arrives while the network runs (pipelining): its interrupts
    # are counted in the network's time, so pipelined runs' network counters differ by that much.
    max_ticks = pipelined_counter_ticks(json.loads((clean_dir / "run.json").read_text()))
    clip_isr = RX_ISR_INSTRUCTIONS_PER_BYTE * (8 + 2 * 44100)
    for a, b in zip(faulty, clean):
        assert abs(a["frontend_instructions"] - b["frontend_instructions"]) <= clip_isr
        assert abs(a["counter"] - b["counter"]) <= max_ticks
        for r in (a, b):
            for k in timing:
                r.pop(k, None)
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    run = json.loads((tmp_path / "run.json").read_text())
    # The host sees the reset through the board's boot HELLO; when the faults hit that frame it
    # cannot, and the board's NAKs restart the request instead (the same journal, above).
    assert stats["boot_hello_hit"] is not None, stats
    seen = run["boards"][0]["stats"]["resets"]
    assert run["input"] == "audio" and seen == (0 if stats["boot_hello_hit"] else 1), (seen, stats)
