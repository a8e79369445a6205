/*
 * linux-aio.h: Linux native AIO (libaio) for coroutines.
 *
 * One io context per AioContext, created on first use.  A coroutine calls
 * laio_co_preadv()/laio_co_pwritev(); the control block lives on its
 * stack; it yields until the completion arrives.  Submissions made during
 * one loop iteration go to the kernel together in one io_submit(), from a
 * BH that runs after the iteration's fd handlers; laio_plug()/unplug()
 * hold submissions back longer.  Completions are signalled through an
 * eventfd and reaped from the completion ring in user space.
 *
 * Files are expected to be opened with O_DIRECT (otherwise the kernel may
 * block in io_submit), or read with RWF_NOWAIT: then page-cache hits are
 * copied inside io_submit, many reads in one system call.
 */
#ifndef CO_LINUX_AIO_H
#define CO_LINUX_AIO_H

#include <sys/types.h>
#include <sys/uio.h>

#include "aio.h"

/*
 * The Linux AIO state of @ctx (the calling thread's context), created on
 * first use.  NULL with errno set if io_setup() is unavailable; callers
 * then fall back to the thread pool.  Home thread only.
 */
LinuxAioState *laio_get(AioContext *ctx);

/* Free @s (no request may be in flight).  Called by aio_context_free. */
void laio_cleanup(LinuxAioState *s);

/*
 * Read or write @iov at @offset.  Returns the byte count or -errno.  A
 * read that reaches the end of the file is completed with zeros (full
 * count); one cut short anywhere else returns the short count, for the
 * caller to finish.  A short write is -ENOSPC.  Coroutine in the home
 * thread of @s.  @rw_flags are RWF_* flags: RWF_DSYNC for a write that
 * must be durable when it completes; RWF_NOWAIT for a read of a buffered
 * file that must not wait for the disk (it then fails with -EAGAIN, also
 * when only part of it was cached: retry it elsewhere).
 */
ssize_t coroutine_fn laio_co_preadv(LinuxAioState *s, int fd,
                                    const struct iovec *iov, int iovcnt,
                                    off_t offset, int rw_flags);
ssize_t coroutine_fn laio_co_pwritev(LinuxAioState *s, int fd,
                                     const struct iovec *iov, int iovcnt,
                                     off_t offset, int rw_flags);

/* Hold submissions until the matching unplug (calls nest). */
void laio_plug(LinuxAioState *s);
void laio_unplug(LinuxAioState *s);

/* Statistics for tests and benchmarks. */
typedef struct LaioStats {
    unsigned long submit_calls;     /* io_submit system calls */
    unsigned long submitted;        /* iocbs submitted */
    unsigned long eagain;           /* io_submit returned EAGAIN */
    unsigned long completed;
    unsigned long sync_reads;       /* lone RWF_NOWAIT reads done by preadv2 */
} LaioStats;
void laio_stats(const LinuxAioState *s, LaioStats *st);

/*
 * For tests: the io_setup() size and the in-flight cap of contexts created
 * from now on.  A cap above what the kernel accepts makes io_submit()
 * return EAGAIN, which the submission path must survive.
 */
void laio_set_limits(unsigned setup_nr, unsigned max_inflight);

/* Zero @iov from byte @from to its end. */
void iov_memset_from(const struct iovec *iov, int iovcnt, size_t from);
size_t iov_size(const struct iovec *iov, int iovcnt);

#endif /* CO_LINUX_AIO_H */
