/* Randomised test of the firmware's frame receiver (frame.c), built for the host under
 * ASan/UBSan by tests/test_protocol.py:  fuzz_frame ITERATIONS SEED
 * Each iteration encodes a random frame, feeds it clean (must decode to the same bytes),
 * then a mutated copy (bytes flipped, dropped, duplicated, zeros inserted, truncated, or
 * pure noise), then the clean frame again (the receiver must have resynchronised).
 * Any frame accepted from mutated input must still be self-consistent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mcunn_proto.h"

#define CAP 300u                    /* receiver buffer (encoded bytes) */
#define MAXP 320u                   /* payloads up to past the buffer: oversize path */

static uint32_t g_rng;
static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 17;
    g_rng ^= g_rng << 5;
    return g_rng;
}

static int fail(const char *what, unsigned long it)
{
    fprintf(stderr, "fuzz_frame: %s at iteration %lu\n", what, it);
    return 1;
}

int main(int argc, char **argv)
{
    static uint8_t rxbuf[CAP], raw[MCUNN_RAW_CAP(MAXP)], enc[MCUNN_ENC_CAP(MAXP)], mut[4 * MCUNN_ENC_CAP(MAXP)];
    static uint8_t payload[MAXP];
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 100000ul, it, good = 0, rejected = 0, accepted = 0;
    mcunn_rx_t rx;
    mcunn_frame_t f;
    g_rng = argc > 2 ? (uint32_t)strtoul(argv[2], 0, 10) | 1u : 1u;
    mcunn_rx_init(&rx, rxbuf, sizeof rxbuf);
    for (it = 0; it < n; ++it) {
        uint16_t len = (uint16_t)(rnd() % MAXP), seq = (uint16_t)rnd();
        uint8_t cmd = (uint8_t)rnd();
        size_t e, m = 0, i;
        int pass, r, fits;
        for (i = 0; i < len; ++i) payload[i] = (uint8_t)(rnd() % 4 == 0 ? 0 : rnd());
        e = mcunn_frame_encode(cmd, seq, payload, len, raw, enc);
        fits = e - 1 <= CAP;
        /* mutate */
        switch (rnd() % 6) {
        case 0: memcpy(mut, enc, e); m = e; mut[rnd() % (e - 1)] ^= (uint8_t)(1u << (rnd() % 8)); break;
        case 1: i = rnd() % e; memcpy(mut, enc, i); memcpy(mut + i, enc + i + 1, e - i - 1); m = e - 1; break;
        case 2: i = rnd() % e; memcpy(mut, enc, i + 1); memcpy(mut + i + 1, enc + i, e - i); m = e + 1; break;
        case 3: i = rnd() % e; memcpy(mut, enc, i); mut[i] = 0; memcpy(mut + i + 1, enc + i, e - i); m = e + 1; break;
        case 4: m = rnd() % e; memcpy(mut, enc, m); break;
        default: m = rnd() % sizeof mut; for (i = 0; i < m; ++i) mut[i] = (uint8_t)rnd(); break;
        }
        for (pass = 0; pass < 3; ++pass) {
            const uint8_t *src = pass == 1 ? mut : enc;
            size_t cnt = pass == 1 ? m : e, got = 0;
            if (pass == 2) { r = mcunn_rx_byte(&rx, 0, &f); (void)r; }   /* the host's leading 0x00 */
            for (i = 0; i < cnt; ++i) {
                r = mcunn_rx_byte(&rx, src[i], &f);
                if (r > 0) {
                    ++got;
                    if (f.len > CAP || (f.len && f.payload < rxbuf) || f.payload + f.len > rxbuf + CAP)
                        return fail("accepted frame points outside the buffer", it);
                    if (mcunn_crc16(f.payload - MCUNN_HEADER, (size_t)f.len + MCUNN_HEADER, 0xFFFFu) != f.crc)
                        return fail("accepted frame with a wrong CRC", it);
                    if (pass != 1 && (f.cmd != cmd || f.seq != seq || f.len != len || memcmp(f.payload, payload, len)))
                        return fail("clean frame decoded wrongly", it);
                    if (pass == 1) ++accepted;
                } else if (r < 0) {
                    if (pass != 1 && fits) return fail("clean frame rejected", it);
                    if (pass == 1) ++rejected;
                }
            }
            if (pass != 1 && fits && got != 1) return fail("clean frame not decoded", it);
            if (pass != 1) good += got;
        }
    }
    printf("fuzz_frame: %lu iterations, %lu clean frames decoded, %lu mutated rejected, %lu mutated accepted (valid CRC)\n",
           n, good, rejected, accepted);
    return 0;
}
