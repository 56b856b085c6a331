#include "eeasr_core/fft.h"

#include <math.h>

/* The 512 real samples are taken as 256 complex ones z[n] = x[2n] + i x[2n + 1]: one 256-point complex FFT
   and a split step give the real spectrum at half the cost of a 512-point complex FFT. */

static const double kPi = 3.14159265358979323846;

void eeasr_rfft512_init(eeasr_rfft512_tables *t) {
    for (int k = 0; k < EEASR_FFT_HALF; k++) {
        /* Each twiddle straight from double cos/sin: a recurrence would accumulate error along k. */
        double angle = 2.0 * kPi * (double)k / (double)EEASR_FFT_N;
        t->cos_k[k] = (float)cos(angle);
        t->sin_k[k] = (float)sin(angle);
        unsigned r = 0;
        for (int b = 0; b < 8; b++) r |= (unsigned)((k >> b) & 1) << (7 - b);
        t->bitrev[k] = (uint8_t)r;
    }
}

/* Radix-2 decimation in time over z[0..255] stored interleaved (re, im) in buf. */
static void cfft256(const eeasr_rfft512_tables *t, float *buf) {
    for (int i = 0; i < EEASR_FFT_HALF; i++) {
        int j = t->bitrev[i];
        if (j > i) {
            float re = buf[2 * i], im = buf[2 * i + 1];
            buf[2 * i] = buf[2 * j];
            buf[2 * i + 1] = buf[2 * j + 1];
            buf[2 * j] = re;
            buf[2 * j + 1] = im;
        }
    }
    for (int len = 2; len <= EEASR_FFT_HALF; len <<= 1) {
        int half = len / 2, stride = EEASR_FFT_N / len; /* W_len^j = W_512^(j * stride) */
        for (int start = 0; start < EEASR_FFT_HALF; start += len) {
            for (int j = 0; j < half; j++) {
                float wr = t->cos_k[j * stride], wi = -t->sin_k[j * stride];
                float *a = buf + 2 * (start + j), *b = buf + 2 * (start + j + half);
                float tr = b[0] * wr - b[1] * wi, ti = b[0] * wi + b[1] * wr;
                b[0] = a[0] - tr;
                b[1] = a[1] - ti;
                a[0] += tr;
                a[1] += ti;
            }
        }
    }
}

/* X[k] = Fe + W_512^k Fo with Fe = (Z[k] + conj Z[256 - k]) / 2, Fo = (Z[k] - conj Z[256 - k]) / 2i. */
static void split(float ar, float ai, float br, float bi, float c, float s, float *xr, float *xi) {
    float fer = 0.5f * (ar + br), fei = 0.5f * (ai - bi);
    float forr = 0.5f * (ai + bi), foi = 0.5f * (br - ar);
    *xr = fer + c * forr + s * foi;
    *xi = fei + c * foi - s * forr;
}

void eeasr_rfft512(const eeasr_rfft512_tables *t, float buf[EEASR_FFT_N]) {
    cfft256(t, buf);
    float z0r = buf[0], z0i = buf[1];
    buf[0] = z0r + z0i;
    buf[1] = z0r - z0i;
    /* Bins k and 256 - k need the same two inputs: compute both, then overwrite both. */
    for (int k = 1; k <= EEASR_FFT_HALF / 2; k++) {
        int m = EEASR_FFT_HALF - k;
        float ar = buf[2 * k], ai = buf[2 * k + 1], br = buf[2 * m], bi = buf[2 * m + 1];
        float xkr, xki, xmr, xmi;
        split(ar, ai, br, bi, t->cos_k[k], t->sin_k[k], &xkr, &xki);
        split(br, bi, ar, ai, t->cos_k[m], t->sin_k[m], &xmr, &xmi);
        buf[2 * k] = xkr;
        buf[2 * k + 1] = xki;
        buf[2 * m] = xmr;
        buf[2 * m + 1] = xmi;
    }
}

void eeasr_power_spectrum512(float buf[EEASR_FFT_N]) {
    /* Ascending k writes index k after reading 2k and 2k + 1, so nothing unread is overwritten; X[256] sits
       in buf[1] and is saved before P[1] lands there. */
    float x0 = buf[0], x256 = buf[1];
    buf[0] = x0 * x0;
    for (int k = 1; k < EEASR_FFT_HALF; k++) {
        float re = buf[2 * k], im = buf[2 * k + 1];
        buf[k] = re * re + im * im;
    }
    buf[EEASR_FFT_HALF] = x256 * x256;
}
