/*
 * conn.c: a client connection, from accept to close.
 *
 *   main thread                      loop thread (the connection's home)
 *   accept -> conn_start() --BH-->   main_co: handshake_co()
 *                                             conn_transmission():
 *                                      for each request header:
 *                                        take a slot (wait if none free)
 *                                        read the WRITE payload
 *                                        co_enter(request_co)  --+
 *                                      ...                      |
 *                                    request_co: export I/O (may yield),
 *                                      build the reply, queue it; the
 *                                      send BH writes every queued reply
 *                                      with one sendmsg; a sender
 *                                      coroutine takes over only while the
 *                                      socket is full
 *
 * Failures: a request the spec rejects gets its error reply (its payload
 * drained first); an I/O error becomes that request's error reply; a
 * framing error (bad magic), a broken socket or a stop drops the
 * connection after the requests in flight finish.
 */
#include "conn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONN_MEM_BUDGET (128ull << 20)  /* request data per connection */
#define BUF_CACHE_MAX (256 * 1024)      /* always keep slot buffers this big */
#define CONN_BUF_CACHE (32ull << 20)    /* larger ones: up to this in total */
#define HOLE_MIN_READ (128 * 1024)      /* look for holes in reads this big */
#define ZERO_COPY_MIN (64 * 1024)       /* sendfile() cached reads this big */
#define BS_MAX_EXTENTS 4096             /* block status extents per reply */
#define SEND_IOV_BATCH 256
#define SEND_EARLY_REPLIES 16                   /* see conn_transmission() */
#define LINGER_NS (2ll * 1000 * 1000 * 1000)   /* see conn_linger() */
#define PAYLOAD_GRACE_NS (1000ll * 1000 * 1000) /* see conn_stop_graceful() */

/* ---- the plain transport ---------------------------------------------- */

static ssize_t plain_recv(Conn *c, void *buf, size_t len)
{
    ssize_t r = recv(c->fd, buf, len, 0);

    return r < 0 ? -errno : r;
}

static ssize_t plain_sendv(Conn *c, const struct iovec *iov, int n,
                           bool more)
{
    struct msghdr msg = {
        .msg_iov = (struct iovec *)iov,
        .msg_iovlen = n,
    };
    ssize_t r = sendmsg(c->fd, &msg, MSG_NOSIGNAL | (more ? MSG_MORE : 0));

    return r < 0 ? -errno : r;
}

static ssize_t plain_sendfile(Conn *c, int fd, off_t offset, size_t len)
{
    ssize_t r = sendfile(c->fd, fd, &offset, len);

    if (r == 0) {
        return -EIO;            /* the file shrank under us */
    }
    return r < 0 ? -errno : r;
}

static const Transport plain_transport = {
    .recv = plain_recv,
    .sendv = plain_sendv,
    .sendfile = plain_sendfile,
    .short_read_drains = true,
};

/* ---- connection registry (main thread <-> loops) ------------------------ */

static GMutex conn_lock;
static GQueue all_conns;        /* every live connection */
static GQueue negotiating;      /* still negotiating, oldest first */

enum {
    STOP_NONE,
    STOP_ABORT,                 /* drop now */
    STOP_GRACEFUL,              /* finish requests in flight, flush, close */
};

typedef struct ConnExtra {
    int stop_mode;              /* atomic */
    bool in_neg_queue;          /* under conn_lock */
} ConnExtra;

/* Conn and its registry fields, kept together. */
typedef struct ConnBox {
    Conn conn;
    ConnExtra x;
} ConnBox;

static ConnExtra *conn_extra(Conn *c)
{
    return &container_of(c, ConnBox, conn)->x;
}

/* ---- waiting and waking the main coroutine ------------------------------- */

/* Yield until conn_wake(); callers re-check their condition. */
static void coroutine_fn conn_wait(Conn *c)
{
    c->main_waiting = true;
    co_yield();
}

/*
 * Always through the scheduler: the waker may be the send path, and
 * main_co may free the connection as soon as it runs.
 */
static void conn_wake(Conn *c)
{
    if (c->main_waiting) {
        c->main_waiting = false;
        aio_co_schedule(c->ctx, c->main_co);
    }
}

/* Drop the connection: stop reading and writing, discard replies. */
static void conn_abort(Conn *c)
{
    c->stopping = true;
    aio_cofd_cancel(&c->cofd);
    shutdown(c->fd, SHUT_RDWR);
    conn_wake(c);
}

static void payload_grace_timeout(void *opaque)
{
    Conn *c = opaque;

    aio_cofd_cancel_read(&c->cofd);
}

/*
 * Stop reading requests; those in flight finish and are answered.  A
 * request whose header is in but whose payload is still arriving counts as
 * in flight: its payload may take up to PAYLOAD_GRACE_NS more, so that a
 * client in the middle of sending a WRITE gets it done and acknowledged,
 * while one that stalls there does not hold up the exit.
 */
static void conn_stop_graceful(Conn *c)
{
    c->stopping = true;
    c->stop_graceful = true;
    if (c->in_payload) {
        if (!aio_timer_pending(&c->payload_timer)) {
            aio_timer_mod(&c->payload_timer, clock_ns() + PAYLOAD_GRACE_NS);
        }
    } else {
        aio_cofd_cancel_read(&c->cofd);
    }
    conn_wake(c);
}

static void stop_bh_cb(void *opaque)
{
    Conn *c = opaque;

    if (c->negotiating ||
        atomic_load_seq(&conn_extra(c)->stop_mode) == STOP_ABORT) {
        conn_abort(c);
    } else {
        conn_stop_graceful(c);
    }
}

/* Ask @c (any loop) to stop.  Caller holds conn_lock. */
static void conn_request_stop(Conn *c, int mode)
{
    ConnExtra *x = conn_extra(c);

    if (atomic_load_seq(&x->stop_mode) != STOP_ABORT) {
        atomic_store_seq(&x->stop_mode, mode);
    }
    aio_bh_schedule(c->stop_bh);
}

void conn_shutdown_all(bool now)
{
    GList *l;

    g_mutex_lock(&conn_lock);
    for (l = all_conns.head; l; l = l->next) {
        conn_request_stop(l->data, now ? STOP_ABORT : STOP_GRACEFUL);
    }
    g_mutex_unlock(&conn_lock);
}

/* ---- buffered I/O for coroutines ------------------------------------------ */

int coroutine_fn conn_read(Conn *c, void *buf, size_t len)
{
    uint8_t *dst = buf;

    while (len > 0) {
        size_t avail = c->in_end - c->in_start;
        size_t want;
        bool direct;
        ssize_t r;

        if (avail) {
            size_t n = MIN(avail, len);

            memcpy(dst, c->in + c->in_start, n);
            c->in_start += n;
            dst += n;
            len -= n;
            continue;
        }
        c->in_start = c->in_end = 0;
        /*
         * A short read drained the socket, and its next data will come
         * with an edge.  Not so once the peer has hung up: the end of
         * stream may sit there with its edge already consumed.
         */
        if (c->rd_drained && !c->cofd.hup) {
            int ret;

            c->rd_drained = false;
            ret = aio_cofd_wait_readable(&c->cofd);
            if (ret < 0) {
                return ret;
            }
        }
        /*
         * Big payloads go straight to their buffer: no extra copy.  After
         * one, the next header is read alone, so that the payload behind
         * it does not pass through the buffer either.
         */
        direct = len >= CONN_IN_SIZE / 2;
        want = direct ? len : CONN_IN_SIZE;
        if (!direct && c->in_limit) {
            want = MAX(c->in_limit, len);
            c->in_limit = 0;
        }
        r = c->tr->recv(c, direct ? dst : c->in, want);
        if (r > 0) {
            c->rd_drained = c->tr->short_read_drains && (size_t)r < want;
            if (direct) {
                dst += r;
                len -= r;
            } else {
                c->in_end = r;
                c->recv_ns = clock_ns();
            }
        } else if (r == 0) {
            return -EPIPE;
        } else if (r == -EAGAIN) {
            int ret = aio_cofd_wait_readable(&c->cofd);

            if (ret < 0) {
                return ret;
            }
        } else if (r != -EINTR) {
            return r;
        }
    }
    return 0;
}

int coroutine_fn conn_discard(Conn *c, uint64_t len)
{
    uint8_t scratch[4096];

    while (len > 0) {
        size_t n = MIN(len, sizeof(scratch));
        int r;

        /* conn_read uses the input buffer; scratch sees only the tail. */
        if (c->in_end > c->in_start) {
            size_t avail = MIN(c->in_end - c->in_start, len);

            c->in_start += avail;
            len -= avail;
            continue;
        }
        r = conn_read(c, scratch, n);
        if (r < 0) {
            return r;
        }
        len -= n;
    }
    return 0;
}

/* Push what the transport still holds, waiting while the socket is full. */
static int coroutine_fn conn_co_flush(Conn *c)
{
    int r;

    while (c->tr->flush && (r = c->tr->flush(c)) != 0) {
        if (r == -EAGAIN) {
            r = aio_cofd_wait_writable(&c->cofd);
        }
        if (r < 0 && r != -EINTR) {
            return r;
        }
    }
    return 0;
}

int coroutine_fn conn_writev(Conn *c, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t r = c->tr->sendv(c, iov, n, false);

        if (r == -EAGAIN) {
            int ret = aio_cofd_wait_writable(&c->cofd);

            if (ret < 0) {
                return ret;
            }
            continue;
        }
        if (r == -EINTR) {
            continue;
        }
        if (r < 0) {
            return r;
        }
        while (n > 0 && (size_t)r >= iov->iov_len) {
            r -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= r;
        }
    }
    return conn_co_flush(c);
}

int coroutine_fn conn_write(Conn *c, const void *buf, size_t len)
{
    struct iovec iov = { (void *)buf, len };

    return conn_writev(c, &iov, 1);
}

/* ---- request slots ---------------------------------------------------------- */

/* Make r->buf hold at least @size bytes.  Returns -ENOMEM on failure. */
static int slot_buf(NBDReq *r, size_t size)
{
    Conn *c = r->conn;

    if (r->buf_size >= size) {
        return 0;
    }
    size = (size + 4095) & ~(size_t)4095;
    free(r->buf);
    c->buf_cached -= r->buf_size;
    r->buf = export_buf_alloc(size);
    if (!r->buf) {
        r->buf_size = 0;
        return -ENOMEM;
    }
    r->buf_size = size;
    c->buf_cached += size;
    return 0;
}

static NBDReq *slot_take(Conn *c)
{
    NBDReq *r = c->free_slots;

    c->free_slots = r->next;
    r->next = NULL;
    r->niov = 0;
    r->hdr_used = 0;
    r->file_mask = 0;
    r->err = 0;
    c->inflight++;
    return r;
}

static void slot_charge(Conn *c, NBDReq *r, uint64_t bytes)
{
    r->mem = bytes;
    c->mem_inflight += bytes;
}

/*
 * Count @r in the metrics: its reply was handed to the kernel at @sent_ns,
 * or never sent if @sent_ns is 0 (the connection broke first).
 */
static void account_request(Conn *c, NBDReq *r, int64_t sent_ns)
{
    ExportStats *st = c->stats;
    int64_t ns;

    STAT_ADD(st->in_flight, -1);
    if (!sent_ns) {
        return;
    }
    ns = sent_ns - r->start_ns;
    STAT_ADD(st->latency[metrics_latency_bucket(ns)], 1);
    STAT_ADD(st->latency_sum_ns, ns);
    if (r->err) {
        STAT_ADD(st->errors[metrics_err_index(r->err)], 1);
    } else if (r->req.type == NBD_CMD_READ) {
        STAT_ADD(st->bytes_read, r->req.length);
    } else if (r->req.type == NBD_CMD_WRITE) {
        STAT_ADD(st->bytes_written, r->req.length);
    }
}

/* Give @r back: its reply was sent at @sent_ns (0: never sent). */
static void slot_put(Conn *c, NBDReq *r, int64_t sent_ns)
{
    account_request(c, r, sent_ns);
    /*
     * Keep buffers for the next request (a fresh large allocation costs an
     * mmap, page faults and zeroing), within a bound per connection.
     */
    if (r->buf_size > BUF_CACHE_MAX && c->buf_cached > CONN_BUF_CACHE) {
        free(r->buf);
        c->buf_cached -= r->buf_size;
        r->buf = NULL;
        r->buf_size = 0;
    }
    c->mem_inflight -= r->mem;
    r->mem = 0;
    r->next = c->free_slots;
    c->free_slots = r;
    c->inflight--;
    conn_wake(c);
}

/* ---- sending replies ------------------------------------------------------- */

static size_t reply_len(const NBDReq *r)
{
    size_t n = 0;
    int i;

    for (i = 0; i < r->niov; i++) {
        n += r->iov[i].iov_len;
    }
    return n;
}

/* The socket broke: log once, drop queued replies, stop the connection. */
static void conn_fail(Conn *c, int err)
{
    NBDReq *r;

    if (!c->dead) {
        if (err == -EPIPE || err == -ECONNRESET) {
            log_debug("%s: client went away while replies were pending",
                      CONN_LOG(c));
        } else if (err != -ECANCELED) {
            log_warn("%s: sending a reply failed: %s", CONN_LOG(c),
                     g_strerror(-err));
        }
    }
    c->dead = true;
    while ((r = c->sendq)) {
        c->sendq = r->next;
        slot_put(c, r, 0);
    }
    c->sendq_tailp = &c->sendq;
    c->sendq_off = 0;
    c->stopping = true;
    aio_cofd_cancel(&c->cofd);
    conn_wake(c);
}

/*
 * Send as much of the queue as the socket takes, many replies per system
 * call.  Returns 0 when the queue is empty, -EAGAIN when the socket is
 * full, or -errno after conn_fail().
 */
static int conn_flush_sendq(Conn *c)
{
    int64_t now;

    c->sendq_len = 0;

    while (c->sendq) {
        struct iovec iov[SEND_IOV_BATCH];
        size_t skip = c->sendq_off, done;
        NBDReq *r, *file_req = NULL;
        int file_i = 0;
        ssize_t w;
        int n = 0;

        /*
         * Gather memory segments of as many replies as fit, up to the
         * first file segment; a file segment at the very front goes out
         * with sendfile() instead.
         */
        for (r = c->sendq; r && n + r->niov <= SEND_IOV_BATCH && !file_req;
             r = r->next) {
            int i;

            for (i = 0; i < r->niov; i++) {
                char *base = r->iov[i].iov_base;
                size_t len = r->iov[i].iov_len;

                if (skip >= len) {
                    skip -= len;
                    continue;
                }
                if (r->file_mask & (1u << i)) {
                    file_req = r;
                    file_i = i;
                    break;
                }
                iov[n].iov_base = base + skip;
                iov[n].iov_len = len - skip;
                skip = 0;
                n++;
            }
        }
        if (n > 0) {
            w = c->tr->sendv(c, iov, n, file_req != NULL);
        } else {
            /* Nothing gathered: the queue starts with a file segment. */
            g_assert(file_req);
            w = c->tr->sendfile(c, file_req->file_fd,
                                file_req->file_pos[file_i] + skip,
                                file_req->iov[file_i].iov_len - skip);
        }
        if (w == -EAGAIN) {
            return -EAGAIN;
        }
        if (w == -EINTR) {
            continue;
        }
        if (w < 0) {
            conn_fail(c, w);
            return w;
        }
        done = c->sendq_off + w;
        now = 0;
        while ((r = c->sendq)) {
            size_t len = reply_len(r);

            if (done < len) {
                break;
            }
            done -= len;
            c->sendq = r->next;
            if (!c->sendq) {
                c->sendq_tailp = &c->sendq;
            }
            if (!now) {
                now = clock_ns();       /* once per batch of replies */
            }
            slot_put(c, r, now);
        }
        c->sendq_off = done;
    }
    if (c->tr->flush) {
        int r = c->tr->flush(c);

        if (r < 0 && r != -EAGAIN) {
            conn_fail(c, r);
        }
        return r;
    }
    return 0;
}

/* Waits for the socket to drain; exists only while it is full. */
static void coroutine_fn sender_co(void *opaque)
{
    Conn *c = opaque;

    for (;;) {
        int r = aio_cofd_wait_writable(&c->cofd);

        if (r < 0) {
            conn_fail(c, r);
            break;
        }
        if (conn_flush_sendq(c) != -EAGAIN) {
            break;
        }
    }
    c->sender = NULL;
    conn_wake(c);
}

static void send_bh_cb(void *opaque)
{
    Conn *c = opaque;

    if (c->sender || c->dead) {
        return;
    }
    if (conn_flush_sendq(c) == -EAGAIN) {
        c->sender = co_create(sender_co, c);
        co_set_home(c->sender, c->ctx);
        co_enter(c->sender);
    }
}

/* Queue @r's reply; the send BH goes out after this loop iteration. */
static void conn_queue_reply(Conn *c, NBDReq *r)
{
    if (c->dead) {
        slot_put(c, r, 0);
        return;
    }
    r->next = NULL;
    *c->sendq_tailp = r;
    c->sendq_tailp = &r->next;
    aio_bh_schedule(c->send_bh);
    c->sendq_len++;
}

/* ---- building replies -------------------------------------------------------- */

static void reply_hdr(NBDReq *r, size_t n)
{
    r->iov[r->niov].iov_base = r->hdr + r->hdr_used;
    r->iov[r->niov].iov_len = n;
    r->niov++;
    r->hdr_used += n;
}

static void reply_data(NBDReq *r, void *data, size_t len)
{
    r->iov[r->niov].iov_base = data;
    r->iov[r->niov].iov_len = len;
    r->niov++;
}

/* Error reply with the NBD error @err and a short message. */
static void reply_error(Conn *c, NBDReq *r, uint32_t err, const char *msg)
{
    r->niov = 0;
    r->hdr_used = 0;
    r->err = err;
    if (c->structured) {
        reply_hdr(r, nbd_chunk_error_encode(r->hdr, c->extended, &r->req,
                                            NBD_REPLY_FLAG_DONE, err, msg));
    } else {
        reply_hdr(r, nbd_simple_reply_encode(r->hdr, r->req.cookie, err));
    }
}

/* Success without data. */
static void reply_ok(Conn *c, NBDReq *r)
{
    r->niov = 0;
    r->hdr_used = 0;
    if (c->extended) {
        reply_hdr(r, nbd_chunk_none_encode(r->hdr, true, &r->req));
    } else {
        reply_hdr(r, nbd_simple_reply_encode(r->hdr, r->req.cookie, 0));
    }
}

/*
 * An operation failed with -errno @ret: log the real error, reply.  A READ
 * served in several pieces that knows which piece failed passes its start
 * as @at (bytes before it were read); the reply is then an ERROR_OFFSET
 * chunk.  Otherwise @at is UINT64_MAX.
 */
static void reply_io_error_at(Conn *c, NBDReq *r, int ret, uint64_t at)
{
    char msg[128];
    uint32_t err = nbd_errno_to_nbd(-ret);

    log_warn("%s: %s at offset %" PRIu64 " length %" PRIu64 " failed: %s",
             CONN_LOG(c), nbd_cmd_name(r->req.type), r->req.offset,
             r->req.length, g_strerror(-ret));
    snprintf(msg, sizeof(msg), "%s failed: %s", nbd_cmd_name(r->req.type),
             g_strerror(-ret));
    if (at == UINT64_MAX || !c->structured) {
        reply_error(c, r, err, msg);
        return;
    }
    r->niov = 0;
    r->hdr_used = 0;
    r->err = err;
    reply_hdr(r, nbd_chunk_error_offset_encode(r->hdr, c->extended, &r->req,
                                               NBD_REPLY_FLAG_DONE, err, msg,
                                               at));
}

static void reply_io_error(Conn *c, NBDReq *r, int ret)
{
    reply_io_error_at(c, r, ret, UINT64_MAX);
}

static void reply_status(Conn *c, NBDReq *r, long ret)
{
    if (ret < 0) {
        reply_io_error(c, r, ret);
    } else {
        reply_ok(c, r);
    }
}

/* ---- commands ----------------------------------------------------------------- */

/* Data from the image file itself, sent by the transport's sendfile. */
static void reply_file(NBDReq *r, Export *e, uint64_t offset, size_t len)
{
    r->file_mask |= 1u << r->niov;
    r->file_fd = e->fd;
    r->file_pos[r->niov] = e->offset + offset;
    r->iov[r->niov].iov_base = NULL;
    r->iov[r->niov].iov_len = len;
    r->niov++;
}

/*
 * READ.  With structured replies, large reads look for holes first: hole
 * extents become OFFSET_HOLE chunks and are not read.  Large buffered
 * reads whose pages are all cached are not read either: the reply points
 * at the file and the socket takes the pages straight from the page cache.
 */
static void coroutine_fn do_read(Conn *c, NBDReq *r)
{
    Export *e = c->exp;
    uint64_t off = r->req.offset, len = r->req.length, pos, covered = 0;
    Extent ext[READ_MAX_SEGMENTS];
    bool zero_copy, holes = false;
    struct iovec iov;
    int n = 0, i;

    if (len == 0) {
        /* No data chunk can be empty, and READ never gets a simple reply
         * once structured replies are on: a lone NONE chunk. */
        if (c->structured) {
            reply_hdr(r, nbd_chunk_none_encode(r->hdr, c->extended,
                                               &r->req));
        } else {
            reply_ok(c, r);
        }
        return;
    }
    if (c->structured && !(r->req.flags & NBD_CMD_FLAG_DF) &&
        len >= HOLE_MIN_READ) {
        n = export_block_status(e, off, len, ext, READ_MAX_SEGMENTS);
        for (i = 0; i < n; i++) {
            holes |= (ext[i].flags & NBD_STATE_HOLE) != 0;
            covered += ext[i].length;
        }
    }
    if (!holes) {
        ext[0].length = len;
        ext[0].flags = 0;
        n = 1;
    } else if (covered < len) {
        /* The extent list stopped short: the rest is read as data. */
        if (n < READ_MAX_SEGMENTS) {
            ext[n].length = len - covered;
            ext[n].flags = 0;
            n++;
        } else {
            ext[n - 1].length += len - covered;
            ext[n - 1].flags = 0;
        }
    }

    zero_copy = c->tr->sendfile && len >= ZERO_COPY_MIN &&
                export_cached(e, off, len);
    if (!zero_copy) {
        if (slot_buf(r, len) < 0) {
            reply_io_error(c, r, -ENOMEM);
            return;
        }
        for (i = 0, pos = off; i < n; pos += ext[i].length, i++) {
            ssize_t ret;

            if (ext[i].flags & NBD_STATE_HOLE) {
                continue;
            }
            iov.iov_base = r->buf + (pos - off);
            iov.iov_len = ext[i].length;
            ret = export_co_preadv(e, &iov, 1, pos);
            if (ret < 0) {
                /* Several pieces: say which one failed. */
                reply_io_error_at(c, r, ret, n > 1 ? pos : UINT64_MAX);
                return;
            }
        }
    }

    if (!c->structured) {
        reply_hdr(r, nbd_simple_reply_encode(r->hdr, r->req.cookie, 0));
    }
    for (i = 0, pos = off; i < n; pos += ext[i].length, i++) {
        uint16_t flags = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;

        if (ext[i].flags & NBD_STATE_HOLE) {
            reply_hdr(r, nbd_chunk_hole_encode(r->hdr + r->hdr_used,
                                               c->extended, &r->req, flags,
                                               pos, ext[i].length));
            continue;
        }
        if (c->structured) {
            reply_hdr(r, nbd_chunk_data_encode(r->hdr + r->hdr_used,
                                               c->extended, &r->req, flags,
                                               pos, ext[i].length));
        }
        if (zero_copy) {
            reply_file(r, e, pos, ext[i].length);
        } else {
            reply_data(r, r->buf + (pos - off), ext[i].length);
        }
    }
}

static void coroutine_fn do_block_status(Conn *c, NBDReq *r, uint64_t len)
{
    Export *e = c->exp;
    int max = (r->req.flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : BS_MAX_EXTENTS;
    size_t desc_size = c->extended ? 16 : 8;
    uint32_t id = nbd_meta_context_id(NBD_META_BASE_ALLOCATION);
    Extent *ext;
    uint8_t *desc;
    int n, i;

    if (slot_buf(r, max * (sizeof(Extent) + desc_size)) < 0) {
        reply_io_error(c, r, -ENOMEM);
        return;
    }
    ext = (Extent *)r->buf;
    desc = r->buf + max * sizeof(Extent);
    n = export_block_status(e, r->req.offset, len, ext, max);
    if (n < 0) {
        reply_io_error(c, r, n);
        return;
    }
    for (i = 0; i < n; i++) {
        uint64_t l = ext[i].length;

        if (!c->extended && l > UINT32_MAX) {
            /* A 32-bit descriptor: stop at the largest aligned length. */
            l = UINT32_MAX / e->min_block * e->min_block;
            n = i + 1;
        }
        if (c->extended) {
            nbd_extent_ext_encode(desc + i * desc_size, l, ext[i].flags);
        } else {
            nbd_extent_encode(desc + i * desc_size, l, ext[i].flags);
        }
    }
    if (c->extended) {
        reply_hdr(r, nbd_chunk_block_status_ext_encode(r->hdr, &r->req,
                                                       NBD_REPLY_FLAG_DONE,
                                                       id, n));
    } else {
        reply_hdr(r, nbd_chunk_block_status_encode(r->hdr, false, &r->req,
                                                   NBD_REPLY_FLAG_DONE,
                                                   id, n));
    }
    reply_data(r, desc, n * desc_size);
}

/* BLOCK_STATUS with a payload (extended headers): check it, then serve. */
static void coroutine_fn do_block_status_payload(Conn *c, NBDReq *r,
                                                 uint64_t payload)
{
    NBDBlockStatusPayload p;
    uint32_t want = 0, err;

    if (nbd_bs_payload_decode(r->buf, payload, &p) < 0) {
        reply_error(c, r, NBD_EINVAL, "malformed block status payload");
        return;
    }
    err = nbd_bs_payload_check(&r->req, &c->sess, &p, &want);
    if (err) {
        reply_error(c, r, err, "invalid block status payload");
        return;
    }
    if (!(want & (1u << NBD_META_BASE_ALLOCATION))) {
        reply_ok(c, r);
        return;
    }
    do_block_status(c, r, p.effect_length);
}

static void coroutine_fn request_co(void *opaque)
{
    NBDReq *r = opaque;
    Conn *c = r->conn;
    Export *e = c->exp;
    uint64_t off = r->req.offset, len = r->req.length;
    bool fua = r->req.flags & NBD_CMD_FLAG_FUA;
    struct iovec iov;
    long ret;

    switch (r->req.type) {
    case NBD_CMD_READ:
        do_read(c, r);
        break;
    case NBD_CMD_WRITE:
        iov.iov_base = r->buf;
        iov.iov_len = len;
        ret = export_co_pwritev(e, &iov, 1, off, fua);
        reply_status(c, r, ret);
        break;
    case NBD_CMD_FLUSH:
        reply_status(c, r, export_co_flush(e));
        break;
    case NBD_CMD_TRIM:
        reply_status(c, r, export_co_trim(e, off, len, fua));
        break;
    case NBD_CMD_WRITE_ZEROES:
        ret = export_co_zero(e, off, len,
                             !(r->req.flags & NBD_CMD_FLAG_NO_HOLE),
                             r->req.flags & NBD_CMD_FLAG_FAST_ZERO, fua);
        if (ret == -ENOTSUP && (r->req.flags & NBD_CMD_FLAG_FAST_ZERO)) {
            /* Expected: the client falls back to writing; no log. */
            reply_error(c, r, NBD_ENOTSUP, "no fast way to zero");
        } else {
            reply_status(c, r, ret);
        }
        break;
    case NBD_CMD_CACHE:
        reply_status(c, r, export_co_cache(e, off, len));
        break;
    case NBD_CMD_BLOCK_STATUS:
        if (r->req.flags & NBD_CMD_FLAG_PAYLOAD_LEN) {
            do_block_status_payload(c, r, len);
        } else {
            do_block_status(c, r, len);
        }
        break;
    default:
        /* nbd_request_check() let through only the commands above. */
        reply_error(c, r, NBD_EINVAL, "unknown command");
        break;
    }
    conn_queue_reply(c, r);
}

/* A short message for a request nbd_request_check() refused. */
static const char *check_message(uint32_t err, const NBDRequest *req)
{
    switch (err) {
    case NBD_EPERM:
        return "the export is read-only";
    case NBD_ENOSPC:
        return "request goes past the end of the export";
    case NBD_EOVERFLOW:
        return "request too large";
    default:
        break;
    }
    switch (req->type) {
    case NBD_CMD_READ: case NBD_CMD_WRITE: case NBD_CMD_FLUSH:
    case NBD_CMD_TRIM: case NBD_CMD_CACHE: case NBD_CMD_WRITE_ZEROES:
    case NBD_CMD_BLOCK_STATUS:
        return "invalid request: bad flags, range, alignment or size";
    default:
        return "unknown command";
    }
}

static void linger_timeout(void *opaque)
{
    Conn *c = opaque;

    aio_cofd_cancel(&c->cofd);
}

/*
 * Close gently: closing a TCP socket with unread bytes in it sends a RST,
 * and the peer's kernel then drops replies it has not handed to the client
 * yet.  So: no more data from us (FIN), then read and discard until the
 * client closes too, for at most LINGER_NS.
 */
static void coroutine_fn conn_linger(Conn *c)
{
    AioTimer timer;
    char scratch[4096];

    if (shutdown(c->fd, SHUT_WR) < 0) {
        return;
    }
    aio_cofd_resume_read(&c->cofd);
    aio_timer_init(c->ctx, &timer, linger_timeout, c);
    aio_timer_mod(&timer, clock_ns() + LINGER_NS);
    for (;;) {
        ssize_t r = recv(c->fd, scratch, sizeof(scratch), 0);

        if (r > 0 || (r < 0 && errno == EINTR)) {
            continue;
        }
        if (r < 0 && errno == EAGAIN &&
            aio_cofd_wait_readable(&c->cofd) == 0) {
            continue;
        }
        break;
    }
    aio_timer_del(&timer);
}

/* ---- transmission ------------------------------------------------------------ */

static void coroutine_fn conn_transmission(Conn *c)
{
    size_t hsize = nbd_request_size(c->extended);
    uint8_t hbuf[NBD_EXT_REQUEST_SIZE];
    unsigned i;

    c->nslots = server.cfg->max_inflight;
    c->slots = g_new0(NBDReq, c->nslots);
    for (i = 0; i < c->nslots; i++) {
        c->slots[i].conn = c;
        c->slots[i].next = i + 1 < c->nslots ? &c->slots[i + 1] : NULL;
    }
    c->free_slots = &c->slots[0];
    c->sendq_tailp = &c->sendq;
    c->send_bh = aio_bh_new(c->ctx, send_bh_cb, c, "nbd-send", 0);
    aio_timer_init(c->ctx, &c->payload_timer, payload_grace_timeout, c);
    c->stats = metrics_export_stats(c->exp);
    STAT_ADD(c->stats->connections, 1);
    STAT_ADD(c->stats->connections_open, 1);

    while (!c->stopping) {
        NBDRequest req;
        NBDCheck chk;
        uint64_t need;
        uint32_t err;
        NBDReq *r;
        Coroutine *co;
        int ret;

        while (!c->free_slots && !c->stopping) {
            conn_wait(c);
        }
        if (c->stopping) {
            break;
        }
        ret = conn_read(c, hbuf, hsize);
        if (ret < 0) {
            if (ret != -EPIPE && ret != -ECANCELED && ret != -ECONNRESET) {
                log_warn("%s: reading a request failed: %s", CONN_LOG(c),
                         g_strerror(-ret));
            }
            break;
        }
        if (nbd_request_decode(hbuf, c->extended, &req) < 0) {
            log_warn("%s: bad request magic: dropping the connection",
                     CONN_LOG(c));
            break;
        }
        err = nbd_request_check(&req, &c->sess, &chk);
        if (unlikely(log_verbosity > 0)) {
            char flags[NBD_CMD_FLAGS_STRLEN];

            nbd_cmd_flags_format(req.flags, flags, sizeof(flags));
            log_debug_msg("%s: %s flags=%s offset=%" PRIu64 " length=%"
                          PRIu64 "%s%s", CONN_LOG(c), nbd_cmd_name(req.type),
                          flags, req.offset, req.length, err ? " -> " : "",
                          err ? nbd_err_name(err) : "");
        }
        STAT_ADD(c->stats->requests[MIN(req.type, METRICS_NCMDS - 1)], 1);
        if (chk.disconnect) {
            c->nrequests++;
            break;
        }
        r = slot_take(c);
        r->req = req;
        r->start_ns = c->recv_ns;       /* when its bytes arrived */
        STAT_ADD(c->stats->in_flight, 1);
        /*
         * From here the request is taken in, once its payload is: a stop
         * lets the payload finish arriving (see conn_stop_graceful()).
         */
        c->in_payload = chk.payload > 0;
        if (err) {
            ret = chk.payload ? conn_discard(c, chk.payload) : 0;
            c->in_payload = false;
            if (ret < 0) {
                slot_put(c, r, 0);
                break;
            }
            c->nrequests++;
            reply_error(c, r, err, check_message(err, &req));
            conn_queue_reply(c, r);
            continue;
        }

        /* Memory: wait while other requests hold the budget. */
        need = req.type == NBD_CMD_READ ? req.length : chk.payload;
        while (c->mem_inflight + need > CONN_MEM_BUDGET && c->inflight > 1 &&
               !c->stopping) {
            conn_wait(c);
        }
        slot_charge(c, r, need);
        if (chk.payload) {
            if (slot_buf(r, chk.payload) < 0) {
                ret = conn_discard(c, chk.payload);
                c->in_payload = false;
                if (ret < 0) {
                    slot_put(c, r, 0);
                    break;
                }
                c->nrequests++;
                reply_io_error(c, r, -ENOMEM);
                conn_queue_reply(c, r);
                continue;
            }
            ret = conn_read(c, r->buf, chk.payload);
            c->in_payload = false;
            if (ret < 0) {
                slot_put(c, r, 0);
                break;
            }
            if (chk.payload >= CONN_IN_SIZE / 2) {
                c->in_limit = hsize;    /* the next WRITE may be big too */
            }
        }
        c->nrequests++;
        co = co_create(request_co, r);
        co_set_home(co, c->ctx);
        co_enter(co);
        /*
         * A long batch of requests served inline would hold every reply
         * until its end while the client, waiting for them, idles: let
         * them go every SEND_EARLY_REPLIES.
         */
        if (c->sendq_len >= SEND_EARLY_REPLIES) {
            send_bh_cb(c);
        }
    }

    /* No more requests: let those in flight finish and their replies go. */
    c->stopping = true;
    aio_timer_del(&c->payload_timer);
    aio_cofd_cancel_read(&c->cofd);
    while (c->inflight > 0 || c->sender) {
        conn_wait(c);
    }
    if (c->stop_graceful && !c->exp->read_only) {
        int r = export_co_flush(c->exp);

        if (r < 0) {
            log_error("%s: flush at shutdown failed: %s", CONN_LOG(c),
                      g_strerror(-r));
        }
    }
    aio_bh_delete(c->send_bh);
    c->send_bh = NULL;
    STAT_ADD(c->stats->connections_open, -1);
    if (!c->dead) {
        tls_bye(c);
        conn_linger(c);
    }
}

/* ---- lifecycle --------------------------------------------------------------- */

static void handshake_timeout(void *opaque)
{
    Conn *c = opaque;

    log_info("%s: negotiation not finished after %u s: dropping the client",
             CONN_LOG(c), server.cfg->handshake_limit);
    conn_abort(c);
}

static void conn_leave_negotiation(Conn *c)
{
    ConnExtra *x = conn_extra(c);

    if (!c->negotiating) {
        return;
    }
    c->negotiating = false;
    aio_timer_del(&c->handshake_timer);
    g_mutex_lock(&conn_lock);
    if (x->in_neg_queue) {
        g_queue_unlink(&negotiating, &c->neg_link);
        x->in_neg_queue = false;
    }
    g_mutex_unlock(&conn_lock);
    atomic_fetch_sub(&server.conns_negotiating, 1);
}

static void conn_free(Conn *c)
{
    unsigned i;

    g_mutex_lock(&conn_lock);
    g_queue_unlink(&all_conns, &c->all_link);
    g_mutex_unlock(&conn_lock);
    /* Nobody can schedule it any more: delete it (it will not run). */
    aio_bh_delete(c->stop_bh);

    tls_conn_free(c);
    aio_cofd_destroy(&c->cofd);
    close(c->fd);
    for (i = 0; i < c->nslots; i++) {
        free(c->slots[i].buf);
    }
    g_free(c->slots);
    g_free(c->in);
    g_free(c->peer);
    g_free(container_of(c, ConnBox, conn));
}

static void coroutine_fn conn_main_co(void *opaque)
{
    Conn *c = opaque;
    AioContext *ctx = c->ctx;
    int ret;

    aio_timer_init(ctx, &c->handshake_timer, handshake_timeout, c);
    if (server.cfg->handshake_limit) {
        aio_timer_mod(&c->handshake_timer,
                      clock_ns() + server.cfg->handshake_limit * 1000000000LL);
    }
    ret = handshake_co(c);
    conn_leave_negotiation(c);
    if (ret == 0) {
        log_info("%s: serving export '%s'%s", CONN_LOG(c), c->exp->name,
                 c->extended ? " (extended headers)" :
                 c->structured ? " (structured replies)" : "");
        conn_transmission(c);
    }
    if (c->exp) {
        log_info("%s: disconnected from export '%s' after %" PRIu64
                 " requests", CONN_LOG(c), c->exp->name, c->nrequests);
    } else {
        log_info("%s: disconnected while negotiating", CONN_LOG(c));
    }
    conn_free(c);
    server_conn_closed();
    aio_context_unref(ctx);
}

static void conn_start_bh(void *opaque)
{
    Conn *c = opaque;
    AioContext *ctx = c->ctx;

    if (aio_cofd_init(&c->cofd, ctx, c->fd) < 0) {
        log_error("%s: cannot watch the socket: %s", CONN_LOG(c),
                  g_strerror(errno));
        conn_leave_negotiation(c);
        conn_free(c);
        server_conn_closed();
        aio_context_unref(ctx);
        return;
    }
    c->main_co = co_create(conn_main_co, c);
    co_set_home(c->main_co, c->ctx);
    co_enter(c->main_co);
}

void conn_start(AioContext *ctx, int fd, const char *peer)
{
    ConnBox *box = g_new0(ConnBox, 1);
    Conn *c = &box->conn;
    Conn *victim = NULL;

    c->ctx = ctx;
    c->fd = fd;
    c->peer = g_strdup(peer);
    c->tr = &plain_transport;
    c->in = g_malloc(CONN_IN_SIZE);
    c->negotiating = true;
    c->stop_bh = aio_bh_new(ctx, stop_bh_cb, c, "conn-stop", 0);
    c->all_link.data = c;
    c->neg_link.data = c;

    atomic_fetch_add(&server.conns_negotiating, 1);
    g_mutex_lock(&conn_lock);
    g_queue_push_tail_link(&all_conns, &c->all_link);
    g_queue_push_tail_link(&negotiating, &c->neg_link);
    box->x.in_neg_queue = true;
    if (negotiating.length > server.cfg->max_handshakes) {
        /* Too many half-open connections: the oldest makes room. */
        GList *old = negotiating.head;

        victim = old->data;
        g_queue_unlink(&negotiating, old);
        conn_extra(victim)->in_neg_queue = false;
        conn_request_stop(victim, STOP_ABORT);
    }
    g_mutex_unlock(&conn_lock);
    if (victim) {
        log_info("too many clients negotiating (%u): dropped the oldest",
                 server.cfg->max_handshakes);
    }

    aio_context_ref(ctx);
    aio_bh_schedule_oneshot(ctx, conn_start_bh, c, "conn-start");
}
