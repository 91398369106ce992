/* Row-band entry points for time-tiled plans: the generated code calls a kernel on output rows
 * [y0, y0 + rows) of its full output window without spelling a parameter copy at every call
 * site. Each forwards to the one kernel that computes; nothing here does arithmetic. */
#include "dsmn_kernels.h"

#include <stddef.h>

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

void dsmn_conv1x1_prep_rows_s8(const dsmn_conv1x1_prep *pp, const dsmn_conv_params *p,
                               const dsmn_dims *id, const int8_t *in, const dsmn_dims *od,
                               int32_t y0, int32_t rows, int8_t *out)
{
    WINDOW_BAND(dsmn_conv_params, dsmn_conv1x1_prep_s8(pp, &pb, id, in, &ob, out));
}

void dsmn_depthwise_conv2d_rows_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                                   const dsmn_dims *id, const int8_t *in, const dsmn_dims *fd,
                                   const int8_t *filter, const int32_t *bias, const dsmn_dims *od,
                                   int32_t y0, int32_t rows, int8_t *out)
{
    WINDOW_BAND(dsmn_conv_params,
                dsmn_depthwise_conv2d_s8(&pb, q, id, in, fd, filter, bias, &ob, out));
}

void dsmn_depthwise_conv2d_prep_rows_s8(const dsmn_dw_prep *pp, const dsmn_conv_params *p,
                                        const dsmn_requant *q, const dsmn_dims *id,
                                        const int8_t *in, const dsmn_dims *fd,
                                        const int8_t *filter, const int32_t *bias,
                                        const dsmn_dims *od, int32_t y0, int32_t rows, int8_t *out)
{
    WINDOW_BAND(dsmn_conv_params,
                dsmn_depthwise_conv2d_prep_s8(pp, &pb, q, id, in, fd, filter, bias, &ob, out));
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

/* Tiles (time- and mel-tiled plans): output rows [y0, y0 + rows) and columns [x0, x0 + cols)
 * of the window `od`. The input is held from column in_x0 of the whole input, in_w columns a
 * row (a strip-wide line buffer, or the whole tensor: in_x0 0, in_w its width); `in` is that
 * held column at row 0. The kernel runs in the held strip's own coordinates: the window moves
 * left by in_x0 (through out_x0, the remainder a stride does not divide through pad_w), and
 * columns outside the strip count as padding - which they are only at the tensor's true
 * edges, and the compiler sizes every strip so no tap reaches outside it elsewhere. The output
 * rows are out_w columns apart: cols for a strip-wide buffer (one call), a tensor's width when
 * the tile lands in a tensor held whole (one call per row). */
#define WINDOW_TILE(params_type, call)                                                     \
    do {                                                                                   \
        params_type pb = *p;                                                               \
        dsmn_dims ib = *id, ob = *od;                                                      \
        pb.out_x0 += x0 - in_x0 / pb.stride_w;                                             \
        pb.pad_w += in_x0 % pb.stride_w;                                                   \
        ib.w = in_w;                                                                       \
        ob.w = cols;                                                                       \
        if (out_w == cols) {                                                               \
            int8_t *o = out;                                                               \
            pb.out_y0 += y0;                                                               \
            ob.h = rows;                                                                   \
            call;                                                                          \
        } else {                                                                           \
            ob.h = 1;                                                                      \
            for (int32_t r = 0; r < rows; r++) {                                           \
                int8_t *o = out + (int32_t)r * out_w * od->c;                              \
                pb.out_y0 = p->out_y0 + y0 + r;                                            \
                call;                                                                      \
            }                                                                              \
        }                                                                                  \
    } while (0)

void dsmn_conv2d_tile_s8(const dsmn_conv_params *p, const dsmn_requant *q, const dsmn_dims *id,
                         const int8_t *in, const dsmn_dims *fd, const int8_t *filter,
                         const int32_t *bias, const dsmn_dims *od, int32_t y0, int32_t rows,
                         int32_t x0, int32_t cols, int32_t in_x0, int32_t in_w, int32_t out_w,
                         int8_t *out)
{
    WINDOW_TILE(dsmn_conv_params, dsmn_conv2d_s8(&pb, q, &ib, in, fd, filter, bias, &ob, o));
}

void dsmn_conv1x1_prep_tile_s8(const dsmn_conv1x1_prep *pp, const dsmn_conv_params *p,
                               const dsmn_dims *id, const int8_t *in, const dsmn_dims *od,
                               int32_t y0, int32_t rows, int32_t x0, int32_t cols, int32_t in_x0,
                               int32_t in_w, int32_t out_w, int8_t *out)
{
    WINDOW_TILE(dsmn_conv_params, dsmn_conv1x1_prep_s8(pp, &pb, &ib, in, &ob, o));
}

void dsmn_depthwise_conv2d_tile_s8(const dsmn_conv_params *p, const dsmn_requant *q,
                                   const dsmn_dims *id, const int8_t *in, const dsmn_dims *fd,
                                   const int8_t *filter, const int32_t *bias, const dsmn_dims *od,
                                   int32_t y0, int32_t rows, int32_t x0, int32_t cols,
                                   int32_t in_x0, int32_t in_w, int32_t out_w, int8_t *out)
{
    WINDOW_TILE(dsmn_conv_params,
                dsmn_depthwise_conv2d_window_s8(&pb, q, &ib, in, fd, filter, bias, &ob, o));
}

void dsmn_depthwise_conv2d_prep_tile_s8(const dsmn_dw_prep *pp, const dsmn_conv_params *p,
                                        const dsmn_requant *q, const dsmn_dims *id,
                                        const int8_t *in, const dsmn_dims *fd,
                                        const int8_t *filter, const int32_t *bias,
                                        const dsmn_dims *od, int32_t y0, int32_t rows, int32_t x0,
                                        int32_t cols, int32_t in_x0, int32_t in_w, int32_t out_w,
                                        int8_t *out)
{
    WINDOW_TILE(dsmn_conv_params,
                dsmn_depthwise_conv2d_prep_s8(pp, &pb, q, &ib, in, fd, filter, bias, &ob, o));
}

void dsmn_avg_pool_tile_s8(const dsmn_pool_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int32_t x0,
                           int32_t cols, int32_t in_x0, int32_t in_w, int32_t out_w, int8_t *out)
{
    WINDOW_TILE(dsmn_pool_params, dsmn_avg_pool_s8(&pb, &ib, in, &ob, o));
}

void dsmn_max_pool_tile_s8(const dsmn_pool_params *p, const dsmn_dims *id, const int8_t *in,
                           const dsmn_dims *od, int32_t y0, int32_t rows, int32_t x0,
                           int32_t cols, int32_t in_x0, int32_t in_w, int32_t out_w, int8_t *out)
{
    WINDOW_TILE(dsmn_pool_params, dsmn_max_pool_s8(&pb, &ib, in, &ob, o));
}

/* An elementwise kernel on a tile of `rows` rows of `count` elements (a strip's columns
 * times channels); each operand's rows are s1 / s2 / so bytes apart (0: broadcast along
 * time). Rows that are contiguous in all three run as one call; otherwise one call a row,
 * with bc (if any) narrowed to one row of `cols` columns. */
#define ELEMENTWISE_TILE(call)                                                             \
    do {                                                                                   \
        if (!bc && s1 == count && s2 == count && so == count) {                            \
            const int8_t *a = in1, *b2 = in2;                                              \
            int8_t *o = out;                                                               \
            const int32_t n = rows * count;                                                \
            const dsmn_broadcast *bb = NULL;                                               \
            call;                                                                          \
            break;                                                                         \
        }                                                                                  \
        dsmn_broadcast b = {{0}, {0}, {0}};                                                \
        if (bc) {                                                                          \
            b = *bc;                                                                       \
        }                                                                                  \
        b.dims[0] = 1;                                                                     \
        b.dims[1] = 1;                                                                     \
        b.dims[2] = cols;                                                                  \
        const dsmn_broadcast *bb = bc ? &b : NULL;                                         \
        const int32_t n = count;                                                           \
        for (int32_t r = 0; r < rows; r++) {                                               \
            const int8_t *a = in1 + (int32_t)r * s1, *b2 = in2 + (int32_t)r * s2;          \
            int8_t *o = out + (int32_t)r * so;                                             \
            call;                                                                          \
        }                                                                                  \
    } while (0)

void dsmn_add_tile_s8(const dsmn_add_params *p, const dsmn_broadcast *bc, int32_t rows,
                      int32_t cols, int32_t count, const int8_t *in1, int32_t s1,
                      const int8_t *in2, int32_t s2, int8_t *out, int32_t so)
{
    ELEMENTWISE_TILE(dsmn_add_s8(p, bb, n, a, b2, o));
}

void dsmn_add_tabled_tile_s8(const dsmn_add_tabled_params *t, int32_t rows, int32_t cols,
                             int32_t count, const int8_t *in1, int32_t s1, const int8_t *in2,
                             int32_t s2, int8_t *out, int32_t so)
{
    const dsmn_broadcast *bc = NULL;
    (void)cols;
    ELEMENTWISE_TILE(dsmn_add_tabled_s8(t, n, a, b2, o); (void)bb);
}

void dsmn_mul_tile_s8(const dsmn_mul_params *p, const dsmn_broadcast *bc, int32_t rows,
                      int32_t cols, int32_t count, const int8_t *in1, int32_t s1,
                      const int8_t *in2, int32_t s2, int8_t *out, int32_t so)
{
    ELEMENTWISE_TILE(dsmn_mul_s8(p, bb, n, a, b2, o));
}

/* MEAN's accumulation over a tile: `rows` rows of `cols` pixels of `inner` channels, rows
 * `stride` bytes apart. */
void dsmn_mean_accumulate_tile_s8(int32_t inner, int32_t rows, int32_t cols, const int8_t *in,
                                  int32_t stride, int32_t *acc)
{
    if (stride == cols * inner) {
        dsmn_mean_accumulate_s8(inner, rows * cols, in, acc);
        return;
    }
    for (int32_t r = 0; r < rows; r++) {
        dsmn_mean_accumulate_s8(inner, cols, in + (int32_t)r * stride, acc);
    }
}
