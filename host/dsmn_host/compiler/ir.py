"""The one IR every pass works on: the TFLite graph (tensors, operators) plus Steps.

A Step is one kernel call (or a view) the generated C makes. The lower pass creates Steps;
schedule orders them, tile groups them into row bands, plan places their buffers, emit
writes them out. A Step that can run on a band of output rows carries a `band` (RowBand):
how its output rows map to input rows and how to emit the call for given rows.
"""

from dataclasses import dataclass, field

import numpy as np

from dsmn_host.errors import DsmnError


def op_error(op, msg):
    return DsmnError(f"op {op.index} ({op.name}): {msg}")


@dataclass
class RowMap:
    """Output rows [0, n) need input rows [0, need(n)) along H (axis 1): a window of `k`
    taps, dilation `dil`, stride `stride`, top padding `pad`, over an input of `h` rows.
    `whole`: the input is read entirely whatever the rows (a broadcast operand)."""
    stride: int = 1
    pad: int = 0
    dil: int = 1
    k: int = 1
    h: int = 1
    whole: bool = False

    def need(self, n_out):
        if self.whole:
            return self.h
        if n_out <= 0:
            return 0
        return max(0, min(self.h, (n_out - 1) * self.stride - self.pad + (self.k - 1) * self.dil + 1))

    def first(self, out_row):
        """First input row output row `out_row` (and every later one) reads."""
        if self.whole:
            return 0
        return max(0, min(self.h, out_row * self.stride - self.pad))


@dataclass
class ColMap:
    """Output columns [a, b) of one output window (in the output tensor's own columns, the
    window starting at column `x0` of the op's whole output) read input columns need(a, b)
    along W (axis 2): the RowMap arithmetic with the left padding. `whole`: a broadcast
    operand of width 1."""
    stride: int = 1
    pad: int = 0
    dil: int = 1
    k: int = 1
    w: int = 1
    x0: int = 0
    whole: bool = False

    def need(self, a, b):
        if self.whole:
            return 0, self.w
        lo = (self.x0 + a) * self.stride - self.pad
        hi = (self.x0 + b - 1) * self.stride - self.pad + (self.k - 1) * self.dil + 1
        return max(0, min(self.w, lo)), max(0, min(self.w, hi))


@dataclass
class RowBand:
    """How a Step runs on output rows [lo, hi) of its outputs (all outputs share H).

    code(ptr, lo, hi, scratch) -> C statements, where ptr(t, row) is the C address of row
    `row` of tensor t (possibly a virtual address below the buffer for rows not held).
    `reduce`: the Step is a global reduction over H (MEAN): each band accumulates into its
    scratch, finish(ptr, scratch) writes the result after the last band."""
    maps: dict                       # input tensor -> RowMap
    code: object
    reduce: bool = False
    init: object = None              # reduce only: (scratch) -> C zeroing the accumulator
    finish: object = None            # reduce only: (ptr, scratch) -> C
    rows: int = 0                    # H of the outputs (of the input for a reduction)
    scratch_calls: list = None       # as Step.scratch_calls for the band call (None: the Step's)
    # Mel strips (None: the Step is not local along W, its unit tiles along time only).
    # cols: output tensor -> {input tensor: ColMap}. tile(loc, lo, hi, outs, scratch) -> C
    # for rows [lo, hi) and, per output tensor, the column pieces outs[t] = [(a, b), ...]
    # (a reduction: outs[input] = the columns it accumulates); loc(t, row, a, b) ->
    # (C address of `row` at the first held column, that column, held columns a row) for the
    # held piece of t containing columns [a, b).
    cols: dict = None
    tile: object = None
    # Constants only the band and strip calls read, as (C declaration, flash bytes): emitted
    # (and counted) only when a plan runs the Step in bands.
    consts: list = field(default_factory=list)


@dataclass
class Step:
    op_index: int
    op_name: str
    kind: str               # "kernel" or "alias"
    inputs: list            # activation tensor indices read
    outputs: list           # activation tensor indices written
    code: object = None     # callable(ptr: dict[int,str], scratch: str) -> C statements
    scratch_bytes: int = 0
    # C calls of the kernels' *_scratch_bytes() for this step's calls: the kernels' own
    # statement of what scratch_bytes must be; the generated dsmn_init() checks each equals it.
    scratch_calls: list = field(default_factory=list)
    note: str = ""
    macs: int = 0
    band: RowBand = None    # set when the Step can run on bands of rows (see tile.py)


class IR:
    """The graph plus the decisions passes record on it (folded ops, fusions)."""

    def __init__(self, graph):
        self.g = graph
        self.folded = {}          # op index -> op name evaluated at generation time (fold)
        self.split_parts = {}     # tensor -> [(part tensor, axis, start, size)] (fuse)
        self.skip = set()         # op indices absorbed by a fusion (fuse)
        self.sparable = {}        # ADD op index -> (dw q, dw r, tail ops) (fuse)

    def t(self, i):
        return self.g.tensors[i]

    def qp(self, i):
        t = self.t(i)
        if t.scale is None or len(t.scale) == 0:
            return 0.0, 0
        return float(t.scale[0]), int(t.zero_point[0])

    def consumers(self):
        cons = {}
        for op in self.g.operators:
            if op.index in self.folded:
                continue
            for i in op.inputs:
                if i >= 0:
                    cons.setdefault(i, []).append(op)
        return cons


def rows_of(shape):
    """H of a 4-D NHWC tensor with batch 1, else None (not tileable along time)."""
    shape = list(shape)
    if len(shape) == 4 and shape[0] == 1 and shape[1] > 1:
        return int(shape[1])
    return None


def row_bytes(t):
    shape = list(t.shape)
    return int(np.prod(shape[2:], dtype=np.int64)) * np.dtype(t.dtype).itemsize


__all__ = ["IR", "Step", "RowBand", "RowMap", "ColMap", "op_error", "rows_of", "row_bytes", "field"]
