#include "model_image.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "eeasr_core/protocol.h"

/* Golden block: 32-byte head, then 16 bytes per segment (convert/model_image.py _GOLD, _GOLD_SEG). */
#define GOLD_HEAD 32u
#define GOLD_SEG 16u

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static int32_t rdi32(const uint8_t *p) { return (int32_t)rd32(p); }
static float rdf(const uint8_t *p) {
    uint32_t u = rd32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static double rdf64(const uint8_t *p) {
    uint64_t u = (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
    double f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int fail(char *err, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
}

/* [off, off + n) lies inside the image (no overflow). */
static int inside(uint32_t off, uint64_t n, uint32_t size) { return (uint64_t)off + n <= size; }

static void copy_text(char *dst, const uint8_t *src, size_t n) {
    memcpy(dst, src, n);
    dst[n] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (dst[i] == '\0') break;
        if (dst[i] < 0x20 || dst[i] > 0x7e) dst[i] = '?';
    }
}

/* Segment i is the gated program's step (role, layer), its table entry consistent with that step. */
static int is_step(const eeasr_model_image *m, unsigned i, uint8_t role, unsigned layer) {
    const eeasr_img_segment *g = &m->seg[i];
    const eeasr_img_program *p = &m->program;
    const unsigned gates = role != EEASR_ROLE_PREDICTOR ? 0u
                           : p->predictor_kind == EEASR_PREDICTOR_GLOBAL ? 2u * p->n_layers : 2u;
    const int head = role == EEASR_ROLE_HEAD;
    return i < m->n_segments && g->role == role && g->layer == layer && g->n_gates == gates &&
           g->exit_index == (head ? m->device_exits : 0) && g->exit_layer == (head ? p->device_layers : 0) &&
           !g->requant && g->front == (role == EEASR_ROLE_FRONT) && (g->hidden_scale > 0.0f) == !head &&
           (g->logits_scale > 0.0f) == head && g->in_scale > 0.0f;
}

/* Segment *i must be the step (role, layer): its index goes to *index and *i moves on. */
static int step(const eeasr_model_image *m, unsigned *i, uint8_t role, unsigned layer, uint8_t *index) {
    if (!is_step(m, *i, role, layer)) return 0;
    *index = (uint8_t)(*i)++;
    return 1;
}

/* A gated program's table is in program order: front, the global predictor, per device layer [its local
   predictor,] attention, feed-forward, then the head (the device's exit, at its last layer). */
static int check_gated(eeasr_model_image *m, char *err, size_t len) {
    eeasr_img_program *p = &m->program;
    const int global = p->predictor_kind == EEASR_PREDICTOR_GLOBAL;
    const unsigned n_l = p->device_layers;
    if (p->predictor_kind > EEASR_PREDICTOR_LOCAL || n_l == 0 || n_l > p->n_layers || n_l > EEASR_IMG_MAX_LAYERS ||
        p->n_modules != 2u * (global ? p->n_layers : n_l) || m->handoff_layer != n_l ||
        !(p->beta >= 0.0 && p->beta <= 1.0) || m->n_segments != (global ? 2 * n_l + 3 : 3 * n_l + 2))
        return fail(err, len, "model image: gated program of %u device layers of %u, %u modules, %u segments, "
                    "predictor kind %u: inconsistent", n_l, p->n_layers, p->n_modules, m->n_segments,
                    p->predictor_kind);
    unsigned i = 0;
    p->predictor = EEASR_IMG_NO_SEGMENT;
    int ok = step(m, &i, EEASR_ROLE_FRONT, 0, &p->front) &&
             (!global || step(m, &i, EEASR_ROLE_PREDICTOR, 0, &p->predictor));
    for (unsigned l = 1; ok && l <= n_l; l++) {
        eeasr_img_layer *e = &p->layer[l - 1];
        e->predictor = EEASR_IMG_NO_SEGMENT;
        ok = (global || step(m, &i, EEASR_ROLE_PREDICTOR, l, &e->predictor)) &&
             step(m, &i, EEASR_ROLE_MHA, l, &e->mha) && step(m, &i, EEASR_ROLE_FFN, l, &e->ffn);
    }
    if (!(ok && step(m, &i, EEASR_ROLE_HEAD, n_l, &p->head)))
        return fail(err, len, "model image: gated program: segment %u (%s) is not the program's next step", i + 1,
                    m->seg[i].name);
    return 0;
}

uint32_t eeasr_model_image_size(const uint8_t *h, size_t avail) {
    if (avail < EEASR_IMG_HEADER_BYTES || memcmp(h, EEASR_IMG_MAGIC, 8) != 0) return 0;
    return rd32(h + 12);
}

int eeasr_model_image_parse(const uint8_t *d, size_t avail, int check_crc, eeasr_model_image *m, char *err,
                            size_t err_len) {
    memset(m, 0, sizeof *m);
    if (avail < EEASR_IMG_HEADER_BYTES) return fail(err, err_len, "model partition smaller than the image header");
    if (memcmp(d, EEASR_IMG_MAGIC, 8) != 0)
        return fail(err, err_len, "no model image in the partition (bad magic): run make flash-model");
    if (rd16(d + 8) != EEASR_IMG_VERSION)
        return fail(err, err_len, "model image version %u, this firmware reads version %d: rebuild the image",
                    rd16(d + 8), EEASR_IMG_VERSION);
    if (rd16(d + 10) != EEASR_IMG_HEADER_BYTES) return fail(err, err_len, "model image header size %u", rd16(d + 10));
    if (eeasr_crc32(0, d, EEASR_IMG_HEADER_BYTES - 4) != rd32(d + EEASR_IMG_HEADER_BYTES - 4))
        return fail(err, err_len, "model image header CRC-32 mismatch: the partition is corrupt");
    uint32_t size = rd32(d + 12);
    if (size < EEASR_IMG_HEADER_BYTES || size > avail)
        return fail(err, err_len, "model image of %u bytes does not fit the %u-byte partition", (unsigned)size,
                    (unsigned)avail);
    if (check_crc && eeasr_crc32(0, d + EEASR_IMG_HEADER_BYTES, size - EEASR_IMG_HEADER_BYTES) != rd32(d + 16))
        return fail(err, err_len, "model image CRC-32 mismatch: the partition is corrupt, flash it again");
    m->base = d;
    m->size = size;
    copy_text(m->model_hash, d + 20, 16);
    copy_text(m->bundle_id, d + 36, 32);
    copy_text(m->feature_hash, d + 68, 16);
    m->sample_rate = rd32(d + 84);
    m->window = rd16(d + 88);
    m->encoder_frames = rd16(d + 90);
    m->d_model = rd16(d + 92);
    m->vocab = rd16(d + 94);
    m->n_mels = rd16(d + 96);
    m->subsampling = d[98];
    m->n_exits = d[99];
    m->device_exits = d[100];
    m->blank = d[101];
    m->default_measure = d[102];
    m->handoff_layer = d[103];
    memcpy(m->exit_layers, d + 104, 16);
    m->threshold[0] = rdf(d + 120);
    m->threshold[1] = rdf(d + 124);
    m->feature_scale = rdf(d + 128);
    m->feature_zero_point = rdi32(d + 132);
    m->handoff_scale = rdf(d + 136);
    m->handoff_zero_point = rdi32(d + 140);
    m->arena_bytes = rd32(d + 144);
    uint32_t norm = rd32(d + 148), table = rd32(d + 152), gold = rd32(d + 156), gold_bytes = rd32(d + 160);
    eeasr_img_program *p = &m->program;
    p->kind = d[164];
    m->n_segments = d[165];
    p->predictor_kind = d[166];
    p->n_layers = d[167];
    p->device_layers = d[168];
    p->n_modules = d[169];
    p->beta = rdf64(d + 172);
    const int gated = p->kind == EEASR_PROGRAM_GATED;
    unsigned k = m->device_exits, n_seg = m->n_segments;
    if (k == 0 || k > m->n_exits || m->n_exits > 16)
        return fail(err, err_len, "model image: %u device exits of %u", k, m->n_exits);
    if (p->kind > EEASR_PROGRAM_GATED || n_seg == 0 || n_seg > EEASR_IMG_MAX_SEGMENTS ||
        (!gated && (n_seg != k || p->predictor_kind != EEASR_PREDICTOR_NONE || p->n_modules != 0)))
        return fail(err, err_len, "model image: program kind %u with %u segments for %u device exits", p->kind, n_seg,
                    k);
    if (m->default_measure > 1 && m->default_measure != EEASR_MEASURE_NONE)
        return fail(err, err_len, "model image: unknown exit measure %u", m->default_measure);
    if (m->window == 0 || m->d_model == 0 || m->vocab == 0 || m->n_mels == 0 || m->subsampling == 0 ||
        m->encoder_frames != m->window / m->subsampling)
        return fail(err, err_len, "model image: inconsistent shape (W %u, encoder frames %u, subsampling %u)",
                    m->window, m->encoder_frames, m->subsampling);
    if (!(m->feature_scale > 0.0f) || !(m->handoff_scale > 0.0f))
        return fail(err, err_len, "model image: non-positive quantization scale");
    if (!inside(table, (uint64_t)n_seg * EEASR_IMG_SEGMENT_BYTES, size) || norm % 4 ||
        !inside(norm, 8ull * m->n_mels, size) || !inside(gold, gold_bytes, size) ||
        gold_bytes < GOLD_HEAD + n_seg * GOLD_SEG)
        return fail(err, err_len, "model image: a block lies outside the image");
    m->norm_mean = (const float *)(const void *)(d + norm);
    m->norm_std = m->norm_mean + m->n_mels;

    for (unsigned i = 0; i < n_seg; i++) {
        const uint8_t *s = d + table + i * EEASR_IMG_SEGMENT_BYTES;
        eeasr_img_segment *g = &m->seg[i];
        copy_text(g->name, s, 8);
        uint32_t off = rd32(s + 8), len = rd32(s + 12);
        if (off % 16 || len == 0 || !inside(off, len, size))
            return fail(err, err_len, "model image: segment %u at %u+%u is misaligned or out of bounds", i + 1,
                        (unsigned)off, (unsigned)len);
        g->tflite = d + off;
        g->tflite_len = len;
        g->arena_bytes = rd32(s + 16);
        g->exit_index = s[20];
        g->exit_layer = s[21];
        g->first_block = s[22];
        g->last_block = s[23];
        g->in_scale = rdf(s + 24);
        g->in_zero_point = rdi32(s + 28);
        g->hidden_scale = rdf(s + 32);
        g->hidden_zero_point = rdi32(s + 36);
        g->logits_scale = rdf(s + 40);
        g->logits_zero_point = rdi32(s + 44);
        g->front = s[48];
        g->requant = s[49];
        g->role = s[50];
        g->takes_count = s[51];
        g->crc = rd32(s + 52);
        g->layer = s[56];
        g->n_gates = rd16(s + 58);
        const int role_ok = gated ? g->role >= EEASR_ROLE_FRONT && g->role <= EEASR_ROLE_HEAD
                                  : g->role == EEASR_ROLE_SEGMENT && g->front == (i == 0) && g->exit_index != 0;
        if (!role_ok || g->arena_bytes == 0)
            return fail(err, err_len, "model image: segment %u table entry is inconsistent", i + 1);
        if (check_crc && eeasr_crc32(0, g->tflite, len) != g->crc)
            return fail(err, err_len, "model image: segment %s CRC-32 mismatch", g->name);
    }

    if (gated && check_gated(m, err, err_len) != 0) return -1;

    const uint8_t *gh = d + gold;
    eeasr_img_golden *gv = &m->golden;
    if (memcmp(gh, "EEGV", 4) != 0 || rd32(gh + 4) != 1 || gh[23] != n_seg)
        return fail(err, err_len, "model image: golden vectors missing or of another version");
    gv->n_samples = rd32(gh + 8);
    gv->n_frames = rd32(gh + 12);
    gv->t_valid = rd32(gh + 16);
    gv->hidden_tol = gh[20];
    gv->logits_tol = gh[21];
    gv->feature_tol = gh[22];
    uint32_t pcm = rd32(gh + 24), feats = rd32(gh + 28);
    if (gv->n_frames > m->window || gv->t_valid > m->encoder_frames || pcm % 2 ||
        !inside(pcm, 2ull * gv->n_samples, size) || !inside(feats, (uint64_t)gv->n_frames * m->n_mels, size))
        return fail(err, err_len, "model image: golden clip out of bounds");
    gv->pcm = (const int16_t *)(const void *)(d + pcm);
    gv->feats = (const int8_t *)(d + feats);
    for (unsigned i = 0; i < n_seg; i++) {
        const uint8_t *e = gh + GOLD_HEAD + i * GOLD_SEG;
        const uint8_t role = m->seg[i].role;
        uint32_t h = rd32(e), l = rd32(e + 4);
        /* its output (a predictor's margins, none for a gated head) and its exit head's logits; absent: offset 0 */
        uint64_t h_len = role == EEASR_ROLE_PREDICTOR ? m->seg[i].n_gates
                         : role == EEASR_ROLE_HEAD    ? 0
                                                      : (uint64_t)m->encoder_frames * m->d_model;
        uint64_t l_len = role == EEASR_ROLE_SEGMENT || role == EEASR_ROLE_HEAD ? (uint64_t)gv->t_valid * m->vocab : 0;
        if ((h_len ? !inside(h, h_len, size) : h != 0) || (l_len ? !inside(l, l_len, size) : l != 0))
            return fail(err, err_len, "model image: golden outputs of segment %u out of bounds", i + 1);
        gv->seg[i].hidden = h_len ? (const int8_t *)(d + h) : NULL;
        gv->seg[i].logits = l_len ? (const int8_t *)(d + l) : NULL;
        gv->seg[i].entropy = rdf(e + 8);
        gv->seg[i].nonblank_entropy = rdf(e + 12);
    }
    return 0;
}
