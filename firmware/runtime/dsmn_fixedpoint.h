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
    /* remainder > threshold, threshold = mask / 2 (+1 for negative x): round half away. */
    const int32_t mask = (int32_t)((1u << exponent) - 1u);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) - (x >> 31);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* RoundingDivideByPOT for 1 <= exponent and x + half_ <= INT32_MAX, half_ = 2^(exponent-1):
 * adding half (minus one for negative x) and shifting rounds half away from zero exactly. */
static inline int32_t dsmn_rdbpot_fast(int32_t x, int exponent, int32_t half_)
{
    return (x + half_ + (x >> 31)) >> exponent;
}

/* Rounding doubling high multiply for multipliers != INT32_MIN: floor((a*b + 2^30) / 2^31). */
static inline int32_t dsmn_srdhm_nosat(int32_t a, int32_t b)
{
    return (int32_t)(((int64_t)a * b + (1ll << 30)) >> 31);
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

/* floor((a*b + 2^31) / 2^32): with a = 2x this is the rounding doubling high multiply of x. */
static inline int32_t dsmn_smmulr(int32_t a, int32_t b)
{
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && !defined(DSMN_NO_DSP)
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
#else
    return (int32_t)(((int64_t)a * b + 0x80000000ll) >> 32);
#endif
}

/* Requantisation of a doubled accumulator (2 * acc with |acc| < 2^29, a right shift of `right`
 * >= 1 bits, half = 2^(right - 1)): the rounding doubling high multiply is one smmulr and the
 * round-half-away divide is an add and a shift; exact for such accumulators. */
static inline int32_t dsmn_rq_doubled(int32_t acc2, int32_t multiplier, int32_t half, int32_t right)
{
    const int32_t h = dsmn_smmulr(acc2, multiplier);
    return (h + half + (h >> 31)) >> right;
}

/* dsmn_rq_doubled's rounding constant with the output offset folded in: (h + half + (off <<
 * right)) >> right == ((h + half) >> right) + off, as off << right is a multiple of 2^right.
 * Exact while the sum stays below 2^31, which |h| < 2^29, |off| <= 128 and right <=
 * DSMN_FOLD_MAXRIGHT guarantee; a kernel with a full int8 clamp then only saturates. */
#define DSMN_FOLD_MAXRIGHT 23
static inline int32_t dsmn_half_with_offset(int32_t half, int32_t off, int32_t right)
{
    return half + (int32_t)((uint32_t)off << right);
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
