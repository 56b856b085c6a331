/* Unit tests of the portable C core with known answers (built with ASan and UBSan by firmware/native). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "eeasr_core/exits.h"
#include "eeasr_core/features.h"
#include "eeasr_core/fft.h"
#include "eeasr_core/gates.h"
#include "eeasr_core/quant.h"
#include "check.h"

/* -Wdouble-promotion guards the core's float32 path; tests compare with double references on purpose. */
#pragma GCC diagnostic ignored "-Wdouble-promotion"

static const double kPi = 3.14159265358979323846;

static float uniform(void) { return (float)(next_u32() >> 8) / 16777216.0f * 2.0f - 1.0f; }

static eeasr_logmel_tables g_tables; /* static: ~6 KB, initialised once */

/* X[k] of the packed spectrum as (re, im). */
static void bin(const float *buf, int k, double *re, double *im) {
    if (k == 0 || k == EEASR_FFT_HALF) {
        *re = buf[k == 0 ? 0 : 1];
        *im = 0.0;
    } else {
        *re = buf[2 * k];
        *im = buf[2 * k + 1];
    }
}

static void test_fft_impulse_dc_and_cosine(void) {
    float buf[EEASR_FFT_N];
    double re, im;
    memset(buf, 0, sizeof buf);
    buf[0] = 1.0f; /* impulse: flat spectrum */
    eeasr_rfft512(&g_tables.fft, buf);
    for (int k = 0; k <= EEASR_FFT_HALF; k++) {
        bin(buf, k, &re, &im);
        CHECK(fabs(re - 1.0) < 1e-6 && fabs(im) < 1e-6, "impulse X[%d] = %g%+gi", k, re, im);
    }
    for (int n = 0; n < EEASR_FFT_N; n++) buf[n] = 1.0f; /* DC: all energy in bin 0 */
    eeasr_rfft512(&g_tables.fft, buf);
    for (int k = 0; k <= EEASR_FFT_HALF; k++) {
        bin(buf, k, &re, &im);
        double want = k == 0 ? 512.0 : 0.0;
        CHECK(fabs(re - want) < 1e-4 && fabs(im) < 1e-4, "DC X[%d] = %g%+gi", k, re, im);
    }
    for (int n = 0; n < EEASR_FFT_N; n++) buf[n] = (float)cos(2.0 * kPi * 5.0 * n / 512.0); /* bin 5: N/2 */
    eeasr_rfft512(&g_tables.fft, buf);
    for (int k = 0; k <= EEASR_FFT_HALF; k++) {
        bin(buf, k, &re, &im);
        double want = k == 5 ? 256.0 : 0.0;
        CHECK(fabs(re - want) < 1e-4 && fabs(im) < 1e-4, "cosine X[%d] = %g%+gi", k, re, im);
    }
    for (int n = 0; n < EEASR_FFT_N; n++) buf[n] = (float)sin(2.0 * kPi * 37.0 * n / 512.0); /* bin 37: -N/2 i */
    eeasr_rfft512(&g_tables.fft, buf);
    bin(buf, 37, &re, &im);
    CHECK(fabs(re) < 1e-4 && fabs(im + 256.0) < 1e-4, "sine X[37] = %g%+gi", re, im);
}

static void test_fft_matches_direct_dft(void) {
    float x[EEASR_FFT_N], buf[EEASR_FFT_N];
    for (int n = 0; n < EEASR_FFT_N; n++) x[n] = uniform();
    memcpy(buf, x, sizeof x);
    eeasr_rfft512(&g_tables.fft, buf);
    double worst = 0.0;
    for (int k = 0; k <= EEASR_FFT_HALF; k++) {
        double want_re = 0.0, want_im = 0.0, re, im;
        for (int n = 0; n < EEASR_FFT_N; n++) {
            double a = -2.0 * kPi * (double)((k * n) % EEASR_FFT_N) / 512.0;
            want_re += (double)x[n] * cos(a);
            want_im += (double)x[n] * sin(a);
        }
        bin(buf, k, &re, &im);
        double err = hypot(re - want_re, im - want_im);
        if (err > worst) worst = err;
    }
    /* Random input of unit amplitude: |X| ~ sqrt(512 / 3); float32 FFT error ~ log2(N) eps |x|_2. */
    CHECK(worst < 2e-5, "max |X - DFT| = %g", worst);

    float power[EEASR_FFT_N];
    memcpy(power, buf, sizeof buf);
    eeasr_power_spectrum512(power);
    for (int k = 0; k <= EEASR_FFT_HALF; k++) {
        double re, im;
        bin(buf, k, &re, &im);
        float want = (float)re * (float)re + (float)im * (float)im;
        CHECK(power[k] == want, "P[%d] = %g, want %g", k, (double)power[k], (double)want);
    }
}

static void test_window_is_periodic_hann(void) {
    const float *w = g_tables.window;
    CHECK(w[0] == 0.0f && w[200] == 1.0f && w[100] == 0.5f && w[300] == 0.5f, "w[0,100,200,300] = %g %g %g %g",
          (double)w[0], (double)w[100], (double)w[200], (double)w[300]);
    for (int n = 1; n < EEASR_WIN_LENGTH; n++) CHECK(w[n] == w[EEASR_WIN_LENGTH - n], "w[%d] != w[400 - %d]", n, n);
}

static void test_mel_filterbank_matches_docs(void) {
    static float window[EEASR_WIN_LENGTH], fbank[EEASR_N_FREQS * EEASR_N_MELS];
    eeasr_logmel_tables_export(&g_tables, window, fbank);
    int nonzero = 0;
    for (int i = 0; i < EEASR_N_FREQS * EEASR_N_MELS; i++) nonzero += fbank[i] != 0.0f;
    CHECK(nonzero == 477 && g_tables.n_weights == 477, "%d nonzero weights (%u in the table), docs say 477",
          nonzero, (unsigned)g_tables.n_weights);
    CHECK(g_tables.filter_first[0] == 1 && g_tables.filter_len[0] == 2, "filter 0 covers bins %u+%u, want 1-2",
          (unsigned)g_tables.filter_first[0], (unsigned)g_tables.filter_len[0]);
    CHECK(g_tables.filter_first[79] == 228 && g_tables.filter_len[79] == 16, "filter 79 covers bins %u+%u",
          (unsigned)g_tables.filter_first[79], (unsigned)g_tables.filter_len[79]);
    for (int m = 0; m < EEASR_N_MELS; m++) CHECK(g_tables.filter_len[m] >= 1, "filter %d is empty", m);
    /* Edges F_0..F_2 = 20, 42.06, 64.80 Hz (docs/features.md): filter 0 rises over bin 1 (31.25 Hz) and
       falls over bin 2 (62.5 Hz). */
    double w1 = (31.25 - 20.0) / (42.06 - 20.0), w2 = (64.80 - 62.5) / (64.80 - 42.06);
    CHECK(fabs(fbank[1 * EEASR_N_MELS + 0] - w1) < 1e-3, "W[1, 0] = %g, want ~%g", (double)fbank[EEASR_N_MELS], w1);
    CHECK(fabs(fbank[2 * EEASR_N_MELS + 0] - w2) < 2e-3, "W[2, 0] = %g, want ~%g",
          (double)fbank[2 * EEASR_N_MELS], w2);
    for (int k = 0; k < EEASR_N_FREQS; k++)
        for (int m = 0; m < EEASR_N_MELS; m++)
            CHECK(fbank[k * EEASR_N_MELS + m] >= 0.0f && fbank[k * EEASR_N_MELS + m] <= 1.0f, "W[%d, %d]", k, m);
}

static void test_frame_counts(void) {
    const size_t n[] = {0, 399, 400, 559, 560, 16000}, want[] = {0, 0, 1, 1, 2, 98};
    for (int i = 0; i < 6; i++)
        CHECK(eeasr_num_frames(n[i]) == want[i], "num_frames(%zu) = %zu", n[i], eeasr_num_frames(n[i]));
}

static void test_digital_zeros_sit_on_the_log_floor(void) {
    static int16_t zeros[EEASR_WIN_LENGTH];
    float work[EEASR_N_FFT], out[EEASR_N_MELS];
    eeasr_logmel_frame(&g_tables, zeros, work, out);
    for (int m = 0; m < EEASR_N_MELS; m++)
        CHECK(out[m] == -23.02585093f, "L[%d] = %.9g, want ln(1e-10)", m, (double)out[m]);
}

static void test_tone_peaks_in_its_filter(void) {
    int16_t pcm[EEASR_WIN_LENGTH];
    float work[EEASR_N_FFT], out[EEASR_N_MELS];
    for (int n = 0; n < EEASR_WIN_LENGTH; n++) pcm[n] = (int16_t)lrint(16000.0 * sin(2.0 * kPi * 1000.0 * n / 16000.0));
    eeasr_logmel_frame(&g_tables, pcm, work, out);
    int best = 0;
    for (int m = 1; m < EEASR_N_MELS; m++)
        if (out[m] > out[best]) best = m;
    /* 1 kHz = bin 32; the filter whose peak is nearest 1 kHz holds the most energy. */
    int covers = g_tables.filter_first[best] <= 32 && 32 < g_tables.filter_first[best] + g_tables.filter_len[best];
    CHECK(covers, "loudest filter %d does not cover 1 kHz", best);
}

static void test_streaming_equals_one_call_for_any_chunking(void) {
    enum { N = 5 * 160 + 437, MAXF = EEASR_LOGMEL_MAX_FRAMES(N) };
    static int16_t pcm[N];
    static float whole[MAXF * EEASR_N_MELS], chunked[MAXF * EEASR_N_MELS];
    static eeasr_logmel_stream s;
    for (int i = 0; i < N; i++) pcm[i] = (int16_t)(uniform() * 20000.0f);
    eeasr_logmel_stream_init(&s, &g_tables);
    size_t consumed = 0, frames = eeasr_logmel_push(&s, pcm, N, whole, MAXF, &consumed);
    CHECK(frames == eeasr_num_frames(N) && consumed == N, "%zu frames, %zu consumed", frames, consumed);

    const size_t sizes[] = {1, 7, 159, 160, 161, 399, 400, 401};
    for (int c = 0; c < 8; c++) {
        eeasr_logmel_stream_reset(&s);
        size_t got = 0;
        for (size_t at = 0; at < N;) {
            size_t take = sizes[c] < N - at ? sizes[c] : N - at;
            got += eeasr_logmel_push(&s, pcm + at, take, chunked + got * EEASR_N_MELS, MAXF - got, &consumed);
            CHECK(consumed == take, "chunk %zu: consumed %zu of %zu", sizes[c], consumed, take);
            at += take;
        }
        CHECK(got == frames && memcmp(whole, chunked, frames * EEASR_N_MELS * sizeof(float)) == 0,
              "chunks of %zu: %zu frames, not the same bits as one call", sizes[c], got);
    }

    /* Room for one frame at a time: push stops after it, the caller pushes the rest. */
    eeasr_logmel_stream_reset(&s);
    size_t got = 0, at = 0;
    while (at < N) {
        size_t n = eeasr_logmel_push(&s, pcm + at, N - at, chunked + got * EEASR_N_MELS, 1, &consumed);
        CHECK(n <= 1 && (n == 1 || consumed == N - at), "push with room for one frame gave %zu", n);
        got += n;
        at += consumed;
    }
    CHECK(got == frames && memcmp(whole, chunked, frames * EEASR_N_MELS * sizeof(float)) == 0,
          "one frame per push differs");
}

static void test_quantize_ties_round_half_away_from_zero(void) {
    const float x[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 0.49999997f, -0.49999997f};
    const int want[] = {1, 2, 3, -1, -2, -3, 0, 0};
    for (int i = 0; i < 8; i++)
        CHECK(eeasr_quantize_int8(x[i], 1.0f, 0) == want[i], "q(%.9g) = %d, want %d", (double)x[i],
              eeasr_quantize_int8(x[i], 1.0f, 0), want[i]);
    /* The zero point is added after rounding: 2.5 -> 3, then -3. */
    CHECK(eeasr_quantize_int8(2.5f, 1.0f, -3) == 0, "zero point before rounding");
    /* docs/features.md: exactly 1.5 in float32 (-> 2), 1.49999994 in double (-> 1). */
    CHECK(eeasr_quantize_int8(0.10098982602357864f, 0.06732655316591263f, 0) == 2, "division not in float32");
}

static void test_quantize_saturates(void) {
    const float big[] = {1e30f, INFINITY, 200.0f, 127.6f};
    for (int i = 0; i < 4; i++) {
        CHECK(eeasr_quantize_int8(big[i], 1.0f, 0) == 127, "q(%g)", (double)big[i]);
        CHECK(eeasr_quantize_int8(-big[i], 1.0f, 0) == -128, "q(%g)", (double)-big[i]);
    }
    CHECK(eeasr_quantize_int8(120.0f, 1.0f, 10) == 127 && eeasr_quantize_int8(-120.0f, 1.0f, -10) == -128,
          "saturation after the zero point");
    CHECK(eeasr_quantize_int8(NAN, 0.1f, 5) == 5, "NaN goes to the zero point");
}

static void test_requantize(void) {
    int8_t table[256];
    eeasr_requantize_table(0.05f, -7, 0.05f, -7, table);
    for (int v = -128; v < 128; v++) CHECK(table[(uint8_t)v] == v, "equal parameters changed %d", v);
    /* scale 1 -> 2: odd values land on ties and go away from zero. */
    CHECK(eeasr_requantize_int8(1, 1.0f, 0, 2.0f, 0) == 1 && eeasr_requantize_int8(-1, 1.0f, 0, 2.0f, 0) == -1 &&
              eeasr_requantize_int8(3, 1.0f, 0, 2.0f, 0) == 2 && eeasr_requantize_int8(-3, 1.0f, 0, 2.0f, 0) == -2,
          "ties of 1 -> 2");
    /* scale 1 -> 0.5 doubles and saturates. */
    CHECK(eeasr_requantize_int8(100, 1.0f, 0, 0.5f, 0) == 127 && eeasr_requantize_int8(-100, 1.0f, 0, 0.5f, 0) == -128,
          "saturation");
    CHECK(eeasr_requantize_int8(-128, 0.1f, -128, 0.1f, 5) == 5, "zero maps to the new zero point");
    int8_t in[256], out[256];
    eeasr_requantize_table(0.0713f, 3, 0.0391f, -20, table);
    for (int v = -128; v < 128; v++) in[v + 128] = (int8_t)v;
    eeasr_requantize_apply(table, in, 256, out);
    for (int v = -128; v < 128; v++)
        CHECK(out[v + 128] == eeasr_requantize_int8((int8_t)v, 0.0713f, 3, 0.0391f, -20), "table at %d", v);
}

static void test_normalize_and_int8_features(void) {
    float logmel[2 * EEASR_N_MELS], mean[EEASR_N_MELS], std[EEASR_N_MELS], z[2 * EEASR_N_MELS];
    int8_t q[2 * EEASR_N_MELS];
    for (int i = 0; i < 2 * EEASR_N_MELS; i++) logmel[i] = uniform() * 20.0f;
    for (int m = 0; m < EEASR_N_MELS; m++) {
        mean[m] = uniform() * 5.0f;
        std[m] = 1.0f + uniform() * 0.9f;
    }
    eeasr_normalize(logmel, 2, mean, std, z);
    eeasr_features_int8(logmel, 2, mean, std, 0.0333f, -8, q);
    for (int i = 0; i < 2 * EEASR_N_MELS; i++) {
        int m = i % EEASR_N_MELS;
        CHECK(z[i] == (logmel[i] - mean[m]) / std[m], "z[%d]", i);
        CHECK(q[i] == eeasr_quantize_int8(z[i], 0.0333f, -8), "q[%d]", i);
    }
}

static void test_log_softmax_and_entropy(void) {
    enum { V = 6 };
    float x[V] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, lp[V];
    eeasr_log_softmax(x, 1, V, lp);
    for (int y = 0; y < V; y++)
        CHECK(fabsf(lp[y] + logf((float)V)) < 1e-6f, "uniform log p[%d] = %g", y, (double)lp[y]);
    eeasr_exit_measures m;
    eeasr_exit_measures_logp(lp, 1, V, 0, &m); /* uniform: entropy ln V, divided by V */
    CHECK(fabs(m.entropy - log(6.0) / 6.0) < 1e-6, "uniform entropy %g", (double)m.entropy);

    /* Two frames by hand (tests/test_exits.py): p = (0.5, 0.5, ~0) and (~1, ~0, ~0). */
    float two[2 * 3] = {logf(0.5f), logf(0.5f), -700.0f, 0.0f, -30.0f, -30.0f};
    eeasr_exit_measures_logp(two, 2, 3, 0, &m);
    CHECK(fabs(m.entropy - log(2.0) / 6.0) < 1e-6, "hand entropy %g", (double)m.entropy);
    /* Both frames' best label is the blank (frame 0 ties 0 and 1; the lowest wins): fall back to all frames. */
    CHECK(fabs(m.nonblank_entropy - m.entropy) < 1e-9, "fallback to all frames %g", (double)m.nonblank_entropy);

    float mixed[3 * 3] = {logf(0.98f), logf(0.01f), logf(0.01f), logf(0.2f), logf(0.4f), logf(0.4f),
                          logf(0.2f),  logf(0.5f),  logf(0.3f)};
    eeasr_exit_measures_logp(mixed, 3, 3, 0, &m);
    double h1 = -(0.2 * log(0.2) + 0.8 * log(0.4)), h2 = -(0.2 * log(0.2) + 0.5 * log(0.5) + 0.3 * log(0.3));
    CHECK(fabs(m.nonblank_entropy - (h1 + h2) / 6.0) < 1e-6, "non-blank entropy %g", (double)m.nonblank_entropy);
    eeasr_exit_measures_logp(mixed, 0, 3, 0, &m);
    CHECK(m.entropy == 0.0f && m.nonblank_entropy == 0.0f, "no valid frames");
}

static void test_int8_measures_match_the_float_path(void) {
    enum { T = 9, V = 11 };
    int8_t logits[T * V];
    float logp[T * V], scratch[V];
    for (int i = 0; i < T * V; i++) logits[i] = (int8_t)(next_u32() >> 24);
    eeasr_dequantize_int8_array(logits, T * V, 0.07f, 4, logp);
    eeasr_log_softmax(logp, T, V, logp);
    eeasr_exit_measures a, b;
    eeasr_exit_measures_int8(logits, T, V, 0.07f, 4, 0, scratch, &a);
    eeasr_exit_measures_logp(logp, T, V, 0, &b);
    CHECK(a.entropy == b.entropy && a.nonblank_entropy == b.nonblank_entropy, "int8 and float paths differ");
    int32_t ta[T], tb[T];
    size_t na = eeasr_greedy_ctc_int8(logits, T, V, 0, ta), nb = eeasr_greedy_ctc_logp(logp, T, V, 0, tb);
    CHECK(na == nb && memcmp(ta, tb, na * sizeof *ta) == 0, "greedy paths differ");
}

static void test_greedy_ctc_collapses(void) {
    /* Frame argmaxes 1 1 0 1 2 2 -> 1 1 2; ties go to the lowest label (frame 5: 2 and 3 tie). */
    const int8_t logits[6 * 4] = {0, 9, 1, 1, 0, 9, 1, 1, 9, 0, 1, 1, 0, 9, 1, 1, 0, 1, 9, 1, 0, 1, 9, 9};
    int32_t tokens[6];
    size_t n = eeasr_greedy_ctc_int8(logits, 6, 4, 0, tokens);
    CHECK(n == 3 && tokens[0] == 1 && tokens[1] == 1 && tokens[2] == 2, "got %zu tokens", n);
    n = eeasr_greedy_ctc_int8(logits, 2, 4, 0, tokens); /* valid frames only */
    CHECK(n == 1 && tokens[0] == 1, "t_valid = 2 gave %zu tokens", n);
    n = eeasr_greedy_ctc_int8(logits, 6, 4, 1, tokens); /* another blank: 1 is dropped, 0 kept */
    CHECK(n == 2 && tokens[0] == 0 && tokens[1] == 2, "blank = 1 gave %zu tokens", n);
}

static void test_pool_valid_sums_valid_frames_exactly(void) {
    /* [3 x 2], t_valid 2: column sums 4 and 1 (row 3 is padding, never read); (s / 2 - (-2)) * 0.5. */
    const int8_t stream[3 * 2] = {1, -4, 3, 5, 100, 7};
    float mean[4];
    int8_t q[4];
    eeasr_pool_valid(stream, 2, 2, 0.5f, -2, mean);
    CHECK(mean[0] == 2.0f && mean[1] == 1.25f, "mean %g %g", mean[0], mean[1]);
    eeasr_pool_valid_int8(stream, 2, 2, 0.5f, -2, 0.25f, 1, q); /* 2 / 0.25 + 1, 1.25 / 0.25 + 1 */
    CHECK(q[0] == 9 && q[1] == 6, "pooled int8 %d %d", q[0], q[1]);
    /* one float32 division by the count, not a multiplication by 1 / t: 1 / 3 as float32 */
    const int8_t third[3] = {1, 0, 0};
    eeasr_pool_valid(third, 3, 1, 1.0f, 0, mean);
    CHECK(mean[0] == 1.0f / 3.0f, "1 / 3 = %.9g", mean[0]);
    /* 150 frames at +127: the int32 sum, not an int8 or int16 accumulator; saturating at the predictor */
    int8_t loud[150 * 4];
    memset(loud, 127, sizeof loud);
    eeasr_pool_valid(loud, 150, 4, 0.1f, -1, mean);
    CHECK(mean[3] == (127.0f + 1.0f) * 0.1f, "mean of 127s %.9g", mean[3]);
    eeasr_pool_valid_int8(loud, 150, 4, 0.1f, -1, 0.01f, 0, q);
    CHECK(q[0] == 127 && q[1] == 127, "saturated %d", q[0]);
}

static void test_gate_threshold_and_decide(void) {
    CHECK(isinf(eeasr_gate_threshold(0.0)) && eeasr_gate_threshold(0.0) < 0, "beta 0");
    CHECK(isinf(eeasr_gate_threshold(1.0)) && eeasr_gate_threshold(1.0) > 0, "beta 1");
    CHECK(eeasr_gate_threshold(0.5) == 0.0, "beta 0.5: %g", eeasr_gate_threshold(0.5));
    CHECK(isnan(eeasr_gate_threshold(-0.1)) && isnan(eeasr_gate_threshold(1.5)), "beta outside [0, 1]");
    CHECK(fabs(eeasr_gate_threshold(0.25) - log(1.0 / 3.0)) < 1e-15, "beta 0.25");
    const int8_t margins[5] = {-128, -3, -2, 0, 127};
    uint8_t open[5];
    CHECK(eeasr_gate_decide(margins, 5, 0.5f, 0, eeasr_gate_threshold(0.0), open) == 5, "beta 0 runs all");
    CHECK(eeasr_gate_decide(margins, 5, 0.5f, 0, eeasr_gate_threshold(1.0), open) == 0, "beta 1 runs none");
    CHECK(eeasr_gate_decide(margins, 5, 0.5f, 0, NAN, open) == 0, "a NaN threshold opens nothing");
    /* beta 0.25: z > log(1/3) = -1.0986; -1.5 stays closed, -1.0 opens */
    size_t n = eeasr_gate_decide(margins, 5, 0.5f, 0, eeasr_gate_threshold(0.25), open);
    CHECK(n == 3 && !open[0] && !open[1] && open[2] && open[3] && open[4], "beta 0.25 opened %zu", n);
    /* exactly at the threshold: a margin at the zero point is 0, not > 0 (p = beta does not run) */
    n = eeasr_gate_decide(margins, 5, 0.5f, 0, eeasr_gate_threshold(0.5), open);
    CHECK(n == 1 && open[4] && !open[3], "beta 0.5 opened %zu", n);
    n = eeasr_gate_decide(margins, 5, 0.5f, -2, 0.0, open); /* zero point -2: q = -2 is the margin 0 */
    CHECK(n == 2 && !open[2] && open[3] && open[4], "zero point -2 opened %zu", n);
}

int main(void) {
    eeasr_logmel_tables_init(&g_tables);
    test_fft_impulse_dc_and_cosine();
    test_fft_matches_direct_dft();
    test_window_is_periodic_hann();
    test_mel_filterbank_matches_docs();
    test_frame_counts();
    test_digital_zeros_sit_on_the_log_floor();
    test_tone_peaks_in_its_filter();
    test_streaming_equals_one_call_for_any_chunking();
    test_quantize_ties_round_half_away_from_zero();
    test_quantize_saturates();
    test_requantize();
    test_normalize_and_int8_features();
    test_log_softmax_and_entropy();
    test_int8_measures_match_the_float_path();
    test_greedy_ctc_collapses();
    test_pool_valid_sums_valid_frames_exactly();
    test_gate_threshold_and_decide();
    printf("unit tests: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
