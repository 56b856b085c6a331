#include "gated_program.h"

#include <string.h>

#include "eeasr_core/gates.h"
#include "eeasr_core/quant.h"

typedef struct {
    const eeasr_model_image *m;
    eeasr_segment_fn run;
    void *ctx;
    const eeasr_gated_buffers *b;
    eeasr_gated_out *out;
    int32_t n_frames;
    float scale; /* the stream's quantization: the output of the segment that wrote it last */
    int32_t zero_point;
} program;

static int invoke(program *p, unsigned i, const int8_t *input, int8_t *logits, int8_t *out) {
    p->out->invoked[p->out->n_invoked++] = (uint8_t)i;
    return p->run(p->ctx, i, input, p->n_frames, logits, out);
}

/* The stream in segment g's input quantization, requantized in place only when they differ: every caller then
   runs g, whose output replaces the stream (or, for the head, is the handoff). */
static void stream_to(program *p, const eeasr_img_segment *g) {
    if (g->in_scale == p->scale && g->in_zero_point == p->zero_point) return;
    int8_t table[256];
    eeasr_requantize_table(p->scale, p->zero_point, g->in_scale, g->in_zero_point, table);
    eeasr_requantize_apply(table, p->b->stream, (size_t)p->m->encoder_frames * p->m->d_model, p->b->stream);
    p->scale = g->in_scale;
    p->zero_point = g->in_zero_point;
}

/* Predictor segment i on the stream pooled over its valid frames: open[g] for each of its gates. */
static int predict(program *p, unsigned i, double threshold, uint8_t *open) {
    const eeasr_img_segment *g = &p->m->seg[i];
    eeasr_pool_valid_int8(p->b->stream, p->out->t_valid, p->m->d_model, p->scale, p->zero_point, g->in_scale,
                          g->in_zero_point, p->b->pooled);
    int rc = invoke(p, i, p->b->pooled, NULL, p->b->gate);
    if (rc == 0) eeasr_gate_decide(p->b->gate, g->n_gates, g->hidden_scale, g->hidden_zero_point, threshold, open);
    return rc;
}

/* Attention or feed-forward segment i on the stream; its output is the stream from now on. */
static int module(program *p, unsigned i) {
    const eeasr_img_segment *g = &p->m->seg[i];
    stream_to(p, g);
    int rc = invoke(p, i, p->b->stream, NULL, p->b->stream);
    p->scale = g->hidden_scale;
    p->zero_point = g->hidden_zero_point;
    p->out->modules_run++;
    return rc;
}

int eeasr_gated_run(const eeasr_model_image *m, double threshold, const int8_t *feats, int32_t n_frames,
                    eeasr_segment_fn run, void *ctx, const eeasr_gated_buffers *b, eeasr_gated_out *out) {
    const eeasr_img_program *prog = &m->program;
    memset(out, 0, sizeof *out);
    uint32_t t = (uint32_t)n_frames;
    for (unsigned s = m->subsampling; s > 1; s >>= 1) t = (t + 1) / 2; /* each stride-2 layer: ceil(n / 2) */
    out->t_valid = t;
    out->n_modules = prog->n_modules;
    program p = {m, run, ctx, b, out, n_frames, m->seg[prog->front].hidden_scale,
                 m->seg[prog->front].hidden_zero_point};
    /* decided[2 (layer - 1) + module]: every layer's for a global predictor, the device's for a local one */
    uint8_t decided[EEASR_MAX_MODULES] = {0};
    int rc = invoke(&p, prog->front, feats, NULL, b->stream);
    if (rc == 0 && prog->predictor != EEASR_IMG_NO_SEGMENT) rc = predict(&p, prog->predictor, threshold, decided);
    for (unsigned l = 0; rc == 0 && l < prog->device_layers; l++) {
        const eeasr_img_layer *e = &prog->layer[l];
        if (e->predictor != EEASR_IMG_NO_SEGMENT) rc = predict(&p, e->predictor, threshold, decided + 2 * l);
        const uint8_t steps[2] = {e->mha, e->ffn};
        for (unsigned k = 0; rc == 0 && k < 2; k++) {
            if (!decided[2 * l + k]) continue;
            rc = module(&p, steps[k]);
            out->modules[(2 * l + k) / 8] |= (uint8_t)(1u << ((2 * l + k) % 8));
        }
    }
    if (rc != 0) return rc;
    /* a global predictor's decisions for the server's layers go with the handoff */
    for (unsigned i = 2u * prog->device_layers; i < prog->n_modules; i++)
        if (decided[i]) out->modules[i / 8] |= (uint8_t)(1u << (i % 8));
    stream_to(&p, &m->seg[prog->head]);
    return invoke(&p, prog->head, b->stream, b->logits, NULL);
}
