/* What a board provides to the inference server (boards/<name>/board.c). */
#ifndef MCUNN_BOARD_H
#define MCUNN_BOARD_H

#include <stddef.h>
#include <stdint.h>

void board_init(void);                              /* clocks, UART, counter, periodic tick */
int board_getc(void);                               /* one received byte, or -1 when none yet */
void board_write(const uint8_t *p, size_t n);       /* blocking */
/* Measured regions: begin stops the periodic tick (so its interrupt is not counted) and
 * returns the counter; end returns the ticks elapsed since begin and restarts the tick. */
uint32_t board_counter_begin(void);
uint32_t board_counter_end(uint32_t begin);
/* The counter alone, for firmware that measures without serving (the bench): start it with
 * no UART and no periodic tick; read it as ticks at the row's counter_hz, counting up,
 * modulo 2^32. Under an emulator row the difference of two reads converts to instructions. */
void board_counter_start(void);
uint32_t board_counter_now(void);

#endif
