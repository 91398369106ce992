"""Read pass: the .tflite graph (through the one reader, dsmn_host.compiler.tflite_reader) and the
checks every later pass relies on."""

from pathlib import Path

import numpy as np

from dsmn_host.errors import DsmnError
from dsmn_host.compiler.tflite_reader import read_tflite


def read_model(tflite_path):
    path = Path(tflite_path)
    graph = read_tflite(path)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise DsmnError(f"{path}: model has {len(graph.inputs)} inputs and "
                        f"{len(graph.outputs)} outputs; exactly one of each is supported")
    for idx, what in ((graph.inputs[0], "input"), (graph.outputs[0], "output")):
        if graph.tensors[idx].dtype is not np.int8:
            raise DsmnError(f"{path}: model {what} tensor is "
                            f"{np.dtype(graph.tensors[idx].dtype).name}; need int8 "
                            "(convert with int8 input/output)")
    return graph
