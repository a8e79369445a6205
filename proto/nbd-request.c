/*
 * nbd-request.c: validation of transmission requests against what the
 * handshake negotiated, following the spec's recommended errors.
 */
#include <errno.h>

#include "nbd-proto.h"

/* Whether the client may send command `type` in this session (step 2
 * of nbd_request_check()). */
static bool cmd_allowed(uint16_t type, const NBDSession *s)
{
    switch (type) {
    case NBD_CMD_READ:
    case NBD_CMD_WRITE:
    case NBD_CMD_BLOCK_STATUS: /* gated by context selection, step 6 */
        return true;
    case NBD_CMD_FLUSH:
        return s->tflags & NBD_FLAG_SEND_FLUSH;
    case NBD_CMD_TRIM:
        return s->tflags & NBD_FLAG_SEND_TRIM;
    case NBD_CMD_CACHE:
        return s->tflags & NBD_FLAG_SEND_CACHE;
    case NBD_CMD_WRITE_ZEROES:
        return s->tflags & NBD_FLAG_SEND_WRITE_ZEROES;
    case NBD_CMD_RESIZE:
        return s->tflags & NBD_FLAG_SEND_RESIZE;
    default:
        return false;
    }
}

/* The command flags valid for command `type` in this session (step 3). */
static uint16_t cmd_flags_allowed(uint16_t type, const NBDSession *s)
{
    uint16_t ok = 0;

    if (s->tflags & NBD_FLAG_SEND_FUA) {
        ok |= NBD_CMD_FLAG_FUA;
    }
    switch (type) {
    case NBD_CMD_READ:
        if ((s->structured || s->extended) &&
            (s->tflags & NBD_FLAG_SEND_DF)) {
            ok |= NBD_CMD_FLAG_DF;
        }
        break;
    case NBD_CMD_WRITE:
        if (s->extended) {
            ok |= NBD_CMD_FLAG_PAYLOAD_LEN;
        }
        break;
    case NBD_CMD_WRITE_ZEROES:
        ok |= NBD_CMD_FLAG_NO_HOLE;
        if (s->tflags & NBD_FLAG_SEND_FAST_ZERO) {
            ok |= NBD_CMD_FLAG_FAST_ZERO;
        }
        break;
    case NBD_CMD_BLOCK_STATUS:
        ok |= NBD_CMD_FLAG_REQ_ONE;
        if (s->extended && (s->tflags & NBD_FLAG_BLOCK_STATUS_PAYLOAD)) {
            ok |= NBD_CMD_FLAG_PAYLOAD_LEN;
        }
        break;
    default:
        break;
    }
    return ok;
}

static bool cmd_writes(uint16_t type)
{
    return type == NBD_CMD_WRITE || type == NBD_CMD_TRIM ||
           type == NBD_CMD_WRITE_ZEROES || type == NBD_CMD_RESIZE;
}

/* Steps 8-9 of nbd_request_check(): range, alignment, zero length. */
static uint32_t check_extent(uint16_t type, uint64_t offset, uint64_t length,
                             const NBDSession *s)
{
    uint64_t mask = s->min_block ? (uint64_t)s->min_block - 1 : 0;

    if (offset > s->size || length > s->size - offset) {
        if (type == NBD_CMD_WRITE || type == NBD_CMD_WRITE_ZEROES) {
            return NBD_ENOSPC;
        }
        return NBD_EINVAL;
    }
    if (type == NBD_CMD_BLOCK_STATUS) {
        if (length == 0) {
            return NBD_EINVAL;
        }
        if (offset + length == s->size) {
            length = 0;     /* an unaligned tail of the export is fine */
        }
    }
    if ((offset | length) & mask) {
        return NBD_EINVAL;
    }
    return 0;
}

uint32_t nbd_request_check(const NBDRequest *req, const NBDSession *s,
                           NBDCheck *out)
{
    uint16_t type = req->type;
    uint64_t max_payload =
        s->max_payload ? s->max_payload : NBD_DEFAULT_MAX_PAYLOAD;

    out->payload = nbd_request_payload_len(req, s->extended);
    out->disconnect = false;

    if (type == NBD_CMD_DISC) {
        out->disconnect = true;
        return 0;
    }
    if (s->read_only && cmd_writes(type)) {
        /*
         * A read-only export need not advertise TRIM or WRITE_ZEROES, yet
         * the spec wants EPERM for them: judge their flags as if it did,
         * then refuse.
         */
        NBDSession rw = *s;

        rw.tflags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                     NBD_FLAG_SEND_FAST_ZERO;
        if (!cmd_allowed(type, &rw) ||
            (req->flags & ~cmd_flags_allowed(type, &rw))) {
            return NBD_EINVAL;
        }
        return NBD_EPERM;
    }
    if (!cmd_allowed(type, s)) {
        return NBD_EINVAL;
    }
    if (req->flags & ~cmd_flags_allowed(type, s)) {
        return NBD_EINVAL;
    }
    if (s->extended && type == NBD_CMD_WRITE &&
        !(req->flags & NBD_CMD_FLAG_PAYLOAD_LEN)) {
        return NBD_EINVAL;
    }
    switch (type) {
    case NBD_CMD_FLUSH:
        return (req->offset || req->length) ? NBD_EINVAL : 0;
    case NBD_CMD_RESIZE:
        return 0;
    case NBD_CMD_BLOCK_STATUS:
        if (!(s->structured || s->extended) || s->meta == 0) {
            return NBD_EINVAL;
        }
        if (req->flags & NBD_CMD_FLAG_PAYLOAD_LEN) {
            uint64_t n = req->length;
            if (n < sizeof(NBDWireBlockStatusPayload) + 4 ||
                n > NBD_MAX_BS_PAYLOAD ||
                (n - sizeof(NBDWireBlockStatusPayload)) % 4 != 0) {
                return NBD_EINVAL;
            }
            return 0;
        }
        break;
    case NBD_CMD_READ:
    case NBD_CMD_WRITE:
        if (req->length > max_payload) {
            return NBD_EINVAL;
        }
        break;
    default:
        break;
    }
    return check_extent(type, req->offset, req->length, s);
}

int nbd_bs_payload_decode(const void *buf, size_t len,
                          NBDBlockStatusPayload *out)
{
    const size_t hdr = sizeof(NBDWireBlockStatusPayload);

    if (len < hdr + 4 || len > NBD_MAX_BS_PAYLOAD || (len - hdr) % 4 != 0) {
        return -EINVAL;
    }
    out->effect_length = nbd_get_be64(buf);
    out->nids = (uint32_t)((len - hdr) / 4);
    out->ids = (const uint8_t *)buf + hdr;
    return 0;
}

uint32_t nbd_bs_payload_check(const NBDRequest *req, const NBDSession *s,
                              const NBDBlockStatusPayload *p,
                              uint32_t *want)
{
    uint32_t mask = 0;

    for (uint32_t i = 0; i < p->nids; i++) {
        int idx = nbd_meta_context_index(nbd_get_be32(p->ids + 4 * i));
        if (idx < 0 || !(s->meta & (1u << idx)) || (mask & (1u << idx))) {
            return NBD_EINVAL;
        }
        mask |= 1u << idx;
    }
    *want = mask;
    return check_extent(NBD_CMD_BLOCK_STATUS, req->offset, p->effect_length,
                        s);
}
