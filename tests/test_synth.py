import hashlib

import numpy as np
import pytest
import soundfile

from dsmn_host import cli
from dsmn_host.data import features, tau
from dsmn_host.errors import DsmnError
from dsmn_host.data.synth import DeviceModel, write_synthetic_set


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_synthetic_set_has_the_tau22_layout(synth_data_dir):
    assert (synth_data_dir / "meta.csv").read_text().splitlines()[0] == "filename\tscene_label\tidentifier\tsource_label"
    for split, header in (("train", "filename\tscene_label"), ("evaluate", "filename\tscene_label"), ("test", "filename")):
        assert tau.split_csv(synth_data_dir, split).read_text().splitlines()[0] == header
    train = tau.read_split(synth_data_dir, "train")  # validates every WAV header
    evaluate = tau.read_split(synth_data_dir, "evaluate")
    test = tau.read_split(synth_data_dir, "test")
    assert [c.filename for c in test] == [c.filename for c in evaluate]
    assert {c.scene for c in train} == {c.scene for c in evaluate} == set(tau.SCENES)
    info = soundfile.info(str(synth_data_dir / train[0].filename))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 1, 44100, "PCM_24")
    n_files = len(list((synth_data_dir / "audio").glob("*.wav")))
    assert n_files == len(train) + len(evaluate) == 90


def test_unseen_devices_only_in_evaluate_and_locations_disjoint(synth_data_dir):
    train = tau.read_split(synth_data_dir, "train", check_audio=False)
    evaluate = tau.read_split(synth_data_dir, "evaluate", check_audio=False)
    assert {c.device for c in train} <= {"a", "b", "c", "s1", "s2", "s3"}
    assert {c.device for c in evaluate} & set(tau.UNSEEN_DEVICES)
    assert not {c.identifier for c in train} & {c.identifier for c in evaluate}


def test_segments_are_recorded_by_device_a_and_others(synth_data_dir):
    clips = tau.read_split(synth_data_dir, "train", check_audio=False)
    by_segment = {}
    for c in clips:
        by_segment.setdefault(c.segment, []).append(c)
    assert all("a" in {c.device for c in group} for group in by_segment.values())
    group = next(g for g in by_segment.values() if len(g) >= 2)
    assert len({c.identifier for c in group}) == 1
    # Same sound, different device: strongly correlated spectra, yet not identical files.
    a, other = (features.logmel(tau.load_wav(c.path)) for c in sorted(group, key=lambda c: c.device != "a")[:2])
    assert not np.array_equal(a, other)
    assert np.corrcoef(a.ravel(), other.ravel())[0, 1] > 0.8


def test_same_seed_same_bytes_other_seed_other_set(tmp_path):
    write_synthetic_set(tmp_path / "one", clips_per_class=6, seed=7)
    write_synthetic_set(tmp_path / "two", clips_per_class=6, seed=7)
    write_synthetic_set(tmp_path / "three", clips_per_class=6, seed=8)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert digest(tmp_path / "one") != digest(tmp_path / "three")


def test_clips_per_class_sets_the_size(tmp_path):
    summary = write_synthetic_set(tmp_path / "s", clips_per_class=7, seed=0)
    meta = (tmp_path / "s" / "meta.csv").read_text().splitlines()[1:]
    assert summary["clips"] == len(meta) == 70
    assert all(sum(line.split("\t")[1] == s for line in meta) == 7 for s in tau.SCENES)


def test_devices_differ_in_frequency_response():
    a, b, s1 = (DeviceModel(d).response_db for d in ("a", "b", "s1"))
    assert np.ptp(a[100:16000]) < np.ptp(s1[100:16000])
    assert np.abs(b - s1).max() > 3
    np.testing.assert_array_equal(DeviceModel("s4").response_db, DeviceModel("s4").response_db)


def test_refuses_bad_arguments_and_non_empty_dirs(tmp_path):
    with pytest.raises(DsmnError, match="difficulty"):
        write_synthetic_set(tmp_path / "x", clips_per_class=6, difficulty="impossible")
    with pytest.raises(DsmnError, match="difficulty"):
        write_synthetic_set(tmp_path / "x", clips_per_class=6, difficulty=1.5)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("keep me")
    with pytest.raises(DsmnError, match="not empty"):
        write_synthetic_set(tmp_path / "busy", clips_per_class=6, force=True)
    assert (tmp_path / "busy" / "thesis.tex").exists()


def test_cli_writes_set_and_force_replaces_it(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["synth-data", str(out), "--clips-per-class", "6", "--seed", "3"]) == 0
    assert "60 clips" in capsys.readouterr().out
    assert cli.main(["synth-data", str(out), "--clips-per-class", "6"]) == 2
    assert cli.main(["synth-data", str(out), "--clips-per-class", "6", "--seed", "4", "--force"]) == 0
    assert len(list((out / "audio").glob("*.wav"))) == 60


def test_scenes_are_learnable_but_not_trivial(feature_cache_dir):
    """Nearest class mean of the normalised spectrum: well above chance (0.1) on the held-out
    locations, while the training locations themselves are not perfectly separated."""
    cache = features.open_features(feature_cache_dir)
    x = features.logmel_to_input(np.asarray(cache.logmel))[:, 0].mean(axis=-1)
    y = cache.scene_idx
    tr, ev = cache.indices("train"), cache.indices("evaluate")
    means = np.stack([x[tr][y[tr] == k].mean(axis=0) for k in range(10)])
    predict = lambda rows: np.argmin(((x[rows, None, :] - means) ** 2).sum(-1), axis=1)  # noqa: E731
    assert np.mean(predict(ev) == y[ev]) > 0.3
    assert np.mean(predict(tr) == y[tr]) < 1.0
