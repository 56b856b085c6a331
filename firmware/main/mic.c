#include "mic.h"

#include "driver/i2s_std.h"
#include "esp_heap_caps.h"
#include "esp_log.h"
#include "freertos/task.h"
#include "sdkconfig.h"

#if CONFIG_EEASR_BOARD_BOX3
#include "driver/i2c_master.h"
#include "esp_codec_dev.h"
#include "esp_codec_dev_defaults.h"
#endif

static const char *TAG = "eeasr.mic";

#define SAMPLE_RATE 16000
#define BLOCK 256 /* samples per read: 16 ms */

static RingbufHandle_t s_ring;
static i2s_chan_handle_t s_rx;
static volatile uint32_t s_dropped;

static void push(const int16_t *pcm, size_t n) {
    if (xRingbufferSend(s_ring, pcm, n * sizeof(int16_t), 0) != pdTRUE) s_dropped += n;
}

static int i2s_open(i2s_data_bit_width_t bits, i2s_slot_mode_t mode) {
    i2s_chan_config_t chan = I2S_CHANNEL_DEFAULT_CONFIG(I2S_NUM_AUTO, I2S_ROLE_MASTER);
    chan.dma_desc_num = 6;
    chan.dma_frame_num = BLOCK;
    if (i2s_new_channel(&chan, NULL, &s_rx) != ESP_OK) return -1;
    i2s_std_config_t std = {
        .clk_cfg = I2S_STD_CLK_DEFAULT_CONFIG(SAMPLE_RATE),
        .slot_cfg = I2S_STD_PHILIPS_SLOT_DEFAULT_CONFIG(bits, mode),
        .gpio_cfg = {
            .mclk = CONFIG_EEASR_I2S_MCLK_GPIO < 0 ? I2S_GPIO_UNUSED : (gpio_num_t)CONFIG_EEASR_I2S_MCLK_GPIO,
            .bclk = (gpio_num_t)CONFIG_EEASR_I2S_BCLK_GPIO,
            .ws = (gpio_num_t)CONFIG_EEASR_I2S_WS_GPIO,
            .dout = I2S_GPIO_UNUSED,
            .din = (gpio_num_t)CONFIG_EEASR_I2S_DIN_GPIO,
            .invert_flags = {.mclk_inv = false, .bclk_inv = false, .ws_inv = false},
        },
    };
    if (mode == I2S_SLOT_MODE_MONO) std.slot_cfg.slot_mask = I2S_STD_SLOT_LEFT; /* INMP441 L/R tied to GND */
    if (i2s_channel_init_std_mode(s_rx, &std) != ESP_OK) return -1;
    return 0;
}

#if CONFIG_EEASR_BOARD_BOX3
static esp_codec_dev_handle_t s_codec;

static int open_box3(void) {
    if (i2s_open(I2S_DATA_BIT_WIDTH_16BIT, I2S_SLOT_MODE_STEREO) != 0) return -1;
    i2c_master_bus_handle_t bus;
    const i2c_master_bus_config_t i2c = {
        .i2c_port = I2C_NUM_0,
        .sda_io_num = CONFIG_EEASR_I2C_SDA_GPIO,
        .scl_io_num = CONFIG_EEASR_I2C_SCL_GPIO,
        .clk_source = I2C_CLK_SRC_DEFAULT,
        .glitch_ignore_cnt = 7,
        .flags.enable_internal_pullup = true,
    };
    if (i2c_new_master_bus(&i2c, &bus) != ESP_OK) return -1;
    const audio_codec_i2s_cfg_t i2s_cfg = {.port = I2S_NUM_0, .rx_handle = s_rx, .tx_handle = NULL};
    const audio_codec_data_if_t *data_if = audio_codec_new_i2s_data(&i2s_cfg);
    const audio_codec_i2c_cfg_t ctrl_cfg = {.port = I2C_NUM_0, .addr = ES7210_CODEC_DEFAULT_ADDR, .bus_handle = bus};
    const audio_codec_ctrl_if_t *ctrl_if = audio_codec_new_i2c_ctrl(&ctrl_cfg);
    es7210_codec_cfg_t es7210 = {.ctrl_if = ctrl_if, .mic_selected = ES7120_SEL_MIC1 | ES7120_SEL_MIC2};
    const audio_codec_if_t *codec_if = es7210_codec_new(&es7210);
    if (data_if == NULL || ctrl_if == NULL || codec_if == NULL) return -1;
    const esp_codec_dev_cfg_t dev_cfg = {.dev_type = ESP_CODEC_DEV_TYPE_IN, .codec_if = codec_if, .data_if = data_if};
    s_codec = esp_codec_dev_new(&dev_cfg);
    esp_codec_dev_sample_info_t fs = {.bits_per_sample = 16, .channel = 2, .sample_rate = SAMPLE_RATE};
    if (s_codec == NULL || esp_codec_dev_open(s_codec, &fs) != ESP_CODEC_DEV_OK) return -1;
    esp_codec_dev_set_in_gain(s_codec, (float)CONFIG_EEASR_MIC_GAIN_DB);
    return 0;
}

static void mic_task(void *arg) {
    (void)arg;
    static int16_t stereo[2 * BLOCK], mono[BLOCK];
    for (;;) {
        if (esp_codec_dev_read(s_codec, stereo, sizeof stereo) != ESP_CODEC_DEV_OK) continue;
        for (int i = 0; i < BLOCK; i++) mono[i] = stereo[2 * i]; /* microphone 1, left slot */
        push(mono, BLOCK);
    }
}
#else
static void mic_task(void *arg) {
    (void)arg;
    /* INMP441: 24-bit two's complement, MSB first, left-justified in a 32-bit slot. The top 16 bits are the
       int16 sample at 0 dB; each 6 dB of gain shifts one more bit in, saturating. */
    const int shift = 16 - CONFIG_EEASR_MIC_GAIN_DB / 6;
    static int32_t raw[BLOCK];
    static int16_t pcm[BLOCK];
    for (;;) {
        size_t got = 0;
        if (i2s_channel_read(s_rx, raw, sizeof raw, &got, portMAX_DELAY) != ESP_OK) continue;
        size_t n = got / sizeof(int32_t);
        for (size_t i = 0; i < n; i++) {
            int32_t v = raw[i] >> shift;
            pcm[i] = (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : v);
        }
        push(pcm, n);
    }
}
#endif

int eeasr_mic_start(RingbufHandle_t *ring) {
    size_t bytes = (size_t)CONFIG_EEASR_MIC_RING_SECONDS * SAMPLE_RATE * sizeof(int16_t);
    s_ring = xRingbufferCreateWithCaps(bytes, RINGBUF_TYPE_BYTEBUF, MALLOC_CAP_SPIRAM);
    if (s_ring == NULL) {
        ESP_LOGE(TAG, "no PSRAM for the %u-byte microphone ring", (unsigned)bytes);
        return -1;
    }
#if CONFIG_EEASR_BOARD_BOX3
    int ok = open_box3(); /* esp_codec_dev_open enables the I2S channel */
#else
    int ok = i2s_open(I2S_DATA_BIT_WIDTH_32BIT, I2S_SLOT_MODE_MONO) == 0 && i2s_channel_enable(s_rx) == ESP_OK ? 0 : -1;
#endif
    if (ok != 0) {
        ESP_LOGE(TAG, "microphone init failed: check the I2S pins in menuconfig (eeasr > Microphone)");
        return -1;
    }
    *ring = s_ring;
    return xTaskCreatePinnedToCore(mic_task, "eeasr_mic", 4096, NULL, 10, NULL, 0) == pdPASS ? 0 : -1;
}

uint32_t eeasr_mic_dropped(void) { return s_dropped; }
