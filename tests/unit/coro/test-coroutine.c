/*
 * Unit tests for coroutines and the coroutine pool.
 */
#include "config.h"

#include <fcntl.h>
#include <glib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "coro/coroutine.h"

#if CONFIG_VALGRIND
#include <valgrind/valgrind.h>
#endif

static bool running_on_valgrind(void)
{
#if CONFIG_VALGRIND
    return RUNNING_ON_VALGRIND;
#else
    return false;
#endif
}

/* ---- lifecycle -------------------------------------------------------- */

static void set_flag(void *opaque)
{
    bool *flag = opaque;

    g_assert_true(co_in_coroutine());
    g_assert_nonnull(co_self());
    *flag = true;
}

static void test_lifecycle(void)
{
    bool done = false;
    Coroutine *co = co_create(set_flag, &done);

    g_assert_false(co_in_coroutine());
    g_assert_null(co_self());
    g_assert_false(co_is_entered(co));
    co_enter(co);
    g_assert_true(done);
    g_assert_false(co_in_coroutine());
}

/* ---- yield / enter ping-pong -------------------------------------------- */

static void stop_after(void *opaque)
{
    int *n = opaque;
    int i;

    for (i = 0; i < 1000; i++) {
        (*n)++;
        co_yield();
    }
}

static void test_yield(void)
{
    int n = 0, i;
    Coroutine *co = co_create(stop_after, &n);

    for (i = 0; i < 1000; i++) {
        co_enter(co);
        g_assert_cmpint(n, ==, i + 1);
    }
    co_enter(co);               /* returns from the entry: terminates */
    g_assert_cmpint(n, ==, 1000);
}

/* ---- nesting ---------------------------------------------------------- */

typedef struct Trace {
    char log[64];
    int len;
    Coroutine *inner;
} Trace;

static void trace_add(Trace *t, char c)
{
    g_assert_cmpint(t->len, <, (int)sizeof(t->log) - 1);
    t->log[t->len++] = c;
}

static void inner_entry(void *opaque)
{
    Trace *t = opaque;

    trace_add(t, 'b');
    co_yield();                 /* back to the outer coroutine */
    trace_add(t, 'd');
}

static void outer_entry(void *opaque)
{
    Trace *t = opaque;
    Coroutine *self = co_self();

    trace_add(t, 'a');
    t->inner = co_create(inner_entry, t);
    co_enter(t->inner);
    g_assert_true(co_self() == self);
    trace_add(t, 'c');
    co_yield();                 /* back to the test */
    co_enter(t->inner);         /* inner finishes */
    trace_add(t, 'e');
}

static void test_nesting(void)
{
    Trace t = { .len = 0 };
    Coroutine *outer = co_create(outer_entry, &t);

    co_enter(outer);
    g_assert_cmpstr(t.log, ==, "abc");
    co_enter(outer);
    g_assert_cmpstr(t.log, ==, "abcde");
    g_assert_null(co_self());
}

/* ---- deep recursion within the stack ------------------------------------ */

static int __attribute__((noinline)) recurse(int depth)
{
    volatile char buf[256];

    buf[0] = (char)depth;
    if (depth == 0) {
        return buf[0];
    }
    return recurse(depth - 1) + buf[0];
}

static void use_stack(void *opaque)
{
    int *depth = opaque;

    /* About half the stack: fine. */
    *depth = recurse(*depth);
}

static void test_stack_use(void)
{
    int depth = (int)(co_stack_size() / 2 / 400);
    Coroutine *co = co_create(use_stack, &depth);

    co_enter(co);
    g_assert_cmpint(depth, >, 0);
}

static void overflow(void *opaque)
{
    int depth = 1 << 20;

    *(int *)opaque = recurse(depth);
}

static void say(const char *s)
{
    ssize_t r = write(STDOUT_FILENO, s, strlen(s));

    (void)r;
}

/*
 * SIGSEGV handler (on its own stack): was the faulting address in an
 * inaccessible mapping, that is a guard page?  Reads /proc/self/maps with
 * plain system calls; the process ends here either way.
 */
static void guard_segv(int sig, siginfo_t *info, void *uc)
{
    static char maps[1 << 20];
    uintptr_t addr = (uintptr_t)info->si_addr;
    size_t len = 0;
    ssize_t n;
    char *line;
    int fd = open("/proc/self/maps", O_RDONLY);

    while (fd >= 0 && len < sizeof(maps) - 1 &&
           (n = read(fd, maps + len, sizeof(maps) - 1 - len)) > 0) {
        len += n;
    }
    maps[len] = '\0';
    for (line = maps; *line; ) {
        char *end;
        unsigned long lo = strtoul(line, &end, 16);
        unsigned long hi = strtoul(end + 1, &end, 16);

        if (addr >= lo && addr < hi) {
            say(strncmp(end + 1, "---p", 4) == 0 ? "guard page hit\n"
                                                 : "fault in accessible memory\n");
            _exit(0);
        }
        line = strchr(line, '\n');
        if (!line) {
            break;
        }
        line++;
    }
    say("fault outside any mapping\n");
    _exit(0);
}

/*
 * A stack overflow must fault on the guard page (not run into other
 * memory, nor past a missing guard into unmapped space), in a child.
 */
static void test_guard_page(void)
{
    if (running_on_valgrind()) {
        g_test_skip("valgrind reports the overflow itself");
        return;
    }
    if (g_test_subprocess()) {
        static char altstack[64 * 1024];
        stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
        struct sigaction sa = { .sa_sigaction = guard_segv,
                                .sa_flags = SA_SIGINFO | SA_ONSTACK };
        int r = 0;

        g_assert_cmpint(sigaltstack(&ss, NULL), ==, 0);
        g_assert_cmpint(sigaction(SIGSEGV, &sa, NULL), ==, 0);
        co_enter(co_create(overflow, &r));
        printf("survived %d\n", r);
        return;
    }
    g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
    g_test_trap_assert_stdout("*guard page hit*");
    g_test_trap_assert_stdout_unmatched("*survived*");
}

/* ---- the pool ---------------------------------------------------------- */

static void noop(void *opaque)
{
}

static void test_pool_reuse(void)
{
    CoPoolStats before, after;
    int i;

    co_pool_stats(&before);
    for (i = 0; i < 100000; i++) {
        co_enter(co_create(noop, NULL));
    }
    co_pool_stats(&after);
    /* Single-threaded cycles need about one batch of stacks. */
    g_assert_cmpuint(after.stacks_created - before.stacks_created, <=,
                     2 * CO_POOL_BATCH + 2);
}

static int count_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    int c, n = 0;

    g_assert_nonnull(f);
    while ((c = fgetc(f)) != EOF) {
        n += c == '\n';
    }
    fclose(f);
    return n;
}

static void yield_once(void *opaque)
{
    co_yield();
}

/*
 * Many coroutines alive at once, then all finished: the pool keeps a
 * bounded number of stacks, and memory mappings go back down.
 */
static void test_pool_bounded(void)
{
    /* Well above the bound; fewer under TSan, whose fibers cost ~5 ms. */
    enum { N = CONFIG_TSAN ? 1000 : 5000 };
    Coroutine **cos = g_new(Coroutine *, N);
    CoPoolStats before, st;
    int maps_before, maps_peak, maps_after;
    int i;

    co_pool_stats(&before);
    maps_before = count_mappings();
    for (i = 0; i < N; i++) {
        cos[i] = co_create(yield_once, NULL);
        co_enter(cos[i]);
    }
    co_pool_stats(&st);
    maps_peak = count_mappings();
    g_assert_cmpuint(st.stacks_live, >=, N);
    /* Two mappings per stack: the stack and its guard page. */
    g_assert_cmpint(maps_peak - maps_before, >=, N);
    (void)maps_after;
    for (i = 0; i < N; i++) {
        co_enter(cos[i]);
    }
    g_free(cos);
    co_pool_stats(&st);
    maps_after = count_mappings();
    g_assert_cmpuint(st.stacks_live, <=,
                     before.stacks_live + 3 * st.max_size + 2);
    /* TSan and valgrind map memory of their own meanwhile. */
    if (!CONFIG_TSAN && !running_on_valgrind()) {
        g_assert_cmpint(maps_after - maps_before, <=,
                        2 * (3 * st.max_size + 2));
    }
}

typedef struct Handoff {
    Coroutine *co;
    int stage;
    pid_t entered_on;           /* thread ids: pthread_self() is "const", */
    pid_t finished_on;          /* so GCC may reuse it across a yield */
} Handoff;

static void handoff_entry(void *opaque)
{
    Handoff *h = opaque;

    h->entered_on = gettid();
    h->stage = 1;
    co_yield();
    /* Resumed on another thread. */
    h->finished_on = gettid();
    h->stage = 2;
}

static void *enter_on_thread(void *opaque)
{
    Handoff *h = opaque;

    co_enter(h->co);
    return NULL;
}

/* Created and first run on the main thread, finished on another. */
static void test_cross_thread(void)
{
    Handoff h = { 0 };
    pthread_t th;
    int i;

    for (i = 0; i < 200; i++) {
        h.stage = 0;
        h.co = co_create(handoff_entry, &h);
        co_enter(h.co);
        g_assert_cmpint(h.stage, ==, 1);
        g_assert_cmpint(h.entered_on, ==, gettid());
        pthread_create(&th, NULL, enter_on_thread, &h);
        pthread_join(th, NULL);
        g_assert_cmpint(h.stage, ==, 2);
        g_assert_cmpint(h.finished_on, !=, gettid());
    }
}

/*
 * Threads that create on one side and terminate on the other.  The hand-
 * over queue uses pthread primitives (ThreadSanitizer sees those; glib's
 * futex-based queues are invisible to it).
 */
typedef struct PingPong {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    Coroutine *slots[64];
    int head, tail;             /* under lock */
    int n;
} PingPong;

static void pp_push(PingPong *pp, Coroutine *co)
{
    pthread_mutex_lock(&pp->lock);
    while (pp->tail - pp->head == (int)G_N_ELEMENTS(pp->slots)) {
        pthread_cond_wait(&pp->cond, &pp->lock);
    }
    pp->slots[pp->tail++ % G_N_ELEMENTS(pp->slots)] = co;
    pthread_cond_broadcast(&pp->cond);
    pthread_mutex_unlock(&pp->lock);
}

static Coroutine *pp_pop(PingPong *pp)
{
    Coroutine *co;

    pthread_mutex_lock(&pp->lock);
    while (pp->tail == pp->head) {
        pthread_cond_wait(&pp->cond, &pp->lock);
    }
    co = pp->slots[pp->head++ % G_N_ELEMENTS(pp->slots)];
    pthread_cond_broadcast(&pp->cond);
    pthread_mutex_unlock(&pp->lock);
    return co;
}

static void pp_entry(void *opaque)
{
    int *count = opaque;

    co_yield();
    (*count)++;
}

static void *pp_consumer(void *opaque)
{
    PingPong *pp = opaque;
    int i;

    for (i = 0; i < pp->n; i++) {
        co_enter(pp_pop(pp));   /* terminates here: released by us */
    }
    return NULL;
}

static void test_pool_threads(void)
{
    PingPong pp = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .cond = PTHREAD_COND_INITIALIZER,
        .n = 20000,
    };
    CoPoolStats before, after;
    pthread_t th;
    int count = 0, i;

    co_pool_stats(&before);
    pthread_create(&th, NULL, pp_consumer, &pp);
    for (i = 0; i < pp.n; i++) {
        Coroutine *co = co_create(pp_entry, &count);

        co_enter(co);           /* runs to its yield on this thread */
        pp_push(&pp, co);
    }
    pthread_join(th, NULL);
    g_assert_cmpint(count, ==, pp.n);
    co_pool_stats(&after);
    /* Stacks flow back through the release list instead of piling up. */
    g_assert_cmpuint(after.stacks_created - before.stacks_created, <, pp.n);
    g_assert_cmpuint(after.stacks_live, <=,
                     before.stacks_live + 3 * after.max_size + 2);
}

static void *pool_user(void *opaque)
{
    int i;

    for (i = 0; i < 1000; i++) {
        co_enter(co_create(noop, NULL));
    }
    return NULL;               /* leftovers freed by the thread-exit hook */
}

/* Fill the shared release list: coroutines made here end here. */
static void fill_release_list(void)
{
    enum { N = 4 * CO_POOL_BATCH };
    Coroutine *cos[N];
    int i;

    for (i = 0; i < N; i++) {
        cos[i] = co_create(yield_once, NULL);
        co_enter(cos[i]);
    }
    for (i = 0; i < N; i++) {
        co_enter(cos[i]);
    }
}

typedef struct Taker {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stage;                  /* 1: took from the list, 2: may exit */
} Taker;

/* A thread that takes the release list for its own pool, then waits. */
static void *taker(void *opaque)
{
    Taker *tk = opaque;

    co_enter(co_create(noop, NULL));
    pthread_mutex_lock(&tk->lock);
    tk->stage = 1;
    pthread_cond_broadcast(&tk->cond);
    while (tk->stage != 2) {
        pthread_cond_wait(&tk->cond, &tk->lock);
    }
    pthread_mutex_unlock(&tk->lock);
    return NULL;
}

static void taker_wait(Taker *tk)
{
    pthread_mutex_lock(&tk->lock);
    while (tk->stage != 1) {
        pthread_cond_wait(&tk->cond, &tk->lock);
    }
    pthread_mutex_unlock(&tk->lock);
}

/*
 * The bound grows by a batch for each thread that allocates from the
 * shared list (so does what the release list may hold), and shrinks back
 * when those threads exit.
 */
static void test_pool_grows(void)
{
    Taker tk[2] = {
        { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 },
        { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 },
    };
    CoPoolStats before, st;
    pthread_t th[2];
    int i;

    co_pool_stats(&before);
    for (i = 0; i < 2; i++) {
        fill_release_list();
        co_pool_stats(&st);
        g_assert_cmpuint(st.release_size, >, CO_POOL_BATCH);
        pthread_create(&th[i], NULL, taker, &tk[i]);
        taker_wait(&tk[i]);
        co_pool_stats(&st);
        /* Taken whole; the taker's one coroutine came back. */
        g_assert_cmpuint(st.release_size, <=, 1);
    }
    co_pool_stats(&st);
    g_assert_cmpuint(st.max_size, >=, 2 * CO_POOL_BATCH);
    g_assert_cmpuint(st.max_size, >=, before.max_size + CO_POOL_BATCH);
    /* The release list may now hold twice the grown bound. */
    fill_release_list();
    fill_release_list();
    co_pool_stats(&st);
    g_assert_cmpuint(st.release_size, >, 2 * before.max_size);
    g_assert_cmpuint(st.release_size, <=, 2 * st.max_size);
    for (i = 0; i < 2; i++) {
        pthread_mutex_lock(&tk[i].lock);
        tk[i].stage = 2;
        pthread_cond_broadcast(&tk[i].cond);
        pthread_mutex_unlock(&tk[i].lock);
        pthread_join(th[i], NULL);
    }
    co_pool_stats(&st);
    g_assert_cmpuint(st.max_size, ==, before.max_size);
}

static void test_thread_exit_frees(void)
{
    CoPoolStats before, after;
    pthread_t th[4];
    int i;

    co_pool_stats(&before);
    for (i = 0; i < 4; i++) {
        pthread_create(&th[i], NULL, pool_user, NULL);
    }
    for (i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    co_pool_stats(&after);
    /* What remains is at most the shared release list. */
    g_assert_cmpuint(after.stacks_live, <=,
                     before.stacks_live + 2 * after.max_size + 1);
    g_assert_cmpuint(after.max_size, <=, 2 * CO_POOL_BATCH);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/coroutine/lifecycle", test_lifecycle);
    g_test_add_func("/coroutine/yield", test_yield);
    g_test_add_func("/coroutine/nesting", test_nesting);
    g_test_add_func("/coroutine/stack-use", test_stack_use);
    g_test_add_func("/coroutine/guard-page", test_guard_page);
    g_test_add_func("/coroutine/pool/reuse", test_pool_reuse);
    g_test_add_func("/coroutine/pool/bounded", test_pool_bounded);
    g_test_add_func("/coroutine/pool/cross-thread", test_cross_thread);
    g_test_add_func("/coroutine/pool/threads", test_pool_threads);
    g_test_add_func("/coroutine/pool/thread-exit", test_thread_exit_frees);
    g_test_add_func("/coroutine/pool/grows", test_pool_grows);
    ret = g_test_run();
    co_pool_shutdown();
    return ret;
}
