/* Arm MPS2/MPS3 FPGA images (AN386 M4, AN500 M7, AN547 M55): a fixed-clock system with a
 * CMSDK APB UART. Nothing to configure but the UART; BOARD_* come from board_config.h. */
#include "board.h"
#include "board_config.h"
#include "cortexm.h"
#include "ring.h"

/* CMSDK APB UART (Arm DDI 0479, 4.6) */
#define UART_DATA REG32(BOARD_UART_BASE + 0x00u)
#define UART_STATE REG32(BOARD_UART_BASE + 0x04u)
#define UART_CTRL REG32(BOARD_UART_BASE + 0x08u)
#define UART_INT REG32(BOARD_UART_BASE + 0x0Cu) /* read: status, write 1: clear */
#define UART_BAUDDIV REG32(BOARD_UART_BASE + 0x10u)
#define STATE_TXFULL (1u << 0)
#define STATE_RXFULL (1u << 1)
#define STATE_RXOVR (1u << 3)
#define CTRL_TXEN (1u << 0)
#define CTRL_RXEN (1u << 1)
#define CTRL_RXIE (1u << 3)
#define INT_RX (1u << 1)
#define INT_RXOVR (1u << 3)


void board_init(void)
{
    UART_CTRL = 0;
    UART_BAUDDIV = BOARD_CLOCK_HZ / BOARD_BAUD; /* the CMSDK UART refuses dividers below 16 */
    UART_INT = INT_RX | INT_RXOVR;
    UART_CTRL = CTRL_TXEN | CTRL_RXEN | CTRL_RXIE;
    nvic_enable_irq(BOARD_UART_RX_IRQ);
    board_counter_init();
    cpu_irq_enable();
}

uint32_t board_clock_hz(void) { return BOARD_CLOCK_HZ; }

void board_uart_irq_handler(void)
{
    /* Clear first, then drain: a byte landing after the last RXFULL check re-raises the
     * interrupt. Clearing after the drain would lose that interrupt, and with a one-byte
     * receive buffer the UART then stops accepting input for good. */
    UART_INT = INT_RX | INT_RXOVR;
    if (UART_STATE & STATE_RXOVR) {
        board_rx.dropped++;
        UART_STATE = STATE_RXOVR; /* write-one-to-clear */
    }
    while (UART_STATE & STATE_RXFULL)
        ring_put(&board_rx, (uint8_t)UART_DATA);
}

void board_uart_write(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        while (UART_STATE & STATE_TXFULL)
            ;
        UART_DATA = data[i];
    }
}
