/* DSMN's fused Sparable unit (two depthwise convs, their ADD and an elementwise tail). */
#include "dsmn_conv_internal.h"

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

int32_t dsmn_sparable_s8_scratch_bytes(const dsmn_sparable_params *p, const dsmn_dims *in_dims,
                                       const dsmn_dims *out_dims)
{
    (void)p;
    (void)in_dims;
    (void)out_dims;
    return 0; /* the ADD tables and SP_CHUNK channel constants are stack arrays */
}
