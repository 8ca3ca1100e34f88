/* Reset and trap code shared by the RISC-V boards (RV32, machine mode, no OS): _start sets
 * the global and stack pointers and the trap vector, then mcunn_reset copies .data, clears
 * .bss and calls main. No interrupt is enabled, so any trap is a fault. Memory comes from the
 * linker script that `mcu-nn build` generates from the board table (common/riscv.ld.in). */
#include <stdint.h>
#include <string.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss;
int main(void);
void mcunn_reset(void);
void mcunn_trap(void);
void mcunn_exit(int code);
void mcunn_fault(void);

/* gp and sp before any C code; `la gp` unrelaxed, or the linker would make it gp-relative */
__asm__(".pushsection .text.start, \"ax\", @progbits\n"
        ".global _start\n"
        "_start:\n"
        ".option push\n.option norelax\n"
        "  la gp, __global_pointer$\n"
        ".option pop\n"
        "  la sp, _estack\n"
        "  la t0, mcunn_trap\n"
        "  csrw mtvec, t0\n"
        "  j mcunn_reset\n"
        ".popsection\n");

/* What happens when main returns or a trap fires. The inference server never returns and
 * halts on a fault; firmware that runs to an end (the bench, bench/semihost.c)
 * overrides these to report and exit the emulator. */
__attribute__((weak)) void mcunn_exit(int code)
{
    (void)code;
    for (;;) {
    }
}

__attribute__((weak)) void mcunn_fault(void)
{
    for (;;) {
    }
}

/* mtvec in direct mode needs a 4-byte aligned handler (the C extension aligns to 2) */
__attribute__((aligned(4))) void mcunn_trap(void)
{
    mcunn_fault();
}

void mcunn_reset(void)
{
    memcpy(&_sdata, &_sidata, (size_t)((uint8_t *)&_edata - (uint8_t *)&_sdata));
    memset(&_sbss, 0, (size_t)((uint8_t *)&_ebss - (uint8_t *)&_sbss));
    mcunn_exit(main());
}
