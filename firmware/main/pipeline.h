/* The device program on live audio (docs/protocol.md "Utterances and windows"): audio from the microphone or
   from the host's AUDIO frames, endpointing, the streaming log-mel front end and int8 features, windows of W
   frames cut at the quietest frame, the image's program (early-exit segments with the exit policy, or a gated
   program whose modules run when their gate opens, then the policy at its head; the image's thresholds and
   beta), RESULT and HANDOFF frames (a gated program's with its module mask); commands SELF_TEST, PROFILE and
   RESET. One task (CONFIG_EEASR_PIPELINE_CORE) owns all of
   it, so the model never runs twice at once. */
#ifndef EEASR_MAIN_PIPELINE_H
#define EEASR_MAIN_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "eeasr_core/protocol.h"
#include "freertos/FreeRTOS.h"
#include "freertos/ringbuf.h"
#include "model_image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* mic may be NULL (no microphone: host audio only); firmware names the build in INFO reports. 0, or -1. */
int eeasr_pipeline_start(const eeasr_model_image *m, RingbufHandle_t mic, const char *firmware);

/* From the link's receive task (a decoded, checked AUDIO frame). 0 queued; -1 no free slot: the host sent more
   than 8 AUDIO frames without waiting for their ACKs. */
int eeasr_pipeline_post_audio(uint16_t seq, const eeasr_audio *audio);
int eeasr_pipeline_post_command(uint16_t seq, uint8_t command);

#ifdef __cplusplus
}
#endif

#endif
