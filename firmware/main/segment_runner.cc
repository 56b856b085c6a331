#include "segment_runner.h"

#include <cstdio>
#include <cstring>
#include <new>

#include "build_info.h"
#include "eeasr_core/quant.h"
#include "esp_cpu.h"
#include "esp_heap_caps.h"
#include "esp_log.h"
#include "esp_timer.h"
#include "sdkconfig.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/system_setup.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {

const char *TAG = "eeasr.runner";
constexpr size_t kArenaAlign = 16;

// Tensor names of every device segment (eeasr/device_program.py, eeasr/gated_program.py): looked up by name,
// never by position.
constexpr const char *kFeats = "feats", *kHiddenIn = "hidden_in", *kPooled = "pooled", *kCount = "n_frames";
constexpr const char *kHidden = "hidden", *kGate = "gate", *kLogits = "logits";

struct Segment {
    const eeasr_img_segment *img;
    const uint8_t *model_data;  // in PSRAM when copied, else the mmapped partition
    const tflite::Model *model;
    int in_data, in_count, out_main, out_logits;  // tensor positions, resolved from the names once; -1: none
    int8_t *requant;                              // index (uint8_t)q, when img->requant (early-exit boundaries)
    eeasr_segment_profile prof;
};

const eeasr_model_image *g_m;
Segment g_seg[EEASR_IMG_MAX_SEGMENTS];
uint8_t *g_arena;
size_t g_arena_bytes;
const char *g_arena_where = "none", *g_weights_where = "flash";
alignas(tflite::MicroInterpreter) uint8_t g_interp_storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter *g_interp;  // the one built on the arena now
int g_interp_seg = -1;

int fail(char *err, size_t len, const char *fmt, const char *a, const char *b = "") {
    snprintf(err, len, fmt, a, b);
    return -1;
}

// Position of the subgraph input/output named `name` in the model's input or output list, or -1.
int find_io(const tflite::Model *model, const char *name, bool input) {
    const auto *sg = model->subgraphs()->Get(0);
    const auto *ios = input ? sg->inputs() : sg->outputs();
    for (flatbuffers::uoffset_t i = 0; i < ios->size(); i++) {
        const auto *t = sg->tensors()->Get(ios->Get(i));
        if (t->name() != nullptr && std::strcmp(t->name()->c_str(), name) == 0) return static_cast<int>(i);
    }
    return -1;
}

void drop_interpreter() {
    if (g_interp != nullptr) {
        g_interp->~MicroInterpreter();
        g_interp = nullptr;
        g_interp_seg = -1;
    }
}

// Build segment i's interpreter on the shared arena (the previous one is destroyed first: one arena, one
// interpreter at a time, so the arena is the largest segment's, not the sum).
int use_segment(int i, char *err, size_t len) {
    if (g_interp_seg == i) return 0;
    drop_interpreter();
    Segment &s = g_seg[i];
    int64_t t0 = esp_timer_get_time();
    g_interp = new (g_interp_storage) tflite::MicroInterpreter(s.model, eeasr_op_resolver(), g_arena, g_arena_bytes);
    if (g_interp->AllocateTensors() != kTfLiteOk) {
        drop_interpreter();
        return fail(err, len, "segment %s does not allocate on the %s arena (an op missing from the resolver, or the "
                    "arena too small): see the console log", s.img->name, g_arena_where);
    }
    g_interp_seg = i;
    s.prof.alloc_us = static_cast<uint32_t>(esp_timer_get_time() - t0);
    s.prof.arena_used = g_interp->arena_used_bytes();
    return 0;
}

bool int8_tensor(const TfLiteTensor *t, size_t bytes) { return t->type == kTfLiteInt8 && t->bytes == bytes; }

// The tensors a segment of this role has: input and output names, and the int8 bytes of each.
struct Ends {
    const char *in, *out;  // out: nullptr for a gated head (logits only)
    size_t in_bytes, out_bytes;
    bool logits;
};

Ends ends_of(const eeasr_model_image *m, const eeasr_img_segment *g) {
    const size_t enc = m->encoder_frames, stream = enc * m->d_model;
    switch (g->role) {
    case EEASR_ROLE_FRONT: return {kFeats, kHidden, static_cast<size_t>(m->window) * m->n_mels, stream, false};
    case EEASR_ROLE_PREDICTOR: return {kPooled, kGate, m->d_model, g->n_gates, false};
    case EEASR_ROLE_HEAD: return {kHiddenIn, nullptr, stream, 0, true};
    case EEASR_ROLE_MHA:
    case EEASR_ROLE_FFN: return {kHiddenIn, kHidden, stream, stream, false};
    default:  // an early-exit segment
        return {g->front ? kFeats : kHiddenIn, kHidden, g->front ? static_cast<size_t>(m->window) * m->n_mels : stream,
                stream, true};
    }
}

}  // namespace

extern "C" int eeasr_runner_init(const eeasr_model_image *m, char *err, size_t err_len) {
    tflite::InitializeTarget();
    g_m = m;
    (void)eeasr_op_resolver();  // registers the ops once, before any task runs

    // The arena: internal SRAM when it fits beside what the firmware still needs there, else PSRAM.
    g_arena_bytes = m->arena_bytes;
    const size_t reserve = static_cast<size_t>(CONFIG_EEASR_ARENA_INTERNAL_RESERVE_KB) * 1024;
    if (heap_caps_get_largest_free_block(MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT) >= g_arena_bytes + reserve) {
        g_arena = static_cast<uint8_t *>(heap_caps_aligned_alloc(kArenaAlign, g_arena_bytes,
                                                                 MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT));
        g_arena_where = "sram";
    }
    if (g_arena == nullptr) {
        g_arena = static_cast<uint8_t *>(heap_caps_aligned_alloc(kArenaAlign, g_arena_bytes,
                                                                 MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT));
        g_arena_where = "psram";
    }
    if (g_arena == nullptr) {
        snprintf(err, err_len, "no memory for the %u-byte tensor arena (SRAM largest block %u, PSRAM free %u)",
                 static_cast<unsigned>(g_arena_bytes),
                 static_cast<unsigned>(heap_caps_get_largest_free_block(MALLOC_CAP_INTERNAL)),
                 static_cast<unsigned>(heap_caps_get_free_size(MALLOC_CAP_SPIRAM)));
        return -1;
    }
    ESP_LOGI(TAG, "arena %u B in %s", static_cast<unsigned>(g_arena_bytes), g_arena_where);

#if CONFIG_EEASR_MODEL_IN_PSRAM
    // Weights from octal PSRAM stream faster than from quad flash (convert/cost.py's two scenarios). The
    // segments go back to back, each 16-byte aligned as TFLM reads flatbuffers in place.
    size_t total = 0;
    for (int i = 0; i < m->n_segments; i++) total += (m->seg[i].tflite_len + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
    uint8_t *copy = static_cast<uint8_t *>(heap_caps_aligned_alloc(kArenaAlign, total,
                                                                   MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT));
    if (copy == nullptr) ESP_LOGW(TAG, "%u B of segments do not fit PSRAM: running them from flash", (unsigned)total);
    g_weights_where = copy != nullptr ? "psram" : "flash";
#else
    uint8_t *copy = nullptr;
#endif

    for (int i = 0; i < m->n_segments; i++) {
        Segment &s = g_seg[i];
        s = Segment{};
        s.img = &m->seg[i];
        s.model_data = s.img->tflite;
        if (copy != nullptr) {
            std::memcpy(copy, s.img->tflite, s.img->tflite_len);
            s.model_data = copy;
            copy += (s.img->tflite_len + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
        }
        s.model = tflite::GetModel(s.model_data);
        if (s.model->version() != TFLITE_SCHEMA_VERSION)
            return fail(err, err_len, "segment %s has TFLite schema version %s", s.img->name, "other than this TFLM's");
        const Ends e = ends_of(m, s.img);
        s.in_data = find_io(s.model, e.in, true);
        s.in_count = find_io(s.model, kCount, true);
        s.out_main = e.out != nullptr ? find_io(s.model, e.out, false) : -1;
        s.out_logits = e.logits ? find_io(s.model, kLogits, false) : -1;
        if (s.in_data < 0 || (s.in_count >= 0) != (s.img->takes_count != 0) || (e.out != nullptr && s.out_main < 0) ||
            (e.logits && s.out_logits < 0))
            return fail(err, err_len, "segment %s does not have the tensors its role needs (%s; n_frames, hidden or "
                        "gate, logits as the image says)", s.img->name, e.in);
        if (s.img->requant) {
            s.requant = static_cast<int8_t *>(heap_caps_malloc(256, MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT));
            if (s.requant == nullptr)
                return fail(err, err_len, "no memory for segment %s's requantization table", s.img->name);
            eeasr_requantize_table(m->seg[i - 1].hidden_scale, m->seg[i - 1].hidden_zero_point, s.img->in_scale,
                                   s.img->in_zero_point, s.requant);
        }
        // Allocate once now: a segment that cannot run is refused at boot, not in the middle of a window.
        if (use_segment(i, err, err_len) != 0) return -1;
        if (!int8_tensor(g_interp->input(s.in_data), e.in_bytes) ||
            (s.out_main >= 0 && !int8_tensor(g_interp->output(s.out_main), e.out_bytes)) ||
            (s.out_logits >= 0 && !int8_tensor(g_interp->output(s.out_logits), m->encoder_frames * m->vocab)) ||
            (s.in_count >= 0 && g_interp->input(s.in_count)->type != kTfLiteInt32))
            return fail(err, err_len, "segment %s tensors do not have the image's shapes (%s)", s.img->name,
                        "int8 W x n_mels, W/4 x d, d or n_gates, W/4 x vocab; int32 count");
        ESP_LOGI(TAG, "%s: %u B, arena used %u of %u B", s.img->name, static_cast<unsigned>(s.img->tflite_len),
                 static_cast<unsigned>(s.prof.arena_used), static_cast<unsigned>(g_arena_bytes));
    }
    return 0;
}

extern "C" int eeasr_runner_run(int i, const int8_t *input, int32_t n_frames, int8_t *logits, int8_t *out,
                                char *err, size_t err_len) {
    Segment &s = g_seg[i];
    if (use_segment(i, err, err_len) != 0) return -1;
    TfLiteTensor *in = g_interp->input(s.in_data);
    if (s.requant != nullptr)
        eeasr_requantize_apply(s.requant, input, in->bytes, in->data.int8);
    else
        std::memcpy(in->data.int8, input, in->bytes);
    if (s.in_count >= 0) g_interp->input(s.in_count)->data.i32[0] = n_frames;

    const int64_t t0 = esp_timer_get_time();
    const esp_cpu_cycle_count_t c0 = esp_cpu_get_cycle_count();
    const TfLiteStatus status = g_interp->Invoke();
    const uint32_t cycles = static_cast<uint32_t>(esp_cpu_get_cycle_count() - c0);
    const int64_t us = esp_timer_get_time() - t0;
    if (status != kTfLiteOk) return fail(err, err_len, "segment %s: Invoke failed%s", s.img->name, "");

    eeasr_segment_profile &p = s.prof;
    p.runs++;
    p.last_cycles = cycles;
    p.last_us = us;
    p.total_us += us;
    if (cycles > p.max_cycles) p.max_cycles = cycles;
    if (us > p.max_us) p.max_us = us;
    if (s.out_logits >= 0) {
        const TfLiteTensor *lo = g_interp->output(s.out_logits);
        std::memcpy(logits, lo->data.int8, lo->bytes);
    }
    if (s.out_main >= 0) {
        const TfLiteTensor *o = g_interp->output(s.out_main);
        std::memcpy(out, o->data.int8, o->bytes);
    }
    return 0;
}

extern "C" const eeasr_segment_profile *eeasr_runner_profile(int i) { return &g_seg[i].prof; }
extern "C" size_t eeasr_runner_arena_bytes(void) { return g_arena_bytes; }
extern "C" const char *eeasr_runner_arena_where(void) { return g_arena_where; }
extern "C" const char *eeasr_runner_weights_where(void) { return g_weights_where; }
