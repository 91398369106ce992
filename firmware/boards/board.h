/* What the application needs from a board, and nothing else: the app loop never touches a
 * register. One implementation per board family in firmware/boards/<family>/; per-board
 * numbers (addresses, IRQs, clocks) come from the generated board_config.h. */
#ifndef DSMN_BOARD_H
#define DSMN_BOARD_H

#include <stddef.h>
#include <stdint.h>

void board_init(void);
uint32_t board_clock_hz(void);

/* Blocking transmit; receive comes from an interrupt-fed ring buffer (-1 when empty). */
void board_uart_write(const uint8_t *data, size_t n);
int board_uart_getc(void);
void board_uart_irq_handler(void);
/* The vector table's UART entry (common/uart_rx.c): the handler above, its time summed in
 * board_rx_isr_ticks (counter ticks) so that measured work can leave it out. */
void board_uart_irq_entry(void);
extern volatile uint32_t board_rx_isr_ticks;

/* Elapsed-time counter for one inference: BOARD_COUNTER_DWT or BOARD_COUNTER_SYSTICK. */
#define BOARD_COUNTER_NONE 0
#define BOARD_COUNTER_DWT 1
#define BOARD_COUNTER_SYSTICK 2
void board_counter_init(void);
int board_counter_kind(void);
uint64_t board_counter_now(void);

void board_idle(void);

#endif
