/* CONV_2D (plain and grouped) and DEPTHWISE_CONV_2D, int8 with per-channel requantisation. */
#include "dsmn_kernels.h"
#include "dsmn_fixedpoint.h"

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

/* 1x1, no padding: no tap is ever skipped, so the input offset folds into a per-channel
 * constant (offset * sum of weights) and the inner loop is a plain int8 dot product. Output
 * channels outermost so that constant is computed once per channel, without scratch. */
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
    for (int32_t oc = 0; oc < od->c; oc++) {
        const int8_t *fp = filter + oc * gc;
        int32_t ksum = 0;
        for (int32_t ic = 0; ic < gc; ic++) {
            ksum += fp[ic];
        }
        const int32_t base = (bias ? bias[oc] : 0) + p->input_offset * ksum;
        const int32_t mult = q->multiplier[oc], shift = q->shift[oc];
        const int32_t goff = (oc / out_per_group) * gc;
        const int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
        const int32_t out_off = p->output_offset, lo = p->act_min, hi = p->act_max;
        const int32_t sx = p->stride_w * in_c;
        int8_t *o = out + oc;
        for (int32_t b = 0; b < od->n; b++) {
            for (int32_t oy = 0; oy < od->h; oy++) {
                const int32_t iy = (oy + p->out_y0) * p->stride_h;
                const int8_t *ip = in + ((b * id->h + iy) * id->w + p->out_x0 * p->stride_w) * in_c + goff;
                for (int32_t ox = 0; ox < od->w; ox++, o += od->c, ip += sx) {
                    const int32_t acc = dsmn_mbqm_lr(base + dot_s8(ip, fp, gc), mult, left, right) + out_off;
                    *o = (int8_t)dsmn_clamp(acc, lo, hi);
                }
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
        /* Pointwise per channel: one multiply and one requantisation per element. */
        const int32_t n_pix = od->n * od->h * od->w, c_n = od->c;
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

void dsmn_sparable_s8(const dsmn_sparable_params *p_arg, const dsmn_dims *id, const int8_t *in,
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
