/* The `model` partition image (convert/model_image.py writes it; firmware/README.md documents the layout):
   parsed in place, every offset and size checked against the bytes present, and the device program it
   describes checked for consistency, so a corrupt or foreign partition is refused with a one-line reason
   instead of being run. Two program kinds: early-exit (segments with an exit head each, run in order until
   an exit is sure) and gated (I3D: front, gate predictor(s), attention and feed-forward segments that run
   when their gate is open, the head; gated.h runs it). Portable C (no ESP-IDF headers): the tests compile it
   natively and parse images the Python builder made. */
#ifndef EEASR_MAIN_MODEL_IMAGE_H
#define EEASR_MAIN_MODEL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EEASR_IMG_MAGIC "EEASRMDL"
#define EEASR_IMG_VERSION 2
#define EEASR_IMG_HEADER_BYTES 256u
#define EEASR_IMG_SEGMENT_BYTES 64u
#define EEASR_IMG_MAX_SEGMENTS 40 /* a gated program: 2 L + 3 (global predictor) or 3 L + 2 (local) */
#define EEASR_IMG_MAX_LAYERS 18   /* device layers of a gated program: (40 - 3) / 2 */
#define EEASR_MEASURE_NONE 255

enum { EEASR_PROGRAM_EARLY_EXIT = 0, EEASR_PROGRAM_GATED = 1 };
enum { EEASR_PREDICTOR_GLOBAL = 0, EEASR_PREDICTOR_LOCAL = 1, EEASR_PREDICTOR_NONE = 255 };
/* Segment roles: an early-exit segment (blocks and their exit head), or one step of a gated program. */
enum { EEASR_ROLE_SEGMENT, EEASR_ROLE_FRONT, EEASR_ROLE_PREDICTOR, EEASR_ROLE_MHA, EEASR_ROLE_FFN, EEASR_ROLE_HEAD };
#define EEASR_IMG_NO_SEGMENT 255

typedef struct {
    char name[9];
    const uint8_t *tflite; /* 16-byte aligned inside the image */
    uint32_t tflite_len;
    uint32_t arena_bytes;
    uint8_t exit_index, exit_layer, first_block, last_block; /* exit 0: no exit head */
    float in_scale;           /* its input: feats, hidden_in, or a predictor's pooled */
    int32_t in_zero_point;
    float hidden_scale;       /* its output: hidden, or a predictor's gate margins (0: none, a gated head) */
    int32_t hidden_zero_point;
    float logits_scale;       /* 0: no logits */
    int32_t logits_zero_point;
    uint8_t front;            /* takes the int8 features */
    uint8_t requant;          /* early-exit: its input is the previous hidden state requantized (the ends differ) */
    uint8_t role;             /* EEASR_ROLE_* */
    uint8_t takes_count;      /* has the n_frames input */
    uint8_t layer;            /* gated: its layer (0: front, global predictor, 1-based otherwise) */
    uint16_t n_gates;         /* a predictor's margins */
    uint32_t crc;             /* CRC-32 of the .tflite bytes */
} eeasr_img_segment;

typedef struct {
    const int8_t *hidden; /* its output: [encoder_frames x d_model] (raw TFLM), a predictor's [n_gates]; or NULL */
    const int8_t *logits; /* [t_valid x vocab], or NULL without an exit head */
    float entropy, nonblank_entropy;
} eeasr_img_golden_segment;

/* A gated program's segments (indices into the table) per device layer; predictor: a local one's. */
typedef struct {
    uint8_t predictor, mha, ffn;
} eeasr_img_layer;

typedef struct {
    uint8_t kind;           /* EEASR_PROGRAM_* */
    uint8_t predictor_kind; /* EEASR_PREDICTOR_* */
    uint8_t n_layers;       /* the model's layers (gated) */
    uint8_t device_layers;  /* the layers the device runs (gated) */
    uint8_t n_modules;      /* the HANDOFF module mask's count (gated; 0: no mask) */
    double beta;            /* the gate threshold p(execute) > beta (gated) */
    uint8_t front, predictor, head; /* indices; predictor: the global one, else EEASR_IMG_NO_SEGMENT */
    eeasr_img_layer layer[EEASR_IMG_MAX_LAYERS];
} eeasr_img_program;

typedef struct {
    uint32_t n_samples, n_frames, t_valid;
    uint8_t hidden_tol, logits_tol, feature_tol;
    const int16_t *pcm;   /* [n_samples] */
    const int8_t *feats;  /* [n_frames x n_mels]: the reference int8 features, also segment 1's input */
    eeasr_img_golden_segment seg[EEASR_IMG_MAX_SEGMENTS];
} eeasr_img_golden;

typedef struct {
    const uint8_t *base;
    uint32_t size;
    char model_hash[17];
    char bundle_id[33];
    char feature_hash[17];
    uint32_t sample_rate;
    uint16_t window, encoder_frames, d_model, vocab, n_mels;
    uint8_t subsampling, n_exits, blank, default_measure, handoff_layer;
    uint8_t device_exits; /* EXITS = k: early-exit, its k segments; gated, the head is exit k */
    uint8_t n_segments;   /* in the table, in program order */
    uint8_t exit_layers[16];
    float threshold[2]; /* per measure id (0 entropy, 1 non-blank entropy); NaN when not calibrated */
    float feature_scale;
    int32_t feature_zero_point;
    float handoff_scale;
    int32_t handoff_zero_point;
    uint32_t arena_bytes; /* the largest segment's */
    const float *norm_mean, *norm_std;
    eeasr_img_program program;
    eeasr_img_segment seg[EEASR_IMG_MAX_SEGMENTS];
    eeasr_img_golden golden;
} eeasr_model_image;

/* Parse `avail` bytes at data (the mmapped partition). With check_crc, the payload and every segment's
   CRC-32 are verified too (reads the whole image). Returns 0, or -1 with a one-line reason in err. */
int eeasr_model_image_parse(const uint8_t *data, size_t avail, int check_crc, eeasr_model_image *out, char *err,
                            size_t err_len);

/* Just the total image size from a header (0 if the bytes are not an image header): how much to mmap. */
uint32_t eeasr_model_image_size(const uint8_t *header, size_t avail);

#ifdef __cplusplus
}
#endif

#endif
