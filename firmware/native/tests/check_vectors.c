/* The C core against the Python reference's test vectors.

   usage: check_vectors FEATURES.eefv EXITS.eexv PROTOCOL.eepv GATED.eegt
   FEATURES.eefv: `eeasr-data vectors` (format in eeasr/testvectors.py and docs/features.md).
   EXITS.eexv:    firmware/native/exit_vectors.py (format in its docstring).
   PROTOCOL.eepv: firmware/native/protocol_vectors.py (format in its docstring).
   GATED.eegt:    firmware/native/gated_vectors.py (format in its docstring).

   Per feature case: the streamed log-mel (also pushed in odd chunk sizes, which must give the same bits) is
   within the float32 tolerances of docs/features.md; int8 from the stored log-mel equals the stored int8 bit
   for bit; int8 from the C log-mel differs by at most 1, and only where the reference's z / scale lies within
   the log-mel tolerance of a rounding boundary (counted and reported). Per exit case: log-softmax, entropies
   and greedy CTC of the int8 logits equal the reference within float32 tolerance (tokens exactly). Per
   frame: a valid one decodes, and its message packs and encodes back to the reference's bytes; a broken one
   is refused for the expected reason. Per endpoint case: the same events and the same final floor (bits). Per
   gated case (eeasr/gated_program.py): the pooled means bit for bit and their int8 exactly, the gate threshold
   bit for bit and every decision (ties at the threshold included), the requantized stream exactly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eeasr_core/endpoint.h"
#include "eeasr_core/exits.h"
#include "eeasr_core/features.h"
#include "eeasr_core/gates.h"
#include "eeasr_core/protocol.h"
#include "eeasr_core/quant.h"

#pragma GCC diagnostic ignored "-Wdouble-promotion" /* reports and error bounds are in double */

/* docs/features.md, "Precision of the implementations" (the torch float32 test's tolerances). */
#define TOL_LOGMEL 1e-3     /* |dL| for bins within 60 dB of the frame's loudest */
#define TOL_FLOOR 1e-5      /* |dL| where the reference sits on the log floor */
#define TOL_ENERGY 1e-5     /* |dE| / E_max of the frame, everywhere */
#define TOL_ENTROPY_ABS 1e-6
#define TOL_ENTROPY_REL 1e-5
#define TOL_LOGP 1e-5

static int g_failures;

#define FAIL(...)                         \
    do {                                  \
        g_failures++;                     \
        fprintf(stderr, "FAIL: ");        \
        fprintf(stderr, __VA_ARGS__);     \
        fputc('\n', stderr);              \
    } while (0)

/* A whole file in memory, read little-endian field by field. */
typedef struct {
    unsigned char *data;
    size_t size, pos;
    const char *path;
} reader;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static reader open_file(const char *path) {
    reader r = {NULL, 0, 0, path};
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    r.size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    r.data = xmalloc(r.size);
    if (fread(r.data, 1, r.size, f) != r.size) {
        fprintf(stderr, "%s: read error\n", path);
        exit(2);
    }
    fclose(f);
    return r;
}

static const unsigned char *take(reader *r, size_t n) {
    if (r->size - r->pos < n) {
        fprintf(stderr, "%s: truncated at byte %zu\n", r->path, r->pos);
        exit(2);
    }
    const unsigned char *p = r->data + r->pos;
    r->pos += n;
    return p;
}

static uint32_t u32(reader *r) {
    const unsigned char *p = take(r, 4);
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t i32(reader *r) {
    uint32_t u = u32(r);
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

static float f32(reader *r) {
    uint32_t u = u32(r);
    float v;
    memcpy(&v, &u, 4);
    return v;
}

static double f64(reader *r) {
    uint64_t lo = u32(r), hi = u32(r);
    uint64_t u = lo | hi << 32;
    double v;
    memcpy(&v, &u, 8);
    return v;
}

static float *f32_array(reader *r, size_t n) {
    float *out = xmalloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++) out[i] = f32(r);
    return out;
}

/* Pushes pcm in chunks cycling through sizes; returns frames written to out. */
static size_t stream(eeasr_logmel_stream *s, const int16_t *pcm, size_t n, const size_t *sizes, int n_sizes,
                     float *out, size_t max_frames) {
    eeasr_logmel_stream_reset(s);
    size_t frames = 0, at = 0, consumed = 0;
    for (int c = 0; at < n; c = (c + 1) % n_sizes) {
        size_t take_n = sizes[c] < n - at ? sizes[c] : n - at;
        frames += eeasr_logmel_push(s, pcm + at, take_n, out + frames * EEASR_N_MELS, max_frames - frames, &consumed);
        at += consumed;
    }
    return frames;
}

typedef struct {
    double max_err, max_err_loud;
    size_t int8_stored_mismatch, int8_e2e_mismatch;
    double worst_tie_distance; /* among end-to-end mismatches, in quantization steps */
} feature_report;

static void check_feature_case(const eeasr_logmel_tables *tables, eeasr_logmel_stream *s, reader *r,
                               feature_report *total) {
    char name[33] = {0};
    memcpy(name, take(r, 32), 32);
    uint32_t n_samples = u32(r);
    int16_t *pcm = xmalloc(n_samples * sizeof *pcm);
    const unsigned char *bytes = take(r, 2 * (size_t)n_samples);
    for (uint32_t i = 0; i < n_samples; i++) {
        uint16_t u = (uint16_t)(bytes[2 * i] | bytes[2 * i + 1] << 8);
        memcpy(pcm + i, &u, 2);
    }
    uint32_t n_frames = u32(r);
    size_t n = (size_t)n_frames * EEASR_N_MELS;
    float *ref = f32_array(r, n), *mean = f32_array(r, EEASR_N_MELS), *std = f32_array(r, EEASR_N_MELS);
    float scale = f32(r);
    int32_t zero_point = i32(r);
    int8_t *ref_q = xmalloc(n);
    memcpy(ref_q, take(r, n), n);

    size_t cap = EEASR_LOGMEL_MAX_FRAMES(n_samples);
    float *got = xmalloc(cap * EEASR_N_MELS * sizeof *got), *chunked = xmalloc(cap * EEASR_N_MELS * sizeof *got);
    const size_t one_call[] = {n_samples}, odd[] = {1, 7, 159, 161, 399, 401, 1000, 3};
    size_t frames = stream(s, pcm, n_samples, one_call, 1, got, cap);
    size_t frames_chunked = stream(s, pcm, n_samples, odd, 8, chunked, cap);
    if (frames != n_frames || eeasr_num_frames(n_samples) != n_frames)
        FAIL("%s: %zu frames, the reference has %u", name, frames, n_frames);
    if (frames_chunked != frames || memcmp(got, chunked, n * sizeof *got) != 0)
        FAIL("%s: odd chunk sizes give other frames than one push", name);

    feature_report rep = {0, 0, 0, 0, 0};
    for (uint32_t t = 0; t < n_frames; t++) {
        const float *rr = ref + (size_t)t * EEASR_N_MELS, *gg = got + (size_t)t * EEASR_N_MELS;
        double loudest = rr[0];
        for (int m = 1; m < EEASR_N_MELS; m++) loudest = rr[m] > loudest ? rr[m] : loudest;
        for (int m = 0; m < EEASR_N_MELS; m++) {
            double err = fabs((double)gg[m] - rr[m]);
            double energy_err = fabs(exp((double)gg[m]) - exp((double)rr[m])) / exp(loudest);
            rep.max_err = err > rep.max_err ? err : rep.max_err;
            if (rr[m] > loudest - 6.0 * log(10.0)) {
                rep.max_err_loud = err > rep.max_err_loud ? err : rep.max_err_loud;
                if (err >= TOL_LOGMEL) FAIL("%s: frame %u bin %d: |dL| = %.3g within 60 dB", name, t, m, err);
            }
            if (rr[m] == tables->log_floor && err >= TOL_FLOOR)
                FAIL("%s: frame %u bin %d: |dL| = %.3g on the floor", name, t, m, err);
            if (energy_err >= TOL_ENERGY) FAIL("%s: frame %u bin %d: |dE| / E_max = %.3g", name, t, m, energy_err);
        }
    }

    int8_t *q_stored = xmalloc(n), *q_e2e = xmalloc(n);
    eeasr_features_int8(ref, n_frames, mean, std, scale, zero_point, q_stored);
    eeasr_features_int8(got, n_frames, mean, std, scale, zero_point, q_e2e);
    for (size_t i = 0; i < n; i++) {
        int m = (int)(i % EEASR_N_MELS);
        if (q_stored[i] != ref_q[i]) rep.int8_stored_mismatch++;
        if (q_e2e[i] == ref_q[i]) continue;
        rep.int8_e2e_mismatch++;
        /* The reference's z / scale must lie within this element's log-mel difference (checked above
           against the tolerances) of a rounding boundary, plus float32 slack of the normalization. */
        double y = fabs((double)((ref[i] - mean[m]) / std[m] / scale));
        double tie_distance = fabs(y - floor(y) - 0.5);
        double reach = fabs((double)got[i] - ref[i]) / std[m] / scale + 1e-5;
        rep.worst_tie_distance = tie_distance > rep.worst_tie_distance ? tie_distance : rep.worst_tie_distance;
        if (abs(q_e2e[i] - ref_q[i]) > 1 || tie_distance > reach)
            FAIL("%s: int8 [%zu] = %d, reference %d, %.3g steps from a rounding boundary", name, i, q_e2e[i],
                 ref_q[i], tie_distance);
    }
    if (rep.int8_stored_mismatch)
        FAIL("%s: %zu int8 values from the stored log-mel differ", name, rep.int8_stored_mismatch);

    printf("  %-18s %6u samples %4u frames  max|dL| %.2e (within 60 dB %.2e)  int8: stored %zu/%zu differ, "
           "end to end %zu differ (all within %.1e steps of a tie)\n",
           name, n_samples, n_frames, rep.max_err, rep.max_err_loud, rep.int8_stored_mismatch, n,
           rep.int8_e2e_mismatch, rep.worst_tie_distance);
    total->max_err = rep.max_err > total->max_err ? rep.max_err : total->max_err;
    total->max_err_loud = rep.max_err_loud > total->max_err_loud ? rep.max_err_loud : total->max_err_loud;
    total->int8_stored_mismatch += rep.int8_stored_mismatch;
    total->int8_e2e_mismatch += rep.int8_e2e_mismatch;
    free(pcm), free(ref), free(mean), free(std), free(ref_q), free(got), free(chunked), free(q_stored), free(q_e2e);
}

static void check_features(const char *path) {
    static eeasr_logmel_tables tables;
    static eeasr_logmel_stream s;
    eeasr_logmel_tables_init(&tables);
    eeasr_logmel_stream_init(&s, &tables);
    reader r = open_file(path);
    if (memcmp(take(&r, 4), "EEFV", 4) != 0 || u32(&r) != 1) {
        fprintf(stderr, "%s: not a version 1 EEFV file\n", path);
        exit(2);
    }
    uint32_t sr = u32(&r), win = u32(&r), hop = u32(&r), n_fft = u32(&r), n_mels = u32(&r);
    double f_min = f64(&r), f_max = f64(&r), floor_e = f64(&r);
    char hash[17] = {0};
    memcpy(hash, take(&r, 16), 16);
    if (sr != EEASR_SAMPLE_RATE || win != EEASR_WIN_LENGTH || hop != EEASR_HOP_LENGTH || n_fft != EEASR_N_FFT ||
        n_mels != EEASR_N_MELS || f_min != EEASR_F_MIN || f_max != EEASR_F_MAX || floor_e != EEASR_LOG_FLOOR ||
        strcmp(hash, EEASR_FEATURE_HASH) != 0) {
        fprintf(stderr, "%s: feature config %s differs from the one compiled in (%s)\n", path, hash,
                EEASR_FEATURE_HASH);
        exit(2);
    }
    uint32_t n_cases = u32(&r);
    printf("features (%s, config %s): %u cases\n", path, hash, n_cases);
    feature_report total = {0, 0, 0, 0, 0};
    for (uint32_t c = 0; c < n_cases; c++) check_feature_case(&tables, &s, &r, &total);
    if (r.pos != r.size) FAIL("%s: %zu trailing bytes", path, r.size - r.pos);
    printf("features: max|dL| %.2e overall, %.2e within 60 dB of the frame's loudest bin; int8 from the stored "
           "log-mel: %zu differ; end to end: %zu differ (each must be by 1, at a rounding tie)\n",
           total.max_err, total.max_err_loud, total.int8_stored_mismatch, total.int8_e2e_mismatch);
    free(r.data);
}

static int close_enough(double got, double want) {
    return fabs(got - want) <= TOL_ENTROPY_ABS + TOL_ENTROPY_REL * fabs(want);
}

static void check_exits(const char *path) {
    reader r = open_file(path);
    if (memcmp(take(&r, 4), "EEXV", 4) != 0 || u32(&r) != 1) {
        fprintf(stderr, "%s: not a version 1 EEXV file\n", path);
        exit(2);
    }
    uint32_t n_cases = u32(&r);
    printf("exits (%s): %u cases\n", path, n_cases);
    double worst_entropy = 0.0, worst_logp = 0.0;
    for (uint32_t c = 0; c < n_cases; c++) {
        char name[33] = {0};
        memcpy(name, take(&r, 32), 32);
        uint32_t rows = u32(&r), t_valid = u32(&r), vocab = u32(&r);
        int32_t blank = i32(&r);
        float scale = f32(&r);
        int32_t zero_point = i32(&r);
        const int8_t *logits = (const int8_t *)take(&r, (size_t)rows * vocab);
        float *ref_logp = f32_array(&r, (size_t)t_valid * vocab);
        double ref_entropy = f64(&r), ref_nonblank = f64(&r);
        uint32_t n_tokens = u32(&r);
        int32_t *ref_tokens = xmalloc(n_tokens * sizeof *ref_tokens);
        for (uint32_t i = 0; i < n_tokens; i++) ref_tokens[i] = i32(&r);

        size_t n = (size_t)t_valid * vocab;
        float *logp = xmalloc(n * sizeof *logp), *scratch = xmalloc(vocab * sizeof *scratch);
        eeasr_dequantize_int8_array(logits, n, scale, zero_point, logp);
        eeasr_log_softmax(logp, t_valid, vocab, logp);
        for (size_t i = 0; i < n; i++) {
            double err = fabs((double)logp[i] - ref_logp[i]);
            worst_logp = err > worst_logp ? err : worst_logp;
            if (err > TOL_LOGP) FAIL("%s: log p[%zu, %zu] off by %.3g", name, i / vocab, i % vocab, err);
        }
        eeasr_exit_measures m, m_logp;
        eeasr_exit_measures_int8(logits, t_valid, vocab, scale, zero_point, blank, scratch, &m);
        eeasr_exit_measures_logp(ref_logp, t_valid, vocab, blank, &m_logp);
        const double got[] = {m.entropy, m.nonblank_entropy, m_logp.entropy, m_logp.nonblank_entropy};
        const double want[] = {ref_entropy, ref_nonblank, ref_entropy, ref_nonblank};
        for (int i = 0; i < 4; i++) {
            double err = fabs(got[i] - want[i]);
            worst_entropy = err > worst_entropy ? err : worst_entropy;
            if (!close_enough(got[i], want[i])) FAIL("%s: measure %d = %.9g, reference %.9g", name, i, got[i], want[i]);
        }
        int32_t *tokens = xmalloc((t_valid + 1) * sizeof *tokens);
        size_t n_int8 = eeasr_greedy_ctc_int8(logits, t_valid, vocab, blank, tokens);
        if (n_int8 != n_tokens || memcmp(tokens, ref_tokens, n_tokens * sizeof *tokens) != 0)
            FAIL("%s: greedy CTC on int8 gives %zu tokens, the reference %u", name, n_int8, n_tokens);
        size_t n_logp = eeasr_greedy_ctc_logp(ref_logp, t_valid, vocab, blank, tokens);
        if (n_logp != n_tokens || memcmp(tokens, ref_tokens, n_tokens * sizeof *tokens) != 0)
            FAIL("%s: greedy CTC on log p gives %zu tokens, the reference %u", name, n_logp, n_tokens);
        printf("  %-18s T %3u/%-3u V %4u  entropy %.6f (ref %.6f)  non-blank %.6f (ref %.6f)  %u tokens\n", name,
               t_valid, rows, vocab, m.entropy, ref_entropy, m.nonblank_entropy, ref_nonblank, n_tokens);
        free(ref_logp), free(ref_tokens), free(logp), free(scratch), free(tokens);
    }
    if (r.pos != r.size) FAIL("%s: %zu trailing bytes", path, r.size - r.pos);
    printf("exits: max|d log p| %.2e, max|d measure| %.2e, greedy CTC identical\n", worst_logp, worst_entropy);
    free(r.data);
}

static void check_frame(const char *name, int32_t reason, const unsigned char *wire, size_t n) {
    static uint8_t rx[EEASR_MAX_ENCODED], payload[EEASR_MAX_PAYLOAD], again[EEASR_MAX_ENCODED];
    eeasr_decoder d;
    eeasr_decoder_init(&d, rx, sizeof rx);
    eeasr_decoded ev;
    size_t used = 0;
    if (!eeasr_decoder_feed(&d, wire, n, &used, &ev) || used != n) {
        FAIL("%s: no frame or rejection after %zu of %zu bytes", name, used, n);
        return;
    }
    if ((int32_t)ev.reason != reason) {
        FAIL("%s: reason %d (%s), the reference's is %d (%s)", name, (int)ev.reason, eeasr_reason_str(ev.reason),
             (int)reason, eeasr_reason_str((eeasr_reason)reason));
        return;
    }
    if (ev.n_bytes != (reason == EEASR_TOO_LONG ? n - 1 : n)) FAIL("%s: %zu wire bytes counted", name, ev.n_bytes);
    if (reason != EEASR_OK) return;
    size_t k = 0, m = 0;
    eeasr_reason r = eeasr_pack_message(&ev.msg, payload, sizeof payload, &k);
    if (r == EEASR_OK) r = eeasr_encode(ev.msg.type, ev.msg.seq, payload, k, again, sizeof again, &m);
    if (r != EEASR_OK)
        FAIL("%s: cannot encode it again: %s", name, eeasr_reason_str(r));
    else if (m != n || memcmp(again, wire, n) != 0)
        FAIL("%s: encodes to %zu bytes that differ from the reference's %zu", name, m, n);
}

static void check_endpoint(const char *name, const int16_t *pcm, size_t n, size_t chunk, reader *r) {
    eeasr_endpointer ep;
    eeasr_endpointer_init(&ep);
    eeasr_ep_event *got = xmalloc((n / EEASR_EP_HOP + 2) * sizeof *got);
    size_t k = 0;
    for (size_t at = 0; at < n; at += chunk) {
        size_t take = chunk < n - at ? chunk : n - at;
        k += eeasr_endpointer_push(&ep, pcm + at, take, got + k, EEASR_EP_MAX_EVENTS(take), NULL);
    }
    double floor = ep.floor;
    k += (size_t)eeasr_endpointer_flush(&ep, got + k);
    uint32_t n_events = u32(r);
    if (n_events != k) FAIL("%s: %zu events, the reference has %u", name, k, n_events);
    for (uint32_t i = 0; i < n_events; i++) {
        int32_t kind = i32(r);
        uint64_t lo = u32(r), hi = u32(r), sample = lo | hi << 32;
        if (i < k && (got[i].kind != kind || got[i].sample != sample))
            FAIL("%s: event %u is %d at %llu, the reference's %d at %llu", name, i, (int)got[i].kind,
                 (unsigned long long)got[i].sample, (int)kind, (unsigned long long)sample);
    }
    double want = f64(r);
    if (memcmp(&floor, &want, sizeof floor) != 0) FAIL("%s: floor %.17g, the reference's %.17g", name, floor, want);
    printf("  %-26s %7zu samples in chunks of %-6zu %zu events\n", name, n, chunk, k);
    free(got);
}

static void check_protocol(const char *path) {
    reader r = open_file(path);
    if (memcmp(take(&r, 4), "EEPV", 4) != 0 || u32(&r) != 1) {
        fprintf(stderr, "%s: not an EEPV version 1 file\n", path);
        exit(2);
    }
    uint32_t n_frames = u32(&r), n_endpoint = u32(&r), valid = 0;
    for (uint32_t c = 0; c < n_frames; c++) {
        char name[33] = {0};
        memcpy(name, take(&r, 32), 32);
        int32_t reason = i32(&r);
        uint32_t n = u32(&r);
        check_frame(name, reason, take(&r, n), n);
        valid += reason == EEASR_OK;
    }
    printf("protocol: %u frames (%u valid, byte-identical when re-encoded; %u refused for the reference's reason)\n",
           n_frames, valid, n_frames - valid);
    for (uint32_t c = 0; c < n_endpoint; c++) {
        char name[33] = {0};
        memcpy(name, take(&r, 32), 32);
        uint32_t n = u32(&r), chunk = u32(&r);
        const unsigned char *raw = take(&r, 2 * (size_t)n);
        int16_t *pcm = xmalloc(2 * (size_t)n);
        for (uint32_t i = 0; i < n; i++) pcm[i] = (int16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
        check_endpoint(name, pcm, n, chunk, &r);
        free(pcm);
    }
    if (r.pos != r.size) FAIL("%s: %zu trailing bytes", path, r.size - r.pos);
    free(r.data);
}

static void check_gated(const char *path) {
    reader r = open_file(path);
    if (memcmp(take(&r, 4), "EEGT", 4) != 0 || u32(&r) != 1) {
        fprintf(stderr, "%s: not an EEGT version 1 file\n", path);
        exit(2);
    }
    uint32_t n_pool = u32(&r), n_gate = u32(&r), n_requant = u32(&r);
    size_t decisions = 0, ties = 0, values = 0;
    for (uint32_t c = 0; c < n_pool; c++) {
        char name[33] = {0};
        memcpy(name, take(&r, 32), 32);
        uint32_t rows = u32(&r), t_valid = u32(&r), d = u32(&r);
        float scale = f32(&r);
        int32_t zp = i32(&r);
        float out_scale = f32(&r);
        int32_t out_zp = i32(&r);
        const int8_t *stream = (const int8_t *)take(&r, (size_t)rows * d);
        float *ref_mean = f32_array(&r, d), *mean = xmalloc(d * sizeof *mean);
        const int8_t *ref_q = (const int8_t *)take(&r, d);
        int8_t *q = xmalloc(d);
        eeasr_pool_valid(stream, t_valid, d, scale, zp, mean);
        eeasr_pool_valid_int8(stream, t_valid, d, scale, zp, out_scale, out_zp, q);
        if (memcmp(mean, ref_mean, d * sizeof *mean) != 0) FAIL("%s: pooled means differ from the reference's", name);
        if (memcmp(q, ref_q, d) != 0) FAIL("%s: pooled int8 differs from the reference's", name);
        values += d;
        free(ref_mean), free(mean), free(q);
    }
    for (uint32_t c = 0; c < n_gate; c++) {
        char name[33] = {0};
        memcpy(name, take(&r, 32), 32);
        uint32_t n = u32(&r);
        float scale = f32(&r);
        int32_t zp = i32(&r);
        double beta = f64(&r);
        const int8_t *margins = (const int8_t *)take(&r, n);
        double ref_threshold = f64(&r), threshold = eeasr_gate_threshold(beta);
        const uint8_t *ref_open = take(&r, n);
        uint8_t *open = xmalloc(n);
        if (memcmp(&threshold, &ref_threshold, sizeof threshold) != 0)
            FAIL("%s: threshold %.17g, the reference's %.17g", name, threshold, ref_threshold);
        eeasr_gate_decide(margins, n, scale, zp, ref_threshold, open);
        for (uint32_t g = 0; g < n; g++) {
            ties += (double)eeasr_dequantize_int8(margins[g], scale, zp) == ref_threshold;
            if (open[g] != ref_open[g]) FAIL("%s: gate %u (margin %d) is %u, the reference's %u", name, g, margins[g],
                                             open[g], ref_open[g]);
        }
        decisions += n;
        free(open);
    }
    for (uint32_t c = 0; c < n_requant; c++) {
        char name[33] = {0};
        memcpy(name, take(&r, 32), 32);
        uint32_t n = u32(&r);
        float from_scale = f32(&r);
        int32_t from_zp = i32(&r);
        float to_scale = f32(&r);
        int32_t to_zp = i32(&r);
        const int8_t *in = (const int8_t *)take(&r, n), *ref = (const int8_t *)take(&r, n);
        int8_t table[256], *out = xmalloc(n);
        eeasr_requantize_table(from_scale, from_zp, to_scale, to_zp, table);
        eeasr_requantize_apply(table, in, n, out);
        if (memcmp(out, ref, n) != 0) FAIL("%s: the requantized stream differs from the reference's", name);
        free(out);
    }
    if (r.pos != r.size) FAIL("%s: %zu trailing bytes", path, r.size - r.pos);
    printf("gated: %u pooling cases (%zu means bit for bit), %u gate cases (%zu decisions, %zu margins exactly at "
           "the threshold), %u stream requantizations: identical\n", n_pool, values, n_gate, decisions, ties,
           n_requant);
    free(r.data);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s FEATURES.eefv EXITS.eexv PROTOCOL.eepv GATED.eegt\n", argv[0]);
        return 2;
    }
    check_features(argv[1]);
    check_exits(argv[2]);
    check_protocol(argv[3]);
    check_gated(argv[4]);
    printf(g_failures ? "vector check: %d failures\n" : "vector check: passed\n", g_failures);
    return g_failures ? 1 : 0;
}
