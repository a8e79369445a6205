/*
 * Unit tests for AioContext: BHs, nested poll slices, timers, fd handlers,
 * cross-thread wake-ups, AioCoFd and loop threads.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "coro/aio.h"
#include "coro/loop.h"

static AioContext *ctx;

static void setup(void)
{
    ctx = aio_context_new();
    g_assert_nonnull(ctx);
    aio_context_set_current(ctx);
}

static void teardown(void)
{
    aio_context_free(ctx);
    ctx = NULL;
}

/* Poll without blocking until nothing more happens. */
static void drain(void)
{
    while (aio_poll(ctx, false)) {
    }
}

/* ---- BHs ----------------------------------------------------------------- */

typedef struct Log {
    char s[128];
    int n;
} Log;

static void log_add(Log *l, char c)
{
    g_assert_cmpint(l->n, <, (int)sizeof(l->s) - 1);
    l->s[l->n++] = c;
}

typedef struct Named {
    Log *log;
    char c;
    AioBH *bh;
    AioBH *to_schedule;
    bool nested_poll;
} Named;

static void named_cb(void *opaque)
{
    Named *n = opaque;

    log_add(n->log, n->c);
    if (n->to_schedule) {
        aio_bh_schedule(n->to_schedule);
    }
    if (n->nested_poll) {
        aio_bh_poll(ctx);
    }
}

static void make(Named *n, Log *log, char c)
{
    n->log = log;
    n->c = c;
    n->bh = aio_bh_new(ctx, named_cb, n, "named", 0);
}

static void test_bh_order(void)
{
    Log log = { .n = 0 };
    Named a = { 0 }, b = { 0 }, c = { 0 };

    setup();
    make(&a, &log, 'a');
    make(&b, &log, 'b');
    make(&c, &log, 'c');
    aio_bh_schedule(c.bh);
    aio_bh_schedule(a.bh);
    aio_bh_schedule(b.bh);
    aio_bh_schedule(c.bh);      /* already scheduled: no effect */
    g_assert_true(aio_poll(ctx, false));
    /* FIFO in the order first scheduled, each once. */
    g_assert_cmpstr(log.s, ==, "cab");
    g_assert_false(aio_poll(ctx, false));
    aio_bh_delete(a.bh);
    aio_bh_delete(b.bh);
    aio_bh_delete(c.bh);
    drain();
    teardown();
}

static void test_bh_cancel_delete(void)
{
    Log log = { .n = 0 };
    Named a = { 0 }, b = { 0 };

    setup();
    make(&a, &log, 'a');
    make(&b, &log, 'b');
    aio_bh_schedule(a.bh);
    aio_bh_schedule(b.bh);
    aio_bh_cancel(a.bh);
    aio_bh_delete(b.bh);        /* scheduled, then deleted: never runs */
    aio_poll(ctx, false);
    g_assert_cmpstr(log.s, ==, "");
    aio_bh_schedule(a.bh);      /* a cancelled BH can be scheduled again */
    aio_poll(ctx, false);
    g_assert_cmpstr(log.s, ==, "a");
    aio_bh_delete(a.bh);
    drain();
    teardown();
}

static void oneshot_cb(void *opaque)
{
    (*(int *)opaque)++;
}

static void test_bh_oneshot(void)
{
    int n = 0, i;

    setup();
    for (i = 0; i < 10; i++) {
        aio_bh_schedule_oneshot(ctx, oneshot_cb, &n, "oneshot");
    }
    aio_poll(ctx, false);
    g_assert_cmpint(n, ==, 10);
    g_assert_false(aio_poll(ctx, false));
    teardown();
}

/*
 * Slices: a BH that polls again finishes the outer slice first, then runs
 * what was scheduled before the nested call; what is scheduled while the
 * nested call runs waits for the next poll.
 */
static void test_bh_nested_slices(void)
{
    Log log = { .n = 0 };
    Named a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };

    setup();
    make(&a, &log, 'a');
    make(&b, &log, 'b');
    make(&c, &log, 'c');
    make(&d, &log, 'd');
    a.to_schedule = c.bh;       /* scheduled before a's nested poll */
    a.nested_poll = true;
    c.to_schedule = d.bh;       /* scheduled during the nested poll */
    aio_bh_schedule(a.bh);
    aio_bh_schedule(b.bh);
    aio_poll(ctx, false);
    g_assert_cmpstr(log.s, ==, "abc");
    aio_poll(ctx, false);
    g_assert_cmpstr(log.s, ==, "abcd");
    aio_bh_delete(a.bh);
    aio_bh_delete(b.bh);
    aio_bh_delete(c.bh);
    aio_bh_delete(d.bh);
    drain();
    teardown();
}

static void rescheduling_cb(void *opaque)
{
    Named *n = opaque;

    log_add(n->log, n->c);
    if (n->log->n < 5) {
        aio_bh_schedule(n->bh);  /* runs again at the next poll only */
    }
}

static void test_bh_self_reschedule(void)
{
    Log log = { .n = 0 };
    Named a = { .log = &log, .c = 'x' };
    int polls = 0;

    setup();
    a.bh = aio_bh_new(ctx, rescheduling_cb, &a, "again", 0);
    aio_bh_schedule(a.bh);
    while (aio_poll(ctx, false)) {
        polls++;
    }
    g_assert_cmpstr(log.s, ==, "xxxxx");
    g_assert_cmpint(polls, ==, 5);
    aio_bh_delete(a.bh);
    drain();
    teardown();
}

/* An idle BH does not make a blocking poll spin, but does run soon. */
static void test_bh_idle(void)
{
    int n = 0;
    AioBH *bh;

    setup();
    bh = aio_bh_new(ctx, oneshot_cb, &n, "idle", AIO_BH_IDLE);
    aio_bh_schedule(bh);
    /* Idle BHs are not progress, but a blocking poll still runs them. */
    g_assert_false(aio_poll(ctx, true));
    g_assert_cmpint(n, ==, 1);
    aio_bh_delete(bh);
    drain();
    teardown();
}

static void *schedule_from_thread(void *opaque)
{
    aio_bh_schedule(opaque);
    return NULL;
}

/*
 * The poll timeout follows what is queued, without walking the BHs: none
 * (sleep until woken), idle only (a short nap), any non-idle one, from
 * this thread or another (do not sleep), however many idle BHs exist.
 */
static void test_bh_timeout(void)
{
    enum { NIDLE = 1000 };
    AioBH *idle[NIDLE], *busy;
    pthread_t th;
    int n = 0, i;

    setup();
    g_assert_cmpint(aio_context_timeout_ms(ctx), ==, -1);
    for (i = 0; i < NIDLE; i++) {
        idle[i] = aio_bh_new(ctx, oneshot_cb, &n, "idle", AIO_BH_IDLE);
        aio_bh_schedule(idle[i]);
    }
    g_assert_cmpint(aio_context_timeout_ms(ctx), >, 0);
    g_assert_cmpint(aio_context_timeout_ms(ctx), <=, 10);
    busy = aio_bh_new(ctx, oneshot_cb, &n, "busy", 0);
    aio_bh_schedule(busy);
    g_assert_cmpint(aio_context_timeout_ms(ctx), ==, 0);
    drain();
    g_assert_cmpint(n, ==, NIDLE + 1);
    g_assert_cmpint(aio_context_timeout_ms(ctx), ==, -1);

    aio_bh_schedule(idle[0]);
    g_assert_cmpint(pthread_create(&th, NULL, schedule_from_thread, busy),
                    ==, 0);
    g_assert_cmpint(pthread_join(th, NULL), ==, 0);
    g_assert_cmpint(aio_context_timeout_ms(ctx), ==, 0);
    drain();
    g_assert_cmpint(n, ==, NIDLE + 3);
    g_assert_cmpint(aio_context_timeout_ms(ctx), ==, -1);
    for (i = 0; i < NIDLE; i++) {
        aio_bh_delete(idle[i]);
    }
    aio_bh_delete(busy);
    drain();
    teardown();
}

/* A BH left scheduled is reported by name when the context is freed. */
static void test_bh_leak_report(void)
{
    if (g_test_subprocess()) {
        int n = 0;
        AioBH *bh;

        setup();
        bh = aio_bh_new(ctx, oneshot_cb, &n, "forgotten-bh", 0);
        aio_bh_schedule(bh);
        teardown();
        g_free(bh);             /* the owner's memory; not freed by ctx */
        return;
    }
    g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
    g_test_trap_assert_passed();
    g_test_trap_assert_stderr("*forgotten-bh*");
}

typedef struct CrossBH {
    AioBH *bh;
    int ran;
    pid_t ran_on;
} CrossBH;

static void cross_cb(void *opaque)
{
    CrossBH *x = opaque;

    x->ran++;
    x->ran_on = gettid();
}

typedef struct Later {
    CrossBH *x;
    int64_t delay_ns;
} Later;

static void *schedule_after(void *opaque)
{
    Later *l = opaque;

    g_usleep(l->delay_ns / 1000);
    aio_bh_schedule(l->x->bh);
    return NULL;
}

/* One blocking poll, woken by a BH another thread schedules after @ns. */
static void poll_woken_after(CrossBH *x, int64_t ns)
{
    Later l = { x, ns };
    int before = x->ran;
    pthread_t th;

    pthread_create(&th, NULL, schedule_after, &l);
    while (x->ran == before) {
        aio_poll(ctx, true);
    }
    pthread_join(th, NULL);
    g_assert_cmpint(x->ran, ==, before + 1);
}

/* Scheduling from another thread wakes a loop blocked in aio_poll. */
static void test_bh_cross_thread(void)
{
    CrossBH x = { 0 };
    int i;

    setup();
    x.bh = aio_bh_new(ctx, cross_cb, &x, "cross", 0);
    for (i = 0; i < 20; i++) {
        poll_woken_after(&x, 20000000);
        g_assert_cmpint(x.ran_on, ==, gettid());
    }
    aio_bh_delete(x.bh);
    drain();
    teardown();
}

/* Many threads hammer one BH: it runs, and never more often than asked. */
typedef struct Hammer {
    AioBH *bh;
    int stop;
} Hammer;

static void *hammer_thread(void *opaque)
{
    Hammer *h = opaque;
    int i;

    for (i = 0; i < 100000; i++) {
        aio_bh_schedule(h->bh);
    }
    return NULL;
}

static void test_bh_hammer(void)
{
    CrossBH x = { 0 };
    Hammer h;
    pthread_t th[3];
    int i;

    setup();
    x.bh = aio_bh_new(ctx, cross_cb, &x, "hammer", 0);
    h.bh = x.bh;
    for (i = 0; i < 3; i++) {
        pthread_create(&th[i], NULL, hammer_thread, &h);
    }
    for (i = 0; i < 3; i++) {
        while (aio_poll(ctx, false)) {
        }
        pthread_join(th[i], NULL);
    }
    drain();
    g_assert_cmpint(x.ran, >=, 1);
    g_assert_cmpint(x.ran, <=, 300000);
    aio_bh_delete(x.bh);
    drain();
    teardown();
}

/* ---- timers -------------------------------------------------------------- */

typedef struct TimerLog {
    Log *log;
    char c;
    AioTimer t;
} TimerLog;

static void timer_cb(void *opaque)
{
    TimerLog *tl = opaque;

    log_add(tl->log, tl->c);
}

static void test_timers(void)
{
    Log log = { .n = 0 };
    TimerLog t[5];
    int64_t now, start;
    const char *order = "ecabd";
    int i;

    setup();
    now = clock_ns();
    for (i = 0; i < 5; i++) {
        t[i].log = &log;
        t[i].c = 'a' + i;
        aio_timer_init(ctx, &t[i].t, timer_cb, &t[i]);
    }
    /* Deadlines chosen so that firing order is e c a b d. */
    aio_timer_mod(&t[0].t, now + 30 * 1000000);
    aio_timer_mod(&t[1].t, now + 40 * 1000000);
    aio_timer_mod(&t[2].t, now + 20 * 1000000);
    aio_timer_mod(&t[3].t, now + 5000 * 1000000LL);
    aio_timer_mod(&t[4].t, now + 10 * 1000000);
    aio_timer_mod(&t[3].t, now + 50 * 1000000);     /* re-arm earlier */
    g_assert_true(aio_timer_pending(&t[3].t));
    start = clock_ns();
    while (log.n < 5) {
        aio_poll(ctx, true);
    }
    g_assert_cmpstr(log.s, ==, order);
    /* The blocking poll slept until the deadlines rather than spinning. */
    g_assert_cmpint(clock_ns() - start, >=, 40 * 1000000);
    for (i = 0; i < 5; i++) {
        g_assert_false(aio_timer_pending(&t[i].t));
    }

    /* A deleted timer does not fire. */
    log.n = 0;
    memset(log.s, 0, sizeof(log.s));
    aio_timer_mod(&t[0].t, clock_ns() + 1000000);
    aio_timer_mod(&t[1].t, clock_ns() + 2000000);
    aio_timer_del(&t[0].t);
    aio_timer_del(&t[0].t);     /* twice: harmless */
    while (log.n < 1) {
        aio_poll(ctx, true);
    }
    g_assert_cmpstr(log.s, ==, "b");
    teardown();
}

typedef struct HeapTimer {
    AioTimer t;
    int64_t *last;              /* deadline of the timer that fired last */
    int *fired;                 /* firings so far, all timers */
    struct HeapTimer *all;      /* to delete others from a callback */
    int n;
    int count;                  /* times this one fired */
    bool cancelled;             /* deleted by another's callback */
} HeapTimer;

static void heap_timer_cb(void *opaque)
{
    HeapTimer *h = opaque;

    g_assert_cmpint(h->t.deadline, >=, *h->last);
    *h->last = h->t.deadline;
    (*h->fired)++;
    h->count++;
    /* Every 5th firing deletes a timer that may still be pending. */
    if (*h->fired % 5 == 0) {
        HeapTimer *victim = &h->all[(*h->fired * 7919) % h->n];

        if (aio_timer_pending(&victim->t)) {
            victim->cancelled = true;
            aio_timer_del(&victim->t);
        }
    }
}

/*
 * Many timers armed, re-armed and deleted in a scrambled order (also from
 * callbacks) fire through the loop in deadline order, each pending one
 * exactly once.
 */
static void test_timer_heap(void)
{
    enum { N = 500 };
    HeapTimer *h = g_new0(HeapTimer, N);
    bool *armed = g_new0(bool, N);
    int64_t now = clock_ns(), last = INT64_MIN;
    int i, fired = 0;

    setup();
    for (i = 0; i < N; i++) {
        h[i] = (HeapTimer) { .last = &last, .fired = &fired, .all = h,
                             .n = N };
        aio_timer_init(ctx, &h[i].t, heap_timer_cb, &h[i]);
        /* Pseudo-random deadlines in the past. */
        aio_timer_mod(&h[i].t, now - 1000000000LL + (i * 7919) % 1000003);
    }
    for (i = 0; i < N; i += 3) {
        aio_timer_del(&h[i].t);
    }
    for (i = 1; i < N; i += 7) {
        /* Re-armed (some after a delete): later or earlier than before. */
        aio_timer_mod(&h[i].t, now - 1000000000LL + (i * 7919) % 1000003 +
                               (i % 2 ? 7777 : -7777));
    }
    for (i = 0; i < N; i++) {
        armed[i] = aio_timer_pending(&h[i].t);
    }
    while (aio_poll(ctx, false)) {
    }
    for (i = 0; i < N; i++) {
        g_assert_false(aio_timer_pending(&h[i].t));
        g_assert_cmpint(h[i].count, ==, armed[i] && !h[i].cancelled);
    }
    g_assert_cmpint(fired, >, N / 2);
    g_free(armed);
    g_free(h);
    teardown();
}

/* ---- adaptive polling ------------------------------------------------------ */

/* Grow the window to at least @ns: wake-ups just after it closes. */
static void poll_grow_to(CrossBH *x, int64_t ns)
{
    int i;

    for (i = 0; i < 40 && aio_context_poll_ns(ctx) < ns; i++) {
        poll_woken_after(x, aio_context_poll_ns(ctx) * 3 / 2 + 1000000);
    }
    g_assert_cmpint(aio_context_poll_ns(ctx), >=, ns);
}

/*
 * The window starts closed, grows while events come sooner than the bound,
 * holds while polling catches them, follows a lowered bound, and closes
 * again after waits longer than the bound.
 */
static void test_poll_adaptive(void)
{
    CrossBH x = { 0 };
    int64_t last = 0;
    int i;

    setup();
    x.bh = aio_bh_new(ctx, cross_cb, &x, "poll", 0);
    g_assert_cmpint(aio_context_poll_ns(ctx), ==, 0);
    poll_woken_after(&x, 2000000);
    g_assert_cmpint(aio_context_poll_ns(ctx), ==, 0);   /* polling off */

    aio_context_set_poll_max(ctx, 1000000000LL);
    for (i = 0; i < 4; i++) {
        poll_woken_after(&x, 1000000);
        g_assert_cmpint(aio_context_poll_ns(ctx), >, last);
        last = aio_context_poll_ns(ctx);
    }
    poll_grow_to(&x, 20000000);
    last = aio_context_poll_ns(ctx);
    poll_woken_after(&x, 1000000);          /* caught while polling */
    g_assert_cmpint(aio_context_poll_ns(ctx), ==, last);

    aio_context_set_poll_max(ctx, 100000);
    for (i = 0; i < 12 && aio_context_poll_ns(ctx); i++) {
        poll_woken_after(&x, 5000000);
        g_assert_cmpint(aio_context_poll_ns(ctx), <=, 100000);
    }
    g_assert_cmpint(aio_context_poll_ns(ctx), ==, 0);
    aio_context_set_poll_max(ctx, 0);
    aio_bh_delete(x.bh);
    drain();
    teardown();
}

/* A timer fires on time, not when a long polling window closes. */
static void test_poll_timer(void)
{
    CrossBH x = { 0 };
    Log log = { .n = 0 };
    TimerLog t = { .log = &log, .c = 't' };
    int64_t start, window;

    setup();
    x.bh = aio_bh_new(ctx, cross_cb, &x, "poll", 0);
    aio_context_set_poll_max(ctx, 10000000000LL);
    poll_grow_to(&x, 200000000);
    window = aio_context_poll_ns(ctx);
    aio_timer_init(ctx, &t.t, timer_cb, &t);
    start = clock_ns();
    aio_timer_mod(&t.t, start + 5000000);
    while (log.n < 1) {
        aio_poll(ctx, true);
    }
    g_assert_cmpint(clock_ns() - start, >=, 5000000);
    g_assert_cmpint(clock_ns() - start, <, window / 2);
    aio_bh_delete(x.bh);
    drain();
    teardown();
}

/* ---- fd handlers ----------------------------------------------------------- */

typedef struct PipeState {
    int fds[2];
    AioHandler *h;
    int reads;
    bool remove_in_cb;
} PipeState;

static void pipe_read(void *opaque)
{
    PipeState *p = opaque;
    char buf[16];

    if (read(p->fds[0], buf, sizeof(buf)) > 0) {
        p->reads++;
    }
    if (p->remove_in_cb) {
        aio_fd_remove(p->h);
        p->h = NULL;
    }
}

static void test_fd_handler(void)
{
    PipeState p = { .reads = 0 };

    setup();
    g_assert_cmpint(pipe2(p.fds, O_NONBLOCK | O_CLOEXEC), ==, 0);
    p.h = aio_fd_add(ctx, p.fds[0], pipe_read, NULL, &p, 0);
    g_assert_nonnull(p.h);
    g_assert_false(aio_poll(ctx, false));
    g_assert_cmpint(write(p.fds[1], "x", 1), ==, 1);
    g_assert_true(aio_poll(ctx, true));
    g_assert_cmpint(p.reads, ==, 1);

    /* Stop watching, then watch again. */
    g_assert_cmpint(aio_fd_set(p.h, NULL, NULL), ==, 0);
    g_assert_cmpint(write(p.fds[1], "x", 1), ==, 1);
    g_assert_false(aio_poll(ctx, false));
    g_assert_cmpint(aio_fd_set(p.h, pipe_read, NULL), ==, 0);
    g_assert_true(aio_poll(ctx, false));
    g_assert_cmpint(p.reads, ==, 2);

    /* Removing itself from its callback is safe. */
    p.remove_in_cb = true;
    g_assert_cmpint(write(p.fds[1], "x", 1), ==, 1);
    aio_poll(ctx, true);
    g_assert_null(p.h);
    g_assert_cmpint(write(p.fds[1], "x", 1), ==, 1);
    g_assert_false(aio_poll(ctx, false));
    close(p.fds[0]);
    close(p.fds[1]);
    teardown();
}

/* ---- coroutines and AioCoFd ----------------------------------------------- */

typedef struct Echo {
    AioCoFd f;
    int fd;
    size_t received;
    size_t sent;
    size_t to_send;
    int err;
    bool done;
} Echo;

static void reader_co(void *opaque)
{
    Echo *e = opaque;
    char buf[4096];

    for (;;) {
        ssize_t r = recv(e->fd, buf, sizeof(buf), 0);

        if (r > 0) {
            e->received += r;
            continue;
        }
        if (r == 0) {
            break;
        }
        if (errno == EAGAIN) {
            e->err = aio_cofd_wait_readable(&e->f);
            if (e->err) {
                break;
            }
            continue;
        }
        e->err = -errno;
        break;
    }
    e->done = true;
}

static void writer_co(void *opaque)
{
    Echo *e = opaque;
    static char buf[65536];

    while (e->sent < e->to_send) {
        size_t n = MIN(sizeof(buf), e->to_send - e->sent);
        ssize_t r = send(e->fd, buf, n, MSG_NOSIGNAL);

        if (r >= 0) {
            e->sent += r;
        } else if (errno == EAGAIN) {
            e->err = aio_cofd_wait_writable(&e->f);
            if (e->err) {
                break;
            }
        } else {
            e->err = -errno;
            break;
        }
    }
    e->done = true;
}

/* A writer blocked by a full socket resumes as the peer drains it. */
static void test_cofd(void)
{
    Echo w = { 0 }, r = { 0 };
    int sv[2];

    setup();
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv),
                    ==, 0);
    w.fd = sv[0];
    r.fd = sv[1];
    w.to_send = 8 << 20;        /* far more than the socket buffers */
    g_assert_cmpint(aio_cofd_init(&w.f, ctx, w.fd), ==, 0);
    g_assert_cmpint(aio_cofd_init(&r.f, ctx, r.fd), ==, 0);
    aio_co_enter(ctx, co_create(writer_co, &w));
    aio_co_enter(ctx, co_create(reader_co, &r));
    while (!w.done) {
        aio_poll(ctx, true);
    }
    g_assert_cmpint(w.err, ==, 0);
    g_assert_cmpuint(w.sent, ==, w.to_send);
    shutdown(w.fd, SHUT_WR);
    while (!r.done) {
        aio_poll(ctx, true);
    }
    g_assert_cmpint(r.err, ==, 0);
    g_assert_cmpuint(r.received, ==, w.to_send);
    aio_cofd_destroy(&w.f);
    aio_cofd_destroy(&r.f);
    close(sv[0]);
    close(sv[1]);
    drain();
    teardown();
}

/* Cancelling wakes a waiting reader with -ECANCELED. */
static void test_cofd_cancel(void)
{
    Echo r = { 0 };
    int sv[2];

    setup();
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv),
                    ==, 0);
    r.fd = sv[1];
    g_assert_cmpint(aio_cofd_init(&r.f, ctx, r.fd), ==, 0);
    aio_co_enter(ctx, co_create(reader_co, &r));
    g_assert_false(r.done);
    aio_cofd_cancel(&r.f);
    drain();
    g_assert_true(r.done);
    g_assert_cmpint(r.err, ==, -ECANCELED);
    aio_cofd_destroy(&r.f);
    close(sv[0]);
    close(sv[1]);
    teardown();
}

typedef struct Waker {
    Coroutine *co;
    pid_t resumed_on;
    int stage;
} Waker;

static void waiting_co(void *opaque)
{
    Waker *w = opaque;

    w->stage = 1;
    co_yield();
    w->resumed_on = gettid();
    w->stage = 2;
}

static void *wake_from_thread(void *opaque)
{
    aio_co_wake(((Waker *)opaque)->co);
    return NULL;
}

/* aio_co_wake from another thread resumes the coroutine in its home. */
static void test_co_wake_cross_thread(void)
{
    Waker w = { 0 };
    pthread_t th;

    setup();
    w.co = co_create(waiting_co, &w);
    aio_co_enter(ctx, w.co);
    g_assert_cmpint(w.stage, ==, 1);
    pthread_create(&th, NULL, wake_from_thread, &w);
    pthread_join(th, NULL);
    while (w.stage != 2) {
        aio_poll(ctx, true);
    }
    g_assert_cmpint(w.resumed_on, ==, gettid());
    teardown();
}

/*
 * An edge that arrives while the reader is busy elsewhere is kept: the
 * reader's next wait returns at once instead of sleeping on data that is
 * already there.
 */
typedef struct EdgeReader {
    AioCoFd f;
    int fd;
    int stage;
    int wait_ret;
} EdgeReader;

static void edge_reader_co(void *opaque)
{
    EdgeReader *e = opaque;
    char buf[16];

    g_assert_cmpint(recv(e->fd, buf, sizeof(buf), 0), ==, 1);
    e->stage = 1;
    co_yield();                 /* busy (say, waiting for a free slot) */
    e->stage = 2;
    e->wait_ret = aio_cofd_wait_readable(&e->f);
    g_assert_cmpint(recv(e->fd, buf, sizeof(buf), 0), ==, 1);
    e->stage = 3;
}

static void test_cofd_kept_edge(void)
{
    EdgeReader e = { .stage = 0 };
    Coroutine *co;
    int sv[2];

    setup();
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv),
                    ==, 0);
    e.fd = sv[1];
    g_assert_cmpint(aio_cofd_init(&e.f, ctx, e.fd), ==, 0);
    g_assert_cmpint(send(sv[0], "a", 1, 0), ==, 1);
    drain();                    /* this edge: nobody waits yet */
    co = co_create(edge_reader_co, &e);
    aio_co_enter(ctx, co);
    g_assert_cmpint(e.stage, ==, 1);
    g_assert_cmpint(send(sv[0], "b", 1, 0), ==, 1);
    drain();                    /* the edge for "b" comes while busy */
    co_enter(co);
    g_assert_cmpint(e.stage, ==, 3);
    g_assert_cmpint(e.wait_ret, ==, 0);
    aio_cofd_destroy(&e.f);
    close(sv[0]);
    close(sv[1]);
    drain();
    teardown();
}

/*
 * Many wake-ups from another thread while the loop sleeps: none may be
 * lost (a lost one leaves aio_poll asleep and the test times out).
 */
typedef struct NotifyStress {
    AioBH *bh;
    int ran;                    /* atomic */
    int rounds;
} NotifyStress;

static void stress_cb(void *opaque)
{
    NotifyStress *n = opaque;

    atomic_store_seq(&n->ran, atomic_read(&n->ran) + 1);
}

static void *stress_thread(void *opaque)
{
    NotifyStress *n = opaque;
    int i;

    for (i = 0; i < n->rounds; i++) {
        aio_bh_schedule(n->bh);
        while (atomic_load_seq(&n->ran) <= i) {
            sched_yield();
        }
    }
    return NULL;
}

static void test_notify_stress(void)
{
    enum { THREADS = 3 };
    NotifyStress n[THREADS];
    pthread_t th[THREADS];
    int i, done;

    setup();
    for (i = 0; i < THREADS; i++) {
        n[i] = (NotifyStress) { .rounds = 30000 };
        n[i].bh = aio_bh_new(ctx, stress_cb, &n[i], "stress", 0);
        pthread_create(&th[i], NULL, stress_thread, &n[i]);
    }
    do {
        aio_poll(ctx, true);
        for (i = 0, done = 0; i < THREADS; i++) {
            done += atomic_load_seq(&n[i].ran) == n[i].rounds;
        }
    } while (done < THREADS);
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        aio_bh_delete(n[i].bh);
    }
    drain();
    teardown();
}

/* ---- loop threads ---------------------------------------------------------- */

typedef struct Hop {
    AioLoops *loops;
    pid_t tids[3];
    AioContext *ctxs[3];
    int done;                   /* atomic */
} Hop;

static void hop_co(void *opaque)
{
    Hop *h = opaque;

    h->tids[0] = gettid();
    h->ctxs[0] = aio_current();
    aio_co_reschedule_self(aio_loops_get(h->loops, 1));
    h->tids[1] = gettid();
    h->ctxs[1] = aio_current();
    aio_co_reschedule_self(aio_loops_get(h->loops, 0));
    h->tids[2] = gettid();
    h->ctxs[2] = aio_current();
    atomic_store_seq(&h->done, 1);
    aio_context_unref(aio_current());
}

static void start_hop(void *opaque)
{
    Hop *h = opaque;

    co_enter(co_create(hop_co, h));
}

static void test_loops_reschedule(void)
{
    Hop h = { 0 };
    AioContext *c0;

    h.loops = aio_loops_start(2, false);
    g_assert_nonnull(h.loops);
    g_assert_cmpuint(aio_loops_count(h.loops), ==, 2);
    c0 = aio_loops_get(h.loops, 0);
    aio_context_ref(c0);
    aio_bh_schedule_oneshot(c0, start_hop, &h, "start-hop");
    while (!atomic_load_seq(&h.done)) {
        g_usleep(1000);
    }
    g_assert_true(h.ctxs[0] == c0);
    g_assert_true(h.ctxs[1] == aio_loops_get(h.loops, 1));
    g_assert_true(h.ctxs[2] == c0);
    g_assert_cmpint(h.tids[0], !=, h.tids[1]);
    g_assert_cmpint(h.tids[0], ==, h.tids[2]);
    g_assert_cmpint(h.tids[0], !=, gettid());
    aio_loops_stop(h.loops);
}

typedef struct DrainWork {
    AioContext *ctx;
    AioTimer t;
    int done;
} DrainWork;

static void drain_timer(void *opaque)
{
    DrainWork *d = opaque;

    d->done = 1;
    aio_context_unref(d->ctx);
}

static void drain_start(void *opaque)
{
    DrainWork *d = opaque;

    aio_timer_init(d->ctx, &d->t, drain_timer, d);
    aio_timer_mod(&d->t, clock_ns() + 50 * 1000000);
}

/* Stopping waits for referenced work (a pending timer) to finish. */
static void test_loops_stop_drains(void)
{
    AioLoops *loops = aio_loops_start(0, true);
    DrainWork d[8];
    unsigned i, n;

    g_assert_nonnull(loops);
    n = aio_loops_count(loops);
    g_assert_cmpuint(n, ==, aio_online_cpus());
    for (i = 0; i < 8; i++) {
        d[i].ctx = aio_loops_next(loops);
        d[i].done = 0;
        g_assert_true(d[i].ctx == aio_loops_get(loops, i % n));
        aio_context_ref(d[i].ctx);
        aio_bh_schedule_oneshot(d[i].ctx, drain_start, &d[i], "drain");
    }
    aio_loops_stop(loops);
    for (i = 0; i < 8; i++) {
        g_assert_cmpint(d[i].done, ==, 1);
    }
}

static void stop_race_cb(void *opaque)
{
    atomic_store_seq((int *)opaque, 1);
}

/*
 * A stop that lands just as a loop finishes an iteration, between its
 * check of the stop flag and its next sleep, must still end it.  (It
 * used to hang in pthread_join within a few hundred rounds.)
 */
static void test_loops_stop_race(void)
{
    int round;

    for (round = 0; round < 1000; round++) {
        AioLoops *loops = aio_loops_start(1, false);
        int ran = 0;

        g_assert_nonnull(loops);
        aio_bh_schedule_oneshot(aio_loops_get(loops, 0), stop_race_cb, &ran,
                                "stop-race");
        while (!atomic_load_seq(&ran)) {
            /* Spin: stop right as the loop goes back to sleep. */
        }
        aio_loops_stop(loops);
    }
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/aio/bh/order", test_bh_order);
    g_test_add_func("/aio/bh/cancel-delete", test_bh_cancel_delete);
    g_test_add_func("/aio/bh/oneshot", test_bh_oneshot);
    g_test_add_func("/aio/bh/nested-slices", test_bh_nested_slices);
    g_test_add_func("/aio/bh/self-reschedule", test_bh_self_reschedule);
    g_test_add_func("/aio/bh/idle", test_bh_idle);
    g_test_add_func("/aio/bh/timeout", test_bh_timeout);
    g_test_add_func("/aio/bh/leak-report", test_bh_leak_report);
    g_test_add_func("/aio/bh/cross-thread", test_bh_cross_thread);
    g_test_add_func("/aio/bh/hammer", test_bh_hammer);
    g_test_add_func("/aio/timer/order", test_timers);
    g_test_add_func("/aio/timer/heap", test_timer_heap);
    g_test_add_func("/aio/poll/adaptive", test_poll_adaptive);
    g_test_add_func("/aio/poll/timer", test_poll_timer);
    g_test_add_func("/aio/fd/handler", test_fd_handler);
    g_test_add_func("/aio/cofd/backpressure", test_cofd);
    g_test_add_func("/aio/cofd/cancel", test_cofd_cancel);
    g_test_add_func("/aio/cofd/kept-edge", test_cofd_kept_edge);
    g_test_add_func("/aio/notify/stress", test_notify_stress);
    g_test_add_func("/aio/co/wake-cross-thread", test_co_wake_cross_thread);
    g_test_add_func("/aio/loops/reschedule", test_loops_reschedule);
    g_test_add_func("/aio/loops/stop-drains", test_loops_stop_drains);
    g_test_add_func("/aio/loops/stop-race", test_loops_stop_race);
    ret = g_test_run();
    co_pool_shutdown();
    return ret;
}
