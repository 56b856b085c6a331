/* The device segments on TFLM (esp-tflite-micro with ESP-NN): one tensor arena sized from the model image
   (the manifest's arena, the largest segment's), in internal SRAM when it fits there, else PSRAM; a
   MicroInterpreter built on it for each segment step, tensors found by name (feats / hidden_in / pooled /
   n_frames, hidden / gate / logits, as the segment's role has them), an early-exit boundary's requantization
   of docs/features.md, and cycle counts per segment. */
#ifndef EEASR_MAIN_SEGMENT_RUNNER_H
#define EEASR_MAIN_SEGMENT_RUNNER_H

#include <stddef.h>
#include <stdint.h>

#include "model_image.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint32_t runs;
    uint32_t last_cycles, max_cycles; /* esp_cpu_get_cycle_count() around Invoke (32-bit: < 17 s at 240 MHz) */
    int64_t last_us, max_us, total_us;
    uint32_t alloc_us;                /* building the interpreter and AllocateTensors, last run */
    size_t arena_used;                /* MicroInterpreter::arena_used_bytes() */
} eeasr_segment_profile;

/* Registers the ops, places the arena, copies the segments into PSRAM when configured and possible, and
   checks that every segment allocates on this arena with the expected tensors. 0, or -1 with err. */
int eeasr_runner_init(const eeasr_model_image *m, char *err, size_t err_len);

/* Run table segment i (0-based) on a window with n_frames valid feature frames (given to the segments that
   take them). input: the int8 features [W x n_mels] (padded rows at the feature zero point) for a front
   segment; an early-exit segment's previous hidden state [W/4 x d] as it came out (requantized here when the
   boundary's ends differ); a gated program's stream [W/4 x d] or pooled vector [d] already in the segment's
   input quantization (gated_program.c requantizes). Writes the raw int8 logits [W/4 x vocab] of an exit head
   and the output: hidden state [W/4 x d], or a predictor's gate margins [n_gates]; a pointer is ignored (may
   be NULL) when the segment lacks that output; out may equal input. 0, or -1 with err. */
int eeasr_runner_run(int i, const int8_t *input, int32_t n_frames, int8_t *logits, int8_t *out, char *err,
                     size_t err_len);

const eeasr_segment_profile *eeasr_runner_profile(int i);
size_t eeasr_runner_arena_bytes(void);
const char *eeasr_runner_arena_where(void);   /* "sram" or "psram" */
const char *eeasr_runner_weights_where(void); /* "psram" (copied) or "flash" (mmapped partition, XIP) */

#ifdef __cplusplus
}
#endif

#endif
