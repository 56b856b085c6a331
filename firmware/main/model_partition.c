#include "model_partition.h"

#include <stdio.h>
#include <string.h>

#include "build_info.h"
#include "eeasr_core/features.h"
#include "esp_log.h"
#include "esp_partition.h"

static const char *TAG = "eeasr.model";

int eeasr_model_load(eeasr_model_image *m, char *err, size_t err_len) {
    const esp_partition_t *part = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, ESP_PARTITION_SUBTYPE_ANY, "model");
    if (part == NULL) {
        snprintf(err, err_len, "no `model` partition in the partition table: flash the whole firmware (make flash)");
        return -1;
    }
    /* Map the header first to learn the image size, then only the image (not the whole partition): the S3's
       data MMU space is shared with PSRAM. */
    const void *ptr;
    esp_partition_mmap_handle_t handle;
    esp_err_t e = esp_partition_mmap(part, 0, EEASR_IMG_HEADER_BYTES, ESP_PARTITION_MMAP_DATA, &ptr, &handle);
    if (e != ESP_OK) {
        snprintf(err, err_len, "mmap of the model partition failed: %s", esp_err_to_name(e));
        return -1;
    }
    uint32_t size = eeasr_model_image_size(ptr, EEASR_IMG_HEADER_BYTES);
    esp_partition_munmap(handle);
    if (size == 0 || size > part->size) {
        snprintf(err, err_len, "the model partition holds no eeasr model image: run make flash-model");
        return -1;
    }
    e = esp_partition_mmap(part, 0, size, ESP_PARTITION_MMAP_DATA, &ptr, &handle);
    if (e != ESP_OK) {
        snprintf(err, err_len, "mmap of the %u-byte model image failed: %s", (unsigned)size, esp_err_to_name(e));
        return -1;
    }
    if (eeasr_model_image_parse(ptr, size, 1, m, err, err_len) != 0) {
        esp_partition_munmap(handle);
        return -1;
    }
    if (strcmp(m->model_hash, eeasr_build_model_hash()) != 0) {
        snprintf(err, err_len, "model partition holds model %s (bundle %.12s), this firmware was built for model %s: "
                 "flash-model a bundle of model %s, or make flash to rebuild", m->model_hash, m->bundle_id,
                 eeasr_build_model_hash(), eeasr_build_model_hash());
        esp_partition_munmap(handle);
        return -1;
    }
    if (strcmp(m->feature_hash, EEASR_FEATURE_HASH) != 0 || m->n_mels != EEASR_N_MELS ||
        m->sample_rate != EEASR_SAMPLE_RATE) {
        snprintf(err, err_len, "model features %s (%u mels at %u Hz) differ from this firmware's front end %s",
                 m->feature_hash, m->n_mels, (unsigned)m->sample_rate, EEASR_FEATURE_HASH);
        esp_partition_munmap(handle);
        return -1;
    }
    ESP_LOGI(TAG, "model %s, bundle %.12s: %u device exit(s) of %u, W=%u, %u B at partition offset 0x%x",
             m->model_hash, m->bundle_id, m->device_exits, m->n_exits, m->window, (unsigned)size,
             (unsigned)part->address);
    return 0;
}
