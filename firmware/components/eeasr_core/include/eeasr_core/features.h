/* The streaming log-mel front end of docs/features.md, in float32 (the ESP32-S3 FPU is single precision).

   Tables (Hann window, FFT twiddles, mel filterbank) are computed once at init from the spec's formulas in
   double and stored as float32: the same values as eeasr.features.hann_window / mel_filterbank(float32),
   with no generated file to keep in sync. The per-frame path allocates nothing and uses no double. */
#ifndef EEASR_CORE_FEATURES_H
#define EEASR_CORE_FEATURES_H

#include <stddef.h>
#include <stdint.h>

#include "eeasr_core/fft.h"

#ifdef __cplusplus
extern "C" {
#endif

/* FeatureConfig defaults; a model or test-vector file with another FeatureConfig hash needs a rebuild. */
#define EEASR_SAMPLE_RATE 16000
#define EEASR_WIN_LENGTH 400
#define EEASR_HOP_LENGTH 160
#define EEASR_N_FFT EEASR_FFT_N
#define EEASR_N_FREQS (EEASR_N_FFT / 2 + 1)
#define EEASR_N_MELS 80
#define EEASR_F_MIN 20.0
#define EEASR_F_MAX 7600.0
#define EEASR_LOG_FLOOR 1e-10
#define EEASR_FEATURE_HASH "5bdbfeb587617ab3"

/* Each frequency bin lies in at most two adjacent triangles. */
#define EEASR_MAX_FILTER_WEIGHTS (2 * EEASR_N_FREQS)

/* Frames a push of n samples can complete at most (up to 399 samples may be pending). */
#define EEASR_LOGMEL_MAX_FRAMES(n) ((n) / EEASR_HOP_LENGTH + 1)

typedef struct {
    float window[EEASR_WIN_LENGTH];
    eeasr_rfft512_tables fft;
    /* Filter m: weights[offset[m] + j] for bins first[m] + j, j < len[m] (its nonzero run, ascending). */
    uint16_t filter_first[EEASR_N_MELS];
    uint16_t filter_len[EEASR_N_MELS];
    uint16_t filter_offset[EEASR_N_MELS];
    uint16_t n_weights;
    float weights[EEASR_MAX_FILTER_WEIGHTS];
    float energy_floor; /* (float)1e-10 */
    float log_floor;    /* (float)ln(1e-10): the reference's value, not logf of the rounded floor */
} eeasr_logmel_tables;

typedef struct {
    const eeasr_logmel_tables *tables;
    int16_t buf[EEASR_WIN_LENGTH]; /* the samples of the next frame received so far */
    uint16_t fill;                 /* < EEASR_WIN_LENGTH between calls */
    float work[EEASR_N_FFT];       /* FFT buffer: kept here, not on the (small) task stack */
} eeasr_logmel_stream;

void eeasr_logmel_tables_init(eeasr_logmel_tables *t);

/* sizeof the two structs, for bindings that allocate them (Python ctypes) without mirroring their layout. */
size_t eeasr_logmel_tables_size(void);
size_t eeasr_logmel_stream_size(void);

/* Dense copies of the tables (window[400], fbank[257 * 80] bin-major like mel_filterbank) for tests. */
void eeasr_logmel_tables_export(const eeasr_logmel_tables *t, float *window, float *fbank);

/* 0 if n < 400, else 1 + (n - 400) / 160. */
size_t eeasr_num_frames(size_t n_samples);

/* Log-mel of one complete frame of 400 samples; work is scratch of 512 floats. */
void eeasr_logmel_frame(const eeasr_logmel_tables *t, const int16_t *samples, float *work, float *out);

void eeasr_logmel_stream_init(eeasr_logmel_stream *s, const eeasr_logmel_tables *t);

/* Forget pending samples (start of a new utterance). */
void eeasr_logmel_stream_reset(eeasr_logmel_stream *s);

/* Feed n samples; writes the completed frames to out (frame-major, 80 floats each) and returns how many.
   Stops before completing a frame beyond max_frames: *consumed (if not NULL) then tells how many samples
   were taken, and the caller pushes the rest later. With max_frames >= EEASR_LOGMEL_MAX_FRAMES(n) all n
   samples are always consumed. Frames are the same for any chunking. */
size_t eeasr_logmel_push(eeasr_logmel_stream *s, const int16_t *pcm, size_t n, float *out, size_t max_frames,
                         size_t *consumed);

/* z = (logmel - mean) / std per bin, in float32 (subtraction then division, as the spec requires). */
void eeasr_normalize(const float *logmel, size_t n_frames, const float *mean, const float *std, float *z);

/* quantize_int8((logmel - mean) / std, scale, zero_point) without the float buffer in between. */
void eeasr_features_int8(const float *logmel, size_t n_frames, const float *mean, const float *std, float scale,
                         int32_t zero_point, int8_t *out);

#ifdef __cplusplus
}
#endif

#endif
