"""The rules between stages, each kept in one place (issue 14): import direction, the int8 I/O
contract (layouts, TFLite's QUANTIZE rounding), --help, and one clear error per bad input."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dsmn_host
from dsmn_host.cli import main
from dsmn_host.errors import DsmnError

PKG = Path(dsmn_host.__file__).parent


# --------------------------------------------------------------------------------------------
# Dependencies point one way


def _module_name(path):
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph():
    """{module: {package modules it imports}}, from every import statement in every module of
    dsmn_host (subpackages too; imports inside functions count: they are dependencies that only
    happen later). Dynamic imports by name (the CLI's stage registry) are not edges."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against this module's package
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[:len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                # the longest prefix that is a module: `from dsmn_host.data import tau` -> dsmn_host.data.tau
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and t != "dsmn_host":
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle_inside_dsmn_host():
    graph = import_graph()
    assert len(graph) > 20  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_later_stages_do_not_import_training_code():
    graph = import_graph()
    for later in ("dsmn_host.deploy.export", "dsmn_host.deploy.verify", "dsmn_host.deploy.modelcard",
                  "dsmn_host.deploy.convert"):
        assert not graph[later] & {"dsmn_host.training.qat", "dsmn_host.training.train"}, later
    assert "dsmn_host.deploy.verify" not in graph["dsmn_host.deploy.convert"]


# The folder tree is the architecture (docs/architecture.md): phases in pipeline order; a module
# imports from its own phase or an earlier one, and from the shared leaves at the top.
PHASE_ORDER = ["data", "training", "compiler", "deploy", "target", "link"]
SHARED = {"errors", "paths", "clihelp", "boards"}          # every phase may import these
ORCHESTRATION = {"cli", "__main__", "pipeline", "demo"}     # may import every phase; none imports them


def _place(module):
    """('phase', i) / ('shared', -1) / ('orchestration', len) of a dsmn_host module."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package", -1
    if parts[1] in PHASE_ORDER:
        return parts[1], PHASE_ORDER.index(parts[1])
    if parts[1] in SHARED:
        return "shared", -1
    if parts[1] in ORCHESTRATION:
        return "orchestration", len(PHASE_ORDER)
    return None, None


def phase_violations(graph):
    bad = []
    for mod, deps in graph.items():
        where, rank = _place(mod)
        for dep in deps:
            dep_where, dep_rank = _place(dep)
            if where == "shared" and dep_where != "shared":
                bad.append(f"{mod} (shared) imports {dep}")
            elif dep_where == "orchestration" and where != "orchestration":
                bad.append(f"{mod} imports the orchestration module {dep}")
            elif rank is not None and dep_rank is not None and dep_rank > rank:
                bad.append(f"{mod} ({where}) imports {dep} of the later phase {dep_where}")
    return sorted(bad)


def test_every_module_sits_in_a_phase_or_at_the_top_by_name():
    graph = import_graph()
    loose = sorted(m for m in graph if _place(m)[0] is None)
    assert not loose, f"modules in no phase (put them in one of {PHASE_ORDER}): {loose}"
    assert {m.split(".")[1] for m in graph if m.count(".") >= 1} >= set(PHASE_ORDER)


def test_imports_point_down_the_pipeline_between_phases():
    assert phase_violations(import_graph()) == []


def test_phase_checker_finds_an_import_up_the_pipeline():
    graph = {"dsmn_host.data.features": {"dsmn_host.link.report"}, "dsmn_host.errors": {"dsmn_host.data.tau"},
             "dsmn_host.deploy.verify": {"dsmn_host.pipeline", "dsmn_host.training.models"}}
    assert phase_violations(graph) == [
        "dsmn_host.data.features (data) imports dsmn_host.link.report of the later phase link",
        "dsmn_host.deploy.verify imports the orchestration module dsmn_host.pipeline",
        "dsmn_host.errors (shared) imports dsmn_host.data.tau"]


# --------------------------------------------------------------------------------------------
# The int8 I/O contract


def _quantize_model(n, scale, zero_point, op_name="QUANTIZE", input_type="FLOAT32"):
    """A one-op TFLite model: float32 [1, n] -> QUANTIZE -> int8 [1, n] (or another op/type)."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as S

    m = S.ModelT()
    m.version = 3
    code = S.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = getattr(S.BuiltinOperator, op_name)
    code.version = 1
    m.operatorCodes = [code]
    m.buffers = [S.BufferT(), S.BufferT(), S.BufferT()]
    x, q = S.TensorT(), S.TensorT()
    x.shape, x.type, x.buffer = [1, n], getattr(S.TensorType, input_type), 1
    if input_type == "INT8":
        x.quantization = S.QuantizationParametersT()
        x.quantization.scale, x.quantization.zeroPoint = [scale], [zero_point]
    q.shape, q.type, q.buffer = [1, n], S.TensorType.INT8, 2
    q.quantization = S.QuantizationParametersT()
    q.quantization.scale, q.quantization.zeroPoint = [scale], [zero_point]
    op = S.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0] if op_name == "ADD" else [0], [1]
    sg = S.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = [x, q], [0], [1], [op]
    m.subgraphs = [sg]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize("scale,zero_point", [(0.25, 3), (0.1, -128), (0.0372, 17)])
def test_quantize_matches_tflite_reference_and_tflm_quantize(scale, zero_point):
    """Ties (x / scale = k + 0.5) go away from zero in TFLite's reference QUANTIZE kernel and in
    TFLM, which the board runs; np.round's half-to-even would not."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tflite_micro.python.tflite_micro import runtime

    from dsmn_host.data.int8io import quantize

    s = np.float32(scale)
    k = np.arange(-40, 40, dtype=np.float32)
    ties = (k + np.float32(0.5)) * s
    near = np.float32(np.nextafter(np.float32(0.5), np.float32(0))) * s   # just below a tie
    rng = np.random.default_rng(0)
    x = np.concatenate([ties, [near, -near, 1e6, -1e6, 0.0],
                        rng.normal(0, 40 * scale, 200).astype(np.float32)]).astype(np.float32)[None]
    data = _quantize_model(x.shape[1], scale, zero_point)
    ref = Interpreter(model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    ref.allocate_tensors()
    ref.set_tensor(ref.get_input_details()[0]["index"], x)
    ref.invoke()
    want = ref.get_tensor(ref.get_output_details()[0]["index"])
    micro = runtime.Interpreter.from_bytes(data)
    micro.set_input(x, 0)
    micro.invoke()
    np.testing.assert_array_equal(micro.get_output(0), want)
    got = quantize(x, scale, zero_point)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, want)
    half_even = np.clip(np.round(x / s) + zero_point, -128, 127)
    assert (half_even != want).any()  # the ties really are ties: the other rounding differs


def test_every_stage_uses_the_one_quantizer():
    from dsmn_host.data import int8io
    from dsmn_host.link import evaluate

    assert evaluate.quantize is int8io.quantize and evaluate.prepare_input is int8io.prepare_input
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        if path.name != "int8io.py":
            assert "def _quantize(" not in text and "def quantize(" not in text, path


def test_layouts_round_trip():
    from dsmn_host.data.int8io import features_to_nhwc, features_to_time_mel, nhwc_to_features

    x = np.random.default_rng(1).normal(size=(3, 2, 256, 44)).astype(np.float32)
    n = features_to_nhwc(x)
    assert n.shape == (3, 44, 256, 2) and n[1, 5, 7, 1] == x[1, 1, 7, 5]
    np.testing.assert_array_equal(nhwc_to_features(n), x)
    assert features_to_nhwc(x[0]).shape == (44, 256, 2)
    t = features_to_time_mel(x)
    assert t.shape == (3, 2, 44, 256) and t[2, 1, 3, 9] == x[2, 1, 9, 3]


def test_model_card_counts_come_from_the_one_reader():
    """The shipped card's params / MACs are what tflite_reader's counters give on its model."""
    from dsmn_host.deploy.modelcard import summarize
    from dsmn_host.compiler.tflite_reader import op_macs, read_tflite, stored_params

    model = PKG.parents[1] / "models" / "model1" / "model1_int8.tflite"
    card = json.loads(model.with_name("model1_int8.card.json").read_text())
    g = read_tflite(model)
    info = summarize(model)
    assert info["params"] == stored_params(g) == card["params"] == 45_861
    assert info["macs"] == sum(op_macs(g, op) for op in g.operators) == card["macs"] == 9_096_640
    assert info["cross_kernel_zero_taps"] == 2_000  # 15 cross-shaped kernels x 4 corners x channels


def test_complexity_table_matches_the_counted_models():
    import torch

    from dsmn_host.training.complexity import COUNTED, MODEL_NAMES, complexity_report, count_complexity
    from dsmn_host.training.models import build_model

    torch.set_num_threads(1)
    assert tuple(COUNTED) == MODEL_NAMES
    for name in MODEL_NAMES:
        assert count_complexity(build_model(name)) == COUNTED[name], name
    assert complexity_report("model1")["params"] == 45_164


# --------------------------------------------------------------------------------------------
# Help that teaches


def _subparsers():
    from dsmn_host.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_subcommand_help_ends_with_examples_and_shows_defaults():
    import argparse

    for name, p in _subparsers().items():
        text = p.format_help()
        assert p.epilog and "examples:" in p.epilog and f"dsmn-host {name}" in p.epilog, name
        assert text.rstrip().endswith(p.epilog.rstrip().splitlines()[-1].strip()), name
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"{name} {a.option_strings or a.dest}: no help text"
            if a.option_strings and not (a.default is None or a.default is False or a.default is argparse.SUPPRESS):
                assert "default" in p._get_formatter()._expand_help(a), (name, a.dest)


def _imports_after(argv):
    code = ("import sys; from dsmn_host.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(m for m in ('torch', 'tensorflow', 'onnx', 'onnx2tf', 'ai_edge_litert') "
            "if m in sys.modules)), file=sys.stderr)")
    env = dict(os.environ, PYTHONPATH=str(PKG.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
    return r.stdout, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


def test_help_and_complexity_import_no_framework():
    """--help and the static complexity table must not pay for torch / TensorFlow imports."""
    out, heavy = _imports_after(["--help"])
    assert "complexity" in out and heavy == ""
    out, heavy = _imports_after(["complexity", "--model", "model2"])
    assert "56,172" in out and heavy == ""
    for cmd in ("train", "qat", "export", "convert", "verify", "codegen", "eval"):
        out, heavy = _imports_after([cmd, "--help"])
        assert "examples:" in out and heavy == "", cmd


def test_help_of_every_subcommand_imports_no_numpy():
    """`dsmn-host --help` and every `SUB --help` load no numpy, torch or TensorFlow: the stage
    modules import them in their command bodies (one process formats all the helps)."""
    code = ("import sys\n"
            "from dsmn_host.cli import build_parser, main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "parser = build_parser()\n"
            "subs = next(a for a in parser._actions if a.__class__.__name__ == '_SubParsersAction').choices\n"
            "for p in subs.values():\n    p.format_help()\n"
            "print(len(subs), ' '.join(sorted(m for m in ('numpy', 'torch', 'tensorflow', 'scipy', 'jinja2') "
            "if m in sys.modules)), file=sys.stderr)")
    env = dict(os.environ, PYTHONPATH=str(PKG.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    n, _, heavy = r.stderr.strip().splitlines()[-1].partition(" ")
    assert int(n) >= 20 and heavy == "", r.stderr


# --------------------------------------------------------------------------------------------
# Errors, not tracebacks: each bad input gives one line naming the thing, exit code 2


def _error(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_unwritable_output_paths(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    wav = tmp_path / "none.wav"
    assert "is a file" in _error(capsys, "synth-data", a_file)
    assert "does not exist" in _error(capsys, "features", "--wav", wav, "--npz", tmp_path / "nodir" / "x.npz")
    assert "a_file is a file" in _error(capsys, "features", "--wav", wav, "--npz", a_file / "x.npz")
    from dsmn_host.paths import output_file

    assert output_file(tmp_path / "out", suffix=".npz").name == "out.npz"
    with pytest.raises(DsmnError, match="is a directory"):
        output_file(tmp_path)


def test_npz_without_suffix_reports_the_file_written(synth_data_dir, tmp_path, capsys):
    wav = next((synth_data_dir / "audio").glob("*.wav"))
    assert main(["features", "--wav", str(wav), "--npz", str(tmp_path / "clip")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'clip.npz'}" in out and (tmp_path / "clip.npz").is_file()


def test_data_dir_missing_or_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert "no such data directory" in _error(capsys, "features", tmp_path / "missing")
    err = _error(capsys, "features", tmp_path / "f")
    assert "is a file" in err and "meta.csv" not in err
    from dsmn_host.data.features import open_features

    with pytest.raises(DsmnError, match="no such feature cache or data directory"):
        open_features(tmp_path / "missing")


def test_skip_bad_leaves_out_a_nan_clip_and_never_a_half_cache(synth_data_dir, tmp_path, capsys):
    import shutil

    import soundfile

    from dsmn_host.data.features import build_cache, open_features

    data = tmp_path / "data"
    shutil.copytree(synth_data_dir, data)
    split = (data / "evaluation_setup" / "fold1_train.csv").read_text().splitlines()
    victim = split[1].split("\t")[0]
    wave, sr = soundfile.read(str(data / victim), dtype="float32")
    wave[100:200] = np.nan
    soundfile.write(str(data / victim), wave, sr, subtype="FLOAT")  # a float WAV can hold NaN
    cache_dir = tmp_path / "cache"
    with pytest.raises(DsmnError, match="NaN"):
        build_cache(data, cache_dir, splits=["train"], workers=1, progress=False)
    with pytest.raises(DsmnError, match="incomplete|corrupt"):  # the aborted cache is not taken as done
        open_features(cache_dir)
    # --skip-bad resumes that cache, leaves the clip out of every split and lists it
    assert main(["features", str(data), "--out", str(cache_dir), "--splits", "train", "--workers", "1",
                 "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert victim in out and "NaN" in out
    cache = open_features(cache_dir)
    rows = cache.indices("train")
    assert victim not in {str(cache.filename[r]) for r in rows} and len(rows) == len(split) - 2
    assert np.isfinite(cache.device_response).all()
    assert any(s["filename"] == victim for s in cache.skipped)


def test_card_and_verify_refuse_corrupt_and_float_models(tmp_path, capsys):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 64)
    assert "not a TFLite flatbuffer" in _error(capsys, "card", bad)
    flt = tmp_path / "float.tflite"
    flt.write_bytes(_quantize_model(4, 0.5, 0))  # float32 input
    assert "input is float32" in _error(capsys, "card", flt)
    assert not (tmp_path / "float.card.json").exists()
    assert "expected int8 [1, 44, 256, 2]" in _error(capsys, "verify", flt)


def test_verify_refuses_a_model_of_another_shape(tmp_path, capsys):
    other = tmp_path / "relu.tflite"
    other.write_bytes(_quantize_model(13, 0.5, 0, op_name="RELU", input_type="INT8"))  # int8 [1,13] -> [1,13]
    err = _error(capsys, "verify", other)
    assert "input is int8 [1, 13], expected int8 [1, 44, 256, 2]" in err and "output" not in err


def test_emulate_refuses_what_is_not_an_arm_elf(tmp_path, capsys):
    text = tmp_path / "fw.elf"
    text.write_text("not firmware")
    assert "not an ELF" in _error(capsys, "emulate", text)
    assert "not a 32-bit little-endian ARM" in _error(capsys, "emulate", sys.executable)


def test_export_refuses_a_run_without_qat(tmp_path, capsys):
    assert "no such run directory" in _error(capsys, "export", tmp_path / "none", "--out", tmp_path / "m.onnx")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "best.pt").write_bytes(b"")
    assert "no qat.pt" in _error(capsys, "export", run, "--out", tmp_path / "m.onnx")
    (run / "qat.pt").write_bytes(b"")  # a checkpoint cut off by a full disk
    assert "qat.pt: not a readable checkpoint" in _error(capsys, "export", run, "--out", tmp_path / "m.onnx")
    (tmp_path / "f").write_text("x")
    assert "f is a file" in _error(capsys, "export", run, "--out", tmp_path / "f" / "m.onnx")


def test_codegen_run_input_must_be_an_int8_npy(tmp_path, capsys):
    model = tmp_path / "add.tflite"
    model.write_bytes(_quantize_model(13, 0.5, 0, op_name="ADD", input_type="INT8"))  # x + x
    out = tmp_path / "gen"
    assert "must be an int8 .npy" in _error(capsys, "codegen", model, "--out", out, "--run",
                                            tmp_path / "missing.npy", tmp_path / "o.npy")
    from dsmn_host.paths import read_int8_npy

    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(DsmnError, match="text.npy: --run inputs must be an int8 .npy"):
        read_int8_npy(tmp_path / "text.npy", "--run inputs")
    np.save(tmp_path / "f.npy", np.zeros((1, 1, 13), np.float32))
    with pytest.raises(DsmnError, match="must be int8"):
        read_int8_npy(tmp_path / "f.npy")
    np.savez(tmp_path / "z.npz", a=np.zeros(3, np.int8))
    with pytest.raises(DsmnError, match="not an .npz"):
        read_int8_npy(tmp_path / "z.npz")
    assert not (tmp_path / "o.npy").exists()


def test_model_card_readers(tmp_path, capsys):
    from dsmn_host.deploy import modelcard

    (tmp_path / "x.card.json").write_text("[1, 2]")
    with pytest.raises(DsmnError, match="not a model card"):
        modelcard.read_card(tmp_path / "x.card.json")
    (tmp_path / "y.card.json").write_text(json.dumps({"sha256": "0"}))
    with pytest.raises(DsmnError, match="has no 'file', 'input', 'output'"):
        modelcard.read_card(tmp_path / "y.card.json")
    assert "no such model card" in _error(capsys, "eval", "--port", "x", "--data", tmp_path,
                                          "--model-card", tmp_path / "missing.card.json")


def test_demo_table_shows_both_counts_labelled():
    from dsmn_host.demo import render_table

    t = dict(clips_evaluated_on_board=2, float_accuracy=.5, qat_accuracy=.5, int8_host_accuracy=.5,
             on_device_accuracy=.5, agreement_exact=1.0, params=45_861, macs=9_096_640, dcase_params=45_164,
             dcase_macs=8_645_641, flash_bytes=1, ram_bytes=1, instructions_per_inference=None,
             counter="instructions")
    text = render_table(t)
    assert "params (int8 graph)" in text and "(paper, DCASE count)" in text
    assert "| 45,861 | 9,096,640 | 45,164 / 8,645,641 |" in text
