import numpy as np
import pytest
import soundfile

from dsmn_host import cli
from dsmn_host.data import tau
from dsmn_host.errors import DsmnError

GOOD = [
    ("audio/airport-lisbon-1000-40000-0-a.wav", "airport", "train"),
    ("audio/airport-lisbon-1000-40000-0-b.wav", "airport", "train"),
    ("audio/tram-vienna-2000-10000-3-s4.wav", "tram", "evaluate"),
]


def write_mini_set(root, rows=GOOD):
    """A three-clip TAU22-layout directory written by hand, independent of synth.py."""
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    rng = np.random.default_rng(0)
    meta = ["filename\tscene_label\tidentifier\tsource_label"]
    split = {"train": ["filename\tscene_label"], "evaluate": ["filename\tscene_label"]}
    for filename, scene, part in rows:
        soundfile.write(root / filename, 0.1 * rng.standard_normal(44100), 44100, subtype="PCM_24")
        fields = filename[len("audio/"):-len(".wav")].split("-")
        meta.append(f"{filename}\t{scene}\t{fields[1]}-{fields[2]}\t{fields[5]}")
        split[part].append(f"{filename}\t{scene}")
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    for part, lines in split.items():
        (root / "evaluation_setup" / f"fold1_{part}.csv").write_text("\n".join(lines) + "\n")
    test_lines = ["filename"] + [line.split("\t")[0] for line in split["evaluate"][1:]]
    (root / "evaluation_setup" / "fold1_test.csv").write_text("\n".join(test_lines) + "\n")
    return root


def test_names_follow_the_paper():
    assert list(tau.SCENES) == sorted(tau.SCENES) and len(tau.SCENES) == 10
    assert tau.LABELS[10:] == ("indoor", "outdoor", "transportation") and len(tau.LABELS) == 13
    indoor = {s for s, c in tau.SCENE_TO_COARSE.items() if c == "indoor"}
    transport = {s for s, c in tau.SCENE_TO_COARSE.items() if c == "transportation"}
    assert indoor == {"airport", "metro_station", "shopping_mall"}
    assert transport == {"bus", "metro", "tram"}
    assert set(tau.SCENE_TO_COARSE) == set(tau.SCENES)


def test_reader_returns_labels_devices_and_locations(tmp_path):
    root = write_mini_set(tmp_path / "d")
    train = tau.read_split(root, "train")
    assert [c.device for c in train] == ["a", "b"]
    clip = train[0]
    assert (clip.scene, clip.city, clip.identifier, clip.coarse) == ("airport", "lisbon", "lisbon-1000", "indoor")
    assert train[0].segment == train[1].segment == "airport-lisbon-1000-40000-0"
    test = tau.read_split(root, "test")
    assert [(c.scene, c.device, c.coarse) for c in test] == [("tram", "s4", "transportation")]


def test_load_wav_gives_float32_second(tmp_path):
    root = write_mini_set(tmp_path / "d")
    wave = tau.load_wav(root / GOOD[0][0])
    assert wave.dtype == np.float32 and wave.shape == (44100,)
    assert 0.05 < wave.std() < 0.15


def test_missing_csv_is_named(tmp_path):
    root = write_mini_set(tmp_path / "d")
    (root / "evaluation_setup" / "fold1_train.csv").unlink()
    with pytest.raises(DsmnError, match="fold1_train.csv: missing"):
        tau.read_split(root, "train")
    (root / "meta.csv").unlink()
    with pytest.raises(DsmnError, match="meta.csv: missing"):
        tau.read_split(root, "evaluate")


def test_row_naming_missing_file_is_rejected(tmp_path):
    root = write_mini_set(tmp_path / "d")
    (root / GOOD[1][0]).unlink()
    with pytest.raises(DsmnError, match="airport-lisbon-1000-40000-0-b.wav: audio file missing"):
        tau.read_split(root, "train")


def test_unknown_scene_is_rejected(tmp_path):
    root = write_mini_set(tmp_path / "d")
    path = root / "evaluation_setup" / "fold1_train.csv"
    path.write_text(path.read_text().replace("\tairport\n", "\tbeach\n", 1))
    with pytest.raises(DsmnError, match="unknown scene 'beach'.*40000-0-a.wav"):
        tau.read_split(root, "train")


@pytest.mark.parametrize("kind, message", [
    ("48k", "sample rate 48000 Hz"),
    ("stereo", "2 channels"),
    ("short", "22050 samples"),
    ("corrupt", "not a readable WAV"),
])
def test_bad_wav_is_rejected_naming_the_file(tmp_path, kind, message):
    root = write_mini_set(tmp_path / "d")
    path = root / GOOD[1][0]
    noise = np.zeros(44100)
    if kind == "48k":
        soundfile.write(path, np.zeros(48000), 48000, subtype="PCM_24")
    elif kind == "stereo":
        soundfile.write(path, np.stack([noise, noise], 1), 44100, subtype="PCM_24")
    elif kind == "short":
        soundfile.write(path, noise[:22050], 44100, subtype="PCM_24")
    else:
        path.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(DsmnError, match=f"40000-0-b.wav: {message}"):
        tau.read_split(root, "train")
    with pytest.raises(DsmnError, match=f"40000-0-b.wav: {message}"):
        tau.load_wav(path)
    clips = tau.read_split(root, "train", skip_bad=True)
    assert [c.device for c in clips] == ["a"]
    assert len(clips.skipped) == 1 and clips.skipped[0][0] == GOOD[1][0]


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    root = write_mini_set(tmp_path / "d")
    (root / GOOD[0][0]).write_bytes(b"not audio")
    assert cli.main(["features", str(root), "--out", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "40000-0-a.wav: not a readable WAV" in err and "Traceback" not in err
    assert cli.main(["features", str(root), "--out", str(tmp_path / "cache2"), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 bad clips" in out


def test_meta_disagreeing_with_file_name_is_rejected(tmp_path):
    root = write_mini_set(tmp_path / "d")
    meta = root / "meta.csv"
    meta.write_text(meta.read_text().replace("lisbon-1000\tb", "lisbon-1000\tc"))
    with pytest.raises(DsmnError, match="meta.csv, line 3: .*disagree"):
        tau.read_split(root, "train")
