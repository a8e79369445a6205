/*
 * fuzz-conn.c: whole connections, handshake and transmission, through
 * the real server code (server/conn.c, handshake.c, export.c, tls.c)
 * in this process.
 *
 * Set-up, once: a 1 MiB sparse image (and a PSK file) in a temporary
 * directory, unlinked at once (the exports keep it open); a
 * ServerConfig from cli_parse() with four exports on it:
 *   ""        read-write, with a description  (index 0)
 *   "ro"      read-only                       (index 1)
 *   "win"     offset=4608,size=700001: an unaligned window
 *   "secret"  tls-only
 * TLS credentials are loaded (PSK), and one AioContext serves as both
 * the connection's loop and server.main_ctx.
 *
 * Input: two control bytes, then what the client sends.
 *   byte 0, bit 0     the empty export name means "ro", not ""
 *           bits 1-2  TLS mode: 0 off, 1 on, 2 require, 3 off
 *           bit 3     verbose logging (-vv)
 *           bit 4     one request in flight at most (else 16)
 *           bit 5     --handshake-limit=0 (else the default 10 s)
 *   byte 1            how to split the client's bytes: 0 in one go,
 *                     1..127 chunks of up to that many bytes, 128..255
 *                     chunks of up to (n - 127) * 512 bytes
 * Per input: the image is reset, a socketpair made, conn_start() given
 * the server end; the client's bytes are written chunk by chunk (the
 * loop runs between chunks, so the server sees partial messages), then
 * the write side is shut down, and the loop runs until the connection
 * has closed.  Everything the server writes is read and checked by a
 * small client-side parser: greeting, option replies (one final answer
 * per option), then, with the client's requests framed from its bytes
 * once the answers show where transmission starts, every reply: magic
 * and header style as negotiated, a cookie of a request still open,
 * chunk types and lengths that fit the request, READ data in simple
 * replies only without structured replies; the output must end on a
 * message boundary with every request answered.  A connection still
 * open after 5 s or too many loop iterations is a hang: abort with a
 * message.
 *
 * What main.c provides is re-implemented below (main.c has main()):
 * the global `server`, server_find_export() (the same lookup, except
 * that bit 0 picks what the empty name means), server_conn_opened()
 * (counts only: no listener to pause) and server_conn_closed() (counts
 * and schedules a BH in server.main_ctx, as main.c does; its BH only
 * counts).
 *
 * The server logs go to /dev/null unless RAWNBD_FUZZ_LOG=1;
 * RAWNBD_FUZZ_TRACE=1 prints each reply the parser sees.
 *
 * RAWNBD_FUZZ_TOLERATE=bug,bug... lets a fuzzing run go on past bugs
 * already reported and not fixed yet (their reproducers are in
 * regressions/, listed as open in meson.build while they are).  All but
 * slot-wait-edge were fixed in 731f664; the switches stay for bisecting
 * older trees:
 *   handshake-limit-0     bit 5 is ignored (conn.c deletes a handshake
 *                         timer it never initialised)
 *   disconnect-inflight   options are sent one at a time, and DISC, a
 *                         bad request magic or the end of the stream
 *                         only once every request has its reply
 *                         (conn.c frees the connection from inside its
 *                         own send BH when its receive loop ends with
 *                         requests in flight)
 *   read-zero-length      an OFFSET_DATA chunk without data, answering
 *                         a READ of length 0, passes
 *   short-read-eof        100 ms after the client's end of stream, a
 *                         connection still open is dropped with
 *                         conn_shutdown_all(true) instead of counting
 *                         as a hang (conn_read() waits for a new edge
 *                         after a short read, and misses an end of
 *                         stream that came before the wait)
 *   slot-wait-edge        bit 4 is ignored (with one request in flight,
 *                         main_co waits for the slot while more requests
 *                         arrive; then conn_read() waits for a new edge
 *                         after its last short recv, and those bytes are
 *                         never read)
 *   starttls-eof          from the first STARTTLS option on, the rest
 *                         of the input goes in one piece (the TLS
 *                         handshake misses the client's end of stream
 *                         when the TLS bytes come after the ACK)
 */
#include "fuzz.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/server.h"

#define IMAGE_SIZE (1024 * 1024)
/* Below the server's 10 s handshake limit, so that a connection only
 * that timer would drop counts as a hang. */
#define HANG_NS (5ll * 1000 * 1000 * 1000)
#define WATCHDOG_NS (20 * 1000 * 1000)
#define SHORT_READ_GRACE_NS (100 * 1000 * 1000)

/* ---- what main.c provides to the server library --------------------- */

Server server;

static unsigned default_export;     /* what the empty name means */
static unsigned long closed_bhs;

Export *server_find_export(const char *name, size_t len)
{
    unsigned i;

    if (len == 0) {
        return server.nexports ? &server.exports[default_export] : NULL;
    }
    for (i = 0; i < server.nexports; i++) {
        Export *e = &server.exports[i];

        if (strlen(e->name) == len && memcmp(e->name, name, len) == 0) {
            return e;
        }
    }
    return NULL;
}

void server_conn_opened(void)
{
    atomic_fetch_add(&server.conns_live, 1);
}

static void conn_closed_bh(void *opaque)
{
    closed_bhs++;
}

void server_conn_closed(void)
{
    atomic_fetch_sub(&server.conns_live, 1);
    aio_bh_schedule_oneshot(server.main_ctx, conn_closed_bh, NULL,
                            "conn-closed");
}

/* ---- set-up ------------------------------------------------------------ */

static ServerConfig cfg;
static unsigned default_handshake_limit;
static bool tolerate_hs_limit_0, tolerate_inflight, tolerate_starttls;
static bool tolerate_read0, tolerate_short_read, tolerate_slot_wait;
static bool trace;              /* RAWNBD_FUZZ_TRACE=1: print each reply */
static AioContext *ctx;
static int img_fd = -1;
static AioTimer watchdog;

static void die(const char *what)
{
    dprintf(2, "fuzz-conn: set-up failed: %s: %s\n", what, strerror(errno));
    abort();
}

static void watchdog_cb(void *opaque)
{
    /* Only wakes a blocking aio_poll(); the loop checks the time. */
}

/* The image's contents before each input: holes, and data at 64 KiB
 * (4 KiB) and 512 KiB (160 KiB), so reads mix data and holes. */
static void reset_image(void)
{
    static uint8_t pattern[160 * 1024];
    size_t i;

    if (!pattern[1]) {
        for (i = 0; i < sizeof(pattern); i++) {
            pattern[i] = (uint8_t)(i * 131 + 7) | 1;
        }
    }
    if (ftruncate(img_fd, 0) < 0 || ftruncate(img_fd, IMAGE_SIZE) < 0 ||
        pwrite(img_fd, pattern, 4096, 64 * 1024) != 4096 ||
        pwrite(img_fd, pattern, sizeof(pattern), 512 * 1024) !=
            (ssize_t)sizeof(pattern)) {
        die("resetting the image");
    }
}

static void setup(void)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    char *dir = g_strdup_printf("%s/rawnbd-fuzz-XXXXXX", base);
    char *img, *psk, *spec_ro, *spec_win, *spec_secret, *psk_opt;
    static char *args_copy[16];
    char **argv;
    int argc, fd;
    GError *err = NULL;
    unsigned i;

    signal(SIGPIPE, SIG_IGN);
    if (!getenv("RAWNBD_FUZZ_LOG") || strcmp(getenv("RAWNBD_FUZZ_LOG"), "1")) {
        /* The server logs with fprintf(stderr): send that away, while
         * sanitizer reports and failed invariants still reach fd 2. */
        FILE *null = fopen("/dev/null", "w");

        if (null) {
            stderr = null;
        }
    }
    if (!mkdtemp(dir)) {
        die("mkdtemp");
    }
    img = g_build_filename(dir, "disk.img", NULL);
    psk = g_build_filename(dir, "keys.psk", NULL);
    img_fd = open(img, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (img_fd < 0) {
        die("creating the image");
    }
    reset_image();
    fd = open(psk, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 ||
        dprintf(fd, "fuzz:000102030405060708090a0b0c0d0e0f\n") < 0) {
        die("writing the PSK file");
    }
    close(fd);

    spec_ro = g_strdup_printf("ro=%s,ro", img);
    spec_win = g_strdup_printf("win=%s,offset=4608,size=700001", img);
    spec_secret = g_strdup_printf("secret=%s,tls-only,description=s", img);
    psk_opt = g_strdup_printf("--tls-psk=%s", psk);
    {
        const char *args[] = {
            "rawnbd-fuzz", "--threads=1",
            "--tls=on", psk_opt, "--description=fuzz image",
            "--export", spec_ro, "--export", spec_win,
            "--export", spec_secret, img, NULL,
        };

        argc = G_N_ELEMENTS(args) - 1;
        argv = g_new0(char *, argc + 1);
        for (i = 0; i < (unsigned)argc; i++) {
            /* cli_parse() takes options out of argv: keep the strings. */
            args_copy[i] = g_strdup(args[i]);
            argv[i] = args_copy[i];
        }
    }
    cli_parse(argc, argv, &cfg);
    default_handshake_limit = cfg.handshake_limit;
    {
        const char *t = getenv("RAWNBD_FUZZ_TOLERATE");

        tolerate_hs_limit_0 = t && strstr(t, "handshake-limit-0");
        tolerate_inflight = t && strstr(t, "disconnect-inflight");
        tolerate_starttls = t && strstr(t, "starttls-eof");
        tolerate_read0 = t && strstr(t, "read-zero-length");
        tolerate_short_read = t && strstr(t, "short-read-eof");
        tolerate_slot_wait = t && strstr(t, "slot-wait-edge");
        trace = getenv("RAWNBD_FUZZ_TRACE") &&
                !strcmp(getenv("RAWNBD_FUZZ_TRACE"), "1");
    }
    server.cfg = &cfg;
    server.nexports = cfg.exports->len;
    server.exports = g_new0(Export, server.nexports);
    for (i = 0; i < server.nexports; i++) {
        if (!export_open(&server.exports[i],
                         g_ptr_array_index(cfg.exports, i), &cfg, &err)) {
            dprintf(2, "fuzz-conn: export: %s\n", err->message);
            abort();
        }
    }
    if (!tls_init(&cfg, &err)) {
        dprintf(2, "fuzz-conn: tls: %s\n", err->message);
        abort();
    }
    /* Everything is open: leave nothing behind on disk. */
    unlink(img);
    unlink(psk);
    rmdir(dir);
    g_free(img);
    g_free(psk);
    g_free(dir);
    g_free(spec_ro);
    g_free(spec_win);
    g_free(spec_secret);
    g_free(psk_opt);
    g_free(argv);

    ctx = aio_context_new();
    if (!ctx) {
        die("aio_context_new");
    }
    server.main_ctx = ctx;
    aio_context_set_current(ctx);
    aio_timer_init(ctx, &watchdog, watchdog_cb, NULL);
}

/* ---- the client's stream, framed as the server will read it ---------- */

#define MAX_OPTS 4096
#define MAX_REQS 4096

typedef struct Req {
    uint64_t cookie;
    uint64_t length;
    uint16_t type;
    bool answered;
} Req;

typedef struct Client {
    const uint8_t *p;
    size_t n;
    /* Option messages: where each ends (it may end past n). */
    size_t opt_end[MAX_OPTS];
    unsigned nopts;
    size_t starttls;        /* where the first STARTTLS starts, or n */
    /* Transmission, once the server's answers say where it starts. */
    bool trans_known;
    size_t trans_start;
    Req reqs[MAX_REQS];
    unsigned nreqs;
    size_t terminal;        /* DISC, bad magic or end: stops reading */
    bool overflow;          /* too many to track: stop checking */
    bool ambiguous;         /* cookies reused: replies only counted */
} Client;

static void client_frame_options(Client *cl)
{
    size_t off = NBD_CLIENT_FLAGS_SIZE;

    cl->starttls = cl->n;
    while (cl->nopts < MAX_OPTS && off + NBD_OPT_HEADER_SIZE <= cl->n) {
        uint32_t opt, len;

        if (nbd_opt_header_decode(cl->p + off, &opt, &len) < 0 ||
            (opt == NBD_OPT_EXPORT_NAME && len > NBD_MAX_STRING) ||
            len > (1u << 20)) {
            return;     /* the server disconnects here */
        }
        if (opt == NBD_OPT_STARTTLS && cl->starttls == cl->n) {
            cl->starttls = off;
        }
        off += NBD_OPT_HEADER_SIZE + (size_t)len;
        cl->opt_end[cl->nopts++] = off;
        if (off >= cl->n) {
            return;
        }
    }
}

/* Transmission starts after option `k` (0-based): list the requests. */
static void client_frame_requests(Client *cl, unsigned k, bool extended)
{
    size_t off = k < cl->nopts ? cl->opt_end[k] : cl->n;
    size_t hsize = nbd_request_size(extended);

    cl->trans_known = true;
    cl->trans_start = off;
    cl->terminal = cl->n;
    while (off + hsize <= cl->n) {
        NBDRequest req;
        uint64_t payload;

        if (nbd_request_decode(cl->p + off, extended, &req) < 0 ||
            req.type == NBD_CMD_DISC) {
            cl->terminal = off;
            return;
        }
        payload = nbd_request_payload_len(&req, extended);
        if (payload > cl->n - off - hsize) {
            return;     /* cut short: the server gets EOF reading it */
        }
        if (cl->nreqs == MAX_REQS) {
            cl->overflow = true;
            return;
        }
        cl->reqs[cl->nreqs++] = (Req) {
            .cookie = req.cookie, .length = req.length, .type = req.type,
        };
        off += hsize + payload;
    }
}

/* ---- the client's view of what the server sends ------------------------ */

enum {
    OUT_GREETING,       /* 18 bytes */
    OUT_OPTION,         /* option reply, or EXPORT_NAME's reply */
    OUT_OPT_PAYLOAD,    /* skipping an option reply's payload */
    OUT_REPLY,          /* transmission replies */
    OUT_PAYLOAD,        /* skipping a reply's payload */
    OUT_AFTER_ABORT,    /* nothing may follow */
    OUT_UNCHECKED,      /* TLS, or lost track: not framed here */
};

typedef struct OutParser {
    Client *cl;
    int state;
    uint8_t hdr[140];
    size_t have;        /* bytes in hdr */
    uint64_t skip;      /* payload bytes still to skip */
    bool no_zeroes;
    bool structured, extended;
    int after_payload;  /* state once the payload is skipped */
    uint64_t total;     /* bytes seen */
    unsigned answered;  /* options with their final reply */
    unsigned replies;   /* requests with their final reply */
} OutParser;

static void out_fail(const OutParser *o, const char *why)
{
    dprintf(2, "fuzz-conn: server output is wrong at byte %llu: %s\n",
            (unsigned long long)o->total, why);
    abort();
}

/* Bytes of header the current state needs before it can decide. */
static size_t out_need(const OutParser *o)
{
    switch (o->state) {
    case OUT_GREETING:
        return NBD_GREETING_SIZE;
    case OUT_OPTION:
        if (o->have < 8) {
            return 8;
        }
        if (nbd_get_be64(o->hdr) == NBD_OPT_REPLY_MAGIC) {
            return NBD_OPT_REPLY_HEADER_SIZE;
        }
        return o->no_zeroes ? NBD_EXPORT_NAME_REPLY_SHORT
                            : NBD_EXPORT_NAME_REPLY_SIZE;
    case OUT_REPLY:
        if (o->extended) {
            return NBD_EXT_CHUNK_SIZE;
        }
        if (o->have < 4) {
            return 4;
        }
        return nbd_get_be32(o->hdr) == NBD_SIMPLE_REPLY_MAGIC
               ? NBD_SIMPLE_REPLY_SIZE : NBD_CHUNK_SIZE;
    default:
        return 0;
    }
}

static bool is_export_size(uint64_t size)
{
    unsigned i;

    for (i = 0; i < server.nexports; i++) {
        if (server.exports[i].size == size) {
            return true;
        }
    }
    return false;
}

/* The answer to option number o->answered took us to transmission. */
static void out_enter_transmission(OutParser *o)
{
    o->state = OUT_REPLY;
    client_frame_requests(o->cl, o->answered, o->extended);
    o->answered++;
    if (o->cl->overflow) {
        o->state = OUT_UNCHECKED;
    }
}

static void out_option(OutParser *o)
{
    uint32_t opt, type, len;

    if (nbd_get_be64(o->hdr) != NBD_OPT_REPLY_MAGIC) {
        /* The reply to NBD_OPT_EXPORT_NAME: size, flags, zeroes. */
        if (!is_export_size(nbd_get_be64(o->hdr))) {
            out_fail(o, "neither an option reply nor an export size");
        }
        if (!(nbd_get_be16(o->hdr + 8) & NBD_FLAG_HAS_FLAGS)) {
            out_fail(o, "transmission flags without HAS_FLAGS");
        }
        for (size_t i = 10; i < o->have; i++) {
            if (o->hdr[i]) {
                out_fail(o, "EXPORT_NAME reply padding is not zero");
            }
        }
        out_enter_transmission(o);
        return;
    }
    opt = nbd_get_be32(o->hdr + 8);
    type = nbd_get_be32(o->hdr + 12);
    len = nbd_get_be32(o->hdr + 16);
    o->skip = len;
    o->after_payload = OUT_OPTION;
    o->state = OUT_OPT_PAYLOAD;
    if (NBD_REP_IS_ERR(type)) {
        if (strcmp(nbd_rep_name(type), "unknown") == 0) {
            out_fail(o, "unknown option error type");
        }
        if (len > NBD_MAX_ERR_MSG) {
            out_fail(o, "option error message too long");
        }
        o->answered++;
        return;
    }
    switch (type) {
    case NBD_REP_ACK:
        if (len != 0) {
            out_fail(o, "NBD_REP_ACK with a payload");
        }
        switch (opt) {
        case NBD_OPT_GO:
            out_enter_transmission(o);
            return;
        case NBD_OPT_ABORT:
            o->state = OUT_AFTER_ABORT;
            break;
        case NBD_OPT_STARTTLS:
            o->state = OUT_UNCHECKED;
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            o->structured = true;
            break;
        case NBD_OPT_EXTENDED_HEADERS:
            o->extended = true;
            break;
        default:
            break;
        }
        o->answered++;
        break;
    case NBD_REP_SERVER:
        if (opt != NBD_OPT_LIST || len < 4) {
            out_fail(o, "bad NBD_REP_SERVER");
        }
        break;
    case NBD_REP_INFO:
        if ((opt != NBD_OPT_INFO && opt != NBD_OPT_GO) || len < 2) {
            out_fail(o, "bad NBD_REP_INFO");
        }
        break;
    case NBD_REP_META_CONTEXT:
        if ((opt != NBD_OPT_LIST_META_CONTEXT &&
             opt != NBD_OPT_SET_META_CONTEXT) || len < 5) {
            out_fail(o, "bad NBD_REP_META_CONTEXT");
        }
        break;
    default:
        out_fail(o, "unknown option reply type");
    }
}

/*
 * The request a reply with this cookie answers: the oldest one still
 * open, of a command that can get this reply (type: NBD_CMD_READ for
 * read data, NBD_CMD_BLOCK_STATUS for extents, -1 for any).  A client
 * may reuse a cookie; when open requests share it and differ, which
 * one the server answered cannot be told: NULL, and the caller stops
 * checking.
 */
static Req *out_find_req(OutParser *o, uint64_t cookie, int type)
{
    Client *cl = o->cl;
    Req *found = NULL;
    unsigned i;

    for (i = 0; i < cl->nreqs; i++) {
        Req *r = &cl->reqs[i];

        if (r->answered || r->cookie != cookie) {
            continue;
        }
        if (!found) {
            found = r;
        } else if (found->type != r->type || found->length != r->length) {
            /* From now on, which reply answers which request is a
             * guess: count them, check no more. */
            cl->ambiguous = true;
        }
    }
    if (cl->ambiguous) {
        return NULL;
    }
    if (!found) {
        out_fail(o, "a reply to no request in flight (cookie unknown or "
                    "answered already)");
    }
    if (type >= 0 && found->type != (unsigned)type) {
        out_fail(o, type == NBD_CMD_READ
                    ? "read data or hole in reply to no READ"
                    : "block status in reply to no BLOCK_STATUS");
    }
    return found;
}

/* A final reply; r is NULL when which request it answers is unclear. */
static void out_done(OutParser *o, Req *r)
{
    Client *cl = o->cl;
    unsigned i;

    if (!r) {
        /* Some request with this cookie: the first open one will do for
         * counting. */
        for (i = 0; i < cl->nreqs && !r; i++) {
            if (!cl->reqs[i].answered &&
                cl->reqs[i].cookie == nbd_get_be64(o->hdr + 8)) {
                r = &cl->reqs[i];
            }
        }
        if (!r) {
            out_fail(o, "more replies than requests with this cookie");
        }
    }
    r->answered = true;
    o->replies++;
}

static void out_chunk(OutParser *o, uint64_t cookie, uint16_t flags,
                      uint16_t type, uint64_t len)
{
    if (trace) {
        dprintf(2, "fuzz-conn: chunk cookie %llu flags %u type %u length "
                "%llu\n", (unsigned long long)cookie, flags, type,
                (unsigned long long)len);
    }
    int want = -1;

    if (type == NBD_REPLY_TYPE_OFFSET_DATA ||
        type == NBD_REPLY_TYPE_OFFSET_HOLE) {
        want = NBD_CMD_READ;
    } else if (type == NBD_REPLY_TYPE_BLOCK_STATUS ||
               type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT) {
        want = NBD_CMD_BLOCK_STATUS;
    }
    Req *r;

    r = out_find_req(o, cookie, want);
    if (flags & ~NBD_REPLY_FLAG_DONE) {
        out_fail(o, "unknown reply chunk flags");
    }
    switch (type) {
    case NBD_REPLY_TYPE_NONE:
        if (len != 0 || !(flags & NBD_REPLY_FLAG_DONE)) {
            out_fail(o, "NBD_REPLY_TYPE_NONE with a payload or not DONE");
        }
        break;
    case NBD_REPLY_TYPE_OFFSET_DATA:
    case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (type == NBD_REPLY_TYPE_OFFSET_DATA && len <= 8 &&
            !(tolerate_read0 && len == 8 && r && r->length == 0)) {
            out_fail(o, "OFFSET_DATA without data");
        }
        if (type == NBD_REPLY_TYPE_OFFSET_HOLE && len != 12) {
            out_fail(o, "OFFSET_HOLE of the wrong size");
        }
        if (r && len > r->length + 8) {
            out_fail(o, "more data than the READ asked for");
        }
        break;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
    case NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
        if (o->extended != (type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT)) {
            out_fail(o, "block status chunk of the other header style");
        }
        if (type == NBD_REPLY_TYPE_BLOCK_STATUS &&
            (len < 12 || (len - 4) % 8)) {
            out_fail(o, "BLOCK_STATUS chunk of the wrong size");
        }
        if (type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT &&
            (len < 24 || (len - 8) % 16)) {
            out_fail(o, "BLOCK_STATUS_EXT chunk of the wrong size");
        }
        break;
    case NBD_REPLY_TYPE_ERROR:
    case NBD_REPLY_TYPE_ERROR_OFFSET:
        if (len < 6) {
            out_fail(o, "error chunk too short");
        }
        break;
    default:
        out_fail(o, "unknown reply chunk type");
    }
    if (flags & NBD_REPLY_FLAG_DONE) {
        out_done(o, r);
    }
    o->skip = len;
    o->after_payload = OUT_REPLY;
    o->state = OUT_PAYLOAD;
}

static void out_reply(OutParser *o)
{
    uint32_t magic = nbd_get_be32(o->hdr);
    uint64_t cookie = nbd_get_be64(o->hdr + 8);

    if (magic == NBD_SIMPLE_REPLY_MAGIC && !o->extended && trace) {
        dprintf(2, "fuzz-conn: simple reply cookie %llu error %u\n",
                (unsigned long long)cookie, nbd_get_be32(o->hdr + 4));
    }
    if (magic == NBD_SIMPLE_REPLY_MAGIC && !o->extended) {
        Req *r = out_find_req(o, cookie, -1);
        uint32_t err = nbd_get_be32(o->hdr + 4);

        if (!r) {
            out_done(o, r);
            if (!o->structured) {
                /* Whether data follows, and how much, cannot be told. */
                o->state = OUT_UNCHECKED;
            }
            return;
        }
        out_done(o, r);
        if (err && strcmp(nbd_err_name(err), "unknown") == 0) {
            out_fail(o, "simple reply with an unknown error");
        }
        if (r->type == NBD_CMD_READ && !err) {
            if (o->structured) {
                out_fail(o, "READ data in a simple reply after structured "
                            "replies were negotiated");
            }
            o->skip = r->length;
            o->after_payload = OUT_REPLY;
            o->state = OUT_PAYLOAD;
        }
        return;
    }
    if (o->extended) {
        if (magic != NBD_EXTENDED_REPLY_MAGIC) {
            out_fail(o, magic == NBD_SIMPLE_REPLY_MAGIC
                        ? "simple reply after extended headers"
                        : "bad reply magic (extended headers)");
        }
        out_chunk(o, cookie, nbd_get_be16(o->hdr + 4),
                  nbd_get_be16(o->hdr + 6), nbd_get_be64(o->hdr + 24));
        return;
    }
    if (magic != NBD_STRUCTURED_REPLY_MAGIC || !o->structured) {
        out_fail(o, "bad reply magic");
    }
    out_chunk(o, cookie, nbd_get_be16(o->hdr + 4), nbd_get_be16(o->hdr + 6),
              nbd_get_be32(o->hdr + 16));
}

static void out_feed(OutParser *o, const uint8_t *p, size_t n)
{
    while (n > 0) {
        size_t need, take;

        if (o->state == OUT_UNCHECKED) {
            o->total += n;
            return;
        }
        if (o->state == OUT_AFTER_ABORT) {
            out_fail(o, "bytes after the ACK to NBD_OPT_ABORT");
        }
        if (o->state == OUT_OPT_PAYLOAD || o->state == OUT_PAYLOAD) {
            take = o->skip < n ? (size_t)o->skip : n;
            o->skip -= take;
            o->total += take;
            p += take;
            n -= take;
            if (o->skip == 0) {
                o->state = o->after_payload;
            }
            continue;
        }
        need = out_need(o);
        take = need - o->have < n ? need - o->have : n;
        memcpy(o->hdr + o->have, p, take);
        o->have += take;
        o->total += take;
        p += take;
        n -= take;
        if (o->have < need || out_need(o) > o->have) {
            continue;
        }
        switch (o->state) {
        case OUT_GREETING:
            if (nbd_get_be64(o->hdr) != NBD_MAGIC ||
                nbd_get_be64(o->hdr + 8) != NBD_OPTS_MAGIC) {
                out_fail(o, "bad greeting");
            }
            o->state = OUT_OPTION;
            break;
        case OUT_OPTION:
            out_option(o);
            break;
        case OUT_REPLY:
            out_reply(o);
            break;
        }
        o->have = 0;
        if ((o->state == OUT_OPT_PAYLOAD || o->state == OUT_PAYLOAD) &&
            o->skip == 0) {
            o->state = o->after_payload;
        }
    }
}

/* The connection closed: the last message must be complete, and every
 * request the server read must have had its reply. */
static void out_finish(const OutParser *o)
{
    if (o->state == OUT_UNCHECKED || o->state == OUT_AFTER_ABORT) {
        return;
    }
    if (o->have || o->state == OUT_OPT_PAYLOAD || o->state == OUT_PAYLOAD) {
        out_fail(o, "connection closed in the middle of a message");
    }
    if (o->state == OUT_REPLY && o->replies != o->cl->nreqs) {
        out_fail(o, "connection closed with requests left unanswered");
    }
}

/* How far the client may send for now.  Normally everything; with the
 * disconnect-inflight tolerance, one option at a time (each waits for
 * its answer), and nothing that makes the server stop reading (DISC, a
 * bad magic, the end) while requests are unanswered. */
static size_t client_may_send_inflight(const Client *cl,
                                       const OutParser *o);

static size_t client_may_send(const Client *cl, const OutParser *o,
                              size_t pos)
{
    size_t limit;

    if (tolerate_starttls && pos >= cl->starttls) {
        return cl->n;
    }
    limit = client_may_send_inflight(cl, o);
    if (tolerate_starttls && limit > cl->starttls) {
        /* Up to STARTTLS; from there on everything at once. */
        limit = cl->starttls;
    }
    return limit;
}

static size_t client_may_send_inflight(const Client *cl, const OutParser *o)
{
    if (!tolerate_inflight || o->state == OUT_UNCHECKED ||
        o->state == OUT_AFTER_ABORT) {
        return cl->n;
    }
    if (!cl->trans_known) {
        if (o->answered < cl->nopts) {
            size_t end = cl->opt_end[o->answered];

            return end < cl->n ? end : cl->n;
        }
        /* The answers so far did not start transmission: the rest is
         * bytes the server will not frame as options. */
        return cl->n;
    }
    if (o->replies < cl->nreqs) {
        return cl->terminal;
    }
    return cl->n;
}

/* ---- one input ----------------------------------------------------------- */

/* Read what the server wrote; returns the number of bytes. */
static size_t drain(int fd, OutParser *o)
{
    uint8_t buf[64 * 1024];
    size_t total = 0;

    for (;;) {
        ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

        if (r > 0) {
            out_feed(o, buf, r);
            total += r;
            continue;
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        return total;   /* EAGAIN, end of stream, or reset */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    static Client cl;
    OutParser out = { .cl = &cl, .state = OUT_GREETING };
    const uint8_t *p;
    size_t n, pos = 0;
    uint8_t mode, split;
    uint32_t rng;
    unsigned long iters = 0, max_iters;
    int64_t deadline;
    bool shut = false, aborted = false;
    int64_t shut_at = 0;
    int sv[2];

    if (!ready) {
        setup();
        ready = true;
    }
    if (size < 2) {
        return 0;
    }
    mode = data[0];
    split = data[1];
    p = data + 2;
    n = size - 2;
    rng = 0x9e3779b9u ^ split ^ (uint32_t)n;

    default_export = mode & 1;
    switch ((mode >> 1) & 3) {
    case 1:
        cfg.tls = TLS_ON;
        break;
    case 2:
        cfg.tls = TLS_REQUIRE;
        break;
    default:
        cfg.tls = TLS_OFF;
        break;
    }
    log_verbosity = mode & 8 ? 2 : 0;
    cfg.max_inflight = mode & 16 && !tolerate_slot_wait ? 1 : 16;
    cfg.handshake_limit = mode & 32 && !tolerate_hs_limit_0
                          ? 0 : default_handshake_limit;
    /* The client's flags, as the server will see them. */
    out.no_zeroes = n >= 4 && (nbd_get_be32(p) & NBD_FLAG_C_NO_ZEROES);
    memset(&cl, 0, sizeof(cl));
    cl.p = p;
    cl.n = n;
    client_frame_options(&cl);

    reset_image();
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                   sv) < 0) {
        die("socketpair");
    }
    server_conn_opened();
    conn_start(ctx, sv[0], "fuzz");

    max_iters = 4 * n + 100000;
    deadline = clock_ns() + HANG_NS;
    while (atomic_load_seq(&server.conns_live) != 0) {
        size_t limit;

        /* The answers so far decide how much may go now. */
        drain(sv[1], &out);
        limit = client_may_send(&cl, &out, pos);

        if (++iters > max_iters || clock_ns() > deadline) {
            dprintf(2, "fuzz-conn: HANG: the connection is still open after "
                    "%lu loop iterations (%zu of %zu client bytes sent%s)\n",
                    iters, pos, n, shut ? ", then shut down" : "");
            abort();
        }
        if (pos < limit) {
            size_t chunk = limit - pos;
            ssize_t w;

            if (split && !(tolerate_starttls && pos >= cl.starttls)) {
                size_t most = split < 128 ? split : (split - 127u) * 512u;

                rng = rng * 1103515245u + 12345u;
                chunk = 1 + (rng >> 8) % most;
                chunk = chunk < limit - pos ? chunk : limit - pos;
            }
            w = send(sv[1], p + pos, chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0) {
                pos += w;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                pos = n;    /* the server closed its end */
            }
        } else if (pos == n && !shut &&
                   (!tolerate_inflight || out.replies >= cl.nreqs ||
                    out.state == OUT_UNCHECKED)) {
            shutdown(sv[1], SHUT_WR);
            shut = true;
            shut_at = clock_ns();
        } else if (shut && tolerate_short_read && !aborted &&
                   clock_ns() - shut_at > SHORT_READ_GRACE_NS) {
            conn_shutdown_all(true);
            aborted = true;
        }
        drain(sv[1], &out);
        aio_timer_mod(&watchdog, clock_ns() + WATCHDOG_NS);
        aio_poll(ctx, true);
    }
    aio_timer_del(&watchdog);
    drain(sv[1], &out);
    out_finish(&out);
    close(sv[1]);
    /* The close BH and anything else left over. */
    while (aio_poll(ctx, false)) {
    }
    return 0;
}
