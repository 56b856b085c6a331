/* int8 affine quantization exactly as TFLite's AffineQuantize, and the one requantize function the device
   uses at segment boundaries (docs/features.md; eeasr.features.quantize_int8 / requantize_int8).
   Needs IEEE float32 division and roundf: never compile with -ffast-math. */
#ifndef EEASR_CORE_QUANT_H
#define EEASR_CORE_QUANT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* clamp(round_half_away_from_zero(x / scale) + zero_point, -128, 127), x / scale one float32 division. */
static inline int8_t eeasr_quantize_int8(float x, float scale, int32_t zero_point) {
    float y = x / scale;
    /* Beyond +-512 every zero point saturates; clamping first keeps infinities out of the conversion.
       NaN (which no caller produces) goes to the zero point rather than to undefined behaviour. */
    if (y > 512.0f) y = 512.0f;
    if (y < -512.0f) y = -512.0f;
    if (y != y) y = 0.0f;
    int32_t q = (int32_t)roundf(y) + zero_point;
    return (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);
}

/* (q - zero_point) * scale in float32; q - zero_point is exact, so this equals TFLite's double product. */
static inline float eeasr_dequantize_int8(int8_t q, float scale, int32_t zero_point) {
    return (float)((int32_t)q - zero_point) * scale;
}

/* quantize(dequantize(q, in), out): float32 throughout, never a fixed-point multiplier. Equal parameters
   give q back (|q - zp| <= 255, so the round trip's error is far below half a step). */
static inline int8_t eeasr_requantize_int8(int8_t q, float in_scale, int32_t in_zp, float out_scale,
                                           int32_t out_zp) {
    return eeasr_quantize_int8(eeasr_dequantize_int8(q, in_scale, in_zp), out_scale, out_zp);
}

void eeasr_quantize_int8_array(const float *x, size_t n, float scale, int32_t zero_point, int8_t *out);
void eeasr_dequantize_int8_array(const int8_t *q, size_t n, float scale, int32_t zero_point, float *out);

/* The 256 results of eeasr_requantize_int8 indexed by (uint8_t)q: one table per boundary, built once. */
void eeasr_requantize_table(float in_scale, int32_t in_zp, float out_scale, int32_t out_zp, int8_t table[256]);

/* out[i] = table[(uint8_t)in[i]]; out may equal in. */
void eeasr_requantize_apply(const int8_t table[256], const int8_t *in, size_t n, int8_t *out);

#ifdef __cplusplus
}
#endif

#endif
