/*
 * nbd-reply.c: encoders for the structured / extended reply chunks that
 * are not hot enough to live inline in nbd-proto.h.
 */
#include "nbd-proto.h"

size_t nbd_chunk_hole_encode(void *buf, bool extended, const NBDRequest *req,
                             uint16_t flags, uint64_t hole_offset,
                             uint32_t hole_size)
{
    NBDWireOffsetHole w = {
        .offset = htobe64(hole_offset),
        .size = htobe32(hole_size),
    };
    size_t n = nbd_chunk_encode(buf, extended, req, flags,
                                NBD_REPLY_TYPE_OFFSET_HOLE, sizeof(w));

    memcpy((uint8_t *)buf + n, &w, sizeof(w));
    return n + sizeof(w);
}

/*
 * Error chunk: header, error, message length, message, then for
 * NBD_REPLY_TYPE_ERROR_OFFSET the 8-byte offset.
 */
static size_t error_chunk(void *buf, bool extended, const NBDRequest *req,
                          uint16_t flags, uint16_t type, uint32_t error,
                          const char *msg, const uint64_t *error_offset)
{
    uint8_t *p = buf;
    size_t msglen = nbd_err_msg_len(msg);
    size_t tail = error_offset ? sizeof(*error_offset) : 0;
    NBDWireError w = {
        .error = htobe32(error ? error : NBD_EIO),
        .msglen = htobe16((uint16_t)msglen),
    };

    p += nbd_chunk_encode(p, extended, req, flags, type,
                          sizeof(w) + msglen + tail);
    memcpy(p, &w, sizeof(w));
    p += sizeof(w);
    if (msglen) {
        memcpy(p, msg, msglen);
        p += msglen;
    }
    if (error_offset) {
        nbd_put_be64(p, *error_offset);
        p += sizeof(*error_offset);
    }
    return (size_t)(p - (uint8_t *)buf);
}

size_t nbd_chunk_error_encode(void *buf, bool extended, const NBDRequest *req,
                              uint16_t flags, uint32_t error,
                              const char *msg)
{
    return error_chunk(buf, extended, req, flags, NBD_REPLY_TYPE_ERROR,
                       error, msg, NULL);
}

size_t nbd_chunk_error_offset_encode(void *buf, bool extended,
                                     const NBDRequest *req, uint16_t flags,
                                     uint32_t error, const char *msg,
                                     uint64_t error_offset)
{
    return error_chunk(buf, extended, req, flags,
                       NBD_REPLY_TYPE_ERROR_OFFSET, error, msg,
                       &error_offset);
}

size_t nbd_chunk_block_status_encode(void *buf, bool extended,
                                     const NBDRequest *req, uint16_t flags,
                                     uint32_t context_id, uint32_t count)
{
    uint64_t payload = 4 + (uint64_t)count * sizeof(NBDWireExtent);
    size_t n;

    if (count == 0) {
        return 0;
    }
    n = nbd_chunk_encode(buf, extended, req, flags,
                         NBD_REPLY_TYPE_BLOCK_STATUS, payload);
    if (n == 0) {
        return 0;
    }
    nbd_put_be32((uint8_t *)buf + n, context_id);
    return n + 4;
}

size_t nbd_chunk_block_status_ext_encode(void *buf, const NBDRequest *req,
                                         uint16_t flags, uint32_t context_id,
                                         uint32_t count)
{
    NBDWireBlockStatusExt w = {
        .context_id = htobe32(context_id),
        .count = htobe32(count),
    };
    uint64_t payload = sizeof(w) + (uint64_t)count * sizeof(NBDWireExtentExt);
    size_t n;

    if (count == 0) {
        return 0;
    }
    n = nbd_chunk_encode(buf, true, req, flags,
                         NBD_REPLY_TYPE_BLOCK_STATUS_EXT, payload);
    memcpy((uint8_t *)buf + n, &w, sizeof(w));
    return n + sizeof(w);
}
