/* CONV_2D (plain and grouped) and DEPTHWISE_CONV_2D, int8 with per-channel requantisation. */
#include "dsmn_kernels.h"
#include "dsmn_fixedpoint.h"

#include <stddef.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && !defined(DSMN_NO_DSP)
#include <arm_acle.h>
#include <string.h>

static inline int32_t dot_s8(const int8_t *a, const int8_t *w, int32_t n)
{
    int32_t acc = 0;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t x, y;
        memcpy(&x, a + i, 4);
        memcpy(&y, w + i, 4);
        /* bytes 0,2 and 1,3 sign-extended to halfword pairs, two MACs per SMLAD */
        acc = __smlad(__sxtb16(x), __sxtb16(y), acc);
        acc = __smlad(__sxtb16((x >> 8) | (x << 24)), __sxtb16((y >> 8) | (y << 24)), acc);
    }
    for (; i < n; i++) {
        acc += a[i] * w[i];
    }
    return acc;
}
#else
static inline int32_t dot_s8(const int8_t *a, const int8_t *w, int32_t n)
{
    int32_t acc = 0;
    for (int32_t i = 0; i < n; i++) {
        acc += a[i] * w[i];
    }
    return acc;
}
#endif

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && !defined(DSMN_NO_DSP)
#define DSMN_CONV_DSP 1
/* sxtb16 of x rotated right by 8 (bytes 1 and 3) in one instruction */
static inline uint32_t sxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline uint32_t rd32(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
#else
#define DSMN_CONV_DSP 0
#endif

/* Requantisation of a doubled accumulator (2 * acc, |acc| < 2^29 checked when the kernel
 * starts): dsmn_rq_doubled, one smmulr and an add-half shift. */
typedef struct {
    int32_t mult, right, half, off, lo, hi;
} rq_fast;

#define C1_MAXG 64

/* One output channel of a 1x1 convolution over a run of pixels, fast requantisation on the
 * doubled accumulator. Input pixels are sx bytes apart, outputs so bytes apart. */
typedef struct {
    const int32_t *wd;  /* doubled weights, int32 */
    const uint32_t *wp; /* doubled weights as sxtb16-matching halfword pairs (DSP, gc % 4 == 0) */
    int32_t gc, base, mult, right, half, off, lo, hi, sx, so;
} c1_args;

enum { C1_G1, C1_G2, C1_G4, C1_G8, C1_G12, C1_G16, C1_GN };

/* Clamp to int8 in one instruction where the DSP extension has it. */
#if DSMN_CONV_DSP
#define SSAT8(x) __ssat((x), 8)
#else
#define SSAT8(x) ((x) < -128 ? -128 : ((x) > 127 ? 127 : (x)))
#endif

/* 4 input channels at ip[i..i+3] against packed weight words w[0], w[1] (DSP). */
#define C1_DOT4(acc, ip, w)                                                                \
    do {                                                                                   \
        const uint32_t x_ = rd32(ip);                                                      \
        acc = __smlad(__sxtb16(x_), (w)[0], acc);                                          \
        acc = __smlad(sxtb16_ror8(x_), (w)[1], acc);                                       \
    } while (0)

static inline void c1_body(const c1_args *a, const int8_t *ip, int8_t *o, int32_t n,
                           const int kind, const int full)
{
    const int32_t base = a->base, mult = a->mult, right = a->right, half = a->half;
    const int32_t off = a->off, sx = a->sx, so = a->so, gc = a->gc;
    const int32_t lo = full ? -128 : a->lo, hi = full ? 127 : a->hi;
    const int32_t *wd = a->wd;
    const int8_t *end = ip + n * sx;
#if DSMN_CONV_DSP
    const uint32_t *wp = a->wp;
#endif
    const int32_t w0 = kind == C1_G1 || kind == C1_G2 ? wd[0] : 0;
    const int32_t w1 = kind == C1_G2 ? wd[1] : 0;
    for (; ip != end; ip += sx, o += so) {
        int32_t acc = base;
        if (kind == C1_G1) {
            acc += ip[0] * w0;
        } else if (kind == C1_G2) {
            acc += ip[0] * w0 + ip[1] * w1;
        } else {
#if DSMN_CONV_DSP
            const int32_t g = kind == C1_G4 ? 4 : kind == C1_G8 ? 8 : kind == C1_G12 ? 12
                              : kind == C1_G16 ? 16 : gc;
            if (kind == C1_GN) {
                for (int32_t i = 0; i < g; i += 4) {
                    C1_DOT4(acc, ip + i, wp + i / 2);
                }
            } else {
                /* fixed sizes, unrolled */
                C1_DOT4(acc, ip, wp);
                if (g >= 8) {
                    C1_DOT4(acc, ip + 4, wp + 2);
                }
                if (g >= 12) {
                    C1_DOT4(acc, ip + 8, wp + 4);
                }
                if (g >= 16) {
                    C1_DOT4(acc, ip + 12, wp + 6);
                }
            }
#else
            const int32_t g = kind == C1_G4 ? 4 : kind == C1_G8 ? 8 : kind == C1_G12 ? 12
                              : kind == C1_G16 ? 16 : gc;
            for (int32_t i = 0; i < g; i++) {
                acc += ip[i] * wd[i];
            }
#endif
        }
        const int32_t v = dsmn_rq_doubled(acc, mult, half, right) + off;
        *o = (int8_t)(full ? SSAT8(v) : (v < lo ? lo : (v > hi ? hi : v)));
    }
}

typedef void (*c1_fn)(const c1_args *, const int8_t *, int8_t *, int32_t);

#define C1_WRAP(kind)                                                                      \
    static __attribute__((noinline)) void c1_##kind##_0(const c1_args *a, const int8_t *ip, \
                                                        int8_t *o, int32_t n)              \
    {                                                                                      \
        c1_body(a, ip, o, n, kind, 0);                                                     \
    }                                                                                      \
    static __attribute__((noinline)) void c1_##kind##_1(const c1_args *a, const int8_t *ip, \
                                                        int8_t *o, int32_t n)              \
    {                                                                                      \
        c1_body(a, ip, o, n, kind, 1);                                                     \
    }
C1_WRAP(C1_G1)
C1_WRAP(C1_G2)
C1_WRAP(C1_G4)
C1_WRAP(C1_G8)
C1_WRAP(C1_G12)
C1_WRAP(C1_G16)
C1_WRAP(C1_GN)

static const c1_fn c1_table[2][7] = {
    {c1_C1_G1_0, c1_C1_G2_0, c1_C1_G4_0, c1_C1_G8_0, c1_C1_G12_0, c1_C1_G16_0, c1_C1_GN_0},
    {c1_C1_G1_1, c1_C1_G2_1, c1_C1_G4_1, c1_C1_G8_1, c1_C1_G12_1, c1_C1_G16_1, c1_C1_GN_1},
};

/* 1x1, no padding: no tap is ever skipped, so the input offset folds into a per-channel
 * constant (offset * sum of weights) and the inner loop is a plain int8 dot product. Output
 * channels outermost so the channel's constants and weights stay hoisted. */
static void conv1x1(const dsmn_conv_params *p_arg, const dsmn_requant *q_arg, const dsmn_dims *id,
                    const int8_t *in, const dsmn_dims *fd, const int8_t *filter,
                    const int32_t *bias, const dsmn_dims *od, int8_t *out)
{
    const dsmn_conv_params p_local = *p_arg;
    const dsmn_conv_params *p = &p_local;
    const dsmn_requant q_local = *q_arg;
    const dsmn_requant *q = &q_local;
    const int32_t in_c = id->c, gc = fd->c;
    const int32_t out_per_group = od->c / (in_c / gc);
    int32_t wd[C1_MAXG];
    uint32_t wpk_buf[C1_MAXG / 2];
    for (int32_t oc = 0; oc < od->c; oc++) {
        const int8_t *fp = filter + oc * gc;
        int32_t ksum = 0, kabs = 0;
        for (int32_t ic = 0; ic < gc; ic++) {
            ksum += fp[ic];
            kabs += fp[ic] < 0 ? -fp[ic] : fp[ic];
        }
        const int64_t base = (int64_t)(bias ? bias[oc] : 0) + (int64_t)p->input_offset * ksum;
        const int32_t mult = q->multiplier[oc], shift = q->shift[oc];
        const int32_t goff = (oc / out_per_group) * gc;
        const int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
        const int64_t bound = (base < 0 ? -base : base) + 128ll * kabs;
        const int fast = gc <= C1_MAXG && left == 0 && right >= 1 && right <= 31 && bound < (1ll << 29);
        rq_fast rq = {mult, right, right >= 1 ? 1 << (right - 1) : 0, p->output_offset,
                      p->act_min, p->act_max};
        if (gc > C1_MAXG) {
            /* no weight buffer: plain dot product and exact requantisation */
            int8_t *o = out + oc;
            for (int32_t b = 0; b < od->n; b++) {
                for (int32_t oy = 0; oy < od->h; oy++) {
                    const int32_t iy = (oy + p->out_y0) * p->stride_h;
                    const int8_t *ip = in + ((b * id->h + iy) * id->w + p->out_x0 * p->stride_w) * in_c + goff;
                    for (int32_t ox = 0; ox < od->w; ox++, o += od->c, ip += p->stride_w * in_c) {
                        const int32_t acc = (int32_t)base + dot_s8(ip, fp, gc);
                        const int32_t v = dsmn_mbqm_lr(acc, mult, left, right) + p->output_offset;
                        *o = (int8_t)dsmn_clamp(v, p->act_min, p->act_max);
                    }
                }
            }
            continue;
        }
        const int32_t k = fast ? 2 : 1; /* fast path works on doubled accumulators */
        for (int32_t ic = 0; ic < gc; ic++) {
            wd[ic] = fp[ic] * k;
        }
        const uint32_t *wpk = NULL;
#if DSMN_CONV_DSP
        if (gc % 4 == 0 && gc > 2) {
            for (int32_t i = 0; i < gc; i += 4) {
                /* halfword pairs matching __sxtb16(x) (bytes 0,2) and __sxtb16(ror 8) (1,3) */
                wpk_buf[i / 2] = (uint32_t)(uint16_t)wd[i] | ((uint32_t)(uint16_t)wd[i + 2] << 16);
                wpk_buf[i / 2 + 1] = (uint32_t)(uint16_t)wd[i + 1] | ((uint32_t)(uint16_t)wd[i + 3] << 16);
            }
            wpk = wpk_buf;
        }
#else
        (void)wpk_buf;
        (void)wpk;
#endif
        if (!fast) {
            int8_t *o = out + oc;
            for (int32_t b = 0; b < od->n; b++) {
                for (int32_t oy = 0; oy < od->h; oy++) {
                    const int32_t iy = (oy + p->out_y0) * p->stride_h;
                    const int8_t *ip = in + ((b * id->h + iy) * id->w + p->out_x0 * p->stride_w) * in_c + goff;
                    for (int32_t ox = 0; ox < od->w; ox++, o += od->c, ip += p->stride_w * in_c) {
                        int32_t acc = (int32_t)base;
                        for (int32_t i = 0; i < gc; i++) {
                            acc += ip[i] * wd[i];
                        }
                        const int32_t v = dsmn_mbqm_lr(acc, mult, left, right) + p->output_offset;
                        *o = (int8_t)dsmn_clamp(v, p->act_min, p->act_max);
                    }
                }
            }
            continue;
        }
        /* rows of output pixels; one run when the window covers whole input rows */
        const int whole = p->stride_h == 1 && p->stride_w == 1 && p->out_x0 == 0 && od->w == id->w;
        const int32_t rows = whole ? od->n : od->n * od->h, run = whole ? od->h * od->w : od->w;
        c1_args ca = {wd, wpk, gc, (int32_t)base * 2, mult, right, rq.half, rq.off, rq.lo, rq.hi,
                      p->stride_w * in_c, od->c};
        int kind = gc == 1 ? C1_G1 : gc == 2 ? C1_G2 : gc == 4 ? C1_G4 : gc == 8 ? C1_G8
                   : gc == 12 ? C1_G12 : gc == 16 ? C1_G16 : C1_GN;
#if DSMN_CONV_DSP
        if (kind == C1_GN && gc % 4 != 0) {
            ca.wp = NULL; /* C1_GN on DSP needs packed weights: use the scalar loop below */
        }
#endif
        const c1_fn fn = c1_table[p->act_min == -128 && p->act_max == 127][kind];
        for (int32_t r = 0; r < rows; r++) {
            const int32_t b = whole ? r : r / od->h, oy = whole ? 0 : r % od->h;
            const int32_t iy = (oy + p->out_y0) * p->stride_h;
            const int8_t *ip = in + ((b * id->h + iy) * id->w + p->out_x0 * p->stride_w) * in_c + goff;
            int8_t *o = out + (size_t)r * run * od->c + oc;
            if (ca.wp || !DSMN_CONV_DSP || kind <= C1_G2) {
                fn(&ca, ip, o, run);
                continue;
            }
            for (int32_t k = 0; k < run; k++, ip += ca.sx, o += ca.so) {
                int32_t acc = ca.base;
                for (int32_t i = 0; i < gc; i++) {
                    acc += ip[i] * wd[i];
                }
                const int32_t v = dsmn_rq_doubled(acc, mult, ca.half, right) + ca.off;
                *o = (int8_t)dsmn_clamp(v, ca.lo, ca.hi);
            }
        }
    }
}

void dsmn_conv2d_s8(const dsmn_conv_params *p_arg, const dsmn_requant *q_arg,
                    const dsmn_dims *id, const int8_t *in,
                    const dsmn_dims *fd, const int8_t *filter, const int32_t *bias,
                    const dsmn_dims *od, int8_t *out)
{
    const dsmn_conv_params p_local = *p_arg;
    const dsmn_conv_params *p = &p_local;
    const dsmn_requant q_local = *q_arg;
    const dsmn_requant *q = &q_local;
    const int32_t in_c = id->c, gc = fd->c;
    const int32_t groups = in_c / gc;
    const int32_t out_per_group = od->c / groups;
    const int32_t kh = fd->h, kw = fd->w;
    const int32_t in_off = p->input_offset;

    if (kh == 1 && kw == 1 && p->pad_h == 0 && p->pad_w == 0) {
        conv1x1(p, q, id, in, fd, filter, bias, od, out);
        return;
    }
    for (int32_t b = 0; b < od->n; b++) {
        for (int32_t oy = 0; oy < od->h; oy++) {
            const int32_t y0 = (oy + p->out_y0) * p->stride_h - p->pad_h;
            for (int32_t ox = 0; ox < od->w; ox++) {
                const int32_t x0 = (ox + p->out_x0) * p->stride_w - p->pad_w;
                int8_t *o = out + (((b * od->h) + oy) * od->w + ox) * od->c;
                for (int32_t oc = 0; oc < od->c; oc++) {
                    const int32_t g = oc / out_per_group;
                    int32_t acc = 0;
                    for (int32_t ky = 0; ky < kh; ky++) {
                        const int32_t iy = y0 + ky * p->dilation_h;
                        if (iy < 0 || iy >= id->h) {
                            continue; /* padding contributes nothing, not the zero point */
                        }
                        for (int32_t kx = 0; kx < kw; kx++) {
                            const int32_t ix = x0 + kx * p->dilation_w;
                            if (ix < 0 || ix >= id->w) {
                                continue;
                            }
                            const int8_t *ip = in + ((b * id->h + iy) * id->w + ix) * in_c + g * gc;
                            const int8_t *fp = filter + ((oc * kh + ky) * kw + kx) * gc;
                            for (int32_t ic = 0; ic < gc; ic++) {
                                acc += (ip[ic] + in_off) * fp[ic];
                            }
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

#define DSMN_MAX_TAPS 25

/* Valid taps of a depthwise window at output (oy, ox): input pixel and filter tap pointers.
 * Padding taps are left out, as in the reference (they contribute nothing). */
static inline int32_t gather_taps(const dsmn_conv_params *p, const dsmn_dims *id, const int8_t *in,
                                  const dsmn_dims *fd, const int8_t *filter, int32_t b,
                                  int32_t oy, int32_t ox, const int8_t **ip, const int8_t **wp)
{
    const int32_t y0 = oy * p->stride_h - p->pad_h;
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    int32_t n = 0;
    for (int32_t ky = 0; ky < fd->h; ky++) {
        const int32_t iy = y0 + ky * p->dilation_h;
        if (iy < 0 || iy >= id->h) {
            continue;
        }
        for (int32_t kx = 0; kx < fd->w; kx++) {
            const int32_t ix = x0 + kx * p->dilation_w;
            if (ix < 0 || ix >= id->w) {
                continue;
            }
            ip[n] = in + ((b * id->h + iy) * id->w + ix) * id->c;
            wp[n] = filter + (ky * fd->w + kx) * fd->c;
            n++;
        }
    }
    return n;
}

static inline int32_t dw_acc(const int8_t *const *ip, const int8_t *const *wp, int32_t n,
                             int32_t c, int32_t in_off)
{
    int32_t acc = 0, wsum = 0;
    for (int32_t t = 0; t < n; t++) {
        const int32_t w = wp[t][c];
        acc += ip[t][c] * w;
        wsum += w;
    }
    return acc + in_off * wsum;
}

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
#define DWF_CHUNK 16
#define DWF_MAXT 9
#define DWF_MAXC 128

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

static __attribute__((noinline)) void dwf_run(const int8_t *const *tp, int32_t nt, const dwf_ch *ch,
                                              int32_t cn, int32_t off, int32_t lo, int32_t hi, int8_t *o)
{
    dwf_body(tp, nt, ch, cn, off, lo, hi, o, 0);
}

static int dw_fast(const dsmn_conv_params *p, const dsmn_requant *q, const dsmn_dims *id,
                   const int8_t *in, const dsmn_dims *fd, const int8_t *filter, const int32_t *bias,
                   const dsmn_dims *od, int8_t *out)
{
    const int32_t C = od->c, kt = fd->h * fd->w;
    /* any band of whole rows (out_y0, od->h) is fine: input rows are global */
    if (p->depth_multiplier != 1 || p->stride_h != 1 || p->stride_w != 1 || id->c != C || C > DWF_MAXC
        || od->w != id->w || p->out_x0 != 0 || kt > DWF_MAXT || fd->c != C) {
        return 0;
    }
    int8_t pad[DWF_CHUNK];
    for (int32_t j = 0; j < DWF_CHUNK; j++) {
        pad[j] = (int8_t)(-p->input_offset);
    }
    const int full = p->act_min == -128 && p->act_max == 127;
    dwf_ch ch[DWF_CHUNK];
    for (int32_t c0 = 0; c0 < C; c0 += DWF_CHUNK) {
        const int32_t cn = C - c0 < DWF_CHUNK ? C - c0 : DWF_CHUNK;
        int32_t dy[DWF_MAXT], dx[DWF_MAXT], tap[DWF_MAXT], nt = 0;
        for (int32_t t = 0; t < kt; t++) {
            int used = 0;
            for (int32_t j = 0; j < cn; j++) {
                used |= filter[t * C + c0 + j] != 0;
            }
            if (used) {
                tap[nt] = t;
                dy[nt] = (t / fd->w) * p->dilation_h - p->pad_h;
                dx[nt] = (t % fd->w) * p->dilation_w - p->pad_w;
                nt++;
            }
        }
        for (int32_t j = 0; j < cn; j++) {
            const int32_t c = c0 + j;
            int32_t wsum = 0, wabs = 0;
            for (int32_t t = 0; t < kt; t++) {
                const int32_t w = filter[t * C + c];
                wsum += w;
                wabs += w < 0 ? -w : w;
            }
            const int64_t base = (int64_t)(bias ? bias[c] : 0) + (int64_t)p->input_offset * wsum;
            if ((base < 0 ? -base : base) + 128ll * wabs >= (1ll << 29) || q->shift[c] >= 0 || q->shift[c] < -31) {
                return 0; /* the caller's generic kernel then writes every output */
            }
            for (int32_t t = 0; t < nt; t++) {
                ch[j].w[t] = filter[tap[t] * C + c] * 2;
            }
            ch[j].base = (int32_t)base * 2;
            ch[j].mult = q->multiplier[c];
            ch[j].right = -q->shift[c];
            ch[j].half = 1 << (-q->shift[c] - 1);
        }
        for (int32_t b = 0; b < od->n; b++) {
            const int8_t *img = in + b * id->h * id->w * C + c0;
            for (int32_t oy = 0; oy < od->h; oy++) {
                for (int32_t ox = 0; ox < od->w; ox++) {
                    const int8_t *tp[DWF_MAXT];
                    for (int32_t t = 0; t < nt; t++) {
                        const int32_t iy = oy + p->out_y0 + dy[t], ix = ox + dx[t];
                        tp[t] = (iy < 0 || iy >= id->h || ix < 0 || ix >= id->w) ? pad
                                : img + (iy * id->w + ix) * C;
                    }
                    int8_t *o = out + (((b * od->h) + oy) * od->w + ox) * C + c0;
                    if (nt == 5 && full) {
                        dwf_run5_full(tp, ch, cn, p->output_offset, o);
                    } else if (nt == 5) {
                        dwf_run5(tp, ch, cn, p->output_offset, p->act_min, p->act_max, o);
                    } else {
                        dwf_run(tp, nt, ch, cn, p->output_offset, p->act_min, p->act_max, o);
                    }
                }
            }
        }
    }
    return 1;
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
    if (dw_fast(p, q, id, in, fd, filter, bias, od, out)) {
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

static void sparable_generic(const dsmn_sparable_params *p_arg, const dsmn_dims *id, const int8_t *in,
                             const dsmn_dims *od, int8_t *out)
{
    const dsmn_sparable_params p_local = *p_arg;
    const dsmn_sparable_params *p = &p_local;
    const int8_t *ip0[DSMN_MAX_TAPS], *wp0[DSMN_MAX_TAPS];
    const int8_t *ip1[DSMN_MAX_TAPS], *wp1[DSMN_MAX_TAPS];
    const dsmn_conv_params *d0 = &p->dw[0], *d1 = &p->dw[1];
    for (int32_t b = 0; b < od->n; b++) {
        for (int32_t oy = 0; oy < od->h; oy++) {
            for (int32_t ox = 0; ox < od->w; ox++) {
                const int32_t n0 = gather_taps(d0, id, in, &p->filter_dims[0], p->filter[0], b, oy, ox, ip0, wp0);
                const int32_t n1 = gather_taps(d1, id, in, &p->filter_dims[1], p->filter[1], b, oy, ox, ip1, wp1);
                int8_t *o = out + (((b * od->h) + oy) * od->w + ox) * od->c;
                for (int32_t c = 0; c < od->c; c++) {
                    int32_t u = dw_acc(ip0, wp0, n0, c, d0->input_offset) + (p->bias[0] ? p->bias[0][c] : 0);
                    u = dsmn_clamp(dsmn_mbqm(u, p->q[0].multiplier[c], p->q[0].shift[c]) + d0->output_offset,
                                   d0->act_min, d0->act_max);
                    int32_t v = dw_acc(ip1, wp1, n1, c, d1->input_offset) + (p->bias[1] ? p->bias[1][c] : 0);
                    v = dsmn_clamp(dsmn_mbqm(v, p->q[1].multiplier[c], p->q[1].shift[c]) + d1->output_offset,
                                   d1->act_min, d1->act_max);
                    int32_t r = dsmn_add_one(&p->add, u, v);
                    if (p->tail_lut) {
                        o[c] = p->tail_lut[c * 256 + r + 128];
                        continue;
                    }
                    for (int32_t t = 0; t < p->n_tail; t++) {
                        const dsmn_tail_op *op = &p->tail[t];
                        const int32_t k = op->constant[op->const_per_channel ? c : 0];
                        const int32_t a1 = op->const_is_first ? k : r;
                        const int32_t a2 = op->const_is_first ? r : k;
                        r = op->is_mul ? dsmn_mul_one(&op->mul, a1, a2) : dsmn_add_one(&op->add, a1, a2);
                    }
                    o[c] = (int8_t)r;
                }
            }
        }
    }
}

/* ---- Fast Sparable path ----
 * Channels innermost, two passes per pixel over a chunk of channels: the first conv's result
 * goes through the ADD's first-input rescaling (a 256-entry table) into a small int32 row,
 * the second pass adds the second conv's tabulated rescaling and requantises. Per call the
 * per-channel constants are folded: bias + input offset x (sum of all taps' weights),
 * doubled with the weights so smmulr gives the rounding doubling high multiply. Taps outside
 * the input point at a pad vector holding the input zero point, whose (x + input offset) is
 * 0, so border pixels run the same loop and the folded constant stays exact. The add-half
 * rounding used is exact for the accumulator bounds checked here from weights and biases
 * (else the generic path runs). */
#define SP_CHUNK 16
#define SP_MAXC 64

typedef struct {
    int32_t base, w0, w1, w2, mult, right, half;
} sp_ch;

static int sp_prepare(const dsmn_sparable_params *p, int k, int32_t c0, int32_t cn, sp_ch *ch)
{
    const dsmn_conv_params *d = &p->dw[k];
    const int32_t fc = p->filter_dims[k].c;
    for (int32_t j = 0; j < cn; j++) {
        const int32_t c = c0 + j;
        int32_t wsum = 0, wabs = 0, w[3];
        for (int32_t t = 0; t < 3; t++) {
            w[t] = p->filter[k][t * fc + c];
            wsum += w[t];
            wabs += w[t] < 0 ? -w[t] : w[t];
        }
        const int64_t base = (int64_t)(p->bias[k] ? p->bias[k][c] : 0) + (int64_t)d->input_offset * wsum;
        const int64_t bound = (base < 0 ? -base : base) + 128ll * wabs;
        const int32_t shift = p->q[k].shift[c];
        if (bound >= (1ll << 29) || shift >= 0 || shift < -31) {
            return 0;
        }
        ch[j].base = (int32_t)base * 2;
        ch[j].w0 = w[0] * 2;
        ch[j].w1 = w[1] * 2;
        ch[j].w2 = w[2] * 2;
        ch[j].mult = p->q[k].multiplier[c];
        ch[j].right = -shift;
        ch[j].half = 1 << (-shift - 1);
    }
    return 1;
}


/* One channel's three-tap depthwise conv, requantised and clamped: a table index relative to
 * the zero point (`full`: the clamp is the whole int8 range, done with one saturation). */
static inline int32_t sp_conv_index(const int8_t *x0, const int8_t *x1, const int8_t *x2,
                                    const sp_ch *ch, int32_t j, int32_t lo, int32_t hi,
                                    int32_t off, const int full)
{
    const int32_t acc = ch->base + x0[j] * ch->w0 + x1[j] * ch->w1 + x2[j] * ch->w2;
    const int32_t u = dsmn_rq_doubled(acc, ch->mult, ch->half, ch->right);
    if (full) {
        return SSAT8(u + off) - off;
    }
    return u < lo ? lo : (u > hi ? hi : u);
}

/* Pass 1: s[j] = ta[clamp(requant(conv0))] (table pointer already offset by the zero point). */
static inline void sp_pass1_body(const int8_t *a0, const int8_t *a1, const int8_t *a2,
                                 const sp_ch *ch, int32_t cn, const int32_t *ta, int32_t lo,
                                 int32_t hi, int32_t off, int32_t *s, const int full)
{
    for (int32_t j = 0; j < cn; j++, ch++) {
        s[j] = ta[sp_conv_index(a0, a1, a2, ch, j, lo, hi, off, full)];
    }
}

typedef struct {
    const int32_t *tb;
    int32_t lo, hi, off;
    int32_t omult, oright, ohalf, ooff, olo, ohi;
} sp_out;

/* Pass 2: second conv, the ADD and its requantisation. */
static inline void sp_pass2_body(const int8_t *e0, const int8_t *e1, const int8_t *e2,
                                 const sp_ch *ch, int32_t cn, const sp_out *q, const int32_t *s,
                                 int8_t *o, const int full)
{
    const int32_t *tb = q->tb;
    const int32_t lo = q->lo, hi = q->hi, omult = q->omult, oright = q->oright;
    const int32_t ohalf = q->ohalf, ooff = q->ooff, olo = q->olo, ohi = q->ohi, off = q->off;
    for (int32_t j = 0; j < cn; j++, ch++) {
        const int32_t v = sp_conv_index(e0, e1, e2, ch, j, lo, hi, off, full);
        int32_t r = dsmn_rq_doubled(s[j] + tb[v], omult, ohalf, oright) + ooff;
        if (full) {
            o[j] = (int8_t)SSAT8(r);
        } else {
            o[j] = (int8_t)(r < olo ? olo : (r > ohi ? ohi : r));
        }
    }
}

typedef struct {
    const sp_ch *ch0, *ch1;
    int32_t cn, C;
    const int32_t *ta;
    int32_t lo0, hi0, off0;
    sp_out q;
} sp_ctx;

/* n pixels along a row: tap pointers tp[0..5] are those of the first pixel and advance by one
 * pixel (C bytes) each step, which only interior runs (no pad taps) use with n > 1. */
static inline void sp_run_body(const sp_ctx *x, const int8_t *const *tp, int32_t n, int8_t *o,
                               int32_t *srow, const int full)
{
    const int32_t C = x->C;
    for (int32_t k = 0; k < n; k++, o += C) {
        const int32_t d = k * C;
        sp_pass1_body(tp[0] + d, tp[1] + d, tp[2] + d, x->ch0, x->cn, x->ta, x->lo0, x->hi0, x->off0,
                      srow, full);
        sp_pass2_body(tp[3] + d, tp[4] + d, tp[5] + d, x->ch1, x->cn, &x->q, srow, o, full);
    }
}

static __attribute__((noinline)) void sp_run(const sp_ctx *x, const int8_t *const *tp, int32_t n,
                                             int8_t *o, int32_t *srow)
{
    sp_run_body(x, tp, n, o, srow, 0);
}

static __attribute__((noinline)) void sp_run_full(const sp_ctx *x, const int8_t *const *tp,
                                                  int32_t n, int8_t *o, int32_t *srow)
{
    sp_run_body(x, tp, n, o, srow, 1);
}

static int sparable_fast(const dsmn_sparable_params *p, const dsmn_dims *id, const int8_t *in,
                         const dsmn_dims *od, int8_t *out)
{
    const dsmn_conv_params *d0 = &p->dw[0], *d1 = &p->dw[1];
    const int32_t C = od->c;
    if (C > SP_MAXC || id->c != C || p->filter_dims[0].h * p->filter_dims[0].w != 3
        || d0->stride_h != 1 || d0->stride_w != 1 || d1->stride_h != 1 || d1->stride_w != 1
        || od->h != id->h || od->w != id->w
        || p->filter_dims[1].h * p->filter_dims[1].w != 3 || d0->depth_multiplier != 1
        || d1->depth_multiplier != 1) {
        return 0;
    }
    /* ADD: out = requant(ta[u] + tb[v]), tables doubled for smmulr. */
    const dsmn_add_params *ap = &p->add;
    int32_t ta[256], tb[256];
    int64_t amax = 0, bmax = 0;
    for (int32_t i = 0; i < 256; i++) {
        const int32_t sc = 1 << ap->left_shift;
        const int32_t x = dsmn_mbqm((i - 128 + ap->input1_offset) * sc, ap->input1_multiplier, ap->input1_shift);
        const int32_t y = dsmn_mbqm((i - 128 + ap->input2_offset) * sc, ap->input2_multiplier, ap->input2_shift);
        const int64_t xa = x < 0 ? -(int64_t)x : x, ya = y < 0 ? -(int64_t)y : y;
        amax = xa > amax ? xa : amax;
        bmax = ya > bmax ? ya : bmax;
        ta[i] = (int32_t)((uint32_t)x << 1);
        tb[i] = (int32_t)((uint32_t)y << 1);
    }
    const int32_t oshift = ap->output_shift;
    if (oshift >= 0 || oshift < -31 || amax + bmax >= (1ll << 29)) {
        return 0;
    }
    sp_out q;
    q.omult = ap->output_multiplier;
    q.oright = -oshift;
    q.ohalf = 1 << (-oshift - 1);
    q.ooff = ap->output_offset;
    q.olo = ap->act_min;
    q.ohi = ap->act_max;
    /* u in [act_min, act_max] indexes ta[u + 128]; without the output offset: */
    const int32_t *ta_u = ta + 128 + d0->output_offset;
    const int32_t lo0 = d0->act_min - d0->output_offset, hi0 = d0->act_max - d0->output_offset;
    q.tb = tb + 128 + d1->output_offset;
    q.lo = d1->act_min - d1->output_offset;
    q.hi = d1->act_max - d1->output_offset;
    q.off = d1->output_offset;
    const int full0 = d0->act_min == -128 && d0->act_max == 127;
    const int full2 = d1->act_min == -128 && d1->act_max == 127 && q.olo == -128 && q.ohi == 127;
    const int8_t *lut = p->tail_lut;
    const int32_t n_tail = p->n_tail;
    int8_t pad0[SP_MAXC], pad1[SP_MAXC];
    for (int32_t c = 0; c < C; c++) {
        pad0[c] = (int8_t)(-d0->input_offset);
        pad1[c] = (int8_t)(-d1->input_offset);
    }
    sp_ch ch0[SP_CHUNK], ch1[SP_CHUNK];
    int32_t srow[SP_CHUNK];
    int8_t res[SP_CHUNK];
    sp_ctx x;
    x.ch0 = ch0;
    x.ch1 = ch1;
    x.C = C;
    x.ta = ta_u;
    x.lo0 = lo0;
    x.hi0 = hi0;
    x.off0 = d0->output_offset;
    x.q = q;
    const int full = full0 && full2;
    void (*run)(const sp_ctx *, const int8_t *const *, int32_t, int8_t *, int32_t *) =
        full ? sp_run_full : sp_run;
    /* tap offsets (pixels) of both convs, stride 1 */
    int32_t dy[6], dx[6], off[6];
    for (int32_t k = 0, t = 0; k < 2; k++) {
        const dsmn_conv_params *d = &p->dw[k];
        for (int32_t ky = 0; ky < p->filter_dims[k].h; ky++) {
            for (int32_t kx = 0; kx < p->filter_dims[k].w; kx++, t++) {
                dy[t] = ky * d->dilation_h - d->pad_h;
                dx[t] = kx * d->dilation_w - d->pad_w;
                off[t] = (dy[t] * id->w + dx[t]) * C;
            }
        }
    }
    int32_t xlo = 0, xhi = od->w;
    for (int32_t t = 0; t < 6; t++) {
        xlo = -dx[t] > xlo ? -dx[t] : xlo;
        xhi = id->w - dx[t] < xhi ? id->w - dx[t] : xhi;
    }
    for (int32_t c0 = 0; c0 < C; c0 += SP_CHUNK) {
        const int32_t cn = C - c0 < SP_CHUNK ? C - c0 : SP_CHUNK;
        if (!sp_prepare(p, 0, c0, cn, ch0) || !sp_prepare(p, 1, c0, cn, ch1)) {
            return c0 == 0 ? 0 : -1;
        }
        x.cn = cn;
        for (int32_t b = 0; b < od->n; b++) {
            const int8_t *img = in + b * id->h * id->w * C + c0;
            for (int32_t oy = 0; oy < od->h; oy++) {
                int yok = 1;
                for (int32_t t = 0; t < 6; t++) {
                    yok &= oy + dy[t] >= 0 && oy + dy[t] < id->h;
                }
                for (int32_t ox = 0; ox < od->w;) {
                    const int8_t *tp[6];
                    int8_t *o = out + (((b * od->h) + oy) * od->w + ox) * C + c0;
                    if (yok && ox >= xlo && ox < xhi && !lut && n_tail == 0) {
                        const int8_t *ctr = img + (oy * id->w + ox) * C;
                        for (int32_t t = 0; t < 6; t++) {
                            tp[t] = ctr + off[t];
                        }
                        run(&x, tp, xhi - ox, o, srow);
                        ox = xhi;
                        continue;
                    }
                    for (int32_t t = 0; t < 6; t++) {
                        const int32_t iy = oy + dy[t], ix = ox + dx[t];
                        tp[t] = (iy < 0 || iy >= id->h || ix < 0 || ix >= id->w) ? (t < 3 ? pad0 : pad1)
                                : img + (iy * id->w + ix) * C;
                    }
                    int8_t *dst = (!lut && n_tail == 0) ? o : res;
                    run(&x, tp, 1, dst, srow);
                    ox++;
                    if (dst == o) {
                        continue;
                    }
                    for (int32_t j = 0; j < cn; j++) {
                        int32_t r = res[j];
                        if (lut) {
                            o[j] = lut[(c0 + j) * 256 + r + 128];
                            continue;
                        }
                        for (int32_t t = 0; t < n_tail; t++) {
                            const dsmn_tail_op *op = &p->tail[t];
                            const int32_t kc = op->constant[op->const_per_channel ? c0 + j : 0];
                            const int32_t x1 = op->const_is_first ? kc : r;
                            const int32_t x2 = op->const_is_first ? r : kc;
                            r = op->is_mul ? dsmn_mul_one(&op->mul, x1, x2) : dsmn_add_one(&op->add, x1, x2);
                        }
                        o[j] = (int8_t)r;
                    }
                }
            }
        }
    }
    return 1;
}

void dsmn_sparable_s8(const dsmn_sparable_params *p, const dsmn_dims *id, const int8_t *in,
                      const dsmn_dims *od, int8_t *out)
{
    if (sparable_fast(p, id, in, od, out) != 1) {
        sparable_generic(p, id, in, od, out);
    }
}
