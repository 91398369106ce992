"""The dsmn runtime on a whole DSMN int8 model (the session's `int8_tflite`, model1) and on
QEMU mps2-an386: bit-exact against the TFLite-Micro interpreter, plus the CLI and the
memory report."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import runtime_support as rs


def _real_inputs(tflite, feature_cache_dir, n):
    """n real feature inputs quantised with the model's input scale/zero point."""
    from dsmn_host.data.calib import calibration_inputs
    from dsmn_host.compiler.tflite_reader import read_tflite

    g = read_tflite(tflite)
    t = g.tensors[g.inputs[0]]
    x = calibration_inputs(feature_cache_dir, n=n, split="train")
    q = np.round(x / float(t.scale[0])) + int(t.zero_point[0])
    return np.clip(q, -128, 127).astype(np.int8)


@pytest.fixture(scope="session")
def dsmn_generated(int8_tflite, tmp_path_factory):
    from dsmn_host.deploy import codegen

    out = tmp_path_factory.mktemp("dsmn-gen")
    report = codegen.generate(int8_tflite, out)
    return out, report


@pytest.fixture(scope="session")
def dsmn_inputs(int8_tflite, feature_cache_dir):
    return _real_inputs(int8_tflite, feature_cache_dir, 4)


@pytest.fixture(scope="session")
def dsmn_reference(int8_tflite, dsmn_inputs):
    return rs.tflm_run(int8_tflite.read_bytes(), dsmn_inputs)


def test_dsmn_model_bit_exact_host(dsmn_generated, dsmn_inputs, dsmn_reference):
    from dsmn_host.deploy import codegen

    gen, _ = dsmn_generated
    got = codegen.run_batch(gen, dsmn_inputs).reshape(dsmn_reference.shape)
    assert np.array_equal(got, dsmn_reference), (got, dsmn_reference)
    # Different inputs give different outputs: the comparison is not vacuous.
    assert len({r.tobytes() for r in dsmn_reference}) > 1


def test_dsmn_memory_report(dsmn_generated, int8_tflite):
    gen, report = dsmn_generated
    on_disk = json.loads((gen / "memory.json").read_text())
    assert on_disk["peak_activation_bytes"] == report["peak_activation_bytes"]
    header = (gen / "dsmn_model.h").read_text()
    assert f"#define DSMN_ARENA_BYTES {report['arena_bytes']}" in header
    assert "#define DSMN_INPUT_BYTES 22528" in header      # 44 x 256 x 2
    assert "#define DSMN_OUTPUT_BYTES 13" in header
    # The plan never needs more than every intermediate tensor at once, and at least the
    # largest single tensor plus what is live beside it.
    total = sum(t["bytes"] for o in report["ops"] for t in o["outputs"] if t["buffer"] not in ("in", "out"))
    assert 0 < report["peak_activation_bytes"] < total
    assert report["peak_activation_bytes"] >= report["live_sum_at_peak_bytes"]
    # Flash holds at least every weight byte of the model.
    from dsmn_host.compiler.tflite_reader import read_tflite
    g = read_tflite(int8_tflite)
    weight_bytes = sum(t.nbytes for t in g.tensors if t.is_const and t.dtype is np.int8)
    assert report["flash_breakdown"]["weights"] >= weight_bytes
    assert report["flash_bytes"] > weight_bytes
    assert (gen / "memory.txt").read_text().startswith("model:")


def test_generated_sources_build_with_listed_runtime(dsmn_generated, tmp_path):
    """What the firmware build uses: generated .c + runtime_sources() + include dirs compile
    and link for Cortex-M4 with warnings as errors."""
    from dsmn_host.deploy import codegen

    gcc = shutil.which("arm-none-eabi-gcc")
    if not gcc:
        pytest.skip("arm-none-eabi-gcc missing")
    gen, _ = dsmn_generated
    incs = [f"-I{d}" for d in [gen, *codegen.runtime_include_dirs()]]
    for src in [gen / "dsmn_model.c", *codegen.runtime_sources()]:
        subprocess.run([gcc, *codegen.ARM_FLAGS, "-std=c99", "-O2", "-Wall", "-Werror",
                        "-Wno-unused-const-variable", *incs, "-c", str(src),
                        "-o", str(tmp_path / (src.stem + ".o"))], check=True)


@pytest.mark.skipif(not shutil.which("qemu-system-arm"), reason="qemu-system-arm missing")
def test_dsmn_model_bit_exact_qemu(dsmn_generated, dsmn_inputs, dsmn_reference):
    from dsmn_host.deploy import codegen

    gen, report = dsmn_generated
    elf = codegen.build_qemu_runner(gen)
    out, stats = codegen.run_qemu(elf, dsmn_inputs[:2], report["output_bytes"])
    assert np.array_equal(out.reshape(dsmn_reference[:2].shape), dsmn_reference[:2])
    # The calibration loop ran 2,000,000 instructions; QEMU's SysTick at 25 MHz under
    # -icount shift=0 ticks once per 40 instructions.
    assert abs(stats["instructions_per_tick"] - 40.0) < 0.01
    assert min(stats["instructions"]) > 1_000_000


@pytest.mark.skipif(not shutil.which("qemu-system-arm"), reason="qemu-system-arm missing")
def test_single_op_models_bit_exact_qemu(tmp_path):
    """The kernels with the most integer corner cases (grouped/depthwise conv, ADD/MUL
    broadcast, MEAN, LOGISTIC) cross-compiled for Cortex-M4 and run on QEMU."""
    import tensorflow as tf

    from dsmn_host.deploy import codegen

    W = rs.Weights(3)
    k1, k2, dw = W((1, 1, 2, 6), 0.8), W((1, 1, 3, 6), 0.8), W((3, 3, 6, 1), 0.8)

    def fn(x):
        y = tf.nn.relu(tf.nn.conv2d(x, k1, 1, "SAME"))
        a, b = tf.split(y, 2, axis=2)
        a = tf.nn.depthwise_conv2d(a, dw, [1, 1, 1, 1], "SAME", dilations=[2, 2])
        b = tf.nn.conv2d(b, k2, 1, "SAME")  # 3 filter in-channels of 6: grouped, groups=2
        z = tf.concat([a, b], axis=2)
        g = tf.math.sigmoid(tf.reduce_mean(z, axis=[1, 2], keepdims=True))
        return z * g + z
    buf = rs.to_int8_tflite(fn, (6, 8, 2))
    xs = rs.random_inputs(buf, 3, 5)
    path = tmp_path / "m.tflite"
    path.write_bytes(buf)
    report = codegen.generate(path, tmp_path / "gen")
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "SPLIT", "MEAN", "LOGISTIC", "MUL", "ADD",
               "CONCATENATION"):
        assert op in report["model_op_counts"], report["model_op_counts"]
    assert "SPLIT" not in report["op_counts"]  # lowered to views: the halves are read in place
    ref = rs.tflm_run(buf, xs)
    out = codegen.run_batch(tmp_path / "gen", xs, target="qemu-an386")
    assert np.array_equal(out.reshape(ref.shape), ref)


def test_cli_codegen_run(tmp_path):
    """`dsmn-host codegen MODEL --out DIR --run IN.npy OUT.npy` end to end, in a subprocess."""
    import tensorflow as tf

    W = rs.Weights(7)
    k = W((3, 3, 2, 4), 0.7)
    buf = rs.to_int8_tflite(lambda x: tf.nn.relu(tf.nn.conv2d(x, k, 2, "SAME")), (8, 8, 2))
    model = tmp_path / "m.tflite"
    model.write_bytes(buf)
    xs = rs.random_inputs(buf, 5, 11)
    np.save(tmp_path / "in.npy", xs)
    out = tmp_path / "gen"
    r = subprocess.run([sys.executable, "-m", "dsmn_host", "codegen", str(model), "--out", str(out),
                        "--run", str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "peak activation RAM" in r.stdout
    got = np.load(tmp_path / "out.npy")
    ref = rs.tflm_run(buf, xs)[:, 0]  # drop the interpreter's batch-1 axis
    assert got.shape == ref.shape and np.array_equal(got, ref)
    for f in ("dsmn_model.c", "dsmn_model.h", "memory.json", "memory.txt"):
        assert (out / f).is_file()


def test_cli_refuses_with_clear_error(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a model at all")
    r = subprocess.run([sys.executable, "-m", "dsmn_host", "codegen", str(bad), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "not a TFLite flatbuffer" in r.stderr
