/* The application loop: banner and HELLO at boot, then serve protocol v1 requests forever.
 * Knows the protocol, the runtime seam and the sample-source seam, never a register (that is
 * firmware/boards/). With DSMN_FRONTEND the board also hears audio: AUDIO streams one clip's
 * PCM from the UART sample source through the front end into the network. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "dsmn_config.h"
#include "protocol.h"
#include "ring.h"
#include "runtime.h"
#include "sample_source.h"
#ifdef DSMN_FRONTEND
#include "dsmn_frontend.h"
#endif

#define INFER_HEADER_BYTES 8u
#define MSG_BYTES (INFER_HEADER_BYTES + DSMN_CFG_INPUT_BYTES)
#define HELLO_MAX 1024u

/* A piece of work's own time: counter ticks since work_start(), less the UART receive
 * interrupts taken meanwhile (bytes of a pipelined request or of the clip being streamed
 * arrive while the board computes; they are the line's time, not the work's). */
typedef struct {
    uint64_t t0;
    uint32_t isr0;
} work_clock_t;

static work_clock_t work_start(void)
{
    work_clock_t c;
    c.isr0 = board_rx_isr_ticks;
    c.t0 = board_counter_now();
    return c;
}

static uint64_t work_ticks(work_clock_t c)
{
    uint64_t all = board_counter_now() - c.t0;
    uint32_t isr = board_rx_isr_ticks - c.isr0;
    return all > isr ? all - isr : 0;
}

static uint8_t frame_buf[DSMN_CFG_MAX_CHUNK + PROTO_CRC_BYTES];
static uint8_t msg_buf[MSG_BYTES] __attribute__((aligned(16)));
static uint8_t resp_buf[PROTO_HEADER_BYTES + HELLO_MAX + PROTO_CRC_BYTES];
static uint8_t payload[HELLO_MAX];
static int8_t output[DSMN_CFG_OUTPUT_BYTES] __attribute__((aligned(16)));
static proto_link_t link;
static int runtime_status;

/* Chunks a windowed host may have in flight: as many whole frames as the UART ring holds, so
 * the ring cannot overflow while the app is busy (transforming a frame, say). */
#define WINDOW_CHUNKS (RING_BYTES / (DSMN_CFG_MAX_CHUNK + PROTO_HEADER_BYTES + PROTO_CRC_BYTES))
#define HELLO_EXT_BYTES 12u
#define FEATURE_AUDIO 0x01u
/* Pipelining: the app never parses while it computes, so a host may send the next request's
 * first window meanwhile; it waits in the UART ring (WINDOW_CHUNKS whole frames fit) and the
 * last response stays resendable until that request completes. No second input buffer is
 * needed: msg_buf is written only after the response is out. */
#define FEATURE_PIPELINE 0x02u
#ifdef DSMN_FRONTEND
static void *fe_scratch(uint32_t *bytes);
#endif

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
    for (int i = 0; i < DSMN_CFG_NUM_LABELS && n + 256 + HELLO_EXT_BYTES <= HELLO_MAX; i++)
        n += put_str(p + n, labels[i]);
    /* Revision 2 extension after the labels (v1 hosts stop reading at the last label). */
    uint32_t fe_bytes = 0;
    uint8_t features = WINDOW_CHUNKS > 1 ? FEATURE_PIPELINE : 0;
#ifdef DSMN_FRONTEND
    uint32_t have = 0;
    fe_scratch(&have);
    fe_bytes = (uint32_t)dsmn_fe_scratch_bytes();
    if (have >= fe_bytes)
        features |= FEATURE_AUDIO;
#endif
    p[n] = PROTO_REVISION;
    p[n + 1] = WINDOW_CHUNKS > 255 ? 255 : (uint8_t)WINDOW_CHUNKS;
    p[n + 2] = features;
    p[n + 3] = 0;
    proto_put_u32(p + n + 4, features ? 44100u : 0u);
    proto_put_u32(p + n + 8, fe_bytes);
    n += HELLO_EXT_BYTES;
    return (uint16_t)n;
}

static void send_error(uint16_t msg_id, uint16_t code, const char *text)
{
    proto_put_u16(payload, code);
    size_t n = strlen(text);
    memcpy(payload + 2, text, n);
    proto_link_respond(&link, PROTO_ERROR, msg_id, payload, (uint16_t)(2 + n));
}

/* INFER and AUDIO both need an initialised runtime; if it failed, say so with the runtime's own
 * account (TFLM's stage and TfLiteStatus) where it has one. */
static int runtime_ready(uint16_t msg_id)
{
    if (runtime_status == 0)
        return 1;
    send_error(msg_id, PROTO_ERR_RUNTIME_INIT,
               runtime_error_text()[0] ? runtime_error_text() : "runtime failed to initialise");
    return 0;
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
    if (!runtime_ready(m->msg_id))
        return;
    work_clock_t work = work_start();
    int status = runtime_invoke((const int8_t *)(m->data + INFER_HEADER_BYTES), output);
    uint64_t ticks = work_ticks(work);
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

#ifdef DSMN_FRONTEND
#if DSMN_CFG_INPUT_BYTES != DSMN_FE_OUTPUT_BYTES
#error the front end computes a 44x256x2 input; this model takes another size (build without it)
#endif
#define AUDIO_HEADER_BYTES 8u
#define AUDIO_BYTES (AUDIO_HEADER_BYTES + 2u * DSMN_FE_CLIP_SAMPLES)
#ifndef DSMN_FE_OWN_SCRATCH_BYTES
#define DSMN_FE_OWN_SCRATCH_BYTES 0
#endif
#if DSMN_FE_OWN_SCRATCH_BYTES > 0
/* The runtime's arena is too small (or not shareable): the front end gets its own. */
static uint8_t fe_own_scratch[DSMN_FE_OWN_SCRATCH_BYTES] __attribute__((aligned(16)));
#endif
static dsmn_fe_t fe;
static int fe_status = -1;   /* dsmn_fe_begin's result for the clip being streamed */
static int fe_have_input;    /* msg_buf holds the input the front end computed last */
static uint64_t fe_ticks;
/* The front end's int8 output: where an INFER's tensor would be, outside the arena. */
#define FE_INPUT ((int8_t *)(msg_buf + INFER_HEADER_BYTES))

static void *fe_scratch(uint32_t *bytes)
{
#if DSMN_FE_OWN_SCRATCH_BYTES > 0
    *bytes = sizeof fe_own_scratch;
    return fe_own_scratch;
#else
    return runtime_scratch(bytes);
#endif
}

/* The UART sample source: the PCM bytes of the AUDIO chunk being delivered (little-endian;
 * a sample may straddle two chunks). */
typedef struct {
    sample_source_t base;
    const uint8_t *p;
    size_t n;
    uint8_t odd, odd_byte;
} uart_source_t;

static size_t uart_source_read(sample_source_t *src, int16_t *dst, size_t max)
{
    uart_source_t *u = (uart_source_t *)src;
    size_t k = 0;
    while (k < max && u->n) {
        if (u->odd) {
            dst[k++] = (int16_t)(uint16_t)(u->odd_byte | (u->p[0] << 8));
            u->odd = 0;
            u->p++;
            u->n--;
        } else if (u->n >= 2) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* The wire's byte order is the core's: whole samples are one copy. */
            size_t whole = u->n / 2u < max - k ? u->n / 2u : max - k;
            memcpy(dst + k, u->p, whole * 2u);
            k += whole;
            u->p += whole * 2u;
            u->n -= whole * 2u;
#else
            dst[k++] = (int16_t)(uint16_t)(u->p[0] | (u->p[1] << 8));
            u->p += 2;
            u->n -= 2;
#endif
        } else {
            u->odd = 1;
            u->odd_byte = u->p[0];
            u->n = 0;
        }
    }
    return k;
}

static uart_source_t uart_source = {{"uart", uart_source_read}, 0, 0, 0, 0};

/* Moves whatever the source has into the front end (which transforms completed frames). */
static void frontend_drain(sample_source_t *src)
{
    int16_t buf[256];
    size_t n;
    work_clock_t work = work_start();
    while ((n = src->read(src, buf, 256)) > 0)
        dsmn_fe_push(&fe, buf, n);
    fe_ticks += work_ticks(work);
}

static void audio_stream(void *ctx, int start, const uint8_t *data, size_t n)
{
    (void)ctx;
    if (start) {
        uint32_t bytes = 0;
        void *scratch = fe_scratch(&bytes);
        work_clock_t work = work_start();
        fe_status = dsmn_fe_begin(&fe, scratch, bytes, DSMN_CFG_INPUT_SCALE, DSMN_CFG_INPUT_ZERO_POINT);
        fe_ticks = work_ticks(work);
        fe_have_input = 0;
        uart_source.odd = 0;
        return;
    }
    uart_source.p = data;
    uart_source.n = n;
    if (fe_status == 0)
        frontend_drain(&uart_source.base);
}

static void handle_audio(const proto_msg_t *m)
{
    if (m->len != AUDIO_BYTES) {
        send_error(m->msg_id, PROTO_ERR_BAD_LENGTH, "AUDIO data is not 44100 int16 samples");
        return;
    }
    if (m->data[4] != 0) {
        send_error(m->msg_id, PROTO_ERR_BAD_KIND, "only AUDIO kind 0 (int16 PCM, 44.1 kHz) is supported");
        return;
    }
    if (fe_status != 0) {
        send_error(m->msg_id, PROTO_ERR_NO_FRONTEND, "front end scratch does not fit the runtime's arena");
        return;
    }
    if (!runtime_ready(m->msg_id))
        return;
    work_clock_t work = work_start();
    int fe_result = dsmn_fe_end(&fe, FE_INPUT);
    fe_ticks += work_ticks(work);
    fe_status = -1; /* the arena is the network's again */
    if (fe_result != 0) {
        send_error(m->msg_id, PROTO_ERR_BAD_LENGTH, "AUDIO data is not 44100 int16 samples");
        return;
    }
    fe_have_input = 1;
    work = work_start();
    int status = runtime_invoke(FE_INPUT, output);
    uint64_t ticks = work_ticks(work);

    memcpy(payload, m->data, 4); /* seq */
    payload[4] = (uint8_t)(status < 0 ? -status : status);
    payload[5] = (uint8_t)board_counter_kind();
    proto_put_u16(payload + 6, DSMN_CFG_OUTPUT_BYTES);
    proto_put_u32(payload + 8, (uint32_t)ticks);
    proto_put_u32(payload + 12, (uint32_t)(ticks >> 32));
    proto_put_u32(payload + 16, (uint32_t)fe_ticks);
    proto_put_u32(payload + 20, (uint32_t)(fe_ticks >> 32));
    memcpy(payload + 24, output, DSMN_CFG_OUTPUT_BYTES);
    proto_link_respond(&link, PROTO_AUDIO_RESULT, m->msg_id, payload, 24 + DSMN_CFG_OUTPUT_BYTES);
}

/* INPUT: u32 offset, u16 length -> u32 offset, u16 n, n bytes of the front end's last input. */
static void handle_input(const proto_msg_t *m)
{
    if (m->len != 6) {
        send_error(m->msg_id, PROTO_ERR_BAD_LENGTH, "INPUT request is u32 offset, u16 length");
        return;
    }
    if (!fe_have_input) {
        send_error(m->msg_id, PROTO_ERR_NO_FRONTEND, "no front-end input: send AUDIO first");
        return;
    }
    uint32_t off = proto_get_u32(m->data);
    uint32_t n = proto_get_u16(m->data + 4);
    if (off > DSMN_FE_OUTPUT_BYTES)
        off = DSMN_FE_OUTPUT_BYTES;
    if (n > DSMN_FE_OUTPUT_BYTES - off)
        n = DSMN_FE_OUTPUT_BYTES - off;
    if (n > HELLO_MAX - 6u)
        n = HELLO_MAX - 6u;
    proto_put_u32(payload, off);
    proto_put_u16(payload + 4, (uint16_t)n);
    memcpy(payload + 6, FE_INPUT + off, n);
    proto_link_respond(&link, PROTO_INPUT, m->msg_id, payload, (uint16_t)(6 + n));
}
#endif

static void handle(const proto_msg_t *m)
{
#ifdef DSMN_FRONTEND
    if (m->type != PROTO_INPUT && m->type != PROTO_HELLO)
        fe_have_input = fe_have_input && m->type == PROTO_AUDIO; /* PING/INFER overwrite it */
#endif
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
#ifdef DSMN_FRONTEND
    case PROTO_AUDIO:
        handle_audio(m);
        break;
    case PROTO_INPUT:
        handle_input(m);
        break;
#endif
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
#ifdef DSMN_FRONTEND
    proto_link_stream(&link, PROTO_AUDIO, AUDIO_HEADER_BYTES, audio_stream, 0);
#endif
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
