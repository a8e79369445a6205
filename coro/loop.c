/*
 * loop.c: event-loop threads.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>

#include "loop.h"

typedef struct LoopThread {
    AioContext *ctx;
    pthread_t thread;
    int cpu;                    /* -1: not pinned */
    bool stop;                  /* atomic */
    AioBH *stop_bh;             /* wakes the loop to see `stop` */
} LoopThread;

struct AioLoops {
    unsigned n;
    unsigned next;              /* atomic round-robin counter */
    LoopThread *threads;
};

unsigned aio_online_cpus(void)
{
    cpu_set_t set;

    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);

        if (n > 0) {
            return n;
        }
    }
    return 1;
}

/* The @i-th CPU (modulo their number) this process may run on. */
static int nth_cpu(unsigned i)
{
    cpu_set_t set;
    int cpu, count = 0, seen = 0;

    if (sched_getaffinity(0, sizeof(set), &set) < 0) {
        return -1;
    }
    count = CPU_COUNT(&set);
    if (count <= 0) {
        return -1;
    }
    i %= count;
    for (cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &set) && seen++ == (int)i) {
            return cpu;
        }
    }
    return -1;
}

static void stop_bh(void *opaque)
{
    (void)opaque;
}

/* Free a loop's context, once its thread has ended (or never began). */
static void loop_free(LoopThread *lt)
{
    aio_bh_delete(lt->stop_bh);
    aio_context_free(lt->ctx);
}

static void *loop_thread(void *arg)
{
    LoopThread *lt = arg;

    if (lt->cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(lt->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
    aio_context_set_current(lt->ctx);
    while (!atomic_load_seq(&lt->stop) || aio_context_busy(lt->ctx)) {
        aio_poll(lt->ctx, true);
    }
    aio_context_set_current(NULL);
    /* The context is freed by aio_loops_stop(), after the join. */
    return NULL;
}

AioLoops *aio_loops_start(unsigned n, bool pin)
{
    AioLoops *l;
    sigset_t all, old;
    unsigned i;
    int err = 0;

    if (n == 0) {
        n = aio_online_cpus();
    }
    l = calloc(1, sizeof(*l));
    if (!l || !(l->threads = calloc(n, sizeof(LoopThread)))) {
        free(l);
        errno = ENOMEM;
        return NULL;
    }
    for (i = 0; i < n; i++) {
        l->threads[i].cpu = pin ? nth_cpu(i) : -1;
        l->threads[i].ctx = aio_context_new();
        if (!l->threads[i].ctx) {
            err = errno;
            break;
        }
        l->threads[i].stop_bh = aio_bh_new(l->threads[i].ctx, stop_bh,
                                           NULL, "loop-stop", 0);
    }
    if (err) {
        while (i-- > 0) {
            loop_free(&l->threads[i]);
        }
        goto fail;
    }

    /* Threads inherit the mask: keep signals for the caller's thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (i = 0; i < n; i++) {
        err = pthread_create(&l->threads[i].thread, NULL, loop_thread,
                             &l->threads[i]);
        if (err) {
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    l->n = i;
    if (err) {
        unsigned started = i;

        /* Contexts of threads that never started: free them here. */
        for (i = started; i < n; i++) {
            loop_free(&l->threads[i]);
        }
        aio_loops_stop(l);
        errno = err;
        return NULL;
    }
    l->n = n;
    return l;

fail:
    free(l->threads);
    free(l);
    errno = err;
    return NULL;
}

unsigned aio_loops_count(const AioLoops *l)
{
    return l->n;
}

AioContext *aio_loops_get(const AioLoops *l, unsigned i)
{
    return l->threads[i].ctx;
}

AioContext *aio_loops_next(AioLoops *l)
{
    unsigned i = atomic_add_relaxed(&l->next, 1);

    return l->threads[i % l->n].ctx;
}

void aio_loops_stop(AioLoops *l)
{
    unsigned i;

    for (i = 0; i < l->n; i++) {
        atomic_store_seq(&l->threads[i].stop, true);
        /*
         * Not a bare aio_notify(): the loop may have read `stop` just
         * before and not yet announced (notify_me) that it will sleep,
         * and nothing in its poll timeout looks at `stop`.  A BH is
         * work the loop does look for after announcing it, so either it
         * sees the BH, or we see notify_me and write the eventfd (see
         * "Waking a sleeping loop" in aio.c); the loop then checks `stop`
         * again.  A loop that saw `stop` already may exit with the BH
         * still queued: loop_free() deletes it.
         */
        aio_bh_schedule(l->threads[i].stop_bh);
    }
    for (i = 0; i < l->n; i++) {
        pthread_join(l->threads[i].thread, NULL);
        loop_free(&l->threads[i]);
    }
    free(l->threads);
    free(l);
}
