/* QEMU's RISC-V `virt` machine as an RV32IMAC microcontroller: the 16550 UART at 0x10000000
 * (byte registers) and the ACLINT machine timer, whose mtime counts at 10 MHz. Under
 * `-icount shift=N` mtime counts virtual time = instructions x 2^N ns. No periodic tick:
 * the emulator delivers UART bytes promptly without one, so begin/end only read the counter. */
#include "board.h"

#define REG8(a) (*(volatile uint8_t *)(a))
#define UART0 0x10000000u
#define UART_RBR REG8(UART0 + 0)     /* read: receive buffer; write: THR */
#define UART_THR REG8(UART0 + 0)
#define UART_IER REG8(UART0 + 1)
#define UART_FCR REG8(UART0 + 2)
#define UART_LCR REG8(UART0 + 3)
#define UART_LSR REG8(UART0 + 5)
#define LSR_DR 0x01u                 /* a byte is waiting */
#define LSR_THRE 0x20u               /* the transmitter takes another byte */
#define MTIME_LO (*(volatile uint32_t *)0x0200BFF8u)

void board_counter_start(void)
{
    /* mtime runs from reset and cannot be stopped: nothing to start */
}

uint32_t board_counter_now(void)
{
    return MTIME_LO;                 /* the low word: the counter is modulo 2^32 */
}

void board_init(void)
{
    UART_IER = 0;                    /* polled */
    UART_LCR = 0x03;                 /* 8N1 (QEMU ignores the baud rate) */
    UART_FCR = 0x07;                 /* FIFOs on and cleared */
}

int board_getc(void)
{
    if (!(UART_LSR & LSR_DR)) return -1;
    return (int)UART_RBR;
}

void board_write(const uint8_t *p, size_t n)
{
    while (n--) {
        while (!(UART_LSR & LSR_THRE)) {
        }
        UART_THR = *p++;
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
