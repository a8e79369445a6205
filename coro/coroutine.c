/*
 * coroutine.c: coroutine lifecycle, switching and the pool.
 *
 * The pool
 * --------
 * Each thread allocates from its own list (alloc_pool) with no atomic
 * operation.  A coroutine that terminates goes onto one shared release list
 * with a single compare-and-swap; the list head packs the list length into
 * its top 16 bits, so the push also counts.  A thread whose own list is empty
 * takes the whole release list with one atomic exchange, but only once it
 * holds more than CO_POOL_BATCH coroutines (so small lists are not
 * ping-ponged between threads).
 *
 *     thread A                 release list              thread B
 *   alloc_pool --co_create-->   (CAS push)  <--terminate--  running co
 *        ^                          |
 *        +------- xchg(all) --------+   when length > CO_POOL_BATCH
 *
 * Bounds: the release list holds at most 2 * pool_max(); a thread's
 * alloc_pool at most what it took plus pool_max(); beyond that a finished
 * coroutine's stack is unmapped.  pool_max() is CO_POOL_BATCH times the
 * number of threads that have taken from the release list (at least one),
 * so the pool follows the number of allocating threads.  When such a thread
 * exits, its leftovers are freed and the bound shrinks again.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if CONFIG_VALGRIND
#include <valgrind/valgrind.h>
#endif

#include "coroutine-int.h"

typedef enum {
    CO_ENTER,
    CO_YIELD,
    CO_TERMINATE,
} CoAction;

typedef struct CoThread {
    Coroutine leader;           /* this thread's own stack */
    Coroutine *current;         /* NULL until the thread first enters */
    Coroutine *alloc_pool;
    unsigned alloc_pool_size;
    bool registered;            /* counted in pool_threads */
    bool exit_hook;             /* pool_thread_exit will run */
    CoAction action;            /* set by whoever switches to this thread */
    Coroutine *switch_from;     /* the context that switched last */
} CoThread;

static __thread CoThread co_tls;

/*
 * Every access to this thread's state goes through here.  A coroutine may
 * yield on one thread and resume on another; if the compiler cached the
 * address of co_tls across a switch, it would use the old thread's state.
 * The function is never inlined and the asm hides its result, so each call
 * computes the address afresh.
 */
static __attribute__((noinline)) CoThread *co_thread(void)
{
    CoThread *t = &co_tls;
    __asm__ volatile("" : "+r"(t));
    return t;
}

/* Release list head: (length << 48) | pointer.  See the comment above. */
#define RELEASE_PTR_MASK ((UINT64_C(1) << 48) - 1)
#define RELEASE_LEN(h) ((unsigned)((h) >> 48))
#define RELEASE_PTR(h) ((Coroutine *)(uintptr_t)((h) & RELEASE_PTR_MASK))
#define POOL_MAX_LIMIT 16384    /* 2 * limit must fit in 16 bits */

static uint64_t release_head;
static unsigned pool_threads;   /* threads that took from the release list */
static unsigned long stacks_live;
static unsigned long stacks_created;
static pthread_key_t pool_key;
static pthread_once_t pool_key_once = PTHREAD_ONCE_INIT;

static size_t page_size(void)
{
    static size_t size;

    if (!size) {
        size = (size_t)sysconf(_SC_PAGESIZE);
    }
    return size;
}

size_t co_stack_size(void)
{
    size_t page = page_size();

    return (CO_STACK_SIZE + page - 1) & ~(page - 1);
}

static void die(const char *what)
{
    fprintf(stderr, "coroutine: %s: %s\n", what, strerror(errno));
    abort();
}

/* Map a new stack with a guard page below it and set up its context. */
static Coroutine *co_new(void)
{
    size_t page = page_size();
    size_t size = co_stack_size();
    Coroutine *co;
    void *base;

    co = calloc(1, sizeof(*co));
    if (!co) {
        die("cannot allocate a coroutine");
    }
    base = mmap(NULL, size + page, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                -1, 0);
    if (base == MAP_FAILED) {
        die("cannot map a coroutine stack");
    }
    /* Overflowing the stack runs into this page and faults at once. */
    if (mprotect(base, page, PROT_NONE) < 0) {
        die("failed to set up stack guard page (vm.max_map_count?)");
    }
    co->map_base = base;
    co->map_size = size + page;
    co->stack = (char *)base + page;
    co->stack_size = size;
#if CONFIG_VALGRIND
    co->valgrind_id = VALGRIND_STACK_REGISTER(co->stack,
                                              (char *)co->stack + size);
#endif
#if CONFIG_TSAN
    co->tsan_fiber = __tsan_create_fiber(0);
#endif
    atomic_add_relaxed(&stacks_live, 1);
    atomic_add_relaxed(&stacks_created, 1);
    co_backend_init(co);
    return co;
}

static void co_free(Coroutine *co)
{
#if CONFIG_VALGRIND
    VALGRIND_STACK_DEREGISTER(co->valgrind_id);
#endif
#if CONFIG_TSAN
    __tsan_destroy_fiber(co->tsan_fiber);
#endif
    munmap(co->map_base, co->map_size);
    free(co);
    atomic_sub_relaxed(&stacks_live, 1);
}

/* Runs at thread exit for threads that took from the release list. */
static void pool_thread_exit(void *arg)
{
    co_pool_thread_cleanup();
}

static void pool_make_key(void)
{
    if (pthread_key_create(&pool_key, pool_thread_exit) != 0) {
        die("pthread_key_create");
    }
}

/* Arrange for this thread's leftovers to be freed when it exits. */
static void pool_arm_exit_hook(CoThread *t)
{
    if (!t->exit_hook) {
        pthread_once(&pool_key_once, pool_make_key);
        pthread_setspecific(pool_key, t);
        t->exit_hook = true;
    }
}

/*
 * The pool bound: CO_POOL_BATCH per thread that took from the release
 * list (at least one batch), capped.  Derived from the count each time, so
 * threads that come and go at once cannot leave a stale bound behind.
 */
static unsigned pool_max(void)
{
    unsigned n = atomic_read(&pool_threads);

    if (n <= 1) {
        return CO_POOL_BATCH;
    }
    return n < POOL_MAX_LIMIT / CO_POOL_BATCH ? n * CO_POOL_BATCH
                                              : POOL_MAX_LIMIT;
}

/*
 * Count this thread in pool_threads and arrange for its leftovers to be
 * freed when it exits.  Slow path: runs once per thread.
 */
static void pool_register_thread(CoThread *t)
{
    pool_arm_exit_hook(t);
    t->registered = true;
    atomic_fetch_add(&pool_threads, 1);
}

void co_pool_thread_cleanup(void)
{
    CoThread *t = co_thread();
    Coroutine *co;

    while ((co = t->alloc_pool)) {
        t->alloc_pool = co->pool_next;
        co_free(co);
    }
    t->alloc_pool_size = 0;
    if (t->registered) {
        t->registered = false;
        atomic_fetch_sub(&pool_threads, 1);
    }
    if (t->exit_hook) {
        t->exit_hook = false;
        pthread_setspecific(pool_key, NULL);
    }
}

void co_pool_shutdown(void)
{
    Coroutine *co = RELEASE_PTR(atomic_xchg(&release_head, 0));

    while (co) {
        Coroutine *next = co->pool_next;

        co_free(co);
        co = next;
    }
    co_pool_thread_cleanup();
}

/* Slow path of co_create(): refill alloc_pool from the release list. */
static Coroutine *pool_refill(CoThread *t)
{
    uint64_t head;

    if (RELEASE_LEN(atomic_read(&release_head)) <= CO_POOL_BATCH) {
        return NULL;
    }
    if (!t->registered) {
        pool_register_thread(t);
    }
    /* Acquire: pairs with the release CAS in pool_release(). */
    head = atomic_xchg(&release_head, 0);
    t->alloc_pool = RELEASE_PTR(head);
    t->alloc_pool_size = RELEASE_LEN(head);
    return t->alloc_pool;
}

/* A coroutine has terminated: give it back to the pool or unmap it. */
static void pool_release(CoThread *t, Coroutine *co)
{
    unsigned max = pool_max();
    uint64_t old, new;

    if (likely(((uintptr_t)co & ~RELEASE_PTR_MASK) == 0)) {
        old = atomic_read(&release_head);
        do {
            if (RELEASE_LEN(old) >= 2 * max) {
                goto local;
            }
            co->pool_next = RELEASE_PTR(old);
            new = ((uint64_t)(RELEASE_LEN(old) + 1) << 48) | (uintptr_t)co;
        } while (!__atomic_compare_exchange_n(&release_head, &old, new, true,
                                              __ATOMIC_RELEASE,
                                              __ATOMIC_RELAXED));
        return;
    }
local:
    if (t->alloc_pool_size < max) {
        pool_arm_exit_hook(t);
        co->pool_next = t->alloc_pool;
        t->alloc_pool = co;
        t->alloc_pool_size++;
        return;
    }
    co_free(co);
}

static Coroutine *leader_init(CoThread *t)
{
    t->leader.is_leader = true;
#if CONFIG_TSAN
    t->leader.tsan_fiber = __tsan_get_current_fiber();
#endif
    t->current = &t->leader;
    return t->current;
}

/*
 * Annotations around a switch.  Before it, ASan learns the stack we go to
 * (and forgets our fake stack if we terminate); after it, ASan learns the
 * stack we came from, and we remember a thread's own stack bounds the first
 * time we leave it, since switching back to it later needs them.
 */
static inline void switch_begin(Coroutine *from, Coroutine *to,
                                CoAction action)
{
#if CONFIG_ASAN
    if (action == CO_TERMINATE) {
        from->asan_fake_stack = NULL;
    }
    __sanitizer_start_switch_fiber(action == CO_TERMINATE
                                   ? NULL : &from->asan_fake_stack,
                                   to->stack, to->stack_size);
#endif
#if CONFIG_TSAN
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
}

static inline void switch_end(CoThread *t, Coroutine *self)
{
#if CONFIG_ASAN
    const void *bottom;
    size_t size;
    Coroutine *prev = t->switch_from;

    __sanitizer_finish_switch_fiber(self->asan_fake_stack, &bottom, &size);
    if (prev->is_leader && !prev->stack) {
        prev->stack = (void *)bottom;
        prev->stack_size = size;
    }
#endif
}

static CoAction co_switch(CoThread *t, Coroutine *from, Coroutine *to,
                          CoAction action)
{
    t->action = action;
    t->switch_from = from;
    switch_begin(from, to, action);
    co_backend_switch(from, to);
    /* We may be on another thread now: look the state up again. */
    t = co_thread();
    switch_end(t, from);
    return t->action;
}

void co_trampoline_main(Coroutine *co)
{
    CoThread *t = co_thread();

    switch_end(t, co);
    for (;;) {
        Coroutine *to;

        co->entry(co->opaque);

        t = co_thread();
        to = co->caller;
        co->caller = NULL;
        t->current = to;
        co_switch(t, co, to, CO_TERMINATE);
        /* Taken from the pool and entered again, with a new entry. */
    }
}

Coroutine *co_create(CoroutineEntry *entry, void *opaque)
{
    CoThread *t = co_thread();
    Coroutine *co = t->alloc_pool;

    if (unlikely(!co)) {
        co = pool_refill(t);
    }
    if (likely(co)) {
        t->alloc_pool = co->pool_next;
        t->alloc_pool_size--;
    } else {
        co = co_new();
    }
    co->entry = entry;
    co->opaque = opaque;
    co->caller = NULL;
    co->home = NULL;
    co->pool_next = NULL;
    return co;
}

void co_enter(Coroutine *co)
{
    CoThread *t = co_thread();
    Coroutine *self = t->current ? t->current : leader_init(t);

    if (unlikely(co->caller || co == self)) {
        fprintf(stderr, "coroutine: co_enter of a coroutine that is "
                "already running or entered\n");
        abort();
    }
    co->caller = self;
    t->current = co;
    if (co_switch(t, self, co, CO_ENTER) == CO_TERMINATE) {
        pool_release(co_thread(), co);
    }
}

void coroutine_fn co_yield(void)
{
    CoThread *t = co_thread();
    Coroutine *self = t->current;
    Coroutine *to = self ? self->caller : NULL;

    if (unlikely(!to)) {
        fprintf(stderr, "coroutine: co_yield outside coroutine context\n");
        abort();
    }
    self->caller = NULL;
    t->current = to;
    co_switch(t, self, to, CO_YIELD);
}

Coroutine *co_self(void)
{
    Coroutine *cur = co_thread()->current;

    return cur && !cur->is_leader ? cur : NULL;
}

bool co_in_coroutine(void)
{
    return co_self() != NULL;
}

bool co_is_entered(const Coroutine *co)
{
    return co->caller != NULL;
}

void co_set_home(Coroutine *co, void *ctx)
{
    co->home = ctx;
}

void *co_get_home(const Coroutine *co)
{
    return co->home;
}

void co_pool_stats(CoPoolStats *st)
{
    st->stacks_live = atomic_read(&stacks_live);
    st->stacks_created = atomic_read(&stacks_created);
    st->release_size = RELEASE_LEN(atomic_read(&release_head));
    st->max_size = pool_max();
}
