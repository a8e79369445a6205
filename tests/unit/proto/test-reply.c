/*
 * test-reply.c: transmission reply encoders, byte for byte, in both the
 * structured (compact) and extended header styles.
 */
#include "test-proto.h"

#define COOKIE_BYTES 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08
#define OFFSET_BYTES 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88
#define SR_MAGIC 0x66, 0x8e, 0x33, 0xef
#define EXT_MAGIC 0x6e, 0x8a, 0x27, 0x8c

static const NBDRequest req = {
    .flags = 0,
    .type = NBD_CMD_READ,
    .cookie = 0x0102030405060708ull,
    .offset = 0x1122334455667788ull,
    .length = 4096,
};

/* Encoder output lands in a poisoned buffer; check nothing past the
 * returned size was touched. */
#define BUF_SIZE 512
static uint8_t buf[BUF_SIZE];

static void poison(void)
{
    memset(buf, 0xee, sizeof(buf));
}

static void assert_untouched_from(size_t n)
{
    for (size_t i = n; i < BUF_SIZE; i++) {
        g_assert_cmphex(buf[i], ==, 0xee);
    }
}

#define CHECK_ENCODED(n, want) \
    do { \
        g_assert_cmpuint((n), ==, sizeof(want)); \
        assert_bytes(buf, sizeof(want), want); \
        assert_untouched_from(sizeof(want)); \
    } while (0)

static void test_simple_reply(void)
{
    static const uint8_t want[] = {
        0x67, 0x44, 0x66, 0x98, 0x00, 0x00, 0x00, 0x16, COOKIE_BYTES,
    };
    static const uint8_t want_ok[] = {
        0x67, 0x44, 0x66, 0x98, 0x00, 0x00, 0x00, 0x00, COOKIE_BYTES,
    };

    poison();
    CHECK_ENCODED(nbd_simple_reply_encode(buf, req.cookie, NBD_EINVAL),
                  want);
    poison();
    CHECK_ENCODED(nbd_simple_reply_encode(buf, req.cookie, 0), want_ok);
}

static void test_chunk_header(void)
{
    static const uint8_t want_sr[] = {
        SR_MAGIC, 0x00, 0x01, 0x00, 0x05, COOKIE_BYTES,
        0x00, 0x00, 0x01, 0x00,
    };
    static const uint8_t want_ext[] = {
        EXT_MAGIC, 0x00, 0x01, 0x00, 0x05, COOKIE_BYTES, OFFSET_BYTES,
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00,
    };
    static const uint8_t want_max[] = {
        SR_MAGIC, 0x00, 0x00, 0x00, 0x01, COOKIE_BYTES,
        0xff, 0xff, 0xff, 0xff,
    };

    g_assert_cmpuint(NBD_CHUNK_SIZE, ==, 20);
    g_assert_cmpuint(NBD_EXT_CHUNK_SIZE, ==, 32);
    poison();
    CHECK_ENCODED(nbd_chunk_encode(buf, false, &req, NBD_REPLY_FLAG_DONE,
                                   NBD_REPLY_TYPE_BLOCK_STATUS, 0x100),
                  want_sr);
    poison();
    CHECK_ENCODED(nbd_chunk_encode(buf, true, &req, NBD_REPLY_FLAG_DONE,
                                   NBD_REPLY_TYPE_BLOCK_STATUS,
                                   0x100000100ull),
                  want_ext);
    poison();
    CHECK_ENCODED(nbd_chunk_encode(buf, false, &req, 0,
                                   NBD_REPLY_TYPE_OFFSET_DATA, UINT32_MAX),
                  want_max);
    /* A length the compact header cannot carry writes nothing. */
    poison();
    g_assert_cmpuint(nbd_chunk_encode(buf, false, &req, 0,
                                      NBD_REPLY_TYPE_OFFSET_DATA,
                                      (uint64_t)UINT32_MAX + 1),
                     ==, 0);
    assert_untouched_from(0);
}

static void test_chunk_none(void)
{
    static const uint8_t want_sr[] = {
        SR_MAGIC, 0x00, 0x01, 0x00, 0x00, COOKIE_BYTES,
        0x00, 0x00, 0x00, 0x00,
    };
    static const uint8_t want_ext[] = {
        EXT_MAGIC, 0x00, 0x01, 0x00, 0x00, COOKIE_BYTES, OFFSET_BYTES,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    };

    poison();
    CHECK_ENCODED(nbd_chunk_none_encode(buf, false, &req), want_sr);
    poison();
    CHECK_ENCODED(nbd_chunk_none_encode(buf, true, &req), want_ext);
}

static void test_chunk_data(void)
{
    static const uint8_t want_sr[] = {
        SR_MAGIC, 0x00, 0x00, 0x00, 0x01, COOKIE_BYTES,
        0x00, 0x00, 0x10, 0x08,
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x98, 0x88,
    };
    static const uint8_t want_ext[] = {
        EXT_MAGIC, 0x00, 0x01, 0x00, 0x01, COOKIE_BYTES, OFFSET_BYTES,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x08,
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x98, 0x88,
    };
    const uint64_t at = 0x1122334455669888ull;

    poison();
    CHECK_ENCODED(nbd_chunk_data_encode(buf, false, &req, 0, at, 4096),
                  want_sr);
    poison();
    CHECK_ENCODED(nbd_chunk_data_encode(buf, true, &req,
                                        NBD_REPLY_FLAG_DONE, at, 4096),
                  want_ext);

    /* The compact length must hold 8 + datalen. */
    g_assert_cmpuint(nbd_chunk_data_encode(buf, false, &req, 0, 0,
                                           UINT32_MAX - 8),
                     ==, 28);
    g_assert_cmphex(nbd_get_be32(buf + 16), ==, UINT32_MAX);
    poison();
    g_assert_cmpuint(nbd_chunk_data_encode(buf, false, &req, 0, 0,
                                           UINT32_MAX - 7),
                     ==, 0);
    assert_untouched_from(0);
    /* The extended length is 64 bits. */
    g_assert_cmpuint(nbd_chunk_data_encode(buf, true, &req, 0, 0,
                                           1ull << 40),
                     ==, 40);
    g_assert_cmphex(nbd_get_be64(buf + 24), ==, (1ull << 40) + 8);
    g_assert_cmpuint(nbd_chunk_data_encode(buf, true, &req, 0, 0,
                                           UINT64_MAX - 8),
                     ==, 40);
    g_assert_cmphex(nbd_get_be64(buf + 24), ==, UINT64_MAX);
    poison();
    g_assert_cmpuint(nbd_chunk_data_encode(buf, true, &req, 0, 0,
                                           UINT64_MAX - 7),
                     ==, 0);
    assert_untouched_from(0);
}

static void test_chunk_hole(void)
{
    static const uint8_t want_sr[] = {
        SR_MAGIC, 0x00, 0x01, 0x00, 0x02, COOKIE_BYTES,
        0x00, 0x00, 0x00, 0x0c,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00,
        0x00, 0x00, 0x10, 0x00,
    };
    static const uint8_t want_ext[] = {
        EXT_MAGIC, 0x00, 0x00, 0x00, 0x02, COOKIE_BYTES, OFFSET_BYTES,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00,
        0xff, 0xff, 0xf0, 0x00,
    };

    poison();
    CHECK_ENCODED(nbd_chunk_hole_encode(buf, false, &req,
                                        NBD_REPLY_FLAG_DONE, 0x2000, 0x1000),
                  want_sr);
    poison();
    CHECK_ENCODED(nbd_chunk_hole_encode(buf, true, &req, 0, 0x2000,
                                        0xfffff000),
                  want_ext);
    g_assert_cmpuint(sizeof(want_ext), ==, NBD_MAX_CHUNK_FIXED);
}

static void test_chunk_error(void)
{
    static const uint8_t want_sr[] = {
        SR_MAGIC, 0x00, 0x01, 0x80, 0x01, COOKIE_BYTES,
        0x00, 0x00, 0x00, 0x09,
        0x00, 0x00, 0x00, 0x05, 0x00, 0x03, 'b', 'a', 'd',
    };
    static const uint8_t want_ext[] = {
        EXT_MAGIC, 0x00, 0x01, 0x80, 0x01, COOKIE_BYTES, OFFSET_BYTES,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09,
        0x00, 0x00, 0x00, 0x05, 0x00, 0x03, 'b', 'a', 'd',
    };
    static const uint8_t want_nomsg[] = {
        SR_MAGIC, 0x00, 0x01, 0x80, 0x01, COOKIE_BYTES,
        0x00, 0x00, 0x00, 0x06,
        0x00, 0x00, 0x00, 0x16, 0x00, 0x00,
    };

    poison();
    CHECK_ENCODED(nbd_chunk_error_encode(buf, false, &req,
                                         NBD_REPLY_FLAG_DONE, NBD_EIO,
                                         "bad"),
                  want_sr);
    poison();
    CHECK_ENCODED(nbd_chunk_error_encode(buf, true, &req,
                                         NBD_REPLY_FLAG_DONE, NBD_EIO,
                                         "bad"),
                  want_ext);
    /* Error 0 is not allowed in an error chunk: sent as EIO. */
    poison();
    CHECK_ENCODED(nbd_chunk_error_encode(buf, false, &req,
                                         NBD_REPLY_FLAG_DONE, 0, "bad"),
                  want_sr);
    poison();
    CHECK_ENCODED(nbd_chunk_error_encode(buf, false, &req,
                                         NBD_REPLY_FLAG_DONE, NBD_EINVAL,
                                         NULL),
                  want_nomsg);
    poison();
    CHECK_ENCODED(nbd_chunk_error_encode(buf, false, &req,
                                         NBD_REPLY_FLAG_DONE, NBD_EINVAL, ""),
                  want_nomsg);
}

static void test_chunk_error_offset(void)
{
    static const uint8_t want_sr[] = {
        SR_MAGIC, 0x00, 0x00, 0x80, 0x02, COOKIE_BYTES,
        0x00, 0x00, 0x00, 0x0f,
        0x00, 0x00, 0x00, 0x1c, 0x00, 0x01, 'x',
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x00,
    };
    static const uint8_t want_ext[] = {
        EXT_MAGIC, 0x00, 0x00, 0x80, 0x02, COOKIE_BYTES, OFFSET_BYTES,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0e,
        0x00, 0x00, 0x00, 0x05, 0x00, 0x00,
        0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    };

    poison();
    CHECK_ENCODED(nbd_chunk_error_offset_encode(buf, false, &req, 0,
                                                NBD_ENOSPC, "x", 0x3000),
                  want_sr);
    poison();
    CHECK_ENCODED(nbd_chunk_error_offset_encode(buf, true, &req, 0, 0, NULL,
                                                0x8000000000000001ull),
                  want_ext);
}

static void test_chunk_error_long(void)
{
    char msg[1000];

    memset(msg, 'z', sizeof(msg));
    msg[sizeof(msg) - 1] = '\0';
    poison();
    g_assert_cmpuint(nbd_chunk_error_offset_encode(buf, true, &req, 0,
                                                   NBD_EIO, msg, 7),
                     ==, NBD_MAX_ERROR_CHUNK);
    assert_untouched_from(NBD_MAX_ERROR_CHUNK);
    g_assert_cmpuint(nbd_get_be64(buf + 24), ==, 6 + 256 + 8);
    g_assert_cmpuint(nbd_get_be16(buf + 36), ==, 256);
    g_assert_cmpint(buf[38 + 255], ==, 'z');
    g_assert_cmpuint(nbd_get_be64(buf + 38 + 256), ==, 7);

    poison();
    g_assert_cmpuint(nbd_chunk_error_encode(buf, false, &req, 0, NBD_EIO,
                                            msg),
                     ==, 20 + 6 + 256);
    g_assert_cmpuint(nbd_get_be32(buf + 16), ==, 6 + 256);
    assert_untouched_from(20 + 6 + 256);
}

static void test_chunk_block_status(void)
{
    static const uint8_t want_sr[] = {
        SR_MAGIC, 0x00, 0x01, 0x00, 0x05, COOKIE_BYTES,
        0x00, 0x00, 0x00, 0x14,
        0x00, 0x00, 0x00, 0x01,
    };
    static const uint8_t want_ext[] = {
        EXT_MAGIC, 0x00, 0x00, 0x00, 0x05, COOKIE_BYTES, OFFSET_BYTES,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c,
        0x00, 0x00, 0x00, 0x07,
    };

    poison();
    CHECK_ENCODED(nbd_chunk_block_status_encode(buf, false, &req,
                                                NBD_REPLY_FLAG_DONE, 1, 2),
                  want_sr);
    poison();
    CHECK_ENCODED(nbd_chunk_block_status_encode(buf, true, &req, 0, 7, 1),
                  want_ext);

    /* At least one descriptor. */
    poison();
    g_assert_cmpuint(nbd_chunk_block_status_encode(buf, false, &req, 0, 1,
                                                   0),
                     ==, 0);
    g_assert_cmpuint(nbd_chunk_block_status_encode(buf, true, &req, 0, 1,
                                                   0),
                     ==, 0);
    assert_untouched_from(0);

    /* The compact header holds at most (2^32 - 1 - 4) / 8 descriptors. */
    g_assert_cmpuint(nbd_chunk_block_status_encode(buf, false, &req, 0, 1,
                                                   536870911),
                     ==, 24);
    g_assert_cmphex(nbd_get_be32(buf + 16), ==, 0xfffffffcu);
    poison();
    g_assert_cmpuint(nbd_chunk_block_status_encode(buf, false, &req, 0, 1,
                                                   536870912),
                     ==, 0);
    assert_untouched_from(0);
    g_assert_cmpuint(nbd_chunk_block_status_encode(buf, true, &req, 0, 1,
                                                   UINT32_MAX),
                     ==, 36);
    g_assert_cmphex(nbd_get_be64(buf + 24), ==,
                    4 + 8 * (uint64_t)UINT32_MAX);
}

static void test_chunk_block_status_ext(void)
{
    static const uint8_t want[] = {
        EXT_MAGIC, 0x00, 0x01, 0x00, 0x06, COOKIE_BYTES, OFFSET_BYTES,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x28,
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02,
    };

    poison();
    CHECK_ENCODED(nbd_chunk_block_status_ext_encode(buf, &req,
                                                    NBD_REPLY_FLAG_DONE, 1,
                                                    2),
                  want);
    poison();
    g_assert_cmpuint(nbd_chunk_block_status_ext_encode(buf, &req, 0, 1, 0),
                     ==, 0);
    assert_untouched_from(0);
    g_assert_cmpuint(nbd_chunk_block_status_ext_encode(buf, &req, 0, 1,
                                                       UINT32_MAX),
                     ==, 40);
    g_assert_cmphex(nbd_get_be64(buf + 24), ==,
                    8 + 16 * (uint64_t)UINT32_MAX);
}

static void test_extents(void)
{
    static const uint8_t want[] = {
        0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x03,
        0xff, 0xff, 0xfe, 0x00, 0x00, 0x00, 0x00, 0x00,
    };
    static const uint8_t want_ext[] = {
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    };

    /* Filled in place, as a server fills its descriptor array. */
    poison();
    nbd_extent_encode(buf, 0x1000, NBD_STATE_HOLE | NBD_STATE_ZERO);
    nbd_extent_encode(buf + 8, 0xfffffe00, 0);
    assert_bytes(buf, 16, want);
    assert_untouched_from(16);

    poison();
    nbd_extent_ext_encode(buf, 1ull << 32, NBD_STATE_ZERO);
    nbd_extent_ext_encode(buf + 16, 512, NBD_STATE_HOLE);
    assert_bytes(buf, 32, want_ext);
    assert_untouched_from(32);
}

void register_reply_tests(void)
{
    g_test_add_func("/reply/simple", test_simple_reply);
    g_test_add_func("/reply/chunk-header", test_chunk_header);
    g_test_add_func("/reply/none", test_chunk_none);
    g_test_add_func("/reply/offset-data", test_chunk_data);
    g_test_add_func("/reply/offset-hole", test_chunk_hole);
    g_test_add_func("/reply/error", test_chunk_error);
    g_test_add_func("/reply/error-offset", test_chunk_error_offset);
    g_test_add_func("/reply/error-long", test_chunk_error_long);
    g_test_add_func("/reply/block-status", test_chunk_block_status);
    g_test_add_func("/reply/block-status-ext", test_chunk_block_status_ext);
    g_test_add_func("/reply/extents", test_extents);
}
