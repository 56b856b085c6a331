/* The portable steps of a gated (I3D) device program, as eeasr/gated_program.py defines them (the Python
   reference; the segments themselves run on TFLM):
   - pooling: the gate predictor's input is the int8 residual stream's mean over its valid encoder frames,
     taken on the CPU because int8 TFLM cannot divide by the data-dependent count with useful precision: an
     exact int32 sum per column, then (sum / t - zero_point) * scale in float32 (one division), quantized to
     the predictor segment's input;
   - the decision: a module runs iff its dequantized int8 margin z = logit(execute) - logit(skip) exceeds
     log(beta / (1 - beta)) (p(execute) > beta), compared in double as Python does: beta 0 runs every
     module, beta 1 none.
   Moving the stream between two segments' quantizations is eeasr_core/quant.h's requantize (one function).
   Needs IEEE float32 division: never compile with -ffast-math. */
#ifndef EEASR_CORE_GATES_H
#define EEASR_CORE_GATES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* mean[j] = (float32(sum over rows t < t_valid of stream[t * d + j]) / t_valid - zero_point) * scale, for the
   int8 stream [rows x d] (row-major) quantized with (scale, zero_point). t_valid >= 1 (a window with no
   encoder frame never runs its segments); rows past t_valid are padding and never read. */
void eeasr_pool_valid(const int8_t *stream, size_t t_valid, size_t d, float scale, int32_t zero_point, float *mean);

/* eeasr_pool_valid quantized with the predictor's input parameters: its int8 input [d]. */
void eeasr_pool_valid_int8(const int8_t *stream, size_t t_valid, size_t d, float scale, int32_t zero_point,
                           float out_scale, int32_t out_zero_point, int8_t *out);

/* log(beta) - log1p(-beta) (eeasr.gated_program.gate_threshold): -INFINITY at beta 0, INFINITY at 1, NaN
   outside [0, 1] (a NaN threshold opens no gate). */
double eeasr_gate_threshold(double beta);

/* open[g] = 1 iff (double)((margins[g] - zero_point) * scale) > threshold (the float32 dequantized margin, as
   eeasr.gated_program.decide compares it), else 0, for g < n. Returns how many are open. */
size_t eeasr_gate_decide(const int8_t *margins, size_t n, float scale, int32_t zero_point, double threshold,
                         uint8_t *open);

#ifdef __cplusplus
}
#endif

#endif
