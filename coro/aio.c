/*
 * aio.c: the per-thread event loop.
 *
 * Bottom halves
 * -------------
 * A BH's state is one word of flags.  Scheduling sets PENDING|SCHEDULED
 * with one atomic OR; only the caller that turns PENDING on pushes the BH
 * onto the context's lock-free list, so a BH is queued at most once.
 * aio_bh_poll() takes the whole list in one exchange and treats it as a
 * *slice*.  Slices are chained on the context: a nested aio_bh_poll() (a BH
 * that polls again) first finishes the slices of the calls below it, then
 * its own; BHs scheduled while a slice runs go onto the (new, empty) list
 * and wait for the next aio_bh_poll().  Dequeuing clears PENDING and
 * SCHEDULED in one atomic AND and tells whether to run or free the BH.
 * Nothing ever walks the set of idle BHs: the cost of scheduling and of
 * computing the poll timeout is independent of how many BHs exist.
 *
 *   any thread                     home thread
 *   aio_bh_schedule(bh)            aio_bh_poll(ctx)
 *     fetch_or(flags, PENDING)       xchg(bh_list, NULL) -> slice (FIFO)
 *     if it was not PENDING:         for bh in slices:
 *       push(bh_list, bh)              flags = fetch_and(~PENDING)
 *     aio_notify(ctx)                  run if SCHEDULED and not DELETED
 *
 * Waking a sleeping loop
 * ----------------------
 * Before blocking, aio_poll() sets notify_me (seq_cst) and then reads the
 * BH list (seq_cst).  A notifier publishes its work with a seq_cst atomic
 * operation (the BH push) and then reads notify_me (seq_cst).  In the
 * single total order of these operations, either the loop sees the work,
 * or the notifier sees notify_me and writes the eventfd.  `notified` makes
 * sure one wake-up costs at most one eventfd write.
 */
#include "config.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "aio.h"
#include "coroutine-int.h"
#include "linux-aio.h"
#include "thread-pool.h"

enum {
    BH_PENDING   = 1u << 0,     /* queued on a list */
    BH_SCHEDULED = 1u << 1,     /* will run when dequeued */
    BH_DELETED   = 1u << 2,     /* free when dequeued, do not run */
    BH_ONESHOT   = 1u << 3,     /* free after running */
    BH_IDLE      = 1u << 4,     /* property: may be delayed */
};

#define IDLE_BH_TIMEOUT_MS 10
#define MAX_EVENTS 128

struct AioBH {
    AioContext *ctx;
    const char *name;
    AioBHFunc *cb;
    void *opaque;
    AioBH *next;                /* link while PENDING */
    unsigned flags;             /* atomic */
};

typedef struct BHSlice {
    AioBH *head;                /* BHs still to dequeue, in FIFO order */
    struct BHSlice *next;
} BHSlice;

struct AioHandler {
    AioContext *ctx;
    int fd;
    AioFdFunc *io_read;
    AioFdFunc *io_write;
    void *opaque;
    unsigned flags;
    uint32_t events;            /* as registered with epoll; 0 = not */
    uint32_t revents;           /* what epoll reported last */
    bool deleted;
    AioHandler *next_deleted;
};

struct AioContext {
    int epfd;
    int notify_fd;
    AioHandler *notify_handler;
    bool notify_me;             /* atomic: the loop may block */
    bool notified;              /* atomic: eventfd already written */

    AioBH *bh_list;             /* atomic LIFO of queued BHs */
    int bh_nonidle;             /* atomic: a non-idle BH may be queued */
    BHSlice *slice_head;        /* slices being run (nested polls) */
    BHSlice **slice_tailp;

    AioTimer **timers;          /* binary min-heap on deadline */
    int ntimers;
    int timers_cap;

    AioHandler *deleted_handlers;
    int poll_depth;

    Coroutine *co_sched_list;   /* atomic LIFO of coroutines to enter */
    AioBH *co_sched_bh;

    int64_t poll_max_ns;        /* atomic: 0 = no polling */
    int64_t poll_ns;            /* current polling window */

    int busy;                   /* atomic */
    LinuxAioState *laio;
    ThreadPoolCtx *pool;
};

int64_t clock_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static __thread AioContext *current_ctx;

/* Not inlined, for the same reason as co_thread() in coroutine.c. */
static __attribute__((noinline)) AioContext **current_ctx_ptr(void)
{
    AioContext **p = &current_ctx;
    __asm__ volatile("" : "+r"(p));
    return p;
}

void aio_context_set_current(AioContext *ctx)
{
    *current_ctx_ptr() = ctx;
}

AioContext *aio_current(void)
{
    return *current_ctx_ptr();
}

/* ---- notification ---------------------------------------------------- */

void aio_notify(AioContext *ctx)
{
    /* seq_cst: see "Waking a sleeping loop" above. */
    if (atomic_load_seq(&ctx->notify_me)) {
        if (!atomic_xchg(&ctx->notified, true)) {
            uint64_t one = 1;
            ssize_t r;

            do {
                r = write(ctx->notify_fd, &one, sizeof(one));
            } while (r < 0 && errno == EINTR);
        }
    }
}

static void notify_read(void *opaque)
{
    AioContext *ctx = opaque;
    uint64_t value;
    ssize_t r;

    /*
     * Drain first, then clear: a notifier that finds `notified` still set
     * skips its write, and its work is seen by the BH poll that follows.
     * The other order could drain a write made after the clear and leave
     * `notified` set with the eventfd empty: every later aio_notify would
     * skip its write, and the loop would sleep for ever.
     */
    do {
        r = read(ctx->notify_fd, &value, sizeof(value));
    } while (r < 0 && errno == EINTR);
    atomic_store_seq(&ctx->notified, false);
}

/* ---- fd handlers ------------------------------------------------------ */

static uint32_t handler_events(const AioHandler *h)
{
    uint32_t ev = 0;

    if (h->io_read) {
        ev |= EPOLLIN | EPOLLRDHUP;
    }
    if (h->io_write) {
        ev |= EPOLLOUT;
    }
    if (ev && (h->flags & AIO_FD_EDGE)) {
        ev |= EPOLLET;
    }
    return ev;
}

/* Bring epoll in line with h's callbacks.  Returns -errno. */
static int handler_update(AioHandler *h)
{
    uint32_t ev = handler_events(h);
    struct epoll_event e = { .events = ev, .data.ptr = h };
    int op;

    if (ev == h->events) {
        return 0;
    }
    /* Unwatched fds are left out of epoll: a hang-up would spin. */
    op = !h->events ? EPOLL_CTL_ADD : !ev ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(h->ctx->epfd, op, h->fd, &e) < 0) {
        return -errno;
    }
    h->events = ev;
    return 0;
}

AioHandler *aio_fd_add(AioContext *ctx, int fd, AioFdFunc *io_read,
                       AioFdFunc *io_write, void *opaque, unsigned flags)
{
    AioHandler *h = calloc(1, sizeof(*h));
    int ret;

    if (!h) {
        errno = ENOMEM;
        return NULL;
    }
    h->ctx = ctx;
    h->fd = fd;
    h->io_read = io_read;
    h->io_write = io_write;
    h->opaque = opaque;
    h->flags = flags;
    ret = handler_update(h);
    if (ret < 0) {
        free(h);
        errno = -ret;
        return NULL;
    }
    return h;
}

int aio_fd_set(AioHandler *h, AioFdFunc *io_read, AioFdFunc *io_write)
{
    h->io_read = io_read;
    h->io_write = io_write;
    return handler_update(h);
}

void aio_fd_remove(AioHandler *h)
{
    AioContext *ctx = h->ctx;

    if (h->events) {
        epoll_ctl(ctx->epfd, EPOLL_CTL_DEL, h->fd, NULL);
    }
    h->deleted = true;
    h->io_read = NULL;
    h->io_write = NULL;
    /* An event for h may already sit in a running aio_poll's batch. */
    h->next_deleted = ctx->deleted_handlers;
    ctx->deleted_handlers = h;
}

static void free_deleted_handlers(AioContext *ctx)
{
    AioHandler *h;

    while ((h = ctx->deleted_handlers)) {
        ctx->deleted_handlers = h->next_deleted;
        free(h);
    }
}

/* ---- bottom halves ---------------------------------------------------- */

AioBH *aio_bh_new(AioContext *ctx, AioBHFunc *cb, void *opaque,
                  const char *name, unsigned flags)
{
    AioBH *bh = calloc(1, sizeof(*bh));

    if (!bh) {
        fprintf(stderr, "aio: out of memory creating BH %s\n", name);
        abort();
    }
    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    bh->name = name;
    bh->flags = (flags & AIO_BH_IDLE) ? BH_IDLE : 0;
    return bh;
}

static void bh_enqueue(AioBH *bh, unsigned new_flags)
{
    AioContext *ctx = bh->ctx;
    unsigned old = atomic_fetch_or(&bh->flags, BH_PENDING | new_flags);

    if (!(old & BH_PENDING)) {
        /*
         * seq_cst CAS: publishes the BH to aio_bh_poll's exchange, and
         * orders the push before aio_notify's read of notify_me.
         */
        AioBH *head = atomic_read(&ctx->bh_list);

        do {
            bh->next = head;
        } while (!__atomic_compare_exchange_n(&ctx->bh_list, &head, bh, true,
                                              __ATOMIC_SEQ_CST,
                                              __ATOMIC_RELAXED));
    }
    if (!(old & BH_IDLE)) {
        atomic_store_seq(&ctx->bh_nonidle, 1);
    }
    aio_notify(ctx);
}

void aio_bh_schedule(AioBH *bh)
{
    /*
     * Home thread, already queued and scheduled: nothing to do, and no
     * locked instruction spent learning it.  Only the home thread clears
     * these bits, so they cannot change under us.
     */
    if ((atomic_read(&bh->flags) & (BH_PENDING | BH_SCHEDULED)) ==
        (BH_PENDING | BH_SCHEDULED) && bh->ctx == aio_current()) {
        return;
    }
    bh_enqueue(bh, BH_SCHEDULED);
}

void aio_bh_schedule_oneshot(AioContext *ctx, AioBHFunc *cb, void *opaque,
                             const char *name)
{
    AioBH *bh = aio_bh_new(ctx, cb, opaque, name, 0);

    bh_enqueue(bh, BH_SCHEDULED | BH_ONESHOT);
}

void aio_bh_cancel(AioBH *bh)
{
    atomic_fetch_and(&bh->flags, ~BH_SCHEDULED);
}

void aio_bh_delete(AioBH *bh)
{
    /* Queue it (unless it already is) so that dequeuing frees it. */
    bh_enqueue(bh, BH_DELETED);
}

bool aio_bh_poll(AioContext *ctx)
{
    BHSlice slice, *s;
    bool progress = false;

    /* Clear the hint before taking the list: see bh_enqueue's order. */
    atomic_store_seq(&ctx->bh_nonidle, 0);
    slice.head = LIFO_REVERSE(atomic_xchg(&ctx->bh_list, NULL), AioBH, next);
    slice.next = NULL;
    /* The slice lives on this stack until the queue empties again. */
    *ctx->slice_tailp = &slice;
    /* cppcheck-suppress autoVariables */
    ctx->slice_tailp = &slice.next;

    while ((s = ctx->slice_head)) {
        AioBH *bh = s->head;
        unsigned flags;

        if (!bh) {
            ctx->slice_head = s->next;
            if (!ctx->slice_head) {
                ctx->slice_tailp = &ctx->slice_head;
            }
            continue;
        }
        s->head = bh->next;
        /* After this, another thread may queue the BH again. */
        flags = atomic_fetch_and(&bh->flags, ~(BH_PENDING | BH_SCHEDULED));
        if ((flags & (BH_SCHEDULED | BH_DELETED)) == BH_SCHEDULED) {
            if (!(flags & BH_IDLE)) {
                progress = true;
            }
            bh->cb(bh->opaque);
        }
        if (flags & (BH_DELETED | BH_ONESHOT)) {
            free(bh);
        }
    }
    return progress;
}

/* ---- timers ----------------------------------------------------------- */

static void heap_set(AioContext *ctx, int i, AioTimer *t)
{
    ctx->timers[i] = t;
    t->heap_index = i;
}

static void heap_up(AioContext *ctx, int i)
{
    AioTimer *t = ctx->timers[i];

    while (i > 0) {
        int parent = (i - 1) / 2;

        if (ctx->timers[parent]->deadline <= t->deadline) {
            break;
        }
        heap_set(ctx, i, ctx->timers[parent]);
        i = parent;
    }
    heap_set(ctx, i, t);
}

static void heap_down(AioContext *ctx, int i)
{
    AioTimer *t = ctx->timers[i];
    int n = ctx->ntimers;

    for (;;) {
        int child = 2 * i + 1;

        if (child >= n) {
            break;
        }
        if (child + 1 < n &&
            ctx->timers[child + 1]->deadline < ctx->timers[child]->deadline) {
            child++;
        }
        if (t->deadline <= ctx->timers[child]->deadline) {
            break;
        }
        heap_set(ctx, i, ctx->timers[child]);
        i = child;
    }
    heap_set(ctx, i, t);
}

void aio_timer_init(AioContext *ctx, AioTimer *t, AioTimerFunc *cb,
                    void *opaque)
{
    t->ctx = ctx;
    t->cb = cb;
    t->opaque = opaque;
    t->deadline = 0;
    t->heap_index = -1;
}

void aio_timer_del(AioTimer *t)
{
    AioContext *ctx = t->ctx;
    int i = t->heap_index;
    AioTimer *last;

    if (i < 0) {
        return;
    }
    t->heap_index = -1;
    last = ctx->timers[--ctx->ntimers];
    if (last != t) {
        ctx->timers[i] = last;
        last->heap_index = i;
        heap_down(ctx, i);
        heap_up(ctx, last->heap_index);
    }
}

void aio_timer_mod(AioTimer *t, int64_t deadline_ns)
{
    AioContext *ctx = t->ctx;

    aio_timer_del(t);
    if (ctx->ntimers == ctx->timers_cap) {
        int cap = ctx->timers_cap ? ctx->timers_cap * 2 : 16;
        AioTimer **a = realloc(ctx->timers, cap * sizeof(AioTimer *));

        if (!a) {
            fprintf(stderr, "aio: out of memory arming a timer\n");
            abort();
        }
        ctx->timers = a;
        ctx->timers_cap = cap;
    }
    t->deadline = deadline_ns;
    ctx->timers[ctx->ntimers] = t;
    t->heap_index = ctx->ntimers++;
    heap_up(ctx, t->heap_index);
}

static bool timers_run(AioContext *ctx)
{
    bool progress = false;
    int64_t now;

    if (!ctx->ntimers) {
        return false;
    }
    now = clock_ns();
    while (ctx->ntimers && ctx->timers[0]->deadline <= now) {
        AioTimer *t = ctx->timers[0];

        aio_timer_del(t);
        t->cb(t->opaque);
        progress = true;
    }
    return progress;
}

/* Milliseconds aio_poll may sleep; -1 for ever.  O(1). */
static int compute_timeout(AioContext *ctx)
{
    int timeout = -1;

    if (atomic_load_seq(&ctx->bh_list) || ctx->slice_head) {
        if (atomic_load_seq(&ctx->bh_nonidle) || ctx->slice_head) {
            return 0;
        }
        timeout = IDLE_BH_TIMEOUT_MS;
    }
    if (ctx->ntimers) {
        int64_t delta = ctx->timers[0]->deadline - clock_ns();
        int ms;

        if (delta <= 0) {
            return 0;
        }
        /* Round up: waking early would spin until the deadline. */
        ms = delta / 1000000 + (delta % 1000000 != 0);
        if (ms > 3600 * 1000) {
            ms = 3600 * 1000;
        }
        if (timeout < 0 || ms < timeout) {
            timeout = ms;
        }
    }
    return timeout;
}

int aio_context_timeout_ms(AioContext *ctx)
{
    return compute_timeout(ctx);
}

/* ---- the loop ---------------------------------------------------------- */

#define POLL_START_NS 4000      /* first polling window after a miss */
#define POLL_YIELD_EVERY 8      /* epoll_wait calls (~0.2 us each) per yield */

void aio_context_set_poll_max(AioContext *ctx, int64_t max_ns)
{
    atomic_set(&ctx->poll_max_ns, max_ns > 0 ? max_ns : 0);
}

int64_t aio_context_poll_ns(const AioContext *ctx)
{
    return ctx->poll_ns;
}

/*
 * Poll for events until the current window closes (or the first timer is
 * due).  Returns epoll_wait's result: > 0 once something is ready, 0 if
 * the window closed first.  notify_me is set, so that other threads'
 * aio_notify() shows up here as the eventfd.
 */
static int poll_events(AioContext *ctx, struct epoll_event *events,
                       int64_t start)
{
    int64_t end = start + ctx->poll_ns;

    if (ctx->ntimers && ctx->timers[0]->deadline < end) {
        end = ctx->timers[0]->deadline;
    }
    for (;;) {
        int n = epoll_wait(ctx->epfd, events, MAX_EVENTS, 0);

        if (n != 0 || clock_ns() >= end) {
            return n;
        }
        /* A client on this CPU would otherwise wait for us to give up. */
        sched_yield();
    }
}

/*
 * Adjust the polling window after a wait that took @wait_ns until an event
 * (or a timer) came: keep it when polling caught the event, grow it when a
 * longer window would have, halve it when even the longest would not have
 * (so that one late event does not undo it, while an idle context soon
 * stops polling: it spins once per wake-up at most, and less each time).
 */
static void poll_adjust(AioContext *ctx, int64_t max_ns, int64_t wait_ns)
{
    if (wait_ns <= ctx->poll_ns) {
        return;
    }
    if (wait_ns > max_ns) {
        ctx->poll_ns /= 2;
        if (ctx->poll_ns < POLL_START_NS) {
            ctx->poll_ns = 0;
        }
    } else if (ctx->poll_ns < max_ns) {
        ctx->poll_ns = ctx->poll_ns ? ctx->poll_ns * 2 : POLL_START_NS;
        if (ctx->poll_ns > max_ns) {
            ctx->poll_ns = max_ns;
        }
    }
}

bool aio_poll(AioContext *ctx, bool blocking)
{
    struct epoll_event events[MAX_EVENTS];
    bool progress = false;
    int64_t poll_max = 0;
    int timeout = 0;
    int n, i;

    aio_context_set_current(ctx);
    ctx->poll_depth++;

    if (blocking) {
        atomic_store_seq(&ctx->notify_me, true);
        timeout = compute_timeout(ctx);
        poll_max = timeout != 0 ? atomic_read(&ctx->poll_max_ns) : 0;
    }
    if (poll_max) {
        int64_t start = clock_ns();

        if (ctx->poll_ns > poll_max) {
            ctx->poll_ns = poll_max;    /* the bound was lowered */
        }
        n = ctx->poll_ns ? poll_events(ctx, events, start) : 0;
        if (n == 0) {
            /* The window closed: a timer may be due by now. */
            n = epoll_wait(ctx->epfd, events, MAX_EVENTS,
                           ctx->poll_ns ? compute_timeout(ctx) : timeout);
        }
        poll_adjust(ctx, poll_max, clock_ns() - start);
    } else {
        n = epoll_wait(ctx->epfd, events, MAX_EVENTS, timeout);
    }
    if (blocking) {
        atomic_set(&ctx->notify_me, false);
    }
    if (n < 0 && errno != EINTR) {
        fprintf(stderr, "aio: epoll_wait: %s\n", strerror(errno));
        abort();
    }

    for (i = 0; i < n; i++) {
        AioHandler *h = events[i].data.ptr;
        uint32_t ev = events[i].events;

        if (h->deleted) {
            continue;
        }
        h->revents = ev;
        if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) &&
            h->io_read) {
            h->io_read(h->opaque);
            progress = true;
        }
        if (!h->deleted && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) &&
            h->io_write) {
            h->io_write(h->opaque);
            progress = true;
        }
    }

    progress |= aio_bh_poll(ctx);
    progress |= timers_run(ctx);

    if (--ctx->poll_depth == 0) {
        free_deleted_handlers(ctx);
    }
    return progress;
}

/* ---- coroutines -------------------------------------------------------- */

static void co_schedule_bh(void *opaque)
{
    AioContext *ctx = opaque;
    Coroutine *co = LIFO_REVERSE(atomic_xchg(&ctx->co_sched_list, NULL),
                                 Coroutine, sched_next);

    while (co) {
        Coroutine *next = co->sched_next;

        co->sched_next = NULL;
        atomic_store_release(&co->scheduled, 0);
        co->home = ctx;
        co_enter(co);
        co = next;
    }
}

void aio_co_schedule(AioContext *ctx, Coroutine *co)
{
    if (atomic_xchg(&co->scheduled, 1)) {
        fprintf(stderr, "aio: coroutine scheduled twice\n");
        abort();
    }
    LIFO_PUSH_ATOMIC(&ctx->co_sched_list, co, sched_next);
    aio_bh_schedule(ctx->co_sched_bh);
}

void aio_co_enter(AioContext *ctx, Coroutine *co)
{
    if (ctx != aio_current() || co_in_coroutine()) {
        aio_co_schedule(ctx, co);
        return;
    }
    co->home = ctx;
    co_enter(co);
}

void aio_co_wake(Coroutine *co)
{
    AioContext *ctx = co->home;

    if (!ctx) {
        fprintf(stderr, "aio: aio_co_wake of a coroutine without a home\n");
        abort();
    }
    aio_co_enter(ctx, co);
}

typedef struct RescheduleSelf {
    Coroutine *co;
    AioContext *ctx;
} RescheduleSelf;

static void reschedule_self_bh(void *opaque)
{
    RescheduleSelf *r = opaque;

    aio_co_schedule(r->ctx, r->co);
}

void coroutine_fn aio_co_reschedule_self(AioContext *ctx)
{
    AioContext *old = aio_current();
    RescheduleSelf r = { .co = co_self(), .ctx = ctx };

    if (old == ctx) {
        return;
    }
    /*
     * Scheduling ourselves in @ctx directly would let its thread enter us
     * before we have yielded here.  A BH in the old context runs only
     * after the yield, and does the scheduling then.
     */
    aio_bh_schedule_oneshot(old, reschedule_self_bh, &r, "co-reschedule");
    co_yield();
}

/* ---- busy count -------------------------------------------------------- */

void aio_context_ref(AioContext *ctx)
{
    atomic_fetch_add(&ctx->busy, 1);
}

void aio_context_unref(AioContext *ctx)
{
    if (atomic_fetch_sub(&ctx->busy, 1) == 1) {
        aio_notify(ctx);
    }
}

bool aio_context_busy(AioContext *ctx)
{
    return atomic_load_seq(&ctx->busy) > 0 ||
           atomic_load_seq(&ctx->bh_list) != NULL;
}

/* ---- AioCoFd ------------------------------------------------------------ */

static void cofd_wake(AioCoFd *f, Coroutine **slot)
{
    Coroutine *co = *slot;

    if (co) {
        *slot = NULL;
        aio_co_enter(f->ctx, co);
    }
}

static void cofd_read_ready(void *opaque)
{
    AioCoFd *f = opaque;

    if (f->h->revents & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        f->hup = true;
    }
    if (f->reader) {
        cofd_wake(f, &f->reader);
    } else {
        /* Nobody waits: keep the edge for the next wait. */
        f->rd_edge = true;
    }
}

static void cofd_write_ready(void *opaque)
{
    AioCoFd *f = opaque;

    if (f->writer) {
        cofd_wake(f, &f->writer);
    } else if (f->watch_out) {
        /* Nobody waits to write any more: stop watching writability. */
        f->watch_out = false;
        aio_fd_set(f->h, cofd_read_ready, NULL);
    }
}

int aio_cofd_init(AioCoFd *f, AioContext *ctx, int fd)
{
    memset(f, 0, sizeof(*f));
    f->ctx = ctx;
    f->fd = fd;
    f->h = aio_fd_add(ctx, fd, cofd_read_ready, NULL, f, AIO_FD_EDGE);
    return f->h ? 0 : -errno;
}

int coroutine_fn aio_cofd_wait_readable(AioCoFd *f)
{
    if (f->rd_cancelled) {
        return -ECANCELED;
    }
    if (f->rd_edge) {
        /* It came while nobody waited: the fd may have data. */
        f->rd_edge = false;
        return 0;
    }
    f->reader = co_self();
    co_yield();
    return f->rd_cancelled ? -ECANCELED : 0;
}

int coroutine_fn aio_cofd_wait_writable(AioCoFd *f)
{
    if (f->wr_cancelled) {
        return -ECANCELED;
    }
    if (!f->watch_out) {
        int ret = aio_fd_set(f->h, cofd_read_ready, cofd_write_ready);

        if (ret < 0) {
            return ret;
        }
        f->watch_out = true;
    }
    f->writer = co_self();
    co_yield();
    return f->wr_cancelled ? -ECANCELED : 0;
}

/* Wake through the scheduler: we may be running in that very coroutine. */
static void cofd_cancel_waiter(AioCoFd *f, Coroutine **slot)
{
    Coroutine *co = *slot;

    if (co) {
        *slot = NULL;
        aio_co_schedule(f->ctx, co);
    }
}

void aio_cofd_cancel_read(AioCoFd *f)
{
    f->rd_cancelled = true;
    cofd_cancel_waiter(f, &f->reader);
}

void aio_cofd_resume_read(AioCoFd *f)
{
    f->rd_cancelled = false;
}

void aio_cofd_cancel(AioCoFd *f)
{
    aio_cofd_cancel_read(f);
    f->wr_cancelled = true;
    cofd_cancel_waiter(f, &f->writer);
}

void aio_cofd_destroy(AioCoFd *f)
{
    if (f->h) {
        aio_fd_remove(f->h);
        f->h = NULL;
    }
}

/* ---- construction ------------------------------------------------------- */

AioContext *aio_context_new(void)
{
    AioContext *ctx = calloc(1, sizeof(*ctx));
    int saved;

    if (!ctx) {
        errno = ENOMEM;
        return NULL;
    }
    ctx->slice_tailp = &ctx->slice_head;
    ctx->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (ctx->epfd < 0) {
        goto fail;
    }
    ctx->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ctx->notify_fd < 0) {
        goto fail_ep;
    }
    ctx->notify_handler = aio_fd_add(ctx, ctx->notify_fd, notify_read, NULL,
                                     ctx, 0);
    if (!ctx->notify_handler) {
        goto fail_ev;
    }
    ctx->co_sched_bh = aio_bh_new(ctx, co_schedule_bh, ctx,
                                  "co-schedule", 0);
    return ctx;

fail_ev:
    saved = errno;
    close(ctx->notify_fd);
    errno = saved;
fail_ep:
    saved = errno;
    close(ctx->epfd);
    errno = saved;
fail:
    saved = errno;
    free(ctx);
    errno = saved;
    return NULL;
}

LinuxAioState **aio_context_laio_slot(AioContext *ctx)
{
    return &ctx->laio;
}

ThreadPoolCtx **aio_context_pool_slot(AioContext *ctx)
{
    return &ctx->pool;
}

void aio_context_free(AioContext *ctx)
{
    AioBH *bh;

    laio_cleanup(ctx->laio);
    thread_pool_ctx_cleanup(ctx->pool);
    /* Delete our own BH; it is freed with the queue below. */
    aio_bh_delete(ctx->co_sched_bh);
    bh = atomic_xchg(&ctx->bh_list, NULL);
    while (bh) {
        AioBH *next = bh->next;
        unsigned flags = atomic_read(&bh->flags);

        if ((flags & (BH_SCHEDULED | BH_DELETED)) == BH_SCHEDULED) {
            fprintf(stderr, "aio: BH '%s' still scheduled when its "
                    "context was destroyed\n", bh->name);
        }
        /* Owned BHs stay with their owner, who must delete them. */
        if (flags & (BH_DELETED | BH_ONESHOT)) {
            free(bh);
        } else {
            atomic_fetch_and(&bh->flags, ~(BH_PENDING | BH_SCHEDULED));
        }
        bh = next;
    }
    aio_fd_remove(ctx->notify_handler);
    free_deleted_handlers(ctx);
    if (aio_current() == ctx) {
        aio_context_set_current(NULL);
    }
    free(ctx->timers);
    close(ctx->notify_fd);
    close(ctx->epfd);
    free(ctx);
}
