"""The on-device front end (firmware/frontend) against the host's (dsmn_host.features).

The C code is compiled here for the host with the same CMSIS-DSP sources and flags as the
firmware (tests/frontend_harness.c), so every clip of the synthetic evaluate split is checked
in well under a second; tests/test_eval_qemu.py checks the board's own bytes over the link.
"""

import shutil

import numpy as np
import pytest

from dsmn_host import frontend

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
    from dsmn_host import tau

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


@pytest.mark.xfail(strict=True, reason="measured 98.98 % equal (max 1 LSB): a pure tone leaves the low "
                   "bands at the int16 noise floor, ~1e-9 of the frame's energy, where float32 FFT "
                   "rounding (CMSIS-DSP and numpy's float32 FFT alike) moves log10 by ~0.01")
def test_full_scale_sine_999_equal(native):
    from frontend_support import odd_sounds

    board, host = _check(native, [odd_sounds()["sine_full_scale"]])
    assert frontend.compare(board, host)["elements_equal"] >= 0.999


def test_streaming_split_does_not_matter(native):
    """The harness pushes each clip in a different piece pattern; the same clip twice (pattern
    offset by one) gives the same bytes, so frames do not depend on where chunks split."""
    from frontend_support import odd_sounds, run_native

    noise = odd_sounds()["white_noise"]
    out = run_native(native, [noise, noise, noise], SCALE, ZP)
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()


def test_tables_come_from_features(tmp_path):
    """The generated tables are features' filterbank and window, bit for bit."""
    from dsmn_host import features

    ctx = frontend.table_context()
    fb = features.mel_filterbank()
    w = np.array([float.fromhex(v[:-1]) for v in ctx["weights"]], dtype=np.float32)
    for m in (0, 17, 128, 255):
        a, n, o = ctx["first_bin"][m], ctx["nbins"][m], ctx["offset"][m]
        assert (w[o:o + n] == fb[m, a:a + n]).all() and not fb[m, :a].any() and not fb[m, a + n:].any()
    assert sum(ctx["nbins"]) == np.count_nonzero(fb)
    path = frontend.render_tables(tmp_path)
    assert path.read_text().count("0x") > 4000


def test_missing_cmsis_dsp_is_one_clear_error(monkeypatch, tmp_path):
    from dsmn_host.errors import DsmnError

    monkeypatch.setenv("DSMN_CMSISDSP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DsmnError, match="CMSIS-DSP 1.10.3 sources not there.*bootstrap"):
        frontend.cmsis_dsp_dir()
