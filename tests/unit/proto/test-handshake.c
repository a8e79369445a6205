/*
 * test-handshake.c: greeting, client flags, option headers and every
 * option reply encoder, byte for byte.
 */
#include <errno.h>

#include "test-proto.h"

/* Hand-written wire bytes of the magics. */
#define NBDMAGIC_BYTES 'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C'
#define IHAVEOPT_BYTES 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T'
#define REPLY_MAGIC_BYTES 0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9

static void test_greeting(void)
{
    static const uint8_t want[] = {
        NBDMAGIC_BYTES, IHAVEOPT_BYTES, 0x00, 0x03,
    };
    static const uint8_t want_plain[] = {
        NBDMAGIC_BYTES, IHAVEOPT_BYTES, 0x00, 0x01,
    };
    uint8_t buf[NBD_GREETING_SIZE + 1];

    g_assert_cmpuint(NBD_GREETING_SIZE, ==, 18);
    memset(buf, 0xee, sizeof(buf));
    g_assert_cmpuint(nbd_greeting_encode(buf, NBD_FLAG_FIXED_NEWSTYLE |
                                                  NBD_FLAG_NO_ZEROES),
                     ==, 18);
    assert_bytes(buf, 18, want);
    g_assert_cmpuint(buf[18], ==, 0xee);
    g_assert_cmpuint(nbd_greeting_encode(buf, NBD_FLAG_FIXED_NEWSTYLE), ==,
                     18);
    assert_bytes(buf, 18, want_plain);
}

static void test_client_flags(void)
{
    static const struct {
        uint8_t bytes[4];
        uint16_t hflags;
        int ret;
        uint32_t cflags;
    } cases[] = {
        { { 0, 0, 0, 0 }, 3, 0, 0 },
        { { 0, 0, 0, 1 }, 3, 0, 1 },
        { { 0, 0, 0, 3 }, 3, 0, 3 },
        { { 0, 0, 0, 1 }, 1, 0, 1 },
        /* NO_ZEROES the server did not offer. */
        { { 0, 0, 0, 2 }, 1, -EPROTO, 0 },
        { { 0, 0, 0, 3 }, 0, -EPROTO, 0 },
        /* Unknown flags, in every byte. */
        { { 0, 0, 0, 4 }, 3, -EPROTO, 0 },
        { { 0, 0, 0, 0x80 }, 3, -EPROTO, 0 },
        { { 0, 0, 1, 0 }, 3, -EPROTO, 0 },
        { { 0, 1, 0, 0 }, 3, -EPROTO, 0 },
        { { 0x80, 0, 0, 1 }, 3, -EPROTO, 0 },
        { { 0xff, 0xff, 0xff, 0xff }, 3, -EPROTO, 0 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        uint32_t cflags = 0xdeadbeef;
        int ret = nbd_client_flags_decode(cases[i].bytes, cases[i].hflags,
                                          &cflags);
        g_assert_cmpint(ret, ==, cases[i].ret);
        if (ret == 0) {
            g_assert_cmpuint(cflags, ==, cases[i].cflags);
        } else {
            g_assert_cmpuint(cflags, ==, 0xdeadbeef);
        }
    }
}

static void test_opt_header(void)
{
    uint8_t buf[] = {
        IHAVEOPT_BYTES, 0x00, 0x00, 0x00, 0x07, 0x01, 0x02, 0x03, 0x04,
    };
    uint32_t opt = 0, len = 0;

    g_assert_cmpuint(NBD_OPT_HEADER_SIZE, ==, 16);
    g_assert_cmpint(nbd_opt_header_decode(buf, &opt, &len), ==, 0);
    g_assert_cmpuint(opt, ==, NBD_OPT_GO);
    g_assert_cmpuint(len, ==, 0x01020304);

    /* A wrong byte anywhere in the magic. */
    for (size_t i = 0; i < 8; i++) {
        buf[i] ^= 0x20;
        opt = len = 42;
        g_assert_cmpint(nbd_opt_header_decode(buf, &opt, &len), ==, -EPROTO);
        g_assert_cmpuint(opt, ==, 42);
        g_assert_cmpuint(len, ==, 42);
        buf[i] ^= 0x20;
    }
}

static void test_opt_len_ok(void)
{
    g_assert_true(nbd_opt_len_ok(NBD_OPT_EXPORT_NAME, 0));
    g_assert_true(nbd_opt_len_ok(NBD_OPT_EXPORT_NAME, 4096));
    g_assert_false(nbd_opt_len_ok(NBD_OPT_EXPORT_NAME, 4097));
    g_assert_false(nbd_opt_len_ok(NBD_OPT_EXPORT_NAME, 65536));
    g_assert_true(nbd_opt_len_ok(NBD_OPT_GO, 0));
    g_assert_true(nbd_opt_len_ok(NBD_OPT_GO, 65536));
    g_assert_false(nbd_opt_len_ok(NBD_OPT_GO, 65537));
    g_assert_true(nbd_opt_len_ok(NBD_OPT_SET_META_CONTEXT, 65535));
    g_assert_false(nbd_opt_len_ok(NBD_OPT_SET_META_CONTEXT, UINT32_MAX));
    g_assert_true(nbd_opt_len_ok(0x1234, 100));
    g_assert_false(nbd_opt_len_ok(0x1234, UINT32_MAX));
}

static void test_opt_check_empty(void)
{
    static const uint32_t empty[] = {
        NBD_OPT_LIST, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY,
        NBD_OPT_EXTENDED_HEADERS,
    };
    for (size_t i = 0; i < G_N_ELEMENTS(empty); i++) {
        g_assert_cmpint(nbd_opt_check_empty(empty[i], 0), ==, 0);
        g_assert_cmpint(nbd_opt_check_empty(empty[i], 1), ==, -EINVAL);
        g_assert_cmpint(nbd_opt_check_empty(empty[i], UINT32_MAX), ==,
                        -EINVAL);
    }
    /* ABORT's data is ignored, as the spec recommends. */
    g_assert_cmpint(nbd_opt_check_empty(NBD_OPT_ABORT, 0), ==, 0);
    g_assert_cmpint(nbd_opt_check_empty(NBD_OPT_ABORT, 8), ==, 0);
    /* Options with a payload are not this helper's business. */
    g_assert_cmpint(nbd_opt_check_empty(NBD_OPT_GO, 10), ==, 0);
    g_assert_cmpint(nbd_opt_check_empty(NBD_OPT_EXPORT_NAME, 4), ==, 0);
}

static void test_opt_reply_header(void)
{
    static const uint8_t want[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x09,     /* LIST_META_CONTEXT */
        0x00, 0x00, 0x00, 0x04,     /* REP_META_CONTEXT */
        0x00, 0x01, 0x02, 0x03,
    };
    uint8_t buf[NBD_OPT_REPLY_HEADER_SIZE];

    g_assert_cmpuint(nbd_opt_reply_header_encode(buf, 9, 4, 0x010203), ==,
                     20);
    assert_bytes(buf, 20, want);
}

static void test_rep_ack(void)
{
    static const uint8_t want[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x07,
        0x00, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00,
    };
    uint8_t buf[NBD_OPT_REPLY_MAX];

    g_assert_cmpint(nbd_rep_ack_encode(buf, sizeof(buf), NBD_OPT_GO), ==,
                    20);
    assert_bytes(buf, 20, want);
    g_assert_cmpint(nbd_rep_ack_encode(buf, 20, NBD_OPT_GO), ==, 20);
    g_assert_cmpint(nbd_rep_ack_encode(buf, 19, NBD_OPT_GO), ==, -ENOBUFS);
    g_assert_cmpint(nbd_rep_ack_encode(buf, 0, NBD_OPT_GO), ==, -ENOBUFS);
}

static void test_rep_server(void)
{
    static const uint8_t want[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x02,
        0x00, 0x00, 0x00, 0x0b,
        0x00, 0x00, 0x00, 0x04, 'd', 'i', 's', 'k', 'r', 'a', 'w',
    };
    static const uint8_t want_nodesc[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x02,
        0x00, 0x00, 0x00, 0x04,
        0x00, 0x00, 0x00, 0x00,
    };
    uint8_t buf[NBD_OPT_REPLY_MAX];
    char big[NBD_MAX_STRING + 1];

    g_assert_cmpint(nbd_rep_server_encode(buf, sizeof(buf), NBD_OPT_LIST,
                                          nbd_str("disk"), nbd_str("raw")),
                    ==, sizeof(want));
    assert_bytes(buf, sizeof(want), want);
    g_assert_cmpint(nbd_rep_server_encode(buf, sizeof(buf), NBD_OPT_LIST,
                                          nbd_str(""), nbd_str(NULL)),
                    ==, sizeof(want_nodesc));
    assert_bytes(buf, sizeof(want_nodesc), want_nodesc);

    /* Exactly enough room, and one byte short. */
    g_assert_cmpint(nbd_rep_server_encode(buf, sizeof(want), NBD_OPT_LIST,
                                          nbd_str("disk"), nbd_str("raw")),
                    ==, sizeof(want));
    g_assert_cmpint(nbd_rep_server_encode(buf, sizeof(want) - 1,
                                          NBD_OPT_LIST, nbd_str("disk"),
                                          nbd_str("raw")),
                    ==, -ENOBUFS);

    /* Longest legal name and description fit NBD_OPT_REPLY_MAX. */
    memset(big, 'n', sizeof(big));
    big[NBD_MAX_STRING] = '\0';
    g_assert_cmpint(nbd_rep_server_encode(buf, sizeof(buf), NBD_OPT_LIST,
                                          nbd_str(big), nbd_str(big)),
                    ==, NBD_OPT_REPLY_MAX);
    g_assert_cmpuint(nbd_get_be32(buf + 16), ==, 4 + 2 * 4096);
    g_assert_cmpuint(nbd_get_be32(buf + 20), ==, 4096);

    /* A string over 4096 bytes is refused. */
    NBDString over = { big, NBD_MAX_STRING + 1 };
    g_assert_cmpint(nbd_rep_server_encode(buf, sizeof(buf), NBD_OPT_LIST,
                                          over, nbd_str("")),
                    ==, -EINVAL);
    g_assert_cmpint(nbd_rep_server_encode(buf, sizeof(buf), NBD_OPT_LIST,
                                          nbd_str("a"), over),
                    ==, -EINVAL);
}

static void test_rep_info_export(void)
{
    static const uint8_t want[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x07,
        0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x0c,
        0x00, 0x00,
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
        0x10, 0x8d,
    };
    uint8_t buf[64];

    g_assert_cmpint(nbd_rep_info_export_encode(buf, sizeof(buf), NBD_OPT_GO,
                                               0x0102030405060708ull,
                                               0x108d),
                    ==, 32);
    assert_bytes(buf, 32, want);
    g_assert_cmpint(nbd_rep_info_export_encode(buf, 31, NBD_OPT_GO, 1, 1),
                    ==, -ENOBUFS);
}

static void test_rep_info_strings(void)
{
    static const uint8_t want_name[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x06,
        0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x04,
        0x00, 0x01, 'a', 'b',
    };
    static const uint8_t want_desc[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x07,
        0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x03,
        0x00, 0x02, 'x',
    };
    static const uint8_t want_empty[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x07,
        0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x02,
        0x00, 0x01,
    };
    uint8_t buf[64];
    char big[NBD_MAX_STRING + 1];

    g_assert_cmpint(nbd_rep_info_name_encode(buf, sizeof(buf), NBD_OPT_INFO,
                                             nbd_str("ab")),
                    ==, sizeof(want_name));
    assert_bytes(buf, sizeof(want_name), want_name);
    g_assert_cmpint(nbd_rep_info_description_encode(buf, sizeof(buf),
                                                    NBD_OPT_GO,
                                                    nbd_str("x")),
                    ==, sizeof(want_desc));
    assert_bytes(buf, sizeof(want_desc), want_desc);
    g_assert_cmpint(nbd_rep_info_name_encode(buf, sizeof(buf), NBD_OPT_GO,
                                             nbd_str("")),
                    ==, sizeof(want_empty));
    assert_bytes(buf, sizeof(want_empty), want_empty);
    g_assert_cmpint(nbd_rep_info_name_encode(buf, sizeof(want_name) - 1,
                                             NBD_OPT_INFO, nbd_str("ab")),
                    ==, -ENOBUFS);

    memset(big, 'd', sizeof(big));
    NBDString over = { big, NBD_MAX_STRING + 1 };
    g_assert_cmpint(nbd_rep_info_description_encode(buf, sizeof(buf),
                                                    NBD_OPT_GO, over),
                    ==, -EINVAL);
}

static void test_rep_info_block_size(void)
{
    static const uint8_t want[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x07,
        0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x0e,
        0x00, 0x03,
        0x00, 0x00, 0x02, 0x00,
        0x00, 0x00, 0x10, 0x00,
        0x04, 0x00, 0x00, 0x00,
    };
    uint8_t buf[34];

    g_assert_cmpint(nbd_rep_info_block_size_encode(buf, sizeof(buf),
                                                   NBD_OPT_GO, 512, 4096,
                                                   64u << 20),
                    ==, 34);
    assert_bytes(buf, 34, want);
    g_assert_cmpint(nbd_rep_info_block_size_encode(buf, 33, NBD_OPT_GO, 1,
                                                   1, 1),
                    ==, -ENOBUFS);
}

static void test_rep_meta_context(void)
{
    static const uint8_t want[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x0a,
        0x00, 0x00, 0x00, 0x04,
        0x00, 0x00, 0x00, 0x13,
        0x00, 0x00, 0x00, 0x01,
        'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o',
        'n',
    };
    uint8_t buf[64];

    g_assert_cmpint(nbd_rep_meta_context_encode(buf, sizeof(buf),
                                                NBD_OPT_SET_META_CONTEXT, 1,
                                                nbd_str("base:allocation")),
                    ==, sizeof(want));
    assert_bytes(buf, sizeof(want), want);
    g_assert_cmpint(nbd_rep_meta_context_encode(buf, sizeof(want) - 1,
                                                NBD_OPT_SET_META_CONTEXT, 1,
                                                nbd_str("base:allocation")),
                    ==, -ENOBUFS);
}

static void test_rep_error(void)
{
    static const uint8_t want[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x2a,
        0x80, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x02,
        'n', 'o',
    };
    static const uint8_t want_nomsg[] = {
        REPLY_MAGIC_BYTES,
        0x00, 0x00, 0x00, 0x07,
        0x80, 0x00, 0x00, 0x0a,
        0x00, 0x00, 0x00, 0x00,
    };
    uint8_t buf[NBD_OPT_REPLY_MAX];
    char longmsg[1000];

    g_assert_cmpint(nbd_rep_error_encode(buf, sizeof(buf), 42,
                                         NBD_REP_ERR_UNSUP, "no"),
                    ==, sizeof(want));
    assert_bytes(buf, sizeof(want), want);
    g_assert_cmpint(nbd_rep_error_encode(buf, sizeof(buf), NBD_OPT_GO,
                                         NBD_REP_ERR_EXT_HEADER_REQD, NULL),
                    ==, sizeof(want_nomsg));
    assert_bytes(buf, sizeof(want_nomsg), want_nomsg);
    g_assert_cmpint(nbd_rep_error_encode(buf, sizeof(buf), NBD_OPT_GO,
                                         NBD_REP_ERR_EXT_HEADER_REQD, ""),
                    ==, sizeof(want_nomsg));
    assert_bytes(buf, sizeof(want_nomsg), want_nomsg);

    /* Long messages are cut at NBD_MAX_ERR_MSG (256) bytes. */
    memset(longmsg, 'm', sizeof(longmsg));
    longmsg[sizeof(longmsg) - 1] = '\0';
    g_assert_cmpint(nbd_rep_error_encode(buf, sizeof(buf), NBD_OPT_GO,
                                         NBD_REP_ERR_INVALID, longmsg),
                    ==, 20 + 256);
    g_assert_cmpuint(nbd_get_be32(buf + 16), ==, 256);
    g_assert_cmpint(buf[20 + 255], ==, 'm');

    /* Non-error reply types are refused. */
    g_assert_cmpint(nbd_rep_error_encode(buf, sizeof(buf), NBD_OPT_GO,
                                         NBD_REP_ACK, "x"),
                    ==, -EINVAL);
    g_assert_cmpint(nbd_rep_error_encode(buf, 21, NBD_OPT_GO,
                                         NBD_REP_ERR_INVALID, "xy"),
                    ==, -ENOBUFS);
}

static void test_export_name_reply(void)
{
    uint8_t want[134] = {
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x00, 0x4f,
    };
    uint8_t buf[NBD_EXPORT_NAME_REPLY_SIZE + 1];

    g_assert_cmpuint(NBD_EXPORT_NAME_REPLY_SIZE, ==, 134);
    memset(buf, 0xee, sizeof(buf));
    g_assert_cmpuint(nbd_export_name_reply_encode(buf, 0x0102030405060708ull,
                                                  0x004f, false),
                     ==, 134);
    assert_bytes(buf, 134, want);
    g_assert_cmpuint(buf[134], ==, 0xee);

    memset(buf, 0xee, sizeof(buf));
    g_assert_cmpuint(nbd_export_name_reply_encode(buf, 0x0102030405060708ull,
                                                  0x004f, true),
                     ==, 10);
    g_assert_cmpmem(buf, 10, want, 10);
    g_assert_cmpuint(buf[10], ==, 0xee);
}

void register_handshake_tests(void)
{
    g_test_add_func("/handshake/greeting", test_greeting);
    g_test_add_func("/handshake/client-flags", test_client_flags);
    g_test_add_func("/handshake/opt-header", test_opt_header);
    g_test_add_func("/handshake/opt-len-ok", test_opt_len_ok);
    g_test_add_func("/handshake/opt-check-empty", test_opt_check_empty);
    g_test_add_func("/handshake/rep/header", test_opt_reply_header);
    g_test_add_func("/handshake/rep/ack", test_rep_ack);
    g_test_add_func("/handshake/rep/server", test_rep_server);
    g_test_add_func("/handshake/rep/info-export", test_rep_info_export);
    g_test_add_func("/handshake/rep/info-strings", test_rep_info_strings);
    g_test_add_func("/handshake/rep/info-block-size",
                    test_rep_info_block_size);
    g_test_add_func("/handshake/rep/meta-context", test_rep_meta_context);
    g_test_add_func("/handshake/rep/error", test_rep_error);
    g_test_add_func("/handshake/export-name-reply", test_export_name_reply);
}
