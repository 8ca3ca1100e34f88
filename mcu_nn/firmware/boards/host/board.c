/* The server on the machine the tool runs on, over a pseudo-terminal: prints
 * "mcu-nn host board on /dev/pts/N" and serves that pty. For protocol debugging. */
#define _XOPEN_SOURCE 600
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include "board.h"

static int g_fd = -1;
static unsigned char g_buf[4096];
static ssize_t g_n, g_i;

void board_init(void)
{
    struct termios t;
    g_fd = posix_openpt(O_RDWR | O_NOCTTY);
    if (g_fd < 0 || grantpt(g_fd) || unlockpt(g_fd)) {
        perror("mcu-nn host board: pty");
        exit(2);
    }
    if (tcgetattr(g_fd, &t) == 0) {
        cfmakeraw(&t);
        tcsetattr(g_fd, TCSANOW, &t);
    }
    printf("mcu-nn host board on %s\n", ptsname(g_fd));
    fflush(stdout);
}

int board_getc(void)
{
    if (g_i < g_n) return g_buf[g_i++];
    struct pollfd p = {g_fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0 || !(p.revents & POLLIN)) {
        if (p.revents & POLLHUP) usleep(10000);   /* nobody has the pty open yet */
        return -1;
    }
    g_n = read(g_fd, g_buf, sizeof g_buf);
    g_i = 0;
    if (g_n <= 0) {
        g_n = 0;
        if (errno == EIO) usleep(10000);
        return -1;
    }
    return g_buf[g_i++];
}

void board_write(const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(g_fd, p, n);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static uint32_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
}

void board_counter_start(void) {}
uint32_t board_counter_now(void) { return now_ns(); }
uint32_t board_counter_begin(void) { return now_ns(); }
uint32_t board_counter_end(uint32_t begin) { return now_ns() - begin; }
