/*
 * handshake.c: fixed newstyle negotiation.
 *
 * Each option is read whole (its length bounded before anything is
 * allocated), answered with replies gathered in one buffer and written
 * with one call.  Which failures reply and which disconnect:
 *   - bad option magic, unknown client flags, an option too long to drain,
 *     EXPORT_NAME for a missing export or after extended headers:
 *     disconnect (the spec gives no way to reply);
 *   - anything else wrong: an NBD_REP_ERR_* reply, and negotiation goes on.
 */
#include "conn.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define OPT_DRAIN_MAX (1u << 20)   /* longer bogus options: disconnect */

typedef struct HsOut {
    GByteArray *buf;
} HsOut;

/* Append an encoded reply; encoders write at most NBD_OPT_REPLY_MAX. */
static uint8_t *out_reserve(HsOut *o, size_t n)
{
    guint len = o->buf->len;

    g_byte_array_set_size(o->buf, len + n);
    return o->buf->data + len;
}

static void out_commit(HsOut *o, size_t reserved, ssize_t used)
{
    g_assert(used >= 0 && (size_t)used <= reserved);
    g_byte_array_set_size(o->buf, o->buf->len - reserved + used);
}

#define OUT(o, encode_call)                                               \
    do {                                                                  \
        uint8_t *p_ = out_reserve(o, NBD_OPT_REPLY_MAX);                  \
        ssize_t n_ = (encode_call);                                       \
        out_commit(o, NBD_OPT_REPLY_MAX, n_);                             \
    } while (0)

static void out_error(HsOut *o, uint32_t opt, uint32_t type,
                      const char *fmt, ...) G_GNUC_PRINTF(4, 5);

static void out_error(HsOut *o, uint32_t opt, uint32_t type,
                      const char *fmt, ...)
{
    char msg[NBD_MAX_ERR_MSG + 1];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    OUT(o, nbd_rep_error_encode(p_, NBD_OPT_REPLY_MAX, opt, type, msg));
}

uint16_t conn_tflags(const Conn *c, const Export *e)
{
    uint16_t f = e->tflags;

    if (!c->structured && !c->extended) {
        f &= ~NBD_FLAG_SEND_DF;
    }
    if (c->extended) {
        f |= NBD_FLAG_BLOCK_STATUS_PAYLOAD;
    }
    return f;
}

static void enter_transmission(Conn *c, Export *e)
{
    /* Extended headers imply structured replies from here on. */
    c->structured |= c->extended;
    c->exp = e;
    c->sess = (NBDSession) {
        .size = e->size,
        .min_block = e->min_block,
        .max_payload = e->max_payload,
        .tflags = conn_tflags(c, e),
        .read_only = e->read_only,
        .structured = c->structured,
        .extended = c->extended,
        /* Contexts chosen for another export do not carry over. */
        .meta = c->meta_export == e ? c->meta : 0,
    };
}

/* Results of handle_option(). */
enum {
    HS_CONTINUE,
    HS_GO,                      /* enter transmission */
    HS_STARTTLS,                /* flush the ACK, then upgrade */
};

static Export *find_export(NBDString name)
{
    return server_find_export(name.ptr, name.len);
}

/* May @c see @e?  TLS-only exports need TLS first. */
static bool export_visible(const Conn *c, const Export *e)
{
    return !e->tls_only || c->tls;
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Returns 1 to enter transmission. */
static int opt_info_go(Conn *c, HsOut *o, uint32_t opt, const uint8_t *data,
                       uint32_t len)
{
    NBDOptGo go;
    Export *e;

    if (nbd_opt_go_parse(data, len, &go) < 0) {
        out_error(o, opt, NBD_REP_ERR_INVALID, "malformed %s request",
                  nbd_opt_name(opt));
        return HS_CONTINUE;
    }
    e = find_export(go.name);
    if (!e) {
        out_error(o, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.*s'",
                  (int)MIN(go.name.len, 200), go.name.ptr);
        return HS_CONTINUE;
    }
    if (!export_visible(c, e)) {
        out_error(o, opt, NBD_REP_ERR_TLS_REQD,
                  "this export needs TLS: use STARTTLS");
        return HS_CONTINUE;
    }
    OUT(o, nbd_rep_info_export_encode(p_, NBD_OPT_REPLY_MAX, opt, e->size,
                                      conn_tflags(c, e)));
    if (nbd_opt_go_requested(&go, NBD_INFO_NAME)) {
        OUT(o, nbd_rep_info_name_encode(p_, NBD_OPT_REPLY_MAX, opt,
                                        nbd_str(e->name)));
    }
    if (nbd_opt_go_requested(&go, NBD_INFO_DESCRIPTION) && e->description) {
        OUT(o, nbd_rep_info_description_encode(p_, NBD_OPT_REPLY_MAX, opt,
                                               nbd_str(e->description)));
    }
    /* Always: clients that did not ask may still use it. */
    OUT(o, nbd_rep_info_block_size_encode(p_, NBD_OPT_REPLY_MAX, opt,
                                          e->min_block, e->pref_block,
                                          e->max_payload));
    OUT(o, nbd_rep_ack_encode(p_, NBD_OPT_REPLY_MAX, opt));
    if (opt == NBD_OPT_GO) {
        enter_transmission(c, e);
        return HS_GO;
    }
    return HS_CONTINUE;
}

static void opt_meta(Conn *c, HsOut *o, uint32_t opt, const uint8_t *data,
                     uint32_t len)
{
    bool list = opt == NBD_OPT_LIST_META_CONTEXT;
    NBDOptMeta meta;
    uint32_t mask;
    Export *e;
    unsigned i;
    int r;

    if (!c->structured && !c->extended) {
        out_error(o, opt, NBD_REP_ERR_INVALID,
                  "negotiate structured replies first");
        return;
    }
    r = nbd_opt_meta_parse(data, len, &meta);
    if (r == -E2BIG) {
        out_error(o, opt, NBD_REP_ERR_TOO_BIG, "too many queries");
        return;
    }
    if (r < 0) {
        out_error(o, opt, NBD_REP_ERR_INVALID, "malformed %s request",
                  nbd_opt_name(opt));
        return;
    }
    e = find_export(meta.name);
    if (!e) {
        out_error(o, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.*s'",
                  (int)MIN(meta.name.len, 200), meta.name.ptr);
        return;
    }
    if (!export_visible(c, e)) {
        out_error(o, opt, NBD_REP_ERR_TLS_REQD,
                  "this export needs TLS: use STARTTLS");
        return;
    }
    mask = nbd_meta_match(&meta, list);
    for (i = 0; i < NBD_META_NCONTEXTS; i++) {
        if (mask & (1u << i)) {
            OUT(o, nbd_rep_meta_context_encode(
                       p_, NBD_OPT_REPLY_MAX, opt,
                       list ? 0 : nbd_meta_context_id(i),
                       nbd_str(nbd_meta_context_name(i))));
        }
    }
    if (!list) {
        c->meta = mask;
        c->meta_export = e;
    }
    OUT(o, nbd_rep_ack_encode(p_, NBD_OPT_REPLY_MAX, opt));
}

/*
 * Handle one option whose payload is @data.  Returns an HS_* value, or
 * -errno to close.
 */
static int handle_option(Conn *c, HsOut *o, uint32_t opt, const uint8_t *data,
                         uint32_t len)
{
    TlsMode tls = server.cfg->tls;
    NBDString name;
    Export *e = NULL;
    unsigned i;

    if (tls == TLS_REQUIRE && !c->tls && opt != NBD_OPT_STARTTLS &&
        opt != NBD_OPT_ABORT) {
        if (opt == NBD_OPT_EXPORT_NAME) {
            log_info("%s: EXPORT_NAME without TLS: disconnecting",
                     CONN_LOG(c));
            return -EACCES;
        }
        out_error(o, opt, NBD_REP_ERR_TLS_REQD,
                  "this server requires TLS: use STARTTLS");
        return HS_CONTINUE;
    }
    if (nbd_opt_check_empty(opt, len) < 0) {
        out_error(o, opt, NBD_REP_ERR_INVALID, "%s takes no data",
                  nbd_opt_name(opt));
        return HS_CONTINUE;
    }
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        if (c->extended) {
            log_warn("%s: EXPORT_NAME after extended headers: disconnecting",
                     CONN_LOG(c));
            return -EPROTO;
        }
        if (nbd_opt_export_name_parse(data, len, &name) < 0 ||
            !(e = find_export(name)) || !export_visible(c, e)) {
            log_info("%s: no export named '%.*s'%s: disconnecting",
                     CONN_LOG(c), (int)MIN(len, 200), (const char *)data,
                     e && !export_visible(c, e) ? " without TLS" : "");
            return -ENOENT;
        }
        enter_transmission(c, e);
        {
            uint8_t *p = out_reserve(o, NBD_EXPORT_NAME_REPLY_SIZE);
            size_t n = nbd_export_name_reply_encode(p, e->size,
                                                    c->sess.tflags,
                                                    c->no_zeroes);

            out_commit(o, NBD_EXPORT_NAME_REPLY_SIZE, n);
        }
        return HS_GO;

    case NBD_OPT_ABORT:
        OUT(o, nbd_rep_ack_encode(p_, NBD_OPT_REPLY_MAX, opt));
        return -ECONNABORTED;

    case NBD_OPT_LIST:
        for (i = 0; i < server.nexports; i++) {
            e = &server.exports[i];
            if (!export_visible(c, e)) {
                continue;
            }
            OUT(o, nbd_rep_server_encode(p_, NBD_OPT_REPLY_MAX, opt,
                                         nbd_str(e->name),
                                         nbd_str(e->description)));
        }
        OUT(o, nbd_rep_ack_encode(p_, NBD_OPT_REPLY_MAX, opt));
        return HS_CONTINUE;

    case NBD_OPT_STARTTLS:
        if (tls == TLS_OFF) {
            out_error(o, opt, NBD_REP_ERR_POLICY,
                      "TLS is not enabled on this server");
            return HS_CONTINUE;
        }
        if (c->tls) {
            out_error(o, opt, NBD_REP_ERR_INVALID, "TLS is already on");
            return HS_CONTINUE;
        }
        OUT(o, nbd_rep_ack_encode(p_, NBD_OPT_REPLY_MAX, opt));
        return HS_STARTTLS;

    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return opt_info_go(c, o, opt, data, len);

    case NBD_OPT_STRUCTURED_REPLY:
        if (c->extended) {
            /* The spec's answer: going back to 32-bit headers is not on. */
            out_error(o, opt, NBD_REP_ERR_EXT_HEADER_REQD,
                      "extended headers are already on");
            return HS_CONTINUE;
        }
        if (c->structured) {
            out_error(o, opt, NBD_REP_ERR_INVALID,
                      "structured replies are already on");
            return HS_CONTINUE;
        }
        c->structured = true;
        OUT(o, nbd_rep_ack_encode(p_, NBD_OPT_REPLY_MAX, opt));
        return HS_CONTINUE;

    case NBD_OPT_EXTENDED_HEADERS:
        if (c->extended) {
            out_error(o, opt, NBD_REP_ERR_INVALID,
                      "extended headers are already on");
            return HS_CONTINUE;
        }
        c->extended = true;
        OUT(o, nbd_rep_ack_encode(p_, NBD_OPT_REPLY_MAX, opt));
        return HS_CONTINUE;

    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        opt_meta(c, o, opt, data, len);
        return HS_CONTINUE;

    default:
        out_error(o, opt, NBD_REP_ERR_UNSUP, "unknown option %u", opt);
        return HS_CONTINUE;
    }
}

/* After STARTTLS, everything negotiated in plaintext is forgotten. */
static void reset_after_tls(Conn *c)
{
    c->structured = false;
    c->extended = false;
    c->meta = 0;
    c->meta_export = NULL;
}

int coroutine_fn handshake_co(Conn *c)
{
    const uint16_t hflags = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;
    uint8_t greeting[NBD_GREETING_SIZE];
    uint8_t cflags_buf[NBD_CLIENT_FLAGS_SIZE];
    HsOut out = { g_byte_array_new() };
    uint32_t cflags;
    int ret;

    nbd_greeting_encode(greeting, hflags);
    ret = conn_write(c, greeting, sizeof(greeting));
    if (ret == 0) {
        ret = conn_read(c, cflags_buf, sizeof(cflags_buf));
    }
    if (ret < 0) {
        goto out;
    }
    if (nbd_client_flags_decode(cflags_buf, hflags, &cflags) < 0) {
        log_warn("%s: unknown client flags 0x%x: disconnecting",
                 CONN_LOG(c), nbd_get_be32(cflags_buf));
        ret = -EPROTO;
        goto out;
    }
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

    for (;;) {
        uint8_t hdr[NBD_OPT_HEADER_SIZE];
        uint32_t opt, len;

        ret = conn_read(c, hdr, sizeof(hdr));
        if (ret < 0) {
            break;
        }
        if (nbd_opt_header_decode(hdr, &opt, &len) < 0) {
            log_warn("%s: bad option magic: disconnecting", CONN_LOG(c));
            ret = -EPROTO;
            break;
        }
        log_debug("%s: option %s length %u", CONN_LOG(c), nbd_opt_name(opt),
                  len);
        if (!nbd_opt_len_ok(opt, len)) {
            if (opt == NBD_OPT_EXPORT_NAME || len > OPT_DRAIN_MAX) {
                log_warn("%s: option %s of %u bytes is too long: "
                         "disconnecting", CONN_LOG(c), nbd_opt_name(opt),
                         len);
                ret = -EPROTO;
                break;
            }
            ret = conn_discard(c, len);
            if (ret < 0) {
                break;
            }
            out_error(&out, opt, NBD_REP_ERR_TOO_BIG, "option too long");
        } else {
            uint8_t *data = g_malloc(len ? len : 1);
            ret = conn_read(c, data, len);
            if (ret == 0) {
                ret = handle_option(c, &out, opt, data, len);
            }
            g_free(data);
        }
        if (out.buf->len) {
            int w = conn_write(c, out.buf->data, out.buf->len);

            g_byte_array_set_size(out.buf, 0);
            if (w < 0 && ret >= 0) {
                ret = w;
            }
        }
        if (ret == HS_STARTTLS) {
            ret = tls_start(c);
            if (ret < 0) {
                break;
            }
            reset_after_tls(c);
        } else if (ret != HS_CONTINUE) {
            break;
        }
    }
    if (ret == HS_GO) {
        ret = 0;
    } else if (ret >= 0) {
        ret = -EPIPE;
    }
out:
    g_byte_array_free(out.buf, TRUE);
    if (ret == -EPIPE || ret == -ECONNRESET) {
        log_debug("%s: client closed the connection while negotiating",
                  CONN_LOG(c));
    } else if (ret == -ECONNABORTED) {
        log_debug("%s: client aborted negotiation", CONN_LOG(c));
    }
    return ret;
}
