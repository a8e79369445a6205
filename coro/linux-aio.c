/*
 * linux-aio.c: libaio with batched submission and user-space reaping.
 *
 *   coroutine                 submit BH (same thread)       kernel
 *   laio_co_preadv()
 *     iocb on own stack
 *     append to pending ----> io_submit(all pending) ------> I/O
 *     co_yield()                                             |
 *                             efd handler <--- eventfd <-----+
 *     resumes <-------------- reap ring, co_enter(co)
 */
#include "config.h"

#include <errno.h>
#include <libaio.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#if CONFIG_VALGRIND
#include <valgrind/memcheck.h>
#endif

#include "fault.h"
#include "linux-aio.h"

#define LAIO_MAX_EVENTS 1024    /* default io_setup size and in-flight cap */
#define LAIO_SUBMIT_BATCH 128   /* iocbs per io_submit call */
#define LAIO_RETRY_NS 1000000   /* EAGAIN with nothing in flight: retry */

typedef struct LaioReq {
    struct iocb iocb;
    Coroutine *co;
    const struct iovec *iov;
    int iovcnt;
    bool is_read;
    int rw_flags;
    size_t nbytes;
    ssize_t ret;
    struct LaioReq *next;
} LaioReq;

static unsigned laio_setup_nr = LAIO_MAX_EVENTS;
static unsigned laio_max_inflight = LAIO_MAX_EVENTS;

void laio_set_limits(unsigned setup_nr, unsigned max_inflight)
{
    laio_setup_nr = setup_nr;
    laio_max_inflight = max_inflight;
}

struct LinuxAioState {
    AioContext *ctx;
    io_context_t io_ctx;
    int efd;
    AioHandler *efd_handler;
    AioBH *submit_bh;
    AioTimer retry_timer;
    LaioReq *pending;           /* FIFO of requests not yet submitted */
    LaioReq **pending_tailp;
    unsigned inflight;
    unsigned plugged;
    LaioStats stats;
};

/*
 * The completion ring the kernel maps at the io_context_t address.  Its
 * layout is part of the kernel ABI (fs/aio.c); libaio does not export it.
 */
struct laio_ring {
    unsigned id;
    unsigned nr;
    unsigned head;
    unsigned tail;
    unsigned magic;
    unsigned compat_features;
    unsigned incompat_features;
    unsigned header_length;
    struct io_event events[];
};
#define LAIO_RING_MAGIC 0xa10a10a1

size_t iov_size(const struct iovec *iov, int iovcnt)
{
    size_t n = 0;
    int i;

    for (i = 0; i < iovcnt; i++) {
        n += iov[i].iov_len;
    }
    return n;
}

void iov_memset_from(const struct iovec *iov, int iovcnt, size_t from)
{
    int i;

    for (i = 0; i < iovcnt; i++) {
        if (from >= iov[i].iov_len) {
            from -= iov[i].iov_len;
            continue;
        }
        memset((char *)iov[i].iov_base + from, 0, iov[i].iov_len - from);
        from = 0;
    }
}

/* Did a read that returned @res bytes stop at the end of its file? */
static bool read_reached_eof(const LaioReq *r, long res)
{
    int fd = r->iocb.aio_fildes;
    uint64_t size;
    struct stat st;

    if (fstat(fd, &st) < 0) {
        return false;
    }
    size = st.st_size;
    /* A block device's st_size is 0: ask the device. */
    if (S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &size) < 0) {
        return false;
    }
    return (uint64_t)r->iocb.u.v.offset + res >= size;
}

static void laio_complete(LinuxAioState *s, LaioReq *r, long res)
{
    int fault = fault_check(r->is_read ? FAULT_LAIO_READ : FAULT_LAIO_WRITE,
                            r->iocb.u.v.offset, r->nbytes);

    if (unlikely(fault) && res >= 0) {
        res = fault == FAULT_SHORT ? (long)r->nbytes / 2 : fault;
    }
    if (res >= 0 && (size_t)res != r->nbytes) {
        if (r->rw_flags & RWF_NOWAIT) {
            /* Stopped at a page not in the cache: not the end of file. */
            res = -EAGAIN;
        } else if (!r->is_read) {
            res = -ENOSPC;
        } else if (read_reached_eof(r, res)) {
            /* The end of the file: the rest reads as zeros. */
            iov_memset_from(r->iov, r->iovcnt, res);
            res = r->nbytes;
        }
        /* Otherwise a transfer cut short: the caller finishes it. */
    }
#if CONFIG_VALGRIND
    if (r->is_read && res > 0) {
        /* The kernel filled these behind valgrind's back (see laio_reap). */
        size_t left = res;
        int i;

        for (i = 0; i < r->iovcnt && left; i++) {
            size_t n = left < r->iov[i].iov_len ? left : r->iov[i].iov_len;

            VALGRIND_MAKE_MEM_DEFINED(r->iov[i].iov_base, n);
            left -= n;
        }
    }
#endif
    r->ret = res;
    s->stats.completed++;
    co_enter(r->co);
}

static void laio_submit(LinuxAioState *s);

/* Take completions from the ring; fall back to io_getevents. */
static void laio_reap(LinuxAioState *s)
{
    struct laio_ring *ring = (struct laio_ring *)s->io_ctx;

    if (ring->magic == LAIO_RING_MAGIC && ring->incompat_features == 0) {
        for (;;) {
            unsigned head = atomic_read(&ring->head);
            struct io_event ev;

            /* Acquire: the event's contents are written before tail. */
            if (head == atomic_load_acquire(&ring->tail)) {
                break;
            }
            ev = ring->events[head];
            atomic_store_release(&ring->head, (head + 1) % ring->nr);
            s->inflight--;
            laio_complete(s, ev.data, (long)ev.res);
        }
    } else {
        struct io_event events[64];
        struct timespec zero = { 0, 0 };
        int n, i;

        do {
            n = io_getevents(s->io_ctx, 0, 64, events, &zero);
            for (i = 0; i < n; i++) {
                s->inflight--;
                laio_complete(s, events[i].data, (long)events[i].res);
            }
        } while (n == 64);
    }
    if (s->pending && !s->plugged) {
        laio_submit(s);
    }
}

static void laio_efd_read(void *opaque)
{
    LinuxAioState *s = opaque;
    uint64_t count;

    if (read(s->efd, &count, sizeof(count)) < 0 && errno != EAGAIN) {
        fprintf(stderr, "linux-aio: eventfd read: %s\n", strerror(errno));
    }
    laio_reap(s);
}

/* Submit what is pending, in batches, as far as the in-flight cap allows. */
static void laio_submit(LinuxAioState *s)
{
    while (s->pending && s->inflight < laio_max_inflight) {
        struct iocb *iocbs[LAIO_SUBMIT_BATCH];
        LaioReq *r;
        int n = 0, ret;

        for (r = s->pending; r && n < LAIO_SUBMIT_BATCH &&
             s->inflight + n < laio_max_inflight; r = r->next) {
            iocbs[n++] = &r->iocb;
        }
        ret = fault_check(FAULT_LAIO_SUBMIT, s->pending->iocb.u.v.offset,
                          s->pending->nbytes);
        if (likely(ret >= 0)) {
            ret = io_submit(s->io_ctx, n, iocbs);
        }
        s->stats.submit_calls++;
        if (ret == -EAGAIN || ret == -EINTR) {
            s->stats.eagain++;
            /* A completion retries; with none to come, a timer does. */
            if (!s->inflight) {
                aio_timer_mod(&s->retry_timer, clock_ns() + LAIO_RETRY_NS);
            }
            return;
        }
        if (ret < 0) {
            /* The first iocb was refused: fail it, go on with the rest. */
            r = s->pending;
            s->pending = r->next;
            if (!s->pending) {
                s->pending_tailp = &s->pending;
            }
            laio_complete(s, r, ret);
            continue;
        }
        s->stats.submitted += ret;
        s->inflight += ret;
        while (ret-- > 0) {
            s->pending = s->pending->next;
        }
        if (!s->pending) {
            s->pending_tailp = &s->pending;
        }
    }
}

/*
 * A lone RWF_NOWAIT read: the kernel would copy it inside io_submit anyway,
 * so preadv2 does the same in one system call, and no completion event
 * means no eventfd to read and no extra trip through epoll.
 */
static bool laio_try_sync_read(LinuxAioState *s)
{
    LaioReq *r = s->pending;
    ssize_t ret;

    if (!r || r->next || !r->is_read || !(r->rw_flags & RWF_NOWAIT)) {
        return false;
    }
    s->pending = NULL;
    s->pending_tailp = &s->pending;
    ret = fault_check(FAULT_LAIO_SUBMIT, r->iocb.u.v.offset, r->nbytes);
    if (likely(ret >= 0)) {
        ret = preadv2(r->iocb.aio_fildes, r->iov, r->iovcnt,
                      r->iocb.u.v.offset, RWF_NOWAIT);
        if (ret < 0) {
            ret = -errno;
        }
    }
    s->stats.sync_reads++;
    laio_complete(s, r, ret);
    return true;
}

static void laio_submit_bh(void *opaque)
{
    LinuxAioState *s = opaque;

    if (!s->plugged) {
        if (laio_try_sync_read(s)) {
            return;
        }
        laio_submit(s);
        /*
         * Requests the kernel finished inside io_submit (page-cache hits
         * with RWF_NOWAIT) are in the ring already: take them now rather
         * than after another trip through epoll.
         */
        if (s->inflight) {
            laio_reap(s);
        }
    }
}

static void laio_retry(void *opaque)
{
    laio_submit_bh(opaque);
}

void laio_plug(LinuxAioState *s)
{
    s->plugged++;
}

void laio_unplug(LinuxAioState *s)
{
    if (--s->plugged == 0 && s->pending) {
        aio_bh_schedule(s->submit_bh);
    }
}

static ssize_t coroutine_fn laio_co_rw(LinuxAioState *s, int fd,
                                       const struct iovec *iov, int iovcnt,
                                       off_t offset, bool is_read,
                                       int rw_flags)
{
    LaioReq r = {
        .co = co_self(),
        .iov = iov,
        .iovcnt = iovcnt,
        .is_read = is_read,
        .rw_flags = rw_flags,
        .nbytes = iov_size(iov, iovcnt),
    };

    if (is_read) {
        io_prep_preadv(&r.iocb, fd, iov, iovcnt, offset);
    } else {
        io_prep_pwritev(&r.iocb, fd, iov, iovcnt, offset);
    }
    r.iocb.aio_rw_flags = rw_flags;
    io_set_eventfd(&r.iocb, s->efd);
    r.iocb.data = &r;

    /* On the queue only until submitted, long before we return. */
    *s->pending_tailp = &r;
    /* cppcheck-suppress autoVariables */
    s->pending_tailp = &r.next;
    if (!s->plugged) {
        aio_bh_schedule(s->submit_bh);
    }
    co_yield();
    return r.ret;
}

ssize_t coroutine_fn laio_co_preadv(LinuxAioState *s, int fd,
                                    const struct iovec *iov, int iovcnt,
                                    off_t offset, int rw_flags)
{
    return laio_co_rw(s, fd, iov, iovcnt, offset, true, rw_flags);
}

ssize_t coroutine_fn laio_co_pwritev(LinuxAioState *s, int fd,
                                     const struct iovec *iov, int iovcnt,
                                     off_t offset, int rw_flags)
{
    return laio_co_rw(s, fd, iov, iovcnt, offset, false, rw_flags);
}

LinuxAioState *laio_get(AioContext *ctx)
{
    LinuxAioState **slot = aio_context_laio_slot(ctx);
    LinuxAioState *s = *slot;
    int ret;

    if (s) {
        return s;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        errno = ENOMEM;
        return NULL;
    }
    s->ctx = ctx;
    s->pending_tailp = &s->pending;
    ret = io_setup(laio_setup_nr, &s->io_ctx);
    if (ret < 0) {
        free(s);
        errno = -ret;
        return NULL;
    }
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        goto fail;
    }
    s->efd_handler = aio_fd_add(ctx, s->efd, laio_efd_read, NULL, s, 0);
    if (!s->efd_handler) {
        close(s->efd);
        goto fail;
    }
    s->submit_bh = aio_bh_new(ctx, laio_submit_bh, s, "laio-submit", 0);
    aio_timer_init(ctx, &s->retry_timer, laio_retry, s);
    *slot = s;
    return s;

fail:
    ret = errno;
    io_destroy(s->io_ctx);
    free(s);
    errno = ret;
    return NULL;
}

void laio_cleanup(LinuxAioState *s)
{
    if (!s) {
        return;
    }
    if (s->inflight || s->pending) {
        fprintf(stderr, "linux-aio: cleanup with requests in flight\n");
        abort();
    }
    aio_timer_del(&s->retry_timer);
    aio_bh_delete(s->submit_bh);
    aio_fd_remove(s->efd_handler);
    close(s->efd);
    io_destroy(s->io_ctx);
    *aio_context_laio_slot(s->ctx) = NULL;
    free(s);
}

void laio_stats(const LinuxAioState *s, LaioStats *st)
{
    *st = s->stats;
}
