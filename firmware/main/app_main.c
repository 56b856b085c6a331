/* eeasr on the ESP32-S3: start-up and the dispatch of frames from the host.

   Order: the serial link (so every failure below can be reported), the model partition (mmapped, verified,
   matched against the build), the segment runner (arena, op resolver), the microphone, the pipeline task,
   the receive task; then HELLO, or an ERROR that names what is wrong and is repeated for every command, so
   a host that attaches later learns it too. */
#include <stdio.h>

#include "eeasr_core/protocol.h"
#include "esp_log.h"
#include "hello.h"
#include "link.h"
#include "mic.h"
#include "model_partition.h"
#include "pipeline.h"
#include "sdkconfig.h"
#include "segment_runner.h"

static const char *TAG = "eeasr";

#if CONFIG_EEASR_BOARD_BOX3
#define BOARD "box3"
#else
#define BOARD "devkitc-n16r8"
#endif
#define FIRMWARE "eeasr-fw 0.1.0 (" BOARD ")"

static eeasr_model_image s_model;
static int s_ready;
static uint16_t s_error_code;
static char s_error[220];

static void send_hello(void) {
    uint8_t layers[EEASR_IMG_MAX_SEGMENTS];
    eeasr_hello h;
    size_t cap, n = 0;
    uint8_t *p = eeasr_link_payload_acquire(&cap);
    if (eeasr_hello_from_image(&s_model, FIRMWARE, layers, &h) == 0 && eeasr_pack_hello(&h, p, cap, &n) == EEASR_OK)
        eeasr_link_send(EEASR_MSG_HELLO, p, n);
    eeasr_link_payload_release();
}

static void on_frame(const eeasr_message *m) {
    if (!s_ready && (m->type == EEASR_MSG_COMMAND || m->type == EEASR_MSG_AUDIO)) {
        eeasr_link_error(s_error_code, "%s", s_error);
        return;
    }
    switch (m->type) {
    case EEASR_MSG_COMMAND:
        if (m->u.command.command == EEASR_CMD_HELLO)
            send_hello();
        else if (eeasr_pipeline_post_command(m->seq, m->u.command.command) != 0)
            eeasr_link_error(EEASR_ERROR_OVERFLOW, "command %u dropped: the device is busy", m->u.command.command);
        break;
    case EEASR_MSG_AUDIO:
        if (eeasr_pipeline_post_audio(m->seq, &m->u.audio) != 0)
            eeasr_link_error(EEASR_ERROR_OVERFLOW, "AUDIO frame %u dropped: more than 8 unacknowledged", m->seq);
        break;
    case EEASR_MSG_ERROR: /* the host's complaint: logged, never answered with another error */
        ESP_LOGW(TAG, "host error %u: %.*s", m->u.error.code, (int)m->u.error.message_len, m->u.error.message);
        break;
    default:
        eeasr_link_error(EEASR_ERROR_BAD_FRAME, "the device does not take message type 0x%02x", m->type);
    }
}

void app_main(void) {
    if (eeasr_link_init() != 0) {
        ESP_LOGE(TAG, "serial link init failed (check the eeasr > Serial link settings)");
        return;
    }
    s_error_code = EEASR_ERROR_MODEL_MISMATCH;
    if (eeasr_model_load(&s_model, s_error, sizeof s_error) == 0) {
        s_error_code = EEASR_ERROR_INTERNAL;
        if (eeasr_runner_init(&s_model, s_error, sizeof s_error) == 0) {
            RingbufHandle_t mic = NULL;
#if CONFIG_EEASR_MIC_ENABLED
            if (eeasr_mic_start(&mic) != 0) mic = NULL; /* host audio still works */
#endif
            if (eeasr_pipeline_start(&s_model, mic, FIRMWARE) == 0)
                s_ready = 1;
            else
                snprintf(s_error, sizeof s_error, "out of memory for the audio pipeline");
        }
    }
    if (eeasr_link_start_rx(on_frame) != 0) ESP_LOGE(TAG, "cannot start the receive task");
    if (s_ready) {
        send_hello();
        ESP_LOGI(TAG, "ready: model %s, %u device exit(s), arena in %s, weights in %s", s_model.model_hash,
                 s_model.device_exits, eeasr_runner_arena_where(), eeasr_runner_weights_where());
    } else {
        eeasr_link_error(s_error_code, "%s", s_error);
    }
}
