#include "eeasr_core/endpoint.h"

static double max_floor(double x) { return x > EEASR_EP_FLOOR_MIN ? x : EEASR_EP_FLOOR_MIN; }

/* min as Python's min(a, b): a unless b is smaller. */
static double min2(double a, double b) { return b < a ? b : a; }

void eeasr_endpointer_init(eeasr_endpointer *ep) {
    ep->floor = (double)EEASR_EP_MIN_ENERGY;
    ep->partial = 0;
    ep->hop = 0;
    ep->run = 0;
    ep->speech_hops = 0;
    ep->n_partial = 0;
    ep->in_speech = 0;
}

int64_t eeasr_hop_energy(const int16_t *hop) {
    int64_t e = 0;
    for (int i = 0; i < EEASR_EP_HOP; i++) e += (int32_t)hop[i] * (int32_t)hop[i];
    return e;
}

int eeasr_endpointer_step(eeasr_endpointer *ep, int64_t e, eeasr_ep_event *ev) {
    uint64_t h = ep->hop++;
    double ef = (double)e;
    if (h < EEASR_EP_WARMUP_HOPS) {
        ep->floor = max_floor(h == 0 ? ef : min2(ef, ep->floor));
        return 0;
    }
    if (!ep->in_speech) {
        int loud = ef > ep->floor * EEASR_EP_START_RATIO && e > EEASR_EP_MIN_ENERGY;
        ep->run = loud ? ep->run + 1 : 0;
        ep->floor = max_floor(min2(ef, ep->floor * EEASR_EP_RISE));
        if (ep->run == EEASR_EP_START_HOPS) {
            ep->in_speech = 1;
            ep->run = 0;
            ep->speech_hops = 0;
            uint64_t back = EEASR_EP_START_HOPS - 1 + EEASR_EP_PREROLL_HOPS;
            ev->kind = EEASR_EP_START;
            ev->sample = (h > back ? h - back : 0) * EEASR_EP_HOP;
            return 1;
        }
        return 0;
    }
    int quiet = ef < ep->floor * EEASR_EP_END_RATIO || e <= EEASR_EP_MIN_ENERGY;
    ep->floor = max_floor(min2(ef, ep->floor));
    ep->run = quiet ? ep->run + 1 : 0;
    if (++ep->speech_hops == EEASR_EP_MAX_SPEECH_HOPS) { /* a stationary sound cannot hold speech open */
        ep->floor = max_floor(ef);
        ep->run = EEASR_EP_END_HOPS;
    }
    if (ep->run == EEASR_EP_END_HOPS) {
        ep->in_speech = 0;
        ep->run = 0;
        ev->kind = EEASR_EP_END;
        ev->sample = (h + 1) * EEASR_EP_HOP;
        return 1;
    }
    return 0;
}

size_t eeasr_endpointer_push(eeasr_endpointer *ep, const int16_t *pcm, size_t n, eeasr_ep_event *events,
                             size_t max_events, size_t *consumed) {
    size_t k = 0, i = 0;
    while (i < n && k < max_events) {
        int32_t s = pcm[i++];
        ep->partial += s * s;
        if (++ep->n_partial < EEASR_EP_HOP) continue;
        int64_t e = ep->partial;
        ep->partial = 0;
        ep->n_partial = 0;
        k += (size_t)eeasr_endpointer_step(ep, e, &events[k]);
    }
    if (consumed) *consumed = i;
    return k;
}

int eeasr_endpointer_flush(eeasr_endpointer *ep, eeasr_ep_event *ev) {
    if (!ep->in_speech) return 0;
    ep->in_speech = 0;
    ep->run = 0;
    ev->kind = EEASR_EP_END;
    ev->sample = ep->hop * EEASR_EP_HOP;
    return 1;
}

size_t eeasr_endpointer_size(void) { return sizeof(eeasr_endpointer); }
