/* Bench firmware helpers (semihost.c). */
#ifndef MCUNN_BENCH_H
#define MCUNN_BENCH_H
void bench_puts(const char *s);
void bench_exit(int code);
#endif
