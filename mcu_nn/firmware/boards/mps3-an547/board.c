/* Arm MPS3 AN547 (SSE-300, Cortex-M55) as emulated by QEMU `-M mps3-an547`: the CPU boots
 * Secure, so the CMSDK UART0 is reached at its Secure alias 0x59303000. The FPGA image has no
 * CMSDK timer at the CPU clock (the SSE-300's own timers count the 1 MHz reference clock), so
 * the counter is SysTick on the processor clock, widened to 32 bits in software: every read
 * folds in a wrap that COUNTFLAG reports, so a measured region may span at most one 2^24-tick
 * wrap (0.52 s of virtual time at 32 MHz: 512 thousand instructions at the bench's -icount shift). */
#include "board.h"

#define REG(a) (*(volatile uint32_t *)(a))
#define UART0 0x59303000u
#define UART_DATA REG(UART0 + 0x0)
#define UART_STATE REG(UART0 + 0x4)   /* bit0 TX full, bit1 RX full */
#define UART_CTRL REG(UART0 + 0x8)
#define UART_BAUDDIV REG(UART0 + 0x10)
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SYST_COUNTFLAG (1u << 16)
#define SYST_TOP 0xFFFFFFu

static uint32_t g_high;               /* 2^24 x wraps seen */

void board_counter_start(void)
{
    SYST_CSR = 0;
    SYST_RVR = SYST_TOP;
    SYST_CVR = 0;
    SYST_CSR = 5;                    /* processor clock, no interrupt, enable */
    g_high = 0;
}

uint32_t board_counter_now(void)
{
    uint32_t v = SYST_CVR;
    if (SYST_CSR & SYST_COUNTFLAG) { /* wrapped since the last read (reading clears it) */
        g_high += SYST_TOP + 1u;
        v = SYST_CVR;                /* after the wrap, whether v was read before it or not */
    }
    return g_high + (SYST_TOP - v);
}

void board_init(void)
{
    UART_BAUDDIV = 16;
    UART_CTRL = 3;                   /* TX and RX enabled, no interrupts */
    board_counter_start();
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
    return board_counter_now();
}

uint32_t board_counter_end(uint32_t begin)
{
    return board_counter_now() - begin;
}
