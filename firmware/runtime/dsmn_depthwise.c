/* DEPTHWISE_CONV_2D, int8 with per-channel requantisation. */
#include "dsmn_conv_internal.h"

static void dw_taps(const dsmn_conv_params *p_arg, const dsmn_requant *q_arg, const dsmn_dims *id,
                    const int8_t *in, const dsmn_dims *fd, const int8_t *filter,
                    const int32_t *bias, const dsmn_dims *od, int8_t *out)
{
    const dsmn_conv_params p_local = *p_arg;
    const dsmn_conv_params *p = &p_local;
    const dsmn_requant q_local = *q_arg;
    const dsmn_requant *q = &q_local;
    const int8_t *ip[DSMN_MAX_TAPS];
    const int8_t *wp[DSMN_MAX_TAPS];
    for (int32_t b = 0; b < od->n; b++) {
        for (int32_t oy = 0; oy < od->h; oy++) {
            for (int32_t ox = 0; ox < od->w; ox++) {
                const int32_t n = gather_taps(p, id, in, fd, filter, b, oy + p->out_y0,
                                              ox + p->out_x0, ip, wp);
                int8_t *o = out + (((b * od->h) + oy) * od->w + ox) * od->c;
                for (int32_t c = 0; c < od->c; c++) {
                    int32_t acc = dw_acc(ip, wp, n, c, p->input_offset) + (bias ? bias[c] : 0);
                    acc = dsmn_mbqm(acc, q->multiplier[c], q->shift[c]) + p->output_offset;
                    o[c] = (int8_t)dsmn_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}

/* Fast depthwise path: depth multiplier 1, stride 1, a same-size output, at most DWF_MAXT
 * taps. Taps whose weight is zero in every channel of a chunk are left out (a Sparable's
 * cross-shaped 3x3 kernel keeps 5 of 9); padding taps read a row of -input_offset, which
 * contributes nothing, as in the reference. Requantisation as in the Sparable kernel: doubled
 * accumulator, smmulr, add-half shift (exact while |acc| < 2^29, checked per channel). */
#define DWF_CHUNK DSMN_DW_CHUNK
#define DWF_MAXT DSMN_DW_MAXT
#define DWF_MAXC 128
/* interior runs shorter than this stay on the per-pixel bodies (the span setup costs more) */
#define DWF_SPAN_MIN 4

/* One channel's constants (the first four as in dsmn_dw_prep's `ch`) and doubled tap weights. */
typedef struct {
    int32_t base, mult, right, half;
    int32_t w[DWF_MAXT];
} dwf_ch;

/* Requantise one doubled accumulator and clamp (`full`: the whole int8 range, one saturation). */
static inline int8_t dwf_out(int32_t acc, const dwf_ch *ch, int32_t off, int32_t lo, int32_t hi,
                             const int full)
{
    const int32_t u = dsmn_rq_doubled(acc, ch->mult, ch->half, ch->right) + off;
    return (int8_t)(full ? SSAT8(u) : dsmn_clamp(u, lo, hi));
}

static inline void dwf_body(const int8_t *const *tp, int32_t nt, const dwf_ch *ch, int32_t cn,
                            int32_t off, int32_t lo, int32_t hi, int8_t *o, const int full)
{
    for (int32_t j = 0; j < cn; j++, ch++) {
        int32_t acc = ch->base;
        for (int32_t t = 0; t < nt; t++) {
            acc += tp[t][j] * ch->w[t];
        }
        o[j] = dwf_out(acc, ch, off, lo, hi, full);
    }
}

/* Five taps (the cross), tap pointers held in locals: stores through `o` may alias them. */
static inline void dwf_body5(const int8_t *const *tp, const dwf_ch *ch, int32_t cn, int32_t off,
                             int32_t lo, int32_t hi, int8_t *o, const int full)
{
    const int8_t *x0 = tp[0], *x1 = tp[1], *x2 = tp[2], *x3 = tp[3], *x4 = tp[4];
    for (int32_t j = 0; j < cn; j++, ch++) {
        const int32_t acc = ch->base + x0[j] * ch->w[0] + x1[j] * ch->w[1] + x2[j] * ch->w[2]
                            + x3[j] * ch->w[3] + x4[j] * ch->w[4];
        o[j] = dwf_out(acc, ch, off, lo, hi, full);
    }
}

static __attribute__((noinline)) void dwf_run5(const int8_t *const *tp, const dwf_ch *ch, int32_t cn,
                                               int32_t off, int32_t lo, int32_t hi, int8_t *o)
{
    dwf_body5(tp, ch, cn, off, lo, hi, o, 0);
}

static __attribute__((noinline)) void dwf_run5_full(const int8_t *const *tp, const dwf_ch *ch,
                                                    int32_t cn, int32_t off, int8_t *o)
{
    dwf_body5(tp, ch, cn, off, -128, 127, o, 1);
}

/* Two taps (the blocks' 2x1 average pools, stride 2 along time), pointers in locals. */
static __attribute__((noinline)) void dwf_run2(const int8_t *const *tp, const dwf_ch *ch, int32_t cn,
                                               int32_t off, int32_t lo, int32_t hi, int8_t *o)
{
    const int8_t *x0 = tp[0], *x1 = tp[1];
    for (int32_t j = 0; j < cn; j++, ch++) {
        const int32_t acc = ch->base + x0[j] * ch->w[0] + x1[j] * ch->w[1];
        o[j] = dwf_out(acc, ch, off, lo, hi, 0);
    }
}

static __attribute__((noinline)) void dwf_run(const int8_t *const *tp, int32_t nt, const dwf_ch *ch,
                                              int32_t cn, int32_t off, int32_t lo, int32_t hi, int8_t *o)
{
    dwf_body(tp, nt, ch, cn, off, lo, hi, o, 0);
}

/* A run of n interior pixels along a row (every tap inside the image), channel by channel:
 * the channel's weights and requantisation constants stay in registers across the run,
 * where the per-pixel bodies above reload them for every output. Input and output pixels
 * are both C bytes apart (stride 1 along mel, id->c == od->c). NT taps, compile-time. The
 * output offset rides in the rounding constant (dsmn_half_with_offset; the caller keeps
 * chunks with a shift over DSMN_FOLD_MAXRIGHT on the per-pixel bodies); on DSP two doubled
 * weights share a register (smlabb/smlabt), so the loop needs no spills. */
static inline void dwf_span_body(const int8_t *const *tp, const int NT, const dwf_ch *ch,
                                 int32_t cn, int32_t n, int32_t C, int32_t off, int32_t lo,
                                 int32_t hi, int8_t *o, const int full)
{
    const int32_t end = n * C;
    for (int32_t j = 0; j < cn; j++, ch++) {
        const int8_t *x0 = tp[0] + j, *x1 = tp[1] + j;
        const int8_t *x2 = NT > 2 ? tp[2] + j : x0, *x3 = NT > 2 ? tp[3] + j : x0;
        const int8_t *x4 = NT > 2 ? tp[4] + j : x0;
        const int32_t base = ch->base, mult = ch->mult, right = ch->right;
        const int32_t half = dsmn_half_with_offset(ch->half, off, right);
#if DSMN_CONV_DSP
        const int32_t w01 = (int32_t)(((uint32_t)ch->w[0] & 0xffffu) | ((uint32_t)ch->w[1] << 16));
        const int32_t w23 = NT > 2 ? (int32_t)(((uint32_t)ch->w[2] & 0xffffu) | ((uint32_t)ch->w[3] << 16)) : 0;
        const int32_t w4 = NT > 2 ? ch->w[4] : 0;
#else
        const int32_t w0 = ch->w[0], w1 = ch->w[1], w2 = NT > 2 ? ch->w[2] : 0;
        const int32_t w3 = NT > 2 ? ch->w[3] : 0, w4 = NT > 2 ? ch->w[4] : 0;
#endif
        int8_t *y = o + j;
        for (int32_t i = 0; i < end; i += C) {
#if DSMN_CONV_DSP
            int32_t acc = __smlabt(x1[i], w01, __smlabb(x0[i], w01, base));
            if (NT > 2) {
                acc = __smlabb(x2[i], w23, acc);
                acc = __smlabt(x3[i], w23, acc);
                acc += x4[i] * w4;
            }
#else
            int32_t acc = base + x0[i] * w0 + x1[i] * w1;
            if (NT > 2) {
                acc += x2[i] * w2 + x3[i] * w3 + x4[i] * w4;
            }
#endif
            const int32_t u = dsmn_rq_doubled(acc, mult, half, right);
            y[i] = (int8_t)(full ? SSAT8(u) : dsmn_clamp(u, lo, hi));
        }
    }
}

static __attribute__((noinline)) void dwf_span5(const int8_t *const *tp, const dwf_ch *ch,
                                                int32_t cn, int32_t n, int32_t C, int32_t off,
                                                int32_t lo, int32_t hi, int8_t *o)
{
    dwf_span_body(tp, 5, ch, cn, n, C, off, lo, hi, o, 0);
}

static __attribute__((noinline)) void dwf_span5_full(const int8_t *const *tp, const dwf_ch *ch,
                                                     int32_t cn, int32_t n, int32_t C,
                                                     int32_t off, int8_t *o)
{
    dwf_span_body(tp, 5, ch, cn, n, C, off, -128, 127, o, 1);
}

static __attribute__((noinline)) void dwf_span2(const int8_t *const *tp, const dwf_ch *ch,
                                                int32_t cn, int32_t n, int32_t C, int32_t off,
                                                int32_t lo, int32_t hi, int8_t *o)
{
    dwf_span_body(tp, 2, ch, cn, n, C, off, lo, hi, o, 0);
}

#define DWF_FN dw_fast
#define DWF_WINDOW 0
#include "dsmn_depthwise_fast.h"
#undef DWF_FN
#undef DWF_WINDOW
#define DWF_FN dw_fast_window
#define DWF_WINDOW 1
#include "dsmn_depthwise_fast.h"
#undef DWF_FN
#undef DWF_WINDOW

void dsmn_depthwise_conv2d_window_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                                     const dsmn_dims *id, const int8_t *in, const dsmn_dims *fd,
                                     const int8_t *filter, const int32_t *bias,
                                     const dsmn_dims *od, int8_t *out)
{
    if (!dw_fast_window(NULL, p, q, id, in, fd, filter, bias, od, out)) {
        dsmn_depthwise_conv2d_s8(p, q, id, in, fd, filter, bias, od, out);
    }
}

void dsmn_depthwise_conv2d_prep_s8(const dsmn_dw_prep *pp, const dsmn_conv_params *p,
                                   const dsmn_requant *q, const dsmn_dims *id, const int8_t *in,
                                   const dsmn_dims *fd, const int8_t *filter, const int32_t *bias,
                                   const dsmn_dims *od, int8_t *out)
{
    if (!dw_fast_window(pp, p, q, id, in, fd, filter, bias, od, out)) {
        dsmn_depthwise_conv2d_s8(p, q, id, in, fd, filter, bias, od, out);
    }
}

void dsmn_depthwise_conv2d_s8(const dsmn_conv_params *p_arg, const dsmn_requant *q_arg,
                              const dsmn_dims *id, const int8_t *in,
                              const dsmn_dims *fd, const int8_t *filter, const int32_t *bias,
                              const dsmn_dims *od, int8_t *out)
{
    const dsmn_conv_params p_local = *p_arg;
    const dsmn_conv_params *p = &p_local;
    const dsmn_requant q_local = *q_arg;
    const dsmn_requant *q = &q_local;
    const int32_t in_c = id->c, mult = p->depth_multiplier;
    const int32_t kh = fd->h, kw = fd->w, fc = fd->c;
    const int32_t in_off = p->input_offset;

    if (mult == 1 && kh == 1 && kw == 1 && p->pad_h == 0 && p->pad_w == 0 && p->stride_h == 1
        && p->stride_w == 1 && p->out_y0 == 0 && p->out_x0 == 0 && od->h == id->h && od->w == id->w) {
        /* Pointwise per channel: the output depends on one int8 value, so for large images
         * each channel is tabulated (256 entries) and the pixels become table lookups. */
        const int32_t n_pix = od->n * od->h * od->w, c_n = od->c;
        if (n_pix >= 512) {
            int8_t lut[256];
            for (int32_t c = 0; c < c_n; c++) {
                const int32_t w = filter[c], bc = bias ? bias[c] : 0;
                const int32_t m = q->multiplier[c], sh = q->shift[c];
                for (int32_t v = 0; v < 256; v++) {
                    int32_t acc = (v - 128 + in_off) * w + bc;
                    acc = dsmn_mbqm(acc, m, sh) + p->output_offset;
                    lut[v] = (int8_t)dsmn_clamp(acc, p->act_min, p->act_max);
                }
                const int8_t *x = in + c;
                int8_t *o = out + c;
                const int8_t *lp = lut + 128;
                for (int32_t k = 0; k < n_pix; k++, x += c_n, o += c_n) {
                    *o = lp[*x];
                }
            }
            return;
        }
        for (int32_t k = 0; k < n_pix; k++) {
            const int8_t *x = in + k * c_n;
            int8_t *o = out + k * c_n;
            for (int32_t c = 0; c < c_n; c++) {
                int32_t acc = (x[c] + in_off) * filter[c] + (bias ? bias[c] : 0);
                acc = dsmn_mbqm(acc, q->multiplier[c], q->shift[c]) + p->output_offset;
                o[c] = (int8_t)dsmn_clamp(acc, p->act_min, p->act_max);
            }
        }
        return;
    }
    /* whole rows first (the instance tuned for them), then any window (a SPLIT part) */
    if (dw_fast(NULL, p, q, id, in, fd, filter, bias, od, out)
        || dw_fast_window(NULL, p, q, id, in, fd, filter, bias, od, out)) {
        return;
    }
    if (mult == 1 && kh * kw <= DSMN_MAX_TAPS) {
        dw_taps(p, q, id, in, fd, filter, bias, od, out);
        return;
    }

    for (int32_t b = 0; b < od->n; b++) {
        for (int32_t oy = 0; oy < od->h; oy++) {
            const int32_t y0 = (oy + p->out_y0) * p->stride_h - p->pad_h;
            for (int32_t ox = 0; ox < od->w; ox++) {
                const int32_t x0 = (ox + p->out_x0) * p->stride_w - p->pad_w;
                int8_t *o = out + (((b * od->h) + oy) * od->w + ox) * od->c;
                for (int32_t ic = 0; ic < in_c; ic++) {
                    for (int32_t m = 0; m < mult; m++) {
                        const int32_t oc = ic * mult + m;
                        int32_t acc = 0;
                        for (int32_t ky = 0; ky < kh; ky++) {
                            const int32_t iy = y0 + ky * p->dilation_h;
                            if (iy < 0 || iy >= id->h) {
                                continue;
                            }
                            for (int32_t kx = 0; kx < kw; kx++) {
                                const int32_t ix = x0 + kx * p->dilation_w;
                                if (ix < 0 || ix >= id->w) {
                                    continue;
                                }
                                const int32_t v = in[((b * id->h + iy) * id->w + ix) * in_c + ic];
                                acc += (v + in_off) * filter[(ky * kw + kx) * fc + oc];
                            }
                        }
                        if (bias) {
                            acc += bias[oc];
                        }
                        acc = dsmn_mbqm(acc, q->multiplier[oc], q->shift[oc]) + p->output_offset;
                        o[oc] = (int8_t)dsmn_clamp(acc, p->act_min, p->act_max);
                    }
                }
            }
        }
    }
}

int32_t dsmn_depthwise_conv2d_s8_scratch_bytes(const dsmn_conv_params *p, const dsmn_dims *in_dims,
                                               const dsmn_dims *filter_dims,
                                               const dsmn_dims *out_dims)
{
    (void)p;
    (void)in_dims;
    (void)filter_dims;
    (void)out_dims;
    return 0; /* DWF_CHUNK channel constants, DSMN_MAX_TAPS tap lists, a 256-entry table: stack */
}
