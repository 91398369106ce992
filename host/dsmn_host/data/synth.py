"""A synthetic data set in exactly the TAU22 Mobile layout, so every stage, the demo and the
tests run without the 30 GB original.

Each scene class has its own (deliberately overlapping) statistics: a background spectral
envelope, a slow loudness texture, and a mix of sound events (babble, engine hum, rail clacks,
bird chirps, bells, car passes, ...). Every recording location adds its own colouring, so the
location-disjoint train/evaluate split measures generalisation as TAU's does. Each segment is
"recorded" by device a and by two other simulated devices (frequency response, noise floor,
gain, mild saturation); s4-s6 only record evaluation locations.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import struct
import zlib
from pathlib import Path

from dsmn_host.data import tau
from dsmn_host.errors import DsmnError

SR = tau.SAMPLE_RATE
N = tau.CLIP_SAMPLES
CITIES = ("amsterdam", "barcelona", "helsinki", "lisbon", "london",
          "lyon", "milan", "paris", "prague", "stockholm", "vienna")
DEFAULT_CLIPS_PER_CLASS = 120
DIFFICULTY = {"easy": 0.2, "medium": 0.5, "hard": 0.8}
DEFAULT_DIFFICULTY = "medium"
SEGMENTS_PER_LOCATION = 4
EVALUATE_FRACTION = 0.3
DEVICES_PER_SEGMENT = 3  # device a plus two others, as TAU22's parallel recordings

# Background envelope (dB) at these frequencies, interpolated on a log-frequency axis.
ENV_HZ = (20.0, 60.0, 150.0, 400.0, 1000.0, 2500.0, 6000.0, 12000.0, 22050.0)

# name: (background dB at ENV_HZ, loudness-modulation (rate Hz, depth), events)
# events: (kind, rate per second or level for continuous kinds, low Hz, high Hz, level dB)
SCENE_PROFILES = {
    "airport": ([-14, -8, -4, 0, 0, -3, -10, -18, -30], (0.4, 0.2), [
        ("babble", 1, 300, 3000, -4), ("tone", 0.7, 500, 1200, 2), ("swell", 0.8, 200, 1500, -4)]),
    "bus": ([0, 2, 0, -6, -12, -18, -24, -30, -40], (0.3, 0.3), [
        ("hum", 1, 35, 70, 2), ("babble", 1, 300, 3000, -12), ("tone", 0.1, 1500, 2500, -8)]),
    "metro": ([-2, 0, -2, -6, -10, -6, -10, -24, -36], (0.8, 0.4), [
        ("hum", 1, 90, 220, -6), ("clack", 2.0, 200, 4000, 2), ("squeal", 0.6, 2000, 5000, -2)]),
    "metro_station": ([-12, -8, -4, -2, -2, -6, -12, -22, -34], (0.3, 0.3), [
        ("babble", 1, 300, 3000, -6), ("tone", 0.5, 2000, 3200, 0), ("swell", 0.5, 30, 400, 4),
        ("click", 1.0, 1000, 8000, -10)]),
    "park": ([-4, -6, -12, -18, -22, -18, -14, -20, -30], (0.15, 0.5), [
        ("chirp", 1.5, 2500, 7000, 2), ("swell", 0.3, 20, 300, 0), ("babble", 1, 300, 3000, -22)]),
    "public_square": ([-10, -6, -6, -6, -6, -6, -8, -14, -26], (0.25, 0.3), [
        ("hiss", 1, 1500, 9000, -6), ("babble", 1, 300, 3000, -6), ("click", 1.5, 500, 6000, -8),
        ("chirp", 0.4, 2500, 6000, -6)]),
    "shopping_mall": ([-14, -10, -4, -1, 0, -4, -10, -20, -32], (0.2, 0.15), [
        ("babble", 1, 300, 3000, -2), ("music", 1, 150, 900, 0), ("click", 0.8, 800, 8000, -12)]),
    "street_pedestrian": ([-8, -4, -3, -4, -4, -7, -12, -20, -32], (0.4, 0.3), [
        ("babble", 1, 300, 3000, -6), ("click", 3.0, 300, 5000, 2), ("swell", 0.4, 60, 1500, -8)]),
    "street_traffic": ([-6, -2, 0, 0, -2, -6, -12, -20, -32], (0.3, 0.6), [
        ("swell", 1.6, 100, 4000, 4), ("tone", 0.15, 300, 600, -2), ("hum", 1, 25, 50, -10)]),
    "tram": ([-4, -2, -2, -4, -6, -10, -16, -26, -38], (0.5, 0.3), [
        ("whine", 1, 200, 700, -4), ("clack", 0.8, 200, 3000, -4), ("tone", 0.3, 1000, 2000, 0)]),
}

CONTINUOUS = ("babble", "hum", "whine", "music", "hiss")


def _log_interp(hz, points_hz, values):
    import numpy as np

    return np.interp(np.log(np.maximum(hz, 1.0)), np.log(points_hz), values)


@functools.lru_cache(maxsize=None)
def _freqs():
    """The rfft bin frequencies of one clip (computed on first use: `--help` loads no numpy)."""
    import numpy as np

    return np.fft.rfftfreq(N, 1.0 / SR)


def _shape(rng, gain_db):
    """White noise coloured by a per-bin gain (dB), as a time signal."""
    import numpy as np

    spectrum = (rng.standard_normal(_freqs().size) + 1j * rng.standard_normal(_freqs().size))
    spectrum *= 10.0 ** (gain_db / 20.0)
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n=N)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _band_db(lo, hi, slope=24.0):
    """Soft band-pass in dB (about `slope` dB per octave outside [lo, hi])."""
    import numpy as np

    f = np.maximum(_freqs(), 1.0)
    return -slope * (np.maximum(0, np.log2(lo / f)) + np.maximum(0, np.log2(f / hi)))


def _smooth_curve(rng, std_db, n_points=10):
    """A random smooth dB curve over log-frequency (location colouring, device bumps)."""
    import numpy as np

    pts = np.geomspace(20, SR / 2, n_points)
    return _log_interp(_freqs(), pts, rng.normal(0, std_db, n_points))


def _rms(x):
    import numpy as np

    return math.sqrt(float(np.mean(x ** 2))) + 1e-12


def _at(signal, start, piece):
    end = min(N, start + piece.size)
    if end > start:
        signal[start:end] += piece[: end - start]


def _harmonic(f0, t, n_harm, rng, rolloff=1.0):
    import numpy as np

    out = np.zeros_like(t)
    for h in range(1, n_harm + 1):
        if h * f0 < SR / 2 - 500:
            out += np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) / h ** rolloff
    return out


def _event(kind, rng, lo, hi):
    """One event (or a continuous layer) of `kind`, unit RMS over its extent."""
    import numpy as np

    t_all = np.arange(N) / SR
    if kind == "babble":  # speech-like: band noise with syllable-rate modulation
        x = _shape(rng, _band_db(lo, hi, 12.0))
        rate = rng.uniform(3, 6)
        env = np.abs(_shape(rng, _band_db(0.5 * rate, 2 * rate, 40.0)))
        return x * (0.3 + env)
    if kind == "hiss":  # fountain, ventilation: steady band noise
        return _shape(rng, _band_db(lo, hi, 18.0))
    if kind == "hum":  # engine: low harmonic series with slow wow
        f0 = rng.uniform(lo, hi) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t_all))
        phase = np.cumsum(f0) / SR
        return sum(np.sin(2 * np.pi * h * phase + rng.uniform(0, 6.3)) / h ** 0.7 for h in range(1, 16))
    if kind == "whine":  # electric motor: tone sweeping up or down
        f = np.linspace(rng.uniform(lo, hi), rng.uniform(lo, hi), N)
        phase = np.cumsum(f) / SR
        return sum(np.sin(2 * np.pi * h * phase) / h for h in (1, 2, 3))
    if kind == "music":  # background music: sustained chords changing every ~0.5 s
        out = np.zeros(N)
        step = int(SR * rng.uniform(0.35, 0.7))
        for start in range(-int(rng.uniform(0, step)), N, step):
            root = rng.uniform(lo, hi)
            t = np.arange(step) / SR
            chord = sum(_harmonic(root * r, t, 6, rng, 1.5) for r in (1, 1.26, 1.5))
            _at(out, max(start, 0), (chord * np.hanning(step))[max(0, -start):])
        return out
    if kind == "tone":  # announcement chime / door beep / horn: decaying harmonic tone
        dur = rng.uniform(0.15, 0.5)
        t = np.arange(int(dur * SR)) / SR
        return _harmonic(rng.uniform(lo, hi), t, 5, rng) * np.exp(-t * rng.uniform(2, 8))
    if kind == "chirp":  # bird: short fast frequency sweeps
        dur = rng.uniform(0.03, 0.12)
        t = np.arange(int(dur * SR)) / SR
        f = np.linspace(rng.uniform(lo, hi), rng.uniform(lo, hi), t.size)
        return np.sin(2 * np.pi * np.cumsum(f) / SR) * np.hanning(t.size)
    if kind == "squeal":  # wheel squeal: narrow band, wobbling
        dur = rng.uniform(0.2, 0.6)
        t = np.arange(int(dur * SR)) / SR
        f = rng.uniform(lo, hi) * (1 + 0.01 * np.sin(2 * np.pi * 6 * t))
        return np.sin(2 * np.pi * np.cumsum(f) / SR) * np.hanning(t.size)
    if kind in ("click", "clack"):  # footstep / rail joint: short decaying noise burst
        dur = rng.uniform(0.01, 0.05) if kind == "click" else rng.uniform(0.04, 0.1)
        n = int(dur * SR)
        burst = rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 4))
        spec = np.fft.rfft(burst) * 10 ** (_band_db(lo, hi, 12.0)[:: max(1, N // n)][: n // 2 + 1] / 20)
        return np.fft.irfft(spec, n=n)
    if kind == "swell":  # vehicle pass / wind gust: band noise under a slow bell envelope
        dur = rng.uniform(0.3, 1.0)
        n = int(dur * SR)
        x = _shape(rng, _band_db(lo, hi, 12.0))[:n]
        return x * np.hanning(n)
    raise ValueError(kind)


def _mean_envelope():
    import numpy as np

    return np.mean([p[0] for p in SCENE_PROFILES.values()], axis=0)


def knobs(difficulty):
    """What difficulty d in [0, 1] does; calibrated so a small CNN lands at ~60-90 % (README)."""
    d = difficulty
    return {
        "blend": -0.8 + 1.4 * d,  # < 0 exaggerates, > 0 blurs each background towards the average
        "location_db": 3 * d,  # std of each location's colouring
        "clip_db": 2 * d,  # std of each clip's own colouring
        "event_db": 16 - 16 * d,  # level of the class's own events over the background
        "event_jitter_db": 1 + 3 * d,
        "distractors": 2 * d,  # mean number of events borrowed from other scenes
        "drop_layer": 0.3 * d,  # chance a continuous layer (babble, hum...) is absent
    }


def scene_source(rng, scene, location_db, difficulty) -> np.ndarray:
    """One clean 1 s "recording" of `scene` at a location (before any device)."""
    import numpy as np

    env_db, (mod_rate, mod_depth), events = SCENE_PROFILES[scene]
    k = knobs(difficulty)
    env = (1 - k["blend"]) * np.asarray(env_db, float) + k["blend"] * _mean_envelope()
    background_db = _log_interp(_freqs(), ENV_HZ, env) + location_db + _smooth_curve(rng, k["clip_db"])
    x = _shape(rng, background_db)
    rate = mod_rate * rng.uniform(0.6, 1.6)
    x *= 1 + mod_depth * np.sin(2 * np.pi * rate * np.arange(N) / SR + rng.uniform(0, 6.3))

    event_gain = 10 ** (k["event_db"] / 20)
    pool = [e for p in SCENE_PROFILES.values() for e in p[2]]
    layers = list(events)
    # Distractors: events borrowed from other scenes, more of them when harder.
    for _ in range(rng.poisson(k["distractors"])):
        layers.append(pool[rng.integers(len(pool))])
    for kind, rate_or_on, lo, hi, level_db in layers:
        level = 10 ** ((level_db + rng.normal(0, k["event_jitter_db"])) / 20) * event_gain
        if kind in CONTINUOUS:
            if rng.uniform() < k["drop_layer"]:
                continue  # sometimes a layer is simply absent
            y = _event(kind, rng, lo, hi)
            x += level * y / _rms(y)
            continue
        for _ in range(rng.poisson(rate_or_on * rng.uniform(0.5, 1.5))):
            y = _event(kind, rng, lo, hi)
            _at(x, int(rng.integers(0, N - y.size // 2)), 2.0 * level * y / (np.max(np.abs(y)) + 1e-12))
    return x


class DeviceModel:
    """A simulated recording device: fixed frequency response, noise floor, gain, saturation.
    Derived from the device name only, so every synthetic set shares the same devices."""

    def __init__(self, name):
        import numpy as np

        rng = np.random.default_rng(zlib.crc32(name.encode()))
        phone = name.startswith("s")
        strength = {"a": 0.3, "b": 1.0, "c": 1.0}.get(name, 2.0)
        hp = 20 if name == "a" else rng.uniform(80, 160) * (2.2 if phone else 1)
        lp = 20000 if name == "a" else rng.uniform(7000, 11000) if phone else rng.uniform(12000, 17000)
        self.response_db = (_band_db(hp, lp, 12.0) + _smooth_curve(rng, 1.5 * strength, 8)
                            + rng.uniform(-4, 4) * strength * np.log2(np.maximum(_freqs(), 20) / 1000) / 10)
        self.noise_db = -55 if name == "a" else rng.uniform(-42, -32) if phone else rng.uniform(-50, -44)
        self.gain_db = 0.0 if name == "a" else rng.uniform(-6, 6)
        self.drive = rng.uniform(1.5, 3.0) if phone else 0.0

    def record(self, rng, source):
        import numpy as np

        y = np.fft.irfft(np.fft.rfft(source) * 10 ** (self.response_db / 20), n=N)
        y /= _rms(y)
        y += 10 ** (self.noise_db / 20) * _shape(rng, _band_db(30, 16000, 6.0))
        if self.drive:
            y = np.tanh(self.drive * y / 4) * 4 / self.drive
        return y * 10 ** (self.gain_db / 20)


def _difficulty(value) -> float:
    if isinstance(value, str):
        if value in DIFFICULTY:
            return DIFFICULTY[value]
        try:
            value = float(value)
        except ValueError:
            raise DsmnError(f"difficulty '{value}': use {', '.join(DIFFICULTY)} or a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise DsmnError(f"difficulty {value}: must be within [0, 1]")
    return float(value)


def plan(clips_per_class, seed):
    """The recording plan: per scene, locations (city, id, split) and per segment its devices.
    Returns a list of (scene, city, location, segment_id, k, split, devices)."""
    import numpy as np

    rng = np.random.default_rng([seed, 1])
    segments_per_class = max(2, math.ceil(clips_per_class / DEVICES_PER_SEGMENT))
    n_locations = max(2, math.ceil(segments_per_class / SEGMENTS_PER_LOCATION))
    n_eval = min(n_locations - 1, max(1, round(EVALUATE_FRACTION * n_locations)))
    seen = [d for d in tau.DEVICES[1:] if d not in tau.UNSEEN_DEVICES]
    others = list(tau.DEVICES[1:])
    rows = []
    for scene in tau.SCENES:
        location_ids = rng.choice(np.arange(1000, 10000), size=n_locations, replace=False)
        splits = ["train"] * (n_locations - n_eval) + ["evaluate"] * n_eval
        budget = clips_per_class
        for j in range(segments_per_class):
            loc = j % n_locations
            split = splits[loc]
            city = CITIES[int(location_ids[loc]) % len(CITIES)]
            ordinal = j // n_locations
            pool = seen if split == "train" else others
            extra = list(rng.choice(pool, size=DEVICES_PER_SEGMENT - 1, replace=False))
            devices = ["a"] + extra[: max(0, min(len(extra), budget - 1))]
            budget -= len(devices)
            if budget < 0 or not devices:
                break
            segment_id = 10000 * (ordinal // 10 + 1) + 10 * int(location_ids[loc] % 7)
            rows.append((scene, city, int(location_ids[loc]), segment_id, ordinal % 10, split, devices))
    return rows


@functools.lru_cache(maxsize=None)
def _device(name):
    return DeviceModel(name)


def _render_segment(job):
    """Synthesise one segment, record it on each of its devices, write the WAVs."""
    import numpy as np

    out, seed, d, i, (scene, city, loc, seg, k, split, devs) = job
    rng = np.random.default_rng([seed, 2, i])
    location_rng = np.random.default_rng([seed, 3, tau.SCENES.index(scene), loc])
    source = scene_source(rng, scene, _smooth_curve(location_rng, knobs(d)["location_db"]), d)
    level = 10 ** (rng.uniform(-32, -20) / 20)
    written = []
    for dev in devs:
        y = _device(dev).record(rng, source) * level
        peak = np.max(np.abs(y))
        if peak > 0.95:
            y *= 0.95 / peak
        filename = tau.format_filename(scene, city, loc, seg, k, dev)
        write_wav24(out / filename, y)
        written.append((filename, scene, f"{city}-{loc}", dev, split))
    return written


def write_synthetic_set(out_dir, clips_per_class=DEFAULT_CLIPS_PER_CLASS, seed=0,
                        difficulty=DEFAULT_DIFFICULTY, force=False, progress=False, workers=None) -> dict:
    """Write a TAU22-layout data set; returns a summary (clip counts per split and device)."""
    from tqdm import tqdm

    out = Path(out_dir)
    d = _difficulty(difficulty)
    if clips_per_class < 6:
        raise DsmnError(f"clips per class {clips_per_class}: need at least 6 (train and evaluate locations)")
    if out.exists() and not out.is_dir():
        raise DsmnError(f"{out}: is a file; the synthetic set is written into a directory")
    if out.exists() and any(out.iterdir()):
        if not (force and (out / "meta.csv").is_file()):
            raise DsmnError(f"{out}: exists and is not empty (use --force to replace an earlier synthetic set)")
        shutil.rmtree(out / "audio", ignore_errors=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "evaluation_setup").mkdir(exist_ok=True)

    rows = plan(clips_per_class, seed)
    jobs = [(out, seed, d, i, row) for i, row in enumerate(rows)]
    meta, split_rows = [], {"train": [], "evaluate": []}
    workers = workers or os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 8:
            import multiprocessing

            # fork: no re-import of the caller's script; every segment has its own seed, so the
            # files do not depend on the number of workers.
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(workers))
            results = pool.imap(_render_segment, jobs, chunksize=4)
        else:
            results = map(_render_segment, jobs)
        for written in tqdm(results, total=len(jobs), desc="synth", unit="segment", disable=not progress):
            for filename, scene, identifier, dev, split in written:
                meta.append((filename, scene, identifier, dev))
                split_rows[split].append((filename, scene))

    meta.sort()
    _write_tsv(out / "meta.csv", tau.META_HEADER, meta)
    for split in ("train", "evaluate"):
        _write_tsv(tau.split_csv(out, split), tau.SPLIT_HEADERS[split], sorted(split_rows[split]))
    _write_tsv(tau.split_csv(out, "test"), tau.SPLIT_HEADERS["test"], [(f,) for f, _ in sorted(split_rows["evaluate"])])
    summary = {
        "clips": len(meta), "train": len(split_rows["train"]), "evaluate": len(split_rows["evaluate"]),
        "devices": {dev: sum(1 for m in meta if m[3] == dev) for dev in tau.DEVICES},
        "seed": seed, "difficulty": d, "clips_per_class": clips_per_class,
    }
    return summary


def write_wav24(path, wave):
    """Mono 44.1 kHz 24-bit PCM WAV, like TAU22's clips. Written directly because libsndfile
    fsyncs every file it closes, which made writing a set several times slower."""
    import numpy as np

    pcm = np.clip(np.round(np.asarray(wave, np.float64) * 2 ** 23), -2 ** 23, 2 ** 23 - 1).astype("<i4")
    data = pcm.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, SR, SR * 3, 3, 24)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
    Path(path).write_bytes(header + b"data" + struct.pack("<I", len(data)) + data)


def _write_tsv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(map(str, row)) + "\n")


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "synth-data",
        help="write a synthetic data set in the TAU22 Mobile layout",
        description="Write a synthetic acoustic-scene data set in exactly the TAU Urban Acoustic Scenes "
        "2022 Mobile layout (24-bit 44.1 kHz 1 s WAVs, meta.csv, evaluation_setup/fold1_*.csv): 10 scenes "
        "recorded through simulated devices a, b, c, s1-s6 (s4-s6 only in the evaluate split).",
        **style("dsmn-host synth-data data/tau22-synth", "dsmn-host synth-data data/tau22-hard --clips-per-class 300 --difficulty hard --seed 1"),
    )
    p.add_argument("out", help="output directory")
    p.add_argument("--clips-per-class", type=int, default=DEFAULT_CLIPS_PER_CLASS,
                   help="clips per scene over all devices and splits (default: %(default)s; 10 classes)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    p.add_argument("--difficulty", default=DEFAULT_DIFFICULTY,
                   help="easy, medium, hard or a number in [0, 1] (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an earlier synthetic set in OUT")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args):
    s = write_synthetic_set(args.out, args.clips_per_class, args.seed, args.difficulty,
                            force=args.force, progress=True)
    devs = " ".join(f"{k}:{v}" for k, v in s["devices"].items())
    print(f"{args.out}: {s['clips']} clips (train {s['train']}, evaluate {s['evaluate']}); devices {devs}")
    return 0
