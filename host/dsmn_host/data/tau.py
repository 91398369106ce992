"""TAU Urban Acoustic Scenes 2022 Mobile: names, file layout and a reader that validates it.

Every later stage trusts what this module returns, so it checks the whole layout up front and
turns each problem into a `DsmnError` naming the file, rather than letting a bad clip surface
as a numpy error halfway through feature extraction or training.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

from dsmn_host.errors import DsmnError

SCENES = (
    "airport", "bus", "metro", "metro_station", "park", "public_square",
    "shopping_mall", "street_pedestrian", "street_traffic", "tram",
)
COARSE = ("indoor", "outdoor", "transportation")
SCENE_TO_COARSE = {
    "airport": "indoor", "metro_station": "indoor", "shopping_mall": "indoor",
    "park": "outdoor", "public_square": "outdoor", "street_pedestrian": "outdoor",
    "street_traffic": "outdoor",
    "bus": "transportation", "metro": "transportation", "tram": "transportation",
}
# The model's 13 outputs: 10 scenes, then the 3 coarse classes of the paper's auxiliary head.
LABELS = SCENES + COARSE
DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
REFERENCE_DEVICE = "a"
# s4-s6 never occur in the training split: they measure generalisation to unseen devices.
UNSEEN_DEVICES = ("s4", "s5", "s6")
SPLITS = ("train", "evaluate", "test")

SAMPLE_RATE = 44100
CLIP_SAMPLES = 44100

META_HEADER = ["filename", "scene_label", "identifier", "source_label"]
SPLIT_HEADERS = {
    "train": ["filename", "scene_label"],
    "evaluate": ["filename", "scene_label"],
    "test": ["filename"],
}


def split_csv(data_dir, split) -> Path:
    return Path(data_dir) / "evaluation_setup" / f"fold1_{split}.csv"


class Clip(NamedTuple):
    path: str
    filename: str  # relative to the data directory, as written in the CSVs: audio/<name>.wav
    scene: str
    device: str
    city: str
    identifier: str  # <city>-<location>: the recording location, never shared across splits
    coarse: str
    segment: str  # file stem without the device: the same segment recorded by several devices


class ClipList(list):
    """The clips of a split; `skipped` lists (filename, reason) for clips left out on request."""

    def __init__(self, clips=(), skipped=()):
        super().__init__(clips)
        self.skipped = list(skipped)


class FileName(NamedTuple):
    scene: str
    city: str
    location: str
    segment_id: str
    k: str
    device: str


def parse_filename(filename) -> FileName:
    """Split `<scene>-<city>-<location>-<segment>-<k>-<device>.wav` into its fields."""
    name = Path(filename).name
    if not name.endswith(".wav"):
        raise DsmnError(f"{filename}: not a .wav file name")
    parts = name[: -len(".wav")].split("-")
    if len(parts) != 6:
        raise DsmnError(
            f"{filename}: expected <scene>-<city>-<location>-<segment>-<k>-<device>.wav"
        )
    fields = FileName(*parts)
    if fields.scene not in SCENES:
        raise DsmnError(f"{filename}: unknown scene '{fields.scene}' (known: {', '.join(SCENES)})")
    if fields.device not in DEVICES:
        raise DsmnError(f"{filename}: unknown device '{fields.device}' (known: {', '.join(DEVICES)})")
    return fields


def format_filename(scene, city, location, segment_id, k, device) -> str:
    return f"audio/{scene}-{city}-{location}-{segment_id}-{k}-{device}.wav"


def _read_tsv(path: Path, header):
    if not path.is_file():
        raise DsmnError(f"{path}: missing (expected a TAU22 tab-separated file with columns {header})")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DsmnError(f"{path}: cannot read: {exc}") from None
    if not rows or rows[0] != header:
        got = rows[0] if rows else "an empty file"
        raise DsmnError(f"{path}: header must be {header} (tab-separated), found {got}")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DsmnError(f"{path}, line {line}: expected {len(header)} tab-separated fields, found {len(row)}")
        out.append((line, row))
    return out


def wav_problem(path) -> str | None:
    """Why a clip's header is not a TAU22 clip (44.1 kHz, mono, 1 s), or None if it is."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as exc:  # libsndfile reports corrupt files with several exception types
        return f"not a readable WAV file ({exc})"
    if info.samplerate != SAMPLE_RATE:
        return f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz"
    if info.channels != 1:
        return f"{info.channels} channels, expected mono"
    if info.frames != CLIP_SAMPLES:
        return f"{info.frames} samples ({info.frames / info.samplerate:.3f} s), expected {CLIP_SAMPLES} (1 s)"
    return None


def load_wav(path) -> np.ndarray:
    """Read one TAU22 clip as float32 (44100,) in [-1, 1], or raise naming the file."""
    import numpy as np
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise DsmnError(f"{path}: audio file missing")
    problem = wav_problem(path)
    if problem:
        raise DsmnError(f"{path}: {problem}")
    try:
        wave, _ = soundfile.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:
        raise DsmnError(f"{path}: not a readable WAV file ({exc})") from None
    if wave.shape != (CLIP_SAMPLES,):
        raise DsmnError(f"{path}: decoded {wave.shape} samples, expected ({CLIP_SAMPLES},)")
    if not np.all(np.isfinite(wave)):
        raise DsmnError(f"{path}: contains NaN or infinite samples")
    return wave


def read_meta(data_dir) -> dict:
    """filename -> (scene, identifier, device) from meta.csv, checked against the file names."""
    path = Path(data_dir) / "meta.csv"
    meta = {}
    for line, (filename, scene, identifier, device) in _read_tsv(path, META_HEADER):
        where = f"{path}, line {line}"
        if scene not in SCENES:
            raise DsmnError(f"{where}: unknown scene '{scene}' for {filename}")
        try:
            fields = parse_filename(filename)
        except DsmnError as exc:
            raise DsmnError(f"{where}: {exc}") from None
        if (fields.scene, fields.device, f"{fields.city}-{fields.location}") != (scene, device, identifier):
            raise DsmnError(f"{where}: scene/identifier/device columns disagree with the file name {filename}")
        meta[filename] = (scene, identifier, device)
    return meta


def read_split(data_dir, split, check_audio=True, skip_bad=False, meta=None) -> ClipList:
    """The clips of `split` ('train', 'evaluate' or 'test') in CSV order.

    Missing or malformed CSVs always raise. A bad clip (missing file, unknown scene, WAV that is
    not 44.1 kHz mono 1 s) raises too, unless `skip_bad`, in which case it is left out and listed
    in the result's `.skipped`. `check_audio` reads every WAV header (cheap; real TAU22 has
    ~140k clips and takes well under a minute).
    """
    data_dir = Path(data_dir)
    if split.startswith("fold1_"):
        split = split[len("fold1_"):]
    if split not in SPLITS:
        raise DsmnError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")
    if not data_dir.is_dir():
        raise DsmnError(f"{data_dir}: data directory missing")
    if meta is None:
        meta = read_meta(data_dir)
    csv_path = split_csv(data_dir, split)
    clips, skipped = [], []
    for line, row in _read_tsv(csv_path, SPLIT_HEADERS[split]):
        filename = row[0]
        try:
            clips.append(_clip(data_dir, csv_path, line, row, meta, check_audio))
        except DsmnError as exc:
            if not skip_bad:
                raise
            skipped.append((filename, str(exc)))
    return ClipList(clips, skipped)


def _clip(data_dir, csv_path, line, row, meta, check_audio) -> Clip:
    filename = row[0]
    where = f"{csv_path}, line {line}"
    if len(row) > 1 and row[1] not in SCENES:
        raise DsmnError(f"{where}: unknown scene '{row[1]}' for {filename}")
    if filename not in meta:
        raise DsmnError(f"{where}: {filename} is not listed in meta.csv")
    scene, identifier, device = meta[filename]
    if len(row) > 1 and row[1] != scene:
        raise DsmnError(f"{where}: scene '{row[1]}' for {filename} disagrees with meta.csv ('{scene}')")
    path = data_dir / filename
    if not path.is_file():
        raise DsmnError(f"{path}: audio file missing (listed in {csv_path.name}, line {line})")
    if check_audio:
        problem = wav_problem(path)
        if problem:
            raise DsmnError(f"{path}: {problem}")
    fields = parse_filename(filename)
    segment = Path(filename).name[: -len(f"-{device}.wav")]
    return Clip(str(path), filename, scene, device, fields.city, identifier,
                SCENE_TO_COARSE[scene], segment)
