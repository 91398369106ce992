"""The int8 model's input and output contract, in one place: tensor layouts and quantisation.

Three layouts of the same clip exist and every stage that crosses between them uses these
functions, so a transpose can only be wrong once:

- feature layout (N, 2, mel 256, time 44): what `FeatureCache.inputs` and `features.logmel_to_input`
  return and what the PyTorch network takes;
- time × mel layout (N, 2, time 44, mel 256): the exported ONNX graph's input (`export`), chosen so
  that onnx2tf's NCHW→NHWC rewrite lands on the device layout;
- NHWC (N, time 44, mel 256, channel 2): the int8 TFLite model's input tensor, on the board too.

Quantisation matches TFLite's QUANTIZE kernel (tensorflow/lite/kernels/internal/reference/
quantize.h, AffineQuantize, the same code TFLM runs): the value is divided by the scale in float32,
rounded half away from zero (std::round), offset by the zero point and saturated to int8.
numpy's `np.round` rounds ties to even and would disagree on exact ties (2.5 → 2, TFLite says 3);
tests/test_contracts.py checks this function against the real interpreters on ties.
"""

INPUT_SHAPE = (1, 44, 256, 2)   # NHWC: time, mel, channel (0 = log-mel, 1 = delta)
OUTPUT_SHAPE = (1, 13)          # logits: 10 scenes, then 3 coarse classes
INT8_MIN, INT8_MAX = -128, 127


def features_to_nhwc(x):
    """(N, 2, mel, time) or one (2, mel, time) clip -> the int8 model's (…, time, mel, 2)."""
    import numpy as np

    x = np.asarray(x)
    axes = (0, 3, 2, 1) if x.ndim == 4 else (2, 1, 0)
    return np.ascontiguousarray(x.transpose(axes))


def nhwc_to_features(x):
    """The inverse of `features_to_nhwc`: (…, time, mel, 2) -> (…, 2, mel, time)."""
    return features_to_nhwc(x)  # swapping axes 1 and 3 (or 0 and 2) is its own inverse


def features_to_time_mel(x):
    """(N, 2, mel, time) -> (N, 2, time, mel), the exported ONNX graph's input layout.
    Works on numpy arrays and torch tensors alike (swaps the last two axes)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(np.swapaxes(x, -1, -2))
    return x.transpose(-1, -2)


def quantize(x, scale, zero_point):
    """float -> int8 exactly as TFLite's QUANTIZE: round(x / scale) half away from zero in
    float32, plus the zero point, saturated to [-128, 127]."""
    import numpy as np

    v = np.asarray(x, dtype=np.float32) / np.float32(scale)   # the kernel divides in float32
    v = v.astype(np.float64)                                  # exact: every float32 is a float64
    v = np.sign(v) * np.floor(np.abs(v) + 0.5)                # std::round; exact in float64
    return np.clip(v + int(zero_point), INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(q, scale, zero_point):
    """int8 -> float64 real values: (q - zero_point) * scale."""
    import numpy as np

    return (np.asarray(q, dtype=np.int32) - int(zero_point)) * float(scale)


def prepare_input(logmel, scale, zero_point):
    """Raw (256, 44) log-mel -> the int8 (44, 256, 2) NHWC tensor the int8 model takes: the
    training preprocessing (`features.logmel_to_input`), laid out NHWC, quantised."""
    from dsmn_host.data.features import logmel_to_input

    return quantize(features_to_nhwc(logmel_to_input(logmel)), scale, zero_point)
