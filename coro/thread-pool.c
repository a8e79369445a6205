/*
 * thread-pool.c: worker threads for blocking calls.
 *
 *   coroutine (ctx thread)        worker thread
 *   req on own stack
 *   g_thread_pool_push(req) ----> req->ret = req->func(req->opaque)
 *   co_yield()                    push req on ctx's done list
 *                                 aio_bh_schedule(done_bh)
 *   done BH: co_enter(req->co) <-/
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fault.h"
#include "linux-aio.h"
#include "thread-pool.h"

typedef struct ThreadPoolReq {
    ThreadPoolFunc *func;
    void *opaque;
    long ret;
    Coroutine *co;
    ThreadPoolCtx *tp;
    struct ThreadPoolReq *next;
    int published;              /* atomic; see worker() */
} ThreadPoolReq;

struct ThreadPoolCtx {
    AioContext *ctx;
    AioBH *done_bh;
    ThreadPoolReq *done;        /* atomic LIFO */
    unsigned active;            /* atomic: workers that may still touch us */
};

/* One GThreadPool per PoolKind, made on first use (g_once holds it). */
static int pool_max_threads[POOL_NKINDS] = { 64, 2 };
static GOnce pool_once[POOL_NKINDS] = { G_ONCE_INIT, G_ONCE_INIT };

static void worker(gpointer data, gpointer user_data)
{
    ThreadPoolReq *req = data;
    ThreadPoolCtx *tp;

    /*
     * GThreadPool's queue orders the hand-over, but with futexes that
     * ThreadSanitizer cannot see; this acquire (pairing with the release
     * in thread_pool_co_run) makes the ordering explicit.  A plain load
     * on x86.
     */
    if (!atomic_load_acquire(&req->published)) {
        abort();
    }
    tp = req->tp;
    req->ret = req->func(req->opaque);
    /* Release: pairs with the exchange in done_bh. */
    LIFO_PUSH_ATOMIC(&tp->done, req, next);
    /* From here on req may be gone (its coroutine may have resumed). */
    aio_bh_schedule(tp->done_bh);
    /* Last touch of tp: thread_pool_ctx_cleanup() waits for it. */
    atomic_fetch_sub(&tp->active, 1);
}

static gpointer pool_create(gpointer opaque)
{
    PoolKind kind = GPOINTER_TO_INT(opaque);
    GError *err = NULL;
    GThreadPool *p = g_thread_pool_new(worker, NULL, pool_max_threads[kind],
                                       FALSE, &err);

    if (!p) {
        fprintf(stderr, "thread-pool: %s\n", err->message);
        abort();
    }
    return p;
}

void thread_pool_set_max_threads(PoolKind kind, int n)
{
    pool_max_threads[kind] = n;
}

static void done_bh(void *opaque)
{
    ThreadPoolCtx *tp = opaque;
    ThreadPoolReq *req = LIFO_REVERSE(atomic_xchg(&tp->done, NULL),
                                      ThreadPoolReq, next);

    while (req) {
        ThreadPoolReq *next = req->next;

        co_enter(req->co);      /* may end req's lifetime */
        req = next;
    }
}

static ThreadPoolCtx *pool_ctx(AioContext *ctx)
{
    ThreadPoolCtx **slot = aio_context_pool_slot(ctx);

    if (!*slot) {
        ThreadPoolCtx *tp = g_new0(ThreadPoolCtx, 1);

        tp->ctx = ctx;
        tp->done_bh = aio_bh_new(ctx, done_bh, tp, "thread-pool-done", 0);
        *slot = tp;
    }
    return *slot;
}

void thread_pool_ctx_cleanup(ThreadPoolCtx *tp)
{
    if (!tp) {
        return;
    }
    /* A worker may still be scheduling done_bh after its coroutine left. */
    while (atomic_load_seq(&tp->active)) {
        g_usleep(50);
    }
    aio_bh_delete(tp->done_bh);
    *aio_context_pool_slot(tp->ctx) = NULL;
    g_free(tp);
}

long coroutine_fn thread_pool_co_run(PoolKind kind, ThreadPoolFunc *func,
                                     void *opaque)
{
    GThreadPool *pool;
    AioContext *ctx = aio_current();
    ThreadPoolReq req = {
        .func = func,
        .opaque = opaque,
        .co = co_self(),
    };

    if (!ctx || !req.co) {
        fprintf(stderr, "thread-pool: needs a coroutine in an AioContext\n");
        abort();
    }
    req.tp = pool_ctx(ctx);
    pool = g_once(&pool_once[kind], pool_create, GINT_TO_POINTER(kind));
    /* The context must outlive the request. */
    aio_context_ref(ctx);
    atomic_fetch_add(&req.tp->active, 1);
    atomic_store_release(&req.published, 1);
    g_thread_pool_push(pool, &req, NULL);
    co_yield();
    aio_context_unref(ctx);
    return req.ret;
}

/* ---- file operations ------------------------------------------------- */

/* Advance an iovec array by @n bytes, in a scratch copy. */
static int iov_advance(struct iovec *iov, int iovcnt, size_t n)
{
    int i = 0;

    while (i < iovcnt && n >= iov[i].iov_len) {
        n -= iov[i].iov_len;
        i++;
    }
    if (i < iovcnt) {
        iov[i].iov_base = (char *)iov[i].iov_base + n;
        iov[i].iov_len -= n;
    }
    return i;
}

/*
 * Common loop: a short transfer is continued in a scratch copy of the
 * iovec array.  Requests here have at most IOV_MAX entries.
 */
static ssize_t file_rw_full(int fd, const struct iovec *iov, int iovcnt,
                            off_t offset, int flags, bool is_read)
{
    size_t total = iov_size(iov, iovcnt), done = 0;
    struct iovec *copy = NULL;
    const struct iovec *cur = iov;
    int curcnt = iovcnt;
    int fault = fault_check(is_read ? FAULT_PREADV : FAULT_PWRITEV, offset,
                            total);

    if (fault < 0) {
        return fault;
    }
    while (done < total) {
        ssize_t r;
        int skip;

        if (unlikely(fault == FAULT_SHORT) && total > 1) {
            /* As if the kernel stopped half way: the loop must go on. */
            struct iovec half = { iov[0].iov_base,
                                  MIN(iov[0].iov_len, total / 2) };

            fault = 0;
            r = is_read ? preadv2(fd, &half, 1, offset, flags)
                        : pwritev2(fd, &half, 1, offset, flags);
        } else {
            r = is_read ? preadv2(fd, cur, curcnt, offset + done, flags)
                        : pwritev2(fd, cur, curcnt, offset + done, flags);
        }

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            r = -errno;
            g_free(copy);
            return r;
        }
        if (r == 0) {
            if (is_read) {
                iov_memset_from(iov, iovcnt, done);
                break;
            }
            g_free(copy);
            return -ENOSPC;
        }
        done += r;
        if (done == total) {
            break;
        }
        if (!copy) {
            copy = g_memdup2(iov, iovcnt * sizeof(*iov));
            cur = copy;
        }
        skip = iov_advance((struct iovec *)cur, curcnt, r);
        cur += skip;
        curcnt -= skip;
    }
    g_free(copy);
    return total;
}

ssize_t file_preadv_full(int fd, const struct iovec *iov, int iovcnt,
                         off_t offset, int flags)
{
    return file_rw_full(fd, iov, iovcnt, offset, flags, true);
}

ssize_t file_pwritev_full(int fd, const struct iovec *iov, int iovcnt,
                          off_t offset, int flags)
{
    return file_rw_full(fd, iov, iovcnt, offset, flags, false);
}

typedef struct FileOp {
    int fd;
    const struct iovec *iov;
    int iovcnt;
    off_t offset;
    off_t len;
    int mode;
    int rw_flags;
} FileOp;

static long do_preadv(void *opaque)
{
    FileOp *op = opaque;

    return file_preadv_full(op->fd, op->iov, op->iovcnt, op->offset, 0);
}

static long do_pwritev(void *opaque)
{
    FileOp *op = opaque;

    return file_pwritev_full(op->fd, op->iov, op->iovcnt, op->offset,
                             op->rw_flags);
}

static long do_fdatasync(void *opaque)
{
    FileOp *op = opaque;

    int fault = fault_check(FAULT_FDATASYNC, 0, 0);

    if (fault < 0) {
        return fault;
    }
    return fdatasync(op->fd) < 0 ? -errno : 0;
}

static long do_fallocate(void *opaque)
{
    FileOp *op = opaque;

    int fault = fault_check(FAULT_FALLOCATE, op->offset, op->len);

    if (fault < 0) {
        return fault;
    }
    return fallocate(op->fd, op->mode, op->offset, op->len) < 0 ? -errno : 0;
}

ssize_t coroutine_fn pool_co_preadv(int fd, const struct iovec *iov,
                                    int iovcnt, off_t offset)
{
    FileOp op = { .fd = fd, .iov = iov, .iovcnt = iovcnt, .offset = offset };

    return thread_pool_co_run(POOL_WIDE, do_preadv, &op);
}

ssize_t coroutine_fn pool_co_pwritev(PoolKind kind, int fd,
                                     const struct iovec *iov, int iovcnt,
                                     off_t offset, int rw_flags)
{
    FileOp op = { .fd = fd, .iov = iov, .iovcnt = iovcnt, .offset = offset,
                  .rw_flags = rw_flags };

    return thread_pool_co_run(kind, do_pwritev, &op);
}

int coroutine_fn pool_co_fdatasync(int fd)
{
    FileOp op = { .fd = fd };

    return thread_pool_co_run(POOL_WIDE, do_fdatasync, &op);
}

int coroutine_fn pool_co_fallocate(int fd, int mode, off_t offset, off_t len)
{
    FileOp op = { .fd = fd, .mode = mode, .offset = offset, .len = len };

    return thread_pool_co_run(POOL_WIDE, do_fallocate, &op);
}
