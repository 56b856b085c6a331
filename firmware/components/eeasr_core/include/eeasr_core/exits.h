/* Exit measures and greedy CTC on an exit head's output, as eeasr/exits.py defines them.

   The device path takes the head's int8 logits [rows x vocab] (row-major) and the valid frame count
   t_valid: only rows < t_valid are read (padding never votes). Each row is dequantized, turned into
   log-probabilities by a float32 log-softmax (eeasr.exits.log_softmax, on whose output thresholds are
   calibrated), and measured:
   - entropy: paper 1 Eq. 5, the mean over valid frames of -sum_y p log p, divided by the vocabulary size;
   - nonblank_entropy: the same over frames whose best label is not the blank, or over all frames when every
     frame's best label is the blank; both are 0 when t_valid is 0.
   Argmax ties go to the lowest label, as numpy's argmax. */
#ifndef EEASR_CORE_EXITS_H
#define EEASR_CORE_EXITS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float entropy;
    float nonblank_entropy;
} eeasr_exit_measures;

/* Per row of [rows x vocab]: out[y] = (x[y] - max x) - ln sum_y exp(x[y] - max x); out may equal x. */
void eeasr_log_softmax(const float *x, size_t rows, size_t vocab, float *out);

/* Measures of int8 logits; scratch holds vocab floats. */
void eeasr_exit_measures_int8(const int8_t *logits, size_t t_valid, size_t vocab, float scale, int32_t zero_point,
                              int32_t blank, float *scratch, eeasr_exit_measures *out);

/* Measures of log-probabilities [t_valid x vocab] (e.g. a server exit's output). */
void eeasr_exit_measures_logp(const float *logp, size_t t_valid, size_t vocab, int32_t blank,
                              eeasr_exit_measures *out);

/* Greedy CTC: argmax per valid frame, repeats merged, blanks dropped. tokens needs room for t_valid labels;
   returns how many were written. On int8 logits the argmax is taken on q directly: dequantization with a
   positive scale and the log-softmax are monotonic, so it is the argmax of the log-probabilities. */
size_t eeasr_greedy_ctc_int8(const int8_t *logits, size_t t_valid, size_t vocab, int32_t blank, int32_t *tokens);
size_t eeasr_greedy_ctc_logp(const float *logp, size_t t_valid, size_t vocab, int32_t blank, int32_t *tokens);

#ifdef __cplusplus
}
#endif

#endif
