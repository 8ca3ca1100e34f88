/* mcu-nn serial protocol: frames, commands and error codes (docs/protocol.md).
 * A frame on the wire is COBS(raw) followed by one 0x00 byte; raw is
 *   cmd u8 | seq u16 LE | len u16 LE | payload[len] | crc16 LE (CRC-16/CCITT-FALSE over cmd..payload). */
#ifndef MCUNN_PROTO_H
#define MCUNN_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define MCUNN_PROTO_VERSION 1
#define MCUNN_HEADER 5u            /* cmd, seq, len */
#define MCUNN_TRAILER 2u           /* crc16 */

/* requests; a reply has the request's command | 0x80 and the request's seq */
#define MCUNN_CMD_HELLO 0x01
#define MCUNN_CMD_RESET 0x02
#define MCUNN_CMD_STEP 0x03
#define MCUNN_CMD_RUN_BEGIN 0x04
#define MCUNN_CMD_RUN_DATA 0x05
#define MCUNN_CMD_READ 0x06
#define MCUNN_CMD_GENERATE 0x07    /* language models: the generation loop on the chip */
#define MCUNN_REPLY 0x80
#define MCUNN_CMD_ERROR 0x7F       /* payload: code u8, cmd u8, ASCII message */

#define MCUNN_E_CRC 1              /* frame's CRC does not match: resend */
#define MCUNN_E_FRAME 2            /* bad COBS, too short, or length field disagrees: resend */
#define MCUNN_E_OVERSIZE 3         /* frame longer than the receive buffer */
#define MCUNN_E_UNKNOWN_CMD 4
#define MCUNN_E_BAD_LENGTH 5       /* payload size wrong for the command */
#define MCUNN_E_STATE 6            /* RUN_DATA without RUN_BEGIN, more steps than announced, ... */
#define MCUNN_E_UNSUPPORTED 7      /* e.g. STEP on a bidirectional model */

/* value types in HELLO */
#define MCUNN_T_INT16 0
#define MCUNN_T_INT32 1
#define MCUNN_T_FLOAT32 2

/* counter kinds in HELLO */
#define MCUNN_COUNTER_NONE 0
#define MCUNN_COUNTER_CYCLES 1     /* CPU cycles (DWT CYCCNT) */
#define MCUNN_COUNTER_TIMER 2      /* a timer at counter_hz (QEMU: virtual time, exact under -icount) */
#define MCUNN_COUNTER_NS 3         /* host board: nanoseconds of wall time */

uint16_t mcunn_crc16(const uint8_t *p, size_t n, uint16_t crc);
/* COBS-encode n bytes of src into dst (room for n + n/254 + 1); returns the encoded length (no 0x00). */
size_t mcunn_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst);
/* Decode in place; returns the decoded length, or (size_t)-1 when the encoding is invalid. */
size_t mcunn_cobs_decode(uint8_t *buf, size_t n);

typedef struct {
    uint8_t cmd;
    uint16_t seq;
    uint16_t len;
    const uint8_t *payload;    /* points into the receiver's buffer until the next byte is fed */
    uint16_t crc;              /* the frame's CRC (identifies a request for the reply cache) */
} mcunn_frame_t;

typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t n;
    int overflow;
} mcunn_rx_t;

void mcunn_rx_init(mcunn_rx_t *rx, uint8_t *buf, size_t cap);
/* Feed one received byte. Returns 1 when a valid frame was completed (*f filled), 0 when more
 * bytes are needed (an empty frame, i.e. a lone 0x00, is ignored), or -MCUNN_E_* when the
 * completed frame was bad; f->seq/cmd then hold a best guess (0 if unknown). */
int mcunn_rx_byte(mcunn_rx_t *rx, uint8_t b, mcunn_frame_t *f);

/* Build raw frame (header, payload, crc) into raw and COBS-encode it into enc; returns the
 * number of bytes to send including the closing 0x00. enc needs MCUNN_ENC_CAP(len) bytes. */
#define MCUNN_RAW_CAP(len) ((len) + MCUNN_HEADER + MCUNN_TRAILER)
#define MCUNN_ENC_CAP(len) (MCUNN_RAW_CAP(len) + MCUNN_RAW_CAP(len) / 254u + 2u)
size_t mcunn_frame_encode(uint8_t cmd, uint16_t seq, const uint8_t *payload, uint16_t len,
                          uint8_t *raw, uint8_t *enc);

#endif
