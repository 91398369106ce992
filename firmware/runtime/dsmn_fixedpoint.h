/*
 * Integer arithmetic shared by the kernels. These must round exactly like TFLite's
 * reference kernels (gemmlowp semantics, double rounding); a "faster" single-rounding
 * variant would drift by one LSB on some elements and break bit-exactness.
 */
#ifndef DSMN_FIXEDPOINT_H
#define DSMN_FIXEDPOINT_H

#include <stdint.h>

static inline int32_t dsmn_srdhm(int32_t a, int32_t b)
{
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    /* C division truncates toward zero, as the reference requires. */
    return (int32_t)((ab + nudge) / (1ll << 31));
}

static inline int32_t dsmn_rdbpot(int32_t x, int exponent)
{
    int32_t mask = (int32_t)((1ll << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* TFLite's MultiplyByQuantizedMultiplier for multipliers != INT32_MIN (always true for the
 * values QuantizeMultiplier produces). floor((ab + 2^30) / 2^31) equals the reference's
 * sign-dependent nudge with truncating division for every ab, in fewer instructions. */
static inline int32_t dsmn_mbqm_lr(int32_t x, int32_t multiplier, int left, int right)
{
    const int64_t ab = (int64_t)(int32_t)((uint32_t)x << left) * multiplier;
    return dsmn_rdbpot((int32_t)((ab + (1ll << 30)) >> 31), right);
}

static inline int32_t dsmn_mbqm(int32_t x, int32_t multiplier, int32_t shift)
{
    return dsmn_mbqm_lr(x, multiplier, shift > 0 ? shift : 0, shift > 0 ? 0 : -shift);
}

static inline int32_t dsmn_clamp(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

#include "dsmn_kernels.h"

static inline int8_t dsmn_add_one(const dsmn_add_params *p, int32_t a, int32_t b)
{
    const int32_t sa = (a + p->input1_offset) * (1 << p->left_shift);
    const int32_t sb = (b + p->input2_offset) * (1 << p->left_shift);
    const int32_t ra = dsmn_mbqm(sa, p->input1_multiplier, p->input1_shift);
    const int32_t rb = dsmn_mbqm(sb, p->input2_multiplier, p->input2_shift);
    const int32_t r = dsmn_mbqm(ra + rb, p->output_multiplier, p->output_shift) + p->output_offset;
    return (int8_t)dsmn_clamp(r, p->act_min, p->act_max);
}

static inline int8_t dsmn_mul_one(const dsmn_mul_params *p, int32_t a, int32_t b)
{
    const int32_t prod = (a + p->input1_offset) * (b + p->input2_offset);
    const int32_t r = dsmn_mbqm(prod, p->output_multiplier, p->output_shift) + p->output_offset;
    return (int8_t)dsmn_clamp(r, p->act_min, p->act_max);
}

#endif /* DSMN_FIXEDPOINT_H */
