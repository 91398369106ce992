/* Row-band entry points for time-tiled plans: the generated code calls a kernel on output rows
 * [y0, y0 + rows) of its full output window without spelling a parameter copy at every call
 * site. Each forwards to the one kernel that computes; nothing here does arithmetic. */
#include "dsmn_kernels.h"

/* A windowed kernel (params with out_y0, output dims `od`) on the band: the window moved down
 * by y0 and `rows` tall, as params `pb` and dims `ob` for `call`. */
#define WINDOW_BAND(params_type, call)                                                     \
    do {                                                                                   \
        params_type pb = *p;                                                               \
        dsmn_dims ob = *od;                                                                \
        pb.out_y0 += y0;                                                                   \
        ob.h = rows;                                                                       \
        call;                                                                              \
    } while (0)

/* A broadcast elementwise kernel on `rows` rows: bc's dims[1] replaced, as `b` for `call`. */
#define BROADCAST_BAND(call)                                                               \
    do {                                                                                   \
        dsmn_broadcast b = *bc;                                                            \
        b.dims[1] = rows;                                                                  \
        call;                                                                              \
    } while (0)

void dsmn_conv2d_rows_s8(const dsmn_conv_params *p, const dsmn_requant *q, const dsmn_dims *id,
                         const int8_t *in, const dsmn_dims *fd, const int8_t *filter,
                         const int32_t *bias, const dsmn_dims *od, int32_t y0, int32_t rows,
                         int8_t *out)
{
    WINDOW_BAND(dsmn_conv_params, dsmn_conv2d_s8(&pb, q, id, in, fd, filter, bias, &ob, out));
}

void dsmn_depthwise_conv2d_rows_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                                   const dsmn_dims *id, const int8_t *in, const dsmn_dims *fd,
                                   const int8_t *filter, const int32_t *bias, const dsmn_dims *od,
                                   int32_t y0, int32_t rows, int8_t *out)
{
    WINDOW_BAND(dsmn_conv_params,
                dsmn_depthwise_conv2d_s8(&pb, q, id, in, fd, filter, bias, &ob, out));
}

void dsmn_avg_pool_rows_s8(const dsmn_pool_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int8_t *out)
{
    WINDOW_BAND(dsmn_pool_params, dsmn_avg_pool_s8(&pb, id, in, &ob, out));
}

void dsmn_max_pool_rows_s8(const dsmn_pool_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int8_t *out)
{
    WINDOW_BAND(dsmn_pool_params, dsmn_max_pool_s8(&pb, id, in, &ob, out));
}

void dsmn_add_rows_s8(const dsmn_add_params *p, const dsmn_broadcast *bc, int32_t rows,
                      int32_t count, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    BROADCAST_BAND(dsmn_add_s8(p, &b, count, in1, in2, out));
}

void dsmn_mul_rows_s8(const dsmn_mul_params *p, const dsmn_broadcast *bc, int32_t rows,
                      int32_t count, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    BROADCAST_BAND(dsmn_mul_s8(p, &b, count, in1, in2, out));
}
