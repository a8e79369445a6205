/*
 * test-request.c: request decoding, payload framing, and the request
 * validation rules, as one table of cases.
 */
#include <errno.h>
#include <inttypes.h>

#include "test-proto.h"

/* ------------------------------------------------------------------ */
/* Decoding                                                            */
/* ------------------------------------------------------------------ */

static void test_decode_compact(void)
{
    uint8_t buf[] = {
        0x25, 0x60, 0x95, 0x13,
        0x00, 0x01,                                     /* FUA */
        0x00, 0x01,                                     /* WRITE */
        0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, /* cookie */
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x02, 0x00, /* offset */
        0x80, 0x00, 0x10, 0x00,                         /* length */
    };
    NBDRequest req = { 0 };

    g_assert_cmpuint(nbd_request_size(false), ==, 28);
    g_assert_cmpuint(NBD_REQUEST_SIZE, ==, 28);
    g_assert_cmpint(nbd_request_decode(buf, false, &req), ==, 0);
    g_assert_cmphex(req.flags, ==, NBD_CMD_FLAG_FUA);
    g_assert_cmpuint(req.type, ==, NBD_CMD_WRITE);
    g_assert_cmphex(req.cookie, ==, 0xdeadbeef01020304ull);
    g_assert_cmphex(req.offset, ==, 0x0000000100000200ull);
    g_assert_cmphex(req.length, ==, 0x80001000u);

    /* The compact decoder reads exactly 28 bytes. */
    uint8_t *exact = g_memdup2(buf, sizeof(buf));
    g_assert_cmpint(nbd_request_decode(exact, false, &req), ==, 0);
    g_free(exact);

    /* Bad magic, and the extended magic, are both fatal. */
    for (size_t i = 0; i < 4; i++) {
        buf[i] ^= 0x01;
        g_assert_cmpint(nbd_request_decode(buf, false, &req), ==, -EPROTO);
        buf[i] ^= 0x01;
    }
    nbd_put_be32(buf, NBD_EXTENDED_REQUEST_MAGIC);
    g_assert_cmpint(nbd_request_decode(buf, false, &req), ==, -EPROTO);
}

static void test_decode_extended(void)
{
    uint8_t buf[] = {
        0x21, 0xe4, 0x1c, 0x71,
        0x00, 0x20,                                     /* PAYLOAD_LEN */
        0x00, 0x07,                                     /* BLOCK_STATUS */
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x0c,
    };
    NBDRequest req = { 0 };

    g_assert_cmpuint(nbd_request_size(true), ==, 32);
    g_assert_cmpuint(NBD_EXT_REQUEST_SIZE, ==, 32);
    uint8_t *exact = g_memdup2(buf, sizeof(buf));
    g_assert_cmpint(nbd_request_decode(exact, true, &req), ==, 0);
    g_free(exact);
    g_assert_cmphex(req.flags, ==, NBD_CMD_FLAG_PAYLOAD_LEN);
    g_assert_cmpuint(req.type, ==, NBD_CMD_BLOCK_STATUS);
    g_assert_cmphex(req.cookie, ==, 0x1122334455667788ull);
    g_assert_cmphex(req.offset, ==, 0x100000);
    g_assert_cmphex(req.length, ==, 0x000000020000000cull);

    for (size_t i = 0; i < 4; i++) {
        buf[i] ^= 0x80;
        g_assert_cmpint(nbd_request_decode(buf, true, &req), ==, -EPROTO);
        buf[i] ^= 0x80;
    }
    /* A compact request after extended headers were negotiated. */
    nbd_put_be32(buf, NBD_REQUEST_MAGIC);
    g_assert_cmpint(nbd_request_decode(buf, true, &req), ==, -EPROTO);
}

static void test_payload_len(void)
{
    static const struct {
        bool extended;
        uint16_t type, flags;
        uint64_t length, payload;
    } cases[] = {
        { false, NBD_CMD_WRITE, 0, 4096, 4096 },
        { false, NBD_CMD_WRITE, NBD_CMD_FLAG_PAYLOAD_LEN, 4096, 4096 },
        { false, NBD_CMD_WRITE, 0, 0, 0 },
        { false, NBD_CMD_READ, 0, 4096, 0 },
        { false, NBD_CMD_TRIM, 0, 4096, 0 },
        { false, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_PAYLOAD_LEN, 12, 0 },
        { false, 99, 0, 4096, 0 },
        { true, NBD_CMD_WRITE, NBD_CMD_FLAG_PAYLOAD_LEN, 4096, 4096 },
        { true, NBD_CMD_WRITE, 0, 4096, 0 },
        { true, NBD_CMD_READ, 0, 4096, 0 },
        { true, NBD_CMD_READ, NBD_CMD_FLAG_PAYLOAD_LEN, 4096, 4096 },
        { true, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_PAYLOAD_LEN, 12, 12 },
        { true, 99, NBD_CMD_FLAG_PAYLOAD_LEN, 1ull << 40, 1ull << 40 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        NBDRequest req = {
            .flags = cases[i].flags,
            .type = cases[i].type,
            .length = cases[i].length,
        };
        g_assert_cmpuint(nbd_request_payload_len(&req, cases[i].extended),
                         ==, cases[i].payload);
    }
}

/* ------------------------------------------------------------------ */
/* Validation                                                          */
/* ------------------------------------------------------------------ */

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)

#define ALL_SEND_FLAGS \
    (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | \
     NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF | \
     NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO)

/* Structured replies, every command advertised, 1 MiB, 512-byte
 * blocks, 64 KiB max payload, base:allocation selected. */
static const NBDSession s_sr = {
    .size = 1 * MiB, .min_block = 512, .max_payload = 64 * KiB,
    .tflags = ALL_SEND_FLAGS, .structured = true, .meta = 1,
};
/* The same, read-only. */
static const NBDSession s_ro = {
    .size = 1 * MiB, .min_block = 512, .max_payload = 64 * KiB,
    .tflags = ALL_SEND_FLAGS | NBD_FLAG_READ_ONLY, .read_only = true,
    .structured = true, .meta = 1,
};
/* Read-only as the server advertises it: no TRIM, no WRITE_ZEROES. */
static const NBDSession s_ro_srv = {
    .size = 1 * MiB, .min_block = 512, .max_payload = 64 * KiB,
    .tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH |
              NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_DF | NBD_FLAG_SEND_CACHE,
    .read_only = true, .structured = true, .meta = 1,
};
/* An export of 612 bytes with 512-byte blocks: the last one is short. */
static const NBDSession s_odd = {
    .size = 612, .min_block = 512, .max_payload = 64 * KiB,
    .tflags = ALL_SEND_FLAGS, .structured = true, .meta = 1,
};
/* Nothing negotiated or advertised; defaults for block sizes. */
static const NBDSession s_plain = {
    .size = 1 * GiB, .tflags = NBD_FLAG_HAS_FLAGS,
};
/* Structured replies but no DF and no metadata context. */
static const NBDSession s_sr_bare = {
    .size = 1 * MiB, .min_block = 1, .max_payload = 64 * KiB,
    .tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FUA, .structured = true,
};
/* Extended headers (without structured replies), 1 TiB, 4 KiB blocks,
 * 1 MiB max payload, block status payloads advertised. */
static const NBDSession s_ext = {
    .size = 1024 * GiB, .min_block = 4096, .max_payload = 1 * MiB,
    .tflags = ALL_SEND_FLAGS | NBD_FLAG_BLOCK_STATUS_PAYLOAD,
    .extended = true, .meta = 1,
};
/* Extended headers without block status payloads or a context. */
static const NBDSession s_ext_bare = {
    .size = 1024 * GiB, .min_block = 4096, .max_payload = 1 * MiB,
    .tflags = ALL_SEND_FLAGS, .structured = true, .extended = true,
};
/* RESIZE advertised (writable and read-only). */
static const NBDSession s_resize = {
    .size = 1 * MiB, .tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_RESIZE,
};
/* WRITE_ZEROES without FAST_ZERO. */
static const NBDSession s_wz = {
    .size = 1 * MiB, .tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_WRITE_ZEROES,
};
static const NBDSession s_resize_ro = {
    .size = 1 * MiB, .read_only = true,
    .tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_RESIZE | NBD_FLAG_READ_ONLY,
};

/* Short names for the table. */
#define RD NBD_CMD_READ
#define WR NBD_CMD_WRITE
#define DISC NBD_CMD_DISC
#define FL NBD_CMD_FLUSH
#define TR NBD_CMD_TRIM
#define CA NBD_CMD_CACHE
#define WZ NBD_CMD_WRITE_ZEROES
#define BS NBD_CMD_BLOCK_STATUS
#define RS NBD_CMD_RESIZE
#define FUA NBD_CMD_FLAG_FUA
#define NOHOLE NBD_CMD_FLAG_NO_HOLE
#define DF NBD_CMD_FLAG_DF
#define ONE NBD_CMD_FLAG_REQ_ONE
#define FAST NBD_CMD_FLAG_FAST_ZERO
#define PLEN NBD_CMD_FLAG_PAYLOAD_LEN
#define EPERM_ NBD_EPERM
#define EINVAL_ NBD_EINVAL
#define ENOSPC_ NBD_ENOSPC

typedef struct CheckCase {
    int line;
    const NBDSession *s;
    uint16_t type, flags;
    uint64_t offset, length;
    uint32_t error;         /* expected NBD error */
    uint64_t payload;       /* expected payload to read or drain */
    bool disconnect;
} CheckCase;

#define C(s, type, flags, off, len, err, payload) \
    { __LINE__, s, type, flags, off, len, err, payload, false }
#define D(s, type, flags, off, len, payload) \
    { __LINE__, s, type, flags, off, len, 0, payload, true }

static const CheckCase check_cases[] = {
    /* Plain valid requests. */
    C(&s_sr, RD, 0, 0, 4096, 0, 0),
    C(&s_sr, WR, 0, 0, 4096, 0, 4096),
    C(&s_sr, WR, FUA, 512, 512, 0, 512),
    C(&s_sr, TR, 0, 0, 4096, 0, 0),
    C(&s_sr, WZ, 0, 0, 4096, 0, 0),
    C(&s_sr, CA, 0, 0, 4096, 0, 0),
    C(&s_sr, BS, 0, 0, 4096, 0, 0),
    C(&s_sr, FL, 0, 0, 0, 0, 0),

    /* Disconnect: never an error, whatever the fields say. */
    D(&s_sr, DISC, 0, 0, 0, 0),
    D(&s_sr, DISC, 0xffff, 12345, 99, 0),
    D(&s_plain, DISC, FUA, 0, 0, 0),
    D(&s_ext, DISC, PLEN, 0, 100, 100),

    /* Unknown or unadvertised commands. */
    C(&s_sr, 9, 0, 0, 0, EINVAL_, 0),
    C(&s_sr, 0xffff, 0, 0, 4096, EINVAL_, 0),
    C(&s_sr, RS, 0, 0, 0, EINVAL_, 0),
    C(&s_plain, FL, 0, 0, 0, EINVAL_, 0),
    C(&s_plain, TR, 0, 0, 512, EINVAL_, 0),
    C(&s_plain, WZ, 0, 0, 512, EINVAL_, 0),
    C(&s_plain, CA, 0, 0, 512, EINVAL_, 0),
    C(&s_plain, RD, 0, 0, 512, 0, 0),
    C(&s_plain, WR, 0, 0, 512, 0, 512),

    /* FUA: valid on every command, but only when advertised. */
    C(&s_sr, RD, FUA, 0, 512, 0, 0),
    C(&s_sr, TR, FUA, 0, 512, 0, 0),
    C(&s_sr, WZ, FUA, 0, 512, 0, 0),
    C(&s_sr, CA, FUA, 0, 512, 0, 0),
    C(&s_sr, BS, FUA, 0, 512, 0, 0),
    C(&s_sr, FL, FUA, 0, 0, 0, 0),
    C(&s_plain, RD, FUA, 0, 512, EINVAL_, 0),
    C(&s_plain, WR, FUA, 0, 512, EINVAL_, 512),

    /* NO_HOLE and FAST_ZERO: WRITE_ZEROES only. */
    C(&s_sr, WZ, NOHOLE, 0, 512, 0, 0),
    C(&s_sr, WZ, FAST, 0, 512, 0, 0),
    C(&s_sr, WZ, FUA | NOHOLE | FAST, 0, 512, 0, 0),
    C(&s_sr, RD, NOHOLE, 0, 512, EINVAL_, 0),
    C(&s_sr, WR, NOHOLE, 0, 512, EINVAL_, 512),
    C(&s_sr, TR, NOHOLE, 0, 512, EINVAL_, 0),
    C(&s_sr, TR, FAST, 0, 512, EINVAL_, 0),
    C(&s_sr, WR, FAST, 0, 512, EINVAL_, 512),
    /* FAST_ZERO needs SEND_FAST_ZERO. */
    C(&s_wz, WZ, FAST, 0, 512, EINVAL_, 0),
    C(&s_wz, WZ, NOHOLE, 0, 512, 0, 0),

    /* DF: READ only, with structured replies and SEND_DF. */
    C(&s_sr, RD, DF, 0, 512, 0, 0),
    C(&s_sr, RD, DF | FUA, 0, 512, 0, 0),
    C(&s_sr, WR, DF, 0, 512, EINVAL_, 512),
    C(&s_sr, BS, DF, 0, 512, EINVAL_, 0),
    C(&s_plain, RD, DF, 0, 512, EINVAL_, 0),
    C(&s_sr_bare, RD, DF, 0, 512, EINVAL_, 0),
    C(&s_ext, RD, DF, 0, 4096, 0, 0),

    /* REQ_ONE: BLOCK_STATUS only. */
    C(&s_sr, BS, ONE, 0, 512, 0, 0),
    C(&s_sr, BS, ONE | FUA, 0, 512, 0, 0),
    C(&s_sr, RD, ONE, 0, 512, EINVAL_, 0),
    C(&s_sr, WZ, ONE, 0, 512, EINVAL_, 0),

    /* Unknown flag bits. */
    C(&s_sr, RD, 0x40, 0, 512, EINVAL_, 0),
    C(&s_sr, RD, 0x8000, 0, 512, EINVAL_, 0),
    C(&s_sr, WR, 0x0100, 0, 512, EINVAL_, 512),
    C(&s_sr, FL, 0x0200, 0, 0, EINVAL_, 0),

    /* PAYLOAD_LEN with compact headers: invalid, and (compact framing)
     * only a WRITE has a payload to drain. */
    C(&s_sr, RD, PLEN, 0, 512, EINVAL_, 0),
    C(&s_sr, WR, PLEN, 0, 512, EINVAL_, 512),
    C(&s_sr, BS, PLEN, 0, 12, EINVAL_, 0),

    /* Read-only export: writes fail with EPERM (payload drained), after
     * the flag checks and before the range checks. */
    C(&s_ro, WR, 0, 0, 512, EPERM_, 512),
    C(&s_ro, WR, FUA, 0, 512, EPERM_, 512),
    C(&s_ro, TR, 0, 0, 512, EPERM_, 0),
    C(&s_ro, WZ, NOHOLE, 0, 512, EPERM_, 0),
    C(&s_ro, WR, 0, 2 * MiB, 512, EPERM_, 512),
    C(&s_ro, WR, DF, 0, 512, EINVAL_, 512),
    C(&s_ro, RD, 0, 0, 512, 0, 0),
    C(&s_ro, FL, 0, 0, 0, 0, 0),
    C(&s_ro, CA, 0, 0, 512, 0, 0),
    C(&s_ro, BS, 0, 0, 512, 0, 0),
    /* ...even when TRIM and WRITE_ZEROES are not advertised. */
    C(&s_ro_srv, TR, 0, 0, 512, EPERM_, 0),
    C(&s_ro_srv, WZ, NOHOLE, 0, 512, EPERM_, 0),
    C(&s_ro_srv, WZ, FAST, 0, 512, EPERM_, 0),
    C(&s_ro_srv, TR, DF, 0, 512, EINVAL_, 0),

    /* FLUSH must have zero offset and length. */
    C(&s_sr, FL, 0, 512, 0, EINVAL_, 0),
    C(&s_sr, FL, 0, 0, 512, EINVAL_, 0),
    C(&s_sr, FL, 0, 1, 1, EINVAL_, 0),

    /* BLOCK_STATUS needs structured replies and a selected context. */
    C(&s_plain, BS, 0, 0, 512, EINVAL_, 0),
    C(&s_sr_bare, BS, 0, 0, 512, EINVAL_, 0),
    C(&s_ext_bare, BS, 0, 0, 4096, EINVAL_, 0),

    /* Maximum payload: READ and WRITE only. */
    C(&s_sr, RD, 0, 0, 64 * KiB, 0, 0),
    C(&s_sr, RD, 0, 0, 64 * KiB + 512, EINVAL_, 0),
    C(&s_sr, RD, DF, 0, 64 * KiB + 512, EINVAL_, 0),
    C(&s_sr, WR, 0, 0, 64 * KiB, 0, 64 * KiB),
    C(&s_sr, WR, 0, 0, 64 * KiB + 512, EINVAL_, 64 * KiB + 512),
    C(&s_sr, WR, 0, 0, 0xffffffff, EINVAL_, 0xffffffff),
    C(&s_sr, TR, 0, 0, 1 * MiB, 0, 0),
    C(&s_sr, WZ, 0, 0, 1 * MiB, 0, 0),
    C(&s_sr, CA, 0, 0, 1 * MiB, 0, 0),
    C(&s_sr, BS, 0, 0, 1 * MiB, 0, 0),
    /* max_payload 0 means the 64 MiB default. */
    C(&s_plain, RD, 0, 0, 64 * MiB, 0, 0),
    C(&s_plain, RD, 0, 0, 64 * MiB + 1, EINVAL_, 0),
    C(&s_plain, WR, 0, 0, 64 * MiB, 0, 64 * MiB),
    C(&s_plain, WR, 0, 0, 64 * MiB + 1, EINVAL_, 64 * MiB + 1),

    /* Range: ENOSPC for writes, EINVAL otherwise; overflow-safe. */
    C(&s_sr, RD, 0, 1 * MiB - 512, 512, 0, 0),
    C(&s_sr, WR, 0, 1 * MiB - 512, 512, 0, 512),
    C(&s_sr, RD, 0, 1 * MiB - 512, 1024, EINVAL_, 0),
    C(&s_sr, WR, 0, 1 * MiB - 512, 1024, ENOSPC_, 1024),
    C(&s_sr, WZ, 0, 1 * MiB - 512, 1024, ENOSPC_, 0),
    C(&s_sr, TR, 0, 1 * MiB - 512, 1024, EINVAL_, 0),
    C(&s_sr, CA, 0, 1 * MiB - 512, 1024, EINVAL_, 0),
    C(&s_sr, BS, 0, 1 * MiB - 512, 1024, EINVAL_, 0),
    C(&s_sr, RD, 0, 1 * MiB, 512, EINVAL_, 0),
    C(&s_sr, WR, 0, 1 * MiB, 512, ENOSPC_, 512),
    C(&s_sr, RD, 0, UINT64_MAX - 511, 512, EINVAL_, 0),
    C(&s_sr, WR, 0, UINT64_MAX - 511, 1024, ENOSPC_, 1024),
    C(&s_sr, WZ, 0, 512, UINT64_MAX - 511, ENOSPC_, 0),
    C(&s_sr, TR, 0, 512, UINT64_MAX - 511, EINVAL_, 0),
    C(&s_ext, TR, 0, 4096, UINT64_MAX - 4095, EINVAL_, 0),

    /* Alignment to the minimum block size. */
    C(&s_sr, RD, 0, 1, 512, EINVAL_, 0),
    C(&s_sr, RD, 0, 0, 100, EINVAL_, 0),
    C(&s_sr, WR, 0, 512, 513, EINVAL_, 513),
    C(&s_sr, WR, 0, 256, 512, EINVAL_, 512),
    C(&s_sr, TR, 0, 256, 512, EINVAL_, 0),
    C(&s_sr, TR, 0, 0, 100, EINVAL_, 0),
    C(&s_sr, WZ, 0, 0, 100, EINVAL_, 0),
    C(&s_sr, CA, 0, 100, 512, EINVAL_, 0),
    /* BLOCK_STATUS: descriptors must be whole blocks, so the request
     * must be too, except where it ends at the end of the export. */
    C(&s_sr, BS, 0, 100, 512, EINVAL_, 0),
    C(&s_sr, BS, 0, 0, 100, EINVAL_, 0),
    C(&s_sr, BS, ONE, 0, 100, EINVAL_, 0),
    C(&s_sr, BS, 0, 512, 1, EINVAL_, 0),
    C(&s_sr, BS, 0, 512, 1000, EINVAL_, 0),
    C(&s_sr, BS, 0, 0, 1 * MiB, 0, 0),
    C(&s_odd, BS, 0, 512, 100, 0, 0),
    C(&s_odd, BS, ONE, 0, 612, 0, 0),
    C(&s_odd, BS, 0, 0, 100, EINVAL_, 0),
    /* Minimum block 1 (or unset) accepts any alignment. */
    C(&s_plain, RD, 0, 1, 3, 0, 0),
    C(&s_plain, WR, 0, 7, 5, 0, 5),
    C(&s_sr_bare, RD, 0, 3, 1, 0, 0),

    /* Zero-length requests: valid no-ops, except BLOCK_STATUS. */
    C(&s_sr, RD, 0, 0, 0, 0, 0),
    C(&s_sr, WR, 0, 0, 0, 0, 0),
    C(&s_sr, TR, 0, 512, 0, 0, 0),
    C(&s_sr, WZ, 0, 1 * MiB, 0, 0, 0),
    C(&s_sr, CA, 0, 1 * MiB, 0, 0, 0),
    C(&s_sr, RD, 0, 1 * MiB, 0, 0, 0),
    C(&s_sr, RD, 0, 1 * MiB + 512, 0, EINVAL_, 0),
    C(&s_sr, WR, 0, 1 * MiB + 512, 0, ENOSPC_, 0),
    C(&s_sr, RD, 0, 100, 0, EINVAL_, 0),
    C(&s_sr, BS, 0, 0, 0, EINVAL_, 0),

    /* Extended headers: WRITE needs PAYLOAD_LEN ... */
    C(&s_ext, WR, PLEN, 0, 4096, 0, 4096),
    C(&s_ext, WR, PLEN | FUA, 4096, 8192, 0, 8192),
    C(&s_ext, WR, 0, 0, 4096, EINVAL_, 0),
    /* ... other commands must not use it; their payload is drained. */
    C(&s_ext, RD, PLEN, 0, 4096, EINVAL_, 4096),
    C(&s_ext, TR, PLEN, 0, 4096, EINVAL_, 4096),
    C(&s_ext, FL, PLEN, 0, 16, EINVAL_, 16),
    C(&s_ext, 42, PLEN, 0, 16, EINVAL_, 16),
    /* 64-bit effect lengths for commands without payload. */
    C(&s_ext, RD, 0, 0, 4096, 0, 0),
    C(&s_ext, TR, 0, 0, 8 * GiB, 0, 0),
    C(&s_ext, WZ, NOHOLE, 4 * GiB, 8 * GiB, 0, 0),
    C(&s_ext, BS, 0, 0, 8 * GiB, 0, 0),
    C(&s_ext, TR, 0, 0, 1024 * GiB, 0, 0),
    C(&s_ext, TR, 0, 0, 1024 * GiB + 4096, EINVAL_, 0),
    C(&s_ext, RD, 0, 0, 8 * GiB, EINVAL_, 0),
    /* Oversized payloads are drained, never a reason to disconnect. */
    C(&s_ext, WR, PLEN, 0, 1 * MiB, 0, 1 * MiB),
    C(&s_ext, WR, PLEN, 0, 1 * MiB + 4096, EINVAL_, 1 * MiB + 4096),
    C(&s_ext, WR, PLEN, 0, 1ull << 40, EINVAL_, 1ull << 40),
    C(&s_ext, WR, PLEN, 0, UINT64_MAX, EINVAL_, UINT64_MAX),
    C(&s_ext, WR, PLEN, 0, 100, EINVAL_, 100),

    /* BLOCK_STATUS payload form: 8 + 4n bytes, 1 <= n <= contexts. */
    C(&s_ext, BS, PLEN, 0, 12, 0, 12),
    C(&s_ext, BS, PLEN | ONE, 4096, 12, 0, 12),
    C(&s_ext, BS, PLEN, 0, 0, EINVAL_, 0),
    C(&s_ext, BS, PLEN, 0, 8, EINVAL_, 8),
    C(&s_ext, BS, PLEN, 0, 11, EINVAL_, 11),
    C(&s_ext, BS, PLEN, 0, 13, EINVAL_, 13),
    C(&s_ext, BS, PLEN, 0, 16, EINVAL_, 16),
    C(&s_ext, BS, PLEN, 0, 1 * GiB, EINVAL_, 1 * GiB),
    /* ... only when advertised. */
    C(&s_ext_bare, BS, PLEN, 0, 12, EINVAL_, 12),

    /* RESIZE, when advertised: flag and read-only checks only. */
    C(&s_resize, RS, 0, 5 * MiB, 0, 0, 0),
    C(&s_resize, RS, NOHOLE, 0, 0, EINVAL_, 0),
    C(&s_resize_ro, RS, 0, 0, 0, EPERM_, 0),
};

static void test_check_table(void)
{
    for (size_t i = 0; i < G_N_ELEMENTS(check_cases); i++) {
        const CheckCase *c = &check_cases[i];
        NBDRequest req = {
            .flags = c->flags,
            .type = c->type,
            .cookie = 0x0123456789abcdefull,
            .offset = c->offset,
            .length = c->length,
        };
        NBDCheck out = { 0xdeadbeef, true };
        uint32_t err = nbd_request_check(&req, c->s, &out);

        if (err != c->error || out.payload != c->payload ||
            out.disconnect != c->disconnect) {
            g_error("case at line %d: got error %u payload %" PRIu64
                    " disconnect %d, want %u / %" PRIu64 " / %d",
                    c->line, err, out.payload, out.disconnect, c->error,
                    c->payload, c->disconnect);
        }
    }
}

/* ------------------------------------------------------------------ */
/* BLOCK_STATUS payload                                                */
/* ------------------------------------------------------------------ */

static void test_bs_payload_decode(void)
{
    static const uint8_t payload[] = {
        0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x10, 0x00,
        0x00, 0x00, 0x00, 0x01,
        0xee, 0xee, 0xee, 0xee,
    };
    NBDBlockStatusPayload p;

    g_assert_cmpuint(NBD_MAX_BS_PAYLOAD, ==, 12);
    uint8_t *exact = g_memdup2(payload, 12);
    g_assert_cmpint(nbd_bs_payload_decode(exact, 12, &p), ==, 0);
    g_assert_cmphex(p.effect_length, ==, 0x0000000200001000ull);
    g_assert_cmpuint(p.nids, ==, 1);
    g_assert_cmpuint(nbd_get_be32(p.ids), ==, 1);
    g_assert_true(p.ids == exact + 8);
    g_free(exact);

    for (size_t len = 0; len < 12; len++) {
        g_assert_cmpint(nbd_bs_payload_decode(payload, len, &p), ==,
                        -EINVAL);
    }
    g_assert_cmpint(nbd_bs_payload_decode(payload, 13, &p), ==, -EINVAL);
    g_assert_cmpint(nbd_bs_payload_decode(payload, 16, &p), ==, -EINVAL);
}

static void test_bs_payload_check(void)
{
    /* ids: 1 (base:allocation), 1 again, 0, 2. */
    static const uint8_t ids[] = {
        0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2,
    };
    static const struct {
        const NBDSession *s;
        uint64_t offset, effect;
        size_t first, nids;
        uint32_t error, want;
    } cases[] = {
        { &s_ext, 0, 4096, 0, 1, 0, 1 },
        { &s_ext, 4096, 8 * GiB, 0, 1, 0, 1 },
        /* The effect length must be whole blocks, as without payload. */
        { &s_ext, 0, 100, 0, 1, NBD_EINVAL, 0 },
        { &s_ext, 4096, 4097, 0, 1, NBD_EINVAL, 0 },
        /* Duplicate, unknown, and unselected ids. */
        { &s_ext, 0, 4096, 0, 2, NBD_EINVAL, 0 },
        { &s_ext, 0, 4096, 2, 1, NBD_EINVAL, 0 },
        { &s_ext, 0, 4096, 3, 1, NBD_EINVAL, 0 },
        { &s_ext_bare, 0, 4096, 0, 1, NBD_EINVAL, 0 },
        /* Range, alignment and zero length of the effect length. */
        { &s_ext, 0, 0, 0, 1, NBD_EINVAL, 0 },
        { &s_ext, 100, 4096, 0, 1, NBD_EINVAL, 0 },
        { &s_ext, 1024 * GiB - 4096, 4096, 0, 1, 0, 1 },
        { &s_ext, 1024 * GiB - 4096, 8192, 0, 1, NBD_EINVAL, 0 },
        { &s_ext, 4096, UINT64_MAX, 0, 1, NBD_EINVAL, 0 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        NBDRequest req = {
            .flags = NBD_CMD_FLAG_PAYLOAD_LEN,
            .type = NBD_CMD_BLOCK_STATUS,
            .offset = cases[i].offset,
            .length = 8 + 4 * cases[i].nids,
        };
        NBDBlockStatusPayload p = {
            .effect_length = cases[i].effect,
            .nids = cases[i].nids,
            .ids = ids + 4 * cases[i].first,
        };
        uint32_t want = 0xff;
        uint32_t err = nbd_bs_payload_check(&req, cases[i].s, &p, &want);

        g_assert_cmpuint(err, ==, cases[i].error);
        if (err == 0) {
            g_assert_cmpuint(want, ==, cases[i].want);
        }
    }
}

void register_request_tests(void)
{
    g_test_add_func("/request/decode-compact", test_decode_compact);
    g_test_add_func("/request/decode-extended", test_decode_extended);
    g_test_add_func("/request/payload-len", test_payload_len);
    g_test_add_func("/request/check", test_check_table);
    g_test_add_func("/request/bs-payload-decode", test_bs_payload_decode);
    g_test_add_func("/request/bs-payload-check", test_bs_payload_check);
}
