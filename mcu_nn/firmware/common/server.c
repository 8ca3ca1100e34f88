/* The mcu-nn inference server: receives frames over the board's UART, runs the generated
 * model and replies (docs/protocol.md). The model is reached through mcunn_glue.h, which
 * `mcu-nn build` generates per export (it maps <name>_* onto glue_* and carries the hash). */
#include <string.h>
#include "board.h"
#include "mcunn_glue.h"
#include "mcunn_proto.h"

#define IN_STEP_BYTES ((size_t)GLUE_INPUT_SIZE * sizeof(glue_in_t))
#define OUT_VALUES ((size_t)GLUE_OUTPUT_SIZE)
#define RX_CAP MCUNN_ENC_CAP(GLUE_PAYLOAD_MAX)

static glue_state_t g_state;
static uint8_t g_rx_buf[RX_CAP];
static uint8_t g_tx_raw[MCUNN_RAW_CAP(GLUE_PAYLOAD_MAX)];
static uint8_t g_tx_enc[MCUNN_ENC_CAP(GLUE_PAYLOAD_MAX)];
/* aligned scratch for inputs and outputs (frame payloads are not aligned) */
static union { glue_in_t v[GLUE_PAYLOAD_MAX / sizeof(glue_in_t) + 1]; uint8_t b[1]; } g_x;
static union { glue_out_t v[GLUE_PAYLOAD_MAX / sizeof(glue_out_t) + 1]; uint8_t b[1]; } g_y;
#if !GLUE_HAS_STEP
/* bidirectional: the whole sequence is needed before the reverse direction can start */
static glue_in_t g_seq_x[GLUE_MAX_STEPS * GLUE_INPUT_SIZE];
static glue_out_t g_seq_y[(GLUE_OUTPUT_PER_STEP ? GLUE_MAX_STEPS : 1) * GLUE_OUTPUT_SIZE];
#endif

/* The last reply, kept so that a retransmitted request (same seq and CRC: its reply was
 * lost) is answered again without running the model twice. */
static uint8_t g_reply[GLUE_PAYLOAD_MAX];
static uint16_t g_reply_len;
static uint8_t g_reply_cmd;
static uint16_t g_cache_seq, g_cache_crc;
static int g_cache_valid;

static uint32_t g_run_total, g_run_done;

#if GLUE_HAS_STEP && GLUE_LM
/* GENERATE: the runtime's generation loop (mcunn_lm_generate) over glue_step, one token in and
 * int16 logits out per step: token models take the id, float models a one-hot vector. */
#include "mcunn_fixedpoint.h"
#define GEN_IDS_MAX (GLUE_PAYLOAD_MAX / 2)
#define GEN_HEADER 14u            /* flags u8, 0 u8, n u16, temperature_milli u32, seed u32, n_prefix u16 */
static int16_t g_logits[GLUE_OUTPUT_SIZE];
static uint16_t g_gen_in[GEN_IDS_MAX], g_gen_out[GEN_IDS_MAX];
static mcunn_sampler_t g_sampler;
static int g_gen_live;            /* a generation may continue: no RESET or RUN since it started */

static void mcunn_srv_lm_step(void *model, uint16_t token, int16_t *logits)
{
    size_t j;
#if GLUE_LM_TOKENS
    g_x.v[0] = (glue_in_t)token;
#else
    for (j = 0; j < GLUE_INPUT_SIZE; ++j) g_x.v[j] = glue_quantize_input(0.0f);
    g_x.v[token] = glue_quantize_input(1.0f);
#endif
    glue_step((glue_state_t *)model, g_x.v, g_y.v);
    for (j = 0; j < GLUE_OUTPUT_SIZE; ++j)
#if GLUE_LM_FLOAT_LOGITS
        logits[j] = mcunn_quantize_f32((float)g_y.v[j], 256.0f);   /* Q8.8, fixedpoint.FLOAT_LOGIT_INV_SCALE */
#else
        logits[j] = (int16_t)g_y.v[j];
#endif
}
#endif

static void send(uint8_t cmd, uint16_t seq, const uint8_t *p, uint16_t len)
{
    size_t n = mcunn_frame_encode(cmd, seq, p, len, g_tx_raw, g_tx_enc);
    board_write(g_tx_enc, n);
}

static void send_error(uint16_t seq, uint8_t cmd, uint8_t code, const char *msg)
{
    uint8_t p[64];
    size_t n = strlen(msg);
    if (n > sizeof p - 2) n = sizeof p - 2;
    p[0] = code;
    p[1] = cmd;
    memcpy(p + 2, msg, n);
    send(MCUNN_CMD_ERROR, seq, p, (uint16_t)(n + 2));
}

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v); put16(p + 2, v >> 16); }
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static size_t put_str(uint8_t *p, const char *s)
{
    size_t n = strlen(s);
    if (n > 255) n = 255;
    p[0] = (uint8_t)n;
    memcpy(p + 1, s, n);
    return n + 1;
}

/* cycles + count + values: the reply body of STEP, RUN_DATA and READ */
static uint16_t reply_values(uint32_t cycles, const glue_out_t *y, size_t count)
{
    put32(g_reply, cycles);
    put16(g_reply + 4, (uint32_t)count);
    memcpy(g_reply + 6, y, count * sizeof(glue_out_t));
    return (uint16_t)(6 + count * sizeof(glue_out_t));
}

#if GLUE_HAS_STEP && GLUE_LM
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }

/* flags bit0 = continue (keep the model state and the sampler; temperature and seed unused) */
static int do_generate(const mcunn_frame_t *f, const char **err)
{
    uint32_t t0, cycles, n, np_, k;
    if (f->len < GEN_HEADER) { *err = "GENERATE needs a 14-byte header"; return -MCUNN_E_BAD_LENGTH; }
    n = get16(f->payload + 2);
    np_ = get16(f->payload + 12);
    if (f->len != GEN_HEADER + 2 * np_ || np_ == 0) { *err = "GENERATE needs n_prefix >= 1 token ids"; return -MCUNN_E_BAD_LENGTH; }
    if (6 + 2 * n > GLUE_PAYLOAD_MAX) { *err = "GENERATE: n exceeds one reply"; return -MCUNN_E_BAD_LENGTH; }
    for (k = 0; k < np_; ++k) {
        g_gen_in[k] = get16(f->payload + GEN_HEADER + 2 * k);
        if (g_gen_in[k] >= GLUE_VOCAB) { *err = "token id outside the vocabulary"; return -MCUNN_E_STATE; }
    }
    if (f->payload[0] & 1) {
        if (!g_gen_live) { *err = "nothing to continue: start a GENERATE first"; return -MCUNN_E_STATE; }
    } else {
        if (get32(f->payload + 4) > 1000000u) { *err = "temperature above 1000"; return -MCUNN_E_STATE; }
        glue_reset(&g_state);
        mcunn_sampler_init(&g_sampler, GLUE_LOGIT_K, get32(f->payload + 4), get32(f->payload + 8));
    }
    g_gen_live = 1;
    t0 = board_counter_begin();
    mcunn_lm_generate(mcunn_srv_lm_step, &g_state, g_logits, GLUE_VOCAB, &g_sampler, g_gen_in, np_, g_gen_out, n);
    cycles = board_counter_end(t0);
    put32(g_reply, cycles);
    put16(g_reply + 4, n);
    for (k = 0; k < n; ++k) put16(g_reply + 6 + 2 * k, g_gen_out[k]);
    return (int)(6 + 2 * n);
}
#endif

static uint16_t do_hello(void)
{
    uint8_t *p = g_reply;
    size_t n;
    p[0] = MCUNN_PROTO_VERSION;
    p[1] = GLUE_PRECISION;
    p[2] = GLUE_IN_TYPE;
    p[3] = GLUE_OUT_TYPE;
    p[4] = (uint8_t)((GLUE_OUTPUT_PER_STEP ? 1 : 0) | (GLUE_HAS_STEP ? 2 : 0) | (GLUE_MODIFIED ? 4 : 0));
    p[5] = GLUE_COUNTER_KIND;
    put16(p + 6, GLUE_INPUT_SIZE);
    put16(p + 8, GLUE_OUTPUT_SIZE);
    put16(p + 10, GLUE_MAX_STEPS);
    put16(p + 12, GLUE_PAYLOAD_MAX);
    put32(p + 14, GLUE_CLOCK_HZ);
    put32(p + 18, GLUE_COUNTER_HZ);
    memcpy(p + 22, glue_hash, 32);
    n = 54;
    n += put_str(p + n, GLUE_NAME);
    n += put_str(p + n, GLUE_BOARD);
    return (uint16_t)n;
}

/* Returns the reply length, or -code with *err set for an error reply. */
static int handle(const mcunn_frame_t *f, const char **err)
{
    uint32_t t0, cycles, k;
    switch (f->cmd) {
    case MCUNN_CMD_HELLO:
        return do_hello();
    case MCUNN_CMD_RESET:
#if GLUE_HAS_STEP && GLUE_LM
        g_gen_live = 0;
#endif
        glue_reset(&g_state);
        g_run_total = g_run_done = 0;
        return 0;
    case MCUNN_CMD_STEP:
#if GLUE_HAS_STEP
        if (f->len != IN_STEP_BYTES) { *err = "STEP needs one step of input"; return -MCUNN_E_BAD_LENGTH; }
        memcpy(g_x.b, f->payload, f->len);
        t0 = board_counter_begin();
        glue_step(&g_state, g_x.v, g_y.v);
        cycles = board_counter_end(t0);
        return reply_values(cycles, g_y.v, OUT_VALUES);
#else
        *err = "bidirectional model: no STEP, use RUN";
        return -MCUNN_E_UNSUPPORTED;
#endif
    case MCUNN_CMD_RUN_BEGIN:
        if (f->len != 4) { *err = "RUN_BEGIN needs u32 steps"; return -MCUNN_E_BAD_LENGTH; }
        k = get32(f->payload);
        if (k == 0 || (GLUE_MAX_STEPS && k > GLUE_MAX_STEPS)) { *err = "steps out of range"; return -MCUNN_E_STATE; }
#if GLUE_HAS_STEP && GLUE_LM
        g_gen_live = 0;
#endif
        glue_reset(&g_state);
        g_run_total = k;
        g_run_done = 0;
        return 0;
    case MCUNN_CMD_RUN_DATA:
        if (f->len == 0 || f->len % IN_STEP_BYTES) { *err = "RUN_DATA needs whole steps"; return -MCUNN_E_BAD_LENGTH; }
        k = (uint32_t)(f->len / IN_STEP_BYTES);
        if (g_run_done + k > g_run_total) { *err = "more steps than RUN_BEGIN announced"; return -MCUNN_E_STATE; }
#if GLUE_HAS_STEP
        if (GLUE_OUTPUT_PER_STEP && 6 + k * OUT_VALUES * sizeof(glue_out_t) > GLUE_PAYLOAD_MAX) {
            *err = "chunk outputs exceed the reply buffer";
            return -MCUNN_E_BAD_LENGTH;
        }
        memcpy(g_x.b, f->payload, f->len);
        t0 = board_counter_begin();
        glue_run(&g_state, g_x.v, k, g_y.v);
        cycles = board_counter_end(t0);
        g_run_done += k;
        return reply_values(cycles, g_y.v, GLUE_OUTPUT_PER_STEP ? k * OUT_VALUES : OUT_VALUES);
#else
        memcpy((uint8_t *)g_seq_x + (size_t)g_run_done * IN_STEP_BYTES, f->payload, f->len);
        g_run_done += k;
        cycles = 0;
        if (g_run_done == g_run_total) {
            t0 = board_counter_begin();
            glue_run(&g_state, g_seq_x, g_run_total, g_seq_y);
            cycles = board_counter_end(t0);
        }
        return reply_values(cycles, g_y.v, 0);
#endif
    case MCUNN_CMD_READ:
#if GLUE_HAS_STEP
        *err = "READ is for bidirectional models";
        return -MCUNN_E_UNSUPPORTED;
#else
        if (f->len != 6) { *err = "READ needs u32 offset, u16 count"; return -MCUNN_E_BAD_LENGTH; }
        t0 = get32(f->payload);
        k = (uint32_t)f->payload[4] | ((uint32_t)f->payload[5] << 8);
        if (t0 > sizeof g_seq_y / sizeof g_seq_y[0] || k > sizeof g_seq_y / sizeof g_seq_y[0] - t0
            || 6 + k * sizeof(glue_out_t) > GLUE_PAYLOAD_MAX) {
            *err = "READ range out of bounds";
            return -MCUNN_E_STATE;
        }
        return reply_values(0, g_seq_y + t0, k);
#endif
    case MCUNN_CMD_GENERATE:
#if GLUE_HAS_STEP && GLUE_LM
        return do_generate(f, err);
#else
        *err = GLUE_HAS_STEP ? "not a language model: output size != vocabulary" : "no streaming step to generate with";
        return -MCUNN_E_UNSUPPORTED;
#endif
    default:
        *err = "unknown command";
        return -MCUNN_E_UNKNOWN_CMD;
    }
}

static void on_frame(const mcunn_frame_t *f)
{
    const char *err = "";
    int r;
    if (f->len > GLUE_PAYLOAD_MAX) {   /* the receive buffer holds a few bytes more (COBS slack): */
        send_error(f->seq, f->cmd, MCUNN_E_OVERSIZE,  /* no command may copy more than its buffers */
                   "payload longer than the frame size HELLO gives");
        return;
    }
    if (f->cmd == MCUNN_CMD_HELLO) g_cache_valid = 0;   /* a new session: seq numbers restart */
    if (g_cache_valid && f->seq == g_cache_seq && f->crc == g_cache_crc) {
        send(g_reply_cmd, f->seq, g_reply, g_reply_len);  /* retransmission: same answer, no rerun */
        return;
    }
    r = handle(f, &err);
    if (r < 0) {
        send_error(f->seq, f->cmd, (uint8_t)-r, err);
        return;
    }
    g_reply_cmd = (uint8_t)(f->cmd | MCUNN_REPLY);
    g_reply_len = (uint16_t)r;
    g_cache_seq = f->seq;
    g_cache_crc = f->crc;
    g_cache_valid = 1;
    send(g_reply_cmd, f->seq, g_reply, g_reply_len);
}

int main(void)
{
    static const char *const bad[] = {"", "bad CRC", "bad frame", "frame too long"};
    mcunn_rx_t rx;
    mcunn_frame_t f;
    board_init();
    glue_reset(&g_state);
    mcunn_rx_init(&rx, g_rx_buf, sizeof g_rx_buf);
    for (;;) {
        int c = board_getc(), r;
        if (c < 0) continue;
        r = mcunn_rx_byte(&rx, (uint8_t)c, &f);
        if (r > 0) on_frame(&f);
        else if (r < 0) send_error(f.seq, f.cmd, (uint8_t)-r, bad[-r]);
    }
}
