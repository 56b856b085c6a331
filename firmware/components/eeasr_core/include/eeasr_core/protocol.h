/* The wire protocol v1 of docs/protocol.md (reference: eeasr/protocol.py), without allocation.

   A frame is header | payload | crc32, COBS-encoded and followed by one 0x00 on a byte stream:
     eeasr_pack_<type>  message fields -> payload bytes (the caller's buffer)
     eeasr_encode       type, seq, payload -> COBS(frame) + 0x00, ready for the serial line
     eeasr_decoder_*    bytes as they arrive -> one frame or one rejection at a time, in the caller's buffer
     eeasr_frame_unpack one raw frame (HTTP body form) -> eeasr_message, every check of the spec, in its order
   Message structs are views: their variable parts point at wire bytes (the decoder's buffer after an unpack,
   the caller's data before a pack). Multi-byte arrays in them (AUDIO samples, RESULT tokens) are in wire
   order, little-endian: read them with eeasr_get_u16le / eeasr_audio_samples, write them with
   eeasr_put_u16le. Text is UTF-8 and not NUL-terminated. */
#ifndef EEASR_CORE_PROTOCOL_H
#define EEASR_CORE_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Limits: equal to eeasr/protocol.py (tests/test_firmware_protocol.py reads these lines). */
#define EEASR_PROTOCOL_VERSION 1
#define EEASR_HEADER_SIZE 6
#define EEASR_CRC_SIZE 4
#define EEASR_MAX_PAYLOAD 49152
#define EEASR_MAX_FRAME 49162   /* header + MAX_PAYLOAD + crc */
#define EEASR_MAX_ENCODED 49357 /* MAX_FRAME + MAX_FRAME / 254 + 2: COBS overhead + delimiter */
#define EEASR_MAX_AUDIO_SAMPLES 4096
#define EEASR_MAX_TOKENS 1024
#define EEASR_MAX_TEXT 4096
#define EEASR_MAX_EXITS 32         /* a HELLO packs 1 to 32 exit layers */
#define EEASR_MAX_FIRMWARE_NAME 255 /* longer names are cut when packed, as the reference does */
#define EEASR_MAX_MODULES 255       /* a HANDOFF module mask counts its modules in one byte */

/* Fixed parts of the payloads. */
#define EEASR_HELLO_FIXED 36
#define EEASR_AUDIO_FIXED 2
#define EEASR_RESULT_FIXED 16 /* up to n_tokens; the text length u16 follows the tokens */
#define EEASR_HANDOFF_FIXED 26
#define EEASR_ACK_SIZE 4

/* Bytes of a frame with an n-byte payload; the COBS encoding of n bytes, at most (without the delimiter);
   what eeasr_encode writes at most for an n-byte payload (with the delimiter). */
#define EEASR_FRAME_SIZE(n) ((n) + EEASR_HEADER_SIZE + EEASR_CRC_SIZE)
#define EEASR_COBS_MAX(n) ((n) + (n) / 254 + 1)
#define EEASR_ENCODED_MAX(n) (EEASR_COBS_MAX(EEASR_FRAME_SIZE(n)) + 1)

typedef enum {
    EEASR_MSG_HELLO = 0x01,
    EEASR_MSG_AUDIO = 0x02,
    EEASR_MSG_RESULT = 0x03,
    EEASR_MSG_HANDOFF = 0x04,
    EEASR_MSG_ERROR = 0x05,
    EEASR_MSG_ACK = 0x06,
    EEASR_MSG_COMMAND = 0x07,
    EEASR_MSG_INFO = 0x08,
} eeasr_msg_type;

typedef enum {
    EEASR_AUDIO_UTT_START = 0x01,
    EEASR_AUDIO_UTT_END = 0x02,
    EEASR_AUDIO_STREAM_END = 0x04,
} eeasr_audio_flag;

typedef enum {
    EEASR_RESULT_FINAL = 0x01,
    EEASR_RESULT_HANDED_OFF = 0x02,
    EEASR_RESULT_SERVER = 0x04,
    EEASR_RESULT_NO_SPEECH = 0x08,
    EEASR_RESULT_LOCAL_FALLBACK = 0x10,
} eeasr_result_flag;

typedef enum {
    EEASR_MEASURE_FRAME_ENTROPY = 0,
    EEASR_MEASURE_NONBLANK_ENTROPY = 1,
    EEASR_MEASURE_NBEST_POSTERIOR = 2,
} eeasr_measure;

typedef enum {
    EEASR_CMD_HELLO = 1,
    EEASR_CMD_SELF_TEST = 2,
    EEASR_CMD_PROFILE = 3,
    EEASR_CMD_RESET = 4,
} eeasr_command_code;

/* The codes an ERROR message carries. */
typedef enum {
    EEASR_ERROR_BAD_FRAME = 1,
    EEASR_ERROR_VERSION = 2,
    EEASR_ERROR_MODEL_MISMATCH = 3,
    EEASR_ERROR_TOO_LARGE = 4,
    EEASR_ERROR_OVERFLOW = 5,
    EEASR_ERROR_INTERNAL = 6,
    EEASR_ERROR_UNAUTHORIZED = 7,
    EEASR_ERROR_UNAVAILABLE = 8,
} eeasr_error_code;

/* Why a frame was rejected (decoding, in the order the checks run) or a message could not be packed. */
typedef enum {
    EEASR_OK = 0,
    EEASR_TOO_LONG,           /* a run without delimiter longer than the receive buffer */
    EEASR_BAD_COBS,           /* a COBS code points past the end of the run */
    EEASR_SHORT_FRAME,        /* fewer than header + crc bytes */
    EEASR_LENGTH_MISMATCH,    /* the header's length is not total - 10 */
    EEASR_BAD_CRC,
    EEASR_BAD_VERSION,
    EEASR_PAYLOAD_TOO_LARGE,  /* over EEASR_MAX_PAYLOAD (also when packing) */
    EEASR_UNKNOWN_TYPE,
    EEASR_SHORT_PAYLOAD,      /* HELLO, RESULT, HANDOFF, ERROR shorter than their fixed fields */
    EEASR_BAD_PAYLOAD_SIZE,   /* ACK not 4 bytes, COMMAND not 1 */
    EEASR_BAD_EXIT_LIST,      /* HELLO: truncated exit list */
    EEASR_BAD_FIRMWARE_LENGTH,/* HELLO: length does not match its firmware string */
    EEASR_BAD_AUDIO_LAYOUT,   /* AUDIO: not 2 flag bytes + int16 samples */
    EEASR_TOO_MANY_SAMPLES,   /* AUDIO: more than EEASR_MAX_AUDIO_SAMPLES (also when packing) */
    EEASR_BAD_TOKEN_LIST,     /* RESULT: more than EEASR_MAX_TOKENS tokens or truncated */
    EEASR_BAD_TEXT_LENGTH,    /* RESULT: length does not match its text length */
    EEASR_BAD_STATE_SIZE,     /* HANDOFF: state bytes are not T_valid x d */
    EEASR_BAD_SCALE,          /* HANDOFF: scale not a positive finite number */
    EEASR_BAD_UTF8,           /* firmware name, result text, error message or info not valid UTF-8 */
    EEASR_NO_ROOM,            /* packing: the output buffer is too small */
    EEASR_BAD_EXIT_COUNT,     /* packing a HELLO: 1 to EEASR_MAX_EXITS exit layers */
    EEASR_TOO_MANY_TOKENS,    /* packing a RESULT */
    EEASR_TEXT_TOO_LONG,      /* packing a RESULT: text over EEASR_MAX_TEXT bytes */
    EEASR_BAD_MODULE_MASK,    /* HANDOFF: bytes after the state are not one module mask (count 1..255, ceil(count /
                                 8) bytes, unused bits 0) */
} eeasr_reason;

/* A fixed one-line description ("crc mismatch"), e.g. for an ERROR frame with code BAD_FRAME. */
const char *eeasr_reason_str(eeasr_reason r);

typedef struct {
    uint8_t model_hash[8]; /* the first 8 bytes of the manifest's hex digests */
    uint8_t bundle_id[8];
    uint8_t feature_hash[8];
    uint32_t sample_rate;
    uint16_t window; /* W feature frames */
    uint8_t subsampling;
    uint16_t d_model;
    uint16_t vocab;
    uint8_t n_exits;
    const uint8_t *exit_layers; /* n_exits */
    size_t firmware_len;        /* cut to EEASR_MAX_FIRMWARE_NAME bytes when packed */
    const char *firmware;
} eeasr_hello;

typedef struct {
    uint8_t flags;              /* eeasr_audio_flag */
    size_t n_samples;
    const uint8_t *samples;     /* n_samples int16, little-endian */
} eeasr_audio;

typedef struct {
    uint32_t utt_id;
    uint16_t window;
    uint8_t flags;              /* eeasr_result_flag */
    uint8_t exit_index;         /* 1-based over the model's exits */
    uint8_t layer;
    uint8_t measure;            /* eeasr_measure */
    float confidence;
    size_t n_tokens;
    const uint8_t *tokens;      /* n_tokens u16, little-endian */
    size_t text_len;
    const char *text;
} eeasr_result;

typedef struct {
    uint32_t utt_id;
    uint16_t window;
    uint8_t flags;              /* EEASR_RESULT_FINAL on the utterance's last window */
    uint8_t layer;
    uint8_t model_hash[8];
    float scale;
    int8_t zero_point;
    uint16_t t_valid;
    uint16_t d;
    const int8_t *hidden;       /* [t_valid x d], row-major */
    /* Gated (I3D) programs: module i (layer i / 2 + 1, attention if i is even, feed-forward if odd) is bit i % 8
       of modules[i / 8]. 0 modules (early-exit programs): no mask on the wire, modules is not read. Unused bits
       of the last byte are packed as 0 whatever the caller's byte holds. */
    uint8_t n_modules;
    const uint8_t *modules;     /* (n_modules + 7) / 8 bytes */
} eeasr_handoff;

typedef struct {
    uint16_t code;              /* eeasr_error_code */
    size_t message_len;         /* cut to EEASR_MAX_TEXT bytes when packed */
    const char *message;
} eeasr_error_msg;

typedef struct {
    uint16_t seq;
    uint8_t of;                 /* the acknowledged frame's type */
    uint8_t status;             /* 0 = ok */
} eeasr_ack;

typedef struct {
    uint8_t command;            /* eeasr_command_code */
} eeasr_command;

typedef struct {
    size_t json_len;
    const char *json;
} eeasr_info;

/* A frame's type, seq and message (the member named by type). */
typedef struct {
    uint8_t type;
    uint16_t seq;
    union {
        eeasr_hello hello;
        eeasr_audio audio;
        eeasr_result result;
        eeasr_handoff handoff;
        eeasr_error_msg error;
        eeasr_ack ack;
        eeasr_command command;
        eeasr_info info;
    } u;
} eeasr_message;

static inline uint16_t eeasr_get_u16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline void eeasr_put_u16le(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Copy an AUDIO message's samples to native int16 (out holds a->n_samples). */
void eeasr_audio_samples(const eeasr_audio *a, int16_t *out);

/* CRC-32 as zlib.crc32(data, crc): start with crc = 0; feeding pieces in turn equals one call over all. */
uint32_t eeasr_crc32(uint32_t crc, const uint8_t *data, size_t n);

/* COBS (runs of at most 254 non-zero bytes) as the Python package cobs: the encoding has no zero byte and
   is at most EEASR_COBS_MAX(n) bytes; 0 bytes encode to 0x01. Returns the bytes written, or 0 when cap is
   too small. */
size_t eeasr_cobs_encode(const uint8_t *in, size_t n, uint8_t *out, size_t cap);

/* Inverse of eeasr_cobs_encode; out may equal in (decoded in place), else holds n bytes. EEASR_BAD_COBS when
   a code is 0 or points past the end. */
eeasr_reason eeasr_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *out_len);

/* header | payload | crc into out (EEASR_FRAME_SIZE(n) bytes); payload may lie anywhere in out already
   (e.g. packed at out + EEASR_HEADER_SIZE). Any type is written as given. */
eeasr_reason eeasr_frame_pack(uint8_t type, uint16_t seq, const uint8_t *payload, size_t n, uint8_t *out,
                              size_t cap, size_t *written);

/* COBS(header | payload | crc) + 0x00 into out (at most EEASR_ENCODED_MAX(n) bytes), in one pass without
   a frame buffer; payload must not overlap out. */
eeasr_reason eeasr_encode(uint8_t type, uint16_t seq, const uint8_t *payload, size_t n, uint8_t *out,
                          size_t cap, size_t *written);

/* Checks a raw frame (no COBS) as the spec orders them: length >= 10, length field, CRC, version, payload
   size, type, payload layout; on EEASR_OK *m holds it, its pointers into raw. */
eeasr_reason eeasr_frame_unpack(const uint8_t *raw, size_t n, eeasr_message *m);

/* Payload of one message type: unpack checks the layout and UTF-8 (pointers into p); pack writes the payload
   to out and its size to *n (nothing on failure). */
eeasr_reason eeasr_unpack_hello(const uint8_t *p, size_t n, eeasr_hello *m);
eeasr_reason eeasr_unpack_audio(const uint8_t *p, size_t n, eeasr_audio *m);
eeasr_reason eeasr_unpack_result(const uint8_t *p, size_t n, eeasr_result *m);
eeasr_reason eeasr_unpack_handoff(const uint8_t *p, size_t n, eeasr_handoff *m);
eeasr_reason eeasr_unpack_error(const uint8_t *p, size_t n, eeasr_error_msg *m);
eeasr_reason eeasr_unpack_ack(const uint8_t *p, size_t n, eeasr_ack *m);
eeasr_reason eeasr_unpack_command(const uint8_t *p, size_t n, eeasr_command *m);
eeasr_reason eeasr_unpack_info(const uint8_t *p, size_t n, eeasr_info *m);

eeasr_reason eeasr_pack_hello(const eeasr_hello *m, uint8_t *out, size_t cap, size_t *n);
eeasr_reason eeasr_pack_audio(const eeasr_audio *m, uint8_t *out, size_t cap, size_t *n);
eeasr_reason eeasr_pack_result(const eeasr_result *m, uint8_t *out, size_t cap, size_t *n);
eeasr_reason eeasr_pack_handoff(const eeasr_handoff *m, uint8_t *out, size_t cap, size_t *n);
eeasr_reason eeasr_pack_error(const eeasr_error_msg *m, uint8_t *out, size_t cap, size_t *n);
eeasr_reason eeasr_pack_ack(const eeasr_ack *m, uint8_t *out, size_t cap, size_t *n);
eeasr_reason eeasr_pack_command(const eeasr_command *m, uint8_t *out, size_t cap, size_t *n);
eeasr_reason eeasr_pack_info(const eeasr_info *m, uint8_t *out, size_t cap, size_t *n);

/* The payload of m->u by m->type (EEASR_UNKNOWN_TYPE for another type). */
eeasr_reason eeasr_pack_message(const eeasr_message *m, uint8_t *out, size_t cap, size_t *n);

/* Incremental decoder of a byte stream. buf (the caller's) holds one encoded run: a frame whose encoding is
   longer than cap is dropped as EEASR_TOO_LONG without being buffered. Frames are decoded in place, so a
   decoded message points into buf until the next eeasr_decoder_feed. cap = EEASR_MAX_ENCODED takes every
   frame the protocol allows; a device may give less (EEASR_COBS_MAX(EEASR_FRAME_SIZE(largest payload))). */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;     /* bytes of the current run in buf */
    size_t dropped; /* bytes of the current run, once it is too long for buf */
} eeasr_decoder;

/* One frame or one rejection. */
typedef struct {
    eeasr_reason reason;  /* EEASR_OK: msg holds the frame */
    size_t n_bytes;       /* wire bytes it took: the run and its delimiter (EEASR_TOO_LONG: the run alone) */
    const uint8_t *raw;   /* the COBS-decoded frame in the decoder's buffer (NULL for TOO_LONG, BAD_COBS) */
    size_t raw_len;
    eeasr_message msg;
} eeasr_decoded;

void eeasr_decoder_init(eeasr_decoder *d, uint8_t *buf, size_t cap);

/* Forget a partial run (e.g. after a RESET). */
void eeasr_decoder_reset(eeasr_decoder *d);

/* Takes data up to and including the first delimiter that ends a non-empty run, or all n bytes; *consumed
   says how many. Returns 1 when *out holds a frame or a rejection, else 0 (empty runs between delimiters
   are idle and produce nothing). Call again with the rest:
       while (n) { size_t k; if (eeasr_decoder_feed(&d, p, n, &k, &ev)) handle(&ev); p += k; n -= k; } */
int eeasr_decoder_feed(eeasr_decoder *d, const uint8_t *data, size_t n, size_t *consumed, eeasr_decoded *out);

/* sizeof the structs, for bindings that mirror them (Python ctypes). */
size_t eeasr_message_size(void);
size_t eeasr_decoder_size(void);
size_t eeasr_decoded_size(void);

#ifdef __cplusplus
}
#endif

#endif
