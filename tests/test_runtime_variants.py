"""The dsmn runtime on DSMN model2, model3 and model4 (model1 is covered with the session's
trained model in test_runtime_model.py): each variant exported and converted exactly as the
pipeline does it (BatchNorm folded, onnx2tf int8), then run on real inputs from the feature
cache and compared bit for bit with the TFLite-Micro interpreter. Weights are random (seeded):
bit-exactness does not depend on training, and these variants are not trained in CI."""

import numpy as np
import pytest

import runtime_support as rs


@pytest.fixture(scope="module", params=["model2", "model3", "model4"])
def variant_tflite(request, feature_cache_dir, tmp_path_factory):
    name = request.param
    return name, rs.random_variant_tflite(name, feature_cache_dir, tmp_path_factory.mktemp(name))


def test_variant_bit_exact_with_tflm(variant_tflite, feature_cache_dir, tmp_path):
    from dsmn_host.deploy import codegen
    from dsmn_host.data.calib import calibration_inputs
    from dsmn_host.compiler.tflite_reader import read_tflite

    name, tflite = variant_tflite
    g = read_tflite(tflite)
    t = g.tensors[g.inputs[0]]
    x = calibration_inputs(feature_cache_dir, n=3, split="fold1_evaluate")
    xs = np.clip(np.round(x / float(t.scale[0])) + int(t.zero_point[0]), -128, 127).astype(np.int8)
    report = codegen.generate(tflite, tmp_path / "gen")
    ref = rs.tflm_run(tflite.read_bytes(), xs)
    got = codegen.run_batch(tmp_path / "gen", xs).reshape(ref.shape)
    assert np.array_equal(got, ref), name
    assert len({r.tobytes() for r in ref}) > 1  # the inputs really differ at the output
    # one cross-shaped depthwise conv per Sparable (time and mel kernels merged, the channel
    # scalars of sep1/sep2 folded in), 15 in every variant, plus the 2x2 pool of each full block
    # (a split block's 2x1 pool is written as a grouped CONV_2D)
    from dsmn_host.training.models import VARIANTS

    full_blocks = VARIANTS[name][0].count("full")
    assert report["model_op_counts"]["DEPTHWISE_CONV_2D"] == 15 + full_blocks


def test_variant_tiled_plans_bit_exact(variant_tflite, feature_cache_dir, tmp_path):
    """The time-tiled plans of models 2-4 (compiler/tile.py): the smallest arena and one
    budget between it and the untiled arena, bit-exact with TFLM like the untiled plan."""
    from dsmn_host.deploy import codegen
    from dsmn_host.deploy.convert import calibration_inputs
    from dsmn_host.compiler.tflite_reader import read_tflite

    name, tflite = variant_tflite
    g = read_tflite(tflite)
    t = g.tensors[g.inputs[0]]
    x = calibration_inputs(feature_cache_dir, n=2, split="fold1_evaluate")
    xs = np.clip(np.round(x / float(t.scale[0])) + int(t.zero_point[0]), -128, 127).astype(np.int8)
    ref = rs.tflm_run(tflite.read_bytes(), xs)
    small = codegen.generate(tflite, tmp_path / "min", plan="min")
    fast_peak = small["tradeoff"][0]["peak_bytes"]
    # every variant's min plan is smaller than its untiled one (concatenations and Sparable
    # run on bands; measured: model2 -24 %, model3 -55 %, model4 -33 %)
    assert small["peak_activation_bytes"] < fast_peak, (name, small["peak_activation_bytes"], fast_peak)
    got = codegen.run_batch(tmp_path / "min", xs).reshape(ref.shape)
    assert np.array_equal(got, ref), f"{name} min plan"
    peaks = sorted({p["peak_bytes"] for p in small["tradeoff"]})
    budget = peaks[len(peaks) // 2]
    mid = codegen.generate(tflite, tmp_path / "mid", ram_budget=budget)
    assert small["peak_activation_bytes"] <= mid["peak_activation_bytes"] <= budget
    got = codegen.run_batch(tmp_path / "mid", xs).reshape(ref.shape)
    assert np.array_equal(got, ref), f"{name} plan for a {budget} B budget"
