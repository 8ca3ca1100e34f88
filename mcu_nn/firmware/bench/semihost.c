/* Output and exit for firmware that runs to an end under QEMU (the bench, the DSP cell
 * test): ARM semihosting, so no UART is needed. Start-up and the vector table are the
 * boards' own (common/cortexm_startup.c); the hooks below replace its weak defaults. */
#include <stdint.h>
#include "bench.h"

void mcunn_exit(int code);
void mcunn_fault(void);

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

void mcunn_exit(int code)
{
    bench_exit(code);
}

void mcunn_fault(void)
{
    bench_puts("FAULT\n");
    bench_exit(3);
}
