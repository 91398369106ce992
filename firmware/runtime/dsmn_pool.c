/* MEAN, AVERAGE_POOL_2D, MAX_POOL_2D. */
#include "dsmn_kernels.h"
#include "dsmn_fixedpoint.h"

void dsmn_mean_accumulate_s8(int32_t inner, int32_t n, const int8_t *in, int32_t *acc)
{
    for (int32_t r = 0; r < n; r++) {
        for (int32_t i = 0; i < inner; i++) {
            acc[i] += in[r * inner + i];
        }
    }
}

void dsmn_mean_finish_s8(const dsmn_mean_params *p, const int32_t *acc, int8_t *out)
{
    const int32_t red = p->reduce;
    for (int32_t i = 0; i < p->inner; i++) {
        int32_t v = dsmn_mbqm(acc[i] - p->input_zero_point * red, p->multiplier, p->shift)
                    + p->output_zero_point;
        out[i] = (int8_t)dsmn_clamp(v, -128, 127);
    }
}

void dsmn_mean_s8(const dsmn_mean_params *p, const int8_t *in, int32_t *acc, int8_t *out)
{
    const int32_t inner = p->inner, red = p->reduce;
    for (int32_t o = 0; o < p->outer; o++) {
        int32_t *a = acc + o * inner;
        for (int32_t i = 0; i < inner; i++) {
            a[i] = 0;
        }
        dsmn_mean_accumulate_s8(inner, red, in + o * red * inner, a);
        dsmn_mean_finish_s8(p, a, out + o * inner);
    }
}

void dsmn_avg_pool_s8(const dsmn_pool_params *p_arg, const dsmn_dims *id, const int8_t *in,
                      const dsmn_dims *od, int8_t *out)
{
    const dsmn_pool_params p_local = *p_arg;
    const dsmn_pool_params *p = &p_local;
    for (int32_t b = 0; b < od->n; b++) {
        for (int32_t oy = 0; oy < od->h; oy++) {
            const int32_t y0 = (oy + p->out_y0) * p->stride_h - p->pad_h;
            const int32_t ky0 = y0 < 0 ? -y0 : 0;
            const int32_t ky1 = p->filter_h < id->h - y0 ? p->filter_h : id->h - y0;
            for (int32_t ox = 0; ox < od->w; ox++) {
                const int32_t x0 = (ox + p->out_x0) * p->stride_w - p->pad_w;
                const int32_t kx0 = x0 < 0 ? -x0 : 0;
                const int32_t kx1 = p->filter_w < id->w - x0 ? p->filter_w : id->w - x0;
                const int32_t count = (ky1 - ky0) * (kx1 - kx0), half = count / 2;
                const int32_t C = od->c, row = id->w * id->c;
                const int8_t *base = in + ((b * id->h + y0 + ky0) * id->w + x0 + kx0) * id->c;
                int8_t *o = out + ((b * od->h + oy) * od->w + ox) * C;
                if (count == 2) {
                    /* e.g. 2x1 / 1x2 windows: two pointers, no inner loops */
                    const int8_t *x1 = base + (ky1 - ky0 == 2 ? row : id->c);
                    const int32_t lo = p->act_min, hi = p->act_max;
                    for (int32_t c = 0; c < C; c++) {
                        int32_t acc = base[c] + x1[c];
                        acc = acc > 0 ? (acc + 1) / 2 : (acc - 1) / 2;
                        o[c] = (int8_t)dsmn_clamp(acc, lo, hi);
                    }
                    continue;
                }
                for (int32_t c = 0; c < C; c++) {
                    int32_t acc = 0;
                    const int8_t *r = base + c;
                    for (int32_t ky = ky0; ky < ky1; ky++, r += row) {
                        const int8_t *x = r;
                        for (int32_t kx = kx0; kx < kx1; kx++, x += id->c) {
                            acc += *x;
                        }
                    }
                    if (count > 0) {
                        acc = acc > 0 ? (acc + half) / count : (acc - half) / count;
                    }
                    o[c] = (int8_t)dsmn_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}

void dsmn_max_pool_s8(const dsmn_pool_params *p_arg, const dsmn_dims *id, const int8_t *in,
                      const dsmn_dims *od, int8_t *out)
{
    const dsmn_pool_params p_local = *p_arg;
    const dsmn_pool_params *p = &p_local;
    for (int32_t b = 0; b < od->n; b++) {
        for (int32_t oy = 0; oy < od->h; oy++) {
            const int32_t y0 = (oy + p->out_y0) * p->stride_h - p->pad_h;
            const int32_t ky0 = y0 < 0 ? -y0 : 0;
            const int32_t ky1 = p->filter_h < id->h - y0 ? p->filter_h : id->h - y0;
            for (int32_t ox = 0; ox < od->w; ox++) {
                const int32_t x0 = (ox + p->out_x0) * p->stride_w - p->pad_w;
                const int32_t kx0 = x0 < 0 ? -x0 : 0;
                const int32_t kx1 = p->filter_w < id->w - x0 ? p->filter_w : id->w - x0;
                for (int32_t c = 0; c < od->c; c++) {
                    int32_t m = -128;
                    for (int32_t ky = ky0; ky < ky1; ky++) {
                        for (int32_t kx = kx0; kx < kx1; kx++) {
                            int32_t v = in[((b * id->h + y0 + ky) * id->w + x0 + kx) * id->c + c];
                            m = v > m ? v : m;
                        }
                    }
                    out[((b * od->h + oy) * od->w + ox) * od->c + c] =
                        (int8_t)dsmn_clamp(m, p->act_min, p->act_max);
                }
            }
        }
    }
}

int32_t dsmn_mean_s8_scratch_bytes(const dsmn_mean_params *p)
{
    return p->outer * p->inner * (int32_t)sizeof(int32_t);
}

int32_t dsmn_mean_accumulate_s8_scratch_bytes(int32_t inner)
{
    return inner * (int32_t)sizeof(int32_t);
}
