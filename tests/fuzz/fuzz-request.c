/*
 * fuzz-request.c: transmission request headers and their validation.
 *
 * Input: a 16-byte session (fuzz-session.h: header style, structured
 * replies, read-only, selected contexts, minimum block size, maximum
 * payload, export size, transmission flags), then a request header of
 * the session's style (28 or 32 bytes; the control bit FZ_FIX_MAGIC
 * writes the right magic in so the fuzzer need not find it), then the
 * bytes that follow it on the wire.  Checks:
 *   - decode accepts exactly the right magic and re-encodes byte for
 *     byte;
 *   - nbd_request_check() returns what the reference model does, never
 *     asks to drain more than the request's length, flags DISC alone as
 *     a disconnect;
 *   - a BLOCK_STATUS payload that passes the header check decodes, and
 *     its check agrees with the model;
 *   - the reply encoders for this request (simple, chunk headers, error
 *     chunks with an input message, data, hole, block status) write the
 *     sizes and fields they document.
 */
#include "fuzz-session.h"

static void encode_header(uint8_t *buf, const NBDRequest *r, int extended)
{
    if (extended) {
        NBDWireExtRequest w = {
            .magic = htobe32(NBD_EXTENDED_REQUEST_MAGIC),
            .flags = htobe16(r->flags),
            .type = htobe16(r->type),
            .cookie = htobe64(r->cookie),
            .offset = htobe64(r->offset),
            .length = htobe64(r->length),
        };
        memcpy(buf, &w, sizeof(w));
    } else {
        NBDWireRequest w = {
            .magic = htobe32(NBD_REQUEST_MAGIC),
            .flags = htobe16(r->flags),
            .type = htobe16(r->type),
            .cookie = htobe64(r->cookie),
            .offset = htobe64(r->offset),
            .length = htobe32((uint32_t)r->length),
        };
        memcpy(buf, &w, sizeof(w));
    }
}

static void check_replies(const NBDRequest *r, int extended,
                          const uint8_t *msgsrc, size_t msglen)
{
    uint8_t buf[NBD_MAX_ERROR_CHUNK];
    size_t hsz = extended ? NBD_EXT_CHUNK_SIZE : NBD_CHUNK_SIZE;
    char msg[NBD_MAX_ERR_MSG * 2];
    size_t n, cut;

    FUZZ_CHECK(nbd_simple_reply_encode(buf, r->cookie, NBD_EIO) == 16);
    FUZZ_CHECK(nbd_get_be32(buf) == NBD_SIMPLE_REPLY_MAGIC);
    FUZZ_CHECK(nbd_get_be64(buf + 8) == r->cookie);

    n = nbd_chunk_none_encode(buf, extended, r);
    FUZZ_CHECK(n == hsz);
    FUZZ_CHECK(nbd_get_be32(buf) == (extended ? NBD_EXTENDED_REPLY_MAGIC
                                              : NBD_STRUCTURED_REPLY_MAGIC));
    FUZZ_CHECK(nbd_get_be16(buf + 4) == NBD_REPLY_FLAG_DONE);
    FUZZ_CHECK(nbd_get_be64(buf + 8) == r->cookie);
    if (extended) {
        FUZZ_CHECK(nbd_get_be64(buf + 16) == r->offset);
    }

    /* Data chunk for a read of the request's length. */
    n = nbd_chunk_data_encode(buf, extended, r, 0, r->offset, r->length);
    if (!extended && r->length + 8 > UINT32_MAX) {
        FUZZ_CHECK(n == 0);
    } else if (extended && r->length > UINT64_MAX - 8) {
        FUZZ_CHECK(n == 0);
    } else {
        FUZZ_CHECK(n == hsz + 8);
        if (extended) {
            FUZZ_CHECK(nbd_get_be64(buf + 24) == r->length + 8);
        } else {
            FUZZ_CHECK(nbd_get_be32(buf + 16) == r->length + 8);
        }
        FUZZ_CHECK(nbd_get_be64(buf + hsz) == r->offset);
    }

    if ((uint32_t)r->length) {
        n = nbd_chunk_hole_encode(buf, extended, r, 0, r->offset,
                                  (uint32_t)r->length);
        FUZZ_CHECK(n == hsz + 12);
        FUZZ_CHECK(nbd_get_be32(buf + hsz + 8) == (uint32_t)r->length);
    }

    /* Error chunks with a message from the input. */
    msglen = msglen < sizeof(msg) - 1 ? msglen : sizeof(msg) - 1;
    memcpy(msg, msgsrc, msglen);
    msg[msglen] = 0;
    cut = nbd_err_msg_len(msg);
    n = nbd_chunk_error_encode(buf, extended, r, NBD_REPLY_FLAG_DONE,
                               (uint32_t)r->cookie, msg);
    FUZZ_CHECK(n == hsz + 6 + cut && n <= sizeof(buf));
    FUZZ_CHECK(nbd_get_be16(buf + 6) == NBD_REPLY_TYPE_ERROR);
    FUZZ_CHECK(nbd_get_be32(buf + hsz) != 0);
    FUZZ_CHECK(nbd_get_be16(buf + hsz + 4) == cut);
    FUZZ_CHECK(memcmp(buf + hsz + 6, msg, cut) == 0);
    n = nbd_chunk_error_offset_encode(buf, extended, r, 0, NBD_EINVAL, msg,
                                      r->offset);
    FUZZ_CHECK(n == hsz + 6 + cut + 8 && n <= sizeof(buf));
    FUZZ_CHECK(nbd_get_be64(buf + hsz + 6 + cut) == r->offset);

    /* Block status headers for a descriptor count from the request. */
    {
        uint32_t count = (uint32_t)r->length;

        n = nbd_chunk_block_status_encode(buf, extended, r, 0, 1, count);
        if (count == 0 ||
            (!extended && 4 + 8 * (uint64_t)count > UINT32_MAX)) {
            FUZZ_CHECK(n == 0);
        } else {
            FUZZ_CHECK(n == hsz + 4);
        }
        if (extended) {
            n = nbd_chunk_block_status_ext_encode(buf, r, 0, 1, count);
            FUZZ_CHECK(n == (count ? 40u : 0u));
            if (count) {
                FUZZ_CHECK(nbd_get_be32(buf + 36) == count);
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzIn in = { data, size };
    NBDSession s;
    NBDRequest req;
    NBDCheck chk;
    uint8_t hdr[NBD_EXT_REQUEST_SIZE], again[NBD_EXT_REQUEST_SIZE];
    size_t hsize;
    uint8_t ctl;
    uint32_t err, want;
    uint64_t expect_payload;
    int r, extended;

    ctl = fuzz_session(&in, &s);
    extended = s.extended;
    hsize = nbd_request_size(extended);
    FUZZ_CHECK(hsize == (extended ? 32u : 28u));
    if (in.left < hsize) {
        return 0;
    }
    memcpy(hdr, in.p, hsize);
    in.p += hsize;
    in.left -= hsize;
    if (ctl & FZ_FIX_MAGIC) {
        nbd_put_be32(hdr, extended ? NBD_EXTENDED_REQUEST_MAGIC
                                   : NBD_REQUEST_MAGIC);
    }

    memset(&req, 0xa5, sizeof(req));
    r = nbd_request_decode(hdr, extended, &req);
    if (nbd_get_be32(hdr) != (extended ? NBD_EXTENDED_REQUEST_MAGIC
                                       : NBD_REQUEST_MAGIC)) {
        FUZZ_CHECK(r == -EPROTO);
        return 0;
    }
    FUZZ_CHECK(r == 0);
    encode_header(again, &req, extended);
    FUZZ_CHECK(memcmp(again, hdr, hsize) == 0);

    expect_payload = extended
        ? (req.flags & NBD_CMD_FLAG_PAYLOAD_LEN ? req.length : 0)
        : (req.type == NBD_CMD_WRITE ? req.length : 0);
    FUZZ_CHECK(nbd_request_payload_len(&req, extended) == expect_payload);

    memset(&chk, 0x5a, sizeof(chk));
    err = nbd_request_check(&req, &s, &chk);
    FUZZ_CHECK(chk.payload == expect_payload);
    FUZZ_CHECK(chk.payload <= req.length);
    FUZZ_CHECK(chk.disconnect == (req.type == NBD_CMD_DISC));
    if (chk.disconnect) {
        FUZZ_CHECK(err == 0);
    }
    FUZZ_CHECK(err == 0 || err == NBD_EINVAL || err == NBD_EPERM ||
               err == NBD_ENOSPC);
    FUZZ_CHECK(err == ref_request_check(&req, &s));

    if (err == 0 && req.type == NBD_CMD_BLOCK_STATUS &&
        (req.flags & NBD_CMD_FLAG_PAYLOAD_LEN)) {
        NBDBlockStatusPayload p;
        uint32_t e2, want2 = 0;

        FUZZ_CHECK(req.length <= NBD_MAX_BS_PAYLOAD);
        if (in.left >= req.length) {
            /* A copy of exactly the payload's size. */
            uint8_t *pl = malloc(req.length);

            FUZZ_CHECK(pl != NULL);
            memcpy(pl, in.p, req.length);
            FUZZ_CHECK(nbd_bs_payload_decode(pl, req.length, &p) == 0);
            FUZZ_CHECK(p.nids * 4 + 8 == req.length);
            FUZZ_CHECK(fuzz_inside(p.ids, 4 * (size_t)p.nids, pl,
                                   req.length));
            want = 0xdeadbeef;
            e2 = nbd_bs_payload_check(&req, &s, &p, &want);
            FUZZ_CHECK(e2 == ref_bs_check(&req, &s, p.effect_length, p.ids,
                                          p.nids, &want2));
            if (e2 == 0) {
                FUZZ_CHECK(want == want2 && want != 0);
                FUZZ_CHECK((want & ~s.meta) == 0);
            }
            free(pl);
        }
    }
    check_replies(&req, extended, in.p, in.left);
    return 0;
}
