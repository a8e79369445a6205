/*
 * nbd-option.c: the handshake phase: greeting, client flags, option
 * headers, option replies, option payload parsers and metadata context
 * matching.
 */
#include <errno.h>

#include "nbd-proto.h"

/* ------------------------------------------------------------------ */
/* Greeting, client flags, option header                               */
/* ------------------------------------------------------------------ */

size_t nbd_greeting_encode(void *buf, uint16_t hflags)
{
    NBDWireGreeting w = {
        .nbdmagic = htobe64(NBD_MAGIC),
        .optsmagic = htobe64(NBD_OPTS_MAGIC),
        .hflags = htobe16(hflags),
    };
    memcpy(buf, &w, sizeof(w));
    return sizeof(w);
}

int nbd_client_flags_decode(const void *buf, uint16_t hflags,
                            uint32_t *cflags)
{
    uint32_t f = nbd_get_be32(buf);

    if (f & ~(uint32_t)NBD_FLAG_C_KNOWN) {
        return -EPROTO;
    }
    if ((f & NBD_FLAG_C_NO_ZEROES) && !(hflags & NBD_FLAG_NO_ZEROES)) {
        return -EPROTO;
    }
    *cflags = f;
    return 0;
}

int nbd_opt_header_decode(const void *buf, uint32_t *opt, uint32_t *len)
{
    NBDWireOptHeader w;

    memcpy(&w, buf, sizeof(w));
    if (be64toh(w.magic) != NBD_OPTS_MAGIC) {
        return -EPROTO;
    }
    *opt = be32toh(w.option);
    *len = be32toh(w.len);
    return 0;
}

bool nbd_opt_len_ok(uint32_t opt, uint32_t len)
{
    if (opt == NBD_OPT_EXPORT_NAME) {
        return len <= NBD_MAX_STRING;
    }
    return len <= NBD_MAX_OPT_PAYLOAD;
}

int nbd_opt_check_empty(uint32_t opt, uint32_t len)
{
    switch (opt) {
    case NBD_OPT_LIST:
    case NBD_OPT_STARTTLS:
    case NBD_OPT_STRUCTURED_REPLY:
    case NBD_OPT_EXTENDED_HEADERS:
        return len == 0 ? 0 : -EINVAL;
    default:
        return 0;
    }
}

/* ------------------------------------------------------------------ */
/* Option replies                                                      */
/* ------------------------------------------------------------------ */

size_t nbd_opt_reply_header_encode(void *buf, uint32_t opt, uint32_t type,
                                   uint32_t len)
{
    NBDWireOptReply w = {
        .magic = htobe64(NBD_OPT_REPLY_MAGIC),
        .option = htobe32(opt),
        .type = htobe32(type),
        .len = htobe32(len),
    };
    memcpy(buf, &w, sizeof(w));
    return sizeof(w);
}

/*
 * Writes one option reply: header, then `fixed` (fixedlen bytes), then
 * the strings a and b.  Returns the total size, -EINVAL if a string is
 * too long, or -ENOBUFS if it does not fit in size bytes.
 */
static ssize_t rep_encode(void *buf, size_t size, uint32_t opt,
                          uint32_t type, const void *fixed, size_t fixedlen,
                          NBDString a, NBDString b)
{
    uint8_t *p = buf;
    size_t payload;

    if (a.len > NBD_MAX_STRING || b.len > NBD_MAX_STRING) {
        return -EINVAL;
    }
    payload = fixedlen + a.len + b.len;
    if (size < NBD_OPT_REPLY_HEADER_SIZE ||
        size - NBD_OPT_REPLY_HEADER_SIZE < payload) {
        return -ENOBUFS;
    }
    p += nbd_opt_reply_header_encode(p, opt, type, (uint32_t)payload);
    if (fixedlen) {
        memcpy(p, fixed, fixedlen);
        p += fixedlen;
    }
    if (a.len) {
        memcpy(p, a.ptr, a.len);
        p += a.len;
    }
    if (b.len) {
        memcpy(p, b.ptr, b.len);
        p += b.len;
    }
    return p - (uint8_t *)buf;
}

static const NBDString no_string = { "", 0 };

ssize_t nbd_rep_ack_encode(void *buf, size_t size, uint32_t opt)
{
    return rep_encode(buf, size, opt, NBD_REP_ACK, NULL, 0, no_string,
                      no_string);
}

ssize_t nbd_rep_server_encode(void *buf, size_t size, uint32_t opt,
                              NBDString name, NBDString desc)
{
    uint8_t namelen[4];

    nbd_put_be32(namelen, name.len);
    return rep_encode(buf, size, opt, NBD_REP_SERVER, namelen,
                      sizeof(namelen), name, desc);
}

ssize_t nbd_rep_info_export_encode(void *buf, size_t size, uint32_t opt,
                                   uint64_t export_size, uint16_t tflags)
{
    NBDWireInfoExport w = {
        .info = htobe16(NBD_INFO_EXPORT),
        .size = htobe64(export_size),
        .tflags = htobe16(tflags),
    };
    return rep_encode(buf, size, opt, NBD_REP_INFO, &w, sizeof(w),
                      no_string, no_string);
}

/* NBD_REP_INFO whose payload is the info type and one string. */
static ssize_t rep_info_string(void *buf, size_t size, uint32_t opt,
                               uint16_t info, NBDString s)
{
    uint8_t type[2];

    nbd_put_be16(type, info);
    return rep_encode(buf, size, opt, NBD_REP_INFO, type, sizeof(type), s,
                      no_string);
}

ssize_t nbd_rep_info_name_encode(void *buf, size_t size, uint32_t opt,
                                 NBDString name)
{
    return rep_info_string(buf, size, opt, NBD_INFO_NAME, name);
}

ssize_t nbd_rep_info_description_encode(void *buf, size_t size,
                                        uint32_t opt, NBDString desc)
{
    return rep_info_string(buf, size, opt, NBD_INFO_DESCRIPTION, desc);
}

ssize_t nbd_rep_info_block_size_encode(void *buf, size_t size, uint32_t opt,
                                       uint32_t min_block,
                                       uint32_t pref_block,
                                       uint32_t max_block)
{
    NBDWireInfoBlockSize w = {
        .info = htobe16(NBD_INFO_BLOCK_SIZE),
        .min_block = htobe32(min_block),
        .pref_block = htobe32(pref_block),
        .max_block = htobe32(max_block),
    };
    return rep_encode(buf, size, opt, NBD_REP_INFO, &w, sizeof(w),
                      no_string, no_string);
}

ssize_t nbd_rep_meta_context_encode(void *buf, size_t size, uint32_t opt,
                                    uint32_t id, NBDString name)
{
    uint8_t idbuf[4];

    nbd_put_be32(idbuf, id);
    return rep_encode(buf, size, opt, NBD_REP_META_CONTEXT, idbuf,
                      sizeof(idbuf), name, no_string);
}

ssize_t nbd_rep_error_encode(void *buf, size_t size, uint32_t opt,
                             uint32_t type, const char *msg)
{
    NBDString m = { msg, (uint32_t)nbd_err_msg_len(msg) };

    if (!NBD_REP_IS_ERR(type)) {
        return -EINVAL;
    }
    return rep_encode(buf, size, opt, type, NULL, 0, m, no_string);
}

size_t nbd_export_name_reply_encode(void *buf, uint64_t export_size,
                                    uint16_t tflags, bool no_zeroes)
{
    NBDWireExportNameReply w;

    memset(&w, 0, sizeof(w));
    w.size = htobe64(export_size);
    w.tflags = htobe16(tflags);
    if (no_zeroes) {
        memcpy(buf, &w, NBD_EXPORT_NAME_REPLY_SHORT);
        return NBD_EXPORT_NAME_REPLY_SHORT;
    }
    memcpy(buf, &w, sizeof(w));
    return sizeof(w);
}

/* ------------------------------------------------------------------ */
/* Option payload parsers                                              */
/* ------------------------------------------------------------------ */

/* Whether len bytes at p are an acceptable protocol string. */
static bool string_ok(const uint8_t *p, uint32_t len)
{
    if (len == 0) {
        return true;
    }
    return len <= NBD_MAX_STRING && memchr(p, '\0', len) == NULL;
}

int nbd_opt_export_name_parse(const void *buf, uint32_t len,
                              NBDString *name)
{
    if (!string_ok(buf, len)) {
        return -EINVAL;
    }
    name->ptr = buf;
    name->len = len;
    return 0;
}

/*
 * Reads the "32-bit length + string" export name that starts the
 * INFO/GO and META_CONTEXT payloads, requiring at least `after` more
 * bytes to follow it.  Returns the name's total size (4 + length) or
 * -EINVAL.
 */
static int parse_name(const uint8_t *p, uint32_t len, uint32_t after,
                      NBDString *name)
{
    uint32_t namelen;

    if (len < 4 + after) {
        return -EINVAL;
    }
    namelen = nbd_get_be32(p);
    if (namelen > len - 4 - after || !string_ok(p + 4, namelen)) {
        return -EINVAL;
    }
    name->ptr = (const char *)p + 4;
    name->len = namelen;
    return 4 + (int)namelen;
}

int nbd_opt_go_parse(const void *buf, uint32_t len, NBDOptGo *out)
{
    const uint8_t *p = buf;
    int n = parse_name(p, len, 2, &out->name);
    uint32_t rest;

    if (n < 0) {
        return n;
    }
    p += n;
    rest = len - (uint32_t)n;
    out->ninfo = nbd_get_be16(p);
    out->info = p + 2;
    if ((uint32_t)out->ninfo * 2 != rest - 2) {
        return -EINVAL;
    }
    return 0;
}

uint16_t nbd_opt_go_info(const NBDOptGo *go, uint16_t i)
{
    return nbd_get_be16(go->info + 2 * (size_t)i);
}

bool nbd_opt_go_requested(const NBDOptGo *go, uint16_t info)
{
    for (uint16_t i = 0; i < go->ninfo; i++) {
        if (nbd_opt_go_info(go, i) == info) {
            return true;
        }
    }
    return false;
}

/* A query must begin with a non-empty namespace followed by a colon. */
static bool query_ok(const uint8_t *q, uint32_t len)
{
    const uint8_t *colon;

    if (!string_ok(q, len)) {
        return false;
    }
    colon = memchr(q, ':', len);
    return colon != NULL && colon != q;
}

int nbd_opt_meta_parse(const void *buf, uint32_t len, NBDOptMeta *out)
{
    const uint8_t *p = buf;
    int n = parse_name(p, len, 4, &out->name);
    uint32_t rest, count;

    if (n < 0) {
        return n;
    }
    p += n;
    rest = len - (uint32_t)n;
    count = nbd_get_be32(p);
    p += 4;
    rest -= 4;
    /* Each query takes at least its 4-byte length. */
    if (count > rest / 4) {
        return -EINVAL;
    }
    out->nqueries = count;
    out->queries = p;
    out->queries_len = rest;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t qlen;

        if (rest < 4) {
            return -EINVAL;
        }
        qlen = nbd_get_be32(p);
        p += 4;
        rest -= 4;
        if (qlen > rest || !query_ok(p, qlen)) {
            return -EINVAL;
        }
        p += qlen;
        rest -= qlen;
    }
    if (rest != 0) {
        return -EINVAL;
    }
    if (count > NBD_MAX_META_QUERIES) {
        return -E2BIG;
    }
    return 0;
}

void nbd_meta_iter_init(NBDMetaIter *it, const NBDOptMeta *meta)
{
    it->pos = meta->queries;
    it->end = meta->queries + meta->queries_len;
}

bool nbd_meta_iter_next(NBDMetaIter *it, NBDString *query)
{
    uint32_t qlen;

    /* The list was validated by nbd_opt_meta_parse(); the checks here
     * only keep a misused iterator inside the buffer. */
    if (it->end - it->pos < 4) {
        return false;
    }
    qlen = nbd_get_be32(it->pos);
    if ((size_t)(it->end - it->pos) - 4 < qlen) {
        it->pos = it->end;
        return false;
    }
    query->ptr = (const char *)it->pos + 4;
    query->len = qlen;
    it->pos += 4 + (size_t)qlen;
    return true;
}

/* ------------------------------------------------------------------ */
/* Metadata contexts                                                   */
/* ------------------------------------------------------------------ */

static const char *const meta_contexts[NBD_META_NCONTEXTS] = {
    [NBD_META_BASE_ALLOCATION] = "base:allocation",
};

const char *nbd_meta_context_name(unsigned idx)
{
    return idx < NBD_META_NCONTEXTS ? meta_contexts[idx] : NULL;
}

uint32_t nbd_meta_context_id(unsigned idx)
{
    return idx + 1;
}

int nbd_meta_context_index(uint32_t id)
{
    if (id == 0 || id > NBD_META_NCONTEXTS) {
        return -1;
    }
    return (int)(id - 1);
}

bool nbd_meta_query_matches(NBDString query, unsigned idx, bool list)
{
    const char *name = nbd_meta_context_name(idx);
    size_t namelen;
    const char *colon;

    if (name == NULL) {
        return false;
    }
    namelen = strlen(name);
    if (query.len == namelen && memcmp(query.ptr, name, namelen) == 0) {
        return true;
    }
    if (!list || query.len == 0 || query.len > namelen) {
        return false;
    }
    /* LIST wildcard: the query is exactly "namespace:" and the context
     * lives in that namespace. */
    colon = memchr(query.ptr, ':', query.len);
    return colon == query.ptr + query.len - 1 &&
           memcmp(query.ptr, name, query.len) == 0;
}

uint32_t nbd_meta_match(const NBDOptMeta *meta, bool list)
{
    NBDMetaIter it;
    NBDString q;
    uint32_t mask = 0;

    if (meta->nqueries == 0) {
        return list ? NBD_META_ALL : 0;
    }
    nbd_meta_iter_init(&it, meta);
    while (nbd_meta_iter_next(&it, &q)) {
        for (unsigned i = 0; i < NBD_META_NCONTEXTS; i++) {
            if (nbd_meta_query_matches(q, i, list)) {
                mask |= 1u << i;
            }
        }
    }
    return mask;
}
