/* The gated (I3D) device program on one window, step for step as eeasr/gated_program.py (GatedProgram.run):
   the front segment writes the int8 residual stream; the gate predictor (global: once, on the front's output;
   local: per layer, on that layer's input) takes the stream pooled over its valid encoder frames and emits
   int8 margins, a module runs iff its margin exceeds the threshold of beta (eeasr_core/gates.h); per device
   layer the attention, then the feed-forward segment, each only when open, on the stream requantized from
   the quantization of whichever segment wrote it last (eeasr_core/quant.h) — a closed module costs nothing and
   leaves the stream as it is; then the head on the stream requantized to its input, which is the handoff.
   Portable C: the segments run through a callback (the firmware's runs them on TFLM, segment_runner.h; the
   native tests' on the tflite-micro wheel), so the tests hold it against the Python reference. */
#ifndef EEASR_MAIN_GATED_PROGRAM_H
#define EEASR_MAIN_GATED_PROGRAM_H

#include <stddef.h>
#include <stdint.h>

#include "eeasr_core/protocol.h"
#include "model_image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Runs table segment i on its int8 input (already in its input quantization) with n_frames valid feature
   frames; writes its logits (an exit head's) and its output (hidden, or a predictor's gate margins), each
   NULL when the segment has none. 0, or nonzero: eeasr_gated_run stops and returns it. */
typedef int (*eeasr_segment_fn)(void *ctx, unsigned i, const int8_t *input, int32_t n_frames, int8_t *logits,
                                int8_t *out);

typedef struct {
    int8_t *stream; /* [W/4 x d]: the residual stream; after a run, the handoff (the head's input) */
    int8_t *pooled; /* [d]: a predictor's input */
    int8_t *gate;   /* [EEASR_MAX_MODULES]: a predictor's margins */
    int8_t *logits; /* [W/4 x vocab]: the head's */
} eeasr_gated_buffers;

typedef struct {
    uint32_t t_valid;  /* valid encoder frames */
    uint8_t n_modules; /* the HANDOFF's module mask (eeasr_handoff n_modules, modules): for the device's layers */
    uint8_t modules[(EEASR_MAX_MODULES + 7) / 8]; /* whether each ran; a global predictor's for the server's too */
    uint8_t modules_run;                          /* attention and feed-forward segments run */
    uint8_t n_invoked;                            /* the segments run (table indices), in order */
    uint8_t invoked[EEASR_IMG_MAX_SEGMENTS];
} eeasr_gated_out;

/* One window: feats, the int8 features [W x n_mels] (padded rows at the feature zero point), n_frames >= 4
   of them valid (at least one encoder frame); threshold, eeasr_gate_threshold of the image's beta (or another
   beta's). 0, or the callback's nonzero value. */
int eeasr_gated_run(const eeasr_model_image *m, double threshold, const int8_t *feats, int32_t n_frames,
                    eeasr_segment_fn run, void *ctx, const eeasr_gated_buffers *b, eeasr_gated_out *out);

#ifdef __cplusplus
}
#endif

#endif
