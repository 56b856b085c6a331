/* 512-point real FFT in float32 for the log-mel front end (radix-2, no external library). */
#ifndef EEASR_CORE_FFT_H
#define EEASR_CORE_FFT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EEASR_FFT_N 512
#define EEASR_FFT_HALF (EEASR_FFT_N / 2)

/* Twiddles e^{-2 pi i k / 512} = cos - i sin for k < 256 (computed in double, stored as float32) and the
   8-bit bit-reversal permutation of the 256-point complex FFT the real transform is built on. */
typedef struct {
    float cos_k[EEASR_FFT_HALF];
    float sin_k[EEASR_FFT_HALF];
    uint8_t bitrev[EEASR_FFT_HALF];
} eeasr_rfft512_tables;

void eeasr_rfft512_init(eeasr_rfft512_tables *t);

/* In place: buf[512] real samples -> packed spectrum X[k] = sum_n x[n] e^{-2 pi i k n / 512} (no scaling):
   buf[0] = X[0], buf[1] = X[256] (both real), buf[2k] + i buf[2k + 1] = X[k] for 1 <= k <= 255. */
void eeasr_rfft512(const eeasr_rfft512_tables *t, float buf[EEASR_FFT_N]);

/* In place: packed spectrum -> power |X[k]|^2 in buf[k] for k = 0..256 (buf[257..511] are left undefined). */
void eeasr_power_spectrum512(float buf[EEASR_FFT_N]);

#ifdef __cplusplus
}
#endif

#endif
