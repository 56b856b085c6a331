/* The serial link to the host (Kconfig: USB-Serial-JTAG or a UART): frames out, one at a time under a mutex
   with the sender's sequence counter; frames in, decoded by a receive task (eeasr_core's decoder) that hands
   each good frame to a callback and answers a rejected one with ERROR BAD_FRAME and its reason. */
#ifndef EEASR_MAIN_LINK_H
#define EEASR_MAIN_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "eeasr_core/protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*eeasr_link_on_frame)(const eeasr_message *msg);

/* Install the driver and the buffers; then a lone 0x00 ends whatever the ROM printed on the port. */
int eeasr_link_init(void);

/* Start the receive task (core 0). */
int eeasr_link_start_rx(eeasr_link_on_frame on_frame);

/* Send one message (payload of n bytes); thread-safe. 0, or -1 when it could not be framed or written. */
int eeasr_link_send(uint8_t type, const uint8_t *payload, size_t n);

/* ERROR frame with a printf-style one-line message (also logged on the console). */
void eeasr_link_error(uint16_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Scratch for building one payload (EEASR_MAX_PAYLOAD bytes), held from _acquire until _release. */
uint8_t *eeasr_link_payload_acquire(size_t *cap);
void eeasr_link_payload_release(void);

#ifdef __cplusplus
}
#endif

#endif
