"""Read a .tflite flatbuffer into plain Python objects, with the schema tflite-micro ships.

Only what code generation needs: tensors (shape, type, quantisation, constant data) and
operators (builtin name, inputs, outputs, options object) of the first subgraph.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsmn_host.errors import DsmnError

_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8,
          7: np.int16, 6: np.bool_}


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
    return schema


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple
    dtype: type
    scale: np.ndarray = None          # float32 array, empty when not quantised
    zero_point: np.ndarray = None
    quantized_dimension: int = 0
    data: np.ndarray = None           # constant data, else None
    shape_signature: tuple = None     # shape with -1 for dynamic dims, None when fully static

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def is_const(self):
        return self.data is not None


@dataclass
class Operator:
    index: int
    name: str           # builtin op name, e.g. "CONV_2D"
    inputs: list        # tensor indices, -1 for an omitted optional input
    outputs: list
    options: object = None
    extra: dict = field(default_factory=dict)


@dataclass
class Graph:
    tensors: list
    operators: list
    inputs: list
    outputs: list


def _builtin_names(schema):
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def read_tflite(path):
    """Parse `path` into a Graph. Raises DsmnError for files that are not usable models."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise DsmnError(f"{path}: cannot read model: {exc}") from exc
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise DsmnError(f"{path}: not a TFLite flatbuffer (missing 'TFL3' identifier)")
    schema = _schema()
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    except Exception as exc:  # the generated parser raises assorted errors on corrupt data
        raise DsmnError(f"{path}: corrupt TFLite model: {exc}") from exc
    if not model.subgraphs:
        raise DsmnError(f"{path}: model has no subgraph")
    if len(model.subgraphs) > 1:
        raise DsmnError(f"{path}: model has {len(model.subgraphs)} subgraphs; only single-subgraph "
                        "models (no control flow) can be compiled")
    names = _builtin_names(schema)
    sg = model.subgraphs[0]

    tensors = []
    for i, t in enumerate(sg.tensors):
        dtype = _TYPES.get(t.type)
        if dtype is None:
            raise DsmnError(f"{path}: tensor {i} ({_s(t.name)}) has unsupported type code {t.type}")
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
        q = t.quantization
        scale = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32)
        zp = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], np.int64)
        qdim = int(q.quantizedDimension) if q is not None else 0
        data = None
        b = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        if b is not None:
            raw = None
            if b.data is not None and len(b.data):
                raw = np.asarray(b.data, dtype=np.uint8).tobytes()
            elif getattr(b, "offset", 0) and b.offset > 1:
                raw = buf[b.offset:b.offset + b.size]
            if raw is not None:
                data = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        sig = None
        if t.shapeSignature is not None and len(t.shapeSignature):
            sig = tuple(int(d) for d in t.shapeSignature)
        tensors.append(Tensor(i, _s(t.name), shape, dtype, scale, zp, qdim, data, sig))

    ops = []
    for i, op in enumerate(sg.operators):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = f"CUSTOM({_s(code.customCode)})"
        ins = [int(x) for x in (op.inputs if op.inputs is not None else [])]
        outs = [int(x) for x in (op.outputs if op.outputs is not None else [])]
        ops.append(Operator(i, name, ins, outs, op.builtinOptions))
    return Graph(tensors, ops, [int(x) for x in sg.inputs], [int(x) for x in sg.outputs])


def _s(x):
    if x is None:
        return ""
    return x.decode() if isinstance(x, bytes) else str(x)


# Ops whose second input is a weight tensor; their multiply-accumulates are what `op_macs` counts.
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def op_macs(graph, op):
    """Multiply-accumulates one weight op executes as stored (zero taps included), else 0.

    CONV_2D filter O×KH×KW×(I/groups), DEPTHWISE_CONV_2D 1×KH×KW×O, FULLY_CONNECTED O×I: each
    output element costs one MAC per filter tap that feeds it.
    """
    ins = [i for i in op.inputs if i >= 0]
    if op.name not in WEIGHT_OPS or len(ins) < 2:
        return 0
    out_elems = int(np.prod(graph.tensors[op.outputs[0]].shape, dtype=np.int64))
    w = graph.tensors[ins[1]].shape
    if op.name == "CONV_2D":
        per_out = w[1] * w[2] * w[3]
    elif op.name == "DEPTHWISE_CONV_2D":
        per_out = w[1] * w[2]
    elif op.name == "FULLY_CONNECTED":
        per_out = w[1]
    else:
        per_out = int(np.prod(w[1:]))
    return out_elems * int(per_out)


def stored_params(graph):
    """Elements of every constant an op reads, each counted once: weights, int32 biases of
    weight ops, other float/int8 constants; int32 shape/axis operands are not parameters."""
    seen, params = set(), 0
    for op in graph.operators:
        ins = [i for i in op.inputs if i >= 0]
        for i in ins:
            t = graph.tensors[i]
            if i in seen or not t.is_const:
                continue
            seen.add(i)
            is_bias = op.name in WEIGHT_OPS and len(ins) > 2 and i == ins[2]
            if t.dtype == np.int32 and not is_bias:
                continue
            params += int(np.prod(t.shape, dtype=np.int64)) if len(t.shape) else 1
    return params
