/*
 * aio.h: AioContext, one event loop per thread.
 *
 * An AioContext multiplexes, on one thread:
 *   - file-descriptor handlers (epoll; level- or edge-triggered),
 *   - bottom halves (BHs): callbacks that any thread may schedule, run by
 *     the context's thread at its next aio_poll(),
 *   - timers (CLOCK_MONOTONIC, nanoseconds),
 *   - coroutine wake-ups from other threads (aio_co_schedule).
 *
 * Threads: aio_bh_schedule*(), aio_notify(), aio_co_schedule() and
 * aio_co_wake() may be called from any thread.  Everything else must be
 * called from the thread that runs the context (its "home" thread, the one
 * that calls aio_poll), or before the context is handed to that thread.
 *
 * aio_poll() iteration:  wait (epoll) -> fd handlers -> BHs -> timers.
 */
#ifndef CO_AIO_H
#define CO_AIO_H

#include "co-common.h"
#include "coroutine.h"

typedef struct AioContext AioContext;
typedef struct AioHandler AioHandler;
typedef struct AioBH AioBH;
typedef struct AioTimer AioTimer;

typedef void AioFdFunc(void *opaque);
typedef void AioBHFunc(void *opaque);
typedef void AioTimerFunc(void *opaque);

/* Create a context; returns NULL with errno set if epoll/eventfd fail. */
AioContext *aio_context_new(void);

/*
 * Destroy @ctx.  Owners must have deleted their BHs, fd handlers and
 * timers first.  A BH still scheduled (a bug in its owner: its work will
 * never run) is reported on stderr by name.  One-shot and deleted BHs still
 * queued are freed.
 */
void aio_context_free(AioContext *ctx);

/*
 * Make @ctx the current thread's context (what aio_current() returns).
 * aio_poll() does this implicitly.
 */
void aio_context_set_current(AioContext *ctx);
AioContext *aio_current(void);

/*
 * Run one loop iteration.  With @blocking, wait until an fd is ready, a
 * BH is scheduled or a timer expires; without, only handle what is ready
 * now.  Returns true if any callback ran.
 */
bool aio_poll(AioContext *ctx, bool blocking);

/* Wake @ctx if it is waiting in aio_poll().  Any thread. */
void aio_notify(AioContext *ctx);

/*
 * Adaptive polling.  Waking a thread that sleeps in epoll_wait() costs
 * tens of microseconds on some machines (virtual CPUs above all), more
 * than the work of a request.  With a non-zero @max_ns, a blocking
 * aio_poll() first polls for events without sleeping, for a window that
 * adapts: it doubles (up to @max_ns) while events arrive soon after the
 * window closed, and drops to nothing after a wait longer than @max_ns,
 * so that an idle context does not spin.  While polling, the thread
 * yields the CPU to any other runnable thread on it.  0 (the default)
 * turns polling off.  Any thread.
 */
void aio_context_set_poll_max(AioContext *ctx, int64_t max_ns);

/* The current polling window in ns (home thread; for tests). */
int64_t aio_context_poll_ns(const AioContext *ctx);

/*
 * How long a blocking aio_poll() would sleep now, in ms (-1: until an fd
 * or a notification wakes it): 0 with a non-idle BH queued, at most 10
 * with only idle ones, else until the first timer.  O(1): no BH list is
 * walked.  Home thread; for tests and diagnostics.
 */
int aio_context_timeout_ms(AioContext *ctx);

/* ---- fd handlers ---------------------------------------------------- */

enum {
    AIO_FD_EDGE = 1u << 0,      /* edge-triggered (EPOLLET) */
};

/*
 * Watch @fd: @io_read runs when it is readable (or hung up / in error),
 * @io_write when writable; either may be NULL (not watched).  Returns the
 * handler, or NULL with errno set if epoll refuses the fd.
 */
AioHandler *aio_fd_add(AioContext *ctx, int fd, AioFdFunc *io_read,
                       AioFdFunc *io_write, void *opaque, unsigned flags);

/* Change the callbacks (and so the events watched).  Returns -errno. */
int aio_fd_set(AioHandler *h, AioFdFunc *io_read, AioFdFunc *io_write);

/*
 * Stop watching and free @h (the fd itself is not closed).  Safe from
 * within @h's own callbacks: the memory is freed after the iteration.
 */
void aio_fd_remove(AioHandler *h);

/* ---- bottom halves -------------------------------------------------- */

enum {
    AIO_BH_IDLE = 1u << 0,      /* may wait up to 10 ms before running */
};

/*
 * Create a BH in @ctx calling @cb(@opaque).  @name (a static string) is
 * reported if the BH is still scheduled when the context is destroyed.
 */
AioBH *aio_bh_new(AioContext *ctx, AioBHFunc *cb, void *opaque,
                  const char *name, unsigned flags);

/*
 * Schedule @bh to run once at the context's next aio_poll().  Scheduling
 * an already scheduled BH does nothing.  O(1): one atomic flag update and,
 * unless the BH is already queued, one lock-free push.  Any thread.
 */
void aio_bh_schedule(AioBH *bh);

/* Unschedule @bh if it has not run yet.  Home thread only. */
void aio_bh_cancel(AioBH *bh);

/*
 * Free @bh.  If it is queued it is freed when dequeued, and will not run.
 * Home thread only.
 */
void aio_bh_delete(AioBH *bh);

/* Create, schedule and (after it ran) free a BH.  Any thread. */
void aio_bh_schedule_oneshot(AioContext *ctx, AioBHFunc *cb, void *opaque,
                             const char *name);

/*
 * Run the BHs scheduled before this call.  Called by aio_poll(); may be
 * called again from within a BH (it then finishes the outer call's work
 * too).  Returns true if any BH ran.
 */
bool aio_bh_poll(AioContext *ctx);

/* ---- timers --------------------------------------------------------- */

struct AioTimer {
    AioContext *ctx;
    AioTimerFunc *cb;
    void *opaque;
    int64_t deadline;           /* ns, CLOCK_MONOTONIC; valid when armed */
    int heap_index;             /* -1 when not armed */
};

/* Initialise @t in @ctx; it starts disarmed. */
void aio_timer_init(AioContext *ctx, AioTimer *t, AioTimerFunc *cb,
                    void *opaque);

/* Arm (or re-arm) @t to fire at @deadline_ns (see clock_ns()). */
void aio_timer_mod(AioTimer *t, int64_t deadline_ns);

/* Disarm @t; harmless if it is not armed. */
void aio_timer_del(AioTimer *t);

static inline bool aio_timer_pending(const AioTimer *t)
{
    return t->heap_index >= 0;
}

/* ---- coroutines ----------------------------------------------------- */

/*
 * Enter @co in @ctx: at once if @ctx is the current thread's context and
 * we are outside coroutine context, otherwise at @ctx's next aio_poll().
 * Sets @co's home context to @ctx.
 */
void aio_co_enter(AioContext *ctx, Coroutine *co);

/*
 * Resume @co at @ctx's next aio_poll(), from any thread.  @co must not be
 * scheduled twice.  It must have yielded already, unless @ctx is the
 * calling thread's own context and @co is about to yield on it (the
 * poll that enters it cannot run before the yield); another thread's
 * context could enter it before its registers are saved.  To move the
 * running coroutine to another thread, use aio_co_reschedule_self().
 */
void aio_co_schedule(AioContext *ctx, Coroutine *co);

/* Resume @co in its home context (set by aio_co_enter). */
void aio_co_wake(Coroutine *co);

/*
 * Yield, and continue in @ctx (moving this coroutine to @ctx's thread).
 */
void coroutine_fn aio_co_reschedule_self(AioContext *ctx);

/* ---- busy count ------------------------------------------------------ */

/*
 * Work that keeps a context alive when its loop is asked to stop (see
 * loop.h): connections, requests in flight.  aio_context_ref() from any
 * thread (a caller handing work to the context); aio_context_unref() from
 * the home thread only (after it, the context may be gone).
 */
void aio_context_ref(AioContext *ctx);
void aio_context_unref(AioContext *ctx);
bool aio_context_busy(AioContext *ctx);

/* ---- coroutine I/O on a non-blocking fd ------------------------------ */

/*
 * AioCoFd watches one non-blocking fd, edge-triggered, for coroutines that
 * read and write it: the I/O loop calls recv()/send() and, on EAGAIN,
 * aio_cofd_wait_*() to yield until the fd is ready.  One reader and one
 * writer coroutine may wait at a time.  A readable edge that arrives while
 * no reader waits is kept, and the next wait returns at once: so a reader
 * that stops after a short read (knowing the fd was drained) and waits
 * later never misses data that came in between.  Writability is watched only while
 * a writer waits, so a socket that never fills costs no epoll_ctl.
 */
typedef struct AioCoFd {
    AioContext *ctx;
    AioHandler *h;
    int fd;
    bool watch_out;             /* EPOLLOUT currently requested */
    bool hup;                   /* epoll reported a hang-up or an error:
                                   the end of stream may already be read
                                   without a further edge to come */
    bool rd_edge;               /* readable edge seen with no reader */
    bool rd_cancelled;          /* reads cancelled */
    bool wr_cancelled;          /* writes cancelled */
    Coroutine *reader;
    Coroutine *writer;
} AioCoFd;

/* Start watching @fd (already non-blocking).  Returns -errno. */
int aio_cofd_init(AioCoFd *f, AioContext *ctx, int fd);

/*
 * Yield until the fd becomes readable (writable).  Returns 0, or
 * -ECANCELED if aio_cofd_cancel() was called (then returns at once).
 */
int coroutine_fn aio_cofd_wait_readable(AioCoFd *f);
int coroutine_fn aio_cofd_wait_writable(AioCoFd *f);

/*
 * Wake the reader (aio_cofd_cancel_read) or both waiters (aio_cofd_cancel)
 * with -ECANCELED; every later wait of that kind fails the same way.
 */
void aio_cofd_cancel_read(AioCoFd *f);
void aio_cofd_cancel(AioCoFd *f);

/* Undo aio_cofd_cancel_read(): reads may wait again. */
void aio_cofd_resume_read(AioCoFd *f);

/* Stop watching (the fd is not closed).  No coroutine may be waiting. */
void aio_cofd_destroy(AioCoFd *f);

/* ---- per-context services (created lazily) -------------------------- */

typedef struct LinuxAioState LinuxAioState;
typedef struct ThreadPoolCtx ThreadPoolCtx;

/* For linux-aio.c and thread-pool.c: a slot each in the context. */
LinuxAioState **aio_context_laio_slot(AioContext *ctx);
ThreadPoolCtx **aio_context_pool_slot(AioContext *ctx);

#endif /* CO_AIO_H */
