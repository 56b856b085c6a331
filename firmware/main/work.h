/* Buffers the pipeline owns and lends to the self-test (both run in the pipeline task), and the counters
   PROFILE reports. */
#ifndef EEASR_MAIN_WORK_H
#define EEASR_MAIN_WORK_H

#include <stddef.h>
#include <stdint.h>

#include "eeasr_core/features.h"
#include "eeasr_core/protocol.h"

#define EEASR_PUSH_FRAMES 8 /* log-mel frames computed per push */

typedef struct {
    int8_t *input;              /* [W x n_mels]: segment 1's input window */
    int8_t *logits;             /* [W/4 x vocab] */
    int8_t *hidden;             /* [W/4 x d]: the hidden state (a gated program's residual stream) */
    int8_t *pooled;             /* [d]: a gate predictor's input */
    int8_t gate[EEASR_MAX_MODULES]; /* a gate predictor's margins */
    float *scratch;             /* [vocab]: log-softmax row */
    int32_t *tokens;            /* [W/4] */
    float logmel[EEASR_PUSH_FRAMES * EEASR_N_MELS];
    float z[EEASR_N_MELS];
    eeasr_logmel_stream stream; /* restarted per utterance */
} eeasr_work;

typedef struct {
    uint32_t audio_frames, utterances, windows, device_results, handoffs, overflows;
} eeasr_counters;

#endif
