/* Protocol v1 (revision 2), board side: framing, CRC, chunk reassembly with ACK/NAK, windowed
 * senders, streamed messages (docs/protocol.md).
 *
 * Pure C with no hardware access, so the same file builds for the host (unit tests, libFuzzer).
 * Bytes go out through a write callback; bytes come in one at a time through proto_link_feed().
 */
#ifndef DSMN_PROTOCOL_H
#define DSMN_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1u  /* wire format: v1 hosts read every v1 frame and HELLO field */
#define PROTO_REVISION 2u /* HELLO extension: window, AUDIO and INPUT requests */
#define PROTO_FLAG_WINDOWED 0x01u /* frame flags bit 0: the host keeps several chunks in flight */
#define PROTO_SYNC0 0xA5u
#define PROTO_SYNC1 0x5Au
#define PROTO_HEADER_BYTES 12u /* sync(2) type flags msg_id index count len */
#define PROTO_CRC_BYTES 4u
#define PROTO_MAX_PAYLOAD 1024u /* absolute limit of the spec; boards may accept less */

enum proto_type {
    PROTO_HELLO = 0x01,
    PROTO_PING = 0x02,
    PROTO_PONG = 0x03,
    PROTO_ACK = 0x06,
    PROTO_NAK = 0x15,
    PROTO_INFER = 0x10,
    PROTO_RESULT = 0x11,
    PROTO_AUDIO = 0x12,        /* host->board: u32 seq, u8 kind, 3 bytes 0, int16 PCM (streamed) */
    PROTO_AUDIO_RESULT = 0x13, /* board->host: RESULT with front-end and network counters */
    PROTO_INPUT = 0x14,        /* both: read the int8 input the front end computed */
    PROTO_ERROR = 0x7F,
};

enum proto_error_code {
    PROTO_ERR_UNKNOWN_TYPE = 1,
    PROTO_ERR_BAD_LENGTH = 2,
    PROTO_ERR_TOO_LARGE = 3,
    PROTO_ERR_RUNTIME_INIT = 4,
    PROTO_ERR_BAD_KIND = 5,
    PROTO_ERR_NO_FRONTEND = 6,
    PROTO_ERR_RUNTIME_INVOKE = 7,
};

uint32_t proto_crc32_update(uint32_t crc, const uint8_t *data, size_t n);
uint32_t proto_crc32(const uint8_t *data, size_t n);

typedef void (*proto_write_fn)(void *ctx, const uint8_t *data, size_t n);

/* Encodes one frame into out (capacity cap); returns its length, or 0 if it does not fit. */
size_t proto_encode(uint8_t *out, size_t cap, uint8_t type, uint16_t msg_id, uint16_t index,
                    uint16_t count, const uint8_t *payload, uint16_t len);

/* Frame parser: a byte-at-a-time state machine so the UART ring buffer can be drained
 * without ever holding more than one frame. */
typedef struct {
    uint8_t type, flags;
    uint16_t msg_id, index, count, len;
    const uint8_t *payload; /* points into the parser's buffer; valid until the next feed */
} proto_frame_t;

enum proto_feed_result {
    PROTO_FEED_NONE = 0,   /* need more bytes */
    PROTO_FEED_FRAME = 1,  /* *frame is valid */
    PROTO_FEED_BAD = 2,    /* a frame started but its header or CRC was wrong */
};

typedef struct {
    uint8_t state;
    uint8_t header[PROTO_HEADER_BYTES];
    uint16_t pos;
    uint16_t max_payload;
    uint8_t *buf; /* max_payload + 4 bytes: payload and CRC */
} proto_parser_t;

void proto_parser_init(proto_parser_t *p, uint8_t *buf, uint16_t max_payload);
int proto_parser_feed(proto_parser_t *p, uint8_t byte, proto_frame_t *frame);

/* A streamed message type is not reassembled: the bytes after its first `head` bytes go to
 * the sink chunk by chunk, in order and exactly once (`start` = 1 when chunk 0 (re)starts the
 * message, before its data), so an 88 KB clip needs no 88 KB buffer. */
typedef void (*proto_stream_fn)(void *ctx, int start, const uint8_t *data, size_t n);

/* A link reassembles chunked requests, acknowledges them, and remembers the last response so
 * a host NAK can have it resent byte for byte. */
typedef struct {
    proto_parser_t parser;
    proto_write_fn write;
    void *write_ctx;
    uint8_t *msg;       /* reassembly buffer */
    size_t msg_cap;
    size_t msg_len;
    uint16_t msg_id;
    uint16_t expected;  /* next chunk index */
    uint16_t count;     /* chunks of the current message; 0 = none in progress */
    uint8_t msg_type;
    uint8_t overflow;   /* the current message did not fit in msg */
    uint8_t windowed;   /* the current message's sender keeps several chunks in flight */
    uint8_t nak_sent;   /* windowed: NAK(expected) already sent in this round of a gap */
    uint16_t gap_high;  /* windowed: highest out-of-order index seen in this round */
    uint8_t stream_type;   /* 0: none */
    uint16_t stream_head;  /* bytes of a streamed message kept in msg (its header) */
    proto_stream_fn stream;
    void *stream_ctx;
    uint8_t *resp;      /* last response frame */
    size_t resp_cap;
    size_t resp_len;
} proto_link_t;

typedef struct {
    uint8_t type;
    uint16_t msg_id;
    const uint8_t *data;
    size_t len;
    int too_large; /* the message was longer than the buffer: data is truncated */
} proto_msg_t;

/* frame_buf: max_chunk + 4 bytes; resp_buf: PROTO_HEADER_BYTES + largest response + 4. */
void proto_link_init(proto_link_t *l, proto_write_fn write, void *ctx, uint8_t *frame_buf,
                     uint16_t max_chunk, uint8_t *msg_buf, size_t msg_cap, uint8_t *resp_buf,
                     size_t resp_cap);
/* Messages of `type` are streamed to `fn` after their first `head` bytes (see proto_stream_fn). */
void proto_link_stream(proto_link_t *l, uint8_t type, uint16_t head, proto_stream_fn fn, void *ctx);
/* Returns 1 when a complete request is in *msg (valid until the next call). For a streamed
 * message, data holds its head and len counts all its bytes. */
int proto_link_feed(proto_link_t *l, uint8_t byte, proto_msg_t *msg);
/* Sends a response frame (single chunk) and keeps it for resends; returns 0 if too large. */
int proto_link_respond(proto_link_t *l, uint8_t type, uint16_t msg_id, const uint8_t *payload,
                       uint16_t len);

/* Little-endian helpers shared by the app's message builders. */
static inline void proto_put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void proto_put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline uint16_t proto_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t proto_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#endif
