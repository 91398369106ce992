/* STM32F4 (F405/F446/F429): PLL from the 16 MHz HSI to the part's maximum, USART2 on PA2/PA3
 * (the ST-LINK virtual COM port on Nucleo boards). Per-part PLL factors, flash wait states
 * and the over-drive need come from board_config.h.
 *
 * Every wait on a ready flag is bounded: QEMU's netduinoplus2 does not model the RCC, so the
 * PLL never reports lock there; we then stay on the HSI and say so through board_clock_hz(),
 * which the baud-rate divider and HELLO both use. */
#include "board.h"
#include "board_config.h"
#include "cortexm.h"
#include "ring.h"

#define RCC_BASE 0x40023800u
#define RCC_CR REG32(RCC_BASE + 0x00u)
#define RCC_PLLCFGR REG32(RCC_BASE + 0x04u)
#define RCC_CFGR REG32(RCC_BASE + 0x08u)
#define RCC_AHB1ENR REG32(RCC_BASE + 0x30u)
#define RCC_APB1ENR REG32(RCC_BASE + 0x40u)
#define CR_HSION (1u << 0)
#define CR_HSIRDY (1u << 1)
#define CR_PLLON (1u << 24)
#define CR_PLLRDY (1u << 25)
#define CFGR_SW_PLL 2u
#define CFGR_SWS_MASK (3u << 2)
#define CFGR_SWS_PLL (2u << 2)

#define PWR_CR REG32(0x40007000u)
#define PWR_CSR REG32(0x40007004u)
#define PWR_CR_VOS_SCALE1 (3u << 14)
#define PWR_CR_ODEN (1u << 16)
#define PWR_CR_ODSWEN (1u << 17)
#define PWR_CSR_ODRDY (1u << 16)
#define PWR_CSR_ODSWRDY (1u << 17)

#define FLASH_ACR REG32(0x40023C00u)
#define ACR_PRFTEN (1u << 8)
#define ACR_ICEN (1u << 9)
#define ACR_DCEN (1u << 10)

#define GPIOA_BASE 0x40020000u
#define GPIOA_MODER REG32(GPIOA_BASE + 0x00u)
#define GPIOA_OSPEEDR REG32(GPIOA_BASE + 0x08u)
#define GPIOA_PUPDR REG32(GPIOA_BASE + 0x0Cu)
#define GPIOA_AFRL REG32(GPIOA_BASE + 0x20u)

#define USART2_BASE 0x40004400u
#define USART_SR REG32(USART2_BASE + 0x00u)
#define USART_DR REG32(USART2_BASE + 0x04u)
#define USART_BRR REG32(USART2_BASE + 0x08u)
#define USART_CR1 REG32(USART2_BASE + 0x0Cu)
#define SR_ORE (1u << 3)
#define SR_RXNE (1u << 5)
#define SR_TXE (1u << 7)
#define CR1_RE (1u << 2)
#define CR1_TE (1u << 3)
#define CR1_RXNEIE (1u << 5)
#define CR1_UE (1u << 13)
#define USART2_IRQ 38u

#define HSI_HZ 16000000u
#define READY_SPINS 200000u

static uint32_t sysclk_hz = HSI_HZ;
static uint32_t apb1_hz = HSI_HZ;

static int wait_set(volatile uint32_t *reg, uint32_t mask, uint32_t value)
{
    for (uint32_t i = 0; i < READY_SPINS; i++)
        if ((*reg & mask) == value)
            return 1;
    return 0;
}

static void clock_init(void)
{
    RCC_CR |= CR_HSION;
    if (!wait_set(&RCC_CR, CR_HSIRDY, CR_HSIRDY))
        return;
    RCC_APB1ENR |= 1u << 28; /* PWR */
    PWR_CR |= PWR_CR_VOS_SCALE1;
    RCC_PLLCFGR = BOARD_PLL_M | (BOARD_PLL_N << 6) | (((BOARD_PLL_P / 2u) - 1u) << 16) |
                  (0u << 22) /* source: HSI */ | (BOARD_PLL_Q << 24);
    RCC_CR |= CR_PLLON;
    if (!wait_set(&RCC_CR, CR_PLLRDY, CR_PLLRDY))
        return; /* no lock (QEMU): keep running from the HSI */
#if BOARD_OVERDRIVE
    PWR_CR |= PWR_CR_ODEN;
    if (!wait_set(&PWR_CSR, PWR_CSR_ODRDY, PWR_CSR_ODRDY))
        return;
    PWR_CR |= PWR_CR_ODSWEN;
    if (!wait_set(&PWR_CSR, PWR_CSR_ODSWRDY, PWR_CSR_ODSWRDY))
        return;
#endif
    /* Wait states before raising the clock, or the next fetch reads garbage. */
    FLASH_ACR = BOARD_FLASH_WS | ACR_PRFTEN | ACR_ICEN | ACR_DCEN;
    /* AHB /1, APB1 /BOARD_APB1_DIV, APB2 /BOARD_APB2_DIV (PPRE codes: /2=4, /4=5, /8=6) */
    uint32_t ppre1 = BOARD_APB1_DIV == 1 ? 0u : BOARD_APB1_DIV == 2 ? 4u : BOARD_APB1_DIV == 4 ? 5u : 6u;
    uint32_t ppre2 = BOARD_APB2_DIV == 1 ? 0u : BOARD_APB2_DIV == 2 ? 4u : BOARD_APB2_DIV == 4 ? 5u : 6u;
    RCC_CFGR = (ppre1 << 10) | (ppre2 << 13) | CFGR_SW_PLL;
    if (!wait_set(&RCC_CFGR, CFGR_SWS_MASK, CFGR_SWS_PLL)) {
        RCC_CFGR = 0; /* back to HSI, undivided */
        return;
    }
    sysclk_hz = BOARD_CLOCK_HZ;
    apb1_hz = BOARD_CLOCK_HZ / BOARD_APB1_DIV;
}

static void uart_init(void)
{
    RCC_AHB1ENR |= 1u << 0;  /* GPIOA */
    RCC_APB1ENR |= 1u << 17; /* USART2 */
    /* PA2 = TX, PA3 = RX: alternate function 7, high speed, pull-up on RX */
    GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 4)) | (0xAu << 4);
    GPIOA_OSPEEDR |= 0xFu << 4;
    GPIOA_PUPDR = (GPIOA_PUPDR & ~(0xFu << 4)) | (0x4u << 4);
    GPIOA_AFRL = (GPIOA_AFRL & ~(0xFFu << 8)) | (0x77u << 8);
    USART_CR1 = 0;
    /* 16x oversampling: BRR = f/baud with the 4 fraction bits falling out naturally */
    USART_BRR = (apb1_hz + BOARD_BAUD / 2u) / BOARD_BAUD;
    USART_CR1 = CR1_UE | CR1_TE | CR1_RE | CR1_RXNEIE;
    nvic_enable_irq(USART2_IRQ);
}

void board_init(void)
{
    clock_init();
    uart_init();
    board_counter_init();
    cpu_irq_enable();
}

uint32_t board_clock_hz(void) { return sysclk_hz; }

void board_uart_irq_handler(void)
{
    uint32_t sr;
    /* Reading SR then DR clears RXNE and ORE; an overrun loses a byte the CRC will catch. */
    while ((sr = USART_SR) & (SR_RXNE | SR_ORE)) {
        uint8_t b = (uint8_t)USART_DR;
        if (sr & SR_ORE)
            board_rx.dropped++;
        if (sr & SR_RXNE)
            ring_put(&board_rx, b);
    }
}

void board_uart_write(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        while (!(USART_SR & SR_TXE))
            ;
        USART_DR = data[i];
    }
}
