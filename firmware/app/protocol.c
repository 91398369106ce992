#include "protocol.h"

#include <string.h>

/* A 16-entry table: 64 bytes of flash instead of 1 KiB, and fast enough for UART rates. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t proto_crc32_update(uint32_t crc, const uint8_t *data, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0xFu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0xFu];
    }
    return ~crc;
}

uint32_t proto_crc32(const uint8_t *data, size_t n) { return proto_crc32_update(0, data, n); }

size_t proto_encode(uint8_t *out, size_t cap, uint8_t type, uint16_t msg_id, uint16_t index,
                    uint16_t count, const uint8_t *payload, uint16_t len)
{
    size_t total = PROTO_HEADER_BYTES + (size_t)len + PROTO_CRC_BYTES;
    if (len > PROTO_MAX_PAYLOAD || total > cap)
        return 0;
    out[0] = PROTO_SYNC0;
    out[1] = PROTO_SYNC1;
    out[2] = type;
    out[3] = 0;
    proto_put_u16(out + 4, msg_id);
    proto_put_u16(out + 6, index);
    proto_put_u16(out + 8, count);
    proto_put_u16(out + 10, len);
    if (len)
        memcpy(out + PROTO_HEADER_BYTES, payload, len);
    proto_put_u32(out + PROTO_HEADER_BYTES + len, proto_crc32(out + 2, PROTO_HEADER_BYTES - 2 + len));
    return total;
}

enum { ST_SYNC0, ST_SYNC1, ST_HEADER, ST_BODY };

void proto_parser_init(proto_parser_t *p, uint8_t *buf, uint16_t max_payload)
{
    memset(p, 0, sizeof *p);
    p->buf = buf;
    p->max_payload = max_payload > PROTO_MAX_PAYLOAD ? PROTO_MAX_PAYLOAD : max_payload;
    p->state = ST_SYNC0;
}

int proto_parser_feed(proto_parser_t *p, uint8_t byte, proto_frame_t *frame)
{
    switch (p->state) {
    case ST_SYNC0:
        if (byte == PROTO_SYNC0)
            p->state = ST_SYNC1;
        return PROTO_FEED_NONE;
    case ST_SYNC1:
        /* A5 A5 5A must still sync: stay armed on a repeated first sync byte. */
        p->state = byte == PROTO_SYNC1 ? ST_HEADER : (byte == PROTO_SYNC0 ? ST_SYNC1 : ST_SYNC0);
        p->header[0] = PROTO_SYNC0;
        p->header[1] = PROTO_SYNC1;
        p->pos = 2;
        return PROTO_FEED_NONE;
    case ST_HEADER: {
        p->header[p->pos++] = byte;
        if (p->pos < PROTO_HEADER_BYTES)
            return PROTO_FEED_NONE;
        uint16_t index = proto_get_u16(p->header + 6);
        uint16_t count = proto_get_u16(p->header + 8);
        uint16_t len = proto_get_u16(p->header + 10);
        p->state = ST_SYNC0;
        if (len > p->max_payload || count == 0 || index >= count)
            return PROTO_FEED_BAD;
        p->pos = 0;
        p->state = ST_BODY;
        return PROTO_FEED_NONE;
    }
    case ST_BODY: {
        uint16_t len = proto_get_u16(p->header + 10);
        p->buf[p->pos++] = byte;
        if (p->pos < (uint32_t)len + PROTO_CRC_BYTES)
            return PROTO_FEED_NONE;
        p->state = ST_SYNC0;
        uint32_t crc = proto_crc32_update(0, p->header + 2, PROTO_HEADER_BYTES - 2);
        crc = proto_crc32_update(crc, p->buf, len);
        if (crc != proto_get_u32(p->buf + len))
            return PROTO_FEED_BAD;
        frame->type = p->header[2];
        frame->flags = p->header[3];
        frame->msg_id = proto_get_u16(p->header + 4);
        frame->index = proto_get_u16(p->header + 6);
        frame->count = proto_get_u16(p->header + 8);
        frame->len = len;
        frame->payload = p->buf;
        return PROTO_FEED_FRAME;
    }
    default:
        p->state = ST_SYNC0;
        return PROTO_FEED_NONE;
    }
}

void proto_link_init(proto_link_t *l, proto_write_fn write, void *ctx, uint8_t *frame_buf,
                     uint16_t max_chunk, uint8_t *msg_buf, size_t msg_cap, uint8_t *resp_buf,
                     size_t resp_cap)
{
    memset(l, 0, sizeof *l);
    proto_parser_init(&l->parser, frame_buf, max_chunk);
    l->write = write;
    l->write_ctx = ctx;
    l->msg = msg_buf;
    l->msg_cap = msg_cap;
    l->resp = resp_buf;
    l->resp_cap = resp_cap;
}

void proto_link_stream(proto_link_t *l, uint8_t type, uint16_t head, proto_stream_fn fn, void *ctx)
{
    l->stream_type = type;
    l->stream_head = head <= l->msg_cap ? head : (uint16_t)l->msg_cap;
    l->stream = fn;
    l->stream_ctx = ctx;
}

static void send_control(proto_link_t *l, uint8_t type, uint16_t msg_id, uint16_t index)
{
    uint8_t frame[PROTO_HEADER_BYTES + 2 + PROTO_CRC_BYTES];
    uint8_t payload[2];
    proto_put_u16(payload, index);
    size_t n = proto_encode(frame, sizeof frame, type, msg_id, 0, 1, payload, 2);
    l->write(l->write_ctx, frame, n);
}

/* NAK(expected). A windowed sender goes back to `expected` on a NAK; the chunks it had in
 * flight behind the lost one then arrive out of order and would each NAK again, sending it
 * back again and again, so within one round of a gap only the first NAKs. A round ends when
 * an index at or below the highest seen since arrives: the sender has gone back (its resend
 * of `expected` was lost too) and needs a new NAK. `index` is -1 for a frame too damaged to
 * say. A stop-and-wait sender has one chunk in flight: every NAK is news to it. */
static void send_nak(proto_link_t *l, int32_t index)
{
    if (l->windowed && l->count) {
        if (l->nak_sent && (index < 0 || (uint32_t)index > l->gap_high)) {
            if (index >= 0)
                l->gap_high = (uint16_t)index;
            return;
        }
        l->nak_sent = 1;
        l->gap_high = index < 0 ? l->expected : (uint16_t)index;
    }
    send_control(l, PROTO_NAK, l->msg_id, l->count ? l->expected : 0);
}

int proto_link_feed(proto_link_t *l, uint8_t byte, proto_msg_t *msg)
{
    proto_frame_t f;
    int r = proto_parser_feed(&l->parser, byte, &f);
    if (r == PROTO_FEED_NONE)
        return 0;
    if (r == PROTO_FEED_BAD) {
        send_nak(l, -1);
        return 0;
    }
    if (f.type == PROTO_NAK) {
        if (l->resp_len)
            l->write(l->write_ctx, l->resp, l->resp_len);
        return 0;
    }
    if (f.type == PROTO_ACK)
        return 0; /* the host never needs to acknowledge; tolerate it */

    int same = l->count != 0 && f.msg_id == l->msg_id && f.type == l->msg_type && f.count == l->count;
    if (f.index == 0 && !(same && l->expected > 0 && (f.flags & PROTO_FLAG_WINDOWED))) {
        l->msg_id = f.msg_id;
        l->msg_type = f.type;
        l->count = f.count;
        l->expected = 0;
        l->msg_len = 0;
        l->overflow = 0;
        l->windowed = (f.flags & PROTO_FLAG_WINDOWED) != 0;
        l->nak_sent = 0;
        if (l->stream && f.type == l->stream_type)
            l->stream(l->stream_ctx, 1, NULL, 0);
    } else if (!same || f.index > l->expected) {
        send_nak(l, same ? (int32_t)f.index : -1);
        return 0;
    }
    if (f.index < l->expected) { /* duplicate: the host missed our ACK */
        send_control(l, PROTO_ACK, f.msg_id, (uint16_t)(l->expected - 1u));
        return 0;
    }
    const uint8_t *data = f.payload;
    size_t len = f.len;
    l->expected++;
    l->nak_sent = 0;
    /* ACK before the sink runs: the chunk has left the UART ring already (it is in the parser's
     * frame), so a windowed host refills the ring while the front end transforms a frame
     * (~0.3 M instructions every 2 KB of PCM) instead of waiting on it with the line idle. */
    send_control(l, PROTO_ACK, f.msg_id, f.index);
    int streamed = l->stream && l->msg_type == l->stream_type;
    if (streamed) {
        /* the head goes to msg (for the handler), the rest to the sink */
        size_t head_room = l->msg_len < l->stream_head ? l->stream_head - l->msg_len : 0;
        size_t h = len < head_room ? len : head_room;
        if (h)
            memcpy(l->msg + l->msg_len, data, h);
        if (len > h)
            l->stream(l->stream_ctx, 0, data + h, len - h);
        l->msg_len += len;
    } else {
        size_t room = l->msg_cap - l->msg_len;
        size_t take = len <= room ? len : room;
        if (take < len)
            l->overflow = 1;
        if (take)
            memcpy(l->msg + l->msg_len, data, take);
        l->msg_len += take;
    }
    if (l->expected < l->count)
        return 0;
    msg->type = l->msg_type;
    msg->msg_id = l->msg_id;
    msg->data = l->msg;
    msg->len = l->msg_len;
    msg->too_large = l->overflow;
    return 1;
}

int proto_link_respond(proto_link_t *l, uint8_t type, uint16_t msg_id, const uint8_t *payload,
                       uint16_t len)
{
    size_t n = proto_encode(l->resp, l->resp_cap, type, msg_id, 0, 1, payload, len);
    if (n == 0)
        return 0;
    l->resp_len = n;
    l->write(l->write_ctx, l->resp, n);
    return 1;
}
