/* Arm MPS2 (AN385 Cortex-M3, AN386 Cortex-M4F, AN500 Cortex-M7, AN505 Cortex-M33) as
 * emulated by QEMU: CMSDK UART0 at 0x40004000, CMSDK TIMER0 at 0x40000000 (25 MHz) as the
 * counter, SysTick as a 1 ms tick. A row's defines move them (board.toml: the AN505 boots
 * Secure and reaches them through the Secure aliases, at 20 MHz). Under `-icount shift=N` the timer counts virtual time, which is
 * instructions x 2^N ns, so measurements are exact instruction counts (docs/protocol.md). */
#include "board.h"

#define REG(a) (*(volatile uint32_t *)(a))
#ifndef BOARD_UART0
#define BOARD_UART0 0x40004000u
#endif
#ifndef BOARD_TIMER0
#define BOARD_TIMER0 0x40000000u
#endif
#ifndef BOARD_SYSCLK
#define BOARD_SYSCLK 25000000u
#endif
#define UART0 BOARD_UART0
#define UART_DATA REG(UART0 + 0x0)
#define UART_STATE REG(UART0 + 0x4)   /* bit0 TX full, bit1 RX full */
#define UART_CTRL REG(UART0 + 0x8)
#define UART_BAUDDIV REG(UART0 + 0x10)
#define TIMER0 BOARD_TIMER0
#define TIMER_CTRL REG(TIMER0 + 0x0)
#define TIMER_VALUE REG(TIMER0 + 0x4)
#define TIMER_RELOAD REG(TIMER0 + 0x8)
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SYSCLK BOARD_SYSCLK

void board_counter_start(void)
{
    TIMER_CTRL = 0;
    TIMER_RELOAD = 0xFFFFFFFFu;
    TIMER_VALUE = 0xFFFFFFFFu;
    TIMER_CTRL = 1;                  /* enabled, free running down-counter */
}

uint32_t board_counter_now(void)
{
    return ~TIMER_VALUE;             /* counting up */
}

void board_init(void)
{
    UART_BAUDDIV = 16;
    UART_CTRL = 3;                   /* TX and RX enabled, no interrupts */
    board_counter_start();
    SYST_RVR = SYSCLK / 1000u - 1u;
    SYST_CVR = 0;
    SYST_CSR = 7;                    /* processor clock, interrupt, enable */
}

int board_getc(void)
{
    if (!(UART_STATE & 2u)) return -1;
    return (int)(UART_DATA & 0xFFu);
}

void board_write(const uint8_t *p, size_t n)
{
    while (n--) {
        while (UART_STATE & 1u) {
        }
        UART_DATA = *p++;
    }
}

uint32_t board_counter_begin(void)
{
    SYST_CSR = 0;
    return TIMER_VALUE;
}

uint32_t board_counter_end(uint32_t begin)
{
    uint32_t now = TIMER_VALUE;
    SYST_CSR = 7;
    return begin - now;              /* down-counter; modular arithmetic handles the wrap */
}
