#include "eeasr_core/features.h"

#include <math.h>
#include <string.h>

#include "eeasr_core/quant.h"

static const double kPi = 3.14159265358979323846;

static double hz_to_mel(double hz) { return 2595.0 * log10(1.0 + hz / 700.0); }

static double mel_to_hz(double mel) { return 700.0 * (pow(10.0, mel / 2595.0) - 1.0); }

/* Filter edges F_0..F_81 evaluated like numpy.linspace (j * step + start, the last point set to stop), so
   the float32 weights come out as eeasr.features.mel_filterbank's. */
static void filter_edges(double *edge_hz) {
    double lo = hz_to_mel(EEASR_F_MIN), hi = hz_to_mel(EEASR_F_MAX);
    double step = (hi - lo) / (double)(EEASR_N_MELS + 1);
    for (int j = 0; j < EEASR_N_MELS + 1; j++) edge_hz[j] = mel_to_hz((double)j * step + lo);
    edge_hz[EEASR_N_MELS + 1] = mel_to_hz(hi);
}

static float filter_weight(const double *edge_hz, int k, int m) {
    /* Bin frequencies k * (sample_rate // 2) / 256 = 31.25 k are exact. */
    double f = (double)k * ((double)(EEASR_SAMPLE_RATE / 2) / (double)(EEASR_N_FREQS - 1));
    double down = (f - edge_hz[m]) / (edge_hz[m + 1] - edge_hz[m]);
    double up = (edge_hz[m + 2] - f) / (edge_hz[m + 2] - edge_hz[m + 1]);
    double w = down < up ? down : up;
    return (float)(w > 0.0 ? w : 0.0);
}

void eeasr_logmel_tables_init(eeasr_logmel_tables *t) {
    for (int n = 0; n < EEASR_WIN_LENGTH; n++)
        t->window[n] = (float)(0.5 - 0.5 * cos(2.0 * kPi * (double)n / (double)EEASR_WIN_LENGTH));
    eeasr_rfft512_init(&t->fft);

    double edge_hz[EEASR_N_MELS + 2];
    filter_edges(edge_hz);
    uint16_t offset = 0;
    for (int m = 0; m < EEASR_N_MELS; m++) {
        int first = -1, last = -1;
        for (int k = 0; k < EEASR_N_FREQS; k++) {
            if (filter_weight(edge_hz, k, m) != 0.0f) {
                if (first < 0) first = k;
                last = k;
            }
        }
        /* A triangle is convex, so its nonzero bins are one run; an empty filter (none with these
           constants) keeps length 0 and sits on the log floor. */
        uint16_t len = (uint16_t)(first < 0 ? 0 : last - first + 1);
        t->filter_first[m] = (uint16_t)(first < 0 ? 0 : first);
        t->filter_len[m] = len;
        t->filter_offset[m] = offset;
        for (int j = 0; j < len; j++) t->weights[offset + j] = filter_weight(edge_hz, first + j, m);
        offset = (uint16_t)(offset + len);
    }
    t->n_weights = offset;
    t->energy_floor = (float)EEASR_LOG_FLOOR;
    t->log_floor = (float)log(EEASR_LOG_FLOOR);
}

size_t eeasr_logmel_tables_size(void) { return sizeof(eeasr_logmel_tables); }

size_t eeasr_logmel_stream_size(void) { return sizeof(eeasr_logmel_stream); }

void eeasr_logmel_tables_export(const eeasr_logmel_tables *t, float *window, float *fbank) {
    memcpy(window, t->window, sizeof t->window);
    memset(fbank, 0, sizeof(float) * EEASR_N_FREQS * EEASR_N_MELS);
    for (int m = 0; m < EEASR_N_MELS; m++)
        for (int j = 0; j < t->filter_len[m]; j++)
            fbank[(t->filter_first[m] + j) * EEASR_N_MELS + m] = t->weights[t->filter_offset[m] + j];
}

size_t eeasr_num_frames(size_t n_samples) {
    return n_samples < EEASR_WIN_LENGTH ? 0 : 1 + (n_samples - EEASR_WIN_LENGTH) / EEASR_HOP_LENGTH;
}

void eeasr_logmel_frame(const eeasr_logmel_tables *t, const int16_t *samples, float *work, float *out) {
    /* s / 32768 is exact in float32; the window product is the only rounding before the FFT. */
    for (int n = 0; n < EEASR_WIN_LENGTH; n++) work[n] = ((float)samples[n] * (1.0f / 32768.0f)) * t->window[n];
    for (int n = EEASR_WIN_LENGTH; n < EEASR_N_FFT; n++) work[n] = 0.0f;
    eeasr_rfft512(&t->fft, work);
    eeasr_power_spectrum512(work);
    for (int m = 0; m < EEASR_N_MELS; m++) {
        const float *p = work + t->filter_first[m], *w = t->weights + t->filter_offset[m];
        float energy = 0.0f;
        for (int j = 0; j < t->filter_len[m]; j++) energy += p[j] * w[j]; /* ascending bins, as the reference */
        out[m] = energy > t->energy_floor ? logf(energy) : t->log_floor;
    }
}

void eeasr_logmel_stream_init(eeasr_logmel_stream *s, const eeasr_logmel_tables *t) {
    s->tables = t;
    eeasr_logmel_stream_reset(s);
}

void eeasr_logmel_stream_reset(eeasr_logmel_stream *s) { s->fill = 0; }

size_t eeasr_logmel_push(eeasr_logmel_stream *s, const int16_t *pcm, size_t n, float *out, size_t max_frames,
                         size_t *consumed) {
    size_t frames = 0, i = 0;
    while (i < n) {
        size_t need = (size_t)(EEASR_WIN_LENGTH - s->fill);
        if (n - i < need) { /* not enough for a frame: keep the samples for the next push */
            memcpy(s->buf + s->fill, pcm + i, (n - i) * sizeof *pcm);
            s->fill = (uint16_t)(s->fill + (n - i));
            i = n;
            break;
        }
        if (frames == max_frames) break;
        memcpy(s->buf + s->fill, pcm + i, need * sizeof *pcm);
        i += need;
        eeasr_logmel_frame(s->tables, s->buf, s->work, out + frames * EEASR_N_MELS);
        frames++;
        /* The next frame starts one hop later: keep its first 240 samples. */
        memmove(s->buf, s->buf + EEASR_HOP_LENGTH, (EEASR_WIN_LENGTH - EEASR_HOP_LENGTH) * sizeof *s->buf);
        s->fill = EEASR_WIN_LENGTH - EEASR_HOP_LENGTH;
    }
    if (consumed) *consumed = i;
    return frames;
}

void eeasr_normalize(const float *logmel, size_t n_frames, const float *mean, const float *std, float *z) {
    for (size_t t = 0; t < n_frames; t++)
        for (int m = 0; m < EEASR_N_MELS; m++) {
            size_t i = t * EEASR_N_MELS + (size_t)m;
            z[i] = (logmel[i] - mean[m]) / std[m];
        }
}

void eeasr_features_int8(const float *logmel, size_t n_frames, const float *mean, const float *std, float scale,
                         int32_t zero_point, int8_t *out) {
    for (size_t t = 0; t < n_frames; t++)
        for (int m = 0; m < EEASR_N_MELS; m++) {
            size_t i = t * EEASR_N_MELS + (size_t)m;
            out[i] = eeasr_quantize_int8((logmel[i] - mean[m]) / std[m], scale, zero_point);
        }
}
