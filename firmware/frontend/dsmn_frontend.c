/* See dsmn_frontend.h. Every float operation is written in the order dsmn_host.features does
 * it (float32 where the host is float32), so what remains between the two is the FFT's and
 * log10's rounding (our log10_pos: within 2 ulp) and the order of the normalisation sums:
 * below an int8 step almost always. */
#include "dsmn_frontend.h"

#include <math.h>
#include <string.h>

#include "arm_math.h"
#if defined(__ARM_FEATURE_SAT)
#include <arm_acle.h>
#endif

#define RING_MASK (DSMN_FE_NFFT - 1u)
#define PAD (DSMN_FE_NFFT / 2u)
#define LOG_OFFSET 1e-10f
#define NORM_EPS 1e-8f
#define N_ELEMS (DSMN_FE_MELS * DSMN_FE_FRAMES)

#if ((DSMN_FE_NFFT) & (DSMN_FE_NFFT - 1u)) != 0
#error the ring needs a power-of-two FFT length
#endif

static size_t align16(size_t n) { return (n + 15u) & ~(size_t)15u; }

size_t dsmn_fe_scratch_bytes(void)
{
    return align16(DSMN_FE_NFFT * sizeof(float)) + align16((DSMN_FE_NFFT + 2u) * sizeof(float)) +
           align16(N_ELEMS * sizeof(float)) +
           align16(DSMN_FE_NFFT * sizeof(int16_t)) + align16(sizeof(arm_rfft_fast_instance_f32));
}

int dsmn_fe_begin(dsmn_fe_t *fe, void *scratch, size_t scratch_bytes, float input_scale,
                  int32_t input_zero_point)
{
    uint8_t *p = (uint8_t *)scratch;
    if (p == NULL || ((uintptr_t)p & 3u) || scratch_bytes < dsmn_fe_scratch_bytes())
        return -1;
    memset(fe, 0, sizeof *fe);
    fe->frame = (float *)p;
    p += align16(DSMN_FE_NFFT * sizeof(float));
    fe->spectrum = (float *)p;
    p += align16((DSMN_FE_NFFT + 2u) * sizeof(float));
    fe->logmel = (float *)p;
    p += align16(N_ELEMS * sizeof(float));
    fe->ring = (int16_t *)p;
    p += align16(DSMN_FE_NFFT * sizeof(int16_t));
    fe->rfft = p;
    /* The instance lives in the scratch too: its tables are const, it holds only pointers. */
    if (arm_rfft_fast_init_4096_f32((arm_rfft_fast_instance_f32 *)fe->rfft) != ARM_MATH_SUCCESS)
        return -1;
    fe->scale = input_scale;
    fe->zero_point = input_zero_point;
    return 0;
}

/* log10 of a positive normal float (the mel power + 1e-10 always is), by table: with m the
 * mantissa in [1, 2) and c its cell's edge (top 8 mantissa bits), log10 x = e log10 2 +
 * log10 c + log10(1 + r), r = (m - c) / c, |r| < 2^-8, so a cubic in r is exact to float.
 * Cells from 1.5 up count as c / 2 and e + 1, and the top cell's edge is 2, so x near 1 from
 * either side has no large terms cancelling. m - c is exact as an integer (the low 15
 * mantissa bits), the table holds 2^-23 / c. Within 1.91 ulp of log10 over [1e-10, 2^31)
 * (tests/test_frontend.py checks <= 2), ~25 instructions and no division (the series it
 * replaced needed a VDIV and ~43): 44 x 256 calls per clip. */
static inline float log10_pos(float x)
{
    union { float f; uint32_t u; } b = {x};
    const uint32_t cell = (b.u >> 15) & 0xffu;
    const int32_t e = (int32_t)(b.u >> 23) - 127 + (int32_t)((b.u >> 22) & 1u);
    int32_t num = (int32_t)(b.u & 0x7fffu);
    if (cell == 0xffu)
        num -= 0x8000;
    const float *row = dsmn_fe_log10_cell[cell];
    const float r = (float)num * row[1];
    /* log10(e) (1 - r/2 + r^2/3), as float32 */
    const float p = r * (0x1.bcb7b2p-2f + r * (-0x1.bcb7b2p-3f + r * 0x1.287a76p-3f));
    /* log10(2) split so e * HI is exact (HI has 12 significant bits, |e| < 2^8). */
    const float HI = 0x1.344p-2f, LO = (float)(0.30102999566398120 - 0x1.344p-2);
    return (float)e * HI + ((float)e * LO + (row[0] + p));
}

float dsmn_fe_log10(float x) { return log10_pos(x); }

/* x[k] = ring[r + k * dir] * w[k * step], k < n: one run contiguous in the ring and in the
 * half window. */
static inline __attribute__((always_inline)) void window_run(float *x, const int16_t *src, int32_t dir,
                                                             const float *w, int32_t step, uint32_t n)
{
    for (uint32_t k = 0; k < n; k++, src += dir, w += step)
        x[k] = (float)*src * *w;
}

static uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

static void transform_frame(dsmn_fe_t *fe, uint32_t t, uint32_t n)
{
    float *x = fe->frame, *y = fe->spectrum;
    const int32_t start = (int32_t)(t * DSMN_FE_HOP) - (int32_t)PAD;
    /* The frame is clip samples start .. start + N - 1 of the reflect-padded clip (x[-j] = x[j],
     * x[n-1+j] = x[n-1-j]), every one within the last N pushed, so in the ring. Periodic Hann
     * is symmetric about N/2 (w[N-k] = w[k]): half a table. The frame is cut into runs where
     * the sample index moves by +-1 and the window index by +-1 without the ring wrapping
     * (at most six), so no per-sample index arithmetic. */
    uint32_t k = 0;
    while (k < DSMN_FE_NFFT) {
        int32_t j = start + (int32_t)k;
        int32_t src, dir;
        uint32_t len = DSMN_FE_NFFT - k;
        if (j < 0) { /* left reflection: -j, -j - 1, ..., 1 */
            src = -j;
            dir = -1;
            len = min_u32(len, (uint32_t)-j);
        } else if ((uint32_t)j < n) {
            src = j;
            dir = 1;
            len = min_u32(len, n - (uint32_t)j);
        } else { /* right reflection: n - 2, n - 3, ... */
            src = 2 * (int32_t)(n - 1u) - j;
            dir = -1;
        }
        uint32_t r = (uint32_t)src & RING_MASK;
        len = min_u32(len, dir > 0 ? DSMN_FE_NFFT - r : r + 1u);
        /* Constant strides at each call (inlined): the inner loop is load, convert, multiply. */
        const int16_t *p = fe->ring + r;
        if (k <= DSMN_FE_NFFT / 2u) {
            len = min_u32(len, DSMN_FE_NFFT / 2u + 1u - k);
            if (dir > 0)
                window_run(x + k, p, 1, dsmn_fe_window + k, 1, len);
            else
                window_run(x + k, p, -1, dsmn_fe_window + k, 1, len);
        } else if (dir > 0) {
            window_run(x + k, p, 1, dsmn_fe_window + (DSMN_FE_NFFT - k), -1, len);
        } else {
            window_run(x + k, p, -1, dsmn_fe_window + (DSMN_FE_NFFT - k), -1, len);
        }
        k += len;
    }
    arm_rfft_fast_f32((arm_rfft_fast_instance_f32 *)fe->rfft, x, y, 0);
    /* Packed output: y[0] = DC, y[1] = Nyquist (both real), then (re, im) of bins 1..N/2-1.
     * Unpacked to (re, 0) pairs at both ends, so every bin k is (y[2k], y[2k+1]) and its power
     * re*re + im*im (+ 0*0 is exact). */
    y[DSMN_FE_NFFT] = y[1];
    y[DSMN_FE_NFFT + 1u] = 0.0f;
    y[1] = 0.0f;
    /* One pass over the bins: a bin adds to two neighbouring bands at most (lower band's
     * falling edge, upper band's rising edge), so the power is computed once and never stored,
     * and each band's sum stays in a register until its last bin. Band m still sums its bins in
     * ascending order from 0.0f (the table's extra zero weights add exactly +0): the same
     * result as one dot product per band. */
    const float *c = y + 2u * dsmn_fe_mel_seg[0];
    const float *w = dsmn_fe_mel_pair;
    float *out = fe->logmel + t;
    float lower = 0.0f, upper = 0.0f;
    for (uint32_t s = 0; s <= DSMN_FE_MELS; s++) {
        /* segment s: the bins whose lower band is s - 1 */
        for (uint32_t k = dsmn_fe_mel_seg[s]; k < dsmn_fe_mel_seg[s + 1u]; k++, c += 2, w += 2) {
            const float p = c[0] * c[0] + c[1] * c[1];
            lower += p * w[0];
            upper += p * w[1];
        }
        if (s > 0) {
            *out = log10_pos(lower + LOG_OFFSET);
            out += DSMN_FE_FRAMES;
        }
        lower = upper;
        upper = 0.0f;
    }
}

void dsmn_fe_push(dsmn_fe_t *fe, const int16_t *pcm, size_t n)
{
    while (n) {
        uint32_t i = fe->samples;
        if (i >= DSMN_FE_CLIP_SAMPLES) {
            fe->samples += (uint32_t)n; /* counted, so dsmn_fe_end can refuse them */
            return;
        }
        /* Frame t's window ends at sample t*HOP + PAD - 1: copy up to the next frame's end (or
         * the clip's, or the ring's wrap), then transform it before the ring overwrites the
         * window's first sample. */
        uint32_t next = fe->frames < DSMN_FE_FRAMES ? PAD + fe->frames * DSMN_FE_HOP : DSMN_FE_CLIP_SAMPLES;
        uint32_t take = (next > DSMN_FE_CLIP_SAMPLES ? DSMN_FE_CLIP_SAMPLES : next) - i;
        uint32_t room = DSMN_FE_NFFT - (i & RING_MASK);
        if (take > room)
            take = room;
        if (take > n)
            take = (uint32_t)n;
        memcpy(fe->ring + (i & RING_MASK), pcm, take * sizeof *pcm);
        fe->samples = i + take;
        pcm += take;
        n -= take;
        if (fe->samples == next && fe->frames < DSMN_FE_FRAMES) {
            transform_frame(fe, fe->frames, DSMN_FE_CLIP_SAMPLES);
            fe->frames++;
        }
    }
}

void dsmn_fe_push_bytes(dsmn_fe_t *fe, const uint8_t *bytes, size_t n)
{
    int16_t buf[64];
    size_t k = 0, m = 0;
    if (n && fe->odd) {
        buf[m++] = (int16_t)(uint16_t)(fe->odd_byte | (bytes[0] << 8));
        fe->odd = 0;
        k = 1;
    }
    for (; k + 1u < n; k += 2u) {
        buf[m++] = (int16_t)(uint16_t)(bytes[k] | (bytes[k + 1u] << 8));
        if (m == 64u) {
            dsmn_fe_push(fe, buf, m);
            m = 0;
        }
    }
    if (m)
        dsmn_fe_push(fe, buf, m);
    if (k < n) {
        fe->odd = 1;
        fe->odd_byte = bytes[k];
    }
}

/* Band m's regression delta in place: the host's (x[t+1]-x[t-1]) + 2(x[t+2]-x[t-2]), / 10,
 * with replicated edges; tmp holds the band's log-mel while it is overwritten. Only the two
 * frames at each end clamp their indices. */
static inline float delta_at(const float *v, int32_t t, int32_t last, int clamp)
{
#define AT(j) v[clamp ? ((j) < 0 ? 0 : ((j) > last ? last : (j))) : (j)]
    float d = 1.0f * (AT(t + 1) - AT(t - 1));
    d = d + 2.0f * (AT(t + 2) - AT(t - 2));
#undef AT
    return d / 10.0f;
}

static void delta_in_place(float *x, float *tmp)
{
    const int32_t last = (int32_t)DSMN_FE_FRAMES - 1;
    memcpy(tmp, x, DSMN_FE_FRAMES * sizeof *x);
    x[0] = delta_at(tmp, 0, last, 1);
    x[1] = delta_at(tmp, 1, last, 1);
    for (int32_t t = 2; t <= last - 2; t++)
        x[t] = delta_at(tmp, t, last, 0);
    x[last - 1] = delta_at(tmp, last - 1, last, 1);
    x[last] = delta_at(tmp, last, last, 1);
}

static inline int8_t sat8(int32_t q)
{
#if defined(__ARM_FEATURE_SAT)
    return (int8_t)__ssat(q, 8);
#else
    return (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
#endif
}

/* Round half away from zero and saturate: TFLite's QUANTIZE, exactly as int8io.quantize does
 * it. The fraction f = v - trunc(v) and 2f are exact in float32, and trunc(2f) is the +-1 (or
 * 0) that rounding adds: no v + 0.5 rounding up a 0.49999997, and no compares. */
static inline int8_t quantize(float x, float scale, int32_t zp)
{
    const float v = x / scale;
    if (!(fabsf(v) < 1024.0f))
        return (int8_t)(v < 0.0f ? -128 : 127);
    const int32_t r = (int32_t)v; /* toward zero */
    const float f = v - (float)r;
    return sat8(r + (int32_t)(f + f) + zp);
}

/* Normalises one channel (band-major values) over the clip and quantizes it into out. Mean and
 * Bessel-corrected std are summed per band first (a two-level sum, close to numpy's pairwise
 * one). */
static void normalise_channel(const float *v, uint32_t c, int8_t *out, float scale, int32_t zp)
{
    float total = 0.0f;
    for (uint32_t m = 0; m < DSMN_FE_MELS; m++) {
        const float *row = v + m * DSMN_FE_FRAMES;
        float s = 0.0f;
        for (uint32_t t = 0; t < DSMN_FE_FRAMES; t++)
            s += row[t];
        total += s;
    }
    float mean = total / (float)N_ELEMS;
    float sq = 0.0f;
    for (uint32_t m = 0; m < DSMN_FE_MELS; m++) {
        const float *row = v + m * DSMN_FE_FRAMES;
        float s = 0.0f;
        for (uint32_t t = 0; t < DSMN_FE_FRAMES; t++) {
            float d = row[t] - mean;
            s += d * d;
        }
        sq += s;
    }
    float denom = sqrtf(sq / (float)(N_ELEMS - 1u)) + NORM_EPS;
    for (uint32_t m = 0; m < DSMN_FE_MELS; m++) {
        const float *row = v + m * DSMN_FE_FRAMES;
        int8_t *o = out + m * 2u + c;
        for (uint32_t t = 0; t < DSMN_FE_FRAMES; t++, o += DSMN_FE_MELS * 2u)
            *o = quantize((row[t] - mean) / denom, scale, zp);
    }
}

int dsmn_fe_end(dsmn_fe_t *fe, int8_t *out)
{
    if (fe->samples != DSMN_FE_CLIP_SAMPLES || fe->odd)
        return -1;
    while (fe->frames < DSMN_FE_FRAMES) {
        transform_frame(fe, fe->frames, DSMN_FE_CLIP_SAMPLES);
        fe->frames++;
    }
    /* Channel 0 from the log-mel, which then becomes its delta (channel 1) in place: each
     * value computed once, no second clip-sized buffer. */
    normalise_channel(fe->logmel, 0, out, fe->scale, fe->zero_point);
    float tmp[DSMN_FE_FRAMES];
    for (uint32_t m = 0; m < DSMN_FE_MELS; m++)
        delta_in_place(fe->logmel + m * DSMN_FE_FRAMES, tmp);
    normalise_channel(fe->logmel, 1, out, fe->scale, fe->zero_point);
    return 0;
}
