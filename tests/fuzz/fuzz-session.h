/*
 * fuzz-session.h: sessions taken from fuzz input, and a reference model
 * of request validation written from the rules documented for
 * nbd_request_check() and nbd_bs_payload_check() in proto/nbd-proto.h.
 * The targets compare the real functions with this model.
 */
#ifndef RAWNBD_TESTS_FUZZ_SESSION_H
#define RAWNBD_TESTS_FUZZ_SESSION_H

#include "fuzz.h"

#include "proto/nbd-proto.h"

/* Control bits of the first byte of the session. */
#define FZ_EXTENDED     0x01
#define FZ_STRUCTURED   0x02
#define FZ_READ_ONLY    0x04
#define FZ_META         0x08    /* base:allocation selected */
#define FZ_META_BOGUS   0x10    /* a context bit that does not exist */
#define FZ_FIX_MAGIC    0x20    /* write the right request magic */

/* 16 bytes: control, min block, max payload, size, tflags. */
static inline uint8_t fuzz_session(FuzzIn *in, NBDSession *s)
{
    uint8_t ctl = (uint8_t)fuzz_take(in, 1);
    unsigned k = (unsigned)fuzz_take(in, 1) % 18;

    memset(s, 0, sizeof(*s));
    s->extended = ctl & FZ_EXTENDED;
    s->structured = (ctl & FZ_STRUCTURED) || s->extended;
    s->read_only = ctl & FZ_READ_ONLY;
    s->meta = (ctl & FZ_META ? 1u : 0) | (ctl & FZ_META_BOGUS ? 2u : 0);
    s->min_block = k == 17 ? 0 : 1u << k;
    s->max_payload = (uint32_t)fuzz_take(in, 4);
    /* Mostly small exports, so that ranges fit sometimes. */
    s->size = fuzz_take(in, 8);
    if (ctl & 0x40) {
        s->size &= 0xfffff;
    }
    s->tflags = (uint16_t)fuzz_take(in, 2);
    return ctl;
}

static inline int ref_write_like(uint16_t type)
{
    return type == NBD_CMD_WRITE || type == NBD_CMD_TRIM ||
           type == NBD_CMD_WRITE_ZEROES || type == NBD_CMD_RESIZE;
}

/* Range, alignment, zero length (steps 8-9). */
static inline uint32_t ref_extent(uint16_t type, uint64_t off, uint64_t len,
                                  const NBDSession *s)
{
    uint64_t bs = s->min_block ? s->min_block : 1;

    if (off > s->size || s->size - off < len) {
        return type == NBD_CMD_WRITE || type == NBD_CMD_WRITE_ZEROES
               ? NBD_ENOSPC : NBD_EINVAL;
    }
    if (type == NBD_CMD_BLOCK_STATUS) {
        if (len == 0) {
            return NBD_EINVAL;
        }
        /* Only a request reaching the end may end off a block. */
        return off % bs || (len % bs && off + len != s->size)
               ? NBD_EINVAL : 0;
    }
    return off % bs || len % bs ? NBD_EINVAL : 0;
}

static inline uint32_t ref_request_check(const NBDRequest *r,
                                         const NBDSession *sess)
{
    /*
     * On a read-only export, write-like commands are judged as if TRIM,
     * WRITE_ZEROES and FAST_ZERO were advertised, then refused with EPERM.
     */
    NBDSession widened = *sess;
    const NBDSession *s = sess;
    uint16_t ok = 0;

    if (sess->read_only && ref_write_like(r->type)) {
        widened.tflags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                          NBD_FLAG_SEND_FAST_ZERO;
        s = &widened;
    }
    uint64_t max = s->max_payload ? s->max_payload : NBD_DEFAULT_MAX_PAYLOAD;
    int sr = s->structured || s->extended;

    switch (r->type) {
    case NBD_CMD_DISC:
        return 0;
    case NBD_CMD_READ:
        if (sr && (s->tflags & NBD_FLAG_SEND_DF)) {
            ok |= NBD_CMD_FLAG_DF;
        }
        break;
    case NBD_CMD_WRITE:
        if (s->extended) {
            ok |= NBD_CMD_FLAG_PAYLOAD_LEN;
        }
        break;
    case NBD_CMD_BLOCK_STATUS:
        ok |= NBD_CMD_FLAG_REQ_ONE;
        if (s->extended && (s->tflags & NBD_FLAG_BLOCK_STATUS_PAYLOAD)) {
            ok |= NBD_CMD_FLAG_PAYLOAD_LEN;
        }
        break;
    case NBD_CMD_FLUSH:
        if (!(s->tflags & NBD_FLAG_SEND_FLUSH)) {
            return NBD_EINVAL;
        }
        break;
    case NBD_CMD_TRIM:
        if (!(s->tflags & NBD_FLAG_SEND_TRIM)) {
            return NBD_EINVAL;
        }
        break;
    case NBD_CMD_CACHE:
        if (!(s->tflags & NBD_FLAG_SEND_CACHE)) {
            return NBD_EINVAL;
        }
        break;
    case NBD_CMD_WRITE_ZEROES:
        if (!(s->tflags & NBD_FLAG_SEND_WRITE_ZEROES)) {
            return NBD_EINVAL;
        }
        ok |= NBD_CMD_FLAG_NO_HOLE;
        if (s->tflags & NBD_FLAG_SEND_FAST_ZERO) {
            ok |= NBD_CMD_FLAG_FAST_ZERO;
        }
        break;
    case NBD_CMD_RESIZE:
        if (!(s->tflags & NBD_FLAG_SEND_RESIZE)) {
            return NBD_EINVAL;
        }
        break;
    default:
        return NBD_EINVAL;
    }
    if (s->tflags & NBD_FLAG_SEND_FUA) {
        ok |= NBD_CMD_FLAG_FUA;
    }
    if (r->flags & ~ok) {
        return NBD_EINVAL;
    }
    if (s->read_only && ref_write_like(r->type)) {
        return NBD_EPERM;
    }
    if (s->extended && r->type == NBD_CMD_WRITE &&
        !(r->flags & NBD_CMD_FLAG_PAYLOAD_LEN)) {
        return NBD_EINVAL;
    }
    switch (r->type) {
    case NBD_CMD_FLUSH:
        return r->offset || r->length ? NBD_EINVAL : 0;
    case NBD_CMD_RESIZE:
        return 0;
    case NBD_CMD_BLOCK_STATUS:
        if (!sr || !s->meta) {
            return NBD_EINVAL;
        }
        if (r->flags & NBD_CMD_FLAG_PAYLOAD_LEN) {
            uint64_t ids;

            if (r->length < 8 || (r->length - 8) % 4) {
                return NBD_EINVAL;
            }
            ids = (r->length - 8) / 4;
            return ids >= 1 && ids <= NBD_META_NCONTEXTS ? 0 : NBD_EINVAL;
        }
        break;
    case NBD_CMD_READ:
    case NBD_CMD_WRITE:
        if (r->length > max) {
            return NBD_EINVAL;
        }
        break;
    default:
        break;
    }
    return ref_extent(r->type, r->offset, r->length, s);
}

/* nbd_bs_payload_check() for a payload of nids ids at `ids`. */
static inline uint32_t ref_bs_check(const NBDRequest *r, const NBDSession *s,
                                    uint64_t effect, const uint8_t *ids,
                                    uint32_t nids, uint32_t *want)
{
    uint32_t seen = 0;

    for (uint32_t i = 0; i < nids; i++) {
        uint32_t id = nbd_get_be32(ids + 4 * i);
        uint32_t bit;

        if (id == 0 || id > NBD_META_NCONTEXTS) {
            return NBD_EINVAL;
        }
        bit = 1u << (id - 1);
        if (!(s->meta & bit) || (seen & bit)) {
            return NBD_EINVAL;
        }
        seen |= bit;
    }
    *want = seen;
    return ref_extent(NBD_CMD_BLOCK_STATUS, r->offset, effect, s);
}

#endif /* RAWNBD_TESTS_FUZZ_SESSION_H */
