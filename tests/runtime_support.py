"""Helpers for the dsmn runtime tests: tiny Keras models -> int8 TFLite, TFLM reference runs,
and generated-code runs. Not a test module itself."""

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def to_int8_tflite(fn, input_shape, seed=0, mean=0.0, std=1.0, batch=1):
    """Full-integer conversion of `fn` (tf ops on a 1 x input_shape float tensor, weights as
    constants). `mean`/`std` of the calibration data steer the input zero point and scale,
    so tests cover asymmetric quantisation too. Batch 1 and static shapes let the converter
    emit dilated convolutions directly; batch=None keeps the batch dimension dynamic in the
    signature, so tf.shape(x)[0] / Flatten leave SHAPE -> ... -> RESHAPE chains in the model."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def rep():
        for _ in range(16):
            yield [rng.normal(mean, std, (1,) + tuple(input_shape)).astype(np.float32)]

    func = tf.function(fn, input_signature=[tf.TensorSpec((batch,) + tuple(input_shape), tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([func.get_concrete_function()])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    import logging
    logging.getLogger("absl").setLevel(logging.ERROR)
    return conv.convert()


class Weights:
    """Deterministic random constant weights for test graphs."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, shape, std=1.0):
        import tensorflow as tf
        return tf.constant(self.rng.normal(0.0, std, shape).astype(np.float32))


def act(x, kind):
    import tensorflow as tf
    if kind == "relu":
        return tf.nn.relu(x)
    if kind == "relu6":
        return tf.nn.relu6(x)
    return x


class TflmAborted(RuntimeError):
    """The TFLite-Micro interpreter aborted (a TFLITE_CHECK in its Prepare step)."""


def tflm_run(model_bytes, xs):
    """Outputs of the TFLite-Micro Python interpreter (reference kernels) for each input.

    Runs in a forked child: TFLM aborts the process on models it rejects (e.g. ADD whose
    output rescale factor is >= 1), and one such draw must not kill the test session."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out_path = os.path.join(d, "out.npy")
        pid = os.fork()
        if pid == 0:  # child
            import faulthandler

            faulthandler.disable()
            code = 1
            try:
                from tflite_micro.python.tflite_micro import runtime

                it = runtime.Interpreter.from_bytes(bytes(model_bytes), arena_size=8 << 20)
                outs = []
                for x in xs:
                    it.set_input(x[None], 0)
                    it.invoke()
                    outs.append(np.array(it.get_output(0), copy=True))
                np.save(out_path, np.stack(outs))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not os.path.exists(out_path):
            raise TflmAborted(f"TFLM interpreter failed (status {status})")
        return np.load(out_path)


def ours_run(model_bytes, xs, workdir, target="host"):
    from dsmn_host.deploy import codegen

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model.tflite"
    path.write_bytes(bytes(model_bytes))
    report = codegen.generate(path, workdir / "gen")
    out = codegen.run_batch(workdir / "gen", xs, target=target)
    return out, report


def random_inputs(model_bytes, n, seed):
    """Full-range int8 inputs shaped like the model input (saturating cases included)."""
    from dsmn_host.compiler.tflite_reader import read_tflite
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(bytes(model_bytes))
        f.flush()
        g = read_tflite(f.name)
    shape = g.tensors[g.inputs[0]].shape[1:]
    return np.random.default_rng(seed).integers(-128, 128, (n,) + tuple(shape)).astype(np.int8)


def model_op_names(model_bytes):
    """Builtin names of a .tflite model's operators, in graph order."""
    from dsmn_host.compiler.tflite_reader import read_tflite
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(bytes(model_bytes))
        f.flush()
        return [op.name for op in read_tflite(f.name).operators]


def fix_dynamic_reshape(model_bytes):
    """Copy of the model where each rank-2 RESHAPE output whose stored shape is a placeholder
    of a dynamic shape (e.g. [1, 1] for signature [-1, -1], from tf.reshape(x, [n, -1])) gets
    its real [batch, rest] shape. The TFLM interpreter takes RESHAPE output shapes from the
    flatbuffer, so it needs this to run such models as a reference."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytes(model_bytes), 0))
    sg = model.subgraphs[0]
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.RESHAPE:
            continue
        x, y = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
        n_in = int(np.prod(x.shape))
        if int(np.prod(y.shape)) != n_in and len(y.shape) == 2:
            y.shape = np.array([x.shape[0], n_in // int(x.shape[0])], np.int32)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _op_code(model, op):
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def requantize_output(model_bytes, op_name, scale_factor=1.0, zero_point=None, nth=0,
                      same_as_input=False, scale_fn=None):
    """Copy of the model with the output quantisation of the `nth` op named `op_name` changed:
    scale multiplied by `scale_factor` (zero point set to `zero_point` if given), or made equal
    to the op's first input's (`same_as_input`), or set to scale_fn(input scales). Reaches quantisations the converter's
    calibration rarely produces (effective multipliers >= 0.5, equal in/out quantisation),
    which switch kernels between their fast and exact paths; TFLM runs the patched model as
    the reference."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytes(model_bytes), 0))
    sg = model.subgraphs[0]
    want = getattr(schema.BuiltinOperator, op_name)
    ops = [op for op in sg.operators if _op_code(model, op) == want]
    assert len(ops) > nth, f"no {op_name} #{nth} in the model"
    op = ops[nth]
    q = sg.tensors[op.outputs[0]].quantization
    if same_as_input:
        qi = sg.tensors[op.inputs[0]].quantization
        q.scale, q.zeroPoint = list(qi.scale), list(qi.zeroPoint)
    elif scale_fn is not None:
        ins = [float(sg.tensors[i].quantization.scale[0]) for i in op.inputs if i >= 0
               and sg.tensors[i].quantization is not None and sg.tensors[i].quantization.scale is not None]
        q.scale = [float(np.float32(scale_fn(ins)))]
    else:
        q.scale = [float(np.float32(s * scale_factor)) for s in q.scale]
        if zero_point is not None:
            q.zeroPoint = [int(zero_point)] * len(q.zeroPoint)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def assert_bit_exact(model_bytes, xs, workdir, target="host"):
    """Run the generated code and the TFLM interpreter on `xs`; fail with a summary (elements
    differing, max |delta|, first differing values) unless every output byte is equal.
    Returns the codegen report."""
    got, report = ours_run(model_bytes, xs, workdir, target=target)
    ref = tflm_run(model_bytes, xs)
    got = got.reshape(ref.shape)
    d = np.abs(got.astype(np.int32) - ref.astype(np.int32))
    if d.any():
        k = np.flatnonzero(d.reshape(-1))[:16]
        raise AssertionError(f"{int((d > 0).sum())}/{d.size} elements differ, max |delta| "
                             f"{int(d.max())}; at {k.tolist()}: ref={ref.reshape(-1)[k].tolist()} "
                             f"got={got.reshape(-1)[k].tolist()} (ops {report['op_counts']})")
    return report


def random_variant_tflite(name, cache, work, n_calib=32):
    """model2/3/4 with seeded random weights, exported and converted as the pipeline does
    (BatchNorm folded, onnx2tf int8 calibrated on `cache`); returns the .tflite path. One builder
    for test_runtime_variants.py and benchmarks/bench_plans.py (bit-exactness and arena sizes do
    not depend on training).

    BatchNorm gets the statistics of real inputs (one cumulative pass in training mode): folding
    then changes the weights, and the signal survives all five blocks, so different inputs give
    different int8 outputs (with arbitrary statistics model3's logits barely move)."""
    import torch

    from dsmn_host.data.calib import calibration_inputs
    from dsmn_host.deploy.convert import convert
    from dsmn_host.training.deploy_form import fold_batchnorm
    from dsmn_host.deploy.export import export_model
    from dsmn_host.training.models import TimeMelWrapper, build_model

    work = Path(work)
    torch.manual_seed(0)
    net = build_model(name)
    x = torch.from_numpy(calibration_inputs(cache, n=n_calib)).permute(0, 3, 1, 2)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        net.forward_tm(x)
    net.eval()
    export_model(TimeMelWrapper(fold_batchnorm(net)), work / f"{name}.onnx", metadata={"model": name})
    convert(work / f"{name}.onnx", cache, work / f"{name}_int8.tflite", n_calib=n_calib)
    return work / f"{name}_int8.tflite"
