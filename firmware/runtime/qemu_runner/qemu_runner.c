/*
 * Bare-metal runner for generated models on QEMU mps2-an386 (Cortex-M4F).
 *
 * Inputs and outputs go through Arm semihosting files (QEMU's cwd): "in.bin" holds a
 * little-endian uint32 count N followed by N inputs; "out.bin" receives N outputs and
 * "stats.txt" the SysTick ticks of every inference plus a calibration of ticks against a
 * loop of known instruction count, so the host converts ticks to instructions exactly
 * (-icount shift=0 ties SysTick to executed instructions; the DWT cycle counter reads 0).
 */
#include <stdint.h>
#include <string.h>

#include "dsmn_model.h"

extern uint32_t __data_start, __data_end, __data_load, __bss_start, __bss_end, __stack_top;

int main(void);

/* ---- semihosting ---- */
static int32_t semihost(int32_t op, void *arg)
{
    register int32_t r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static int32_t sh_open(const char *name, int32_t mode)
{
    uint32_t a[3] = {(uint32_t)name, (uint32_t)mode, (uint32_t)strlen(name)};
    return semihost(0x01, a);
}

static int32_t sh_read(int32_t fd, void *buf, uint32_t n)
{
    uint32_t a[3] = {(uint32_t)fd, (uint32_t)buf, n};
    return semihost(0x06, a); /* bytes NOT read */
}

static int32_t sh_write(int32_t fd, const void *buf, uint32_t n)
{
    uint32_t a[3] = {(uint32_t)fd, (uint32_t)buf, n};
    return semihost(0x05, a);
}

static void sh_close(int32_t fd) { uint32_t a[1] = {(uint32_t)fd}; semihost(0x02, a); }

static void sh_exit(int ok)
{
    /* ADP_Stopped_ApplicationExit -> QEMU exits 0; ADP_Stopped_RunTimeErrorUnknown -> 1 */
    semihost(0x18, (void *)(ok ? 0x20026 : 0x20023));
    for (;;) {
    }
}

/* ---- SysTick as a 64-bit tick counter ---- */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SCB_ICSR (*(volatile uint32_t *)0xE000ED04u)
#define CPACR (*(volatile uint32_t *)0xE000ED88u)

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

static uint64_t ticks_now(void)
{
    uint32_t w, v;
    do {
        w = systick_wraps;
        v = SYST_CVR;
        if (SCB_ICSR & (1u << 26)) {
            v = SYST_CVR;
            return ((uint64_t)(w + 1u) << 24) + (0x00FFFFFFu - v);
        }
    } while (w != systick_wraps);
    return ((uint64_t)w << 24) + (0x00FFFFFFu - v);
}

/* Exactly 2 instructions per iteration (subs + bne), plus a constant. */
static void __attribute__((noinline)) known_loop(uint32_t n)
{
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
}

static char *put_u64(char *p, uint64_t v)
{
    char tmp[24];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (k) {
        *p++ = tmp[--k];
    }
    return p;
}

#ifdef DSMN_PROFILE
#define DSMN_MAX_STEPS 512
static uint64_t step_ticks[DSMN_MAX_STEPS];
static uint64_t step_last;
static int step_max = -1;

void dsmn_profile_mark(int step)
{
    uint64_t now = ticks_now();
    if (step >= 0 && step < DSMN_MAX_STEPS) {
        step_ticks[step] += now - step_last;
        if (step > step_max) {
            step_max = step;
        }
    }
    step_last = ticks_now();
}
#endif

#ifdef DSMN_TRACE
/* Every step's output tensors, written by semihosting to "trace.bin" as records of int32
 * tensor index, int32 byte count, bytes (dsmn-host compare reads them). */
static int32_t trace_fd = -1;

void dsmn_trace_tensor(int tensor, const int8_t *data, int32_t bytes)
{
    const int32_t hdr[2] = {tensor, bytes};
    if (trace_fd >= 0) {
        sh_write(trace_fd, hdr, sizeof hdr);
        sh_write(trace_fd, data, (uint32_t)bytes);
    }
}
#endif

static int8_t in_buf[DSMN_INPUT_BYTES] __attribute__((aligned(16)));
static int8_t out_buf[DSMN_OUTPUT_BYTES] __attribute__((aligned(16)));
static char stats[64 * 1024];

int main(void)
{
    SYST_RVR = 0x00FFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 7u;

    int32_t fi = sh_open("in.bin", 1);   /* "rb" */
    int32_t fo = sh_open("out.bin", 5);  /* "wb" */
    int32_t fs = sh_open("stats.txt", 4); /* "w" */
    if (fi < 0 || fo < 0 || fs < 0) {
        return 1;
    }
#ifdef DSMN_TRACE
    trace_fd = sh_open("trace.bin", 5); /* "wb" */
    if (trace_fd < 0) {
        return 1;
    }
#endif
    uint32_t n = 0;
    if (sh_read(fi, &n, 4) != 0) {
        return 1;
    }
    if (dsmn_init() != 0) {
        return 1;
    }
    char *p = stats;
    const uint32_t cal_iters = 1000000u;
    uint64_t t0 = ticks_now();
    known_loop(cal_iters);
    uint64_t t1 = ticks_now();
    memcpy(p, "calibration_instructions ", 25);
    p = put_u64(p + 25, 2ull * cal_iters);
    *p++ = ' ';
    p = put_u64(p, t1 - t0);
    *p++ = '\n';
    for (uint32_t i = 0; i < n; i++) {
        if (sh_read(fi, in_buf, sizeof in_buf) != 0) {
            return 1;
        }
        uint64_t a = ticks_now();
#ifdef DSMN_PROFILE
        step_last = a;
#endif
        int rc = dsmn_invoke(in_buf, out_buf);
        uint64_t b = ticks_now();
        if (rc != 0) {
            return 1;
        }
        sh_write(fo, out_buf, sizeof out_buf);
        if (p < stats + sizeof stats - 64) {
            memcpy(p, "ticks ", 6);
            p = put_u64(p + 6, b - a);
            *p++ = '\n';
        }
    }
#ifdef DSMN_PROFILE
    for (int k = 0; k <= step_max && p < stats + sizeof stats - 64; k++) {
        memcpy(p, "step ", 5);
        p = put_u64(p + 5, (uint64_t)k);
        *p++ = ' ';
        p = put_u64(p, step_ticks[k]);
        *p++ = '\n';
    }
#endif
    sh_write(fs, stats, (uint32_t)(p - stats));
    sh_close(fi);
    sh_close(fo);
    sh_close(fs);
#ifdef DSMN_TRACE
    sh_close(trace_fd);
#endif
    return 0;
}

void Reset_Handler(void)
{
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start; dst < &__bss_end; dst++) {
        *dst = 0;
    }
    CPACR |= 0xFu << 20; /* FPU full access: the hard-float ABI may use FP registers */
    __asm__ volatile("dsb\n\tisb");
    sh_exit(main() == 0);
}

static void Fault_Handler(void) { sh_exit(0); }

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&__stack_top, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, 0, 0, Fault_Handler, SysTick_Handler,
};
