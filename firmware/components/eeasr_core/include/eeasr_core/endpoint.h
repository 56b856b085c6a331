/* Energy-based endpointing of docs/protocol.md "Endpointing" (reference: eeasr/endpoint.py).

   10 ms hops of 160 samples counted from the start of the stream (the feature frames' grid); per hop the
   energy E = sum of s^2 (exact, int64), compared in double with a noise floor, one multiplication per
   comparison: built with -ffp-contract=off, the events and the floor equal the reference bit for bit.
   Speech starts after 3 loud hops (12 dB above the floor and above -55 dBFS) and keeps 20 hops before them;
   it ends after 30 quiet hops (under 6 dB above the floor), or after 2000 hops of speech. The first 30 hops
   only learn the floor. */
#ifndef EEASR_CORE_ENDPOINT_H
#define EEASR_CORE_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Equal to eeasr/endpoint.py (tests/test_firmware_protocol.py reads these lines). */
#define EEASR_EP_HOP 160
#define EEASR_EP_START_RATIO 15.848931924611133 /* 10^(12/10) */
#define EEASR_EP_END_RATIO 3.9810717055349722   /* 10^(6/10) */
#define EEASR_EP_MIN_ENERGY 543271              /* hop energy of -55 dBFS RMS */
#define EEASR_EP_FLOOR_MIN 160.0                /* 1 LSB RMS */
#define EEASR_EP_RISE 1.005                     /* floor rise per non-speech hop */
#define EEASR_EP_START_HOPS 3
#define EEASR_EP_END_HOPS 30
#define EEASR_EP_PREROLL_HOPS 20
#define EEASR_EP_WARMUP_HOPS 30
#define EEASR_EP_MAX_SPEECH_HOPS 2000

/* Events a push of n samples can produce at most (one per completed hop; up to 159 samples pending). */
#define EEASR_EP_MAX_EVENTS(n) ((n) / EEASR_EP_HOP + 1)

typedef enum {
    EEASR_EP_START = 1, /* sample: the utterance's first sample (inclusive) */
    EEASR_EP_END = 2,   /* sample: one past its last sample (exclusive) */
} eeasr_ep_kind;

typedef struct {
    int32_t kind; /* eeasr_ep_kind */
    uint64_t sample; /* absolute index in the stream */
} eeasr_ep_event;

typedef struct {
    double floor;
    int64_t partial;       /* sum of squares of the current hop's samples so far */
    uint64_t hop;          /* index of the next hop */
    uint32_t run;          /* consecutive loud hops (idle) or quiet hops (speech) */
    uint32_t speech_hops;  /* hops since speech started */
    uint32_t n_partial;    /* samples of the current hop so far (< EEASR_EP_HOP) */
    int32_t in_speech;
} eeasr_endpointer;

/* A new stream: hop 0 is the next sample. */
void eeasr_endpointer_init(eeasr_endpointer *ep);

/* Sum of squares of one hop of EEASR_EP_HOP samples. */
int64_t eeasr_hop_energy(const int16_t *hop);

/* One hop of energy e; returns 1 and fills *ev when an utterance starts or ends at it. */
int eeasr_endpointer_step(eeasr_endpointer *ep, int64_t e, eeasr_ep_event *ev);

/* Feed n samples (any chunking gives the same events); writes the events of the completed hops to events and
   returns how many. Stops after max_events: *consumed (if not NULL) then says how many samples were taken,
   and the caller pushes the rest later. With max_events >= EEASR_EP_MAX_EVENTS(n) all n are consumed. */
size_t eeasr_endpointer_push(eeasr_endpointer *ep, const int16_t *pcm, size_t n, eeasr_ep_event *events,
                             size_t max_events, size_t *consumed);

/* End of stream: returns 1 and fills *ev (end at the last whole hop) when an utterance is open. */
int eeasr_endpointer_flush(eeasr_endpointer *ep, eeasr_ep_event *ev);

size_t eeasr_endpointer_size(void);

#ifdef __cplusplus
}
#endif

#endif
