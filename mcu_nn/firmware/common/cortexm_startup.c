/* Reset handler and vector table shared by the Cortex-M boards; memory comes from the
 * linker script that `mcu-nn build` generates from the board table. */
#include <stdint.h>
#include <string.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void);
void mcunn_exit(int code);
void mcunn_fault(void);

volatile uint32_t mcunn_ticks;

void SysTick_Handler(void)
{
    /* Only its existence matters: a periodic interrupt keeps QEMU delivering UART bytes
     * promptly under -icount. */
    ++mcunn_ticks;
}

/* What happens when main returns or a fault/unexpected interrupt fires. The inference
 * server never returns and halts on a fault; firmware that runs to an end (the bench,
 * mcu_nn/firmware/bench/semihost.c) overrides these to report and exit the emulator. */
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

void Default_Handler(void)
{
    mcunn_fault();
}

__attribute__((section(".isr_vector"), used))
static void (*const g_vectors[16 + 32])(void) = {
    (void (*)(void))(uintptr_t)&_estack,
    Reset_Handler,
    Default_Handler, /* NMI */
    Default_Handler, /* HardFault */
    Default_Handler, /* MemManage */
    Default_Handler, /* BusFault */
    Default_Handler, /* UsageFault */
    0, 0, 0, 0,
    Default_Handler, /* SVC */
    Default_Handler, /* DebugMon */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
    /* external interrupts: none enabled; any that fires stops in Default_Handler */
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler,
};

void Reset_Handler(void)
{
    memcpy(&_sdata, &_sidata, (size_t)((uint8_t *)&_edata - (uint8_t *)&_sdata));
    memset(&_sbss, 0, (size_t)((uint8_t *)&_ebss - (uint8_t *)&_sbss));
#if defined(__ARM_FP)
    /* CP10/CP11 full access before any float instruction runs */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm volatile("dsb\n\tisb");
#endif
    mcunn_exit(main());
}
