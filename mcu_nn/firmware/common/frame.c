/* Framing of the mcu-nn serial protocol: CRC-16/CCITT-FALSE, COBS, and a byte-at-a-time
 * receiver that resynchronises on every 0x00. No allocation; the caller owns the buffers. */
#include <string.h>
#include "mcunn_proto.h"

uint16_t mcunn_crc16(const uint8_t *p, size_t n, uint16_t crc)
{
    /* bitwise (poly 0x1021): 512 bytes of table are not worth the flash at serial speeds */
    size_t i;
    int k;
    for (i = 0; i < n; ++i) {
        crc ^= (uint16_t)((uint16_t)p[i] << 8);
        for (k = 0; k < 8; ++k)
            crc = (uint16_t)((crc & 0x8000u) ? (((unsigned)crc << 1) ^ 0x1021u) : ((unsigned)crc << 1));
    }
    return crc;
}

size_t mcunn_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst)
{
    size_t out = 1, code_at = 0, i;
    uint8_t code = 1;
    for (i = 0; i < n; ++i) {
        if (src[i] == 0) {
            dst[code_at] = code;
            code_at = out++;
            code = 1;
        } else {
            dst[out++] = src[i];
            if (++code == 0xFF) {
                dst[code_at] = code;
                code_at = out++;
                code = 1;
            }
        }
    }
    dst[code_at] = code;
    return out;
}

size_t mcunn_cobs_decode(uint8_t *buf, size_t n)
{
    size_t in = 0, out = 0;
    while (in < n) {
        uint8_t code = buf[in++];
        size_t k;
        if (code == 0 || in + (size_t)(code - 1) > n) return (size_t)-1;
        for (k = 1; k < code; ++k) {
            if (buf[in] == 0) return (size_t)-1;
            buf[out++] = buf[in++];
        }
        if (code != 0xFF && in < n) buf[out++] = 0;
    }
    return out;
}

void mcunn_rx_init(mcunn_rx_t *rx, uint8_t *buf, size_t cap)
{
    rx->buf = buf;
    rx->cap = cap;
    rx->n = 0;
    rx->overflow = 0;
}

/* (uint16_t): a uint8_t << 8 is a signed int, which overflows where int is 16-bit (AVR) */
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }

int mcunn_rx_byte(mcunn_rx_t *rx, uint8_t b, mcunn_frame_t *f)
{
    size_t n;
    f->cmd = 0;
    f->seq = 0;
    f->len = 0;
    f->payload = 0;
    f->crc = 0;
    if (b != 0) {
        if (rx->n < rx->cap) rx->buf[rx->n++] = b;
        else rx->overflow = 1;
        return 0;
    }
    n = rx->n;
    rx->n = 0;
    if (rx->overflow) {
        rx->overflow = 0;
        return -MCUNN_E_OVERSIZE;
    }
    if (n == 0) return 0;
    n = mcunn_cobs_decode(rx->buf, n);
    if (n == (size_t)-1 || n < MCUNN_HEADER + MCUNN_TRAILER) return -MCUNN_E_FRAME;
    f->cmd = rx->buf[0];
    f->seq = rd16(rx->buf + 1);
    f->len = rd16(rx->buf + 3);
    if ((size_t)f->len + MCUNN_HEADER + MCUNN_TRAILER != n) return -MCUNN_E_FRAME;
    f->crc = rd16(rx->buf + n - 2);
    if (mcunn_crc16(rx->buf, n - 2, 0xFFFFu) != f->crc) return -MCUNN_E_CRC;
    f->payload = rx->buf + MCUNN_HEADER;
    return 1;
}

size_t mcunn_frame_encode(uint8_t cmd, uint16_t seq, const uint8_t *payload, uint16_t len,
                          uint8_t *raw, uint8_t *enc)
{
    size_t n = MCUNN_HEADER + (size_t)len, e;
    uint16_t crc;
    raw[0] = cmd;
    raw[1] = (uint8_t)seq;
    raw[2] = (uint8_t)(seq >> 8);
    raw[3] = (uint8_t)len;
    raw[4] = (uint8_t)(len >> 8);
    if (len) memmove(raw + MCUNN_HEADER, payload, len);
    crc = mcunn_crc16(raw, n, 0xFFFFu);
    raw[n] = (uint8_t)crc;
    raw[n + 1] = (uint8_t)(crc >> 8);
    e = mcunn_cobs_encode(raw, n + 2, enc);
    enc[e] = 0;
    return e + 1;
}
