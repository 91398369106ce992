/* SysTick as a 64-bit counter of core-clock ticks, for cores or emulators without a working
 * DWT (QEMU's CYCCNT reads 0; its SysTick under -icount shift=0 advances with executed
 * instructions, so the count is deterministic). */
#include "board.h"
#include "cortexm.h"

#define SYSTICK_RELOAD 0x00FFFFFFu

static volatile uint32_t wraps;

void SysTick_Handler(void) { wraps++; }

void board_counter_init(void)
{
    SYST_RVR = SYSTICK_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* core clock, interrupt on wrap, enabled */
}

int board_counter_kind(void) { return BOARD_COUNTER_SYSTICK; }

uint64_t board_counter_now(void)
{
    uint32_t w, v;
    do { /* re-read if a wrap interrupt slipped in between the two reads */
        w = wraps;
        v = SYST_CVR;
        /* a wrap that is pending but not yet taken: the count restarted from RELOAD */
        if (SCB_ICSR & (1u << 26)) {
            v = SYST_CVR;
            return ((uint64_t)(w + 1u) << 24) + (SYSTICK_RELOAD - v);
        }
    } while (w != wraps);
    return ((uint64_t)w << 24) + (SYSTICK_RELOAD - v);
}
