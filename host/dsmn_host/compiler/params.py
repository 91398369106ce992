"""Kernel parameter structs: one dataclass per C struct of firmware/runtime/dsmn_kernels.h,
fields in the struct's order (tests/test_compiler.py compares them with the header).

The lower pass fills these and the Emitter writes them as C initialisers, so a parameter is
named once instead of being a position in an f-string. Every C field is 32 bits on Cortex-M
(int32_t or a pointer), which gives each struct's target size: counted in the flash report,
and checked against sizeof() by a _Static_assert in the generated C (for structs holding
pointers only where pointers are 32-bit: the host runner builds 64-bit).
"""

from dataclasses import dataclass, field, fields
from typing import ClassVar


def _c(v):
    if isinstance(v, CStruct):
        return v.initializer()
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(_c(x) for x in v) + "}"
    if isinstance(v, str):    # the name of a const array, or NULL
        return v
    return str(int(v))


def _words(v):
    if isinstance(v, CStruct):
        return sum(_words(getattr(v, f.name)) for f in fields(v))
    if isinstance(v, (list, tuple)):
        return sum(_words(x) for x in v)
    return 1


def _has_pointer(v):
    if isinstance(v, CStruct):
        return any(_has_pointer(getattr(v, f.name)) for f in fields(v))
    if isinstance(v, (list, tuple)):
        return any(_has_pointer(x) for x in v)
    return isinstance(v, str)


class CStruct:
    CTYPE: ClassVar[str] = ""

    def initializer(self):
        return _c([getattr(self, f.name) for f in fields(self)])

    def size(self):
        """Bytes on Cortex-M (32-bit int32_t and pointers, no padding)."""
        return 4 * _words(self)

    def has_pointer(self):
        return _has_pointer(self)

    def values(self):
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass
class Dims(CStruct):
    CTYPE = "dsmn_dims"
    n: int
    h: int
    w: int
    c: int


@dataclass
class Requant(CStruct):
    CTYPE = "dsmn_requant"
    multiplier: str
    shift: str


@dataclass
class ConvParams(CStruct):
    CTYPE = "dsmn_conv_params"
    input_offset: int
    output_offset: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_h: int
    pad_w: int
    act_min: int
    act_max: int
    depth_multiplier: int
    out_y0: int = 0
    out_x0: int = 0


@dataclass
class FcParams(CStruct):
    CTYPE = "dsmn_fc_params"
    input_offset: int
    output_offset: int
    batches: int
    accum_depth: int
    out_depth: int
    act_min: int
    act_max: int


@dataclass
class Broadcast(CStruct):
    CTYPE = "dsmn_broadcast"
    dims: list
    stride1: list
    stride2: list


@dataclass
class AddParams(CStruct):
    CTYPE = "dsmn_add_params"
    input1_offset: int = 0
    input2_offset: int = 0
    output_offset: int = 0
    left_shift: int = 0
    input1_multiplier: int = 0
    input1_shift: int = 0
    input2_multiplier: int = 0
    input2_shift: int = 0
    output_multiplier: int = 0
    output_shift: int = 0
    act_min: int = 0
    act_max: int = 0


@dataclass
class MulParams(CStruct):
    CTYPE = "dsmn_mul_params"
    input1_offset: int = 0
    input2_offset: int = 0
    output_offset: int = 0
    output_multiplier: int = 0
    output_shift: int = 0
    act_min: int = 0
    act_max: int = 0


@dataclass
class RequantParams(CStruct):
    CTYPE = "dsmn_requant_params"
    input_zero_point: int
    output_zero_point: int
    multiplier: int
    shift: int


@dataclass
class MeanParams(CStruct):
    CTYPE = "dsmn_mean_params"
    outer: int
    reduce: int
    inner: int
    input_zero_point: int
    output_zero_point: int
    multiplier: int
    shift: int

    def scratch_bytes(self):
        """dsmn_mean_s8_scratch_bytes(): the int32 sums of every output (dsmn_init checks
        that the two agree)."""
        return 4 * self.outer * self.inner


@dataclass
class PoolParams(CStruct):
    CTYPE = "dsmn_pool_params"
    stride_h: int
    stride_w: int
    filter_h: int
    filter_w: int
    pad_h: int
    pad_w: int
    act_min: int
    act_max: int
    out_y0: int = 0
    out_x0: int = 0


@dataclass
class GatherParams(CStruct):
    CTYPE = "dsmn_gather_params"
    dims: list
    stride: list
    offset: int


@dataclass
class LogisticParams(CStruct):
    CTYPE = "dsmn_logistic_params"
    input_zero_point: int
    input_range_radius: int
    input_multiplier: int
    input_left_shift: int


@dataclass
class SoftmaxParams(CStruct):
    CTYPE = "dsmn_softmax_params"
    input_multiplier: int
    input_left_shift: int
    diff_min: int


@dataclass
class PadParams(CStruct):
    CTYPE = "dsmn_pad_params"
    in_dims: list
    out_dims: list
    before: list
    pad_value: int


@dataclass
class AddTabledParams(CStruct):
    CTYPE = "dsmn_add_tabled_params"
    p: AddParams
    doubled: int
    table: str


@dataclass
class Conv1x1Prep(CStruct):
    CTYPE = "dsmn_conv1x1_prep"
    base2: str
    filter: str
    multiplier: str
    shift: str
    gc: int


@dataclass
class DwPrep(CStruct):
    CTYPE = "dsmn_dw_prep"
    ch: str
    taps: str


@dataclass
class TailOp(CStruct):
    CTYPE = "dsmn_tail_op"
    is_mul: int = 0
    const_is_first: int = 0
    const_per_channel: int = 0
    constant: str = "NULL"
    add: AddParams = field(default_factory=AddParams)
    mul: MulParams = field(default_factory=MulParams)


MAX_TAIL = 4   # DSMN_MAX_TAIL


@dataclass
class SparableParams(CStruct):
    CTYPE = "dsmn_sparable_params"
    dw: list            # 2 ConvParams
    q: list             # 2 Requant
    filter_dims: list   # 2 Dims
    filter: list        # 2 array names
    bias: list          # 2 array names or NULL
    add: AddParams
    n_tail: int
    tail: list          # MAX_TAIL TailOp
    tail_lut: str = "NULL"


STRUCTS = (Dims, Requant, ConvParams, Conv1x1Prep, DwPrep, FcParams, Broadcast, AddParams, AddTabledParams, MulParams,
           RequantParams, MeanParams, PoolParams, GatherParams, LogisticParams, SoftmaxParams, PadParams, TailOp,
           SparableParams)
