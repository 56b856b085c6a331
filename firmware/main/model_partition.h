/* The `model` flash partition (partitions.csv): found by label, mmapped (esp_partition_mmap, data cache),
   parsed and verified (model_image.c), and checked against what this application was built for: the model
   hash of its generated header and the feature configuration of eeasr_core. */
#ifndef EEASR_MAIN_MODEL_PARTITION_H
#define EEASR_MAIN_MODEL_PARTITION_H

#include <stddef.h>

#include "model_image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 0 when the partition holds a valid image for this firmware's model; else -1 with a one-line reason
   (sent to the host as ERROR MODEL_MISMATCH). The mapping stays for the life of the application. */
int eeasr_model_load(eeasr_model_image *m, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
