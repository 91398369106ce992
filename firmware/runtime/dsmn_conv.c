/* CONV_2D (plain and grouped), int8 with per-channel requantisation; the 1x1 case runs in
 * dsmn_conv_1x1.c. */
#include "dsmn_conv_internal.h"

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
        dsmn_conv1x1_s8(p, q, id, in, fd, filter, bias, od, out);
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

int32_t dsmn_conv2d_s8_scratch_bytes(const dsmn_conv_params *p, const dsmn_dims *in_dims,
                                     const dsmn_dims *filter_dims, const dsmn_dims *out_dims)
{
    (void)p;
    (void)in_dims;
    (void)filter_dims;
    (void)out_dims;
    return 0; /* the 1x1 path's weight buffers are C1_MAXG-bounded stack arrays */
}
