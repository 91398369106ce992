/* Single-producer (UART ISR) / single-consumer (app loop) byte ring. Indices only grow, so
 * full and empty need no flag; a power-of-two size keeps the wrap a mask. */
#ifndef DSMN_RING_H
#define DSMN_RING_H

#include <stdint.h>

#ifndef RING_BYTES
#define RING_BYTES 2048u /* two maximal frames: protocol v1 keeps at most one in flight */
#endif
#if (RING_BYTES & (RING_BYTES - 1u)) != 0
#error RING_BYTES must be a power of two
#endif

typedef struct {
    volatile uint32_t head; /* written by the ISR */
    volatile uint32_t tail; /* written by the app */
    volatile uint32_t dropped;
    uint8_t data[RING_BYTES];
} ring_t;

/* The UART receive ring (boards/common/uart_rx.c): filled by the board's ISR, drained by
 * board_uart_getc. */
extern ring_t board_rx;

static inline void ring_put(ring_t *r, uint8_t b)
{
    uint32_t h = r->head;
    if (h - r->tail >= RING_BYTES) {
        r->dropped++; /* the protocol's CRC turns this into a NAK and a resend */
        return;
    }
    r->data[h & (RING_BYTES - 1u)] = b;
    r->head = h + 1u;
}

static inline int ring_get(ring_t *r)
{
    uint32_t t = r->tail;
    if (t == r->head)
        return -1;
    int b = r->data[t & (RING_BYTES - 1u)];
    r->tail = t + 1u;
    return b;
}

#endif
