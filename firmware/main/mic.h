/* The board's microphone as a stream of 16 kHz int16 samples in a ring buffer (PSRAM): ESP32-S3-DevKitC-1
   with an INMP441 (I2S standard mode, 32-bit slots carrying 24-bit samples, left slot) or the
   ESP32-S3-BOX-3's ES7210 ADC (esp_codec_dev). A task on core 0 reads it; the pipeline drains the ring. */
#ifndef EEASR_MAIN_MIC_H
#define EEASR_MAIN_MIC_H

#include <stdint.h>

#include "freertos/FreeRTOS.h"
#include "freertos/ringbuf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Start the microphone; *ring receives the byte ring of int16 samples. 0, or -1 (logged). */
int eeasr_mic_start(RingbufHandle_t *ring);

/* Samples dropped because the ring was full (the pipeline fell behind real time). */
uint32_t eeasr_mic_dropped(void);

#ifdef __cplusplus
}
#endif

#endif
