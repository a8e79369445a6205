/*
 * test-main.c: entry point of the proto/ unit tests.
 */
#include "test-proto.h"

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    register_names_tests();
    register_handshake_tests();
    register_options_tests();
    register_request_tests();
    register_reply_tests();
    return g_test_run();
}
