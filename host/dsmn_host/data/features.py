"""The paper's front end (log10 mel power, then deltas and per-clip normalisation) and the
on-disk feature cache every training and evaluation stage reads.

The cache keeps the *raw* log-mel: the paper's device-response and mixup augmentations act on
it before deltas and normalisation, so `logmel_to_input` runs per batch at training time.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

from dsmn_host.data import tau
from dsmn_host.errors import DsmnError

SAMPLE_RATE = 44100
N_FFT = 4096
WIN_LENGTH = 4096
HOP = 1024
N_MELS = 256
N_FRAMES = 1 + tau.CLIP_SAMPLES // HOP  # centre padding: 44 frames per 1 s clip
LOG_OFFSET = 1e-10
DELTA_N = 2  # regression half-width: window 5
# The paper normalises with torch.std (Bessel-corrected); the epsilon only matters for silence.
NORM_DDOF = 1
NORM_EPS = 1e-8

PARAMS = {
    "sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "win_length": WIN_LENGTH, "hop": HOP,
    "window": "hann_periodic", "center": True, "pad_mode": "reflect", "power": 2.0,
    "n_mels": N_MELS, "f_min": 0.0, "f_max": SAMPLE_RATE / 2, "mel_scale": "htk",
    "mel_norm": "slaney", "log": "log10", "log_offset": LOG_OFFSET, "n_frames": N_FRAMES,
    "delta_window": 2 * DELTA_N + 1, "delta_edges": "replicate",
    "norm": "per_clip_per_channel", "norm_ddof": NORM_DDOF, "norm_eps": NORM_EPS,
}


def hz_to_mel(hz):
    import numpy as np

    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    import numpy as np

    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=None)
def mel_filterbank() -> np.ndarray:
    """(256, 2049) triangles equally spaced on the HTK mel scale, each scaled to unit area
    (Slaney) so wide high-frequency bands do not dominate the sum."""
    import numpy as np

    fft_hz = np.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    fb = weights.astype(np.float32)
    fb.flags.writeable = False
    return fb


@functools.lru_cache(maxsize=None)
def _window() -> np.ndarray:
    import numpy as np

    n = np.arange(WIN_LENGTH)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN_LENGTH)


def power_spectrogram(wave) -> np.ndarray:
    """|STFT|^2 of (..., 44100) samples: (..., 2049, 44) float64."""
    import numpy as np

    wave = np.asarray(wave, dtype=np.float64)
    if wave.shape[-1] != tau.CLIP_SAMPLES:
        raise DsmnError(f"expected {tau.CLIP_SAMPLES} samples (1 s at 44.1 kHz), got {wave.shape[-1]}")
    pad = [(0, 0)] * (wave.ndim - 1) + [(N_FFT // 2, N_FFT // 2)]
    padded = np.pad(wave, pad, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=-1)[..., ::HOP, :]
    spec = np.fft.rfft(frames * _window(), axis=-1)
    power = spec.real ** 2 + spec.imag ** 2
    return np.swapaxes(power, -1, -2)


@functools.lru_cache(maxsize=None)
def _band_support():
    """The filterbank as runs of non-zero weights: each band touches a few dozen bins at most,
    so summing runs is ~100x cheaper than the dense product and, unlike BLAS, gives the same
    bits whatever the thread count (the cache must not depend on how many workers built it)."""
    import numpy as np

    fb = mel_filterbank()
    bins, weights, starts = [], [], []
    for row in fb:
        nz = np.flatnonzero(row)
        starts.append(len(bins))
        bins.extend(nz)
        weights.extend(row[nz])
    return (np.asarray(bins), np.asarray(weights, dtype=np.float32)[:, None],
            np.asarray(starts), fb.any(axis=1))


def mel_power(power) -> np.ndarray:
    """(..., 2049, T) power spectrogram -> (..., 256, T) float32 mel power."""
    import numpy as np

    bins, weights, starts, nonempty = _band_support()
    terms = np.asarray(power, dtype=np.float32)[..., bins, :] * weights
    mel = np.add.reduceat(terms, np.minimum(starts, len(bins) - 1), axis=-2)
    return np.where(nonempty[:, None], mel, np.float32(0))


def logmel(wave) -> np.ndarray:
    """log10(mel power + 1e-10) of a 1 s clip: (44100,) -> (256, 44) float32 (batches too)."""
    import numpy as np

    mel = mel_power(power_spectrogram(wave))
    return np.log10(mel + np.float32(LOG_OFFSET)).astype(np.float32)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def deltas(x):
    """Regression deltas along time (last axis), N = 2, edges replicated:
    d[t] = sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2)."""
    import numpy as np

    denom = 2 * sum(k * k for k in range(1, DELTA_N + 1))
    if _is_torch(x):
        import torch

        padded = torch.cat([x[..., :1]] * DELTA_N + [x] + [x[..., -1:]] * DELTA_N, dim=-1)
    else:
        x = np.asarray(x)
        pad = [(0, 0)] * (x.ndim - 1) + [(DELTA_N, DELTA_N)]
        padded = np.pad(x, pad, mode="edge")
    t = x.shape[-1]
    out = 0
    for k in range(1, DELTA_N + 1):
        out = out + k * (padded[..., DELTA_N + k: DELTA_N + k + t] - padded[..., DELTA_N - k: DELTA_N - k + t])
    return out / denom


def normalise(x):
    """Zero mean, unit (Bessel-corrected) std over the last two axes, per clip and channel."""
    if _is_torch(x):
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, correction=NORM_DDOF)
    else:
        mean = x.mean(axis=(-2, -1), keepdims=True)
        std = x.std(axis=(-2, -1), keepdims=True, ddof=NORM_DDOF)
    return (x - mean) / (std + NORM_EPS)


def logmel_to_input(logmel):
    """(..., 256, 44) raw log-mel -> (..., 2, 256, 44) model input: [normalised log-mel,
    normalised delta]. Works on numpy arrays and torch tensors (any device), same type out."""
    import numpy as np

    if _is_torch(logmel):
        import torch

        return torch.stack([normalise(logmel), normalise(deltas(logmel))], dim=-3)
    logmel = np.asarray(logmel, dtype=np.float32)
    return np.stack([normalise(logmel), normalise(deltas(logmel))], axis=-3).astype(np.float32)


def clip_features(wav_path):
    """(logmel, input) for one WAV file; the contract behind `features --wav`."""
    lm = logmel(tau.load_wav(wav_path))
    return lm, logmel_to_input(lm)


# ----------------------------------------------------------------------------------------------
# Feature cache
#
# CACHE/params.json   feature parameters + data dir + fingerprint of the clip list
# CACHE/index.npz     per-clip filename, scene_idx, coarse_idx, device, city, identifier, split
# CACHE/logmel.npy    (N, 256, 44) float32, opened as a memmap
# CACHE/done.npy      (N,) int8: which rows are computed (makes the build resumable; see BAD)
# CACHE/device_response.npz   rows of (device - a) mean log-mel, from the training split
# CACHE/skipped.json  clips left out with --skip-bad, and why

CACHE_SUFFIX = ".features"
DEFAULT_SPLITS = ("train", "evaluate", "test")


def default_cache_dir(data_dir) -> Path:
    data_dir = Path(data_dir).resolve()
    return data_dir.with_name(data_dir.name + CACHE_SUFFIX)


class FeatureCache:
    """Raw log-mel of every clip of a data set (memory-mapped) plus labels and devices."""

    def __init__(self, cache_dir):
        import numpy as np

        self.path = Path(cache_dir)
        params_path = self.path / "params.json"
        if not params_path.is_file():
            raise DsmnError(f"{self.path}: not a feature cache (no params.json)")
        try:
            self.info = json.loads(params_path.read_text())
            index = np.load(self.path / "index.npz", allow_pickle=False)
            self.logmel = np.load(self.path / "logmel.npy", mmap_mode="r")
            done = np.load(self.path / "done.npy")
            response = np.load(self.path / "device_response.npz", allow_pickle=False)
        except (OSError, ValueError, KeyError) as exc:
            raise DsmnError(f"{self.path}: incomplete or corrupt feature cache ({exc}); delete it and rebuild") from None
        if not done.all():
            raise DsmnError(f"{self.path}: feature cache incomplete ({int((done != 0).sum())}/{done.size} clips); "
                            "run `dsmn-host features` again to resume")
        self.params = self.info["params"]
        if self.params != PARAMS:
            raise DsmnError(f"{self.path}: feature cache was built with other parameters; "
                            f"delete it or choose another --out ({_param_diff(self.params)})")
        for key in ("filename", "scene_idx", "coarse_idx", "device", "city", "identifier", "segment", "split"):
            setattr(self, key, index[key])
        bad = np.flatnonzero(done == BAD)  # clips --skip-bad left out while computing them
        self._splits = {name: np.setdiff1d(index[f"split_{name}"], bad) if len(bad) else index[f"split_{name}"]
                        for name in self.info["splits"]}
        self.device_response = response["table"]
        self.device_response_device = response["device"]
        self.skipped = self.info.get("skipped", []) + _late_skips(self.path, bad, self.split, self.filename)

    def __len__(self):
        return len(self.filename)

    def indices(self, split) -> np.ndarray:
        split = split[len("fold1_"):] if split.startswith("fold1_") else split
        if split not in self._splits:
            raise DsmnError(f"{self.path}: split '{split}' not in this cache (has {', '.join(self._splits)})")
        return self._splits[split]

    def inputs(self, idx):
        """Model input for rows `idx` (no augmentation): (len(idx), 2, 256, 44) float32."""
        import numpy as np

        return logmel_to_input(np.asarray(self.logmel[idx]))


# done.npy per row: 0 to do, 1 computed, BAD left out by --skip-bad (its samples could not be
# used: NaN/inf or undecodable), with the reason in bad.jsonl. Rows marked BAD belong to no split.
BAD = 2


def _late_skips(cache_dir, bad, split, filename):
    reasons = {}
    path = Path(cache_dir) / "bad.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                reasons[int(rec["row"])] = rec["reason"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a killed run; the row is still marked in done.npy
    return [{"split": str(split[r]), "filename": str(filename[r]),
             "reason": reasons.get(int(r), "samples unusable (found while computing features)")} for r in bad]


def _param_diff(other) -> str:
    keys = sorted(set(other) | set(PARAMS))
    diffs = [f"{k}: cache {other.get(k)!r} != now {PARAMS.get(k)!r}" for k in keys if other.get(k) != PARAMS.get(k)]
    return "; ".join(diffs[:4])


def _collect_clips(data_dir, splits, skip_bad, check_audio=True):
    """Union of the splits' clips (each file once) and, per split, the row of each of its clips."""
    import numpy as np

    meta = tau.read_meta(data_dir)
    order, rows, split_of, skipped = [], {}, [], []
    split_rows = {}
    for split in splits:
        clips = tau.read_split(data_dir, split, check_audio=check_audio, skip_bad=skip_bad, meta=meta)
        skipped += [{"split": split, "filename": f, "reason": r} for f, r in clips.skipped]
        idx = []
        for clip in clips:
            if clip.filename not in rows:
                rows[clip.filename] = len(order)
                order.append(clip)
                split_of.append(split)
            idx.append(rows[clip.filename])
        split_rows[split] = np.asarray(idx, dtype=np.int64)
    return order, split_of, split_rows, skipped


def _fingerprint(clips) -> str:
    import hashlib

    h = hashlib.sha256()
    for clip in clips:
        h.update(f"{clip.filename}\t{os.path.getsize(clip.path)}\n".encode())
    return h.hexdigest()


def _compute_rows(paths):
    import numpy as np

    return np.stack([logmel(tau.load_wav(p)) for p in paths])


def _compute_rows_skipping(paths):
    """(rows, [(i, reason)]): like _compute_rows, but a clip whose samples cannot be used (NaN or
    infinite samples, undecodable) becomes a zero row and a reason instead of an abort."""
    import numpy as np

    rows, bad = [], []
    for i, p in enumerate(paths):
        try:
            rows.append(logmel(tau.load_wav(p)))
        except DsmnError as exc:
            rows.append(np.zeros((N_MELS, N_FRAMES), np.float32))
            bad.append((i, str(exc)))
    return np.stack(rows), bad


def build_cache(data_dir, cache_dir=None, splits=DEFAULT_SPLITS, workers=None, skip_bad=False,
                progress=True, chunk=32) -> FeatureCache:
    """Compute (or finish computing) the log-mel cache of `data_dir`; reuse a complete one.

    A cache built with other feature parameters or from another clip list is refused rather
    than silently reused or overwritten.
    """
    import numpy as np

    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DsmnError(f"{data_dir}: no such data directory")
    if not data_dir.is_dir():
        raise DsmnError(f"{data_dir}: is a file, not a TAU22 data directory")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(data_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DsmnError(f"{cache_dir}: is a file; the feature cache must be a directory (choose another --out)")
    # fold1_test.csv is optional: the test split repeats evaluate's clips without labels.
    splits = [s for s in splits if s != "test" or tau.split_csv(data_dir, s).is_file()]
    params_path = cache_dir / "params.json"
    old = json.loads(params_path.read_text()) if params_path.is_file() else None
    # Reusing a complete cache only needs the clip list; reading ~140k WAV headers does not pay.
    quick = old is not None and (cache_dir / "device_response.npz").is_file()
    clips, split_of, split_rows, skipped = _collect_clips(data_dir, splits, skip_bad, check_audio=not quick)
    if quick and old.get("fingerprint") != _fingerprint(clips):
        clips, split_of, split_rows, skipped = _collect_clips(data_dir, splits, skip_bad, check_audio=True)
    if not clips:
        raise DsmnError(f"{data_dir}: no clips in splits {', '.join(splits)}")
    info = {
        "params": PARAMS, "data_dir": str(data_dir.resolve()), "splits": list(splits),
        "n_clips": len(clips), "fingerprint": _fingerprint(clips), "skipped": skipped,
    }
    if old is not None:
        if old.get("params") != PARAMS:
            raise DsmnError(f"{cache_dir}: existing feature cache has other parameters "
                            f"({_param_diff(old.get('params', {}))}); delete it or choose another --out")
        if old.get("fingerprint") != info["fingerprint"] or old.get("splits") != info["splits"]:
            raise DsmnError(f"{cache_dir}: existing feature cache was built from another clip list "
                            f"({old.get('data_dir')}, {old.get('n_clips')} clips); delete it or choose another --out")
        if (cache_dir / "device_response.npz").is_file():
            return FeatureCache(cache_dir)
    else:
        # A build killed before params.json was written leaves only our own files: start over.
        ours = {"index.npz", "logmel.npy", "done.npy", "bad.jsonl"}
        if cache_dir.exists() and not {p.name for p in cache_dir.iterdir()} <= ours:
            raise DsmnError(f"{cache_dir}: exists and is not a feature cache; choose another --out")
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_index(cache_dir, clips, split_of, split_rows)
        np.lib.format.open_memmap(cache_dir / "logmel.npy", mode="w+", dtype=np.float32,
                                  shape=(len(clips), N_MELS, N_FRAMES)).flush()
        np.save(cache_dir / "done.npy", np.zeros(len(clips), dtype=np.int8))
        params_path.write_text(json.dumps(info, indent=1))

    try:
        _fill(cache_dir, clips, workers, progress, chunk, skip_bad)
    except DsmnError as exc:  # the cache stays incomplete (resumable), never taken for finished
        raise DsmnError(f"{exc}; `dsmn-host features {data_dir} --skip-bad` leaves such clips out") from None
    _write_device_response(cache_dir, clips, split_of)
    return FeatureCache(cache_dir)


def _write_index(cache_dir, clips, split_of, split_rows):
    import numpy as np

    scene_idx = np.array([tau.SCENES.index(c.scene) for c in clips], dtype=np.int64)
    coarse_idx = np.array([tau.COARSE.index(c.coarse) for c in clips], dtype=np.int64)
    np.savez(
        cache_dir / "index.npz",
        filename=np.array([c.filename for c in clips]), scene_idx=scene_idx, coarse_idx=coarse_idx,
        device=np.array([c.device for c in clips]), city=np.array([c.city for c in clips]),
        identifier=np.array([c.identifier for c in clips]), segment=np.array([c.segment for c in clips]),
        split=np.array(split_of), **{f"split_{k}": v for k, v in split_rows.items()},
    )


def _fill(cache_dir, clips, workers, progress, chunk, skip_bad=False):
    import numpy as np
    from tqdm import tqdm

    done = np.load(cache_dir / "done.npy").astype(np.int8)  # bool in caches from before BAD
    todo = np.flatnonzero(done == 0)
    if todo.size == 0:
        return
    out = np.load(cache_dir / "logmel.npy", mmap_mode="r+")
    batches = [todo[i: i + chunk] for i in range(0, todo.size, chunk)]
    jobs = [[clips[i].path for i in b] for b in batches]
    workers = workers or min(os.cpu_count() or 1, 8)
    bar = tqdm(total=len(clips), initial=int((done != 0).sum()), unit="clip", desc="log-mel",
               disable=not progress)
    last_save = time.monotonic()

    compute = _compute_rows_skipping if skip_bad else _compute_rows

    def store(rows, result):
        nonlocal last_save
        values, bad = result if skip_bad else (result, [])
        out[rows] = values
        if bad:  # reasons first: a row marked BAD in done.npy always has its line (or a torn one)
            with open(cache_dir / "bad.jsonl", "a") as f:
                f.writelines(json.dumps({"row": int(rows[i]), "reason": r}) + "\n" for i, r in bad)
        done[rows] = 1
        done[[rows[i] for i, _ in bad]] = BAD
        bar.update(len(rows))
        if time.monotonic() - last_save > 10:
            out.flush()
            np.save(cache_dir / "done.npy", done)
            last_save = time.monotonic()

    try:
        if workers <= 1 or len(batches) <= 2:
            for rows, paths in zip(batches, jobs):
                store(rows, compute(paths))
        else:
            import multiprocessing

            # fork, not spawn: spawn re-runs the caller's script in every worker unless it has
            # a __main__ guard. Workers only run numpy FFTs, so nothing forked can deadlock.
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers) as pool:
                for rows, result in zip(batches, pool.imap(compute, jobs)):
                    store(rows, result)
    finally:
        out.flush()
        np.save(cache_dir / "done.npy", done)
        bar.close()


def _write_device_response(cache_dir, clips, split_of):
    """The paper's device-response table: for each training clip from a device other than a
    whose segment was also recorded by a, the per-band difference of time-averaged log10 mel
    power (device - a). Only the training split is used, so unseen devices stay unseen."""
    import numpy as np

    lm = np.load(cache_dir / "logmel.npy", mmap_mode="r")
    bad = set(np.flatnonzero(np.load(cache_dir / "done.npy") == BAD).tolist())
    ref_row = {c.segment: i for i, c in enumerate(clips)
               if c.device == tau.REFERENCE_DEVICE and split_of[i] == "train" and i not in bad}
    rows, devices = [], []
    for i, c in enumerate(clips):
        if (split_of[i] == "train" and c.device != tau.REFERENCE_DEVICE and c.segment in ref_row
                and i not in bad):
            rows.append(lm[i].mean(axis=-1) - lm[ref_row[c.segment]].mean(axis=-1))
            devices.append(c.device)
    table = np.array(rows, dtype=np.float32).reshape(-1, N_MELS)
    np.savez(cache_dir / "device_response.npz", table=table, device=np.array(devices, dtype="<U2"))


def open_features(path, build=True, **build_kwargs) -> FeatureCache:
    """A FeatureCache from a cache directory, or from a TAU data directory (its default cache
    next to it, built or finished if needed)."""
    path = Path(path)
    if not path.exists():
        raise DsmnError(f"{path}: no such feature cache or data directory")
    if not path.is_dir():
        raise DsmnError(f"{path}: is a file, not a feature cache or TAU22 data directory")
    if (path / "params.json").is_file():
        return FeatureCache(path)
    if (path / "meta.csv").is_file():
        cache_dir = build_kwargs.pop("cache_dir", None) or default_cache_dir(path)
        if not build:
            return FeatureCache(cache_dir)
        return build_cache(path, cache_dir, **build_kwargs)
    raise DsmnError(f"{path}: neither a feature cache (params.json) nor a TAU22 data directory (meta.csv)")


# ----------------------------------------------------------------------------------------------
# CLI


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "features",
        help="compute log-mel features of a data set into a cache (or of one WAV)",
        description="Compute the paper's log-mel features (44.1 kHz, 4096/1024, 256 HTK mels, "
        "Slaney norm, log10) of every clip of a TAU22-layout data set into a resumable on-disk cache, "
        "plus the device-response table; or, with --wav, of one clip into an .npz.",
        **style("dsmn-host features data/tau22-synth --workers 2 --skip-bad", "dsmn-host features --wav clip.wav --npz clip.npz"),
    )
    p.add_argument("data", nargs="?", help="TAU22-layout data directory")
    p.add_argument("--out", help="cache directory (default: DATA.features next to DATA)")
    p.add_argument("--splits", default=",".join(DEFAULT_SPLITS),
                   help="comma-separated fold1 splits to include (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out bad clips (missing/corrupt/wrong-format WAVs) and report them instead of failing")
    p.add_argument("--wav", help="compute one clip instead of a data set")
    p.add_argument("--npz", help="with --wav: write 'logmel' (256x44) and 'input' (2x256x44) here")
    p.set_defaults(func=_cmd_features)


def _cmd_features(args):
    import numpy as np

    if args.wav:
        from dsmn_host.paths import output_file

        if not args.npz:
            raise DsmnError("--wav needs --npz OUT.npz")
        npz = output_file(args.npz, "--npz file", suffix=".npz", create_parent=False)
        lm, x = clip_features(args.wav)
        np.savez(npz, logmel=lm, input=x)
        print(f"wrote {npz}: logmel {lm.shape}, input {x.shape}")
        return 0
    if not args.data:
        raise DsmnError("give a data directory (or --wav CLIP.wav --npz OUT.npz)")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    t0 = time.monotonic()
    cache = build_cache(args.data, args.out, splits=splits, workers=args.workers, skip_bad=args.skip_bad)
    dt = time.monotonic() - t0
    counts = ", ".join(f"{s} {len(cache.indices(s))}" for s in cache.info["splits"])
    print(f"{cache.path}: {len(cache)} clips ({counts}); device-response rows {len(cache.device_response)}; {dt:.1f} s")
    for item in cache.skipped:
        print(f"skipped ({item['split']}): {item['reason']}")
    if cache.skipped:
        print(f"skipped {len(cache.skipped)} bad clips")
    return 0
