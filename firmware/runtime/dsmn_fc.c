/* FULLY_CONNECTED, int8. */
#include "dsmn_kernels.h"
#include "dsmn_fixedpoint.h"

void dsmn_fully_connected_s8(const dsmn_fc_params *p_arg, const dsmn_requant *q_arg, const int8_t *in,
                             const int8_t *filter, const int32_t *bias, int8_t *out)
{
    const dsmn_requant q_local = *q_arg;
    const dsmn_requant *q = &q_local;
    const dsmn_fc_params p_local = *p_arg;
    const dsmn_fc_params *p = &p_local;
    const int32_t depth = p->accum_depth;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *x = in + b * depth;
        for (int32_t oc = 0; oc < p->out_depth; oc++) {
            const int8_t *w = filter + oc * depth;
            int32_t acc = 0;
            for (int32_t d = 0; d < depth; d++) {
                acc += (x[d] + p->input_offset) * w[d];
            }
            if (bias) {
                acc += bias[oc];
            }
            acc = dsmn_mbqm(acc, q->multiplier[oc], q->shift[oc]) + p->output_offset;
            out[b * p->out_depth + oc] = (int8_t)dsmn_clamp(acc, p->act_min, p->act_max);
        }
    }
}
