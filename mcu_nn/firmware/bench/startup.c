/* Minimal start-up of the bench firmware: vector table, .data/.bss set-up, FPU on,
 * semihosting for output and exit (the bench needs no UART). */
#include <stdint.h>
#include "bench.h"

extern uint32_t _data_load, _data_start, _data_end, _bss_start, _bss_end, _stack_top;
int main(void);
void mcunn_bench_reset(void);
static void fault(void);

__attribute__((section(".vectors"), used))
static const uintptr_t vectors[16] = {
    (uintptr_t)&_stack_top, (uintptr_t)mcunn_bench_reset,
    (uintptr_t)fault, (uintptr_t)fault, (uintptr_t)fault, (uintptr_t)fault, (uintptr_t)fault,
    0, 0, 0, 0, (uintptr_t)fault, (uintptr_t)fault, 0, (uintptr_t)fault, (uintptr_t)fault,
};

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void bench_puts(const char *s)
{
    semihost(0x04, s);   /* SYS_WRITE0 */
}

void bench_exit(int code)
{
    uint32_t args[2] = {0x20026u, (uint32_t)code};   /* ADP_Stopped_ApplicationExit */
    semihost(0x20, args);                             /* SYS_EXIT_EXTENDED */
    for (;;) {
    }
}

static void fault(void)
{
    bench_puts("FAULT\n");
    bench_exit(3);
}

void mcunn_bench_reset(void)
{
    uint32_t *src = &_data_load, *dst = &_data_start;
    while (dst < &_data_end) *dst++ = *src++;
    for (dst = &_bss_start; dst < &_bss_end; ++dst) *dst = 0;
#if defined(__ARM_FP)
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;   /* CPACR: CP10, CP11 full access */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    bench_exit(main());
}
