// The op resolver for exactly the ops the bundle's segments use, from the generated header
// (convert/csource.py writes EEASR_N_OPS and EEASR_REGISTER_OPS from the manifest's op tables).
#include "build_info.h"

#include "eeasr_model_config.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

const tflite::MicroOpResolver &eeasr_op_resolver() {
    static tflite::MicroMutableOpResolver<EEASR_N_OPS> resolver;
    static bool registered = false;
    if (!registered) {  // called once, from the runner's init, before any task uses it
        EEASR_REGISTER_OPS(resolver);
        registered = true;
    }
    return resolver;
}

extern "C" const char *eeasr_build_model_hash(void) { return EEASR_MODEL_HASH; }
extern "C" const char *eeasr_build_bundle_id(void) { return EEASR_BUNDLE_ID; }
extern "C" const char *eeasr_build_tflm_version(void) { return EEASR_ESP_TFLITE_MICRO_VERSION; }
extern "C" int eeasr_build_n_ops(void) { return EEASR_N_OPS; }
