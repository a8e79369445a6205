/*
 * fuzz-option.c: the handshake's option decoders.
 *
 * Input: one selector byte, then bytes treated two ways:
 *   - the first 16 as an option header (magic, option, length);
 *   - everything after the selector as the payload of option
 *     (selector % 16): EXPORT_NAME, INFO/GO and LIST/SET_META_CONTEXT
 *     go through their parsers, whose results are checked against the
 *     input and re-encoded byte for byte.
 * The option replies built from what was parsed (REP_SERVER, INFO_NAME,
 * META_CONTEXT, errors with the payload as message) are checked for
 * size and layout, in buffers of an input-chosen, exact size.
 */
#include "fuzz.h"

#include "proto/nbd-proto.h"

static void check_header(const uint8_t *d, size_t n)
{
    NBDWireOptHeader w;
    uint32_t opt = 0xdead, len = 0xbeef;
    int r;

    if (n < NBD_OPT_HEADER_SIZE) {
        return;
    }
    r = nbd_opt_header_decode(d, &opt, &len);
    if (nbd_get_be64(d) != NBD_OPTS_MAGIC) {
        FUZZ_CHECK(r == -EPROTO);
        FUZZ_CHECK(opt == 0xdead && len == 0xbeef);
        return;
    }
    FUZZ_CHECK(r == 0);
    w.magic = htobe64(NBD_OPTS_MAGIC);
    w.option = htobe32(opt);
    w.len = htobe32(len);
    FUZZ_CHECK(memcmp(&w, d, sizeof(w)) == 0);

    FUZZ_CHECK(nbd_opt_len_ok(opt, len) ==
               (len <= (opt == NBD_OPT_EXPORT_NAME ? NBD_MAX_STRING
                                                   : NBD_MAX_OPT_PAYLOAD)));
    switch (opt) {
    case NBD_OPT_LIST:
    case NBD_OPT_STARTTLS:
    case NBD_OPT_STRUCTURED_REPLY:
    case NBD_OPT_EXTENDED_HEADERS:
        FUZZ_CHECK(nbd_opt_check_empty(opt, len) == (len ? -EINVAL : 0));
        break;
    default:
        FUZZ_CHECK(nbd_opt_check_empty(opt, len) == 0);
        break;
    }
    FUZZ_CHECK(nbd_opt_name(opt) != NULL);
}

/* A string the parsers may accept: at most 4096 bytes, no NUL. */
static int string_valid(const char *p, uint32_t len)
{
    return len <= NBD_MAX_STRING && (len == 0 || !memchr(p, 0, len));
}

/* Reply encoders fed with a parsed string, into a buffer of `size`. */
static void check_string_replies(NBDString s, size_t size, uint32_t opt)
{
    uint8_t *buf = malloc(size ? size : 1);
    ssize_t r;

    FUZZ_CHECK(buf != NULL);
    r = nbd_rep_server_encode(buf, size, opt, s, s);
    if (s.len > NBD_MAX_STRING) {
        FUZZ_CHECK(r == -EINVAL);
    } else if (size < NBD_OPT_REPLY_HEADER_SIZE + 4 + 2 * (size_t)s.len) {
        FUZZ_CHECK(r == -ENOBUFS);
    } else {
        FUZZ_CHECK(r == (ssize_t)(NBD_OPT_REPLY_HEADER_SIZE + 4 + 2 * s.len));
        FUZZ_CHECK(nbd_get_be64(buf) == NBD_OPT_REPLY_MAGIC);
        FUZZ_CHECK(nbd_get_be32(buf + 8) == opt);
        FUZZ_CHECK(nbd_get_be32(buf + 12) == NBD_REP_SERVER);
        FUZZ_CHECK(nbd_get_be32(buf + 16) == 4 + 2 * s.len);
        FUZZ_CHECK(nbd_get_be32(buf + 20) == s.len);
        FUZZ_CHECK(memcmp(buf + 24, s.ptr, s.len) == 0);
        FUZZ_CHECK(memcmp(buf + 24 + s.len, s.ptr, s.len) == 0);
    }

    r = nbd_rep_info_name_encode(buf, size, opt, s);
    if (s.len > NBD_MAX_STRING) {
        FUZZ_CHECK(r == -EINVAL);
    } else if (size < NBD_OPT_REPLY_HEADER_SIZE + 2 + (size_t)s.len) {
        FUZZ_CHECK(r == -ENOBUFS);
    } else {
        FUZZ_CHECK(r == (ssize_t)(NBD_OPT_REPLY_HEADER_SIZE + 2 + s.len));
        FUZZ_CHECK(nbd_get_be32(buf + 12) == NBD_REP_INFO);
        FUZZ_CHECK(nbd_get_be16(buf + 20) == NBD_INFO_NAME);
        FUZZ_CHECK(memcmp(buf + 22, s.ptr, s.len) == 0);
    }

    r = nbd_rep_meta_context_encode(buf, size, opt, 7, s);
    if (s.len > NBD_MAX_STRING) {
        FUZZ_CHECK(r == -EINVAL);
    } else if (size < NBD_OPT_REPLY_HEADER_SIZE + 4 + (size_t)s.len) {
        FUZZ_CHECK(r == -ENOBUFS);
    } else {
        FUZZ_CHECK(r == (ssize_t)(NBD_OPT_REPLY_HEADER_SIZE + 4 + s.len));
        FUZZ_CHECK(nbd_get_be32(buf + 12) == NBD_REP_META_CONTEXT);
        FUZZ_CHECK(nbd_get_be32(buf + 20) == 7);
        FUZZ_CHECK(memcmp(buf + 24, s.ptr, s.len) == 0);
    }
    free(buf);
}

/* Error replies with the payload (up to its first NUL) as message. */
static void check_error_reply(const uint8_t *d, size_t n, size_t size,
                              uint32_t opt, uint32_t type)
{
    char *msg = malloc(n + 1);
    uint8_t *buf = malloc(size ? size : 1);
    size_t full, cut;
    ssize_t r;

    FUZZ_CHECK(msg && buf);
    memcpy(msg, d, n);
    msg[n] = 0;
    full = strlen(msg);
    cut = nbd_err_msg_len(msg);
    FUZZ_CHECK(cut <= full && cut <= NBD_MAX_ERR_MSG);
    if (full <= NBD_MAX_ERR_MSG) {
        FUZZ_CHECK(cut == full);
    } else {
        /* Cut at a character boundary, losing at most 3 bytes more. */
        FUZZ_CHECK(cut >= NBD_MAX_ERR_MSG - 3);
        FUZZ_CHECK(cut == NBD_MAX_ERR_MSG - 3 ||
                   ((unsigned char)msg[cut] & 0xc0) != 0x80);
    }
    r = nbd_rep_error_encode(buf, size, opt, type, msg);
    if (!NBD_REP_IS_ERR(type)) {
        FUZZ_CHECK(r == -EINVAL);
    } else if (size < NBD_OPT_REPLY_HEADER_SIZE + cut) {
        FUZZ_CHECK(r == -ENOBUFS);
    } else {
        FUZZ_CHECK(r == (ssize_t)(NBD_OPT_REPLY_HEADER_SIZE + cut));
        FUZZ_CHECK(nbd_get_be32(buf + 12) == type);
        FUZZ_CHECK(nbd_get_be32(buf + 16) == cut);
        FUZZ_CHECK(memcmp(buf + 20, msg, cut) == 0);
    }
    free(buf);
    free(msg);
}

static void check_export_name(const uint8_t *d, uint32_t n, size_t size)
{
    NBDString name = { NULL, 12345 };
    int r = nbd_opt_export_name_parse(d, n, &name);

    if (!string_valid((const char *)d, n)) {
        FUZZ_CHECK(r == -EINVAL);
        return;
    }
    FUZZ_CHECK(r == 0);
    FUZZ_CHECK((const uint8_t *)name.ptr == d && name.len == n);
    check_string_replies(name, size, NBD_OPT_EXPORT_NAME);
}

static void check_go(const uint8_t *d, uint32_t n, uint32_t opt, size_t size)
{
    NBDOptGo go;
    uint32_t namelen;
    int r = nbd_opt_go_parse(d, n, &go);
    int valid;
    uint8_t *again;

    /* The layout from the spec, checked independently. */
    valid = n >= 6;
    if (valid) {
        namelen = nbd_get_be32(d);
        valid = namelen <= n - 6 &&
                string_valid((const char *)d + 4, namelen) &&
                (uint64_t)nbd_get_be16(d + 4 + namelen) * 2 ==
                    n - 6 - namelen;
    }
    FUZZ_CHECK((r == 0) == valid);
    if (r != 0) {
        FUZZ_CHECK(r == -EINVAL);
        return;
    }
    FUZZ_CHECK(fuzz_inside(go.name.ptr, go.name.len, d, n));
    FUZZ_CHECK(fuzz_inside(go.info, 2 * (size_t)go.ninfo, d, n));
    FUZZ_CHECK(4 + go.name.len + 2 + 2 * (size_t)go.ninfo == n);

    /* Re-encode from the parsed parts: the same bytes. */
    again = malloc(n);
    FUZZ_CHECK(again != NULL);
    nbd_put_be32(again, go.name.len);
    memcpy(again + 4, go.name.ptr, go.name.len);
    nbd_put_be16(again + 4 + go.name.len, go.ninfo);
    for (uint16_t i = 0; i < go.ninfo; i++) {
        nbd_put_be16(again + 6 + go.name.len + 2 * i, nbd_opt_go_info(&go, i));
    }
    FUZZ_CHECK(memcmp(again, d, n) == 0);
    free(again);

    for (uint16_t info = 0; info < 5; info++) {
        int found = 0;

        for (uint16_t i = 0; i < go.ninfo; i++) {
            found |= nbd_opt_go_info(&go, i) == info;
        }
        FUZZ_CHECK(nbd_opt_go_requested(&go, info) == found);
    }
    check_string_replies(go.name, size, opt);
}

static void check_meta(const uint8_t *d, uint32_t n, uint32_t opt)
{
    NBDOptMeta meta;
    NBDMetaIter it;
    NBDString q;
    uint32_t count = 0;
    int r = nbd_opt_meta_parse(d, n, &meta);

    if (r < 0) {
        FUZZ_CHECK(r == -EINVAL || r == -E2BIG);
        if (r == -E2BIG) {
            FUZZ_CHECK(meta.nqueries > NBD_MAX_META_QUERIES);
        }
        return;
    }
    FUZZ_CHECK(fuzz_inside(meta.name.ptr, meta.name.len, d, n));
    FUZZ_CHECK(string_valid(meta.name.ptr, meta.name.len));
    FUZZ_CHECK(meta.nqueries <= NBD_MAX_META_QUERIES);
    FUZZ_CHECK(fuzz_inside(meta.queries, meta.queries_len, d, n));
    FUZZ_CHECK(meta.queries + meta.queries_len == d + n);
    nbd_meta_iter_init(&it, &meta);
    while (nbd_meta_iter_next(&it, &q)) {
        const char *colon;

        FUZZ_CHECK(fuzz_inside(q.ptr, q.len, d, n));
        FUZZ_CHECK(string_valid(q.ptr, q.len));
        colon = memchr(q.ptr, ':', q.len);
        FUZZ_CHECK(colon != NULL && colon != q.ptr);
        count++;
    }
    FUZZ_CHECK(count == meta.nqueries);
    (void)opt;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t opt;
    const uint8_t *payload;
    uint32_t n;
    size_t bufsize;

    if (size < 1) {
        return 0;
    }
    opt = data[0] % 16;
    payload = data + 1;
    n = (uint32_t)(size - 1);
    /* Reply buffers: usually big enough, sometimes just short. */
    bufsize = data[0] & 0x80 ? NBD_OPT_REPLY_MAX : (size * 7) % 300;

    check_header(payload, n);
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        check_export_name(payload, n, bufsize);
        break;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        check_go(payload, n, opt, bufsize);
        break;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        check_meta(payload, n, opt);
        break;
    default:
        check_error_reply(payload, n, bufsize, opt,
                          opt == 0 ? NBD_REP_ACK : NBD_REP_ERR(opt));
        break;
    }
    return 0;
}
