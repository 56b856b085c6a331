/* COMMAND SELF_TEST and PROFILE (docs/protocol.md): INFO JSON built on the device.
   SELF_TEST runs the golden vectors of the model image: the log-mel front end on the PCM clip against the
   reference int8 features, and each segment on its golden input against the int8 hidden state and logits the
   x86 TFLM interpreter produced, with the exit measures; per check pass/fail and the largest error.
   PROFILE reports cycles and microseconds per segment, heap free and high-water marks per memory type, where
   the arena and the weights live: the figures that replace the modelled ones of convert/cost.py. */
#ifndef EEASR_MAIN_SELFTEST_H
#define EEASR_MAIN_SELFTEST_H

#include <stddef.h>

#include "model_image.h"
#include "work.h"

#ifdef __cplusplus
extern "C" {
#endif

/* INFO JSON in the schema `eeasr-host device-info` reads (the simulated device's, with "simulated": false). */
size_t eeasr_selftest_json(const eeasr_model_image *m, eeasr_work *w, const char *firmware, char *out, size_t cap);
size_t eeasr_profile_json(const eeasr_model_image *m, const eeasr_counters *c, const char *firmware, char *out,
                          size_t cap);

#ifdef __cplusplus
}
#endif

#endif
