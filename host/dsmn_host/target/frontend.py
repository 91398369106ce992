"""The on-device front end's host side: its generated tables, where CMSIS-DSP comes from,
and the host reference the board's int8 input is checked against.

The C code (firmware/frontend/) computes what `dsmn_host.data.features` computes; the tables it
needs (window, mel runs) are derived here from `features` itself, so there is one definition
of the front end and the C side cannot drift from it.

CMSIS-DSP is a dependency, not our code: scripts/bootstrap.sh unpacks the cmsisdsp sdist from
PyPI into a cache (`cmsis_dsp_dir`), and the firmware compiles only `CMSIS_DSP_SOURCES`.
Its headers are used with `__GNUC_PYTHON__` defined (the Python wrapper's own setting) rather
than with CMSIS-Core's cmsis_compiler.h: the sdist does not carry CMSIS-Core, the float FFT
path uses none of its intrinsics (only the q15/q31 kernels do), and the same define lets the
host build of the front end (tests) compile exactly the code the board runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dsmn_host.errors import DsmnError

ROOT = Path(__file__).resolve().parents[3]
SOURCE_DIR = ROOT / "firmware" / "frontend"
SOURCES = [SOURCE_DIR / "dsmn_frontend.c"]
TEMPLATES = ROOT / "templates" / "frontend"
TABLES_C = "dsmn_frontend_tables.c"

CMSIS_DSP_VERSION = "1.10.3"
CMSIS_DSP_SDIST_SHA256 = "307d32298faa7c58db912851027fce35f886fec7eb1a27c4b309ce1a97f47519"
CMSIS_DSP_SOURCES = [
    "Source/TransformFunctions/arm_rfft_fast_f32.c",
    "Source/TransformFunctions/arm_rfft_fast_init_f32.c",
    "Source/TransformFunctions/arm_cfft_f32.c",
    "Source/TransformFunctions/arm_cfft_init_f32.c",
    "Source/TransformFunctions/arm_cfft_radix8_f32.c",
    "Source/TransformFunctions/arm_bitreversal2.c",
    "Source/CommonTables/arm_common_tables.c",
    "Source/CommonTables/arm_const_structs.c",
    # Cortex-M55: CMSIS-DSP takes its Helium FFT (ARM_MATH_MVEF from __ARM_FEATURE_MVE), whose
    # twiddles live here; empty on other cores.
    "Source/CommonTables/arm_mve_tables.c",
]
CMSIS_DSP_INCLUDES = ["Include", "PrivateInclude"]
CMSIS_DSP_DEFINES = ["__GNUC_PYTHON__"]
# Both the board and the host reference build: no fused multiply-add, so the host build of the
# front end rounds exactly as the board does (arm-none-eabi-gcc contracts a*b+c by default).
FLAGS = ["-ffp-contract=off", "-funroll-loops"]
PCM_FULL_SCALE = 32768.0


def default_cache_root() -> Path:
    return Path(os.environ.get("DSMN_CACHE") or Path.home() / ".cache" / "dsmn-host")


def cmsis_dsp_dir() -> Path:
    """The unpacked CMSIS-DSP sources (DSMN_CMSISDSP_DIR, else the bootstrap cache)."""
    env = os.environ.get("DSMN_CMSISDSP_DIR")
    path = Path(env) if env else default_cache_root() / f"cmsisdsp-{CMSIS_DSP_VERSION}"
    missing = [s for s in ["Include/arm_math.h", *CMSIS_DSP_SOURCES] if not (path / s).is_file()]
    if missing:
        raise DsmnError(f"{path}: CMSIS-DSP {CMSIS_DSP_VERSION} sources not there ({missing[0]} missing); "
                        "run scripts/bootstrap.sh (it unpacks the cmsisdsp sdist from PyPI) "
                        "or set DSMN_CMSISDSP_DIR")
    return path


def cmsis_sources(base=None):
    base = Path(base or cmsis_dsp_dir())
    return [base / s for s in CMSIS_DSP_SOURCES]


def cmsis_includes(base=None):
    base = Path(base or cmsis_dsp_dir())
    return [base / d for d in CMSIS_DSP_INCLUDES]


def _c_float(v) -> str:
    """An exact C literal of a float32 (hex float: no decimal round trip to trust)."""
    v = float(np.float32(v))
    return "0.0f" if v == 0 else f"{v.hex()}f"


def mel_segments(fb):
    """The filterbank as segments: (seg, pair) where bins seg[s] .. seg[s+1]-1 add to bands s-1
    and s with weights pair[k - seg[0]] (zeros where a band does not reach). Each bin's lower
    band is the lowest it can be and never decreases, which every triangular filterbank allows;
    anything else (a bin in three bands, bands out of order) is refused, since the C side's one
    pass over the bins relies on it."""
    n_mels, n_bins = fb.shape
    used = np.flatnonzero(fb.any(axis=0))
    if not used.size:
        raise DsmnError("the mel filterbank is all zeros")
    lower, prev = [], -1
    for k in range(int(used[0]), int(used[-1]) + 1):
        nz = np.flatnonzero(fb[:, k])
        lo = prev if not nz.size else max(prev, int(nz[0]) - (1 if nz.size == 1 else 0))
        if nz.size and (nz[-1] > lo + 1 or nz[0] < lo):
            raise DsmnError(f"mel bin {k} adds to bands {list(map(int, nz))}; the front end's one-pass "
                            "table needs each bin in two neighbouring bands at most, in band order")
        lower.append(lo)
        prev = lo
    lower = np.array(lower)
    bins = np.arange(int(used[0]), int(used[-1]) + 1)
    seg = [int(used[0]) + int(np.searchsorted(lower, s - 1)) for s in range(n_mels + 1)] + [int(used[-1]) + 1]
    pair = []
    for k, lo in zip(bins, lower):
        pair.append(fb[lo, k] if lo >= 0 else np.float32(0))
        pair.append(fb[lo + 1, k] if lo + 1 < n_mels else np.float32(0))
    return seg, np.array(pair, dtype=np.float32)


def log10_cells():
    """The C log10's table (see log10_pos in dsmn_frontend.c): per mantissa cell i, the edge c
    (1 + i/256; 2 for the top cell, so x just below 1 has r < 0 against c = 2 rather than two
    large terms cancelling) and (log10 c - k log10 2, 2^-23 / c), k = 1 from 1.5 up."""
    cells = []
    for i in range(256):
        edge = 2.0 if i == 255 else 1.0 + i / 256.0
        k = 1 if i >= 128 else 0
        cells.append((np.log10(edge) - k * np.log10(2.0), 2.0 ** -23 / edge))
    return cells


def table_context():
    from dsmn_host.data import features as F

    window = F._window()[: F.N_FFT // 2 + 1] / PCM_FULL_SCALE
    seg, pair = mel_segments(F.mel_filterbank())
    params = {k: F.PARAMS[k] for k in ("sample_rate", "n_fft", "hop", "n_mels", "mel_scale", "mel_norm")}
    return {"window": [_c_float(w) for w in window], "seg": seg, "pair": [_c_float(w) for w in pair],
            "log10_cells": [(_c_float(t), _c_float(inv)) for t, inv in log10_cells()], "params": params}


def render_tables(out_dir) -> Path:
    """Write dsmn_frontend_tables.c into `out_dir` (a build directory, never the source tree)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    out = Path(out_dir) / TABLES_C
    out.parent.mkdir(parents=True, exist_ok=True)
    text = env.get_template(TABLES_C + ".j2").render(**table_context())
    tmp = out.with_suffix(".c.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out


# Pre-compile estimates, checked against linked maps by tests/test_frontend_qemu.py: the front
# end's code and tables, CMSIS-DSP's 4096-point rfft code and the twiddle/bit-reversal tables
# it keeps after --gc-sections.
FLASH_ESTIMATE = 64 * 1024
# dsmn_fe_scratch_bytes() on a 32-bit target: frames of 4096 and 4098 f32 (each rounded up to
# 16 B), 256 x 44 f32 log-mel, 4096 int16 ring, the rfft instance (rounded up).
SCRATCH_BYTES = 4096 * 4 + 4098 * 4 + 8 + 256 * 44 * 4 + 4096 * 2 + 32
INPUT_SHAPE = [1, 44, 256, 2]


def fits_model(card) -> bool:
    return list(card["input"]["shape"]) == INPUT_SHAPE


def own_scratch_bytes(runtime) -> int:
    """0 when the front end borrows the network's arena (native runtime: the arena is grown to
    the scratch if the plan's is smaller, build-firmware's min_arena_bytes), else the size of
    the buffer it needs of its own."""
    return 0 if runtime == "native" else SCRATCH_BYTES


def render_build(gen, runtime) -> dict:
    """Tables + gen/frontend.cmake (which the top-level CMakeLists.txt includes)."""
    import jinja2

    base = cmsis_dsp_dir()
    render_tables(gen)
    own = own_scratch_bytes(runtime)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = env.get_template("frontend.cmake.j2").render(
        cmsis_version=CMSIS_DSP_VERSION, cmsis_dir=str(base), cmsis_sources=[str(p) for p in cmsis_sources(base)],
        cmsis_includes=[str(p) for p in cmsis_includes(base)], own_scratch_bytes=own,
        defines=CMSIS_DSP_DEFINES, flags=FLAGS)
    (Path(gen) / "frontend.cmake").write_text(text)
    return {"scratch_bytes": SCRATCH_BYTES, "own_scratch_bytes": own,
            "scratch": "own buffer" if own else "network arena", "cmsis_dsp": str(base)}


def remove_build(gen):
    for name in ("frontend.cmake", TABLES_C):
        (Path(gen) / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Host reference


def to_pcm16(wave) -> np.ndarray:
    """float samples in [-1, 1] -> the int16 PCM the board is sent (round to nearest, saturate)."""
    v = np.round(np.asarray(wave, dtype=np.float64) * PCM_FULL_SCALE)
    return np.clip(v, -32768, 32767).astype(np.int16)


def pcm16_to_wave(pcm) -> np.ndarray:
    return np.asarray(pcm, dtype=np.int16).astype(np.float32) / np.float32(PCM_FULL_SCALE)


def reference_input(pcm, scale, zero_point) -> np.ndarray:
    """The int8 (44, 256, 2) input the board must compute from these int16 samples: the host
    front end (`features.logmel`) on exactly the same samples, quantized by the one host
    quantizer (int8io.prepare_input -> int8io.quantize, TFLite's QUANTIZE rounding, which the
    C side's quantize() mirrors)."""
    from dsmn_host.data import features, int8io

    return int8io.prepare_input(features.logmel(pcm16_to_wave(pcm)), scale, zero_point)


def compare(board, host) -> dict:
    """Element agreement of two int8 inputs (or stacks of them)."""
    d = np.abs(np.asarray(board, dtype=np.int16) - np.asarray(host, dtype=np.int16))
    return {"elements": int(d.size), "elements_equal": float((d == 0).mean()) if d.size else 1.0,
            "max_abs_lsb": int(d.max()) if d.size else 0}
