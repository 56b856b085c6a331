/* The CHECK macro and deterministic random numbers of the native C tests. */
#ifndef EEASR_NATIVE_TESTS_CHECK_H
#define EEASR_NATIVE_TESTS_CHECK_H

#include <stdint.h>
#include <stdio.h>

static int g_checks, g_failures;

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        g_checks++;                                                                   \
        if (!(cond)) {                                                                \
            g_failures++;                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
        }                                                                             \
    } while (0)

/* Deterministic pseudo-random numbers (no libc rand: same values everywhere). */
static uint32_t g_rng = 12345u;
static uint32_t next_u32(void) {
    g_rng = g_rng * 1664525u + 1013904223u;
    return g_rng;
}

#endif
