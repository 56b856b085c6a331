#include "eeasr_core/gates.h"

#include <math.h>

#include "eeasr_core/quant.h"

/* Column j's mean: the int32 sum is exact (|sum| <= 128 t), and exact in float32 while t < 2^17. */
static float column_mean(const int8_t *stream, size_t t_valid, size_t d, size_t j, float scale, int32_t zero_point) {
    int32_t sum = 0;
    for (size_t t = 0; t < t_valid; t++) sum += stream[t * d + j];
    return ((float)sum / (float)t_valid - (float)zero_point) * scale;
}

void eeasr_pool_valid(const int8_t *stream, size_t t_valid, size_t d, float scale, int32_t zero_point, float *mean) {
    for (size_t j = 0; j < d; j++) mean[j] = column_mean(stream, t_valid, d, j, scale, zero_point);
}

void eeasr_pool_valid_int8(const int8_t *stream, size_t t_valid, size_t d, float scale, int32_t zero_point,
                           float out_scale, int32_t out_zero_point, int8_t *out) {
    for (size_t j = 0; j < d; j++)
        out[j] = eeasr_quantize_int8(column_mean(stream, t_valid, d, j, scale, zero_point), out_scale, out_zero_point);
}

double eeasr_gate_threshold(double beta) {
    if (!(beta >= 0.0 && beta <= 1.0)) return NAN;
    if (beta == 0.0) return -INFINITY;
    if (beta == 1.0) return INFINITY;
    return log(beta) - log1p(-beta);
}

size_t eeasr_gate_decide(const int8_t *margins, size_t n, float scale, int32_t zero_point, double threshold,
                         uint8_t *open) {
    size_t n_open = 0;
    for (size_t g = 0; g < n; g++) {
        open[g] = (double)eeasr_dequantize_int8(margins[g], scale, zero_point) > threshold;
        n_open += open[g];
    }
    return n_open;
}
