"""Feature-extraction throughput and feature-cache cost on this machine -> benchmarks/features.json.

Writes the default synthetic set, then builds its cache with 1 and with all workers, and times
the log-mel front end alone on decoded clips.

    python3 benchmarks/bench_features.py [--clips-per-class 120] [--out benchmarks/features.json]
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from dsmn_host.data import features, synth, tau


def dir_bytes(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=synth.DEFAULT_CLIPS_PER_CLASS)
    ap.add_argument("--out", default=str(Path(__file__).with_name("features.json")))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_features_"))
    try:
        data = work / "tau22-synth"
        t0 = time.perf_counter()
        summary = synth.write_synthetic_set(data, args.clips_per_class, seed=0)
        synth_s = time.perf_counter() - t0
        n = summary["clips"]

        clips = tau.read_split(data, "train")[:200]
        waves = np.stack([tau.load_wav(c.path) for c in clips])
        features.logmel(waves[0])
        t0 = time.perf_counter()
        for w in waves:
            features.logmel(w)
        logmel_only = len(waves) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for c in clips:
            tau.load_wav(c.path)
        decode = len(clips) / (time.perf_counter() - t0)

        builds = {}
        for workers in sorted({1, os.cpu_count() or 1}):
            cache_dir = work / f"cache-{workers}"
            t0 = time.perf_counter()
            cache = features.build_cache(data, cache_dir, workers=workers, progress=False)
            dt = time.perf_counter() - t0
            builds[str(workers)] = {"seconds": round(dt, 2), "clips_per_s": round(n / dt, 1)}
        t0 = time.perf_counter()
        features.open_features(cache_dir)
        reopen_s = time.perf_counter() - t0
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_1min_at_end": round(os.getloadavg()[0], 2)},
            "synthetic_set": {"clips_per_class": args.clips_per_class, "clips": n,
                              "write_seconds": round(synth_s, 2), "bytes": dir_bytes(data)},
            "logmel_only_clips_per_s_1_process": round(logmel_only, 1),
            "wav_decode_clips_per_s": round(decode, 1),
            "cache_build_by_workers": builds,
            "cache_bytes": dir_bytes(cache_dir),
            "cache_bytes_per_clip": round(dir_bytes(cache_dir) / n),
            "cache_reopen_seconds": round(reopen_s, 3),
            "device_response_rows": int(len(cache.device_response)),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
