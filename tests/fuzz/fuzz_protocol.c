/* libFuzzer target for the board's protocol layer (firmware/app/protocol.c).
 *
 * Arbitrary bytes go in as if from the UART. Checks beyond the sanitizers: every byte the board
 * sends back parses as a valid frame (no garbage on the wire, whatever came in), an assembled
 * message never exceeds its buffer, and responses always fit the response buffer. The buffers
 * are small so the overflow and resend paths are reachable quickly.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define MAX_CHUNK 64u
#define MSG_CAP 300u

static uint8_t frame_buf[MAX_CHUNK + PROTO_CRC_BYTES];
static uint8_t msg_buf[MSG_CAP];
static uint8_t resp_buf[PROTO_HEADER_BYTES + 64 + PROTO_CRC_BYTES];
static proto_parser_t out_parser;
static uint8_t out_buf[PROTO_MAX_PAYLOAD + PROTO_CRC_BYTES];
static size_t out_bytes, out_frames;

static void sink(void *ctx, const uint8_t *data, size_t n)
{
    (void)ctx;
    for (size_t i = 0; i < n; i++) {
        proto_frame_t f;
        int r = proto_parser_feed(&out_parser, data[i], &f);
        if (r == PROTO_FEED_BAD)
            abort(); /* the board emitted a malformed frame */
        if (r == PROTO_FEED_FRAME)
            out_frames++;
    }
    out_bytes += n;
}

/* Streamed messages (type 0x12, AUDIO): the sink must see each in-order byte exactly once,
 * after a start, and never more bytes than the message claims. */
#define STREAM_HEAD 8u
static size_t streamed, stream_starts;

static void stream_sink(void *ctx, int start, const uint8_t *data, size_t n)
{
    (void)ctx;
    if (start) {
        if (data != NULL || n != 0)
            abort();
        streamed = 0;
        stream_starts++;
        return;
    }
    if (stream_starts == 0 || data == NULL || n == 0 || n > MAX_CHUNK)
        abort();
    streamed += n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_link_t link;
    proto_link_init(&link, sink, NULL, frame_buf, MAX_CHUNK, msg_buf, sizeof msg_buf, resp_buf,
                    sizeof resp_buf);
    proto_link_stream(&link, PROTO_AUDIO, STREAM_HEAD, stream_sink, NULL);
    proto_parser_init(&out_parser, out_buf, PROTO_MAX_PAYLOAD);
    out_bytes = out_frames = 0;
    streamed = stream_starts = 0;
    for (size_t i = 0; i < size; i++) {
        proto_msg_t m;
        if (!proto_link_feed(&link, data[i], &m))
            continue;
        if (m.type == PROTO_AUDIO) {
            /* head in msg, the rest streamed: together exactly the message's length */
            if (m.data != msg_buf || m.too_large || streamed + (m.len < STREAM_HEAD ? m.len : STREAM_HEAD) != m.len)
                abort();
        } else if (m.len > MSG_CAP || m.data != msg_buf) {
            abort();
        }
        uint8_t reply[8];
        proto_put_u32(reply, (uint32_t)m.len);
        proto_put_u32(reply + 4, proto_crc32(m.data, m.len));
        if (!proto_link_respond(&link, PROTO_PONG, m.msg_id, reply, sizeof reply))
            abort();
        /* a response too large for the buffer must be refused, not truncated or overflowed */
        if (proto_link_respond(&link, PROTO_HELLO, m.msg_id, msg_buf, 65))
            abort();
    }
    /* everything sent was whole frames: the checker is back at a frame boundary */
    if (out_parser.state != 0)
        abort();
    return 0;
}
