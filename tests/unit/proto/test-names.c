/*
 * test-names.c: names for logs, the command flag formatter, the errno
 * map and error message truncation.
 */
#include <errno.h>

#include "test-proto.h"

typedef struct NameCase {
    uint32_t value;
    const char *name;
} NameCase;

static void check_names(const char *(*fn)(uint32_t), const NameCase *cases,
                        size_t n)
{
    for (size_t i = 0; i < n; i++) {
        g_assert_cmpstr(fn(cases[i].value), ==, cases[i].name);
    }
}

#define CHECK_NAMES(fn, cases) \
    check_names(fn, cases, G_N_ELEMENTS(cases))

static void test_opt_names(void)
{
    static const NameCase cases[] = {
        { 1, "NBD_OPT_EXPORT_NAME" },
        { 2, "NBD_OPT_ABORT" },
        { 3, "NBD_OPT_LIST" },
        { 4, "NBD_OPT_PEEK_EXPORT" },
        { 5, "NBD_OPT_STARTTLS" },
        { 6, "NBD_OPT_INFO" },
        { 7, "NBD_OPT_GO" },
        { 8, "NBD_OPT_STRUCTURED_REPLY" },
        { 9, "NBD_OPT_LIST_META_CONTEXT" },
        { 10, "NBD_OPT_SET_META_CONTEXT" },
        { 11, "NBD_OPT_EXTENDED_HEADERS" },
        { 0, "unknown" },
        { 12, "unknown" },
        { 0xffffffff, "unknown" },
    };
    CHECK_NAMES(nbd_opt_name, cases);
}

static void test_rep_names(void)
{
    static const NameCase cases[] = {
        { 1, "NBD_REP_ACK" },
        { 2, "NBD_REP_SERVER" },
        { 3, "NBD_REP_INFO" },
        { 4, "NBD_REP_META_CONTEXT" },
        { 0x80000001, "NBD_REP_ERR_UNSUP" },
        { 0x80000002, "NBD_REP_ERR_POLICY" },
        { 0x80000003, "NBD_REP_ERR_INVALID" },
        { 0x80000004, "NBD_REP_ERR_PLATFORM" },
        { 0x80000005, "NBD_REP_ERR_TLS_REQD" },
        { 0x80000006, "NBD_REP_ERR_UNKNOWN" },
        { 0x80000007, "NBD_REP_ERR_SHUTDOWN" },
        { 0x80000008, "NBD_REP_ERR_BLOCK_SIZE_REQD" },
        { 0x80000009, "NBD_REP_ERR_TOO_BIG" },
        { 0x8000000a, "NBD_REP_ERR_EXT_HEADER_REQD" },
        { 0, "unknown" },
        { 5, "unknown" },
        { 0x80000000, "unknown" },
        { 0x8000000b, "unknown" },
    };
    CHECK_NAMES(nbd_rep_name, cases);
}

static void test_info_names(void)
{
    static const NameCase cases[] = {
        { 0, "NBD_INFO_EXPORT" },
        { 1, "NBD_INFO_NAME" },
        { 2, "NBD_INFO_DESCRIPTION" },
        { 3, "NBD_INFO_BLOCK_SIZE" },
        { 4, "unknown" },
        { 0xffff, "unknown" },
    };
    CHECK_NAMES(nbd_info_name, cases);
}

static void test_cmd_names(void)
{
    static const NameCase cases[] = {
        { 0, "NBD_CMD_READ" },
        { 1, "NBD_CMD_WRITE" },
        { 2, "NBD_CMD_DISC" },
        { 3, "NBD_CMD_FLUSH" },
        { 4, "NBD_CMD_TRIM" },
        { 5, "NBD_CMD_CACHE" },
        { 6, "NBD_CMD_WRITE_ZEROES" },
        { 7, "NBD_CMD_BLOCK_STATUS" },
        { 8, "NBD_CMD_RESIZE" },
        { 9, "unknown" },
        { 0xffff, "unknown" },
    };
    CHECK_NAMES(nbd_cmd_name, cases);
}

static void test_reply_type_names(void)
{
    static const NameCase cases[] = {
        { 0, "NBD_REPLY_TYPE_NONE" },
        { 1, "NBD_REPLY_TYPE_OFFSET_DATA" },
        { 2, "NBD_REPLY_TYPE_OFFSET_HOLE" },
        { 5, "NBD_REPLY_TYPE_BLOCK_STATUS" },
        { 6, "NBD_REPLY_TYPE_BLOCK_STATUS_EXT" },
        { 0x8001, "NBD_REPLY_TYPE_ERROR" },
        { 0x8002, "NBD_REPLY_TYPE_ERROR_OFFSET" },
        { 3, "unknown" },
        { 4, "unknown" },
        { 7, "unknown" },
        { 0x8000, "unknown" },
        { 0x8003, "unknown" },
    };
    CHECK_NAMES(nbd_reply_type_name, cases);
}

static void test_err_names(void)
{
    static const NameCase cases[] = {
        { 0, "success" },
        { 1, "NBD_EPERM" },
        { 5, "NBD_EIO" },
        { 12, "NBD_ENOMEM" },
        { 22, "NBD_EINVAL" },
        { 28, "NBD_ENOSPC" },
        { 75, "NBD_EOVERFLOW" },
        { 95, "NBD_ENOTSUP" },
        { 108, "NBD_ESHUTDOWN" },
        { 2, "unknown" },
        { 122, "unknown" },
        { 0xffffffff, "unknown" },
    };
    CHECK_NAMES(nbd_err_name, cases);
}

static void test_cmd_flags_format(void)
{
    static const struct {
        uint16_t flags;
        const char *text;
    } cases[] = {
        { 0, "0" },
        { 0x01, "FUA" },
        { 0x02, "NO_HOLE" },
        { 0x04, "DF" },
        { 0x08, "REQ_ONE" },
        { 0x10, "FAST_ZERO" },
        { 0x20, "PAYLOAD_LEN" },
        { 0x03, "FUA|NO_HOLE" },
        { 0x3f, "FUA|NO_HOLE|DF|REQ_ONE|FAST_ZERO|PAYLOAD_LEN" },
        { 0x40, "0x40" },
        { 0x8001, "FUA|0x8000" },
        { 0xffff, "FUA|NO_HOLE|DF|REQ_ONE|FAST_ZERO|PAYLOAD_LEN|0xffc0" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        char buf[NBD_CMD_FLAGS_STRLEN];
        size_t n = nbd_cmd_flags_format(cases[i].flags, buf, sizeof(buf));
        g_assert_cmpstr(buf, ==, cases[i].text);
        g_assert_cmpuint(n, ==, strlen(cases[i].text));
    }
}

static void test_cmd_flags_format_truncated(void)
{
    char buf[8];
    size_t n;

    /* Like snprintf: truncated, NUL-terminated, full length returned. */
    memset(buf, 'x', sizeof(buf));
    n = nbd_cmd_flags_format(0x03, buf, 6);
    g_assert_cmpuint(n, ==, strlen("FUA|NO_HOLE"));
    g_assert_cmpstr(buf, ==, "FUA|N");
    g_assert_cmpint(buf[6], ==, 'x');

    n = nbd_cmd_flags_format(0x01, buf, 1);
    g_assert_cmpuint(n, ==, 3);
    g_assert_cmpstr(buf, ==, "");

    n = nbd_cmd_flags_format(0x41, buf, 4);
    g_assert_cmpuint(n, ==, strlen("FUA|0x40"));
    g_assert_cmpstr(buf, ==, "FUA");

    /* size 0: nothing is written, not even the NUL. */
    buf[0] = 'x';
    n = nbd_cmd_flags_format(0x3f, buf, 0);
    g_assert_cmpuint(n, ==, strlen("FUA|NO_HOLE|DF|REQ_ONE|FAST_ZERO|"
                                   "PAYLOAD_LEN"));
    g_assert_cmpint(buf[0], ==, 'x');
    g_assert_cmpuint(nbd_cmd_flags_format(0, NULL, 0), ==, 1);
}

static void test_errno_to_nbd(void)
{
    static const struct {
        int errnum;
        uint32_t nbd;
    } cases[] = {
        { 0, 0 },
        { EPERM, 1 },
        { EACCES, 1 },
        { EROFS, 1 },
        { EIO, 5 },
        { ENOMEM, 12 },
        { EINVAL, 22 },
        { ENOSPC, 28 },
        { EDQUOT, 28 },
        { EFBIG, 28 },
        { EOVERFLOW, 75 },
        { ENOTSUP, 95 },
        { EOPNOTSUPP, 95 },
        { ESHUTDOWN, 108 },
        /* Anything else is the server's own failure: EIO. */
        { EBADF, 5 },
        { ENXIO, 5 },
        { ENODEV, 5 },
        { EAGAIN, 5 },
        { EFAULT, 5 },
        { ENOENT, 5 },
        { ERANGE, 5 },
        { 4095, 5 },
        /* Negative errno values (as returned by data-path code). */
        { -EIO, 5 },
        { -ENOSPC, 28 },
        { -EROFS, 1 },
        { -EBADF, 5 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_assert_cmpuint(nbd_errno_to_nbd(cases[i].errnum), ==,
                         cases[i].nbd);
    }
}

static void test_nbd_to_errno(void)
{
    static const struct {
        uint32_t nbd;
        int errnum;
    } cases[] = {
        { 0, 0 },
        { 1, EPERM },
        { 5, EIO },
        { 12, ENOMEM },
        { 22, EINVAL },
        { 28, ENOSPC },
        { 75, EOVERFLOW },
        { 95, ENOTSUP },
        { 108, ESHUTDOWN },
        { 2, EINVAL },
        { 13, EINVAL },
        { 0xffffffff, EINVAL },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_assert_cmpint(nbd_err_to_errno(cases[i].nbd), ==,
                        cases[i].errnum);
    }
    /* Every NBD error survives the round trip. */
    for (size_t i = 1; i < 9; i++) {
        g_assert_cmpuint(nbd_errno_to_nbd(nbd_err_to_errno(cases[i].nbd)),
                         ==, cases[i].nbd);
    }
}

static void test_err_msg_len(void)
{
    char msg[600];

    g_assert_cmpuint(nbd_err_msg_len(NULL), ==, 0);
    g_assert_cmpuint(nbd_err_msg_len(""), ==, 0);
    g_assert_cmpuint(nbd_err_msg_len("bad offset"), ==, 10);

    /* 255, 256 and 257 ASCII bytes. */
    memset(msg, 'a', sizeof(msg));
    msg[255] = '\0';
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 255);
    msg[255] = 'a';
    msg[256] = '\0';
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 256);
    msg[256] = 'a';
    msg[257] = '\0';
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 256);
    msg[257] = 'a';
    msg[599] = '\0';
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 256);

    /* A 2-byte sequence (U+00E9) at bytes 255-256 is cut whole. */
    msg[255] = (char)0xc3;
    msg[256] = (char)0xa9;
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 255);
    /* Ending exactly at the limit keeps it. */
    msg[254] = (char)0xc3;
    msg[255] = (char)0xa9;
    msg[256] = 'a';
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 256);
    /* A 4-byte sequence (U+1F600) at 253-256 is cut whole. */
    memcpy(msg + 253, "\xf0\x9f\x98\x80", 4);
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 253);
    /* A 3-byte sequence at 254-256. */
    msg[253] = 'a';
    memcpy(msg + 254, "\xe2\x82\xac", 3);
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 254);
    /* Invalid UTF-8 (continuation bytes only): back up at most 3. */
    memset(msg + 240, 0x80, 30);
    g_assert_cmpuint(nbd_err_msg_len(msg), ==, 253);
}

void register_names_tests(void)
{
    g_test_add_func("/names/opt", test_opt_names);
    g_test_add_func("/names/rep", test_rep_names);
    g_test_add_func("/names/info", test_info_names);
    g_test_add_func("/names/cmd", test_cmd_names);
    g_test_add_func("/names/reply-type", test_reply_type_names);
    g_test_add_func("/names/err", test_err_names);
    g_test_add_func("/names/cmd-flags", test_cmd_flags_format);
    g_test_add_func("/names/cmd-flags-truncated",
                    test_cmd_flags_format_truncated);
    g_test_add_func("/errno/to-nbd", test_errno_to_nbd);
    g_test_add_func("/errno/from-nbd", test_nbd_to_errno);
    g_test_add_func("/errno/msg-len", test_err_msg_len);
}
