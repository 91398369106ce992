/* Data movement: strided gather (slice/split/transpose), concatenation and constant pad. */
#include <string.h>

#include "dsmn_kernels.h"

void dsmn_gather_s8(const dsmn_gather_params *p, const int8_t *in, int8_t *out)
{
    const int8_t *base = in + p->offset;
    int32_t k = 0;
    for (int32_t i0 = 0; i0 < p->dims[0]; i0++) {
        for (int32_t i1 = 0; i1 < p->dims[1]; i1++) {
            for (int32_t i2 = 0; i2 < p->dims[2]; i2++) {
                const int8_t *src = base + i0 * p->stride[0] + i1 * p->stride[1] + i2 * p->stride[2];
                if (p->stride[3] == 1) {
                    memcpy(out + k, src, (size_t)p->dims[3]);
                    k += p->dims[3];
                } else {
                    for (int32_t i3 = 0; i3 < p->dims[3]; i3++) {
                        out[k++] = src[i3 * p->stride[3]];
                    }
                }
            }
        }
    }
}

void dsmn_concat_s8(int32_t n_inputs, const int8_t *const *inputs, const int32_t *inner,
                    int32_t outer, int8_t *out)
{
    for (int32_t o = 0; o < outer; o++) {
        for (int32_t k = 0; k < n_inputs; k++) {
            memcpy(out, inputs[k] + o * inner[k], (size_t)inner[k]);
            out += inner[k];
        }
    }
}

void dsmn_pad_s8(const dsmn_pad_params *p, const int8_t *in, int8_t *out)
{
    const int32_t w3 = p->in_dims[3], b3 = p->before[3];
    const int32_t d3 = p->out_dims[3];
    const int32_t after3 = d3 - b3 - w3;
    const int fill = p->pad_value;
    for (int32_t o0 = 0; o0 < p->out_dims[0]; o0++) {
        const int32_t i0 = o0 - p->before[0];
        for (int32_t o1 = 0; o1 < p->out_dims[1]; o1++) {
            const int32_t i1 = o1 - p->before[1];
            for (int32_t o2 = 0; o2 < p->out_dims[2]; o2++) {
                const int32_t i2 = o2 - p->before[2];
                if (i0 < 0 || i0 >= p->in_dims[0] || i1 < 0 || i1 >= p->in_dims[1] || i2 < 0
                    || i2 >= p->in_dims[2]) {
                    memset(out, fill, (size_t)d3);
                } else {
                    const int8_t *src = in + ((i0 * p->in_dims[1] + i1) * p->in_dims[2] + i2) * w3;
                    memset(out, fill, (size_t)b3);
                    memcpy(out + b3, src, (size_t)w3);
                    memset(out + b3 + w3, fill, (size_t)after3);
                }
                out += d3;
            }
        }
    }
}
