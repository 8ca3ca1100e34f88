/* Output and exit for firmware that runs to an end under QEMU (the bench, the DSP cell
 * test): semihosting, so no UART is needed. RISC-V semihosting uses ARM's operation numbers
 * behind its own trap sequence, so only the trap differs. Start-up and the vector table are the
 * boards' own (common/cortexm_startup.c, common/riscv_startup.c); the hooks below replace their
 * weak defaults. */
#include <stdint.h>
#include "bench.h"

void mcunn_exit(int code);
void mcunn_fault(void);

static int semihost(int op, const void *arg)
{
#if defined(__riscv)
    register int a0 __asm__("a0") = op;
    register const void *a1 __asm__("a1") = arg;
    /* the emulator recognises the ebreak only between these two uncompressed no-ops */
    __asm__ volatile(".option push\n\t.option norvc\n\t"
                     "slli zero, zero, 0x1f\n\tebreak\n\tsrai zero, zero, 7\n\t"
                     ".option pop"
                     : "+r"(a0) : "r"(a1) : "memory");
    return a0;
#else
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
#endif
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
