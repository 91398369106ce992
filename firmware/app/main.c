/* The application loop: banner and HELLO at boot, then serve protocol v1 requests forever.
 * Knows the protocol and the runtime seam, never a register (that is firmware/boards/). */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "dsmn_config.h"
#include "protocol.h"
#include "runtime.h"

#define INFER_HEADER_BYTES 8u
#define MSG_BYTES (INFER_HEADER_BYTES + DSMN_CFG_INPUT_BYTES)
#define HELLO_MAX 1024u

static uint8_t frame_buf[DSMN_CFG_MAX_CHUNK + PROTO_CRC_BYTES];
static uint8_t msg_buf[MSG_BYTES] __attribute__((aligned(16)));
static uint8_t resp_buf[PROTO_HEADER_BYTES + HELLO_MAX + PROTO_CRC_BYTES];
static uint8_t payload[HELLO_MAX];
static int8_t output[DSMN_CFG_OUTPUT_BYTES] __attribute__((aligned(16)));
static proto_link_t link;
static int runtime_status;

static const uint8_t model_sha256[32] = DSMN_CFG_MODEL_SHA256;
static const uint16_t input_dims[4] = DSMN_CFG_INPUT_DIMS;
static const uint16_t output_dims[4] = DSMN_CFG_OUTPUT_DIMS;
static const char *const labels[DSMN_CFG_NUM_LABELS] = DSMN_CFG_LABELS;

static void uart_sink(void *ctx, const uint8_t *data, size_t n)
{
    (void)ctx;
    board_uart_write(data, n);
}

static size_t put_str(uint8_t *p, const char *s)
{
    size_t n = strlen(s);
    if (n > 255)
        n = 255;
    p[0] = (uint8_t)n;
    memcpy(p + 1, s, n);
    return n + 1;
}

static void put_f32(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    proto_put_u32(p, u);
}

static uint16_t build_hello(uint8_t *p)
{
    memset(p, 0, 84);
    p[0] = PROTO_VERSION;
    p[1] = DSMN_CFG_RUNTIME_ID;
    p[2] = (uint8_t)board_counter_kind();
    p[3] = DSMN_CFG_NUM_LABELS;
    proto_put_u32(p + 4, board_clock_hz());
    proto_put_u32(p + 8, runtime_arena_bytes());
    proto_put_u16(p + 12, DSMN_CFG_MAX_CHUNK);
    proto_put_u16(p + 14, (uint16_t)(MSG_BYTES > 0xFFFFu ? 0xFFFFu : MSG_BYTES));
    memcpy(p + 16, model_sha256, 32);
    p[48] = DSMN_CFG_INPUT_RANK;
    p[49] = 1; /* int8 */
    for (int i = 0; i < 4; i++)
        proto_put_u16(p + 50 + 2 * i, input_dims[i]);
    put_f32(p + 58, DSMN_CFG_INPUT_SCALE);
    proto_put_u32(p + 62, (uint32_t)(int32_t)DSMN_CFG_INPUT_ZERO_POINT);
    p[66] = DSMN_CFG_OUTPUT_RANK;
    p[67] = 1;
    for (int i = 0; i < 4; i++)
        proto_put_u16(p + 68 + 2 * i, output_dims[i]);
    put_f32(p + 76, DSMN_CFG_OUTPUT_SCALE);
    proto_put_u32(p + 80, (uint32_t)(int32_t)DSMN_CFG_OUTPUT_ZERO_POINT);
    size_t n = 84;
    n += put_str(p + n, DSMN_CFG_FIRMWARE_VERSION);
    n += put_str(p + n, DSMN_CFG_BOARD_NAME);
    n += put_str(p + n, DSMN_CFG_RUNTIME_NAME);
    for (int i = 0; i < DSMN_CFG_NUM_LABELS && n + 256 <= HELLO_MAX; i++)
        n += put_str(p + n, labels[i]);
    return (uint16_t)n;
}

static void send_error(uint16_t msg_id, uint16_t code, const char *text)
{
    proto_put_u16(payload, code);
    size_t n = strlen(text);
    memcpy(payload + 2, text, n);
    proto_link_respond(&link, PROTO_ERROR, msg_id, payload, (uint16_t)(2 + n));
}

static void handle_infer(const proto_msg_t *m)
{
    if (m->len < INFER_HEADER_BYTES || m->len - INFER_HEADER_BYTES != DSMN_CFG_INPUT_BYTES) {
        send_error(m->msg_id, PROTO_ERR_BAD_LENGTH, "INFER data is not the model's input size");
        return;
    }
    if (m->data[4] != 0) {
        send_error(m->msg_id, PROTO_ERR_BAD_KIND, "only INFER kind 0 (int8 tensor) is supported");
        return;
    }
    if (runtime_status != 0) {
        send_error(m->msg_id, PROTO_ERR_RUNTIME_INIT,
                   runtime_error_text()[0] ? runtime_error_text() : "runtime failed to initialise");
        return;
    }
    uint64_t t0 = board_counter_now();
    int status = runtime_invoke((const int8_t *)(m->data + INFER_HEADER_BYTES), output);
    uint64_t ticks = board_counter_now() - t0;
    if (status != 0) { /* the runtime's own words (TFLM: stage and TfLiteStatus), not a bare number */
        send_error(m->msg_id, PROTO_ERR_RUNTIME_INVOKE,
                   runtime_error_text()[0] ? runtime_error_text() : "runtime failed during inference");
        return;
    }

    memcpy(payload, m->data, 4); /* seq */
    payload[4] = (uint8_t)(status < 0 ? -status : status);
    payload[5] = (uint8_t)board_counter_kind();
    proto_put_u16(payload + 6, DSMN_CFG_OUTPUT_BYTES);
    proto_put_u32(payload + 8, (uint32_t)ticks);
    proto_put_u32(payload + 12, (uint32_t)(ticks >> 32));
    memcpy(payload + 16, output, DSMN_CFG_OUTPUT_BYTES);
    proto_link_respond(&link, PROTO_RESULT, m->msg_id, payload, 16 + DSMN_CFG_OUTPUT_BYTES);
}

static void handle(const proto_msg_t *m)
{
    if (m->too_large) {
        send_error(m->msg_id, PROTO_ERR_TOO_LARGE, "message larger than the board's buffer");
        return;
    }
    switch (m->type) {
    case PROTO_HELLO:
        proto_link_respond(&link, PROTO_HELLO, m->msg_id, payload, build_hello(payload));
        break;
    case PROTO_PING:
        proto_put_u32(payload, (uint32_t)m->len);
        proto_put_u32(payload + 4, proto_crc32(m->data, m->len));
        proto_link_respond(&link, PROTO_PONG, m->msg_id, payload, 8);
        break;
    case PROTO_INFER:
        handle_infer(m);
        break;
    default:
        send_error(m->msg_id, PROTO_ERR_UNKNOWN_TYPE, "unknown message type");
        break;
    }
}

int main(void)
{
    board_init();
    runtime_status = runtime_init();
    static const char banner[] = "\r\nDSMN firmware " DSMN_CFG_FIRMWARE_VERSION " board " DSMN_CFG_BOARD_NAME
                                 " runtime " DSMN_CFG_RUNTIME_NAME "\r\n";
    board_uart_write((const uint8_t *)banner, sizeof banner - 1);
    proto_link_init(&link, uart_sink, 0, frame_buf, DSMN_CFG_MAX_CHUNK, msg_buf, sizeof msg_buf,
                    resp_buf, sizeof resp_buf);
    proto_link_respond(&link, PROTO_HELLO, 0, payload, build_hello(payload));
    for (;;) {
        int c = board_uart_getc();
        if (c < 0) {
            board_idle();
            continue;
        }
        proto_msg_t m;
        if (proto_link_feed(&link, (uint8_t)c, &m))
            handle(&m);
    }
}
