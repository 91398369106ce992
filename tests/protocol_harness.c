/* Host build of the firmware's protocol layer (firmware/app/protocol.c) for the tests.
 *
 *   protocol_harness vectors   print reference encodings, one hex line each
 *   protocol_harness parse     read stdin to the end through the frame parser; print one line
 *                              per event: "F type msg_id index count len crc32(payload)" or "B"
 *   protocol_harness serve     speak protocol v1 on stdin/stdout like a board whose "model"
 *                              returns, for INFER, the first 13 input bytes XOR 0x5A, and
 *                              whose HELLO payload is the bytes of the file in $HARNESS_HELLO;
 *                              AUDIO (0x12) is streamed: AUDIO_RESULT carries the number and the
 *                              CRC-32 of the streamed bytes as its two counters
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "protocol.h"

static void hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

static void fd_write(void *ctx, const uint8_t *data, size_t n)
{
    (void)ctx;
    while (n) {
        ssize_t w = write(1, data, n);
        if (w <= 0)
            exit(3);
        data += w;
        n -= (size_t)w;
    }
}

static int vectors(void)
{
    static const uint8_t check[] = "123456789";
    uint8_t frame[64], payload[5] = {1, 2, 3, 0xA5, 0x5A};
    printf("%08x\n", proto_crc32(check, 9));
    size_t n = proto_encode(frame, sizeof frame, PROTO_PING, 0x1234, 2, 3, payload, 5);
    hex(frame, n);
    n = proto_encode(frame, sizeof frame, PROTO_HELLO, 0, 0, 1, NULL, 0);
    hex(frame, n);
    printf("%zu\n", proto_encode(frame, 20, PROTO_PING, 1, 0, 1, payload, 5)); /* does not fit: 0 */
    return 0;
}

static uint32_t stream_crc, stream_bytes;

static void stream_sink(void *ctx, int start, const uint8_t *data, size_t n)
{
    (void)ctx;
    if (start) {
        stream_crc = 0;
        stream_bytes = 0;
        return;
    }
    stream_crc = proto_crc32_update(stream_crc, data, n);
    stream_bytes += (uint32_t)n;
}

static int serve(void)
{
    static uint8_t frame_buf[256 + 4], msg_buf[4096], resp_buf[1100], out[1024], hello[1024];
    size_t hello_len = 0;
    const char *hp = getenv("HARNESS_HELLO");
    if (hp) {
        FILE *f = fopen(hp, "rb");
        if (f) {
            hello_len = fread(hello, 1, sizeof hello, f);
            fclose(f);
        }
    }
    proto_link_t link;
    proto_link_init(&link, fd_write, NULL, frame_buf, 256, msg_buf, sizeof msg_buf, resp_buf, sizeof resp_buf);
    proto_link_stream(&link, PROTO_AUDIO, 8, stream_sink, NULL);
    fd_write(NULL, (const uint8_t *)"harness banner\r\n", 16);
    proto_link_respond(&link, PROTO_HELLO, 0, hello, (uint16_t)hello_len);
    uint8_t byte;
    while (read(0, &byte, 1) == 1) {
        proto_msg_t m;
        if (!proto_link_feed(&link, byte, &m))
            continue;
        if (m.too_large) {
            proto_put_u16(out, PROTO_ERR_TOO_LARGE);
            memcpy(out + 2, "too large", 9);
            proto_link_respond(&link, PROTO_ERROR, m.msg_id, out, 11);
        } else if (m.type == PROTO_HELLO) {
            proto_link_respond(&link, PROTO_HELLO, m.msg_id, hello, (uint16_t)hello_len);
        } else if (m.type == PROTO_PING) {
            proto_put_u32(out, (uint32_t)m.len);
            proto_put_u32(out + 4, proto_crc32(m.data, m.len));
            proto_link_respond(&link, PROTO_PONG, m.msg_id, out, 8);
        } else if (m.type == PROTO_AUDIO && m.len >= 8) {
            memcpy(out, m.data, 4);
            out[4] = 0;
            out[5] = 0;
            proto_put_u16(out + 6, 0);
            memset(out + 8, 0, 16);
            proto_put_u32(out + 8, stream_bytes);
            proto_put_u32(out + 16, stream_crc);
            proto_link_respond(&link, PROTO_AUDIO_RESULT, m.msg_id, out, 24);
        } else if (m.type == PROTO_INFER && m.len >= 8 + 13) {
            memcpy(out, m.data, 4);
            out[4] = 0;
            out[5] = 0;
            proto_put_u16(out + 6, 13);
            memset(out + 8, 0, 8);
            proto_put_u32(out + 8, (uint32_t)m.len);
            for (int i = 0; i < 13; i++)
                out[16 + i] = m.data[8 + i] ^ 0x5A;
            proto_link_respond(&link, PROTO_RESULT, m.msg_id, out, 16 + 13);
        } else {
            proto_put_u16(out, PROTO_ERR_UNKNOWN_TYPE);
            memcpy(out + 2, "unknown", 7);
            proto_link_respond(&link, PROTO_ERROR, m.msg_id, out, 9);
        }
    }
    return 0;
}

static int parse(void)
{
    static uint8_t buf[PROTO_MAX_PAYLOAD + PROTO_CRC_BYTES];
    proto_parser_t p;
    proto_parser_init(&p, buf, PROTO_MAX_PAYLOAD);
    int c;
    while ((c = getchar()) != EOF) {
        proto_frame_t f;
        int r = proto_parser_feed(&p, (uint8_t)c, &f);
        if (r == PROTO_FEED_FRAME)
            printf("F %u %u %u %u %u %08x\n", f.type, f.msg_id, f.index, f.count, f.len, proto_crc32(f.payload, f.len));
        else if (r == PROTO_FEED_BAD)
            printf("B\n");
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "parse") == 0)
        return parse();
    if (argc > 1 && strcmp(argv[1], "vectors") == 0)
        return vectors();
    if (argc > 1 && strcmp(argv[1], "serve") == 0)
        return serve();
    fprintf(stderr, "usage: %s vectors|parse|serve\n", argv[0]);
    return 2;
}
