/*
 * fuzz.h: what every fuzz target shares.
 *
 * A target defines LLVMFuzzerTestOneInput() (and optionally
 * LLVMFuzzerInitialize()); it is linked either with libFuzzer (clang,
 * -Dfuzzing=true) or with replay-main.c, which feeds it every file of
 * the corpus and regression directories on each `make check`.
 */
#ifndef RAWNBD_TESTS_FUZZ_H
#define RAWNBD_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* An invariant the code under test broke: say which, then abort so the
 * fuzzer records the input (and the replay fails). */
#define FUZZ_CHECK(cond)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            dprintf(2, "%s:%d: invariant failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                     \
            abort();                                                      \
        }                                                                 \
    } while (0)

/* Whether [p, p + n) lies inside [buf, buf + size). */
static inline int fuzz_inside(const void *p, size_t n, const void *buf,
                              size_t size)
{
    const uint8_t *q = p, *b = buf;

    return q >= b && q <= b + size && n <= (size_t)(b + size - q);
}

/* A cursor over the input: fixed-width fields, zero once exhausted. */
typedef struct FuzzIn {
    const uint8_t *p;
    size_t left;
} FuzzIn;

static inline uint64_t fuzz_take(FuzzIn *in, unsigned bytes)
{
    uint64_t v = 0;

    while (bytes--) {
        v <<= 8;
        if (in->left) {
            v |= *in->p++;
            in->left--;
        }
    }
    return v;
}

#endif /* RAWNBD_TESTS_FUZZ_H */
