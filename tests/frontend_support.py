"""Helpers for the front-end tests and benchmark: the host build of firmware/frontend and
sounds no synthetic scene resembles. Not a test module."""

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build_native(out_dir):
    """Compile tests/frontend_harness.c + the front end + CMSIS-DSP with the host's cc."""
    from dsmn_host.target import frontend

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frontend.render_tables(out_dir)
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    exe = out_dir / "frontend_harness"
    cmd = [cc, "-O2", "-std=c11", *frontend.FLAGS, *(f"-D{d}" for d in frontend.CMSIS_DSP_DEFINES),
           f"-I{frontend.SOURCE_DIR}", *(f"-I{d}" for d in frontend.cmsis_includes()),
           str(HERE / "frontend_harness.c"), *map(str, frontend.SOURCES), str(out_dir / frontend.TABLES_C),
           *map(str, frontend.cmsis_sources()), "-lm", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def run_native(exe, pcms, scale, zero_point):
    """int8 inputs (N, 44, 256, 2) the host-built front end computes from int16 clips."""
    pcms = np.asarray(pcms, dtype="<i2").reshape(-1, 44100)
    stdin = struct.pack("<fiI", scale, zero_point, len(pcms)) + pcms.tobytes()
    proc = subprocess.run([str(exe)], input=stdin, capture_output=True, check=True)
    return np.frombuffer(proc.stdout, dtype=np.int8).reshape(len(pcms), 44, 256, 2)


def odd_sounds(seed=0):
    """Name -> int16 clip: silence, a full-scale sine, white noise, clipping, a click."""
    rng = np.random.default_rng(seed)
    t = np.arange(44100) / 44100.0
    sine = np.round(32767 * np.sin(2 * np.pi * 1000.0 * t))
    loud = np.clip(np.round(4 * 32767 * np.sin(2 * np.pi * 220.0 * t) + rng.normal(0, 2000, t.size)), -32768, 32767)
    click = np.zeros(t.size)
    click[22050] = 32767
    return {
        "silence": np.zeros(t.size, dtype=np.int16),
        "sine_full_scale": sine.astype(np.int16),
        "white_noise": np.clip(np.round(rng.normal(0, 8000, t.size)), -32768, 32767).astype(np.int16),
        "clipping": loud.astype(np.int16),
        "click": click.astype(np.int16),
    }
