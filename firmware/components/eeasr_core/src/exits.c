#include "eeasr_core/exits.h"

#include <math.h>

#include "eeasr_core/quant.h"

static void log_softmax_row(const float *x, size_t vocab, float *out) {
    float peak = x[0];
    for (size_t y = 1; y < vocab; y++)
        if (x[y] > peak) peak = x[y];
    float sum = 0.0f;
    for (size_t y = 0; y < vocab; y++) sum += expf(x[y] - peak);
    float log_sum = logf(sum);
    for (size_t y = 0; y < vocab; y++) out[y] = (x[y] - peak) - log_sum;
}

void eeasr_log_softmax(const float *x, size_t rows, size_t vocab, float *out) {
    for (size_t t = 0; t < rows; t++) log_softmax_row(x + t * vocab, vocab, out + t * vocab);
}

/* Running sums of per-frame entropies over all frames and over non-blank ones. */
typedef struct {
    float all, nonblank;
    size_t n_nonblank;
} entropy_sums;

static void add_frame(const float *logp, size_t vocab, int32_t blank, entropy_sums *sums) {
    float h = 0.0f;
    size_t best = 0;
    for (size_t y = 0; y < vocab; y++) {
        h -= expf(logp[y]) * logp[y];
        if (logp[y] > logp[best]) best = y;
    }
    sums->all += h;
    if ((int32_t)best != blank) {
        sums->nonblank += h;
        sums->n_nonblank++;
    }
}

static void finish(const entropy_sums *sums, size_t t_valid, size_t vocab, eeasr_exit_measures *out) {
    if (t_valid == 0) {
        out->entropy = out->nonblank_entropy = 0.0f;
        return;
    }
    /* Mean first, then the division by |Y|, in the order of eeasr/exits.py. */
    out->entropy = sums->all / (float)t_valid / (float)vocab;
    out->nonblank_entropy =
        sums->n_nonblank ? sums->nonblank / (float)sums->n_nonblank / (float)vocab : out->entropy;
}

void eeasr_exit_measures_int8(const int8_t *logits, size_t t_valid, size_t vocab, float scale, int32_t zero_point,
                              int32_t blank, float *scratch, eeasr_exit_measures *out) {
    entropy_sums sums = {0.0f, 0.0f, 0};
    for (size_t t = 0; t < t_valid; t++) {
        eeasr_dequantize_int8_array(logits + t * vocab, vocab, scale, zero_point, scratch);
        log_softmax_row(scratch, vocab, scratch);
        add_frame(scratch, vocab, blank, &sums);
    }
    finish(&sums, t_valid, vocab, out);
}

void eeasr_exit_measures_logp(const float *logp, size_t t_valid, size_t vocab, int32_t blank,
                              eeasr_exit_measures *out) {
    entropy_sums sums = {0.0f, 0.0f, 0};
    for (size_t t = 0; t < t_valid; t++) add_frame(logp + t * vocab, vocab, blank, &sums);
    finish(&sums, t_valid, vocab, out);
}

/* Appends label to tokens unless it repeats the previous frame's label or is the blank. */
static size_t collapse(int32_t label, int32_t *prev, int32_t blank, int32_t *tokens, size_t n) {
    if (label != *prev && label != blank) tokens[n++] = label;
    *prev = label;
    return n;
}

size_t eeasr_greedy_ctc_int8(const int8_t *logits, size_t t_valid, size_t vocab, int32_t blank, int32_t *tokens) {
    size_t n = 0;
    int32_t prev = -1;
    for (size_t t = 0; t < t_valid; t++) {
        const int8_t *row = logits + t * vocab;
        size_t best = 0;
        for (size_t y = 1; y < vocab; y++)
            if (row[y] > row[best]) best = y;
        n = collapse((int32_t)best, &prev, blank, tokens, n);
    }
    return n;
}

size_t eeasr_greedy_ctc_logp(const float *logp, size_t t_valid, size_t vocab, int32_t blank, int32_t *tokens) {
    size_t n = 0;
    int32_t prev = -1;
    for (size_t t = 0; t < t_valid; t++) {
        const float *row = logp + t * vocab;
        size_t best = 0;
        for (size_t y = 1; y < vocab; y++)
            if (row[y] > row[best]) best = y;
        n = collapse((int32_t)best, &prev, blank, tokens, n);
    }
    return n;
}
