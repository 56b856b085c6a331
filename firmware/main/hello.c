#include "hello.h"

#include <string.h>

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int eeasr_hex8(const char *hex, uint8_t out[8]) {
    for (int i = 0; i < 8; i++) {
        int hi = hexval(hex[2 * i]), lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

int eeasr_hello_from_image(const eeasr_model_image *m, const char *firmware, uint8_t layers[EEASR_IMG_MAX_SEGMENTS],
                           eeasr_hello *out) {
    memset(out, 0, sizeof *out);
    if (eeasr_hex8(m->model_hash, out->model_hash) || eeasr_hex8(m->bundle_id, out->bundle_id) ||
        eeasr_hex8(m->feature_hash, out->feature_hash))
        return -1;
    unsigned n = 0; /* the device's exits: every early-exit segment's, a gated program's head */
    for (unsigned i = 0; i < m->n_segments; i++)
        if (m->seg[i].exit_index != 0) layers[n++] = m->seg[i].exit_layer;
    out->sample_rate = m->sample_rate;
    out->window = m->window;
    out->subsampling = m->subsampling;
    out->d_model = m->d_model;
    out->vocab = m->vocab;
    out->n_exits = (uint8_t)n; /* as eeasr.protocol.Hello.exit_layers */
    out->exit_layers = layers;
    out->firmware = firmware;
    out->firmware_len = strlen(firmware);
    return 0;
}
