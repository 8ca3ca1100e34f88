/* mcu-nn's simavr launcher (mcu_nn/launch.py compiles it once against libsimavr): the simavr
 * command line has no way to feed UART0, so this boots an AVR ELF and either
 *   --serve PORT  bridges UART0 both ways to a loopback TCP server (one client at a time; the
 *                 CPU runs only while a client is connected, like QEMU's `server=on,wait=on`), or
 *   --run         writes UART0's bytes to stdout until the program sleeps with interrupts off
 *                 (simavr's "quit gracefully": the bench's exit); exit status 0, else 1.
 * simavr is cycle-exact, so Timer1 on the chip counts CPU cycles.
 * usage: mcunn-simavr-uart MCU FREQ_HZ ELF (--serve PORT | --run) */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <simavr/avr_uart.h>
#include <simavr/sim_avr.h>
#include <simavr/sim_elf.h>
#include <simavr/sim_io.h>
#include <simavr/sim_irq.h>

#define BATCH 20000              /* instructions between looks at the socket */
#define BOOT_INSTRUCTIONS 100000

static int g_out = -1;           /* where UART0's output goes: the client socket or stdout */
static int g_full;               /* simavr's RX FIFO is full (XOFF) */
static int g_idle = 1;           /* the firmware sent a frame's end and has no unread input */
static unsigned char g_obuf[4096];
static size_t g_on;

static void flush_out(void)
{
    size_t k = 0;
    while (k < g_on) {
        ssize_t w = write(g_out, g_obuf + k, g_on - k);
        if (w <= 0) break;          /* the client left: drop the rest */
        k += (size_t)w;
    }
    g_on = 0;
}

static void on_output(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq, (void)param;
    if (g_on == sizeof g_obuf) flush_out();
    g_obuf[g_on++] = (unsigned char)value;
    if (value == 0) g_idle = 1;     /* a frame ends with 0x00: the reply is complete */
}

static void on_xon(struct avr_irq_t *irq, uint32_t value, void *param) { (void)irq, (void)value, (void)param; g_full = 0; }
static void on_xoff(struct avr_irq_t *irq, uint32_t value, void *param) { (void)irq, (void)value, (void)param; g_full = 1; }

static int run_done(avr_t *avr)
{
    return avr->state == cpu_Done || avr->state == cpu_Crashed;
}

static int serve(avr_t *avr, avr_irq_t *in, int port)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1, i;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1) < 0) {
        fprintf(stderr, "simavr: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    /* boot first (start-up, board_init), so that no byte of the first request arrives before
     * the receiver is enabled */
    for (i = 0; i < BOOT_INSTRUCTIONS && !run_done(avr); ++i) avr_run(avr);
    for (;;) {
        unsigned char ibuf[256];
        size_t in_n = 0, in_at = 0;
        int c = accept(ls, NULL, NULL);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        g_out = c;
        for (;;) {
            struct pollfd p = {c, POLLIN, 0};
            /* idle (waiting for a request): block briefly instead of spinning the CPU model */
            if (in_at == in_n && poll(&p, 1, g_idle ? 1 : 0) > 0) {
                ssize_t r = read(c, ibuf, sizeof ibuf);
                if (r <= 0) break;     /* the client left: wait for the next one */
                in_n = (size_t)r;
                in_at = 0;
                g_idle = 0;
            }
            for (i = 0; i < BATCH && !run_done(avr); ++i) {
                if (in_at < in_n && !g_full) avr_raise_irq(in, ibuf[in_at++]);
                avr_run(avr);
            }
            flush_out();
            if (run_done(avr)) {
                fprintf(stderr, "simavr: the firmware stopped (state %d)\n", avr->state);
                return 1;
            }
        }
        close(c);
        g_out = -1;
    }
}

int main(int argc, char **argv)
{
    elf_firmware_t fw;
    avr_t *avr;
    uint32_t flags = 0;
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s MCU FREQ_HZ ELF (--serve PORT | --run)\n", argv[0]);
        return 2;
    }
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(argv[3], &fw) != 0) {
        fprintf(stderr, "simavr: cannot read %s\n", argv[3]);
        return 2;
    }
    snprintf(fw.mmcu, sizeof fw.mmcu, "%s", argv[1]);
    fw.frequency = (uint32_t)strtoul(argv[2], NULL, 10);
    avr = avr_make_mcu_by_name(fw.mmcu);
    if (!avr) {
        fprintf(stderr, "simavr: unknown MCU %s\n", fw.mmcu);
        return 2;
    }
    avr_init(avr);
    avr_load_firmware(avr, &fw);
    /* raw bytes, no console echo; no host sleep when the firmware polls an empty UART */
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), on_output, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), on_xon, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), on_xoff, NULL);
    if (strcmp(argv[4], "--serve") == 0 && argc == 6)
        return serve(avr, avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT), atoi(argv[5]));
    if (strcmp(argv[4], "--run") != 0) {
        fprintf(stderr, "simavr: expected --serve PORT or --run\n");
        return 2;
    }
    g_out = STDOUT_FILENO;
    while (!run_done(avr)) {
        avr_run(avr);
        if (g_on >= sizeof g_obuf / 2) flush_out();
    }
    flush_out();
    return avr->state == cpu_Done ? 0 : 1;
}
