/* See dsmn_frontend.h. Every float operation is written in the order dsmn_host.features does
 * it (float32 where the host is float32), so what remains between the two is the FFT's and
 * log10's rounding and the order of the normalisation sums: below an int8 step almost always. */
#include "dsmn_frontend.h"

#include <math.h>
#include <string.h>

#include "arm_math.h"

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
    return align16(DSMN_FE_NFFT * sizeof(float)) * 2u + align16(N_ELEMS * sizeof(float)) +
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
    p += align16(DSMN_FE_NFFT * sizeof(float));
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

/* Sample i of the reflect-padded clip, i in [-PAD, n + PAD): x[-k] = x[k], x[n-1+k] = x[n-1-k].
 * Every index asked for is within the last DSMN_FE_NFFT samples pushed. */
static int16_t sample_at(const dsmn_fe_t *fe, int32_t i, uint32_t n)
{
    if (i < 0)
        i = -i;
    else if ((uint32_t)i >= n)
        i = 2 * (int32_t)(n - 1u) - i;
    return fe->ring[(uint32_t)i & RING_MASK];
}

static void transform_frame(dsmn_fe_t *fe, uint32_t t, uint32_t n)
{
    float *x = fe->frame, *y = fe->spectrum;
    int32_t start = (int32_t)(t * DSMN_FE_HOP) - (int32_t)PAD;
    /* Periodic Hann is symmetric about N/2: w[N-k] = w[k], so half a table suffices. Frames
     * clear of both clip edges (all but 2 + 2 of 44) read the ring directly. */
    if (start >= 0 && (uint32_t)start + DSMN_FE_NFFT <= n) {
        const int16_t *ring = fe->ring;
        uint32_t i = (uint32_t)start;
        x[0] = (float)ring[i & RING_MASK] * dsmn_fe_window[0];
        for (uint32_t k = 1; k < DSMN_FE_NFFT / 2u; k++) {
            x[k] = (float)ring[(i + k) & RING_MASK] * dsmn_fe_window[k];
            x[DSMN_FE_NFFT - k] = (float)ring[(i + DSMN_FE_NFFT - k) & RING_MASK] * dsmn_fe_window[k];
        }
        x[DSMN_FE_NFFT / 2u] = (float)ring[(i + DSMN_FE_NFFT / 2u) & RING_MASK] * dsmn_fe_window[DSMN_FE_NFFT / 2u];
    } else {
        for (uint32_t k = 0; k < DSMN_FE_NFFT; k++) {
            uint32_t w = k <= DSMN_FE_NFFT / 2u ? k : DSMN_FE_NFFT - k;
            x[k] = (float)sample_at(fe, start + (int32_t)k, n) * dsmn_fe_window[w];
        }
    }
    arm_rfft_fast_f32((arm_rfft_fast_instance_f32 *)fe->rfft, x, y, 0);
    /* Packed output: y[0] = DC, y[1] = Nyquist (both real), then (re, im) of bins 1..N/2-1.
     * The power spectrum overwrites the (now free) input frame. */
    x[0] = y[0] * y[0];
    x[DSMN_FE_NFFT / 2u] = y[1] * y[1];
    for (uint32_t k = 1; k < DSMN_FE_NFFT / 2u; k++)
        x[k] = y[2u * k] * y[2u * k] + y[2u * k + 1u] * y[2u * k + 1u];
    for (uint32_t m = 0; m < DSMN_FE_MELS; m++) {
        const float *w = dsmn_fe_mel_weights + dsmn_fe_mel_offset[m];
        const float *p = x + dsmn_fe_mel_first_bin[m];
        float acc = 0.0f;
        for (uint32_t j = 0; j < dsmn_fe_mel_nbins[m]; j++)
            acc += p[j] * w[j];
        fe->logmel[m * DSMN_FE_FRAMES + t] = log10f(acc + LOG_OFFSET);
    }
}

static void push_one(dsmn_fe_t *fe, int16_t s)
{
    uint32_t i = fe->samples++;
    if (i >= DSMN_FE_CLIP_SAMPLES)
        return;
    fe->ring[i & RING_MASK] = s;
    /* Frame t's window ends at sample t*HOP + PAD - 1: transform it as soon as that arrived,
     * before the ring overwrites the window's first sample. */
    uint32_t have = i + 1u;
    if (have >= PAD && (have - PAD) % DSMN_FE_HOP == 0u && fe->frames < DSMN_FE_FRAMES) {
        transform_frame(fe, fe->frames, DSMN_FE_CLIP_SAMPLES);
        fe->frames++;
    }
}

void dsmn_fe_push(dsmn_fe_t *fe, const int16_t *pcm, size_t n)
{
    for (size_t k = 0; k < n; k++)
        push_one(fe, pcm[k]);
}

void dsmn_fe_push_bytes(dsmn_fe_t *fe, const uint8_t *bytes, size_t n)
{
    size_t k = 0;
    if (n && fe->odd) {
        push_one(fe, (int16_t)(uint16_t)(fe->odd_byte | (bytes[0] << 8)));
        fe->odd = 0;
        k = 1;
    }
    for (; k + 1u < n; k += 2u)
        push_one(fe, (int16_t)(uint16_t)(bytes[k] | (bytes[k + 1u] << 8)));
    if (k < n) {
        fe->odd = 1;
        fe->odd_byte = bytes[k];
    }
}

/* Band m's values of channel c into row (44 floats): the log-mel itself, or its regression
 * delta, the host's (x[t+1]-x[t-1]) + 2(x[t+2]-x[t-2]), / 10, with replicated edges. */
static const float *channel_row(const float *logmel, uint32_t c, uint32_t m, float *row)
{
    const float *x = logmel + m * DSMN_FE_FRAMES;
    if (c == 0)
        return x;
    const int32_t last = (int32_t)DSMN_FE_FRAMES - 1;
    for (int32_t t = 0; t <= last; t++) {
#define AT(j) x[(j) < 0 ? 0 : ((j) > last ? last : (j))]
        float d = 1.0f * (AT(t + 1) - AT(t - 1));
        d = d + 2.0f * (AT(t + 2) - AT(t - 2));
#undef AT
        row[t] = d / 10.0f;
    }
    return row;
}

/* Round half away from zero and saturate: TFLite's QUANTIZE, as int8io.quantize does it. */
static int8_t quantize(float x, float scale, int32_t zp)
{
    float v = x / scale;
    float r = v < 0.0f ? -floorf(-v + 0.5f) : floorf(v + 0.5f);
    float q = r + (float)zp;
    return (int8_t)(q < -128.0f ? -128 : (q > 127.0f ? 127 : (int32_t)q));
}

int dsmn_fe_end(dsmn_fe_t *fe, int8_t *out)
{
    if (fe->samples != DSMN_FE_CLIP_SAMPLES || fe->odd)
        return -1;
    while (fe->frames < DSMN_FE_FRAMES) {
        transform_frame(fe, fe->frames, DSMN_FE_CLIP_SAMPLES);
        fe->frames++;
    }
    float tmp[DSMN_FE_FRAMES];
    for (uint32_t c = 0; c < 2u; c++) {
        /* Mean and Bessel-corrected std over the clip, summed per band first (a two-level
         * sum, close to numpy's pairwise one). */
        float total = 0.0f;
        for (uint32_t m = 0; m < DSMN_FE_MELS; m++) {
            const float *row = channel_row(fe->logmel, c, m, tmp);
            float s = 0.0f;
            for (uint32_t t = 0; t < DSMN_FE_FRAMES; t++)
                s += row[t];
            total += s;
        }
        float mean = total / (float)N_ELEMS;
        float sq = 0.0f;
        for (uint32_t m = 0; m < DSMN_FE_MELS; m++) {
            const float *row = channel_row(fe->logmel, c, m, tmp);
            float s = 0.0f;
            for (uint32_t t = 0; t < DSMN_FE_FRAMES; t++) {
                float d = row[t] - mean;
                s += d * d;
            }
            sq += s;
        }
        float denom = sqrtf(sq / (float)(N_ELEMS - 1u)) + NORM_EPS;
        for (uint32_t m = 0; m < DSMN_FE_MELS; m++) {
            const float *row = channel_row(fe->logmel, c, m, tmp);
            for (uint32_t t = 0; t < DSMN_FE_FRAMES; t++)
                out[(t * DSMN_FE_MELS + m) * 2u + c] = quantize((row[t] - mean) / denom, fe->scale, fe->zero_point);
        }
    }
    return 0;
}
