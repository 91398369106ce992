"""Helpers for the firmware tests: a small DSMN-shaped int8 model (1x44x256x2 in, 1x13 out)
with its model card, used when the shipped models/model1 is not there. Not a test module."""

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
# DSMN_FW_TEST_MODEL points the firmware tests at another int8 model (with its card).
SHIPPED_MODEL = Path(os.environ.get("DSMN_FW_TEST_MODEL", ROOT / "models" / "model1" / "model1_int8.tflite"))


def small_dsmn_tflite(out_dir, seed=0):
    """Conv (stride 2) -> depthwise -> pointwise -> mean -> dense(13), fully int8, with a card."""
    import tensorflow as tf

    tf.random.set_seed(seed)
    inp = tf.keras.Input((44, 256, 2), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu")(x)
    x = tf.keras.layers.Conv2D(16, 1, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(13)(x)
    model = tf.keras.Model(inp, out)
    return _int8_with_card(model, Path(out_dir) / "small_int8.tflite", seed, n_calib=8)


def tflm_outputs(tflite_path, xs):
    """Reference outputs of the TFLite-Micro Python interpreter, one row per input."""
    from runtime_support import tflm_run

    return tflm_run(Path(tflite_path).read_bytes(), xs).reshape(len(xs), -1)


def _int8_with_card(model, path, seed, n_calib):
    """Fully int8 TFLite of a Keras model (calibrated on seeded noise) at `path`, with its card."""
    import tensorflow as tf

    from dsmn_host.deploy import modelcard

    rng = np.random.default_rng(seed)

    def rep():
        for _ in range(n_calib):
            yield [rng.normal(0.0, 1.0, (1, 44, 256, 2)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(conv.convert())
    modelcard.write_card(path)
    return path


def big_activation_tflite(out_dir, seed=0):
    """A model whose first activation (44x256x24 int8 = 270 KB) cannot fit a 128 KiB board: the
    TRANSPOSE after it reads the whole tensor, so no time-tiled plan can stream it either."""
    import tensorflow as tf

    tf.random.set_seed(seed)
    inp = tf.keras.Input((44, 256, 2), batch_size=1)
    x = tf.keras.layers.Conv2D(24, 3, padding="same", activation="relu")(inp)
    x = tf.keras.layers.Permute((2, 1, 3))(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(13)(x))
    return _int8_with_card(model, Path(out_dir) / "big_int8.tflite", seed, n_calib=4)


def validation_inputs(card, n, seed=0):
    """int8 inputs for the bit-exactness checks: full-range noise plus the two saturated corners."""
    shape = tuple(card["input"]["shape"][1:])
    rng = np.random.default_rng(seed)
    xs = [np.full(shape, -128, np.int8), np.full(shape, 127, np.int8)]
    xs += [rng.integers(-128, 128, shape).astype(np.int8) for _ in range(max(0, n - 2))]
    return np.stack(xs[:n])


# The M4 build's board_uart_irq_handler takes 28 instructions for a one-byte interrupt
# (arm-none-eabi-objdump of the qemu-an386 firmware; exception entry/exit are no instructions
# under -icount); 32 leaves room for the board files' variants.
RX_ISR_INSTRUCTIONS_PER_BYTE = 32


def pipelined_counter_ticks(run_json, instructions_per_tick=40):
    """How far one clip's counter may move between two pipelined runs: the next request's first
    window (at most `window` whole frames) and one response probe (a NAK and its filler) can
    arrive while the board computes. The firmware subtracts their RX interrupts' measured time
    (board_uart_irq_entry), which leaves each interrupt's entry code and a tick's rounding
    either way (mostly cancelling), well inside the handler's whole time per byte, which stays
    the bound. One tick more for where in a tick the inference starts (as between
    stop-and-wait runs)."""
    from dsmn_host.target.firmware import MAX_CHUNK

    window = int(run_json["link"]["window"])
    frame = MAX_CHUNK + 16
    probe = 16 + MAX_CHUNK + 4
    return 1 + -(-(window * frame + probe) * RX_ISR_INSTRUCTIONS_PER_BYTE // instructions_per_tick)
