/* The `model` partition image (convert/model_image.py writes it; firmware/README.md documents the layout):
   parsed in place, every offset and size checked against the bytes present, so a corrupt or foreign
   partition is refused with a one-line reason instead of being run. Portable C (no ESP-IDF headers): the
   tests compile it natively and parse images the Python builder made. */
#ifndef EEASR_MAIN_MODEL_IMAGE_H
#define EEASR_MAIN_MODEL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EEASR_IMG_MAGIC "EEASRMDL"
#define EEASR_IMG_VERSION 1
#define EEASR_IMG_HEADER_BYTES 256u
#define EEASR_IMG_SEGMENT_BYTES 64u
#define EEASR_IMG_MAX_SEGMENTS 16
#define EEASR_MEASURE_NONE 255

typedef struct {
    char name[9];
    const uint8_t *tflite; /* 16-byte aligned inside the image */
    uint32_t tflite_len;
    uint32_t arena_bytes;
    uint8_t exit_index, exit_layer, first_block, last_block;
    float in_scale;
    int32_t in_zero_point;
    float hidden_scale;
    int32_t hidden_zero_point;
    float logits_scale;
    int32_t logits_zero_point;
    uint8_t front;   /* takes the int8 features */
    uint8_t requant; /* its input is the previous hidden state requantized (the ends differ) */
    uint32_t crc;    /* CRC-32 of the .tflite bytes */
} eeasr_img_segment;

typedef struct {
    const int8_t *hidden; /* [encoder_frames x d_model], the raw TFLM output */
    const int8_t *logits; /* [t_valid x vocab] */
    float entropy, nonblank_entropy;
} eeasr_img_golden_segment;

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
    uint8_t subsampling, n_exits, device_exits, blank, default_measure, handoff_layer;
    uint8_t exit_layers[16];
    float threshold[2]; /* per measure id (0 entropy, 1 non-blank entropy); NaN when not calibrated */
    float feature_scale;
    int32_t feature_zero_point;
    float handoff_scale;
    int32_t handoff_zero_point;
    uint32_t arena_bytes; /* the largest segment's */
    const float *norm_mean, *norm_std;
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
