"""`dsmn-host compare`: per-layer comparison of the generated C (traced build) with TFLite's
reference kernels, on the host and on QEMU, and that it names the op a wrong kernel
parameter breaks."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import runtime_support as rs

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def chain_model(tmp_path_factory):
    """conv -> PAD -> stride-2 VALID conv -> depthwise -> ADD -> RESHAPE -> MEAN."""
    W = rs.Weights(17)
    k1, k2 = W((3, 3, 3, 8), 0.4), W((3, 3, 8, 16), 0.2)
    dw, b = W((3, 3, 16, 1), 0.4), W((16,), 0.2)

    def fn(x):
        y = tf.nn.relu(tf.nn.conv2d(x, k1, 1, "SAME"))
        y = tf.nn.conv2d(tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]]), k2, 2, "VALID")
        z = tf.nn.depthwise_conv2d(y, dw, [1, 1, 1, 1], "SAME") + b
        s = tf.reshape(y + z, (1, 8 * 8, 16))
        return tf.reduce_mean(s, axis=[1], keepdims=True)
    buf = rs.to_int8_tflite(fn, (16, 16, 3), seed=3, mean=0.2, std=1.1)
    d = tmp_path_factory.mktemp("compare")
    (d / "m.tflite").write_bytes(buf)
    xs = rs.random_inputs(buf, 2, 9)
    np.save(d / "in.npy", xs)
    return d / "m.tflite", d / "in.npy", xs


def test_cli_all_equal(chain_model, tmp_path):
    model, inputs, _ = chain_model
    r = subprocess.run([sys.executable, "-m", "dsmn_host", "compare", str(model), str(inputs),
                        "--json", str(tmp_path / "c.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "first op differing: none" in r.stdout
    assert "final output vs the TFLite-Micro interpreter: 0/" in r.stdout
    import json
    res = json.loads((tmp_path / "c.json").read_text())
    names = [row["op"] for row in res["rows"]]
    for op in ("CONV_2D", "PAD", "DEPTHWISE_CONV_2D", "ADD", "RESHAPE", "MEAN"):
        assert op in names, names
    compared = [row for row in res["rows"] if "n_elements" in row]
    assert len(compared) == len(res["rows"]) and all(row["max_abs_diff"] == 0 for row in compared)
    assert all(row["n_elements"] > 0 for row in compared)
    reshape = next(row for row in res["rows"] if row["op"] == "RESHAPE")
    assert "view of tensor" in reshape["status"]


def _perturb_output_offset(gen_dir, op_name, nth, delta):
    """Add `delta` to the output zero point in the parameters of the `nth` step of `op_name`
    in the generated C; returns that op's index."""
    path = gen_dir / "dsmn_model.c"
    src = path.read_text()
    steps = re.findall(r"/\* op (\d+): " + op_name + r" .*?\*/\n\s+\w+\(&(\w+),", src)
    op_index, params = steps[nth]
    decl = re.search(r"(static const dsmn_conv_params " + params + r" = \{)(-?\d+), (-?\d+),", src)
    src = src[:decl.start()] + f"{decl.group(1)}{decl.group(2)}, {int(decl.group(3)) + delta}," \
        + src[decl.end():]
    path.write_text(src)
    return int(op_index)


def test_names_the_first_wrong_op(chain_model, tmp_path):
    """One kernel's parameters made wrong (the second conv's output zero point + 3): compare
    reports that op as the first differing, by 3 LSB, and every op before it as equal."""
    from dsmn_host.deploy import codegen, compare
    from dsmn_host.compiler.tflite_reader import read_tflite

    model, _, xs = chain_model
    gen = tmp_path / "gen"
    codegen.generate(model, gen)
    bad = _perturb_output_offset(gen, "CONV_2D", 1, 3)
    _, ours = compare.run_traced(gen, xs)
    graph = read_tflite(model)
    res = compare.compare_tensors(graph, ours, compare.reference_tensors(model, xs))
    assert res["first_differing"]["op_index"] == bad
    assert res["first_beyond_tolerance"]["op_index"] == bad
    rows = {row["op_index"]: row for row in res["rows"]}
    assert rows[bad]["max_abs_diff"] == 3 and rows[bad]["n_differ"] > 0
    assert all(rows[k]["max_abs_diff"] == 0 for k in rows if k < bad)
    assert not res["all_equal"]
    assert f"first op differing by more than 1 LSB: op {bad} (CONV_2D" in compare.format_table(res)


@pytest.mark.skipif(not shutil.which("qemu-system-arm"), reason="qemu-system-arm missing")
def test_qemu_all_equal(chain_model):
    """The same comparison with the Cortex-M4 build on QEMU (trace written by semihosting)."""
    from dsmn_host.deploy import compare

    model, _, xs = chain_model
    res = compare.compare(model, xs, target="qemu-an386")
    assert res["all_equal"] and res["ok"], compare.format_table(res)
    assert res["output_vs_tflm"]["n_differ"] == 0
    assert sum("n_elements" in row for row in res["rows"]) == len(res["rows"])


def test_refuses_bad_inputs(chain_model, tmp_path):
    model, _, xs = chain_model
    np.save(tmp_path / "f.npy", xs.astype(np.float32))
    np.save(tmp_path / "short.npy", xs[:, :3])
    for f, msg in (("f.npy", "inputs must be int8"), ("short.npy", "not a whole number of model inputs"),
                   ("missing.npy", "no such inputs file")):
        r = subprocess.run([sys.executable, "-m", "dsmn_host", "compare", str(model), str(tmp_path / f)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr, (f, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
