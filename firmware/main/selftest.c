#include "selftest.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "eeasr_core/exits.h"
#include "eeasr_core/gates.h"
#include "eeasr_core/quant.h"
#include "esp_heap_caps.h"
#include "esp_timer.h"
#include "mic.h"
#include "sdkconfig.h"
#include "segment_runner.h"

/* Appends to a bounded buffer; the result stays NUL-terminated and `len` counts what fitted. */
typedef struct {
    char *p;
    size_t cap, len;
} json_buf;

static void put(json_buf *j, const char *fmt, ...) {
    if (j->len >= j->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->p + j->len, j->cap - j->len, fmt, ap);
    va_end(ap);
    j->len = n < 0 ? j->cap : j->len + (size_t)n < j->cap ? j->len + (size_t)n : j->cap - 1;
}

static const char *tf(int b) { return b ? "true" : "false"; }

/* Largest |a - b| over n int8 values, and how many differ. */
static int max_diff(const int8_t *a, const int8_t *b, size_t n, size_t *differ) {
    int worst = 0;
    *differ = 0;
    for (size_t i = 0; i < n; i++) {
        int d = a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
        *differ += d != 0;
        if (d > worst) worst = d;
    }
    return worst;
}

/* One entry of "checks" (the schema `eeasr-host device-info` shows, shared with the simulated device). */
static void check(json_buf *j, int *first, const char *name, const char *suffix, int pass, double max_error,
                  const char *unit, const char *detail) {
    put(j, "%s{\"name\":\"%s%s\",\"pass\":%s,\"max_error\":%.6g,\"unit\":\"%s\",\"detail\":\"%s\"}", *first ? "" : ",",
        name, suffix, tf(pass), max_error, unit, detail);
    *first = 0;
}

size_t eeasr_selftest_json(const eeasr_model_image *m, eeasr_work *w, const char *firmware, char *out, size_t cap) {
    json_buf j = {out, cap, 0};
    const eeasr_img_golden *g = &m->golden;
    const size_t n_mels = m->n_mels, enc = m->encoder_frames;
    int all = 1, first = 1;
    char detail[160];
    const int64_t t_start = esp_timer_get_time();
    put(&j, "{\"report\":\"self_test\",\"simulated\":false,\"firmware\":\"%s\",\"model_hash\":\"%s\",\"bundle_id\":\"%s\","
            "\"golden_vectors\":\"model partition: a %u-sample clip, its reference int8 features, and the x86 TFLM "
            "outputs of %u segment(s)\",\"checks\":[",
        firmware, m->model_hash, m->bundle_id, (unsigned)g->n_samples, m->n_segments);

    /* 1. The front end: log-mel -> normalize -> int8, frame by frame, against the reference features. */
    static eeasr_logmel_stream stream; /* its own: an open utterance's stream stays untouched */
    eeasr_logmel_stream_init(&stream, w->stream.tables);
    size_t frame = 0, differ = 0, pos = 0;
    int worst = 0;
    int8_t q[EEASR_N_MELS];
    while (pos < g->n_samples) {
        size_t used = 0;
        size_t got = eeasr_logmel_push(&stream, g->pcm + pos, g->n_samples - pos, w->logmel, EEASR_PUSH_FRAMES, &used);
        pos += used;
        for (size_t f = 0; f < got && frame < g->n_frames; f++, frame++) {
            eeasr_features_int8(w->logmel + f * n_mels, 1, m->norm_mean, m->norm_std, m->feature_scale,
                                m->feature_zero_point, q);
            size_t d = 0;
            int e = max_diff(q, g->feats + frame * n_mels, n_mels, &d);
            differ += d;
            if (e > worst) worst = e;
        }
        if (used == 0 && got == 0) break;
    }
    int ok = frame == g->n_frames && worst <= g->feature_tol;
    all &= ok;
    snprintf(detail, sizeof detail, "%u of %u frames, %u values differ, tolerance %u", (unsigned)frame,
             (unsigned)g->n_frames, (unsigned)differ, g->feature_tol);
    check(&j, &first, "features (log-mel, int8)", "", ok, worst, "int8 LSB", detail);

    /* 2. Each segment on its golden input (segment 1: the reference features; an early-exit segment: the
          previous one's golden hidden state; in a gated program, whose golden run has every gate open: the
          golden output of the stream's last writer (front, attention, feed-forward), moved to the segment's
          input quantization, or pooled for a predictor), so an error is pinned to the segment that made it. */
    const size_t stream_bytes = enc * m->d_model;
    unsigned writer = 0;
    for (unsigned i = 0; i < m->n_segments; i++) {
        const eeasr_img_segment *s = &m->seg[i];
        const eeasr_img_segment *src = &m->seg[writer];
        const int8_t *in = w->input;
        if (s->front) {
            memset(w->input, (int8_t)m->feature_zero_point, (size_t)m->window * n_mels);
            memcpy(w->input, g->feats, (size_t)g->n_frames * n_mels);
        } else if (s->role == EEASR_ROLE_SEGMENT) {
            in = g->seg[i - 1].hidden; /* the runner requantizes at an early-exit boundary */
        } else if (s->role == EEASR_ROLE_PREDICTOR) {
            eeasr_pool_valid_int8(g->seg[writer].hidden, g->t_valid, m->d_model, src->hidden_scale,
                                  src->hidden_zero_point, s->in_scale, s->in_zero_point, w->pooled);
            in = w->pooled;
        } else {
            int8_t table[256];
            eeasr_requantize_table(src->hidden_scale, src->hidden_zero_point, s->in_scale, s->in_zero_point, table);
            eeasr_requantize_apply(table, g->seg[writer].hidden, stream_bytes, w->hidden);
            in = w->hidden;
        }
        if (s->role == EEASR_ROLE_FRONT || s->role == EEASR_ROLE_MHA || s->role == EEASR_ROLE_FFN) writer = i;
        const int predictor = s->role == EEASR_ROLE_PREDICTOR;
        int8_t *got = predictor ? w->gate : w->hidden;
        char err[160] = "";
        int64_t t0 = esp_timer_get_time();
        int rc = eeasr_runner_run((int)i, in, (int32_t)g->n_frames, w->logits, got, err, sizeof err);
        int64_t us = esp_timer_get_time() - t0;
        if (rc != 0) {
            all = 0;
            check(&j, &first, s->name, " run", 0, 0, "", err);
            continue;
        }
        if (g->seg[i].hidden != NULL) {
            const size_t n_out = predictor ? s->n_gates : stream_bytes;
            size_t dh = 0;
            int eh = max_diff(got, g->seg[i].hidden, n_out, &dh);
            snprintf(detail, sizeof detail, "%u of %u values differ, tolerance %u; %lld us", (unsigned)dh,
                     (unsigned)n_out, g->hidden_tol, (long long)us);
            check(&j, &first, s->name, predictor ? " gate margins" : " hidden state", eh <= g->hidden_tol, eh,
                  "int8 LSB", detail);
            all &= eh <= g->hidden_tol;
        }
        if (g->seg[i].logits == NULL) continue;
        size_t dl = 0;
        int el = max_diff(w->logits, g->seg[i].logits, (size_t)g->t_valid * m->vocab, &dl);
        snprintf(detail, sizeof detail, "%u of %u values differ (valid frames), tolerance %u; %lld us", (unsigned)dl,
                 (unsigned)(g->t_valid * m->vocab), g->logits_tol, (long long)us);
        check(&j, &first, s->name, " logits", el <= g->logits_tol, el, "int8 LSB", detail);
        all &= el <= g->logits_tol;
        /* The exit measure follows from the logits: reported, and held to 5% (ties of 1-LSB logits move it). */
        eeasr_exit_measures ms;
        eeasr_exit_measures_int8(w->logits, g->t_valid, m->vocab, s->logits_scale, s->logits_zero_point, m->blank,
                                 w->scratch, &ms);
        double ref = g->seg[i].entropy, e = fabs((double)ms.entropy - ref);
        ok = e <= 0.05 * fabs(ref) + 1e-6;
        all &= ok;
        snprintf(detail, sizeof detail, "device %.6g, reference %.6g", (double)ms.entropy, ref);
        check(&j, &first, s->name, " exit entropy", ok, e, "entropy / |Y|", detail);
    }
    put(&j, "],\"pass\":%s,\"wall_s\":%.3f}", tf(all), (esp_timer_get_time() - t_start) / 1e6);
    return j.len;
}

static void heap(json_buf *j, const char *name, uint32_t caps) {
    put(j, "{\"type\":\"%s total\",\"bytes\":%u},{\"type\":\"%s free\",\"bytes\":%u},"
           "{\"type\":\"%s minimum free (high-water mark)\",\"bytes\":%u},{\"type\":\"%s largest free block\",\"bytes\":%u}",
        name, (unsigned)heap_caps_get_total_size(caps), name, (unsigned)heap_caps_get_free_size(caps), name,
        (unsigned)heap_caps_get_minimum_free_size(caps), name, (unsigned)heap_caps_get_largest_free_block(caps));
}

size_t eeasr_profile_json(const eeasr_model_image *m, const eeasr_counters *c, const char *firmware, char *out,
                          size_t cap) {
    json_buf j = {out, cap, 0};
    put(&j, "{\"report\":\"profile\",\"simulated\":false,\"firmware\":\"%s\",\"note\":\"measured on the device: "
            "cycles by esp_cpu_get_cycle_count around Invoke, microseconds by esp_timer; replace the roofline "
            "figures of convert/cost.py with these\",\"cpu_hz\":%u,\"window_frames\":%u,\"arena_bytes\":%u,"
            "\"arena_in\":\"%s\",\"weights_in\":\"%s\",\"segments\":[",
        firmware, (unsigned)CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ * 1000000u, m->window, (unsigned)eeasr_runner_arena_bytes(),
        eeasr_runner_arena_where(), eeasr_runner_weights_where());
    static const char *const roles[] = {"segment", "front", "predictor", "mha", "ffn", "head"};
    for (unsigned i = 0; i < m->n_segments; i++) {
        const eeasr_segment_profile *p = eeasr_runner_profile((int)i);
        put(&j, "%s{\"name\":\"%s\",\"role\":\"%s\",\"exit_index\":%u,\"exit_layer\":%u,\"live_windows\":%u,"
                "\"live_wall_ms_mean\":%.3f,\"live_wall_ms_max\":%.3f,\"cycles\":%u,\"cycles_max\":%u,"
                "\"interpreter_setup_ms\":%.3f,\"tflm_allocated_bytes\":%u,\"arena_bytes\":%u,\"flash_bytes\":%u}",
            i ? "," : "", m->seg[i].name, roles[m->seg[i].role], m->seg[i].exit_index, m->seg[i].exit_layer,
            (unsigned)p->runs, p->runs ? p->total_us / 1e3 / p->runs : 0.0, p->max_us / 1e3, (unsigned)p->last_cycles,
            (unsigned)p->max_cycles, p->alloc_us / 1e3, (unsigned)p->arena_used, (unsigned)m->seg[i].arena_bytes,
            (unsigned)m->seg[i].tflite_len);
    }
    put(&j, "],\"heap\":[");
    heap(&j, "internal", MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
    put(&j, ",");
    heap(&j, "psram", MALLOC_CAP_SPIRAM);
    put(&j, "],\"windows_run\":%u,\"audio_frames\":%u,\"utterances\":%u,\"device_results\":%u,\"handoffs\":%u,"
            "\"mic_dropped_samples\":%u}",
        (unsigned)c->windows, (unsigned)c->audio_frames, (unsigned)c->utterances, (unsigned)c->device_results,
        (unsigned)c->handoffs, (unsigned)eeasr_mic_dropped());
    return j.len;
}
