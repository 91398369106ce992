/* ADD/SUB, MUL (with 4-D broadcasting), QUANTIZE (int8 rescale), LOGISTIC, TANH and SOFTMAX. */
#include "dsmn_kernels.h"
#include "dsmn_fixedpoint.h"

#if defined(__ARM_FEATURE_SAT) && __ARM_FEATURE_SAT
#include <arm_acle.h>
#define EW_SSAT8(x) __ssat((x), 8)
#else
#define EW_SSAT8(x) dsmn_clamp((x), -128, 127)
#endif

/* The broadcast walk is written once as a macro so ADD and MUL share it without a function
 * pointer call per element. */
#define DSMN_BROADCAST_LOOP(ONE)                                                           \
    do {                                                                                   \
        if (!bc) {                                                                         \
            for (int32_t i = 0; i < count; i++) {                                          \
                out[i] = ONE(p, in1[i], in2[i]);                                           \
            }                                                                              \
            return;                                                                        \
        }                                                                                  \
        int32_t k = 0;                                                                     \
        for (int32_t i0 = 0; i0 < bc->dims[0]; i0++) {                                     \
            for (int32_t i1 = 0; i1 < bc->dims[1]; i1++) {                                 \
                for (int32_t i2 = 0; i2 < bc->dims[2]; i2++) {                             \
                    const int8_t *a = in1 + i0 * bc->stride1[0] + i1 * bc->stride1[1]      \
                                      + i2 * bc->stride1[2];                               \
                    const int8_t *b = in2 + i0 * bc->stride2[0] + i1 * bc->stride2[1]      \
                                      + i2 * bc->stride2[2];                               \
                    const int32_t s1 = bc->stride1[3], s2 = bc->stride2[3];                \
                    for (int32_t i3 = 0; i3 < bc->dims[3]; i3++) {                         \
                        out[k++] = ONE(p, a[i3 * s1], b[i3 * s2]);                         \
                    }                                                                      \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    } while (0)

/* Both inputs' rescalings looked up (pa[v], pb[v] for v in -128..127), one requantisation
 * per element; `doubled`: entries and requantisation as described at dsmn_add_tabled_params. */
static void add_tabulated(const dsmn_add_params *p, const int32_t *pa, const int32_t *pb,
                          int doubled, int32_t count, const int8_t *in1, const int8_t *in2,
                          int8_t *out)
{
    const int32_t m = p->output_multiplier, sh = p->output_shift;
    const int left = sh > 0 ? sh : 0, right = sh > 0 ? 0 : -sh;
    const int32_t off = p->output_offset, lo = p->act_min, hi = p->act_max;
    if (doubled) {
        const int32_t half = 1 << (right - 1);
        if (lo == -128 && hi == 127 && right <= DSMN_FOLD_MAXRIGHT) {
            /* a full clamp: the output offset rides in the rounding constant (|h| < 2^29 for
             * these sums) */
            const int32_t half_off = dsmn_half_with_offset(half, off, right);
            for (int32_t i = 0; i < count; i++) {
                out[i] = (int8_t)EW_SSAT8(dsmn_rq_doubled(pa[in1[i]] + pb[in2[i]], m, half_off, right));
            }
            return;
        }
        for (int32_t i = 0; i < count; i++) {
            const int32_t r = dsmn_rq_doubled(pa[in1[i]] + pb[in2[i]], m, half, right) + off;
            out[i] = (int8_t)dsmn_clamp(r, lo, hi);
        }
        return;
    }
    for (int32_t i = 0; i < count; i++) {
        const int32_t r = dsmn_mbqm_lr(pa[in1[i]] + pb[in2[i]], m, left, right) + off;
        out[i] = (int8_t)dsmn_clamp(r, lo, hi);
    }
}

void dsmn_add_s8(const dsmn_add_params *p_arg, const dsmn_broadcast *bc, int32_t count,
                 const int8_t *in1, const int8_t *in2, int8_t *out)
{
    const dsmn_add_params p_local = *p_arg;
    const dsmn_add_params *p = &p_local;
    if (!bc && count >= 1024) {
        /* Each input's rescaling depends on one int8 value: tabulate both (256 entries),
         * leaving one requantisation per element. */
        int32_t ta[256], tb[256];
        const int32_t s = 1 << p->left_shift;
        for (int32_t i = 0; i < 256; i++) {
            ta[i] = dsmn_mbqm((i - 128 + p->input1_offset) * s, p->input1_multiplier, p->input1_shift);
            tb[i] = dsmn_mbqm((i - 128 + p->input2_offset) * s, p->input2_multiplier, p->input2_shift);
        }
        const int32_t sh = p->output_shift;
        const int left = sh > 0 ? sh : 0, right = sh > 0 ? 0 : -sh;
        int64_t amax = 0, bmax = 0;
        for (int32_t i = 0; i < 256; i++) {
            const int64_t x = ta[i] < 0 ? -(int64_t)ta[i] : ta[i];
            const int64_t y = tb[i] < 0 ? -(int64_t)tb[i] : tb[i];
            amax = x > amax ? x : amax;
            bmax = y > bmax ? y : bmax;
        }
        /* doubled tables: smmulr is the rounding doubling high multiply, and add-half
         * rounding is exact for sums this small */
        const int doubled = left == 0 && right >= 1 && right <= 31 && amax + bmax < (1ll << 29);
        if (doubled) {
            for (int32_t i = 0; i < 256; i++) {
                ta[i] *= 2;
                tb[i] *= 2;
            }
        }
        add_tabulated(p, ta + 128, tb + 128, doubled, count, in1, in2, out);
        return;
    }
    DSMN_BROADCAST_LOOP(dsmn_add_one);
}

void dsmn_add_tabled_s8(const dsmn_add_tabled_params *t, int32_t count, const int8_t *in1,
                        const int8_t *in2, int8_t *out)
{
    const dsmn_add_params p_local = t->p;
    add_tabulated(&p_local, t->table + 128, t->table + 384, t->doubled, count, in1, in2, out);
}

/* One channel of mul_per_channel_direct over n pixels C bytes apart, doubled requantisation;
 * FOLD: a full int8 clamp, the output offset folded into `half` (dsmn_half_with_offset). */
static inline void mul_channel_doubled(const int8_t *x, int8_t *o, int32_t n, int32_t C,
                                       int32_t xoff, int32_t y2, int32_t m, int32_t half,
                                       int32_t right, int32_t off, int32_t lo, int32_t hi,
                                       const int FOLD)
{
    for (const int8_t *end = x + n * C; x != end; x += C, o += C) {
        const int32_t r = dsmn_rq_doubled((*x + xoff) * y2, m, half, right);
        *o = (int8_t)(FOLD ? EW_SSAT8(r) : dsmn_clamp(r + off, lo, hi));
    }
}

static __attribute__((noinline)) void mul_channel_fold(const int8_t *x, int8_t *o, int32_t n,
                                                       int32_t C, int32_t xoff, int32_t y2,
                                                       int32_t m, int32_t half, int32_t right)
{
    mul_channel_doubled(x, o, n, C, xoff, y2, m, half, right, 0, -128, 127, 1);
}

static __attribute__((noinline)) void mul_channel_clamp(const int8_t *x, int8_t *o, int32_t n,
                                                        int32_t C, int32_t xoff, int32_t y2,
                                                        int32_t m, int32_t half, int32_t right,
                                                        int32_t off, int32_t lo, int32_t hi)
{
    mul_channel_doubled(x, o, n, C, xoff, y2, m, half, right, off, lo, hi, 0);
}

/* mul_per_channel's pixels computed one by one, channel by channel (the channel's scale and
 * the requantisation constants stay in registers over its pixels): (x + x offset) * (y_c +
 * y offset) fits 17 bits, so a right-shift requantisation takes the doubled form (one smmulr,
 * an add-half shift); a left shift takes the exact form. */
static int mul_per_channel_direct(const dsmn_mul_params *p, int32_t n, int32_t hw, int32_t C,
                                  const int8_t *x, int x_first, const int8_t *y, int32_t ys0,
                                  int8_t *out)
{
    const int32_t xoff = x_first ? p->input1_offset : p->input2_offset;
    const int32_t yoff = x_first ? p->input2_offset : p->input1_offset;
    const int32_t m = p->output_multiplier, sh = p->output_shift, off = p->output_offset;
    const int32_t lo = p->act_min, hi = p->act_max;
    const int doubled = sh <= -1 && sh >= -31;
    const int32_t right = -sh, half = doubled ? 1 << (right - 1) : 0;
    const int fold = doubled && lo == -128 && hi == 127 && right <= DSMN_FOLD_MAXRIGHT;
    const int32_t half_fold = fold ? dsmn_half_with_offset(half, off, right) : half;
    for (int32_t b = 0; b < n; b++) {
        for (int32_t c = 0; c < C; c++) {
            const int32_t yc = y[b * ys0 + c] + yoff;
            const int8_t *xp = x + b * hw * C + c;
            int8_t *o = out + b * hw * C + c;
            if (fold) {
                mul_channel_fold(xp, o, hw, C, xoff, yc * 2, m, half_fold, right);
            } else if (doubled) {
                mul_channel_clamp(xp, o, hw, C, xoff, yc * 2, m, half, right, off, lo, hi);
            } else {
                for (int32_t k = 0; k < hw; k++, xp += C, o += C) {
                    const int32_t r = dsmn_mbqm((*xp + xoff) * yc, m, sh) + off;
                    *o = (int8_t)dsmn_clamp(r, lo, hi);
                }
            }
        }
    }
    return 1;
}

/* One operand dense NHWC, the other one value per (batch, channel) (e.g. an attention scale):
 * per channel the output depends on one int8 value, so it is tabulated (256 entries) and the
 * pixels become lookups. Returns 0 when the shapes are not of this form. */
static int mul_per_channel(const dsmn_mul_params *p, const dsmn_broadcast *bc, const int8_t *in1,
                           const int8_t *in2, int8_t *out)
{
    const int32_t n = bc->dims[0], hw = bc->dims[1] * bc->dims[2], C = bc->dims[3];
    const int32_t dense[4] = {hw * C, bc->dims[2] * C, C, 1};
    int dense1 = 1, dense2 = 1, chan1 = 1, chan2 = 1;
    for (int k = 1; k < 4; k++) {
        dense1 &= bc->stride1[k] == dense[k] || bc->dims[k] == 1;
        dense2 &= bc->stride2[k] == dense[k] || bc->dims[k] == 1;
    }
    dense1 &= bc->stride1[0] == dense[0] || n == 1;
    dense2 &= bc->stride2[0] == dense[0] || n == 1;
    chan1 = (bc->stride1[1] == 0 || bc->dims[1] == 1) && (bc->stride1[2] == 0 || bc->dims[2] == 1)
            && (bc->stride1[3] == 1 || C == 1);
    chan2 = (bc->stride2[1] == 0 || bc->dims[1] == 1) && (bc->stride2[2] == 0 || bc->dims[2] == 1)
            && (bc->stride2[3] == 1 || C == 1);
    if (!((dense1 && chan2) || (dense2 && chan1))) {
        return 0;
    }
    const int x_first = dense1 && chan2;
    const int8_t *x = x_first ? in1 : in2, *y = x_first ? in2 : in1;
    const int32_t ys0 = x_first ? bc->stride2[0] : bc->stride1[0];
    if (hw < 512) {
        /* too few pixels to pay for 256 table entries a channel (a band of a tiled plan) */
        return mul_per_channel_direct(p, n, hw, C, x, x_first, y, ys0, out);
    }
    int8_t lut[256];
    for (int32_t b = 0; b < n; b++) {
        for (int32_t c = 0; c < C; c++) {
            const int32_t yv = y[b * ys0 + c];
            for (int32_t v = 0; v < 256; v++) {
                lut[v] = x_first ? dsmn_mul_one(p, v - 128, yv) : dsmn_mul_one(p, yv, v - 128);
            }
            const int8_t *xp = x + b * hw * C + c;
            int8_t *o = out + b * hw * C + c;
            const int8_t *lp = lut + 128;
            for (int32_t k = 0; k < hw; k++, xp += C, o += C) {
                *o = lp[*xp];
            }
        }
    }
    return 1;
}

void dsmn_mul_s8(const dsmn_mul_params *p_arg, const dsmn_broadcast *bc, int32_t count,
                 const int8_t *in1, const int8_t *in2, int8_t *out)
{
    const dsmn_mul_params p_local = *p_arg;
    const dsmn_mul_params *p = &p_local;
    if (bc && mul_per_channel(p, bc, in1, in2, out)) {
        return;
    }
    DSMN_BROADCAST_LOOP(dsmn_mul_one);
}

void dsmn_requantize_s8(const dsmn_requant_params *p, int32_t count, const int8_t *in,
                        int8_t *out)
{
    for (int32_t i = 0; i < count; i++) {
        int32_t r = dsmn_mbqm(in[i] - p->input_zero_point, p->multiplier, p->shift)
                    + p->output_zero_point;
        out[i] = (int8_t)dsmn_clamp(r, -128, 127);
    }
}

/* ---- gemmlowp fixed-point logistic, Q4.27 input -> Q0.31 output ---- */

static inline int32_t fp_mul(int32_t a, int32_t b) { return dsmn_srdhm(a, b); }

static inline int32_t rounding_half_sum(int32_t a, int32_t b)
{
    int64_t sum = (int64_t)a + (int64_t)b;
    int64_t sign = sum >= 0 ? 1 : -1;
    return (int32_t)((sum + sign) / 2);
}

/* Saturating multiply by 2^e for a compile-time-like small positive e. */
static inline int32_t sat_mul_pot(int32_t x, int e)
{
    const int32_t threshold = (int32_t)((1u << (31 - e)) - 1);
    if (x > threshold) {
        return INT32_MAX;
    }
    if (x < -threshold) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << e);
}

/* exp(a) for a in [-1/4, 0), Q0.31. */
static int32_t exp_quarter(int32_t a)
{
    const int32_t constant_term = 1895147668;    /* exp(-1/8) */
    const int32_t constant_1_over_3 = 715827883;
    const int32_t x = a + (1 << 28);
    const int32_t x2 = fp_mul(x, x);
    const int32_t x3 = fp_mul(x2, x);
    const int32_t x4 = fp_mul(x2, x2);
    const int32_t x4_over_4 = dsmn_rdbpot(x4, 2);
    const int32_t poly = dsmn_rdbpot(fp_mul(x4_over_4 + x3, constant_1_over_3) + x2, 1);
    return constant_term + fp_mul(constant_term, x + poly);
}

/* exp(a) for a <= 0 given with `int_bits` integer bits (4 or 5: Q4.27 or Q5.26); result
 * Q0.31. gemmlowp's exp_on_negative_values: exact exp on [-1/4, 0), then one multiplication
 * per set bit of the remainder (exp(-1/4), exp(-1/2), ... exp(-16)). */
static int32_t exp_negative(int32_t a, int int_bits)
{
    const int frac = 31 - int_bits;
    const int32_t one_quarter = 1 << (frac - 2);
    const int32_t mask = one_quarter - 1;
    const int32_t a_mod = (a & mask) - one_quarter;
    /* Rescale Q(int_bits) -> Q0: multiply by 2^int_bits with saturation. */
    int32_t result = exp_quarter(sat_mul_pot(a_mod, int_bits));
    const int32_t remainder = a_mod - a;
    static const int32_t mults[] = {1672461947, 1302514674, 790015084, 290630308, 39332535,
                                    720401, 242};
    /* Barrel shifter stages for exponents -2 .. int_bits - 1. */
    for (int e = -2; e < int_bits; e++) {
        if (remainder & (1 << (frac + e))) {
            result = fp_mul(result, mults[e + 2]);
        }
    }
    if (a == 0) {
        result = INT32_MAX;
    }
    return result;
}

static inline int32_t exp_negative_q4(int32_t a) { return exp_negative(a, 4); }

/* Newton-Raphson on the half denominator (1 + a) / 2, a in (0, 1) as Q0.31: returns
 * x ~ 2 / (1 + a) in Q2.29. */
static int32_t newton_one_over_one_plus(int32_t a)
{
    const int32_t half_denominator = rounding_half_sum(a, INT32_MAX);
    const int32_t c48_17 = 1515870810;   /* Q2.29 */
    const int32_t cm32_17 = -1010580540; /* Q2.29 */
    const int32_t one_q2 = 1 << 29;
    int32_t x = c48_17 + fp_mul(half_denominator, cm32_17);
    for (int i = 0; i < 3; i++) {
        const int32_t hdx = fp_mul(half_denominator, x);
        const int32_t one_minus = one_q2 - hdx;
        x = x + sat_mul_pot(fp_mul(x, one_minus), 2);
    }
    return x;
}

/* 1 / (1 + a) for a in (0, 1), Q0.31 in and out. */
static int32_t one_over_one_plus(int32_t a)
{
    /* Halving: ExactMulByPot<-1> keeps the raw value as Q1.30; Rescale<0> shifts left by 1. */
    return sat_mul_pot(newton_one_over_one_plus(a), 1);
}

/* (1 - a) / (1 + a) = 2 / (1 + a) - 1 for a in (0, 1), Q0.31 in and out. */
static int32_t one_minus_over_one_plus(int32_t a)
{
    return sat_mul_pot(newton_one_over_one_plus(a) - (1 << 29), 2);
}

static int32_t logistic_q4(int32_t a)
{
    if (a == 0) {
        return 1 << 30;
    }
    const int32_t abs_a = a > 0 ? a : -a;
    const int32_t pos = one_over_one_plus(exp_negative_q4(-abs_a));
    return a > 0 ? pos : INT32_MAX - pos;
}

void dsmn_logistic_s8(const dsmn_logistic_params *p, int32_t count, const int8_t *in,
                      int8_t *out)
{
    for (int32_t i = 0; i < count; i++) {
        const int32_t x = in[i] - p->input_zero_point;
        int32_t r;
        if (x <= -p->input_range_radius) {
            r = -128;
        } else if (x >= p->input_range_radius) {
            r = 127;
        } else {
            const int32_t q4 = dsmn_mbqm(x, p->input_multiplier, p->input_left_shift);
            r = dsmn_rdbpot(logistic_q4(q4), 23) - 128;
            r = dsmn_clamp(r, -128, 127);
        }
        out[i] = (int8_t)r;
    }
}

/* ---- TANH: Q4.27 input -> Q0.31 tanh (gemmlowp), output scale 1/128, zero point 0 ---- */

static int32_t tanh_q4(int32_t a)
{
    if (a == 0) {
        return 0;
    }
    /* tanh(-|a|) = -(1 - exp(-2|a|)) / (1 + exp(-2|a|)); -2|a| is the same raw value read
     * as Q5.26. */
    const int32_t n = a < 0 ? a : -a;
    const int32_t t = one_minus_over_one_plus(exp_negative(n, 5));
    return a < 0 ? -t : t;
}

void dsmn_tanh_s8(const dsmn_logistic_params *p, int32_t count, const int8_t *in, int8_t *out)
{
    for (int32_t i = 0; i < count; i++) {
        const int32_t x = in[i] - p->input_zero_point;
        int32_t r;
        if (x <= -p->input_range_radius) {
            r = -128;
        } else if (x >= p->input_range_radius) {
            r = 127;
        } else {
            const int32_t q4 = dsmn_mbqm(x, p->input_multiplier, p->input_left_shift);
            r = dsmn_clamp(dsmn_rdbpot(tanh_q4(q4), 31 - 7), -128, 127);
        }
        out[i] = (int8_t)r;
    }
}

/* ---- SOFTMAX over the innermost axis: int8 in, int8 out (scale 1/256, zero point -128).
 * Differences to the row maximum are scaled by beta * input scale into Q5.26, exponentiated
 * in Q0.31, summed in Q12.19; the reciprocal of the sum is normalised to Q0.31. ---- */

static inline int32_t softmax_exp(const dsmn_softmax_params *p, int32_t diff)
{
    const int32_t scaled = dsmn_srdhm((int32_t)((uint32_t)diff << p->input_left_shift),
                                      p->input_multiplier);
    return exp_negative(scaled, 5);
}

static inline int count_leading_zeros(uint32_t x)
{
    int n = 0;
    if (x == 0) {
        return 32;
    }
    while (!(x & 0x80000000u)) {
        x <<= 1;
        n++;
    }
    return n;
}

void dsmn_softmax_s8(const dsmn_softmax_params *p, int32_t outer, int32_t depth,
                     const int8_t *in, int8_t *out)
{
    for (int32_t o = 0; o < outer; o++) {
        const int8_t *row = in + o * depth;
        int8_t *dst = out + o * depth;
        int32_t max_v = -128;
        for (int32_t c = 0; c < depth; c++) {
            if (row[c] > max_v) {
                max_v = row[c];
            }
        }
        int32_t sum = 0; /* Q12.19 */
        for (int32_t c = 0; c < depth; c++) {
            const int32_t diff = row[c] - max_v;
            if (diff >= p->diff_min) {
                sum += dsmn_rdbpot(softmax_exp(p, diff), 12);
            }
        }
        /* Reciprocal of the sum: normalise to (1, 2) as 1 + x with x in Q0.31. */
        const int headroom = count_leading_zeros((uint32_t)sum);
        const int bits_over_unit = 12 - headroom;
        const int32_t shifted_minus_one =
            (int32_t)(((uint32_t)sum << headroom) - (1u << 31));
        const int32_t scale = one_over_one_plus(shifted_minus_one);
        const int exponent = bits_over_unit + 31 - 8;
        for (int32_t c = 0; c < depth; c++) {
            const int32_t diff = row[c] - max_v;
            int32_t r = -128;
            if (diff >= p->diff_min) {
                r = dsmn_rdbpot(fp_mul(scale, softmax_exp(p, diff)), exponent) - 128;
                r = dsmn_clamp(r, -128, 127);
            }
            dst[c] = (int8_t)r;
        }
    }
}
