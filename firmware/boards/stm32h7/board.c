/* STM32H743 (NUCLEO-H743ZI2): the core runs from the 64 MHz HSI it starts on (no PLL yet:
 * the build and the size check are what this board is for today), USART3 on PD8/PD9 is the
 * ST-LINK virtual COM port. Register offsets from RM0433. */
#include "board.h"
#include "board_config.h"
#include "cortexm.h"
#include "ring.h"

#define RCC_BASE 0x58024400u
#define RCC_AHB4ENR REG32(RCC_BASE + 0x0E0u)
#define RCC_APB1LENR REG32(RCC_BASE + 0x0E8u)

#define GPIOD_BASE 0x58020C00u
#define GPIOD_MODER REG32(GPIOD_BASE + 0x00u)
#define GPIOD_OSPEEDR REG32(GPIOD_BASE + 0x08u)
#define GPIOD_PUPDR REG32(GPIOD_BASE + 0x0Cu)
#define GPIOD_AFRH REG32(GPIOD_BASE + 0x24u)

#define USART3_BASE 0x40004800u
#define USART_CR1 REG32(USART3_BASE + 0x00u)
#define USART_BRR REG32(USART3_BASE + 0x0Cu)
#define USART_ISR REG32(USART3_BASE + 0x1Cu)
#define USART_ICR REG32(USART3_BASE + 0x20u)
#define USART_RDR REG32(USART3_BASE + 0x24u)
#define USART_TDR REG32(USART3_BASE + 0x28u)
#define CR1_UE (1u << 0)
#define CR1_RE (1u << 2)
#define CR1_TE (1u << 3)
#define CR1_RXNEIE (1u << 5)
#define ISR_ORE (1u << 3)
#define ISR_RXNE (1u << 5)
#define ISR_TXE (1u << 7)
#define ICR_ORECF (1u << 3)


void board_init(void)
{
    RCC_AHB4ENR |= 1u << 3;   /* GPIOD */
    RCC_APB1LENR |= 1u << 18; /* USART3 */
    (void)RCC_APB1LENR;       /* read back: the enable takes effect before the first access */
    GPIOD_MODER = (GPIOD_MODER & ~(0xFu << 16)) | (0xAu << 16);
    GPIOD_OSPEEDR |= 0xFu << 16;
    GPIOD_PUPDR = (GPIOD_PUPDR & ~(0xFu << 16)) | (0x4u << 16);
    GPIOD_AFRH = (GPIOD_AFRH & ~0xFFu) | 0x77u;
    USART_CR1 = 0;
    USART_BRR = (BOARD_CLOCK_HZ + BOARD_BAUD / 2u) / BOARD_BAUD; /* kernel clock = PCLK1 = HSI */
    USART_CR1 = CR1_UE | CR1_TE | CR1_RE | CR1_RXNEIE;
    nvic_enable_irq(BOARD_UART_RX_IRQ);
    board_counter_init();
    cpu_irq_enable();
}

uint32_t board_clock_hz(void) { return BOARD_CLOCK_HZ; }

void board_uart_irq_handler(void)
{
    uint32_t isr = USART_ISR;
    if (isr & ISR_ORE) {
        board_rx.dropped++;
        USART_ICR = ICR_ORECF;
    }
    while (USART_ISR & ISR_RXNE)
        ring_put(&board_rx, (uint8_t)USART_RDR);
}

void board_uart_write(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        while (!(USART_ISR & ISR_TXE))
            ;
        USART_TDR = data[i];
    }
}
