/* Sparable on row bands (time-tiled plans): output rows [y0, y0 + rows) of the fused
 * depthwise pair + ADD + tail. The kernel itself (dsmn_sparable_s8) computes a whole window
 * whose input rows match its output rows, so a band is handed to it as the input window it
 * reads: the rows the taps of both convs reach above and below the band (clipped to the
 * tensor), with each conv's top padding reduced by the halo rows actually present. Rows
 * outside the window are then exactly the tensor's own padding, so the result is the same
 * integer arithmetic as the unbanded call; nothing here computes. */
#include "dsmn_kernels.h"

void dsmn_sparable_rows_s8(const dsmn_sparable_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int8_t *out)
{
    int32_t top = 0, bottom = 0;
    for (int32_t k = 0; k < 2; k++) {
        const int32_t pad = p->dw[k].pad_h;
        const int32_t reach = (p->filter_dims[k].h - 1) * p->dw[k].dilation_h - pad;
        top = pad > top ? pad : top;
        bottom = reach > bottom ? reach : bottom;
    }
    const int32_t above = y0 < top ? y0 : top;
    const int32_t r0 = y0 - above;
    int32_t r1 = y0 + rows + bottom;
    r1 = r1 < id->h ? r1 : id->h;
    dsmn_sparable_params pb = *p;
    pb.dw[0].pad_h -= above;
    pb.dw[1].pad_h -= above;
    dsmn_dims ib = *id, ob = *od;
    ib.h = r1 - r0;
    ob.h = rows;
    dsmn_sparable_s8(&pb, &ib, in + (int32_t)r0 * id->w * id->c, &ob, out);
}
