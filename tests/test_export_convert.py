"""Export → int8 conversion → model card → verification, on model1 trained on the synthetic set.

One onnx2tf conversion per session (conftest `int8_conversion`); everything else reuses it.
"""

import collections
import hashlib
import json

import numpy as np
import pytest

from dsmn_host.errors import DsmnError


def _litert_ref(path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    return interp


def _run(interp, q):
    interp.set_tensor(interp.get_input_details()[0]["index"], q)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def test_export_matches_pytorch_and_records_metadata(exported_onnx):
    from dsmn_host.deploy.export import read_metadata
    from dsmn_host.data.tau import LABELS

    path, report = exported_onnx
    assert report["max_abs_diff"] <= 1e-4, report
    assert report["top1_agreement"] == 1.0
    meta = read_metadata(path)
    assert meta["model"] == "model1"
    assert meta["labels"] == list(LABELS)
    import onnx

    graph = onnx.load(str(path)).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 2, 44, 256]
    assert "Transpose" != graph.node[0].op_type


def test_legacy_exporter_also_matches(tmp_path):
    """The TorchScript exporter's chunk → Shape/Slice chains are folded away for onnx2tf."""
    import onnx
    import torch

    from dsmn_host.deploy.export import export_model
    from dsmn_host.training.models import TimeMelWrapper, build_model

    torch.manual_seed(1)
    model = TimeMelWrapper(build_model("model1")).eval()
    report = export_model(model, tmp_path / "legacy.onnx", exporter="legacy", opset=17)
    assert report["max_abs_diff"] <= 1e-4
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "legacy.onnx")).graph.node)
    assert not {"Shape", "Gather"} & set(ops), ops


def test_int8_io_contract_and_no_layout_op_at_input(int8_tflite, int8_conversion):
    from dsmn_host.deploy.modelcard import summarize as read_tflite

    info = read_tflite(int8_tflite)
    assert info["input"]["shape"] == [1, 44, 256, 2] and info["input"]["dtype"] == "int8"
    assert info["output"]["shape"] == [1, 13] and info["output"]["dtype"] == "int8"
    assert "TRANSPOSE" not in info["input_consumers"] and info["op_sequence"][0] != "TRANSPOSE"
    assert not {"QUANTIZE", "DEQUANTIZE"} & set(info["ops"])
    # per-channel weights: the first conv's filter carries one scale per output channel
    interp = _litert_ref(int8_tflite)
    first = interp._get_ops_details()[0]
    filt = interp.get_tensor_details()[first["inputs"][1]]
    assert filt["dtype"] == np.int8 and len(filt["quantization_parameters"]["scales"]) > 1
    _, report, _ = int8_conversion
    assert report["calibration_inputs"] > 0


def test_strip_and_reorder_keep_outputs_and_align_buffers(int8_tflite, int8_conversion):
    from ai_edge_litert import schema_py_generated as schema

    from dsmn_host.deploy.modelcard import summarize as read_tflite

    _, report, work = int8_conversion
    raw = next(work.glob("out/*_full_integer_quant.tflite"))
    assert report["model_bytes"] < report["bytes_before_strip"] == raw.stat().st_size
    assert not read_tflite(int8_tflite)["has_tensor_names"]
    a, b = _litert_ref(raw), _litert_ref(int8_tflite)
    rng = np.random.default_rng(0)
    for _ in range(3):
        q = rng.integers(-128, 128, (1, 44, 256, 2), dtype=np.int8)
        np.testing.assert_array_equal(_run(a, q), _run(b, q))
    # the operator reordering may only lower what TFLM needs
    from dsmn_host.deploy.modelcard import tflm_measure

    assert tflm_measure(int8_tflite)[0] <= tflm_measure(raw)[0]
    data = int8_tflite.read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength():
            assert buf.DataAsNumpy().ctypes.data % 16 == np.frombuffer(data, np.uint8).ctypes.data % 16


def test_model_card_fields_match_the_flatbuffer(int8_tflite, int8_model_card):
    from dsmn_host.deploy.modelcard import card_paths
    from dsmn_host.data.tau import LABELS

    card = int8_model_card
    data = int8_tflite.read_bytes()
    assert card["sha256"] == hashlib.sha256(data).hexdigest()
    assert card["model_bytes"] == len(data)
    assert card["tflm_arena_bytes"] > 0 and card["tflm_missing_ops"] == []
    assert card["labels"] == list(LABELS) and len(card["labels"]) == 13
    interp = _litert_ref(int8_tflite)
    ops = collections.Counter(op["op_name"] for op in interp._get_ops_details())
    assert card["ops"] == dict(ops)
    for key, det in (("input", interp.get_input_details()[0]), ("output", interp.get_output_details()[0])):
        assert card[key]["shape"] == det["shape"].tolist()
        assert card[key]["scale"] == pytest.approx(det["quantization"][0], rel=1e-7)
        assert card[key]["zero_point"] == det["quantization"][1]
    assert 20_000 < card["params"] < 128_000 and card["macs"] > 1_000_000
    assert card["preprocessing"]["n_mels"] == 256
    md = card_paths(int8_tflite)["md"].read_text()
    assert card["sha256"] in md and "TFLM arena" in md


def test_tflm_arena_is_what_tflm_needs(int8_tflite, int8_model_card):
    """An arena of the reported size works; a clearly smaller one does not."""
    from tflite_micro.python.tflite_micro import runtime

    arena = int8_model_card["tflm_arena_bytes"]
    interp = runtime.Interpreter.from_file(str(int8_tflite), arena_size=arena + 64)
    interp.set_input(np.zeros((1, 44, 256, 2), np.int8), 0)
    interp.invoke()
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_file(str(int8_tflite), arena_size=arena // 2)


@pytest.fixture(scope="module")
def verify_report(int8_tflite, exported_onnx, export_data_dir):
    """One `verify` of the session's int8 model on the validation split it was trained with."""
    from dsmn_host.deploy.verify import verify

    return verify(int8_tflite, onnx_path=exported_onnx[0], data=export_data_dir)


def test_verify_runs_every_form_and_tflm_matches_ref(verify_report):
    report = verify_report
    cols, pairs = report["columns"], report["pairs"]
    assert report["n"] > 0 and {"onnx", "int8_ref", "int8_tflm"} <= set(cols)
    # the float graph ONNX came from: same network in PyTorch
    torch_cols = [c for c in ("qat_float", "float") if c in cols]
    assert torch_cols and pairs[f"{torch_cols[0]}|onnx"]["max_abs_logit_diff"] < 1e-3
    # TFLM against TFLite's reference kernels: bit-exact up to at most 1 LSB on rare outputs
    assert report["tflm_vs_ref"]["max_lsb"] <= 1
    assert report["tflm_vs_ref"]["differing"] <= 0.01 * report["tflm_vs_ref"]["outputs"]
    saved = json.loads(open(report["path"]).read())
    assert saved["pairs"] == pairs


def test_output_grid_check_counts_ties_the_int8_output_cannot_resolve():
    import numpy as np

    from dsmn_host.deploy.verify import output_grid_check

    step = 0.1
    f = np.full((4, 13), -1.0)
    f[0, [2, 5]] = [1.0, 1.02]   # 0.2 steps apart: both round to 10 steps, argmax falls on class 2
    f[1, [2, 5]] = [1.0, 1.15]   # 1.5 steps apart: resolvable
    f[2, [2, 5]] = [1.0, 2.0]    # 10 steps apart
    f[3, [7, 1]] = [3.0, 0.0]
    q = f.copy()
    q[1, 2] = 1.3                # a conversion error flips a resolvable clip
    g = output_grid_check(f, q, step, 0)
    assert g["rounding_only_agreement"] == 0.75
    assert [(b["clips"], b["flips"]) for b in g["by_margin"]] == [(1, 0), (1, 1), (2, 0)]
    assert g["by_margin"][1]["agreement"] == 0.0 and g["by_margin"][0]["margin_steps"] == [0.0, 1.0]


def test_int8_flips_only_where_the_float_decision_is_a_near_tie(verify_report):
    """Regression guard for conversion error: the issue's 98 % bar, applied to the clips whose
    float top-2 margin spans at least 3 int8 output steps (where rounding the output cannot be
    the cause); the bins account for every clip and every flip of the ONNX-vs-int8 pair."""
    grid, n = verify_report["output_grid"], verify_report["n"]
    assert grid["reference"] == "onnx"
    bins = grid["by_margin"]
    assert sum(b["clips"] for b in bins) == n
    disagree = round((1 - verify_report["pairs"]["onnx|int8_ref"]["top1_agreement"]) * n)
    assert sum(b["flips"] for b in bins) == disagree
    decisive = bins[-1]
    assert decisive["margin_steps"] == [3.0, None] and decisive["clips"] >= n // 4
    # issue 12 item 7 (a): where the float top-2 margin spans >= 3 output steps, no flip at all
    assert decisive["flips"] == 0 and decisive["agreement"] == 1.0, bins


def test_verify_cli_names_the_board_problem(int8_tflite, int8_model_card, exported_onnx, export_data_dir, capsys):
    from dsmn_host.cli import main

    onnx_path, _ = exported_onnx
    arena = int8_model_card["tflm_arena_bytes"]
    code = main(["verify", str(int8_tflite), "--onnx", str(onnx_path), "--data", str(export_data_dir),
                 "--limit", "4", "--ram-limit", str(arena - 1), "--flash-limit", "1000"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"TFLM arena {arena} bytes exceeds" in out and "exceeds the flash" in out


def test_board_check_reports_missing_ops_by_name():
    from dsmn_host.deploy.verify import board_check

    card = {"tflm_missing_ops": ["FFT_2D"], "tflm_arena_bytes": None, "model_bytes": 10}
    problems = board_check(card, ram_limit=100, flash_limit=100)["problems"]
    assert problems == ["op FFT_2D is not available in TFLite-Micro"]


def test_convert_refuses_feature_layout_onnx(tmp_path):
    """An ONNX taking mel × time would need a TRANSPOSE at the int8 input: refused, by name."""
    import onnx
    from onnx import TensorProto, helper

    from dsmn_host.deploy.convert import convert

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 256, 44])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 256, 44])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    onnx.save(model, tmp_path / "wrong.onnx")
    with pytest.raises(DsmnError, match="time × mel"):
        convert(tmp_path / "wrong.onnx", tmp_path / "none.npy", tmp_path / "out.tflite")
    with pytest.raises(DsmnError, match="no such ONNX"):
        convert(tmp_path / "missing.onnx", tmp_path / "none.npy", tmp_path / "out.tflite")


def test_corrupt_tflite_is_a_user_error(tmp_path):
    from dsmn_host.deploy.modelcard import summarize as read_tflite

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DsmnError, match="bad.tflite"):
        read_tflite(bad)


VAL_1000_CLIPS_PER_CLASS = 380  # the synthetic plan puts ~30 % of the clips in `evaluate`: 1,160 clips


@pytest.fixture(scope="session")
def large_val_cache(tmp_path_factory):
    """1,000 fresh validation clips from the distribution the shared model was trained on (the
    "easy" synthetic set, another seed, so none of them is a training clip), for an accuracy
    difference resolvable to 0.1 pp (3,800 clips written, 1,160 in `evaluate`)."""
    from dsmn_host.data.features import build_cache
    from dsmn_host.data.synth import write_synthetic_set

    root = tmp_path_factory.mktemp("val1000")
    write_synthetic_set(root / "tau22-easy-val", clips_per_class=VAL_1000_CLIPS_PER_CLASS, seed=8,
                        difficulty="easy", workers=1)
    build_cache(root / "tau22-easy-val", root / "val.features", workers=1, progress=False)
    return root / "val.features"


def test_int8_accuracy_within_1pp_of_float_on_1000_clips(int8_tflite, exported_onnx, large_val_cache):
    """Issue 12 item 7 (b): int8 (TFLite reference kernels) scene accuracy within 1 pp of the float
    ONNX it was converted from, on >= 1,000 held-out clips (one clip = 0.1 pp)."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from dsmn_host.data.features import open_features
    from dsmn_host.data.int8io import features_to_nhwc, features_to_time_mel, quantize
    from dsmn_host.deploy.modelcard import load_card

    cache = open_features(large_val_cache)
    idx = np.sort(np.asarray(cache.indices("evaluate")))
    assert len(idx) >= 1000
    scene = np.asarray(cache.scene_idx)[idx].astype(int)
    card = load_card(int8_tflite)
    s_in, zp_in = card["input"]["scale"], card["input"]["zero_point"]
    sess = ort.InferenceSession(str(exported_onnx[0]), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    ref = Interpreter(model_path=str(int8_tflite), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                      num_threads=1)
    ref.allocate_tensors()
    i_in, i_out = ref.get_input_details()[0]["index"], ref.get_output_details()[0]["index"]
    f_top, q_top = [], []
    for start in range(0, len(idx), 100):
        x = cache.inputs(idx[start:start + 100])                      # (B, 2, mel, time)
        x_tm, x_nhwc = features_to_time_mel(x), features_to_nhwc(x)
        for k in range(len(x)):
            f_top.append(sess.run(None, {in_name: x_tm[k:k + 1]})[0][0, :10].argmax())
            ref.set_tensor(i_in, quantize(x_nhwc[k:k + 1], s_in, zp_in))
            ref.invoke()
            q_top.append(ref.get_tensor(i_out)[0, :10].astype(int).argmax())
    acc_f = float((np.array(f_top) == scene).mean())
    acc_q = float((np.array(q_top) == scene).mean())
    print(f"1,000-clip validation: float (ONNX) {acc_f:.3f}, int8 {acc_q:.3f}, "
          f"difference {100 * (acc_q - acc_f):+.1f} pp, top-1 agreement {np.mean(np.array(f_top) == q_top):.3f}")
    assert abs(acc_f - acc_q) <= 0.01, (acc_f, acc_q)
