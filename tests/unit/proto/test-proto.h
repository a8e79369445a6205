/*
 * test-proto.h: shared helpers of the proto/ unit tests.
 */
#ifndef RAWNBD_TEST_PROTO_H
#define RAWNBD_TEST_PROTO_H

#include <glib.h>

#include "nbd-proto.h"

/* Asserts that n bytes at got equal the byte array literal `want`. */
#define assert_bytes(got, n, want) \
    g_assert_cmpmem((got), (n), (want), sizeof(want))

/* Each test file registers its cases with g_test_add_func(). */
void register_names_tests(void);
void register_handshake_tests(void);
void register_options_tests(void);
void register_request_tests(void);
void register_reply_tests(void);

#endif /* RAWNBD_TEST_PROTO_H */
