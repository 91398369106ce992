/* The receive side every board shares: the UART ISR of each family fills `board_rx`; the app
 * loop drains it and sleeps only when it is empty. One copy, so the race argument below is
 * made once. */
#include "board.h"
#include "cortexm.h"
#include "ring.h"

ring_t board_rx;
volatile uint32_t board_rx_isr_ticks;

/* The vector's entry: the family's handler, timed. Bytes that arrive while the app computes
 * interrupt it; the app subtracts this time so its counts are the work's, the same whatever
 * the line does meanwhile (the ISR's own entry and these two reads are not subtracted: a few
 * dozen instructions per interrupt). 32 bits, read in one load; differences wrap correctly. */
void board_uart_irq_entry(void)
{
    uint64_t t0 = board_counter_now();
    board_uart_irq_handler();
    board_rx_isr_ticks += (uint32_t)(board_counter_now() - t0);
}

int board_uart_getc(void) { return ring_get(&board_rx); }

void board_idle(void)
{
    /* Sleep only if nothing arrived since the caller looked: WFI wakes on a pending
     * interrupt even with PRIMASK set, so no byte can slip in between check and sleep. */
    cpu_irq_disable();
    if (board_rx.head == board_rx.tail)
        cpu_wfi();
    cpu_irq_enable();
}
