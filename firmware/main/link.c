#include "link.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "esp_heap_caps.h"
#include "esp_log.h"
#include "freertos/FreeRTOS.h"
#include "freertos/semphr.h"
#include "freertos/task.h"
#include "sdkconfig.h"

#if CONFIG_EEASR_LINK_USB_SERIAL_JTAG
#include "driver/usb_serial_jtag.h"
#else
#include "driver/uart.h"
#endif

static const char *TAG = "eeasr.link";

/* The largest frame the device accepts is AUDIO (docs/protocol.md): 4096 samples. A longer run is dropped
   by the decoder without being buffered. */
#define RX_CAP EEASR_COBS_MAX(EEASR_FRAME_SIZE(EEASR_AUDIO_FIXED + 2 * EEASR_MAX_AUDIO_SAMPLES))
#define TX_CAP EEASR_ENCODED_MAX(EEASR_MAX_PAYLOAD)
#define WRITE_TIMEOUT pdMS_TO_TICKS(2000)

static SemaphoreHandle_t s_tx_lock, s_payload_lock;
static uint8_t *s_tx;      /* encoded frame */
static uint8_t *s_payload; /* payload under construction */
static uint16_t s_seq;
static eeasr_link_on_frame s_on_frame;

static void *alloc_big(size_t n) {
    void *p = heap_caps_malloc(n, MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT);
    return p != NULL ? p : heap_caps_malloc(n, MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
}

static int port_write(const uint8_t *p, size_t n) {
#if CONFIG_EEASR_LINK_USB_SERIAL_JTAG
    /* Writes as much as the driver's ring takes within the timeout; loop until all of it is out. */
    while (n > 0) {
        int w = usb_serial_jtag_write_bytes(p, n, WRITE_TIMEOUT);
        if (w <= 0) return -1; /* no host reading the port: the frame is lost, as on an unplugged cable */
        p += w;
        n -= (size_t)w;
    }
    return 0;
#else
    return uart_write_bytes(CONFIG_EEASR_LINK_UART_NUM, p, n) == (int)n ? 0 : -1;
#endif
}

static int port_read(uint8_t *p, size_t n) {
#if CONFIG_EEASR_LINK_USB_SERIAL_JTAG
    return usb_serial_jtag_read_bytes(p, n, pdMS_TO_TICKS(100));
#else
    return uart_read_bytes(CONFIG_EEASR_LINK_UART_NUM, p, n, pdMS_TO_TICKS(100));
#endif
}

int eeasr_link_init(void) {
#if CONFIG_EEASR_LINK_USB_SERIAL_JTAG
    usb_serial_jtag_driver_config_t cfg = USB_SERIAL_JTAG_DRIVER_CONFIG_DEFAULT();
    cfg.rx_buffer_size = 16 * 1024;
    cfg.tx_buffer_size = 16 * 1024;
    if (usb_serial_jtag_driver_install(&cfg) != ESP_OK) return -1;
#else
    const uart_config_t cfg = {
        .baud_rate = CONFIG_EEASR_LINK_BAUD,
        .data_bits = UART_DATA_8_BITS,
        .parity = UART_PARITY_DISABLE,
        .stop_bits = UART_STOP_BITS_1,
        .flow_ctrl = UART_HW_FLOWCTRL_DISABLE,
        .source_clk = UART_SCLK_DEFAULT,
    };
    if (uart_driver_install(CONFIG_EEASR_LINK_UART_NUM, 16 * 1024, 16 * 1024, 0, NULL, 0) != ESP_OK ||
        uart_param_config(CONFIG_EEASR_LINK_UART_NUM, &cfg) != ESP_OK ||
        uart_set_pin(CONFIG_EEASR_LINK_UART_NUM, CONFIG_EEASR_LINK_UART_TX_GPIO, CONFIG_EEASR_LINK_UART_RX_GPIO,
                     UART_PIN_NO_CHANGE, UART_PIN_NO_CHANGE) != ESP_OK)
        return -1;
#endif
    s_tx_lock = xSemaphoreCreateMutex();
    s_payload_lock = xSemaphoreCreateMutex();
    s_tx = alloc_big(TX_CAP);
    s_payload = alloc_big(EEASR_MAX_PAYLOAD);
    if (s_tx_lock == NULL || s_payload_lock == NULL || s_tx == NULL || s_payload == NULL) return -1;
    static const uint8_t delimiter = 0;
    port_write(&delimiter, 1); /* garbage before it (ROM banner) becomes one rejected frame on the host */
    return 0;
}

int eeasr_link_send(uint8_t type, const uint8_t *payload, size_t n) {
    xSemaphoreTake(s_tx_lock, portMAX_DELAY);
    size_t len = 0;
    eeasr_reason r = eeasr_encode(type, s_seq, payload, n, s_tx, TX_CAP, &len);
    int rc = r == EEASR_OK ? port_write(s_tx, len) : -1;
    if (r == EEASR_OK) s_seq++; /* wraps at 65536 */
    xSemaphoreGive(s_tx_lock);
    if (r != EEASR_OK)
        ESP_LOGE(TAG, "message type %u (%u-byte payload) not sent: %s", type, (unsigned)n, eeasr_reason_str(r));
    return rc;
}

void eeasr_link_error(uint16_t code, const char *fmt, ...) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ESP_LOGW(TAG, "ERROR %u: %s", code, msg);
    const eeasr_error_msg e = {.code = code, .message_len = strlen(msg), .message = msg};
    uint8_t buf[2 + sizeof msg];
    size_t n = 0;
    if (eeasr_pack_error(&e, buf, sizeof buf, &n) == EEASR_OK) eeasr_link_send(EEASR_MSG_ERROR, buf, n);
}

uint8_t *eeasr_link_payload_acquire(size_t *cap) {
    xSemaphoreTake(s_payload_lock, portMAX_DELAY);
    *cap = EEASR_MAX_PAYLOAD;
    return s_payload;
}

void eeasr_link_payload_release(void) { xSemaphoreGive(s_payload_lock); }

static void rx_task(void *arg) {
    (void)arg;
    static uint8_t buf[RX_CAP]; /* internal RAM: the decoder touches every byte */
    static uint8_t chunk[512];
    eeasr_decoder dec;
    eeasr_decoder_init(&dec, buf, sizeof buf);
    for (;;) {
        int n = port_read(chunk, sizeof chunk);
        const uint8_t *p = chunk;
        size_t left = n > 0 ? (size_t)n : 0;
        while (left > 0) {
            size_t used = 0;
            eeasr_decoded ev;
            if (eeasr_decoder_feed(&dec, p, left, &used, &ev)) {
                if (ev.reason == EEASR_OK)
                    s_on_frame(&ev.msg);
                else
                    eeasr_link_error(EEASR_ERROR_BAD_FRAME, "%s", eeasr_reason_str(ev.reason));
            }
            p += used;
            left -= used;
        }
    }
}

int eeasr_link_start_rx(eeasr_link_on_frame on_frame) {
    s_on_frame = on_frame;
    return xTaskCreatePinnedToCore(rx_task, "eeasr_rx", 6144, NULL, 6, NULL, 0) == pdPASS ? 0 : -1;
}
