#include "pipeline.h"

#include <math.h>
#include <string.h>

#include "eeasr_core/endpoint.h"
#include "eeasr_core/exits.h"
#include "eeasr_core/features.h"
#include "eeasr_core/gates.h"
#include "eeasr_core/protocol.h"
#include "eeasr_core/quant.h"
#include "esp_heap_caps.h"
#include "esp_log.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "gated_program.h"
#include "hello.h"
#include "link.h"
#include "sdkconfig.h"
#include "segment_runner.h"
#include "selftest.h"
#include "work.h"

#define AUDIO_SLOTS 8   /* the host keeps at most 8 AUDIO frames unacknowledged (docs/protocol.md) */
#define CUT_SEARCH 150  /* eeasr/windows.py DEFAULT_SEARCH: look for a pause in the last 1.5 s of a window */
#define MIN_FRAMES 4    /* fewer feature frames give no encoder frame: an empty RESULT */
#define ERR_LEN 160
#define PREROLL ((EEASR_EP_PREROLL_HOPS + EEASR_EP_START_HOPS) * EEASR_EP_HOP) /* 23 hops before a start */

enum { EV_AUDIO, EV_COMMAND };
enum { SRC_MIC, SRC_HOST };

typedef struct {
    uint8_t kind, command;
    uint16_t seq;
    int8_t slot;
} event_t;

static const char *TAG = "eeasr.pipeline";
static const eeasr_model_image *M;
static const char *s_firmware;
static uint8_t s_hash8[8];
static QueueHandle_t s_events, s_free;
static RingbufHandle_t s_mic;
static int16_t *s_slot_pcm[AUDIO_SLOTS];
static uint16_t s_slot_n[AUDIO_SLOTS];
static uint8_t s_slot_flags[AUDIO_SLOTS];
static eeasr_logmel_tables s_tables;
static eeasr_work s_w;
static eeasr_counters s_count;
static uint8_t *s_tok_wire; /* tokens as the RESULT carries them: u16 little-endian */
static double s_gate_threshold; /* a gated program's: log(beta / (1 - beta)) of the image's beta */

/* The audio stream (microphone, or the host's): endpointer, hop assembly, the last 23 hops for pre-roll. */
static int s_source = SRC_MIC;
static eeasr_endpointer s_ep;
static int16_t s_hop[EEASR_EP_HOP];
static size_t s_hop_fill;
static uint64_t s_hop_start;       /* stream sample index of s_hop[0] */
static int16_t s_preroll[PREROLL]; /* stream sample t lives at t % PREROLL */

/* The open utterance: its int8 features and frame energies since the last window cut. */
static int s_open, s_host_segmented;
static uint32_t s_utt_id;
static uint16_t s_window;
static int8_t *s_feats; /* [(W + 1) x n_mels] */
static double *s_energy; /* [W + 1]: mean log-mel per frame, eeasr.windows.frame_energy (the cut rule's) */
static size_t s_nbuf;

static void *alloc_big(size_t n) {
    void *p = heap_caps_malloc(n, MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT);
    return p != NULL ? p : heap_caps_malloc(n, MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
}

static uint32_t enc_frames(uint32_t n, unsigned subsampling) {
    for (unsigned s = subsampling; s > 1; s >>= 1) n = (n + 1) / 2; /* each stride-2 layer: ceil(n / 2) */
    return n;
}

static void send_result(uint8_t flags, uint8_t exit_index, uint8_t layer, uint8_t measure, float confidence,
                        size_t n_tokens) {
    for (size_t i = 0; i < n_tokens; i++) eeasr_put_u16le(s_tok_wire + 2 * i, (uint16_t)s_w.tokens[i]);
    const eeasr_result r = {.utt_id = s_utt_id, .window = s_window, .flags = flags, .exit_index = exit_index,
                            .layer = layer, .measure = measure, .confidence = confidence, .n_tokens = n_tokens,
                            .tokens = s_tok_wire}; /* no text: the host detokenizes */
    size_t cap, n = 0;
    uint8_t *p = eeasr_link_payload_acquire(&cap);
    eeasr_reason why = eeasr_pack_result(&r, p, cap, &n);
    if (why == EEASR_OK) eeasr_link_send(EEASR_MSG_RESULT, p, n);
    eeasr_link_payload_release();
    if (why != EEASR_OK) eeasr_link_error(EEASR_ERROR_INTERNAL, "result not sent: %s", eeasr_reason_str(why));
}

/* The hidden state in s_w.hidden, and a gated program's module mask (n_modules 0: none, early-exit). */
static void send_handoff(uint8_t flags, uint32_t t_valid, uint8_t n_modules, const uint8_t *modules) {
    eeasr_handoff h = {.utt_id = s_utt_id, .window = s_window, .flags = flags, .layer = M->handoff_layer,
                       .scale = M->handoff_scale, .zero_point = (int8_t)M->handoff_zero_point,
                       .t_valid = (uint16_t)t_valid, .d = M->d_model, .hidden = s_w.hidden,
                       .n_modules = n_modules, .modules = modules};
    memcpy(h.model_hash, s_hash8, sizeof s_hash8);
    size_t cap, n = 0;
    uint8_t *p = eeasr_link_payload_acquire(&cap);
    eeasr_reason why = eeasr_pack_handoff(&h, p, cap, &n);
    if (why == EEASR_OK) eeasr_link_send(EEASR_MSG_HANDOFF, p, n);
    eeasr_link_payload_release();
    if (why != EEASR_OK)
        eeasr_link_error(EEASR_ERROR_TOO_LARGE, "handoff of %u x %u not sent: %s", (unsigned)t_valid, M->d_model,
                         eeasr_reason_str(why));
}

/* The exit policy at segment s's exit head (its int8 logits in s_w.logits): RESULT when it is sure enough, or
   when it is the device's last exit and no layer is left for the server; else, at the device's last exit, its
   best answer (HANDED_OFF) and the handoff with the module mask. Returns 1 when the window is answered. */
static int exit_policy(const eeasr_img_segment *s, uint32_t t_valid, int last, uint8_t fin, uint8_t n_modules,
                       const uint8_t *modules) {
    const eeasr_model_image *m = M;
    const uint8_t measure = m->default_measure == EEASR_MEASURE_NONE ? 0 : m->default_measure;
    const float threshold = m->default_measure == EEASR_MEASURE_NONE ? NAN : m->threshold[m->default_measure];
    eeasr_exit_measures ms;
    eeasr_exit_measures_int8(s_w.logits, t_valid, m->vocab, s->logits_scale, s->logits_zero_point, m->blank,
                             s_w.scratch, &ms);
    const float value = measure == 1 ? ms.nonblank_entropy : ms.entropy;
    const int server_layers = m->device_exits < m->n_exits;
    const int exit_here = value <= threshold || (last && !server_layers); /* false for a NaN threshold */
    if (!exit_here && !last) return 0;
    size_t nt = eeasr_greedy_ctc_int8(s_w.logits, t_valid, m->vocab, m->blank, s_w.tokens);
    if (exit_here) {
        send_result(fin, s->exit_index, s->exit_layer, measure, value, nt);
        s_count.device_results++;
    } else {
        send_result(fin | EEASR_RESULT_HANDED_OFF, s->exit_index, s->exit_layer, measure, value, nt);
        send_handoff(fin, t_valid, n_modules, modules);
        s_count.handoffs++;
    }
    return 1;
}

static int run_segment(void *err, unsigned i, const int8_t *input, int32_t n_frames, int8_t *logits, int8_t *out) {
    return eeasr_runner_run((int)i, input, n_frames, logits, out, err, ERR_LEN);
}

/* One window of n valid frames: early-exit, segment by segment until an exit is sure enough; gated, the
   program (gated_program.h) then the exit policy at its head. */
static void run_window(size_t n, int final) {
    const eeasr_model_image *m = M;
    const uint8_t fin = final ? EEASR_RESULT_FINAL : 0;
    const uint8_t measure = m->default_measure == EEASR_MEASURE_NONE ? 0 : m->default_measure;
    s_count.windows++;
    if (n < MIN_FRAMES) { /* too short to run; no frame at all (NO_SPEECH) only as an utterance's only window */
        send_result(fin | (n == 0 ? EEASR_RESULT_NO_SPEECH : 0), 0, 0, measure, 0.0f, 0);
        s_window++;
        return;
    }
    const size_t row = m->n_mels;
    memcpy(s_w.input, s_feats, n * row);
    memset(s_w.input + n * row, (int8_t)m->feature_zero_point, (m->window - n) * row); /* quantized zeros */
    const uint32_t t_valid = enc_frames((uint32_t)n, m->subsampling);
    char err[ERR_LEN];
    int failed = 0;
    if (m->program.kind == EEASR_PROGRAM_GATED) {
        static eeasr_gated_out g;
        const eeasr_gated_buffers b = {s_w.hidden, s_w.pooled, s_w.gate, s_w.logits};
        failed = eeasr_gated_run(m, s_gate_threshold, s_w.input, (int32_t)n, run_segment, err, &b, &g) != 0;
        if (!failed) exit_policy(&m->seg[m->program.head], t_valid, 1, fin, g.n_modules, g.modules);
    } else {
        for (unsigned i = 0; !failed && i < m->n_segments; i++) {
            failed = eeasr_runner_run((int)i, i == 0 ? s_w.input : s_w.hidden, (int32_t)n, s_w.logits, s_w.hidden,
                                      err, sizeof err) != 0;
            if (!failed && exit_policy(&m->seg[i], t_valid, i + 1 == m->n_segments, fin, 0, NULL)) break;
        }
    }
    if (failed) {
        eeasr_link_error(EEASR_ERROR_INTERNAL, "utterance %u window %u: %s", (unsigned)s_utt_id, s_window, err);
        send_result(fin, 0, 0, measure, 0.0f, 0); /* the window stays accounted for */
    }
    s_window++;
}

/* W + 1 frames buffered: end the window at the quietest of frames [W - 150, W] (first on ties), as
   eeasr.windows.window_spans; the frames after it start the next window. */
static void cut(void) {
    const size_t w = M->window, row = M->n_mels;
    size_t lo = w > CUT_SEARCH ? w - CUT_SEARCH : 1, end = lo;
    for (size_t j = lo + 1; j <= w; j++)
        if (s_energy[j] < s_energy[end]) end = j;
    run_window(end, 0);
    const size_t rest = w + 1 - end;
    memmove(s_feats, s_feats + end * row, rest * row);
    memmove(s_energy, s_energy + end, rest * sizeof(double));
    s_nbuf = rest;
}

static void add_frame(const float *logmel) {
    const eeasr_model_image *m = M;
    double sum = 0.0; /* a double sum in bin order, then / n_mels: the same value as the host computes */
    for (unsigned j = 0; j < m->n_mels; j++) sum += logmel[j];
    s_energy[s_nbuf] = sum / m->n_mels;
    eeasr_normalize(logmel, 1, m->norm_mean, m->norm_std, s_w.z);
    eeasr_quantize_int8_array(s_w.z, m->n_mels, m->feature_scale, m->feature_zero_point, s_feats + s_nbuf * m->n_mels);
    if (++s_nbuf == (size_t)m->window + 1) cut();
}

static void utt_feed(const int16_t *pcm, size_t n) {
    while (n > 0) {
        size_t used = 0;
        size_t got = eeasr_logmel_push(&s_w.stream, pcm, n, s_w.logmel, EEASR_PUSH_FRAMES, &used);
        for (size_t f = 0; f < got; f++) add_frame(s_w.logmel + f * M->n_mels);
        if (used == 0) break;
        pcm += used;
        n -= used;
    }
}

static void utt_close(void) {
    if (!s_open) return;
    run_window(s_nbuf, 1);
    s_open = s_host_segmented = 0;
    s_nbuf = 0;
    s_utt_id++;
}

static void utt_open(int host_segmented) {
    utt_close();
    s_open = 1;
    s_host_segmented = host_segmented;
    s_window = 0;
    s_nbuf = 0;
    eeasr_logmel_stream_reset(&s_w.stream); /* features start at the utterance's first sample */
    s_count.utterances++;
}

/* One 10 ms hop of the endpointed stream. */
static void on_hop(const int16_t *hop) {
    memcpy(s_preroll + s_hop_start % PREROLL, hop, sizeof s_hop);
    eeasr_ep_event ev = {0, 0};
    eeasr_endpointer_step(&s_ep, eeasr_hop_energy(hop), &ev);
    const int was_open = s_open;
    if (was_open) utt_feed(hop, EEASR_EP_HOP);
    if (ev.kind == EEASR_EP_START && !was_open) {
        utt_open(0);
        for (uint64_t t = ev.sample; t <= s_hop_start; t += EEASR_EP_HOP) /* 200 ms before the loud hops */
            utt_feed(s_preroll + t % PREROLL, EEASR_EP_HOP);
    } else if (ev.kind == EEASR_EP_END && was_open) {
        utt_close(); /* ends at this hop's end, which it has been fed */
    }
    s_hop_start += EEASR_EP_HOP;
}

static void stream_feed(const int16_t *pcm, size_t n) {
    while (n > 0) {
        size_t take = EEASR_EP_HOP - s_hop_fill < n ? EEASR_EP_HOP - s_hop_fill : n;
        memcpy(s_hop + s_hop_fill, pcm, take * sizeof(int16_t));
        s_hop_fill += take;
        pcm += take;
        n -= take;
        if (s_hop_fill == EEASR_EP_HOP) {
            on_hop(s_hop);
            s_hop_fill = 0;
        }
    }
}

static void stream_reset(void) {
    eeasr_endpointer_init(&s_ep);
    s_hop_fill = 0;
    s_hop_start = 0;
}

/* The end of a stream: the open utterance ends at the last whole hop (a partial hop is never fed). */
static void stream_end(void) {
    eeasr_ep_event ev;
    if (s_host_segmented || eeasr_endpointer_flush(&s_ep, &ev)) utt_close();
    stream_reset();
}

static void drain_mic(int keep) {
    size_t bytes;
    void *item;
    while (s_mic != NULL && (item = xRingbufferReceiveUpTo(s_mic, &bytes, 0, 4096)) != NULL) {
        if (keep) stream_feed(item, bytes / sizeof(int16_t));
        vRingbufferReturnItem(s_mic, item);
        if (keep && uxQueueMessagesWaiting(s_events) > 0) break; /* host frames first */
    }
}

/* Host audio replaces the microphone until STREAM_END: the microphone's utterance ends first, and the
   microphone's audio from meanwhile is dropped. */
static void use_source(int src) {
    if (src == s_source) return;
    stream_end();
    if (src == SRC_MIC) drain_mic(0);
    s_source = src;
}

static void send_ack(uint16_t seq, uint8_t of_type) {
    const eeasr_ack a = {.seq = seq, .of = of_type, .status = 0};
    uint8_t buf[EEASR_ACK_SIZE];
    size_t n = 0;
    if (eeasr_pack_ack(&a, buf, sizeof buf, &n) == EEASR_OK) eeasr_link_send(EEASR_MSG_ACK, buf, n);
}

static void on_audio(const event_t *ev) {
    const int16_t *pcm = s_slot_pcm[ev->slot];
    const size_t n = s_slot_n[ev->slot];
    const uint8_t flags = s_slot_flags[ev->slot];
    s_count.audio_frames++;
    use_source(SRC_HOST);
    if (flags & EEASR_AUDIO_UTT_START) { /* host-segmented: the endpointer is bypassed */
        utt_close();
        stream_reset(); /* endpointed audio after this utterance is a new stream */
        utt_open(1);
    }
    if (s_host_segmented)
        utt_feed(pcm, n);
    else
        stream_feed(pcm, n);
    if ((flags & EEASR_AUDIO_UTT_END) && s_host_segmented) utt_close();
    if (flags & EEASR_AUDIO_STREAM_END) {
        stream_end();
        if (s_mic != NULL) {
            drain_mic(0); /* back to the microphone, from now on */
            s_source = SRC_MIC;
        }
    }
    int8_t slot = ev->slot;
    xQueueSend(s_free, &slot, 0);
    send_ack(ev->seq, EEASR_MSG_AUDIO);
}

static void on_command(const event_t *ev) {
    size_t cap;
    uint8_t *p;
    switch (ev->command) {
    case EEASR_CMD_SELF_TEST:
    case EEASR_CMD_PROFILE: {
        p = eeasr_link_payload_acquire(&cap);
        size_t n = ev->command == EEASR_CMD_SELF_TEST ? eeasr_selftest_json(M, &s_w, s_firmware, (char *)p, cap)
                                                      : eeasr_profile_json(M, &s_count, s_firmware, (char *)p, cap);
        eeasr_link_send(EEASR_MSG_INFO, p, n);
        eeasr_link_payload_release();
        break;
    }
    case EEASR_CMD_RESET: {
        if (s_open) s_utt_id++; /* dropped: no result for an utterance the host abandoned */
        s_open = s_host_segmented = 0;
        s_nbuf = 0;
        stream_reset();
        if (s_source == SRC_HOST && s_mic != NULL) {
            drain_mic(0);
            s_source = SRC_MIC;
        }
        send_ack(ev->seq, EEASR_MSG_COMMAND);
        break;
    }
    default:
        eeasr_link_error(EEASR_ERROR_BAD_FRAME, "unknown command %u", ev->command);
    }
}

static void task(void *arg) {
    (void)arg;
    for (;;) {
        event_t ev;
        if (xQueueReceive(s_events, &ev, s_mic != NULL ? pdMS_TO_TICKS(10) : portMAX_DELAY) == pdTRUE) {
            if (ev.kind == EV_AUDIO)
                on_audio(&ev);
            else
                on_command(&ev);
        }
        drain_mic(s_source == SRC_MIC);
    }
}

int eeasr_pipeline_post_audio(uint16_t seq, const eeasr_audio *a) {
    int8_t slot;
    if (xQueueReceive(s_free, &slot, 0) != pdTRUE) return -1;
    eeasr_audio_samples(a, s_slot_pcm[slot]); /* the decoder checked: at most EEASR_MAX_AUDIO_SAMPLES */
    s_slot_flags[slot] = a->flags;
    s_slot_n[slot] = (uint16_t)a->n_samples;
    const event_t ev = {EV_AUDIO, 0, seq, slot};
    xQueueSend(s_events, &ev, portMAX_DELAY);
    return 0;
}

int eeasr_pipeline_post_command(uint16_t seq, uint8_t command) {
    const event_t ev = {EV_COMMAND, command, seq, -1};
    return xQueueSend(s_events, &ev, 0) == pdTRUE ? 0 : -1;
}

int eeasr_pipeline_start(const eeasr_model_image *m, RingbufHandle_t mic, const char *firmware) {
    M = m;
    s_firmware = firmware;
    s_mic = mic;
    s_source = mic != NULL ? SRC_MIC : SRC_HOST;
    eeasr_hex8(m->model_hash, s_hash8);
    eeasr_logmel_tables_init(&s_tables);
    eeasr_logmel_stream_init(&s_w.stream, &s_tables);
    stream_reset();
    const size_t w = m->window, enc = m->encoder_frames;
    s_feats = alloc_big((w + 1) * m->n_mels);
    s_energy = alloc_big((w + 1) * sizeof(double));
    s_w.input = alloc_big(w * m->n_mels);
    s_w.logits = alloc_big(enc * m->vocab);
    s_w.hidden = alloc_big(enc * m->d_model);
    s_w.pooled = alloc_big(m->d_model);
    s_w.scratch = alloc_big(m->vocab * sizeof(float));
    s_w.tokens = alloc_big(enc * sizeof(int32_t));
    s_tok_wire = alloc_big(enc * sizeof(uint16_t));
    s_events = xQueueCreate(AUDIO_SLOTS + 8, sizeof(event_t));
    s_free = xQueueCreate(AUDIO_SLOTS, sizeof(int8_t));
    s_gate_threshold = eeasr_gate_threshold(m->program.beta);
    int ok = s_feats && s_energy && s_w.input && s_w.logits && s_w.hidden && s_w.pooled && s_w.scratch && s_w.tokens &&
             s_tok_wire && s_events && s_free;
    for (int8_t i = 0; ok && i < AUDIO_SLOTS; i++) {
        s_slot_pcm[i] = alloc_big(EEASR_MAX_AUDIO_SAMPLES * sizeof(int16_t));
        ok = s_slot_pcm[i] != NULL && xQueueSend(s_free, &i, 0) == pdTRUE;
    }
    if (!ok) {
        ESP_LOGE(TAG, "out of memory for the pipeline's buffers");
        return -1;
    }
    return xTaskCreatePinnedToCore(task, "eeasr_pipeline", 12288, NULL, 5, NULL, CONFIG_EEASR_PIPELINE_CORE) == pdPASS
               ? 0
               : -1;
}
