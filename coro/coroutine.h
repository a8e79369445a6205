/*
 * coroutine.h: stackful coroutines with a lock-light pool.
 *
 * A coroutine runs @entry(@opaque) on its own guard-paged stack.  Control
 * moves only where the program says so:
 *
 *   co_enter(co)   switch into @co; returns when @co yields or terminates.
 *                  The caller may itself be a coroutine (nesting).
 *   co_yield()     from inside a coroutine: switch back to whoever entered
 *                  it.  The next co_enter() resumes it after the call.
 *
 * A coroutine terminates when @entry returns; it goes back to the pool then,
 * and the Coroutine pointer must not be used again.
 *
 * Threads: a coroutine may be created on one thread and entered, resumed or
 * terminated on another, but it runs on one thread at a time and must never
 * be entered while it is running or already entered.  Code running in a
 * coroutine must not cache thread-local addresses across a yield (the
 * runtime's own thread-locals are read through non-inlined accessors).
 */
#ifndef CO_COROUTINE_H
#define CO_COROUTINE_H

#include "co-common.h"

typedef struct Coroutine Coroutine;
typedef void CoroutineEntry(void *opaque);

/*
 * Return a coroutine that will run @entry(@opaque) when first entered.
 * Taken from the pool when possible (no system call, no atomic operation);
 * aborts only if a new stack cannot be mapped at all.
 */
Coroutine *co_create(CoroutineEntry *entry, void *opaque);

/* Switch into @co until it yields or terminates. */
void co_enter(Coroutine *co);

/* From a coroutine: switch back to the one that entered it. */
void coroutine_fn co_yield(void);

/* The running coroutine, or NULL outside coroutine context. */
Coroutine *co_self(void);

/* True when called from inside a coroutine. */
bool co_in_coroutine(void);

/* True while @co has been entered and has not yet yielded or ended. */
bool co_is_entered(const Coroutine *co);

/*
 * Each coroutine carries a home AioContext, used by aio_co_wake() to resume
 * it on the right thread.  Stored as an opaque pointer so that this module
 * does not depend on aio.h.
 */
void co_set_home(Coroutine *co, void *ctx);
void *co_get_home(const Coroutine *co);

/*
 * Pool tuning.  The pool keeps up to CO_POOL_BATCH coroutines per thread
 * that allocates from it (adjusted as such threads come and go), so it grows
 * with the number of allocating threads and stays bounded: every pooled
 * coroutine costs two memory mappings (stack + guard page).
 */
#define CO_POOL_BATCH 64

/* Statistics, for tests and the microbenchmark. */
typedef struct CoPoolStats {
    unsigned long stacks_live;      /* stacks currently mapped */
    unsigned long stacks_created;   /* stacks ever mapped */
    unsigned long release_size;     /* coroutines on the shared release list */
    unsigned long max_size;         /* current pool bound */
} CoPoolStats;
void co_pool_stats(CoPoolStats *st);

/*
 * Free this thread's pooled coroutines now.  Runs automatically when a
 * thread that took from the shared list exits.
 */
void co_pool_thread_cleanup(void);

/*
 * Free every pooled coroutine: this thread's and the shared release list.
 * Call at process exit, once no other thread uses coroutines, to keep leak
 * checkers quiet.
 */
void co_pool_shutdown(void);

/* Stack size in bytes (build-time CO_STACK_SIZE). */
size_t co_stack_size(void);

#endif /* CO_COROUTINE_H */
