/* Unit tests of the framing and the endpointer with known answers (ASan and UBSan, built by firmware/native).
   The expected frames are eeasr/protocol.py's bytes for the same messages. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "eeasr_core/endpoint.h"
#include "eeasr_core/protocol.h"

/* Big buffers are static: the largest frame is ~49 KB. */
static uint8_t g_payload[EEASR_MAX_PAYLOAD + 16], g_frame[EEASR_MAX_FRAME + 16], g_wire[EEASR_MAX_ENCODED + 16];
static uint8_t g_rx[EEASR_MAX_ENCODED];

static size_t unhex(const char *hex, uint8_t *out) {
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

/* ---- CRC and COBS ------------------------------------------------------------------------------------------- */

static void test_crc32_known_values(void) {
    const uint8_t *digits = (const uint8_t *)"123456789";
    const char *fox = "The quick brown fox jumps over the lazy dog";
    CHECK(eeasr_crc32(0, digits, 9) == 0xCBF43926u, "crc32(123456789) = %08x", (unsigned)eeasr_crc32(0, digits, 9));
    CHECK(eeasr_crc32(0, (const uint8_t *)fox, strlen(fox)) == 0x414FA339u, "crc32(fox)");
    CHECK(eeasr_crc32(0, digits, 0) == 0 && eeasr_crc32(0x1234u, digits, 0) == 0x1234u, "empty input");
    CHECK(eeasr_crc32(eeasr_crc32(0, digits, 4), digits + 4, 5) == 0xCBF43926u, "in two pieces");
}

/* The examples of the COBS article (Wikipedia), which the Python package reproduces. */
static void test_cobs_known_encodings(void) {
    static const struct {
        const char *plain, *encoded;
    } cases[] = {
        {"", "01"},
        {"00", "0101"},
        {"0000", "010101"},
        {"001100", "01021101"},
        {"11220033", "0311220233"},
        {"11223344", "0511223344"},
        {"11000000", "0211010101"},
    };
    uint8_t plain[600], enc[700], dec[700];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = unhex(cases[c].plain, plain), want_n = unhex(cases[c].encoded, dec);
        size_t k = eeasr_cobs_encode(plain, n, enc, sizeof enc);
        CHECK(k == want_n && memcmp(enc, dec, k) == 0, "encode(%s)", cases[c].plain);
    }
    /* 254 non-zero bytes fill one block: no trailing code byte; one more byte starts a new block. */
    for (int i = 0; i < 255; i++) plain[i] = (uint8_t)(i + 1);
    size_t k = eeasr_cobs_encode(plain, 254, enc, sizeof enc);
    CHECK(k == 255 && enc[0] == 0xFF && memcmp(enc + 1, plain, 254) == 0, "254 bytes: %zu", k);
    k = eeasr_cobs_encode(plain, 255, enc, sizeof enc); /* 01 .. FF */
    CHECK(k == 257 && enc[0] == 0xFF && enc[255] == 0x02 && enc[256] == 0xFF, "255 bytes: %zu", k);
    plain[0] = 0; /* 00 01 .. FE: a zero, then a full block */
    for (int i = 1; i < 255; i++) plain[i] = (uint8_t)i;
    k = eeasr_cobs_encode(plain, 255, enc, sizeof enc);
    CHECK(k == 256 && enc[0] == 0x01 && enc[1] == 0xFF && memcmp(enc + 2, plain + 1, 254) == 0, "00 01..FE");
    for (int i = 0; i < 254; i++) plain[i] = (uint8_t)(i + 2); /* 02 .. FF 00 */
    plain[254] = 0;
    k = eeasr_cobs_encode(plain, 255, enc, sizeof enc);
    CHECK(k == 257 && enc[0] == 0xFF && enc[255] == 0x01 && enc[256] == 0x01, "02..FF 00");
    for (int i = 0; i < 253; i++) plain[i] = (uint8_t)(i + 3); /* 03 .. FF 00 01 */
    plain[253] = 0;
    plain[254] = 1;
    k = eeasr_cobs_encode(plain, 255, enc, sizeof enc);
    CHECK(k == 256 && enc[0] == 0xFE && enc[253] == 0xFF && enc[254] == 0x02 && enc[255] == 0x01, "03..FF 00 01");

    /* Exactly enough room, and one byte less. */
    for (int i = 0; i < 508; i++) plain[i] = (uint8_t)(i % 7 == 0 ? 0 : i);
    k = eeasr_cobs_encode(plain, 508, enc, sizeof enc);
    CHECK(k > 0 && eeasr_cobs_encode(plain, 508, dec, k) == k && eeasr_cobs_encode(plain, 508, dec, k - 1) == 0,
          "capacity %zu", k);
    CHECK(eeasr_cobs_encode(plain, 0, dec, 0) == 0, "no room for the empty encoding");
}

static void test_cobs_round_trips_in_place(void) {
    static uint8_t plain[1200], enc[1300];
    const size_t lengths[] = {0, 1, 253, 254, 255, 256, 507, 508, 509, 1016, 1200};
    const unsigned zero_every[] = {0, 1, 2, 17, 254, 255, 300};
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        for (size_t zi = 0; zi < sizeof zero_every / sizeof zero_every[0]; zi++) {
            size_t n = lengths[li];
            for (size_t i = 0; i < n; i++) {
                uint8_t b = (uint8_t)(next_u32() >> 24);
                plain[i] = zero_every[zi] && i % zero_every[zi] == 0 ? 0 : (uint8_t)(b ? b : 1);
            }
            size_t k = eeasr_cobs_encode(plain, n, enc, sizeof enc), m = 0;
            CHECK(k > 0 && k <= EEASR_COBS_MAX(n) && memchr(enc, 0, k) == NULL, "n %zu: %zu bytes", n, k);
            CHECK(eeasr_cobs_decode(enc, k, enc, &m) == EEASR_OK && m == n && memcmp(enc, plain, n) == 0,
                  "n %zu, zero every %u: round trip", n, zero_every[zi]);
        }
    }
}

static void test_cobs_decode_rejects(void) {
    uint8_t buf[300], out[300];
    size_t m;
    size_t n = unhex("0301", buf); /* code 3 with one byte left */
    CHECK(eeasr_cobs_decode(buf, n, out, &m) == EEASR_BAD_COBS, "code past the end");
    n = unhex("020100", buf);
    CHECK(eeasr_cobs_decode(buf, n, out, &m) == EEASR_BAD_COBS, "zero code");
    buf[0] = 0xFF; /* a full block claims 254 bytes, 253 follow */
    memset(buf + 1, 7, 253);
    CHECK(eeasr_cobs_decode(buf, 254, out, &m) == EEASR_BAD_COBS, "short full block");
    CHECK(eeasr_cobs_decode(buf, 0, out, &m) == EEASR_OK && m == 0, "empty");
    n = unhex("020101", buf); /* a final code 1 is a trailing zero */
    CHECK(eeasr_cobs_decode(buf, n, out, &m) == EEASR_OK && m == 2 && out[0] == 1 && out[1] == 0, "02 01 01");
}

/* ---- frames ----------------------------------------------------------------------------------------------------- */

/* Encodes msg with pack_message + encode and checks the wire bytes against the Python reference's. */
static void check_encodes_to(const eeasr_message *msg, const char *want_hex, const char *what) {
    static uint8_t want[600];
    size_t n = 0, k = 0, want_n = unhex(want_hex, want);
    CHECK(eeasr_pack_message(msg, g_payload, sizeof g_payload, &n) == EEASR_OK, "%s: pack", what);
    CHECK(eeasr_encode(msg->type, msg->seq, g_payload, n, g_wire, sizeof g_wire, &k) == EEASR_OK, "%s: encode", what);
    CHECK(k == want_n && memcmp(g_wire, want, k) == 0, "%s: %zu bytes differ from the reference's %zu", what, k,
          want_n);
}

/* Feeds wire bytes (in pieces of `step`) to a fresh decoder and expects exactly one frame. */
static eeasr_reason decode_one(const uint8_t *wire, size_t n, size_t step, eeasr_decoded *ev, size_t *events) {
    static eeasr_decoder d;
    eeasr_decoder_init(&d, g_rx, sizeof g_rx);
    eeasr_reason last = EEASR_OK;
    *events = 0;
    for (size_t at = 0; at < n;) {
        size_t piece = step < n - at ? step : n - at;
        while (piece) {
            size_t used;
            if (eeasr_decoder_feed(&d, wire + at, piece, &used, ev)) {
                ++*events;
                last = ev->reason;
            }
            at += used;
            piece -= used;
        }
    }
    return last;
}

static void test_every_message_type_matches_the_reference_and_round_trips(void) {
    static const uint8_t exits[] = {2, 4}, tokens[] = {7, 0, 0x2C, 0x01, 0xFF, 0xFF}, samples[] = {1, 0, 0xFF, 0xFF,
                                                                                                    0, 1, 0, 0x80};
    eeasr_message m;
    eeasr_decoded ev;
    size_t events;

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_COMMAND;
    m.seq = 0x0102;
    m.u.command.command = EEASR_CMD_HELLO;
    check_encodes_to(&m, "0601070201010601d68aa79200", "command");
    CHECK(decode_one(g_wire, 13, 1, &ev, &events) == EEASR_OK && events == 1 && ev.msg.type == EEASR_MSG_COMMAND &&
              ev.msg.seq == 0x0102 && ev.msg.u.command.command == 1 && ev.n_bytes == 13 && ev.raw_len == 11,
          "command back");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_ACK;
    m.seq = 7;
    m.u.ack = (eeasr_ack){.seq = 0xBEEF, .of = EEASR_MSG_AUDIO, .status = 0};
    check_encodes_to(&m, "04010607020404efbe02053bd1ec9d00", "ack");
    CHECK(decode_one(g_wire, 16, 3, &ev, &events) == EEASR_OK && ev.msg.u.ack.seq == 0xBEEF &&
              ev.msg.u.ack.of == 2 && ev.msg.seq == 7,
          "ack back");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_HELLO;
    m.seq = 65535;
    eeasr_hello *h = &m.u.hello;
    memcpy(h->model_hash, "\x00\x11\x22\x33\x44\x55\x66\x77", 8);
    memcpy(h->bundle_id, "\x88\x99\xaa\xbb\xcc\xdd\xee\xff", 8);
    memcpy(h->feature_hash, "\x01\x23\x45\x67\x89\xab\xcd\xef", 8);
    h->sample_rate = 16000;
    h->window = 150;
    h->subsampling = 4;
    h->d_model = 144;
    h->vocab = 257;
    h->n_exits = 2;
    h->exit_layers = exits;
    h->firmware = "eeasr-fw";
    h->firmware_len = 8;
    static const char hello_hex[] = "060101ffff2f011a112233445566778899aabbccddeeff0123456789abcdef803e01029603"
                                    "04901301010202040865656173722d66776bd8740100";
    check_encodes_to(&m, hello_hex, "hello");
    size_t wire_n = strlen(hello_hex) / 2;
    CHECK(decode_one(g_wire, wire_n, 5, &ev, &events) == EEASR_OK, "hello back");
    const eeasr_hello *hb = &ev.msg.u.hello;
    CHECK(memcmp(hb->bundle_id, h->bundle_id, 8) == 0 && hb->sample_rate == 16000 && hb->window == 150 &&
              hb->d_model == 144 && hb->vocab == 257 && hb->n_exits == 2 && hb->exit_layers[1] == 4 &&
              hb->firmware_len == 8 && memcmp(hb->firmware, "eeasr-fw", 8) == 0,
          "hello fields");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_RESULT;
    m.seq = 1;
    m.u.result = (eeasr_result){.utt_id = 5, .window = 3, .flags = EEASR_RESULT_FINAL, .exit_index = 2, .layer = 4,
                                .measure = 0, .confidence = 0.25f, .n_tokens = 3, .tokens = tokens,
                                .text_len = 3, .text = "h\xc3\xa9"};
    check_encodes_to(&m, "04010301021b02050101020304010204010104803e030207062c01ffff030868c3a98caf21e900", "result");
    CHECK(decode_one(g_wire, 39, 39, &ev, &events) == EEASR_OK, "result back");
    const eeasr_result *rb = &ev.msg.u.result;
    CHECK(rb->utt_id == 5 && rb->window == 3 && rb->exit_index == 2 && rb->confidence == 0.25f &&
              rb->n_tokens == 3 && eeasr_get_u16le(rb->tokens + 2) == 300 && eeasr_get_u16le(rb->tokens + 4) == 65535 &&
              rb->text_len == 3 && memcmp(rb->text, "h\xc3\xa9", 3) == 0,
          "result fields");

    /* AUDIO as a raw frame (the HTTP body form): pack_frame of the reference. */
    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_AUDIO;
    m.u.audio = (eeasr_audio){.flags = EEASR_AUDIO_UTT_START, .n_samples = 4, .samples = samples};
    size_t n = 0, k = 0;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_OK && n == 10, "audio pack");
    CHECK(eeasr_frame_pack(EEASR_MSG_AUDIO, 2, g_payload, n, g_frame, sizeof g_frame, &k) == EEASR_OK && k == 20,
          "audio frame");
    uint8_t want[20];
    unhex("010202000a0001000100ffff000100806ea9be00", want);
    CHECK(memcmp(g_frame, want, 20) == 0, "audio frame differs from the reference's");
    eeasr_message back;
    CHECK(eeasr_frame_unpack(g_frame, k, &back) == EEASR_OK && back.u.audio.n_samples == 4, "audio back");
    int16_t pcm[4];
    eeasr_audio_samples(&back.u.audio, pcm);
    CHECK(pcm[0] == 1 && pcm[1] == -1 && pcm[2] == 256 && pcm[3] == -32768, "samples %d %d %d %d", pcm[0], pcm[1],
          pcm[2], pcm[3]);
    /* The payload packed in place, right after the header. */
    CHECK(eeasr_pack_message(&m, g_frame + EEASR_HEADER_SIZE, sizeof g_frame - EEASR_HEADER_SIZE, &n) == EEASR_OK &&
              eeasr_frame_pack(EEASR_MSG_AUDIO, 2, g_frame + EEASR_HEADER_SIZE, n, g_frame, sizeof g_frame, &k) ==
                  EEASR_OK &&
              memcmp(g_frame, want, 20) == 0,
          "packed in place");

    /* HANDOFF, ERROR, INFO: round trips (their bytes are compared with Python's by the pytest suite). */
    static int8_t hidden[38 * 144];
    for (size_t i = 0; i < sizeof hidden; i++) hidden[i] = (int8_t)(next_u32() >> 24);
    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_HANDOFF;
    m.seq = 40000;
    m.u.handoff = (eeasr_handoff){.utt_id = 0xFFFFFFFFu, .window = 9, .flags = EEASR_RESULT_FINAL, .layer = 4,
                                  .scale = 0.0421f, .zero_point = -128, .t_valid = 38, .d = 144, .hidden = hidden};
    memcpy(m.u.handoff.model_hash, "abcdefgh", 8);
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_OK && n == 26 + sizeof hidden, "handoff");
    CHECK(eeasr_encode(m.type, m.seq, g_payload, n, g_wire, sizeof g_wire, &k) == EEASR_OK, "handoff encode");
    CHECK(k <= EEASR_ENCODED_MAX(n), "handoff: %zu encoded bytes", k);
    CHECK(decode_one(g_wire, k, 1000, &ev, &events) == EEASR_OK && events == 1, "handoff back");
    const eeasr_handoff *hob = &ev.msg.u.handoff;
    CHECK(hob->utt_id == 0xFFFFFFFFu && hob->scale == 0.0421f && hob->zero_point == -128 && hob->t_valid == 38 &&
              hob->d == 144 && memcmp(hob->hidden, hidden, sizeof hidden) == 0 &&
              memcmp(hob->model_hash, "abcdefgh", 8) == 0 && hob->n_modules == 0 && hob->modules == NULL,
          "handoff fields");
    /* With a module mask: unused bits the caller left set are packed as 0, and the mask comes back. */
    static const uint8_t mask[2] = {0x5A, 0xFF};
    m.u.handoff.n_modules = 10;
    m.u.handoff.modules = mask;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_OK && n == 26 + sizeof hidden + 3 &&
              g_payload[n - 3] == 10 && g_payload[n - 2] == 0x5A && g_payload[n - 1] == 0x03,
          "handoff with 10 modules");
    CHECK(eeasr_encode(m.type, m.seq, g_payload, n, g_wire, sizeof g_wire, &k) == EEASR_OK &&
              decode_one(g_wire, k, 1000, &ev, &events) == EEASR_OK && events == 1,
          "handoff with modules back");
    CHECK(hob->n_modules == 10 && hob->modules[0] == 0x5A && hob->modules[1] == 0x03 && hob->t_valid == 38,
          "module mask fields");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_ERROR;
    m.u.error = (eeasr_error_msg){.code = EEASR_ERROR_OVERFLOW, .message = "audio overflow", .message_len = 14};
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_OK && n == 16, "error");
    CHECK(eeasr_encode(m.type, m.seq, g_payload, n, g_wire, sizeof g_wire, &k) == EEASR_OK &&
              decode_one(g_wire, k, 2, &ev, &events) == EEASR_OK && ev.msg.u.error.code == 5 &&
              ev.msg.u.error.message_len == 14,
          "error back");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_INFO;
    m.u.info = (eeasr_info){.json = "{\"ok\": true}", .json_len = 12};
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_OK && n == 12, "info");
    CHECK(eeasr_encode(m.type, m.seq, g_payload, n, g_wire, sizeof g_wire, &k) == EEASR_OK &&
              decode_one(g_wire, k, 4, &ev, &events) == EEASR_OK && ev.msg.u.info.json_len == 12,
          "info back");
    m.u.info.json_len = 0; /* an empty payload is a valid INFO */
    CHECK(eeasr_encode(m.type, m.seq, g_payload, 0, g_wire, sizeof g_wire, &k) == EEASR_OK &&
              decode_one(g_wire, k, 1, &ev, &events) == EEASR_OK && ev.msg.u.info.json_len == 0,
          "empty info");
}

static void test_pack_limits(void) {
    static uint8_t exits[33];
    eeasr_message m;
    size_t n = 0, k = 0;
    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_HELLO;
    m.u.hello.exit_layers = exits;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_BAD_EXIT_COUNT, "hello without exits");
    m.u.hello.n_exits = 33;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_BAD_EXIT_COUNT, "33 exits");
    m.u.hello.n_exits = 32;
    static char name[300];
    memset(name, 'x', sizeof name);
    m.u.hello.firmware = name;
    m.u.hello.firmware_len = sizeof name; /* cut to 255 bytes, as the reference */
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_OK && n == 36 + 32 + 1 + 255, "long name");
    CHECK(eeasr_pack_message(&m, g_payload, n - 1, &n) == EEASR_NO_ROOM, "hello without room");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_AUDIO;
    m.u.audio.n_samples = EEASR_MAX_AUDIO_SAMPLES + 1;
    m.u.audio.samples = g_frame;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_TOO_MANY_SAMPLES, "4097 samples");
    m.u.audio.n_samples = EEASR_MAX_AUDIO_SAMPLES;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_OK && n == 8194, "4096 samples");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_RESULT;
    m.u.result.tokens = g_frame;
    m.u.result.text = (const char *)g_frame;
    m.u.result.n_tokens = EEASR_MAX_TOKENS + 1;
    m.u.result.text_len = EEASR_MAX_TEXT + 1;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_TOO_MANY_TOKENS, "1025 tokens");
    m.u.result.n_tokens = EEASR_MAX_TOKENS;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_TEXT_TOO_LONG, "4097 text bytes");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_HANDOFF;
    m.u.handoff.hidden = (const int8_t *)g_frame;
    m.u.handoff.t_valid = 150;
    m.u.handoff.d = 328; /* 26 + 49200 bytes */
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_PAYLOAD_TOO_LARGE, "handoff too large");

    memset(&m, 0, sizeof m);
    m.type = EEASR_MSG_ERROR;
    m.u.error.message_len = EEASR_MAX_TEXT + 100; /* cut, as the reference */
    static char long_message[EEASR_MAX_TEXT + 100];
    memset(long_message, 'e', sizeof long_message);
    m.u.error.message = long_message;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_OK && n == 2 + EEASR_MAX_TEXT, "error cut");
    m.type = 9;
    CHECK(eeasr_pack_message(&m, g_payload, sizeof g_payload, &n) == EEASR_UNKNOWN_TYPE, "pack type 9");

    CHECK(eeasr_encode(EEASR_MSG_INFO, 0, g_payload, EEASR_MAX_PAYLOAD + 1, g_wire, sizeof g_wire, &k) ==
              EEASR_PAYLOAD_TOO_LARGE,
          "encode 49153 bytes");
    CHECK(eeasr_frame_pack(EEASR_MSG_INFO, 0, g_payload, EEASR_MAX_PAYLOAD + 1, g_frame, sizeof g_frame, &k) ==
              EEASR_PAYLOAD_TOO_LARGE,
          "frame 49153 bytes");
    memset(g_payload, 0xAB, EEASR_MAX_PAYLOAD); /* the longest frame: no zero, the most COBS overhead */
    CHECK(eeasr_encode(EEASR_MSG_INFO, 0x0101, g_payload, EEASR_MAX_PAYLOAD, g_wire, sizeof g_wire, &k) == EEASR_OK,
          "encode the largest frame");
    CHECK(k <= EEASR_MAX_ENCODED, "largest frame: %zu encoded bytes", k);
    size_t exact = k;
    CHECK(eeasr_encode(EEASR_MSG_INFO, 0x0101, g_payload, EEASR_MAX_PAYLOAD, g_wire, exact, &k) == EEASR_OK &&
              eeasr_encode(EEASR_MSG_INFO, 0x0101, g_payload, EEASR_MAX_PAYLOAD, g_wire, exact - 1, &k) ==
                  EEASR_NO_ROOM,
          "encode with exact room");
    CHECK(eeasr_frame_pack(EEASR_MSG_ACK, 0, g_payload, 4, g_frame, 13, &k) == EEASR_NO_ROOM, "frame without room");
}

/* raw frame of type/version with a payload, valid CRC, then frame_unpack. */
static eeasr_reason unpack_crafted(uint8_t version, uint8_t type, const uint8_t *payload, size_t n) {
    size_t k = 0;
    eeasr_message m;
    CHECK(eeasr_frame_pack(type, 3, payload, n, g_frame, sizeof g_frame, &k) == EEASR_OK, "craft");
    g_frame[0] = version;
    uint32_t crc = eeasr_crc32(0, g_frame, k - 4);
    for (int i = 0; i < 4; i++) g_frame[k - 4 + i] = (uint8_t)(crc >> (8 * i));
    return eeasr_frame_unpack(g_frame, k, &m);
}

static void test_rejections_name_the_reason(void) {
    uint8_t p[64];
    eeasr_message m;
    size_t k = 0;
    memset(p, 0, sizeof p);
    CHECK(eeasr_frame_pack(EEASR_MSG_ACK, 1, p, 4, g_frame, sizeof g_frame, &k) == EEASR_OK, "ack frame");
    CHECK(eeasr_frame_unpack(g_frame, 9, &m) == EEASR_SHORT_FRAME, "9 bytes");
    CHECK(eeasr_frame_unpack(g_frame, k - 1, &m) == EEASR_LENGTH_MISMATCH, "truncated");
    g_frame[7] ^= 0x10;
    CHECK(eeasr_frame_unpack(g_frame, k, &m) == EEASR_BAD_CRC, "flipped bit");
    CHECK(unpack_crafted(2, EEASR_MSG_ACK, p, 4) == EEASR_BAD_VERSION, "version 2");
    CHECK(unpack_crafted(1, 0x09, p, 4) == EEASR_UNKNOWN_TYPE && unpack_crafted(1, 0x00, p, 4) == EEASR_UNKNOWN_TYPE,
          "type 9 and 0");
    CHECK(unpack_crafted(1, EEASR_MSG_ACK, p, 3) == EEASR_BAD_PAYLOAD_SIZE, "ack of 3");
    CHECK(unpack_crafted(1, EEASR_MSG_ACK, p, 5) == EEASR_BAD_PAYLOAD_SIZE, "ack of 5");
    CHECK(unpack_crafted(1, EEASR_MSG_COMMAND, p, 0) == EEASR_BAD_PAYLOAD_SIZE, "command of 0");
    CHECK(unpack_crafted(1, EEASR_MSG_COMMAND, p, 2) == EEASR_BAD_PAYLOAD_SIZE, "command of 2");
    CHECK(unpack_crafted(1, EEASR_MSG_ERROR, p, 1) == EEASR_SHORT_PAYLOAD, "error of 1");
    CHECK(unpack_crafted(1, EEASR_MSG_AUDIO, p, 1) == EEASR_BAD_AUDIO_LAYOUT, "audio of 1");
    CHECK(unpack_crafted(1, EEASR_MSG_AUDIO, p, 5) == EEASR_BAD_AUDIO_LAYOUT, "odd audio");
    CHECK(unpack_crafted(1, EEASR_MSG_AUDIO, p, 2) == EEASR_OK, "audio without samples");
    CHECK(unpack_crafted(1, EEASR_MSG_AUDIO, g_payload, 2 + 2 * 4097) == EEASR_TOO_MANY_SAMPLES, "4097 samples");

    CHECK(unpack_crafted(1, EEASR_MSG_HELLO, p, 35) == EEASR_SHORT_PAYLOAD, "hello of 35");
    p[35] = 3; /* 3 exits, then the name length */
    CHECK(unpack_crafted(1, EEASR_MSG_HELLO, p, 39) == EEASR_BAD_EXIT_LIST, "hello exit list");
    p[39] = 2;
    CHECK(unpack_crafted(1, EEASR_MSG_HELLO, p, 41) == EEASR_BAD_FIRMWARE_LENGTH, "hello name too short");
    p[39] = 1;
    p[40] = 'a';
    CHECK(unpack_crafted(1, EEASR_MSG_HELLO, p, 41) == EEASR_OK, "hello ok");
    p[35] = 0; /* the reference accepts a HELLO without exits */
    p[36] = 0;
    CHECK(unpack_crafted(1, EEASR_MSG_HELLO, p, 37) == EEASR_OK, "hello without exits");

    memset(p, 0, sizeof p);
    CHECK(unpack_crafted(1, EEASR_MSG_RESULT, p, 17) == EEASR_SHORT_PAYLOAD, "result of 17");
    CHECK(unpack_crafted(1, EEASR_MSG_RESULT, p, 18) == EEASR_OK, "empty result");
    p[14] = 2; /* 2 tokens: 4 bytes + text length */
    CHECK(unpack_crafted(1, EEASR_MSG_RESULT, p, 21) == EEASR_BAD_TOKEN_LIST, "truncated tokens");
    CHECK(unpack_crafted(1, EEASR_MSG_RESULT, p, 22) == EEASR_OK, "two tokens");
    CHECK(unpack_crafted(1, EEASR_MSG_RESULT, p, 24) == EEASR_BAD_TEXT_LENGTH, "text length");
    memset(g_payload, 0, 16 + 2 * 1025 + 2);
    eeasr_put_u16le(g_payload + 14, 1025);
    CHECK(unpack_crafted(1, EEASR_MSG_RESULT, g_payload, 16 + 2 * 1025 + 2) == EEASR_BAD_TOKEN_LIST, "1025 tokens");

    memset(p, 0, sizeof p);
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 25) == EEASR_SHORT_PAYLOAD, "handoff of 25");
    p[22] = 2; /* T = 2, d = 3 */
    p[24] = 3;
    p[19] = 0x3F; /* scale 0.5 */
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 31) == EEASR_BAD_STATE_SIZE, "5 state bytes for 2 x 3");
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 32) == EEASR_OK, "2 x 3");
    /* The optional module mask after the state: count, then exactly ceil(count / 8) bytes, unused bits 0. */
    p[32] = 11;
    p[33] = 0xA5;
    p[34] = 0x05;
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 35) == EEASR_OK, "11 modules");
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 34) == EEASR_BAD_MODULE_MASK, "11 modules in 1 byte");
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 36) == EEASR_BAD_MODULE_MASK, "11 modules in 3 bytes");
    p[34] = 0x0D; /* bit 11 set: past the count */
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 35) == EEASR_BAD_MODULE_MASK, "unused bit set");
    p[32] = 0;
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 33) == EEASR_BAD_MODULE_MASK, "a mask of 0 modules");
    p[32] = 16;
    p[34] = 0xFF;
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 35) == EEASR_OK, "16 modules: every bit used");
    static const uint32_t bad_scales[] = {0x00000000u, 0x80000000u, 0xBF000000u, 0x7F800000u, 0x7FC00000u, 0xFF800000u};
    for (int i = 0; i < 6; i++) {
        for (int b = 0; b < 4; b++) p[16 + b] = (uint8_t)(bad_scales[i] >> (8 * b));
        CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 32) == EEASR_BAD_SCALE, "scale bits %08x",
              (unsigned)bad_scales[i]);
    }
    p[16] = 1; /* the smallest subnormal is positive and finite */
    p[17] = p[18] = p[19] = 0;
    CHECK(unpack_crafted(1, EEASR_MSG_HANDOFF, p, 32) == EEASR_OK, "subnormal scale");

    /* UTF-8: what Python's strict decoder refuses. */
    static const char *bad[] = {"\x80", "\xC0\x80", "\xC1\xBF", "\xE0\x9F\xBF", "\xED\xA0\x80", "\xF0\x8F\xBF\xBF",
                                "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\xE2\x82", "\xFF", "a\xC3"};
    static const char *good[] = {"", "a", "\xC2\x80", "\xE0\xA0\x80", "\xED\x9F\xBF", "\xEE\x80\x80",
                                 "\xF0\x90\x80\x80", "\xF4\x8F\xBF\xBF", "h\xC3\xA9 \xE2\x82\xAC"};
    for (int i = 0; i < 11; i++)
        CHECK(unpack_crafted(1, EEASR_MSG_INFO, (const uint8_t *)bad[i], strlen(bad[i])) == EEASR_BAD_UTF8, "bad %d",
              i);
    for (int i = 0; i < 9; i++)
        CHECK(unpack_crafted(1, EEASR_MSG_INFO, (const uint8_t *)good[i], strlen(good[i])) == EEASR_OK, "good %d", i);
    memset(p, 0, sizeof p);
    p[2] = 0xC0;
    CHECK(unpack_crafted(1, EEASR_MSG_ERROR, p, 3) == EEASR_BAD_UTF8, "error message");
    CHECK(strcmp(eeasr_reason_str(EEASR_BAD_CRC), "crc mismatch") == 0 &&
              strcmp(eeasr_reason_str((eeasr_reason)999), "unknown reason") == 0,
          "reason strings");
    for (int r = EEASR_OK; r <= EEASR_TEXT_TOO_LONG; r++)
        CHECK(strcmp(eeasr_reason_str((eeasr_reason)r), "unknown reason") != 0, "reason %d has no text", r);

    /* A payload length field over the limit, in a frame that really has that many bytes. */
    static uint8_t huge[EEASR_MAX_FRAME + 1];
    huge[0] = 1;
    huge[1] = EEASR_MSG_INFO;
    eeasr_put_u16le(huge + 4, EEASR_MAX_PAYLOAD + 1);
    uint32_t crc = eeasr_crc32(0, huge, sizeof huge - 4);
    for (int i = 0; i < 4; i++) huge[sizeof huge - 4 + (size_t)i] = (uint8_t)(crc >> (8 * i));
    CHECK(eeasr_frame_unpack(huge, sizeof huge, &m) == EEASR_PAYLOAD_TOO_LARGE, "49153-byte payload");
}

/* ---- the stream decoder ----------------------------------------------------------------------------------------- */

static void test_decoder_resynchronises(void) {
    static uint8_t stream[3000];
    size_t n = 0, one = 0;
    const uint8_t payload[1] = {EEASR_CMD_PROFILE};
    eeasr_encode(EEASR_MSG_COMMAND, 11, payload, 1, g_wire, sizeof g_wire, &one);
    /* idle, garbage, a frame cut short, a frame with a flipped bit, a good frame, idle (3 idle bytes) */
    stream[n++] = 0;
    stream[n++] = 0;
    for (int i = 0; i < 40; i++) stream[n++] = (uint8_t)(next_u32() >> 24 | 1);
    stream[n++] = 0;
    memcpy(stream + n, g_wire, one - 4); /* cut: its delimiter is gone too */
    n += one - 4;
    stream[n++] = 0;
    memcpy(stream + n, g_wire, one);
    stream[n + 3] ^= 0x40;
    n += one;
    memcpy(stream + n, g_wire, one);
    n += one;
    stream[n++] = 0;
    const size_t steps[] = {1, 2, 7, 64, 3000};
    for (int s = 0; s < 5; s++) {
        eeasr_decoder d;
        eeasr_decoder_init(&d, g_rx, sizeof g_rx);
        eeasr_decoded ev;
        eeasr_reason got[8];
        size_t events = 0, wire_total = 0;
        for (size_t at = 0; at < n;) {
            size_t piece = steps[s] < n - at ? steps[s] : n - at;
            while (piece) {
                size_t used;
                if (eeasr_decoder_feed(&d, stream + at, piece, &used, &ev) && events < 8) {
                    wire_total += ev.n_bytes;
                    if (ev.reason == EEASR_OK)
                        CHECK(ev.msg.type == EEASR_MSG_COMMAND && ev.msg.u.command.command == 3 && ev.msg.seq == 11,
                              "the good frame");
                    got[events++] = ev.reason;
                }
                at += used;
                piece -= used;
            }
        }
        CHECK(events == 4, "steps of %zu: %zu events", steps[s], events);
        if (events == 4) {
            CHECK(got[0] != EEASR_OK && got[1] != EEASR_OK && got[2] == EEASR_BAD_CRC && got[3] == EEASR_OK,
                  "steps of %zu: reasons %d %d %d %d", steps[s], got[0], got[1], got[2], got[3]);
            CHECK(wire_total == n - 3, "steps of %zu: %zu wire bytes accounted", steps[s], wire_total);
        }
    }
}

static void test_decoder_drops_runs_longer_than_its_buffer(void) {
    static uint8_t small[64], stream[400];
    const uint8_t payload[4] = {1, 2, 3, 4};
    size_t one = 0, n = 0;
    eeasr_encode(EEASR_MSG_ACK, 5, payload, 4, g_wire, sizeof g_wire, &one); /* 15 bytes + delimiter */
    memset(stream, 0x55, 64);                                                 /* exactly fills the buffer: kept */
    n = 64;
    stream[n++] = 0;
    memset(stream + n, 0x55, 200); /* too long */
    n += 200;
    stream[n++] = 0;
    memcpy(stream + n, g_wire, one);
    n += one;
    eeasr_decoder d;
    eeasr_decoder_init(&d, small, sizeof small);
    eeasr_decoded ev;
    eeasr_reason got[4];
    size_t sizes[4], events = 0;
    for (size_t at = 0; at < n;) {
        size_t used;
        if (eeasr_decoder_feed(&d, stream + at, n - at, &used, &ev) && events < 4) {
            sizes[events] = ev.n_bytes;
            got[events++] = ev.reason;
        }
        at += used;
    }
    CHECK(events == 3 && got[0] == EEASR_BAD_COBS && sizes[0] == 65 && got[1] == EEASR_TOO_LONG && sizes[1] == 200 &&
              got[2] == EEASR_OK && sizes[2] == one,
          "%zu events", events);
    /* reset forgets a partial run */
    size_t used;
    CHECK(eeasr_decoder_feed(&d, g_wire, 5, &used, &ev) == 0 && used == 5, "partial");
    eeasr_decoder_reset(&d);
    CHECK(eeasr_decoder_feed(&d, g_wire, one, &used, &ev) == 1 && ev.reason == EEASR_OK && used == one, "after reset");
}

/* ---- the endpointer --------------------------------------------------------------------------------------------- */

/* hops of digital silence, of a 1 kHz tone at amplitude amp, or of white-ish noise. */
static size_t add_hops(int16_t *pcm, size_t at, size_t hops, double amp, int noise) {
    for (size_t i = 0; i < hops * EEASR_EP_HOP; i++, at++) {
        double v = noise ? amp * ((double)(next_u32() >> 16) / 32768.0 - 1.0)
                         : amp * sin(2.0 * 3.141592653589793 * (double)at / 16.0);
        pcm[at] = (int16_t)lrint(v);
    }
    return at;
}

static size_t run_endpointer(const int16_t *pcm, size_t n, size_t chunk, eeasr_ep_event *events, size_t cap,
                             int flush) {
    eeasr_endpointer ep;
    eeasr_endpointer_init(&ep);
    size_t k = 0;
    for (size_t at = 0; at < n;) {
        size_t take = chunk < n - at ? chunk : n - at, used = 0;
        eeasr_ep_event ev[EEASR_EP_MAX_EVENTS(4000)];
        size_t got = eeasr_endpointer_push(&ep, pcm + at, take, ev, EEASR_EP_MAX_EVENTS(4000), &used);
        CHECK(used == take, "chunk %zu: consumed %zu", chunk, used);
        for (size_t i = 0; i < got && k < cap; i++) events[k++] = ev[i];
        at += take;
    }
    if (flush && k < cap) k += (size_t)eeasr_endpointer_flush(&ep, &events[k]);
    return k;
}

static void test_endpointer_tone_in_silence(void) {
    static int16_t pcm[3000 * EEASR_EP_HOP];
    size_t n = add_hops(pcm, 0, 40, 0.0, 0);
    n = add_hops(pcm, n, 10, 10000.0, 0);
    n = add_hops(pcm, n, 40, 0.0, 0);
    const size_t chunks[] = {1, 159, 160, 161, 1000, 4000};
    for (int c = 0; c < 6; c++) {
        eeasr_ep_event ev[8];
        size_t k = run_endpointer(pcm, n, chunks[c], ev, 8, 1);
        /* loud from hop 40: the third loud hop is 42, speech starts 20 hops before hop 40; hops 50..79 quiet */
        CHECK(k == 2 && ev[0].kind == EEASR_EP_START && ev[0].sample == 20 * 160 && ev[1].kind == EEASR_EP_END &&
                  ev[1].sample == 80 * 160,
              "chunks of %zu: %zu events", chunks[c], k);
    }
    /* cut before the pause ends: STREAM_END closes the utterance at the last whole hop */
    eeasr_ep_event ev[4];
    size_t k = run_endpointer(pcm, 60 * 160 + 77, 333, ev, 4, 1);
    CHECK(k == 2 && ev[1].kind == EEASR_EP_END && ev[1].sample == 60 * 160, "flush: %zu events", k);
    /* room for one event per push: it stops after the start */
    eeasr_endpointer ep;
    eeasr_endpointer_init(&ep);
    size_t used = 0;
    k = eeasr_endpointer_push(&ep, pcm, n, ev, 1, &used);
    CHECK(k == 1 && used == 43 * 160 && ep.in_speech, "stopped after %zu samples", used);
    k = eeasr_endpointer_push(&ep, pcm + used, n - used, ev, 1, &used);
    CHECK(k == 1 && ev[0].sample == 80 * 160 && !ep.in_speech, "the rest");
    CHECK(eeasr_endpointer_flush(&ep, ev) == 0, "nothing open");
}

static void test_endpointer_warmup_floor_and_max_speech(void) {
    static int16_t pcm[2200 * EEASR_EP_HOP];
    /* A fan already running during the warm-up is not speech, however loud. */
    size_t n = add_hops(pcm, 0, 200, 8000.0, 1);
    eeasr_ep_event ev[8];
    size_t k = run_endpointer(pcm, n, 160, ev, 8, 1);
    CHECK(k == 0, "steady noise from the start: %zu events", k);
    /* A stationary sound starting after the warm-up: 2000 hops of speech at most. */
    n = add_hops(pcm, 0, 40, 0.0, 0);
    n = add_hops(pcm, n, 2150, 12000.0, 1);
    k = run_endpointer(pcm, n, 4000, ev, 8, 1);
    CHECK(k == 2 && ev[0].sample == 20 * 160 && ev[1].kind == EEASR_EP_END && ev[1].sample == 2043 * 160,
          "max speech: %zu events, end %llu", k, k > 1 ? (unsigned long long)ev[1].sample : 0ull);

    int16_t loud[EEASR_EP_HOP];
    for (int i = 0; i < EEASR_EP_HOP; i++) loud[i] = i % 2 ? 32767 : -32768;
    CHECK(eeasr_hop_energy(loud) == 80LL * 32767 * 32767 + 80LL * 32768 * 32768, "full-scale energy");
    eeasr_endpointer ep;
    eeasr_endpointer_init(&ep);
    eeasr_ep_event one;
    CHECK(eeasr_endpointer_step(&ep, 0, &one) == 0 && ep.floor == 160.0, "floor never under 160: %g", ep.floor);
    for (int h = 1; h < 30; h++) eeasr_endpointer_step(&ep, 1000000, &one);
    CHECK(ep.floor == 160.0, "warm-up keeps the minimum: %g", ep.floor);
    eeasr_endpointer_step(&ep, 1000000, &one); /* hop 30, loud: the floor rises by 0.5 % all the same */
    CHECK(ep.floor == 160.0 * 1.005, "rise: %.17g", ep.floor);
}

int main(void) {
    test_crc32_known_values();
    test_cobs_known_encodings();
    test_cobs_round_trips_in_place();
    test_cobs_decode_rejects();
    test_every_message_type_matches_the_reference_and_round_trips();
    test_pack_limits();
    test_rejections_name_the_reason();
    test_decoder_resynchronises();
    test_decoder_drops_runs_longer_than_its_buffer();
    test_endpointer_tone_in_silence();
    test_endpointer_warmup_floor_and_max_speech();
    printf("protocol and endpointer tests: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
