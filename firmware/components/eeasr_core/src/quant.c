#include "eeasr_core/quant.h"

void eeasr_quantize_int8_array(const float *x, size_t n, float scale, int32_t zero_point, int8_t *out) {
    for (size_t i = 0; i < n; i++) out[i] = eeasr_quantize_int8(x[i], scale, zero_point);
}

void eeasr_dequantize_int8_array(const int8_t *q, size_t n, float scale, int32_t zero_point, float *out) {
    for (size_t i = 0; i < n; i++) out[i] = eeasr_dequantize_int8(q[i], scale, zero_point);
}

void eeasr_requantize_table(float in_scale, int32_t in_zp, float out_scale, int32_t out_zp, int8_t table[256]) {
    for (int v = -128; v < 128; v++)
        table[(uint8_t)v] = eeasr_requantize_int8((int8_t)v, in_scale, in_zp, out_scale, out_zp);
}

void eeasr_requantize_apply(const int8_t table[256], const int8_t *in, size_t n, int8_t *out) {
    for (size_t i = 0; i < n; i++) out[i] = table[(uint8_t)in[i]];
}
