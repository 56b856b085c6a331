/* The HELLO a device sends (docs/protocol.md) from what its model partition holds; the framing and the
   payload layout are eeasr_core's (eeasr_core/protocol.h). Portable C: the tests compile it natively. */
#ifndef EEASR_MAIN_HELLO_H
#define EEASR_MAIN_HELLO_H

#include <stdint.h>

#include "eeasr_core/protocol.h"
#include "model_image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 16 hex digits -> 8 bytes (the protocol's hash form); -1 if hex is not that. */
int eeasr_hex8(const char *hex, uint8_t out[8]);

/* HELLO fields for the model image: its hashes, shape and the device's exit layers (every segment's of an
   early-exit program, the head's of a gated one; written to layers, which the message points at). 0, or -1 when a hash in the image is not hexadecimal. */
int eeasr_hello_from_image(const eeasr_model_image *m, const char *firmware, uint8_t layers[EEASR_IMG_MAX_SEGMENTS],
                           eeasr_hello *out);

#ifdef __cplusplus
}
#endif

#endif
