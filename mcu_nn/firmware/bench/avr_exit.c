/* Output and exit for the bench on AVR under simavr (mcu_nn/launch.py --run): text over
 * USART0 (the launcher copies it to stdout), exit by sleeping with interrupts off, which
 * simavr takes as the program's end. Start-up is avr-libc's. */
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include "bench.h"

static void uart_init(void)
{
    if (UCSR0B & _BV(TXEN0)) return;
    UCSR0A = _BV(U2X0);
    UBRR0 = 16;
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(TXEN0);
}

void bench_puts(const char *s)
{
    uart_init();
    for (; *s; ++s) {
        while (!(UCSR0A & _BV(UDRE0))) {
        }
        UDR0 = (uint8_t)*s;
    }
    while (!(UCSR0A & _BV(UDRE0))) {
    }
}

void bench_exit(int code)
{
    (void)code;
    /* simavr sends a byte as UDR0 is written, so nothing is left to wait for */
    set_sleep_mode(SLEEP_MODE_PWR_DOWN);
    cli();
    sleep_enable();
    sleep_cpu();
    for (;;) {
    }
}

/* main's return: avr-libc's exit() runs the .fini sections and would then spin with
 * interrupts off; this one stops simavr first */
void mcunn_avr_fini(void) __attribute__((naked, used, section(".fini1")));
void mcunn_avr_fini(void)
{
    bench_exit(0);
}
