/* Internal to the conv-family kernels (dsmn_conv.c, dsmn_conv_1x1.c, dsmn_depthwise.c,
 * dsmn_sparable.c): the DSP helpers and the depthwise tap gathering they share. Not part of
 * the runtime's interface (dsmn_kernels.h). */
#ifndef DSMN_CONV_INTERNAL_H
#define DSMN_CONV_INTERNAL_H

#include "dsmn_kernels.h"
#include "dsmn_fixedpoint.h"

#include <stddef.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && !defined(DSMN_NO_DSP)
#include <arm_acle.h>
#include <string.h>
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

/* Clamp to int8 in one instruction where the DSP extension has it. */
#if DSMN_CONV_DSP
#define SSAT8(x) __ssat((x), 8)
#else
#define SSAT8(x) ((x) < -128 ? -128 : ((x) > 127 ? 127 : (x)))
#endif

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

/* 1x1 convolution without padding (dsmn_conv_1x1.c), dsmn_conv2d_s8's path for that case. */
void dsmn_conv1x1_s8(const dsmn_conv_params *p, const dsmn_requant *q, const dsmn_dims *id,
                     const int8_t *in, const dsmn_dims *fd, const int8_t *filter,
                     const int32_t *bias, const dsmn_dims *od, int8_t *out);

#endif /* DSMN_CONV_INTERNAL_H */
