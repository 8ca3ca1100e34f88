/* BBC micro:bit (nRF51822, Cortex-M0) as emulated by QEMU `-M microbit`: UART0 at 0x40002000
 * (QEMU's nrf51_uart: a 6-byte RX FIFO, transmit done when TXDRDY is set), TIMER0 at
 * 0x40008000 as a 32-bit 16 MHz up-counter read through its CAPTURE[0] task, SysTick as a
 * 1 ms tick. Under `-icount shift=N` the timer counts virtual time = instructions x 2^N ns. */
#include "board.h"

#define REG(a) (*(volatile uint32_t *)(a))
#define UART0 0x40002000u
#define UART_STARTRX REG(UART0 + 0x000)
#define UART_STARTTX REG(UART0 + 0x008)
#define UART_RXDRDY REG(UART0 + 0x108)
#define UART_TXDRDY REG(UART0 + 0x11C)
#define UART_ENABLE REG(UART0 + 0x500)
#define UART_RXD REG(UART0 + 0x518)
#define UART_TXD REG(UART0 + 0x51C)
#define UART_BAUDRATE REG(UART0 + 0x524)
#define TIMER0 0x40008000u
#define TIMER_START REG(TIMER0 + 0x000)
#define TIMER_STOP REG(TIMER0 + 0x004)
#define TIMER_CLEAR REG(TIMER0 + 0x00C)
#define TIMER_CAPTURE0 REG(TIMER0 + 0x040)
#define TIMER_MODE REG(TIMER0 + 0x504)
#define TIMER_BITMODE REG(TIMER0 + 0x508)
#define TIMER_PRESCALER REG(TIMER0 + 0x510)
#define TIMER_CC0 REG(TIMER0 + 0x540)
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SYSCLK 16000000u

void board_counter_start(void)
{
    TIMER_STOP = 1;
    TIMER_MODE = 0;                  /* timer, not event counter */
    TIMER_BITMODE = 3;               /* 32 bits */
    TIMER_PRESCALER = 0;             /* 16 MHz */
    TIMER_CLEAR = 1;
    TIMER_START = 1;
}

uint32_t board_counter_now(void)
{
    TIMER_CAPTURE0 = 1;
    return TIMER_CC0;
}

void board_init(void)
{
    UART_ENABLE = 4;
    UART_BAUDRATE = 0x01D7E000u;     /* 115200 (QEMU ignores it; real silicon needs it) */
    UART_STARTTX = 1;
    UART_STARTRX = 1;
    board_counter_start();
    SYST_RVR = SYSCLK / 1000u - 1u;
    SYST_CVR = 0;
    SYST_CSR = 7;                    /* processor clock, interrupt, enable */
}

int board_getc(void)
{
    if (!UART_RXDRDY) return -1;
    UART_RXDRDY = 0;                 /* before reading: the read sets it again while bytes remain */
    return (int)(UART_RXD & 0xFFu);
}

void board_write(const uint8_t *p, size_t n)
{
    while (n--) {
        UART_TXDRDY = 0;
        UART_TXD = *p++;
        while (!UART_TXDRDY) {
        }
    }
}

uint32_t board_counter_begin(void)
{
    SYST_CSR = 0;
    return board_counter_now();
}

uint32_t board_counter_end(uint32_t begin)
{
    uint32_t now = board_counter_now();
    SYST_CSR = 7;
    return now - begin;
}
