/*
 * loop.h: a group of event-loop threads, one AioContext each.
 *
 * The thread that starts the group (the main thread) keeps its own
 * context for accepting connections and signals; it hands work to the
 * loops with aio_loops_next() and a BH or aio_co_schedule().
 */
#ifndef CO_LOOP_H
#define CO_LOOP_H

#include "aio.h"

typedef struct AioLoops AioLoops;

/* Number of CPUs this process may run on (at least 1). */
unsigned aio_online_cpus(void);

/*
 * Start @n loop threads (0: one per CPU this process may use).  With @pin,
 * loop i is pinned to the i-th such CPU (modulo their number).  Signals are
 * blocked in loop threads; the caller's thread receives them.  Returns
 * NULL with errno set on failure (nothing is left running).
 */
AioLoops *aio_loops_start(unsigned n, bool pin);

unsigned aio_loops_count(const AioLoops *l);
AioContext *aio_loops_get(const AioLoops *l, unsigned i);

/* The loop to give the next piece of work to (round-robin).  Any thread. */
AioContext *aio_loops_next(AioLoops *l);

/*
 * Stop: each loop keeps running until nothing holds a reference on its
 * context (aio_context_ref) and no BH is pending, then exits.  Waits for
 * all threads, then frees the group and the contexts.  Call it from the
 * thread that started the group.
 */
void aio_loops_stop(AioLoops *l);

#endif /* CO_LOOP_H */
