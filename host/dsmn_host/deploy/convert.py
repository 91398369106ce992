"""Float ONNX → fully int8 TFLite with onnx2tf, calibrated on real training features.

onnx2tf is run through its Python API in a scratch directory (it writes a SavedModel and seven
.tflite variants; only the full-integer one is kept). Calibration inputs go through exactly the
training preprocessing (`FeatureCache.inputs`) and are then laid out NHWC (time, mel, channel),
because onnx2tf feeds them to the already transposed TensorFlow graph (`dsmn_host.data.calib`).

QAT activation ranges cannot be handed to onnx2tf: it always recalibrates from the
representative data (min/max per tensor). `dsmn-host qat` therefore calibrates its ranges
the same way on the same inputs (`calib.calibration_inputs`, clipped), so the steps QAT trained
against are the ones the int8 model gets. The card records this.

The kept model is rewritten without tensor names, signatures and converter metadata, which the
device never reads (about a tenth of the flatbuffer), with every weight buffer 16-byte aligned
and the operators reordered so fewer activations are alive at once (same values; model1's TFLM
arena drops by ~45 KB).
"""

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dsmn_host.data.calib import DEFAULT_CALIB, calibration_inputs
from dsmn_host.errors import DsmnError
from dsmn_host.data.int8io import INPUT_SHAPE
from dsmn_host.paths import output_file

BUFFER_ALIGN = 16


# ------------------------------------------------------------------------------------------
# flatbuffer clean-up


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


_ELEM_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1}


def _activation_sizes(model, sub):
    """Bytes of every non-constant tensor (constants live in flash, not in the arena)."""
    import numpy as np

    sizes = {}
    for i, t in enumerate(sub.tensors):
        buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        if buf is not None and buf.data is not None and len(buf.data):
            continue
        shape = t.shape if t.shape is not None else []
        sizes[i] = int(np.prod(shape)) * _ELEM_BYTES.get(t.type, 4) if len(shape) else _ELEM_BYTES.get(t.type, 4)
    return sizes


def peak_activation_bytes(model, sub, order):
    """Largest sum of live activation tensors over an operator order (what an arena planner
    that frees a tensor after its last reader must hold at once)."""
    sizes = _activation_sizes(model, sub)
    last = {}
    for k, i in enumerate(order):
        for t in sub.operators[i].inputs:
            if t in sizes:
                last[t] = k
    live = {t for t in sub.inputs if t in sizes}
    peak = 0
    for k, i in enumerate(order):
        op = sub.operators[i]
        live.update(t for t in op.outputs if t in sizes)
        peak = max(peak, sum(sizes[t] for t in live))
        live.difference_update(t for t in op.inputs if t in sizes and last.get(t) == k)
    return peak


def schedule_operators(model, sub):
    """A topological operator order that keeps fewer big activations alive at once.

    TFLite and TFLM run operators in flatbuffer order and free a tensor only after its last
    reader. The converter emits a split block's long Sparable chain on one mel half before the
    cheap 1×1 projection of the other half, so that half stays alive through the whole chain.
    Greedy list scheduling — always run the ready operator that adds the fewest live bytes —
    reorders without changing any value. Returns the better of the two orders (by peak).
    """
    from dsmn_host.compiler.schedule import min_memory_order

    sizes = _activation_sizes(model, sub)
    ops = sub.operators
    order = min_memory_order([(list(op.inputs), list(op.outputs)) for op in ops], sizes,
                             keep=list(sub.outputs))
    original = list(range(len(ops)))
    if len(order) != len(ops):
        return original
    return order if peak_activation_bytes(model, sub, order) < peak_activation_bytes(model, sub, original) else original


def strip_tflite(data: bytes, schedule=True) -> bytes:
    """Drop names, signatures, description and metadata; align every buffer to 16 bytes;
    reorder operators for a smaller activation peak (see schedule_operators)."""
    import flatbuffers
    import numpy as np

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    if schedule:
        for sub in model.subgraphs or []:
            order = schedule_operators(model, sub)
            sub.operators = [sub.operators[k] for k in order]
    for sub in model.subgraphs or []:
        sub.name = None
        for tensor in sub.tensors or []:
            tensor.name = None
    meta_buffers = {m.buffer for m in (model.metadata or [])}
    for i in meta_buffers:
        model.buffers[i].data = None
    model.metadata = None
    model.signatureDefs = None
    model.description = None

    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):
            data_off = None
            if self.data is not None and len(self.data):
                payload = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(payload), BUFFER_ALIGN)
                builder.head -= len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                data_off = builder.EndVector(len(payload)) if _end_vector_takes_len() else builder.EndVector()
            schema.BufferStart(builder)
            if data_off is not None:
                schema.BufferAddData(builder, data_off)
            return schema.BufferEnd(builder)

    for buf in model.buffers or []:
        buf.__class__ = AlignedBuffer
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _end_vector_takes_len():
    import inspect

    from flatbuffers import builder

    return len(inspect.signature(builder.Builder.EndVector).parameters) > 1


# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_fds(enabled):
    """TensorFlow's C++ side writes to fds 1/2 directly; redirect_stdout cannot catch that."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)


def _run_onnx2tf(onnx_path, calib_npy, work_dir, input_name, verbose):
    import numpy as np

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnx2tf

    zeros = np.zeros((1, 1, 1, INPUT_SHAPE[3]), np.float32).tolist()
    ones = np.ones((1, 1, 1, INPUT_SHAPE[3]), np.float32).tolist()
    log = io.StringIO()
    redirect = contextlib.nullcontext() if verbose else contextlib.ExitStack()
    if not verbose:
        redirect.enter_context(contextlib.redirect_stdout(log))
        redirect.enter_context(contextlib.redirect_stderr(log))
    with redirect, _quiet_fds(not verbose):
        try:
            onnx2tf.convert(
                input_onnx_file_path=str(onnx_path),
                output_folder_path=str(work_dir),
                output_integer_quantized_tflite=True,
                quant_type="per-channel",
                custom_input_op_name_np_data_path=[[input_name, str(calib_npy), zeros, ones]],
                input_quant_dtype="int8",
                output_quant_dtype="int8",
                not_use_onnxsim=True,            # onnxsim is not in the pinned stack; export pre-folds
                disable_model_save=False,
                non_verbose=not verbose,
                verbosity="debug" if verbose else "error",
            )
        except BaseException as exc:  # onnx2tf asserts and sys.exits on unsupported graphs
            if isinstance(exc, KeyboardInterrupt):
                raise
            tail = "\n".join(log.getvalue().strip().splitlines()[-15:])
            raise DsmnError(f"{onnx_path}: onnx2tf failed ({type(exc).__name__}: {exc})\n{tail}") from None
    found = sorted(Path(work_dir).glob("*_full_integer_quant.tflite"))
    if not found:
        tail = "\n".join(log.getvalue().strip().splitlines()[-15:])
        raise DsmnError(f"{onnx_path}: onnx2tf wrote no full-integer model\n{tail}")
    return found[0].read_bytes()


def convert(onnx_path, calib, out_path, *, n_calib=DEFAULT_CALIB, calib_split="train", strip=True,
            verbose=False, keep_work=None):
    """Convert `onnx_path` to a fully int8 TFLite at `out_path`; returns a report dict."""
    import numpy as np
    import onnx

    from dsmn_host.deploy import modelcard

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise DsmnError(f"{onnx_path}: no such ONNX file")
    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as exc:
        raise DsmnError(f"{onnx_path}: not a readable ONNX file ({exc})") from None
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1:
        raise DsmnError(f"{onnx_path}: expected one graph input, found {len(inputs)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if dims != [1, 2, INPUT_SHAPE[1], INPUT_SHAPE[2]]:
        raise DsmnError(f"{onnx_path}: input {inputs[0].name} is {dims}; export with the time × mel "
                        f"layout [1, 2, 44, 256] (dsmn-host export does)")

    out_path = output_file(out_path, "output .tflite")  # before the minute onnx2tf takes
    x, clip = calibration_inputs(calib, n=n_calib, split=calib_split, with_clip=True)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="dsmn-convert-"))
    try:
        # onnx2tf names its outputs after the input file; a fixed stem keeps the glob simple.
        local = work / "model.onnx"
        shutil.copyfile(onnx_path, local)
        np.save(work / "calib.npy", x)
        raw = _run_onnx2tf(local, work / "calib.npy", work / "out", inputs[0].name, verbose)
    finally:
        if keep_work:
            shutil.copytree(work, keep_work, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.time() - t0
    data = strip_tflite(raw) if strip else raw
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(data)
    try:  # only a model that passes the I/O contract takes the output name
        info = modelcard.check_io(modelcard.summarize(tmp), out_path)
    except DsmnError:
        tmp.unlink()
        raise
    os.replace(tmp, out_path)
    return {
        "tflite": str(out_path), "onnx": str(onnx_path), "calibration_inputs": int(len(x)),
        "calibration_split": calib_split, "calibration_input_clip": clip, "convert_seconds": round(seconds, 2),
        "bytes_before_strip": len(raw), "model_bytes": len(data), "ops": info["ops"],
    }


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "convert", help="convert float ONNX to a fully int8 TFLite (onnx2tf), write its model card, verify",
        description="Full integer quantization with onnx2tf (int8 input and output, per-channel weights), "
                    "calibrated on real training inputs; then the model card and `dsmn-host verify`.",
        **style("dsmn-host convert runs/m1/model1.onnx --calib data/tau22-synth.features --out runs/m1/model1_int8.tflite", "dsmn-host convert m.onnx --calib calib.npy --out m_int8.tflite --no-verify"))
    p.add_argument("onnx", help="float ONNX from `dsmn-host export`")
    p.add_argument("--calib", required=True,
                   help="feature cache, TAU data directory, or an N×44×256×2 .npy of calibration inputs")
    p.add_argument("--out", required=True, help="output .tflite path (card written next to it)")
    p.add_argument("--n-calib", type=int, default=DEFAULT_CALIB, help=f"calibration inputs (default {DEFAULT_CALIB})")
    p.add_argument("--calib-split", default="train", help="split to calibrate on (default train)")
    p.add_argument("--keep-names", action="store_true", help="keep tensor names and signatures in the flatbuffer")
    p.add_argument("--no-verify", action="store_true", help="skip the verification that normally follows")
    p.add_argument("--verify-data", help="data for verification (default: --calib)")
    p.add_argument("--board", help="board name to check RAM/flash against (dsmn_host.boards)")
    p.add_argument("--ram-limit", type=int, help="RAM budget in bytes for the TFLM arena")
    p.add_argument("--flash-limit", type=int, help="flash budget in bytes for the model")
    p.add_argument("--verbose", action="store_true", help="show onnx2tf's own output")
    p.set_defaults(func="dsmn_host.pipeline:cmd_convert")  # convert, then card and verify
