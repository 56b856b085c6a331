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
    unsigned k = m->device_exits;
    if (k == 0 || k > m->n_exits || m->n_exits > 16)
        return fail(err, err_len, "model image: %u device exits of %u", k, m->n_exits);
    if (m->default_measure > 1 && m->default_measure != EEASR_MEASURE_NONE)
        return fail(err, err_len, "model image: unknown exit measure %u", m->default_measure);
    if (m->window == 0 || m->d_model == 0 || m->vocab == 0 || m->n_mels == 0 || m->subsampling == 0 ||
        m->encoder_frames != m->window / m->subsampling)
        return fail(err, err_len, "model image: inconsistent shape (W %u, encoder frames %u, subsampling %u)",
                    m->window, m->encoder_frames, m->subsampling);
    if (!(m->feature_scale > 0.0f) || !(m->handoff_scale > 0.0f))
        return fail(err, err_len, "model image: non-positive quantization scale");
    if (!inside(table, (uint64_t)k * EEASR_IMG_SEGMENT_BYTES, size) || norm % 4 ||
        !inside(norm, 8ull * m->n_mels, size) || !inside(gold, gold_bytes, size) || gold_bytes < GOLD_HEAD + k * GOLD_SEG)
        return fail(err, err_len, "model image: a block lies outside the image");
    m->norm_mean = (const float *)(const void *)(d + norm);
    m->norm_std = m->norm_mean + m->n_mels;

    for (unsigned i = 0; i < k; i++) {
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
        g->crc = rd32(s + 52);
        if (g->front != (i == 0) || g->arena_bytes == 0 || g->exit_index == 0)
            return fail(err, err_len, "model image: segment %u table entry is inconsistent", i + 1);
        if (check_crc && eeasr_crc32(0, g->tflite, len) != g->crc)
            return fail(err, err_len, "model image: segment %s CRC-32 mismatch", g->name);
    }

    const uint8_t *gh = d + gold;
    eeasr_img_golden *gv = &m->golden;
    if (memcmp(gh, "EEGV", 4) != 0 || rd32(gh + 4) != 1 || gh[23] != k)
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
    for (unsigned i = 0; i < k; i++) {
        const uint8_t *e = gh + GOLD_HEAD + i * GOLD_SEG;
        uint32_t h = rd32(e), l = rd32(e + 4);
        if (!inside(h, (uint64_t)m->encoder_frames * m->d_model, size) ||
            !inside(l, (uint64_t)gv->t_valid * m->vocab, size))
            return fail(err, err_len, "model image: golden outputs of segment %u out of bounds", i + 1);
        gv->seg[i].hidden = (const int8_t *)(d + h);
        gv->seg[i].logits = (const int8_t *)(d + l);
        gv->seg[i].entropy = rdf(e + 8);
        gv->seg[i].nonblank_entropy = rdf(e + 12);
    }
    return 0;
}
