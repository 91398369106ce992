"""Calibration inputs: the training inputs whose min/max set every int8 activation range.

Two stages must see exactly the same inputs: `dsmn-host convert` hands them to onnx2tf, which
recalibrates every activation from them, and `dsmn-host qat` computes the ranges it trains
against from them, so the steps QAT trained with are the ones the int8 model gets. Living
beside `features` (and below both stages) is what lets each import it without importing the other.
"""

from pathlib import Path

from dsmn_host.errors import DsmnError
from dsmn_host.data.int8io import INPUT_SHAPE, features_to_nhwc

DEFAULT_CALIB = 300
CLIP_QUANTILE = 1e-4


def calibration_inputs(source, n=DEFAULT_CALIB, split="train", seed=0, with_clip=False):
    """Up to `n` training inputs in NHWC (N, 44, 256, 2), float32, preprocessed as in training,
    clipped to their [CLIP_QUANTILE, 1 - CLIP_QUANTILE] quantiles (with_clip: also return them).

    The converter sets the int8 input scale from the calibration min/max. The delta channel has
    rare spikes (±14-19 where 99.99 % of values lie within ±7), so unclipped they would double
    the input step for every clip; clipped, the int8 model saturates those few values instead.
    `source` is a feature cache, a TAU data directory, or a .npy already in NHWC layout.
    Rows are drawn evenly over scenes so a small `n` still covers every class.
    """
    import numpy as np

    source = Path(source)
    if source.suffix == ".npy":
        try:
            x = np.load(source).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise DsmnError(f"{source}: cannot read calibration array ({exc})") from None
        if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE[1:]:
            raise DsmnError(f"{source}: calibration array must be N×44×256×2 (NHWC), got {x.shape}")
        return _clip(x[:n], with_clip)
    from dsmn_host.data.features import open_features

    cache = open_features(source)
    idx = np.asarray(cache.indices(split))
    if len(idx) == 0:
        raise DsmnError(f"{source}: split {split!r} is empty; nothing to calibrate on")
    rng = np.random.default_rng(seed)
    scene = np.asarray(cache.scene_idx)[idx]
    per_class = [rng.permutation(idx[scene == s]) for s in np.unique(scene)]
    order = [row[i] for i in range(max(len(r) for r in per_class)) for row in per_class if i < len(row)]
    chosen = np.sort(np.asarray(order[:n]))
    return _clip(features_to_nhwc(cache.inputs(chosen).astype(np.float32)), with_clip)


def _clip(x, with_clip):
    import numpy as np

    lo, hi = (float(v) for v in np.quantile(x, [CLIP_QUANTILE, 1 - CLIP_QUANTILE]))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    x = np.clip(x, lo, hi)
    return (x, [lo, hi]) if with_clip else x
