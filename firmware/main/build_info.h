/* What this application was built for: the model of the bundle whose generated header it was compiled with
   (main/generated/eeasr_model_config.h, included by op_resolver.cc; its model parameters are EEASR_MODEL_*,
   apart from eeasr_core's compiled-in constants, so any file may include both). */
#ifndef EEASR_MAIN_BUILD_INFO_H
#define EEASR_MAIN_BUILD_INFO_H

#ifdef __cplusplus
extern "C" {
#endif

const char *eeasr_build_model_hash(void); /* 16 hex digits */
const char *eeasr_build_bundle_id(void);
const char *eeasr_build_tflm_version(void); /* esp-tflite-micro version the op table was read from */
int eeasr_build_n_ops(void);

#ifdef __cplusplus
}

#include "tensorflow/lite/micro/micro_op_resolver.h"

/* A MicroMutableOpResolver with exactly the ops of the bundle's segments (EEASR_REGISTER_OPS). */
const tflite::MicroOpResolver &eeasr_op_resolver();
#endif

#endif
