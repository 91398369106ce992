/*
 * dsmn runtime: int8 kernels shared by every generated model.
 *
 * The code generator (dsmn_host.codegen) fills the parameter structs below as const data, so
 * nothing here parses a model or allocates memory. Arithmetic follows TFLite's integer
 * reference kernels exactly (double-rounding requantisation), which is what makes outputs
 * bit-identical with TFLite-Micro.
 *
 * Tensors are NHWC, int8, contiguous unless a struct says otherwise.
 */
#ifndef DSMN_KERNELS_H
#define DSMN_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int32_t n, h, w, c;
} dsmn_dims;

/* Per-output-channel requantisation, precomputed on the host (TFLite QuantizeMultiplier). */
typedef struct {
    const int32_t *multiplier;
    const int32_t *shift;
} dsmn_requant;

typedef struct {
    int32_t input_offset;  /* minus the input zero point */
    int32_t output_offset; /* output zero point */
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_h, pad_w;  /* top/left padding; bottom/right is implied by the shapes */
    int32_t act_min, act_max;
    int32_t depth_multiplier; /* depthwise only */
    /* The output dims passed to a kernel may be a window of the full output starting at
     * (out_y0, out_x0): how a producer writes each part of a SPLIT into its own buffer. */
    int32_t out_y0, out_x0;
} dsmn_conv_params;

/* CONV_2D; filter dims are (out_c, kh, kw, in_c / groups): grouped when in_c != filter c. */
void dsmn_conv2d_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                    const dsmn_dims *in_dims, const int8_t *in,
                    const dsmn_dims *filter_dims, const int8_t *filter, const int32_t *bias,
                    const dsmn_dims *out_dims, int8_t *out);

/* A 1x1 CONV_2D without padding whose every output channel takes the fast requantisation
 * (a right shift of 1..31, |bias + input_offset * sum(w)| + 128 * sum(|w|) < 2^29, at most 64
 * channels a group), with the per-channel constant prepared by the code generator: what
 * dsmn_conv2d_s8 derives from filter and bias on each call, less the weights themselves
 * (doubled or packed per call from the int8 filter: int32 copies would cost 4 bytes of flash
 * a weight). */
typedef struct {
    const int32_t *base2;      /* per output channel: 2 * (bias + input_offset * sum of weights) */
    const int8_t *filter;      /* (out_c, 1, 1, gc) */
    const int32_t *multiplier; /* the requantisation's */
    const int32_t *shift;
    int32_t gc;                /* input channels per group */
} dsmn_conv1x1_prep;

void dsmn_conv1x1_prep_s8(const dsmn_conv1x1_prep *pp, const dsmn_conv_params *p,
                          const dsmn_dims *in_dims, const int8_t *in, const dsmn_dims *out_dims,
                          int8_t *out);

/* DEPTHWISE_CONV_2D; filter dims are (1, kh, kw, in_c * depth_multiplier). */
void dsmn_depthwise_conv2d_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                              const dsmn_dims *in_dims, const int8_t *in,
                              const dsmn_dims *filter_dims, const int8_t *filter,
                              const int32_t *bias, const dsmn_dims *out_dims, int8_t *out);

/* The depthwise fast path's per-call setup, prepared by the code generator for a tiled
 * plan's band calls (a few dozen pixels each): per chunk of DSMN_DW_CHUNK channels, the taps
 * whose weight is non-zero in some channel of the chunk (`taps`: count, then DSMN_DW_MAXT
 * filter tap indices); per channel four int32 (`ch`): 2 * (bias + input_offset * sum of
 * weights), multiplier, right shift, 2^(right shift - 1). The tap weights are doubled from the
 * int8 filter per call. Only for depth multiplier 1, stride 1 along mel (any along time), at
 * most 9 taps, every channel with a right shift of 1..31 and |bias + input_offset * sum(w)| +
 * 128 * sum(|w|) < 2^29. */
#define DSMN_DW_CHUNK 16
#define DSMN_DW_MAXT 9
typedef struct {
    const int32_t *ch;
    const int32_t *taps;
} dsmn_dw_prep;

void dsmn_depthwise_conv2d_prep_s8(const dsmn_dw_prep *pp, const dsmn_conv_params *p,
                                   const dsmn_requant *q, const dsmn_dims *in_dims,
                                   const int8_t *in, const dsmn_dims *filter_dims,
                                   const int8_t *filter, const int32_t *bias,
                                   const dsmn_dims *out_dims, int8_t *out);

/* The same for an output window narrower than its input (a mel strip): the depthwise fast
 * path for windows first, else dsmn_depthwise_conv2d_s8. */
void dsmn_depthwise_conv2d_window_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                                     const dsmn_dims *in_dims, const int8_t *in,
                                     const dsmn_dims *filter_dims, const int8_t *filter,
                                     const int32_t *bias, const dsmn_dims *out_dims, int8_t *out);

typedef struct {
    int32_t input_offset, output_offset;
    int32_t batches, accum_depth, out_depth;
    int32_t act_min, act_max;
} dsmn_fc_params;

/* FULLY_CONNECTED; filter is (out_depth, accum_depth), per-tensor quantisation repeated
 * per channel so one kernel serves both. */
void dsmn_fully_connected_s8(const dsmn_fc_params *p, const dsmn_requant *q, const int8_t *in,
                             const int8_t *filter, const int32_t *bias, int8_t *out);

/* Four-dimensional broadcast: strides (in elements) of each input per output axis, 0 where
 * that input is broadcast along the axis. */
typedef struct {
    int32_t dims[4];
    int32_t stride1[4];
    int32_t stride2[4];
} dsmn_broadcast;

typedef struct {
    int32_t input1_offset, input2_offset, output_offset;
    int32_t left_shift;
    int32_t input1_multiplier, input1_shift;
    int32_t input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift;
    int32_t act_min, act_max;
} dsmn_add_params;

typedef struct {
    int32_t input1_offset, input2_offset, output_offset;
    int32_t output_multiplier, output_shift;
    int32_t act_min, act_max;
} dsmn_mul_params;

/* ADD / SUB (sub: input2 multiplier negated by the generator). bc == NULL: same shapes,
 * `count` elements. */
void dsmn_add_s8(const dsmn_add_params *p, const dsmn_broadcast *bc, int32_t count,
                 const int8_t *in1, const int8_t *in2, int8_t *out);
void dsmn_mul_s8(const dsmn_mul_params *p, const dsmn_broadcast *bc, int32_t count,
                 const int8_t *in1, const int8_t *in2, int8_t *out);

/* ADD / SUB of same-shape operands whose two input rescalings the generator tabulated:
 * table[v + 128] is input1's value v rescaled, table[256 + v + 128] input2's; `doubled`: the
 * entries are twice that and the output takes the doubled requantisation (the choice
 * dsmn_add_s8 makes for itself on long runs, from the same bounds). A band or strip call is
 * too short to pay for building the tables itself; the results are dsmn_add_s8's. */
typedef struct {
    dsmn_add_params p;
    int32_t doubled;
    const int32_t *table;
} dsmn_add_tabled_params;

void dsmn_add_tabled_s8(const dsmn_add_tabled_params *t, int32_t count, const int8_t *in1,
                        const int8_t *in2, int8_t *out);

typedef struct {
    int32_t input_zero_point, output_zero_point;
    int32_t multiplier, shift;
} dsmn_requant_params;

/* QUANTIZE int8 -> int8 (rescale). */
void dsmn_requantize_s8(const dsmn_requant_params *p, int32_t count, const int8_t *in,
                        int8_t *out);

typedef struct {
    int32_t outer, reduce, inner; /* input viewed as (outer, reduce, inner) */
    int32_t input_zero_point, output_zero_point;
    int32_t multiplier, shift;    /* already divided by `reduce` on the host */
} dsmn_mean_params;

/* MEAN over a contiguous block of axes. `acc` is scratch of outer*inner int32. Always
 * requantised, also when input and output quantisation are equal: TFLM's int8 MEAN has no
 * plain-division path (it rounds where a truncating integer mean would not). */
void dsmn_mean_s8(const dsmn_mean_params *p, const int8_t *in, int32_t *acc, int8_t *out);

/* MEAN in pieces, for a time-tiled caller: acc (inner int32, zeroed by the caller) += n rows
 * of `inner` values; finish requantises one outer row of sums exactly as dsmn_mean_s8. */
void dsmn_mean_accumulate_s8(int32_t inner, int32_t n, const int8_t *in, int32_t *acc);
void dsmn_mean_finish_s8(const dsmn_mean_params *p, const int32_t *acc, int8_t *out);

typedef struct {
    int32_t stride_h, stride_w, filter_h, filter_w, pad_h, pad_w;
    int32_t act_min, act_max;
    int32_t out_y0, out_x0; /* output window origin, as in dsmn_conv_params */
} dsmn_pool_params;

void dsmn_avg_pool_s8(const dsmn_pool_params *p, const dsmn_dims *in_dims, const int8_t *in,
                      const dsmn_dims *out_dims, int8_t *out);
void dsmn_max_pool_s8(const dsmn_pool_params *p, const dsmn_dims *in_dims, const int8_t *in,
                      const dsmn_dims *out_dims, int8_t *out);

/* Strided gather: out[i0][i1][i2][i3] = in[offset + sum_k i_k * stride[k]], out contiguous.
 * STRIDED_SLICE, SPLIT, SPLIT_V and TRANSPOSE are all this with different strides. */
typedef struct {
    int32_t dims[4];
    int32_t stride[4];
    int32_t offset;
} dsmn_gather_params;

void dsmn_gather_s8(const dsmn_gather_params *p, const int8_t *in, int8_t *out);

/* CONCATENATION: input k contributes `inner[k]` bytes per outer step. */
void dsmn_concat_s8(int32_t n_inputs, const int8_t *const *inputs, const int32_t *inner,
                    int32_t outer, int8_t *out);

typedef struct {
    int32_t input_zero_point;
    int32_t input_range_radius;
    int32_t input_multiplier, input_left_shift;
} dsmn_logistic_params;

/* LOGISTIC (output scale 1/256, zero point -128), gemmlowp fixed-point as in TFLite. */
void dsmn_logistic_s8(const dsmn_logistic_params *p, int32_t count, const int8_t *in,
                      int8_t *out);

/* TANH (output scale 1/128, zero point 0), same parameter meaning as LOGISTIC. */
void dsmn_tanh_s8(const dsmn_logistic_params *p, int32_t count, const int8_t *in, int8_t *out);

typedef struct {
    int32_t input_multiplier, input_left_shift; /* beta * input scale, into Q5.26 */
    int32_t diff_min;                           /* smaller differences to the max give 0 */
} dsmn_softmax_params;

/* SOFTMAX over the innermost axis (`depth` <= 256) of `outer` rows; output scale 1/256, zero
 * point -128. */
void dsmn_softmax_s8(const dsmn_softmax_params *p, int32_t outer, int32_t depth,
                     const int8_t *in, int8_t *out);

/* PAD / PADV2 (constant mode): out = in placed at `before` inside out dims, rest pad_value. */
typedef struct {
    int32_t in_dims[4];
    int32_t out_dims[4];
    int32_t before[4];
    int32_t pad_value;
} dsmn_pad_params;

void dsmn_pad_s8(const dsmn_pad_params *p, const int8_t *in, int8_t *out);

/* One elementwise step applied after a fused kernel's main result: result (op) constant,
 * the constant broadcast per channel (or a scalar), in TFLite's ADD/SUB or MUL arithmetic. */
typedef struct {
    int32_t is_mul;
    int32_t const_is_first; /* the constant is the op's first input */
    int32_t const_per_channel;
    const int8_t *constant;
    dsmn_add_params add;
    dsmn_mul_params mul;
} dsmn_tail_op;

#define DSMN_MAX_TAIL 4

/* DSMN's "Sparable" unit in one pass: two depthwise convs (depth multiplier 1, stride 1) on
 * the same input, their ADD, then up to DSMN_MAX_TAIL elementwise ops with constants (the
 * MUL/ADD pair a folded BatchNorm becomes). Each intermediate is requantised to int8 exactly
 * as the separate TFLite ops would, but none is stored. */
typedef struct {
    dsmn_conv_params dw[2];
    dsmn_requant q[2];
    dsmn_dims filter_dims[2];
    const int8_t *filter[2];
    const int32_t *bias[2];
    dsmn_add_params add;
    int32_t n_tail;
    dsmn_tail_op tail[DSMN_MAX_TAIL];
    /* Optional: the whole tail tabulated per channel (256 entries each, indexed by the ADD
     * result + 128), computed on the host with the same integer arithmetic. */
    const int8_t *tail_lut;
} dsmn_sparable_params;

void dsmn_sparable_s8(const dsmn_sparable_params *p, const dsmn_dims *in_dims, const int8_t *in,
                      const dsmn_dims *out_dims, int8_t *out);

/* Row bands (time-tiled plans, dsmn_rows.c): the kernel above on output rows
 * [y0, y0 + rows) of the window `od` (out_y0 of `p` is the window's origin). */
void dsmn_conv2d_rows_s8(const dsmn_conv_params *p, const dsmn_requant *q, const dsmn_dims *id,
                         const int8_t *in, const dsmn_dims *fd, const int8_t *filter,
                         const int32_t *bias, const dsmn_dims *od, int32_t y0, int32_t rows,
                         int8_t *out);
void dsmn_depthwise_conv2d_rows_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                                   const dsmn_dims *id, const int8_t *in, const dsmn_dims *fd,
                                   const int8_t *filter, const int32_t *bias, const dsmn_dims *od,
                                   int32_t y0, int32_t rows, int8_t *out);
void dsmn_avg_pool_rows_s8(const dsmn_pool_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int8_t *out);
void dsmn_max_pool_rows_s8(const dsmn_pool_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int8_t *out);
/* Broadcast ADD/MUL on `rows` rows: bc's dims[1] replaced by rows (strides unchanged). */
void dsmn_add_rows_s8(const dsmn_add_params *p, const dsmn_broadcast *bc, int32_t rows,
                      int32_t count, const int8_t *in1, const int8_t *in2, int8_t *out);
void dsmn_mul_rows_s8(const dsmn_mul_params *p, const dsmn_broadcast *bc, int32_t rows,
                      int32_t count, const int8_t *in1, const int8_t *in2, int8_t *out);

/* Tiles (time- and mel-tiled plans, dsmn_rows.c): output rows [y0, y0 + rows) and columns
 * [x0, x0 + cols) of the window `od`, reading an input held from column in_x0, in_w columns a
 * row (`in`: that column at row 0), writing rows out_w columns apart. Columns outside the held
 * strip are padding to the kernel, so the caller holds every column a tap reaches except the
 * tensor's true edges. */
void dsmn_conv2d_tile_s8(const dsmn_conv_params *p, const dsmn_requant *q, const dsmn_dims *id,
                         const int8_t *in, const dsmn_dims *fd, const int8_t *filter,
                         const int32_t *bias, const dsmn_dims *od, int32_t y0, int32_t rows,
                         int32_t x0, int32_t cols, int32_t in_x0, int32_t in_w, int32_t out_w,
                         int8_t *out);
void dsmn_conv1x1_prep_rows_s8(const dsmn_conv1x1_prep *pp, const dsmn_conv_params *p,
                               const dsmn_dims *id, const int8_t *in, const dsmn_dims *od,
                               int32_t y0, int32_t rows, int8_t *out);
void dsmn_conv1x1_prep_tile_s8(const dsmn_conv1x1_prep *pp, const dsmn_conv_params *p,
                               const dsmn_dims *id, const int8_t *in, const dsmn_dims *od,
                               int32_t y0, int32_t rows, int32_t x0, int32_t cols, int32_t in_x0,
                               int32_t in_w, int32_t out_w, int8_t *out);
void dsmn_depthwise_conv2d_prep_rows_s8(const dsmn_dw_prep *pp, const dsmn_conv_params *p,
                                        const dsmn_requant *q, const dsmn_dims *id,
                                        const int8_t *in, const dsmn_dims *fd,
                                        const int8_t *filter, const int32_t *bias,
                                        const dsmn_dims *od, int32_t y0, int32_t rows, int8_t *out);
void dsmn_depthwise_conv2d_prep_tile_s8(const dsmn_dw_prep *pp, const dsmn_conv_params *p,
                                        const dsmn_requant *q, const dsmn_dims *id,
                                        const int8_t *in, const dsmn_dims *fd,
                                        const int8_t *filter, const int32_t *bias,
                                        const dsmn_dims *od, int32_t y0, int32_t rows, int32_t x0,
                                        int32_t cols, int32_t in_x0, int32_t in_w, int32_t out_w,
                                        int8_t *out);
void dsmn_depthwise_conv2d_tile_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                                   const dsmn_dims *id, const int8_t *in, const dsmn_dims *fd,
                                   const int8_t *filter, const int32_t *bias, const dsmn_dims *od,
                                   int32_t y0, int32_t rows, int32_t x0, int32_t cols,
                                   int32_t in_x0, int32_t in_w, int32_t out_w, int8_t *out);
void dsmn_avg_pool_tile_s8(const dsmn_pool_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int32_t x0,
                           int32_t cols, int32_t in_x0, int32_t in_w, int32_t out_w, int8_t *out);
void dsmn_max_pool_tile_s8(const dsmn_pool_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int32_t x0,
                           int32_t cols, int32_t in_x0, int32_t in_w, int32_t out_w, int8_t *out);
/* ADD/MUL on `rows` rows of `count` elements (`cols` pixels), operand rows s1 / s2 bytes
 * apart (0: broadcast along time), output rows so bytes apart; bc as for the kernel. */
void dsmn_add_tile_s8(const dsmn_add_params *p, const dsmn_broadcast *bc, int32_t rows,
                      int32_t cols, int32_t count, const int8_t *in1, int32_t s1,
                      const int8_t *in2, int32_t s2, int8_t *out, int32_t so);
void dsmn_add_tabled_tile_s8(const dsmn_add_tabled_params *t, int32_t rows, int32_t cols,
                             int32_t count, const int8_t *in1, int32_t s1, const int8_t *in2,
                             int32_t s2, int8_t *out, int32_t so);
void dsmn_mul_tile_s8(const dsmn_mul_params *p, const dsmn_broadcast *bc, int32_t rows,
                      int32_t cols, int32_t count, const int8_t *in1, int32_t s1,
                      const int8_t *in2, int32_t s2, int8_t *out, int32_t so);
/* dsmn_mean_accumulate_s8 over `rows` rows of `cols` pixels, rows `stride` bytes apart. */
void dsmn_mean_accumulate_tile_s8(int32_t inner, int32_t rows, int32_t cols, const int8_t *in,
                                  int32_t stride, int32_t *acc);

/* Scratch contract (CMSIS-NN's *_get_buffer_size_s8): each kernel states, from the same
 * parameters it is called with, how many bytes of caller-provided scratch it needs; the code
 * generator reserves that much in the arena for the step, and the generated dsmn_init()
 * checks every step's reservation against these functions. The conv family keeps its working
 * storage on the stack (fixed bounds: channel chunks, tap lists, 256-entry tables), so it
 * needs none; MEAN needs its int32 sums. */
int32_t dsmn_conv2d_s8_scratch_bytes(const dsmn_conv_params *p, const dsmn_dims *in_dims,
                                     const dsmn_dims *filter_dims, const dsmn_dims *out_dims);
int32_t dsmn_depthwise_conv2d_s8_scratch_bytes(const dsmn_conv_params *p, const dsmn_dims *in_dims,
                                               const dsmn_dims *filter_dims,
                                               const dsmn_dims *out_dims);
int32_t dsmn_sparable_s8_scratch_bytes(const dsmn_sparable_params *p, const dsmn_dims *in_dims,
                                       const dsmn_dims *out_dims);
int32_t dsmn_mean_s8_scratch_bytes(const dsmn_mean_params *p);
/* dsmn_mean_accumulate_s8's `acc`, which dsmn_mean_finish_s8 reads. */
int32_t dsmn_mean_accumulate_s8_scratch_bytes(int32_t inner);

/* Sparable on output rows [y0, y0 + rows) (dsmn_sparable_rows.c); `in` is row 0 of the whole
 * input (rows the band's taps do not reach need not be held). */
void dsmn_sparable_rows_s8(const dsmn_sparable_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* DSMN_KERNELS_H */
