/* CONV_2D 1x1 without padding: the pointwise convolutions (DSMN's channel expansions and
 * projections), with fast paths per group size. */
#include "dsmn_conv_internal.h"

#if DSMN_CONV_DSP
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

enum { C1_G1, C1_G2, C1_G4, C1_G8, C1_G12, C1_G16, C1_G24, C1_G32, C1_GN };


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
                              : kind == C1_G16 ? 16 : kind == C1_G24 ? 24 : kind == C1_G32 ? 32 : gc;
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
                if (g >= 24) {
                    C1_DOT4(acc, ip + 16, wp + 8);
                    C1_DOT4(acc, ip + 20, wp + 10);
                }
                if (g >= 32) {
                    C1_DOT4(acc, ip + 24, wp + 12);
                    C1_DOT4(acc, ip + 28, wp + 14);
                }
            }
#else
            const int32_t g = kind == C1_G4 ? 4 : kind == C1_G8 ? 8 : kind == C1_G12 ? 12
                              : kind == C1_G16 ? 16 : kind == C1_G24 ? 24 : kind == C1_G32 ? 32 : gc;
            for (int32_t i = 0; i < g; i++) {
                acc += ip[i] * wd[i];
            }
#endif
        }
        /* full: the output offset rides in `half` (c1_fold), so only the saturation is left */
        const int32_t v = dsmn_rq_doubled(acc, mult, half, right) + (full ? 0 : off);
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
C1_WRAP(C1_G24)
C1_WRAP(C1_G32)
C1_WRAP(C1_GN)

static const c1_fn c1_table[2][9] = {
    {c1_C1_G1_0, c1_C1_G2_0, c1_C1_G4_0, c1_C1_G8_0, c1_C1_G12_0, c1_C1_G16_0, c1_C1_G24_0,
     c1_C1_G32_0, c1_C1_GN_0},
    {c1_C1_G1_1, c1_C1_G2_1, c1_C1_G4_1, c1_C1_G8_1, c1_C1_G12_1, c1_C1_G16_1, c1_C1_G24_1,
     c1_C1_G32_1, c1_C1_GN_1},
};

static int c1_kind(int32_t gc)
{
    return gc == 1 ? C1_G1 : gc == 2 ? C1_G2 : gc == 4 ? C1_G4 : gc == 8 ? C1_G8
           : gc == 12 ? C1_G12 : gc == 16 ? C1_G16 : gc == 24 ? C1_G24 : gc == 32 ? C1_G32 : C1_GN;
}

/* How a call's output window maps to runs of pixels, the same for every output channel:
 * one run per output row, or one run in all when the window covers whole input rows. */
typedef struct {
    int32_t n, rows, run;      /* batches, runs a batch, pixels a run */
    int32_t in_batch, in_row;  /* input bytes between batches and between runs */
    const int8_t *in0;         /* the first run's input (channel 0) */
    int kind, full;
} c1_shape;

static void c1_shape_of(c1_shape *sh, const dsmn_conv_params *p, const dsmn_dims *id,
                        const dsmn_dims *od, const int8_t *in, int32_t gc, int full)
{
    const int32_t in_c = id->c;
    const int whole = p->stride_h == 1 && p->stride_w == 1 && p->out_x0 == 0 && od->w == id->w;
    sh->n = od->n;
    sh->rows = whole ? 1 : od->h;
    sh->run = whole ? od->h * od->w : od->w;
    sh->in_batch = id->h * id->w * in_c;
    sh->in_row = p->stride_h * id->w * in_c;
    sh->in0 = in + (p->out_y0 * p->stride_h * id->w + p->out_x0 * p->stride_w) * in_c;
    sh->kind = c1_kind(gc);
    sh->full = full;
}

/* The body for channel constants `ca` (NULL: the scalar loop, for a generic group size without
 * packed weights on DSP). A full int8 clamp with a short enough shift takes the body without
 * the offset add, its offset folded into ca->half (dsmn_half_with_offset). */
static c1_fn c1_pick(c1_args *ca, const c1_shape *sh)
{
    if (!(ca->wp || !DSMN_CONV_DSP || sh->kind <= C1_G2)) {
        return NULL;
    }
    const int fold = sh->full && ca->right <= DSMN_FOLD_MAXRIGHT;
    if (fold) {
        ca->half = dsmn_half_with_offset(ca->half, ca->off, ca->right);
    }
    return c1_table[fold][sh->kind];
}

/* The fast path's runs of output channel `oc` (its group's inputs from channel goff), `ca`
 * its constants. */
static void c1_channel(c1_args *ca, const c1_shape *sh, const dsmn_dims *od, int8_t *out,
                       int32_t oc, int32_t goff)
{
    const int32_t gc = ca->gc, run = sh->run, out_run = run * od->c;
#if DSMN_CONV_DSP
    if (sh->kind == C1_GN && gc % 4 != 0) {
        ca->wp = NULL; /* C1_GN on DSP needs packed weights: use the scalar loop below */
    }
#endif
    const int32_t *wd = ca->wd;
    const c1_fn fn = c1_pick(ca, sh);
    int8_t *o = out + oc;
    for (int32_t b = 0; b < sh->n; b++) {
        const int8_t *ip = sh->in0 + b * sh->in_batch + goff;
        for (int32_t r = 0; r < sh->rows; r++, ip += sh->in_row, o += out_run) {
            if (fn) {
                fn(ca, ip, o, run);
                continue;
            }
            const int8_t *x = ip;
            int8_t *y = o;
            for (int32_t k = 0; k < run; k++, x += ca->sx, y += ca->so) {
                int32_t acc = ca->base;
                for (int32_t i = 0; i < gc; i++) {
                    acc += x[i] * wd[i];
                }
                const int32_t v = dsmn_rq_doubled(acc, ca->mult, ca->half, ca->right) + ca->off;
                *y = (int8_t)dsmn_clamp(v, ca->lo, ca->hi);
            }
        }
    }
}

/* Doubled weights of one output channel in wd and, where the DSP path reads them so, packed
 * as halfword pairs matching __sxtb16(x) (bytes 0,2) and __sxtb16(x ror 8) (bytes 1,3); returns
 * the packed words or NULL. */
static const uint32_t *c1_weights(const int8_t *fp, int32_t gc, int32_t k, int32_t *wd, uint32_t *wpk)
{
#if DSMN_CONV_DSP
    if (gc % 4 == 0 && gc > 2) {
        /* the DSP path reads only the packed words: pack straight from the int8 filter */
        for (int32_t i = 0; i < gc; i += 4) {
            const uint32_t x = rd32(fp + i), even = __sxtb16(x), odd = sxtb16_ror8(x);
            wpk[i / 2] = k == 2 ? __sadd16(even, even) : even;
            wpk[i / 2 + 1] = k == 2 ? __sadd16(odd, odd) : odd;
        }
        for (int32_t ic = 0; k == 1 && ic < gc; ic++) { /* the exact path reads wd */
            wd[ic] = fp[ic];
        }
        return wpk;
    }
#else
    (void)wpk;
#endif
    for (int32_t ic = 0; ic < gc; ic++) {
        wd[ic] = fp[ic] * k;
    }
    return NULL;
}

/* 1x1, no padding: no tap is ever skipped, so the input offset folds into a per-channel
 * constant (offset * sum of weights) and the inner loop is a plain int8 dot product. Output
 * channels outermost so the channel's constants and weights stay hoisted. */
void dsmn_conv1x1_s8(const dsmn_conv_params *p_arg, const dsmn_requant *q_arg, const dsmn_dims *id,
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
    c1_shape sh;
    c1_shape_of(&sh, p, id, od, in, gc, p->act_min == -128 && p->act_max == 127);
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
        const uint32_t *wpk = c1_weights(fp, gc, k, wd, wpk_buf);
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
        c1_args ca = {wd, wpk, gc, (int32_t)base * 2, mult, right, rq.half, rq.off, rq.lo, rq.hi,
                      p->stride_w * in_c, od->c};
        c1_channel(&ca, &sh, od, out, oc, goff);
    }
}

/* The same fast path with the per-channel constants the code generator prepared
 * (dsmn_conv1x1_prep): a tiled plan calls a 1x1 convolution once per band and strip, on a few
 * dozen pixels, where the weight sums, bounds and 64-bit base of every channel would cost
 * more than the pixels. */
void dsmn_conv1x1_prep_s8(const dsmn_conv1x1_prep *pp, const dsmn_conv_params *p_arg,
                          const dsmn_dims *id, const int8_t *in, const dsmn_dims *od, int8_t *out)
{
    const dsmn_conv_params p_local = *p_arg;
    const dsmn_conv_params *p = &p_local;
    const int32_t gc = pp->gc, out_per_group = od->c / (id->c / gc);
    int32_t wd[C1_MAXG];
    uint32_t wpk[C1_MAXG / 2];
    c1_shape sh;
    c1_shape_of(&sh, p, id, od, in, gc, p->act_min == -128 && p->act_max == 127);
    c1_args ca = {wd, NULL, gc, 0, 0, 0, 0, p->output_offset, p->act_min, p->act_max,
                  p->stride_w * id->c, od->c};
    const int one_run = sh.n == 1 && sh.rows == 1;
    for (int32_t oc = 0; oc < od->c; oc++) {
        const int32_t right = -pp->shift[oc];
        ca.wp = c1_weights(pp->filter + oc * gc, gc, 2, wd, wpk);
        ca.base = pp->base2[oc];
        ca.mult = pp->multiplier[oc];
        ca.right = right;
        ca.half = 1 << (right - 1);
        if (one_run) {
            /* a band call's one run (one row of a strip): the body straight away */
            const c1_fn fn = c1_pick(&ca, &sh);
            if (fn) {
                fn(&ca, sh.in0 + (oc / out_per_group) * gc, out + oc, sh.run);
                continue;
            }
        }
        c1_channel(&ca, &sh, od, out, oc, (oc / out_per_group) * gc);
    }
}
