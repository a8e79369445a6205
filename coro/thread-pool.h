/*
 * thread-pool.h: run blocking work on worker threads, from coroutines.
 *
 * For what Linux AIO cannot do asynchronously: fdatasync, fallocate,
 * buffered reads and writes.  Process-wide sets of workers (glib's
 * GThreadPool); each AioContext has a completion list and a BH, so the
 * coroutine resumes in its own context.
 */
#ifndef CO_THREAD_POOL_H
#define CO_THREAD_POOL_H

#include <sys/types.h>
#include <sys/uio.h>

#include "aio.h"

typedef long ThreadPoolFunc(void *opaque);

/*
 * Which set of workers runs a call.  POOL_WIDE (64 threads by default) is
 * for calls that gain from running side by side: reads and writes that
 * wait for a device, syncs, fallocate.  POOL_NARROW (2 by default) is for
 * calls the kernel runs one at a time anyway, such as buffered writes to
 * one file, which all take its inode lock: more workers would only wait
 * on that lock, and each wait is a sleep and a wake-up, while a few
 * workers go from one queued call to the next without sleeping.
 */
typedef enum {
    POOL_WIDE,
    POOL_NARROW,
    POOL_NKINDS
} PoolKind;

/*
 * Run @func(@opaque) on a worker thread of @kind; yield until it
 * returns; return its result.  Coroutine context, in a thread running an
 * AioContext (the coroutine resumes there).
 */
long coroutine_fn thread_pool_co_run(PoolKind kind, ThreadPoolFunc *func,
                                     void *opaque);

/* Maximum number of worker threads of @kind.  Before its first use. */
void thread_pool_set_max_threads(PoolKind kind, int n);

/* Free @tp (no work may be in flight).  Called by aio_context_free. */
void thread_pool_ctx_cleanup(ThreadPoolCtx *tp);

/*
 * Blocking file operations, run on POOL_WIDE (pool_co_pwritev: on @kind).
 * They retry on EINTR and
 * short counts; they return the full byte count (reads pad with zeros past
 * end of file) or -errno (a write that makes no progress is -ENOSPC).
 */
ssize_t coroutine_fn pool_co_preadv(int fd, const struct iovec *iov,
                                    int iovcnt, off_t offset);
ssize_t coroutine_fn pool_co_pwritev(PoolKind kind, int fd,
                                     const struct iovec *iov, int iovcnt,
                                     off_t offset, int rw_flags);
int coroutine_fn pool_co_fdatasync(int fd);
int coroutine_fn pool_co_fallocate(int fd, int mode, off_t offset,
                                   off_t len);

/*
 * The same loops, run synchronously in the calling thread; the pool
 * versions call these.  @flags are preadv2/pwritev2 flags (RWF_*).
 */
ssize_t file_preadv_full(int fd, const struct iovec *iov, int iovcnt,
                         off_t offset, int flags);
ssize_t file_pwritev_full(int fd, const struct iovec *iov, int iovcnt,
                          off_t offset, int flags);

#endif /* CO_THREAD_POOL_H */
