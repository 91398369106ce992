/* The receive side every board shares: the UART ISR of each family fills `board_rx`; the app
 * loop drains it and sleeps only when it is empty. One copy, so the race argument below is
 * made once. */
#include "board.h"
#include "cortexm.h"
#include "ring.h"

ring_t board_rx;

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
