#include "eeasr_core/protocol.h"

#include <float.h>
#include <string.h>

_Static_assert(sizeof(float) == 4 && FLT_MANT_DIG == 24, "f32 fields need IEEE 754 binary32 floats");
_Static_assert(EEASR_MAX_FRAME == EEASR_FRAME_SIZE(EEASR_MAX_PAYLOAD), "MAX_FRAME");
_Static_assert(EEASR_MAX_ENCODED == EEASR_ENCODED_MAX(EEASR_MAX_PAYLOAD), "MAX_ENCODED");

const char *eeasr_reason_str(eeasr_reason r) {
    switch (r) {
    case EEASR_OK: return "ok";
    case EEASR_TOO_LONG: return "frame longer than the receive buffer";
    case EEASR_BAD_COBS: return "bad COBS encoding";
    case EEASR_SHORT_FRAME: return "frame shorter than header + crc";
    case EEASR_LENGTH_MISMATCH: return "frame length does not match its header";
    case EEASR_BAD_CRC: return "crc mismatch";
    case EEASR_BAD_VERSION: return "unsupported protocol version";
    case EEASR_PAYLOAD_TOO_LARGE: return "payload exceeds 49152 bytes";
    case EEASR_UNKNOWN_TYPE: return "unknown message type";
    case EEASR_SHORT_PAYLOAD: return "payload shorter than its fixed fields";
    case EEASR_BAD_PAYLOAD_SIZE: return "payload has the wrong size for its type";
    case EEASR_BAD_EXIT_LIST: return "hello: truncated exit list";
    case EEASR_BAD_FIRMWARE_LENGTH: return "hello: payload length does not match its firmware string";
    case EEASR_BAD_AUDIO_LAYOUT: return "audio: payload must be 2 flag bytes + int16 samples";
    case EEASR_TOO_MANY_SAMPLES: return "audio: more than 4096 samples";
    case EEASR_BAD_TOKEN_LIST: return "result: truncated token list";
    case EEASR_BAD_TEXT_LENGTH: return "result: payload length does not match its text length";
    case EEASR_BAD_STATE_SIZE: return "handoff: state bytes do not match T_valid x d";
    case EEASR_BAD_SCALE: return "handoff: scale is not a positive number";
    case EEASR_BAD_UTF8: return "text is not valid UTF-8";
    case EEASR_NO_ROOM: return "output buffer too small";
    case EEASR_BAD_EXIT_COUNT: return "hello: 1 to 32 exit layers";
    case EEASR_TOO_MANY_TOKENS: return "result: more than 1024 tokens";
    case EEASR_TEXT_TOO_LONG: return "result: text longer than 4096 bytes";
    case EEASR_BAD_MODULE_MASK:
        return "handoff: bad module mask (a count of 1 to 255 modules, then ceil(count / 8) bytes, unused bits 0)";
    }
    return "unknown reason";
}

/* ---- little-endian fields --------------------------------------------------------------------------------- */

static uint32_t get_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static float get_f32le(const uint8_t *p) {
    uint32_t bits = get_u32le(p);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void put_f32le(uint8_t *p, float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    put_u32le(p, bits);
}

void eeasr_audio_samples(const eeasr_audio *a, int16_t *out) {
    for (size_t i = 0; i < a->n_samples; i++) out[i] = (int16_t)eeasr_get_u16le(a->samples + 2 * i);
}

/* ---- CRC-32 (reflected 0x04C11DB7 = 0xEDB88320), four bits at a time ---------------------------------------- */

static const uint32_t kCrcNibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t eeasr_crc32(uint32_t crc, const uint8_t *data, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc = (crc >> 4) ^ kCrcNibble[(crc ^ data[i]) & 0x0Fu];
        crc = (crc >> 4) ^ kCrcNibble[(crc ^ (uint32_t)(data[i] >> 4)) & 0x0Fu];
    }
    return ~crc;
}

/* ---- COBS ----------------------------------------------------------------------------------------------------- */

/* Streaming encoder: a code byte is reserved at the start of each block and filled when the block ends. Like
   the Python package, a full 254-byte block that ends the input gets no trailing code byte. */
typedef struct {
    uint8_t *out;
    size_t cap, pos, code_pos;
    uint8_t code;   /* 1 + data bytes in the current block */
    int after_full; /* the last block closed because it was full, and nothing followed */
    int no_room;
} cobs_writer;

static void cobs_begin(cobs_writer *w, uint8_t *out, size_t cap) {
    w->out = out;
    w->cap = cap;
    w->code_pos = 0;
    w->pos = 1;
    w->code = 1;
    w->after_full = 0;
    w->no_room = 0;
}

static void cobs_close_block(cobs_writer *w) {
    if (w->code_pos >= w->cap) {
        w->no_room = 1;
        return;
    }
    w->out[w->code_pos] = w->code;
    w->code_pos = w->pos++;
    w->code = 1;
}

static void cobs_put(cobs_writer *w, const uint8_t *data, size_t n) {
    for (size_t i = 0; i < n && !w->no_room; i++) {
        w->after_full = 0;
        if (data[i] == 0) {
            cobs_close_block(w);
        } else if (w->pos >= w->cap) {
            w->no_room = 1;
        } else {
            w->out[w->pos++] = data[i];
            if (++w->code == 0xFF) {
                cobs_close_block(w);
                w->after_full = 1;
            }
        }
    }
}

/* Bytes written, or 0 when out was too small. */
static size_t cobs_end(cobs_writer *w) {
    if (w->no_room) return 0;
    if (w->after_full) return w->code_pos; /* the reserved code byte is not needed */
    if (w->code_pos >= w->cap) return 0;
    w->out[w->code_pos] = w->code;
    return w->pos;
}

size_t eeasr_cobs_encode(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    cobs_writer w;
    cobs_begin(&w, out, cap);
    cobs_put(&w, in, n);
    return cobs_end(&w);
}

eeasr_reason eeasr_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *out_len) {
    size_t i = 0, o = 0;
    while (i < n) {
        size_t code = in[i++];
        if (code == 0 || code - 1 > n - i) return EEASR_BAD_COBS;
        if (memchr(in + i, 0, code - 1) != NULL) return EEASR_BAD_COBS;
        memmove(out + o, in + i, code - 1); /* o < i: in place, the write trails the read */
        o += code - 1;
        i += code - 1;
        if (i < n && code < 0xFF) out[o++] = 0;
    }
    *out_len = o;
    return EEASR_OK;
}

/* ---- frames --------------------------------------------------------------------------------------------------- */

static void put_header(uint8_t *h, uint8_t type, uint16_t seq, size_t n) {
    h[0] = EEASR_PROTOCOL_VERSION;
    h[1] = type;
    eeasr_put_u16le(h + 2, seq);
    eeasr_put_u16le(h + 4, (uint16_t)n);
}

eeasr_reason eeasr_frame_pack(uint8_t type, uint16_t seq, const uint8_t *payload, size_t n, uint8_t *out,
                              size_t cap, size_t *written) {
    if (n > EEASR_MAX_PAYLOAD) return EEASR_PAYLOAD_TOO_LARGE;
    if (cap < EEASR_FRAME_SIZE(n)) return EEASR_NO_ROOM;
    if (n) memmove(out + EEASR_HEADER_SIZE, payload, n);
    put_header(out, type, seq, n);
    put_u32le(out + EEASR_HEADER_SIZE + n, eeasr_crc32(0, out, EEASR_HEADER_SIZE + n));
    *written = EEASR_FRAME_SIZE(n);
    return EEASR_OK;
}

eeasr_reason eeasr_encode(uint8_t type, uint16_t seq, const uint8_t *payload, size_t n, uint8_t *out,
                          size_t cap, size_t *written) {
    if (n > EEASR_MAX_PAYLOAD) return EEASR_PAYLOAD_TOO_LARGE;
    uint8_t header[EEASR_HEADER_SIZE], crc[EEASR_CRC_SIZE];
    put_header(header, type, seq, n);
    put_u32le(crc, eeasr_crc32(eeasr_crc32(0, header, sizeof header), payload, n));
    cobs_writer w;
    cobs_begin(&w, out, cap);
    cobs_put(&w, header, sizeof header);
    cobs_put(&w, payload, n);
    cobs_put(&w, crc, sizeof crc);
    size_t k = cobs_end(&w);
    if (k == 0 || k >= cap) return EEASR_NO_ROOM;
    out[k] = 0;
    *written = k + 1;
    return EEASR_OK;
}

/* ---- payloads ------------------------------------------------------------------------------------------------- */

static int is_cont(uint8_t b) { return (b & 0xC0u) == 0x80u; }

/* Well-formed UTF-8 (Unicode Table 3-7, what Python's strict decoder accepts): no overlongs, no surrogates,
   nothing above U+10FFFF, no truncated sequence. */
static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        size_t more;
        uint8_t lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xC2 && b <= 0xDF) {
            more = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            more = 2;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            more = 3;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else {
            return 0;
        }
        if (n - i - 1 < more || s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= more; k++)
            if (!is_cont(s[i + k])) return 0;
        i += more + 1;
    }
    return 1;
}

eeasr_reason eeasr_unpack_hello(const uint8_t *p, size_t n, eeasr_hello *m) {
    if (n < EEASR_HELLO_FIXED) return EEASR_SHORT_PAYLOAD;
    size_t ne = p[35];
    if (n < EEASR_HELLO_FIXED + ne + 1) return EEASR_BAD_EXIT_LIST;
    size_t nf = p[EEASR_HELLO_FIXED + ne];
    if (n != EEASR_HELLO_FIXED + ne + 1 + nf) return EEASR_BAD_FIRMWARE_LENGTH;
    const uint8_t *fw = p + EEASR_HELLO_FIXED + ne + 1;
    if (!utf8_valid(fw, nf)) return EEASR_BAD_UTF8;
    memcpy(m->model_hash, p, 8);
    memcpy(m->bundle_id, p + 8, 8);
    memcpy(m->feature_hash, p + 16, 8);
    m->sample_rate = get_u32le(p + 24);
    m->window = eeasr_get_u16le(p + 28);
    m->subsampling = p[30];
    m->d_model = eeasr_get_u16le(p + 31);
    m->vocab = eeasr_get_u16le(p + 33);
    m->n_exits = (uint8_t)ne;
    m->exit_layers = p + EEASR_HELLO_FIXED;
    m->firmware_len = nf;
    m->firmware = (const char *)fw;
    return EEASR_OK;
}

eeasr_reason eeasr_pack_hello(const eeasr_hello *m, uint8_t *out, size_t cap, size_t *n) {
    if (m->n_exits < 1 || m->n_exits > EEASR_MAX_EXITS) return EEASR_BAD_EXIT_COUNT;
    size_t nf = m->firmware_len < EEASR_MAX_FIRMWARE_NAME ? m->firmware_len : EEASR_MAX_FIRMWARE_NAME;
    size_t size = EEASR_HELLO_FIXED + (size_t)m->n_exits + 1 + nf;
    if (cap < size) return EEASR_NO_ROOM;
    memcpy(out, m->model_hash, 8);
    memcpy(out + 8, m->bundle_id, 8);
    memcpy(out + 16, m->feature_hash, 8);
    put_u32le(out + 24, m->sample_rate);
    eeasr_put_u16le(out + 28, m->window);
    out[30] = m->subsampling;
    eeasr_put_u16le(out + 31, m->d_model);
    eeasr_put_u16le(out + 33, m->vocab);
    out[35] = m->n_exits;
    memcpy(out + EEASR_HELLO_FIXED, m->exit_layers, m->n_exits);
    out[EEASR_HELLO_FIXED + m->n_exits] = (uint8_t)nf;
    if (nf) memcpy(out + EEASR_HELLO_FIXED + m->n_exits + 1, m->firmware, nf);
    *n = size;
    return EEASR_OK;
}

eeasr_reason eeasr_unpack_audio(const uint8_t *p, size_t n, eeasr_audio *m) {
    if (n < EEASR_AUDIO_FIXED || n % 2) return EEASR_BAD_AUDIO_LAYOUT;
    if ((n - EEASR_AUDIO_FIXED) / 2 > EEASR_MAX_AUDIO_SAMPLES) return EEASR_TOO_MANY_SAMPLES;
    m->flags = p[0]; /* p[1] is reserved: sent as 0, not checked (as the reference) */
    m->n_samples = (n - EEASR_AUDIO_FIXED) / 2;
    m->samples = p + EEASR_AUDIO_FIXED;
    return EEASR_OK;
}

eeasr_reason eeasr_pack_audio(const eeasr_audio *m, uint8_t *out, size_t cap, size_t *n) {
    if (m->n_samples > EEASR_MAX_AUDIO_SAMPLES) return EEASR_TOO_MANY_SAMPLES;
    size_t size = EEASR_AUDIO_FIXED + 2 * m->n_samples;
    if (cap < size) return EEASR_NO_ROOM;
    out[0] = m->flags;
    out[1] = 0;
    if (m->n_samples) memcpy(out + EEASR_AUDIO_FIXED, m->samples, 2 * m->n_samples);
    *n = size;
    return EEASR_OK;
}

eeasr_reason eeasr_unpack_result(const uint8_t *p, size_t n, eeasr_result *m) {
    if (n < EEASR_RESULT_FIXED + 2) return EEASR_SHORT_PAYLOAD;
    size_t nt = eeasr_get_u16le(p + 14), end_tok = EEASR_RESULT_FIXED + 2 * nt;
    if (nt > EEASR_MAX_TOKENS || n < end_tok + 2) return EEASR_BAD_TOKEN_LIST;
    size_t nb = eeasr_get_u16le(p + end_tok);
    if (n != end_tok + 2 + nb) return EEASR_BAD_TEXT_LENGTH;
    if (!utf8_valid(p + end_tok + 2, nb)) return EEASR_BAD_UTF8;
    m->utt_id = get_u32le(p);
    m->window = eeasr_get_u16le(p + 4);
    m->flags = p[6];
    m->exit_index = p[7];
    m->layer = p[8];
    m->measure = p[9];
    m->confidence = get_f32le(p + 10);
    m->n_tokens = nt;
    m->tokens = p + EEASR_RESULT_FIXED;
    m->text_len = nb;
    m->text = (const char *)(p + end_tok + 2);
    return EEASR_OK;
}

eeasr_reason eeasr_pack_result(const eeasr_result *m, uint8_t *out, size_t cap, size_t *n) {
    if (m->n_tokens > EEASR_MAX_TOKENS) return EEASR_TOO_MANY_TOKENS;
    if (m->text_len > EEASR_MAX_TEXT) return EEASR_TEXT_TOO_LONG;
    size_t end_tok = EEASR_RESULT_FIXED + 2 * m->n_tokens, size = end_tok + 2 + m->text_len;
    if (cap < size) return EEASR_NO_ROOM;
    put_u32le(out, m->utt_id);
    eeasr_put_u16le(out + 4, m->window);
    out[6] = m->flags;
    out[7] = m->exit_index;
    out[8] = m->layer;
    out[9] = m->measure;
    put_f32le(out + 10, m->confidence);
    eeasr_put_u16le(out + 14, (uint16_t)m->n_tokens);
    if (m->n_tokens) memcpy(out + EEASR_RESULT_FIXED, m->tokens, 2 * m->n_tokens);
    eeasr_put_u16le(out + end_tok, (uint16_t)m->text_len);
    if (m->text_len) memcpy(out + end_tok + 2, m->text, m->text_len);
    *n = size;
    return EEASR_OK;
}

eeasr_reason eeasr_unpack_handoff(const uint8_t *p, size_t n, eeasr_handoff *m) {
    if (n < EEASR_HANDOFF_FIXED) return EEASR_SHORT_PAYLOAD;
    uint16_t t = eeasr_get_u16le(p + 22), d = eeasr_get_u16le(p + 24);
    size_t end = EEASR_HANDOFF_FIXED + (size_t)t * d;
    if (n < end) return EEASR_BAD_STATE_SIZE;
    uint8_t n_modules = 0;
    if (n > end) { /* a module mask: its count, then exactly the bytes it needs, unused bits 0 */
        n_modules = p[end];
        size_t bytes = ((size_t)n_modules + 7) / 8;
        if (n_modules == 0 || n != end + 1 + bytes) return EEASR_BAD_MODULE_MASK;
        if ((n_modules % 8) && (p[n - 1] >> (n_modules % 8))) return EEASR_BAD_MODULE_MASK;
    }
    float scale = get_f32le(p + 16);
    if (!(scale > 0.0f && scale <= FLT_MAX)) return EEASR_BAD_SCALE; /* NaN, 0, negative, infinite */
    m->utt_id = get_u32le(p);
    m->window = eeasr_get_u16le(p + 4);
    m->flags = p[6];
    m->layer = p[7];
    memcpy(m->model_hash, p + 8, 8);
    m->scale = scale;
    m->zero_point = (int8_t)p[20]; /* p[21] is reserved: sent as 0, not checked (as the reference) */
    m->t_valid = t;
    m->d = d;
    m->hidden = (const int8_t *)(p + EEASR_HANDOFF_FIXED);
    m->n_modules = n_modules;
    m->modules = n_modules ? p + end + 1 : NULL;
    return EEASR_OK;
}

eeasr_reason eeasr_pack_handoff(const eeasr_handoff *m, uint8_t *out, size_t cap, size_t *n) {
    size_t state = (size_t)m->t_valid * m->d, mask = m->n_modules ? 1 + ((size_t)m->n_modules + 7) / 8 : 0;
    size_t size = EEASR_HANDOFF_FIXED + state + mask;
    if (size > EEASR_MAX_PAYLOAD) return EEASR_PAYLOAD_TOO_LARGE;
    if (cap < size) return EEASR_NO_ROOM;
    put_u32le(out, m->utt_id);
    eeasr_put_u16le(out + 4, m->window);
    out[6] = m->flags;
    out[7] = m->layer;
    memcpy(out + 8, m->model_hash, 8);
    put_f32le(out + 16, m->scale);
    out[20] = (uint8_t)m->zero_point;
    out[21] = 0;
    eeasr_put_u16le(out + 22, m->t_valid);
    eeasr_put_u16le(out + 24, m->d);
    if (state) memcpy(out + EEASR_HANDOFF_FIXED, m->hidden, state);
    if (mask) {
        uint8_t *q = out + EEASR_HANDOFF_FIXED + state;
        q[0] = m->n_modules;
        memcpy(q + 1, m->modules, mask - 1);
        if (m->n_modules % 8) q[mask - 1] &= (uint8_t)((1u << (m->n_modules % 8)) - 1u);
    }
    *n = size;
    return EEASR_OK;
}

eeasr_reason eeasr_unpack_error(const uint8_t *p, size_t n, eeasr_error_msg *m) {
    if (n < 2) return EEASR_SHORT_PAYLOAD;
    if (!utf8_valid(p + 2, n - 2)) return EEASR_BAD_UTF8;
    m->code = eeasr_get_u16le(p);
    m->message_len = n - 2;
    m->message = (const char *)(p + 2);
    return EEASR_OK;
}

eeasr_reason eeasr_pack_error(const eeasr_error_msg *m, uint8_t *out, size_t cap, size_t *n) {
    size_t len = m->message_len < EEASR_MAX_TEXT ? m->message_len : EEASR_MAX_TEXT;
    if (cap < 2 + len) return EEASR_NO_ROOM;
    eeasr_put_u16le(out, m->code);
    if (len) memcpy(out + 2, m->message, len);
    *n = 2 + len;
    return EEASR_OK;
}

eeasr_reason eeasr_unpack_ack(const uint8_t *p, size_t n, eeasr_ack *m) {
    if (n != EEASR_ACK_SIZE) return EEASR_BAD_PAYLOAD_SIZE;
    m->seq = eeasr_get_u16le(p);
    m->of = p[2];
    m->status = p[3];
    return EEASR_OK;
}

eeasr_reason eeasr_pack_ack(const eeasr_ack *m, uint8_t *out, size_t cap, size_t *n) {
    if (cap < EEASR_ACK_SIZE) return EEASR_NO_ROOM;
    eeasr_put_u16le(out, m->seq);
    out[2] = m->of;
    out[3] = m->status;
    *n = EEASR_ACK_SIZE;
    return EEASR_OK;
}

eeasr_reason eeasr_unpack_command(const uint8_t *p, size_t n, eeasr_command *m) {
    if (n != 1) return EEASR_BAD_PAYLOAD_SIZE;
    m->command = p[0];
    return EEASR_OK;
}

eeasr_reason eeasr_pack_command(const eeasr_command *m, uint8_t *out, size_t cap, size_t *n) {
    if (cap < 1) return EEASR_NO_ROOM;
    out[0] = m->command;
    *n = 1;
    return EEASR_OK;
}

eeasr_reason eeasr_unpack_info(const uint8_t *p, size_t n, eeasr_info *m) {
    if (!utf8_valid(p, n)) return EEASR_BAD_UTF8;
    m->json_len = n;
    m->json = (const char *)p;
    return EEASR_OK;
}

eeasr_reason eeasr_pack_info(const eeasr_info *m, uint8_t *out, size_t cap, size_t *n) {
    if (cap < m->json_len) return EEASR_NO_ROOM;
    if (m->json_len) memcpy(out, m->json, m->json_len);
    *n = m->json_len;
    return EEASR_OK;
}

eeasr_reason eeasr_pack_message(const eeasr_message *m, uint8_t *out, size_t cap, size_t *n) {
    switch (m->type) {
    case EEASR_MSG_HELLO: return eeasr_pack_hello(&m->u.hello, out, cap, n);
    case EEASR_MSG_AUDIO: return eeasr_pack_audio(&m->u.audio, out, cap, n);
    case EEASR_MSG_RESULT: return eeasr_pack_result(&m->u.result, out, cap, n);
    case EEASR_MSG_HANDOFF: return eeasr_pack_handoff(&m->u.handoff, out, cap, n);
    case EEASR_MSG_ERROR: return eeasr_pack_error(&m->u.error, out, cap, n);
    case EEASR_MSG_ACK: return eeasr_pack_ack(&m->u.ack, out, cap, n);
    case EEASR_MSG_COMMAND: return eeasr_pack_command(&m->u.command, out, cap, n);
    case EEASR_MSG_INFO: return eeasr_pack_info(&m->u.info, out, cap, n);
    }
    return EEASR_UNKNOWN_TYPE;
}

static eeasr_reason unpack_payload(uint8_t type, const uint8_t *p, size_t n, eeasr_message *m) {
    switch (type) {
    case EEASR_MSG_HELLO: return eeasr_unpack_hello(p, n, &m->u.hello);
    case EEASR_MSG_AUDIO: return eeasr_unpack_audio(p, n, &m->u.audio);
    case EEASR_MSG_RESULT: return eeasr_unpack_result(p, n, &m->u.result);
    case EEASR_MSG_HANDOFF: return eeasr_unpack_handoff(p, n, &m->u.handoff);
    case EEASR_MSG_ERROR: return eeasr_unpack_error(p, n, &m->u.error);
    case EEASR_MSG_ACK: return eeasr_unpack_ack(p, n, &m->u.ack);
    case EEASR_MSG_COMMAND: return eeasr_unpack_command(p, n, &m->u.command);
    case EEASR_MSG_INFO: return eeasr_unpack_info(p, n, &m->u.info);
    }
    return EEASR_UNKNOWN_TYPE;
}

eeasr_reason eeasr_frame_unpack(const uint8_t *raw, size_t n, eeasr_message *m) {
    if (n < EEASR_HEADER_SIZE + EEASR_CRC_SIZE) return EEASR_SHORT_FRAME;
    size_t len = eeasr_get_u16le(raw + 4);
    if (n != EEASR_FRAME_SIZE(len)) return EEASR_LENGTH_MISMATCH;
    if (get_u32le(raw + n - EEASR_CRC_SIZE) != eeasr_crc32(0, raw, n - EEASR_CRC_SIZE)) return EEASR_BAD_CRC;
    if (raw[0] != EEASR_PROTOCOL_VERSION) return EEASR_BAD_VERSION;
    if (len > EEASR_MAX_PAYLOAD) return EEASR_PAYLOAD_TOO_LARGE;
    eeasr_message msg;
    memset(&msg, 0, sizeof msg);
    msg.type = raw[1];
    msg.seq = eeasr_get_u16le(raw + 2);
    eeasr_reason r = unpack_payload(msg.type, raw + EEASR_HEADER_SIZE, len, &msg);
    if (r == EEASR_OK) *m = msg;
    return r;
}

/* ---- the stream decoder ----------------------------------------------------------------------------------------- */

void eeasr_decoder_init(eeasr_decoder *d, uint8_t *buf, size_t cap) {
    d->buf = buf;
    d->cap = cap;
    eeasr_decoder_reset(d);
}

void eeasr_decoder_reset(eeasr_decoder *d) {
    d->len = 0;
    d->dropped = 0;
}

static void finish_run(eeasr_decoder *d, eeasr_decoded *out) {
    memset(out, 0, sizeof *out);
    out->n_bytes = d->len + 1;
    size_t raw_len = 0;
    out->reason = eeasr_cobs_decode(d->buf, d->len, d->buf, &raw_len);
    d->len = 0;
    if (out->reason != EEASR_OK) return;
    out->raw = d->buf;
    out->raw_len = raw_len;
    out->reason = eeasr_frame_unpack(d->buf, raw_len, &out->msg);
}

int eeasr_decoder_feed(eeasr_decoder *d, const uint8_t *data, size_t n, size_t *consumed, eeasr_decoded *out) {
    for (size_t i = 0; i < n; i++) {
        uint8_t b = data[i];
        if (b != 0) {
            if (d->dropped) {
                d->dropped++;
            } else if (d->len < d->cap) {
                d->buf[d->len++] = b;
            } else { /* too long: forget it, count it, report it at its delimiter */
                d->dropped = d->len + 1;
                d->len = 0;
            }
            continue;
        }
        if (d->dropped) {
            memset(out, 0, sizeof *out);
            out->reason = EEASR_TOO_LONG;
            out->n_bytes = d->dropped;
            d->dropped = 0;
            *consumed = i + 1;
            return 1;
        }
        if (d->len == 0) continue; /* idle line */
        finish_run(d, out);
        *consumed = i + 1;
        return 1;
    }
    *consumed = n;
    return 0;
}

size_t eeasr_message_size(void) { return sizeof(eeasr_message); }
size_t eeasr_decoder_size(void) { return sizeof(eeasr_decoder); }
size_t eeasr_decoded_size(void) { return sizeof(eeasr_decoded); }
