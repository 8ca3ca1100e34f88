/* Arduino Uno/Nano (ATmega328P) and Mega (ATmega2560) at 16 MHz: USART0 at 115200 baud
 * (U2X, UBRR 16), Timer1 at the CPU clock as the counter, widened to 32 bits by its overflow
 * interrupt (about 30 cycles every 65536, inside measured regions: < 0.05%). Both chips name
 * these registers alike in avr-libc. Under simavr the count is exact CPU cycles. */
#include <avr/interrupt.h>
#include <avr/io.h>
#include "board.h"

static volatile uint16_t g_t1_high;   /* Timer1 overflows: bits 16..31 of the counter */

ISR(TIMER1_OVF_vect)
{
    ++g_t1_high;
}

void board_counter_start(void)
{
    TCCR1A = 0;
    TCCR1B = 0;                       /* stopped while it is set up */
    TCNT1 = 0;
    g_t1_high = 0;
    TIFR1 = _BV(TOV1);
    TIMSK1 = _BV(TOIE1);
    TCCR1B = _BV(CS10);               /* normal mode, clock / 1 */
    sei();
}

uint32_t board_counter_now(void)
{
    uint8_t sreg = SREG;
    uint16_t lo, hi;
    cli();
    lo = TCNT1;
    hi = g_t1_high;
    if ((TIFR1 & _BV(TOV1)) && lo < 0x8000u) ++hi;   /* wrapped, interrupt not yet taken */
    SREG = sreg;
    return ((uint32_t)hi << 16) | lo;
}

void board_init(void)
{
    UCSR0A = _BV(U2X0);
    UBRR0 = 16;                       /* 16 MHz / (8 * (16 + 1)) = 117647 baud, 2.1% from 115200 */
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);   /* 8N1 */
    UCSR0B = _BV(RXEN0) | _BV(TXEN0);
    board_counter_start();
}

int board_getc(void)
{
    if (!(UCSR0A & _BV(RXC0))) return -1;
    return UDR0;
}

void board_write(const uint8_t *p, size_t n)
{
    while (n--) {
        while (!(UCSR0A & _BV(UDRE0))) {
        }
        UDR0 = *p++;
    }
}

/* no periodic tick to stop: the overflow interrupt is part of the counter */
uint32_t board_counter_begin(void)
{
    return board_counter_now();
}

uint32_t board_counter_end(uint32_t begin)
{
    return board_counter_now() - begin;
}
