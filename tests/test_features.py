import json
import shutil

import numpy as np
import pytest
import torch

from dsmn_host import cli
from dsmn_host.data import features, tau
from dsmn_host.errors import DsmnError

librosa = pytest.importorskip("librosa")

STFT = dict(sr=44100, n_fft=4096, hop_length=1024, win_length=4096, window="hann",
            center=True, pad_mode="reflect", power=2.0, n_mels=256, htk=True, norm="slaney")


def scene_like_wave(seed=0):
    """Noise plus a tone and a click: energy spread over many orders of magnitude."""
    rng = np.random.default_rng(seed)
    t = np.arange(44100) / 44100
    wave = 0.05 * rng.standard_normal(44100) + 0.2 * np.sin(2 * np.pi * 440 * t)
    wave[20000:20050] += 0.5
    return wave.astype(np.float32)


def test_mel_filterbank_matches_librosa_htk_slaney():
    ref = librosa.filters.mel(sr=44100, n_fft=4096, n_mels=256, htk=True, norm="slaney")
    np.testing.assert_allclose(features.mel_filterbank(), ref, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_logmel_matches_librosa(seed):
    wave = scene_like_wave(seed)
    ref_mel = librosa.feature.melspectrogram(y=wave.astype(np.float64), **STFT)
    ours = features.logmel(wave)
    assert ours.shape == ref_mel.shape == (256, 44) and ours.dtype == np.float32
    # Compare powers (relative): log values near 0 make a relative test on log10 meaningless.
    np.testing.assert_allclose(10.0 ** ours.astype(np.float64) - 1e-10, ref_mel, rtol=1e-4)
    np.testing.assert_allclose(ours, np.log10(ref_mel + 1e-10), rtol=1e-4, atol=1e-4)


def test_one_second_gives_44_frames_and_batches_agree():
    waves = np.stack([scene_like_wave(0), scene_like_wave(1)])
    batch = features.logmel(waves)
    assert batch.shape == (2, 256, features.N_FRAMES) and features.N_FRAMES == 44
    np.testing.assert_allclose(batch[1], features.logmel(waves[1]), rtol=1e-6, atol=1e-6)


def test_logmel_rejects_wrong_length():
    with pytest.raises(DsmnError, match="44100 samples"):
        features.logmel(np.zeros(48000, dtype=np.float32))


def test_delta_follows_the_regression_formula():
    ramp = np.arange(6, dtype=np.float64)
    # Edges replicate: x[-2] = x[-1] = 0 and x[6] = x[7] = 5.
    np.testing.assert_allclose(features.deltas(ramp), [0.5, 0.8, 1.0, 1.0, 0.8, 0.5])
    impulse = np.zeros(7)
    impulse[3] = 1.0
    np.testing.assert_allclose(features.deltas(impulse), [0, 0.2, 0.1, 0, -0.1, -0.2, 0])
    x = np.random.default_rng(0).standard_normal((3, 256, 44)).astype(np.float32)
    np.testing.assert_allclose(features.deltas(torch.from_numpy(x)).numpy(), features.deltas(x), atol=1e-6)


def test_input_is_normalised_logmel_and_delta_for_numpy_and_torch():
    lm = np.stack([features.logmel(scene_like_wave(s)) for s in (0, 1, 2)])
    x = features.logmel_to_input(lm)
    assert x.shape == (3, 2, 256, 44) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=(-2, -1)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(-2, -1), ddof=1), 1, atol=1e-5)
    expect_delta = features.deltas(lm[1])
    expect_delta = (expect_delta - expect_delta.mean()) / expect_delta.std(ddof=1)
    np.testing.assert_allclose(x[1, 1], expect_delta, atol=1e-4)
    xt = features.logmel_to_input(torch.from_numpy(lm))
    assert isinstance(xt, torch.Tensor) and xt.shape == (3, 2, 256, 44)
    np.testing.assert_allclose(xt.numpy(), x, atol=1e-5)
    assert features.logmel_to_input(lm[0]).shape == (2, 256, 44)


def test_features_wav_writes_logmel_and_input(synth_data_dir, tmp_path):
    clip = tau.read_split(synth_data_dir, "train")[0]
    out = tmp_path / "one.npz"
    assert cli.main(["features", "--wav", clip.path, "--npz", str(out)]) == 0
    with np.load(out) as z:
        assert z["logmel"].shape == (256, 44) and z["logmel"].dtype == np.float32
        assert z["input"].shape == (2, 256, 44) and z["input"].dtype == np.float32
        np.testing.assert_array_equal(z["logmel"], features.logmel(tau.load_wav(clip.path)))
        np.testing.assert_allclose(z["input"], features.logmel_to_input(z["logmel"]), atol=1e-6)


def test_cache_round_trips_features_and_labels(synth_data_dir, feature_cache_dir):
    cache = features.open_features(feature_cache_dir)
    assert cache.params == features.PARAMS
    for split in ("train", "evaluate", "test"):
        clips = tau.read_split(synth_data_dir, split)
        idx = cache.indices(split)
        assert [cache.filename[i] for i in idx] == [c.filename for c in clips]
        assert [tau.SCENES[cache.scene_idx[i]] for i in idx] == [c.scene for c in clips]
        assert [tau.COARSE[cache.coarse_idx[i]] for i in idx] == [c.coarse for c in clips]
        assert [cache.device[i] for i in idx] == [c.device for c in clips]
        assert [cache.identifier[i] for i in idx] == [c.identifier for c in clips]
    assert set(cache.split[cache.indices("train")]) == {"train"}
    for i in (0, len(cache) // 2, len(cache) - 1):
        path = synth_data_dir / cache.filename[i]
        np.testing.assert_array_equal(cache.logmel[i], features.logmel(tau.load_wav(path)))
    assert cache.logmel.shape == (len(cache), 256, 44) and isinstance(cache.logmel, np.memmap)


def test_device_response_table_is_device_minus_a(feature_cache_dir):
    cache = features.open_features(feature_cache_dir)
    table, devs = cache.device_response, cache.device_response_device
    train = cache.indices("train")
    non_a = [i for i in train if cache.device[i] != "a"]
    assert table.shape == (len(non_a), 256) and len(devs) == len(non_a)
    assert set(devs) <= {"b", "c", "s1", "s2", "s3"}
    i = non_a[0]
    segment = cache.filename[i].rsplit("-", 1)[0]
    ref = int(np.flatnonzero(cache.filename == f"{segment}-a.wav")[0])
    expect = cache.logmel[i].mean(axis=1) - cache.logmel[ref].mean(axis=1)
    np.testing.assert_allclose(table[0], expect, atol=1e-5)
    assert devs[0] == cache.device[i]


def test_open_features_on_data_dir_builds_next_to_it_then_reuses(synth_data_dir, tmp_path):
    data = tmp_path / "set"
    shutil.copytree(synth_data_dir, data)
    cache = features.open_features(data, workers=1, progress=False)
    assert cache.path == tmp_path / "set.features"
    stamp = (cache.path / "logmel.npy").stat().st_mtime_ns
    again = features.open_features(data)
    assert (again.path / "logmel.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.logmel, cache.logmel)


def test_interrupted_cache_resumes_only_missing_rows(synth_data_dir, feature_cache_dir, tmp_path):
    cache_dir = tmp_path / "partial.features"
    shutil.copytree(feature_cache_dir, cache_dir)
    reference = np.array(np.load(feature_cache_dir / "logmel.npy"))
    lm = np.load(cache_dir / "logmel.npy", mmap_mode="r+")
    lm[5:9] = 0
    lm.flush()
    del lm
    done = np.load(cache_dir / "done.npy")
    done[5:9] = False
    np.save(cache_dir / "done.npy", done)
    (cache_dir / "device_response.npz").unlink()
    with pytest.raises(DsmnError, match="incomplete"):
        features.FeatureCache(cache_dir)
    cache = features.build_cache(synth_data_dir, cache_dir, workers=1, progress=False)
    np.testing.assert_array_equal(cache.logmel, reference)


def test_cache_with_other_parameters_is_refused(synth_data_dir, feature_cache_dir, tmp_path):
    cache_dir = tmp_path / "other.features"
    shutil.copytree(feature_cache_dir, cache_dir)
    info = json.loads((cache_dir / "params.json").read_text())
    info["params"]["n_mels"] = 128
    (cache_dir / "params.json").write_text(json.dumps(info))
    with pytest.raises(DsmnError, match="other parameters.*n_mels"):
        features.open_features(cache_dir)
    with pytest.raises(DsmnError, match="other parameters"):
        features.build_cache(synth_data_dir, cache_dir, workers=1, progress=False)


def test_cache_of_another_clip_list_is_refused(synth_data_dir, feature_cache_dir, tmp_path):
    data = tmp_path / "set"
    shutil.copytree(synth_data_dir, data)
    train_csv = tau.split_csv(data, "train")
    lines = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join(lines[:-1]) + "\n")
    cache_dir = tmp_path / "c.features"
    shutil.copytree(feature_cache_dir, cache_dir)
    with pytest.raises(DsmnError, match="another clip list"):
        features.build_cache(data, cache_dir, workers=1, progress=False)


def test_parallel_build_equals_serial(synth_data_dir, feature_cache_dir, tmp_path):
    cache = features.build_cache(synth_data_dir, tmp_path / "par.features", workers=2, progress=False, chunk=8)
    np.testing.assert_array_equal(cache.logmel, np.load(feature_cache_dir / "logmel.npy"))
