/*
 * export.c: the image backend.  A raw file or block device, read and
 * written at export offset + window offset.
 *
 * I/O paths, chosen at open time:
 *   cache=none,  aio=native    O_DIRECT + Linux AIO (batched io_submit)
 *   cache=none,  aio=threads   O_DIRECT + thread pool
 *   cache=writeback            reads: Linux AIO with RWF_NOWAIT (one
 *                              io_submit per loop iteration; with
 *                              aio=threads, preadv2 with RWF_NOWAIT) when
 *                              the data is in the page cache, else the pool;
 *                              writes: inline, unless they have been
 *                              slow lately (then, and with FUA, the pool)
 * Flush, trim, zero: fdatasync/fallocate in the pool.
 * Block status: lseek(SEEK_DATA/SEEK_HOLE) inline, on a per-thread fd so
 * that loops do not contend for one file position lock, bounded in extents
 * and in time.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "coro/fault.h"
#include "coro/linux-aio.h"
#include "coro/thread-pool.h"

#define BUF_ALIGN 4096
#define PREFERRED_BLOCK 4096
#define BLOCK_STATUS_BUDGET_NS (20 * 1000 * 1000)
#define ZERO_CHUNK (1u << 20)

void *export_buf_alloc(size_t size)
{
    void *p;

    if (posix_memalign(&p, BUF_ALIGN, size ? size : 1) != 0) {
        return NULL;
    }
    return p;
}

/* The logical block size O_DIRECT needs for @fd. */
static uint32_t direct_alignment(int fd, bool block_device)
{
    struct statx stx;
    int bs;

    if (block_device) {
        if (ioctl(fd, BLKSSZGET, &bs) == 0 && bs > 0) {
            return bs;
        }
        return 512;
    }
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
        return stx.stx_dio_offset_align;
    }
    /* Older kernels: assume the usual 512-byte sectors... unless 512 fails */
    for (bs = 512; bs <= 4096; bs *= 2) {
        void *buf = export_buf_alloc(bs);
        ssize_t r = pread(fd, buf, bs, 0);

        free(buf);
        if (r >= 0) {
            return bs;
        }
    }
    return 4096;
}

bool export_open(Export *e, const ExportConfig *ec, const ServerConfig *cfg,
                 GError **errp)
{
    int flags = (ec->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    uint64_t image_size;
    struct stat st;

    memset(e, 0, sizeof(*e));
    e->fd = -1;
    e->name = g_strdup(ec->name);
    e->description = g_strdup(ec->description);
    e->path = g_strdup(ec->file);
    e->read_only = ec->read_only;
    e->tls_only = ec->tls_only;
    e->direct = cfg->cache == CACHE_NONE;
    e->discard = cfg->discard;
    e->sync_writes = cfg->sync_writes;
    if (e->direct) {
        flags |= O_DIRECT;
    }
    e->fd = open(ec->file, flags);
    if (e->fd < 0 && errno == EINVAL && e->direct) {
        g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "cannot open '%s' with O_DIRECT (--cache=none): "
                    "its file system does not support direct I/O", ec->file);
        return false;
    }
    if (e->fd < 0) {
        int err = errno;
        bool hint = (err == EACCES || err == EROFS) && !ec->read_only;

        g_set_error(errp, G_FILE_ERROR, g_file_error_from_errno(err),
                    "cannot open '%s'%s: %s%s", ec->file,
                    ec->read_only ? "" : " for writing", g_strerror(err),
                    hint ? " (use --read-only?)" : "");
        return false;
    }
    if (fstat(e->fd, &st) < 0) {
        g_set_error(errp, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot stat '%s': %s", ec->file, g_strerror(errno));
        return false;
    }
    if (S_ISBLK(st.st_mode)) {
        e->block_device = true;
        if (ioctl(e->fd, BLKGETSIZE64, &image_size) < 0) {
            g_set_error(errp, G_FILE_ERROR, g_file_error_from_errno(errno),
                        "cannot get the size of '%s': %s", ec->file,
                        g_strerror(errno));
            return false;
        }
    } else if (S_ISREG(st.st_mode)) {
        image_size = st.st_size;
    } else {
        g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "'%s' is neither a regular file nor a block device",
                    ec->file);
        return false;
    }
    if (ec->offset > image_size) {
        g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "offset %" PRIu64 " is past the end of '%s' (%" PRIu64
                    " bytes)", ec->offset, ec->file, image_size);
        return false;
    }
    e->offset = ec->offset;
    e->size = ec->size_set ? ec->size : image_size - ec->offset;
    if (e->size > image_size - ec->offset) {
        g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "the window %" PRIu64 "+%" PRIu64 " does not fit in '%s' "
                    "(%" PRIu64 " bytes)", ec->offset, e->size, ec->file,
                    image_size);
        return false;
    }

    e->min_block = 1;
    e->fd_buffered = -1;
    if (e->direct) {
        char proc[64];

        e->dio_align = direct_alignment(e->fd, e->block_device);
        if (e->offset % e->dio_align) {
            g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "with --cache=none the offset must be a multiple "
                        "of %u", e->dio_align);
            return false;
        }
        /*
         * Requests O_DIRECT cannot take (unaligned ones) go through a
         * second, buffered descriptor of the same file.  Clients are asked
         * to align to the device's block, unless the size is not a
         * multiple of it: then the tail must stay reachable, and the
         * minimum is 1.
         */
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", e->fd);
        e->fd_buffered = open(proc, (flags & ~O_DIRECT));
        if (e->fd_buffered < 0) {
            g_set_error(errp, G_FILE_ERROR, g_file_error_from_errno(errno),
                        "cannot reopen '%s': %s", ec->file,
                        g_strerror(errno));
            return false;
        }
        e->min_block = (e->size % e->dio_align) ? 1 : e->dio_align;
    }
    e->pref_block = MAX(PREFERRED_BLOCK, e->min_block);
    e->max_payload = NBD_DEFAULT_MAX_PAYLOAD;
    e->hole_granularity = st.st_blksize > 0 && !e->block_device
                          ? (uint32_t)st.st_blksize : 4096;
    e->native_aio = e->direct && cfg->aio != AIO_MODE_THREADS;
    /* Buffered: cached reads batched through Linux AIO unless told not. */
    e->buffered_aio = !e->direct && cfg->aio != AIO_MODE_THREADS;

    e->tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_DF |
                NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;
    if (e->read_only) {
        e->tflags |= NBD_FLAG_READ_ONLY;
    } else {
        e->tflags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                     NBD_FLAG_SEND_FAST_ZERO;
    }
    return true;
}

void export_close(Export *e)
{
    if (e->fd >= 0) {
        close(e->fd);
    }
    if (e->fd_buffered >= 0) {
        close(e->fd_buffered);
    }
    g_free(e->name);
    g_free(e->description);
    g_free(e->path);
}

/* ---- reads and writes ---------------------------------------------- */

/* May O_DIRECT take this request as it is? */
static bool dio_aligned(const Export *e, const struct iovec *iov, int n,
                        off_t pos)
{
    uintptr_t bits = pos;
    int i;

    for (i = 0; i < n; i++) {
        bits |= (uintptr_t)iov[i].iov_base | iov[i].iov_len;
    }
    return (bits & (e->dio_align - 1)) == 0;
}

ssize_t coroutine_fn export_co_preadv(Export *e, struct iovec *iov, int n,
                                      uint64_t offset)
{
    off_t pos = e->offset + offset;

    if (unlikely(e->direct && !dio_aligned(e, iov, n, pos))) {
        return pool_co_preadv(e->fd_buffered, iov, n, pos);
    }
    if (e->native_aio) {
        LinuxAioState *s = laio_get(aio_current());

        if (likely(s)) {
            ssize_t r = laio_co_preadv(s, e->fd, iov, n, pos, 0);

            /*
             * Short: the end of the file (zeros follow) or an interrupted
             * transfer.  The pool's loop knows the difference; rare.
             */
            if (likely(r < 0 || (size_t)r == iov_size(iov, n))) {
                return r;
            }
            return pool_co_preadv(e->fd, iov, n, pos);
        }
    } else if (!e->direct && !fault_armed(FAULT_PREADV)) {
        /*
         * Served from the page cache without leaving this thread: through
         * Linux AIO with RWF_NOWAIT, so that the reads of one loop
         * iteration share one io_submit; else one preadv2 each.
         */
        LinuxAioState *s = e->buffered_aio ? laio_get(aio_current()) : NULL;
        ssize_t r;

        if (likely(s)) {
            r = laio_co_preadv(s, e->fd, iov, n, pos, RWF_NOWAIT);
            if (r != -EAGAIN && r != -EOPNOTSUPP) {
                return r;
            }
        } else {
            r = preadv2(e->fd, iov, n, pos, RWF_NOWAIT);
            if (r == (ssize_t)iov_size(iov, n)) {
                return r;
            }
        }
    }
    return pool_co_preadv(e->fd, iov, n, pos);
}

/*
 * A buffered write is a copy into the page cache: done here it costs about
 * 2 us per 4 KiB here, against 14 us through the thread pool.  But the
 * kernel may throttle a writer when too much is dirty, and that would
 * stall every connection of this loop: a write that took long sends the
 * export's writes to the pool for a while.
 */
/*
 * Big writes go to the pool anyway: their copy is long enough that the
 * hand-over is cheap, and the loop meanwhile receives the next payload,
 * so one connection's writes use more than one core.
 */
#define INLINE_WRITE_MAX (128 * 1024)
#define INLINE_WRITE_SLOW_NS (50 * 1000 * 1000)
#define POOL_WRITES_FOR_NS (200 * 1000 * 1000)

static ssize_t write_inline(Export *e, struct iovec *iov, int n, off_t pos)
{
    int64_t t0 = clock_ns(), t1;
    ssize_t r = file_pwritev_full(e->fd, iov, n, pos, 0);

    t1 = clock_ns();
    if (unlikely(t1 - t0 > INLINE_WRITE_SLOW_NS)) {
        atomic_set(&e->pool_writes_until, t1 + POOL_WRITES_FOR_NS);
    }
    return r;
}

ssize_t coroutine_fn export_co_pwritev(Export *e, struct iovec *iov, int n,
                                       uint64_t offset, bool fua)
{
    off_t pos = e->offset + offset;
    int rwf = fua || e->sync_writes ? RWF_DSYNC : 0;

    if (unlikely(e->direct && !dio_aligned(e, iov, n, pos))) {
        return pool_co_pwritev(POOL_WIDE, e->fd_buffered, iov, n, pos, rwf);
    }
    if (e->native_aio) {
        LinuxAioState *s = laio_get(aio_current());

        if (likely(s)) {
            return laio_co_pwritev(s, e->fd, iov, n, pos, rwf);
        }
    }
    if (!e->direct && !rwf && iov_size(iov, n) <= INLINE_WRITE_MAX &&
        clock_ns() >= atomic_read(&e->pool_writes_until)) {
        return write_inline(e, iov, n, pos);
    }
    /*
     * A write that waits for the device (O_DIRECT, FUA) gains from company;
     * buffered ones only queue for the inode lock: see POOL_NARROW.
     */
    return pool_co_pwritev(e->direct || rwf ? POOL_WIDE : POOL_NARROW,
                           e->fd, iov, n, pos, rwf);
}

int coroutine_fn export_co_flush(Export *e)
{
    return pool_co_fdatasync(e->fd);
}

/* fallocate, remembering that a mode is unsupported so we stop trying. */
static int coroutine_fn try_fallocate(Export *e, int *known, int mode,
                                      uint64_t offset, uint64_t len)
{
    int r;

    if (atomic_read(known) < 0) {
        return -EOPNOTSUPP;
    }
    r = pool_co_fallocate(e->fd, mode, e->offset + offset, len);
    if (r == -EOPNOTSUPP || r == -ENOTSUP || r == -ENOSYS) {
        atomic_set(known, -1);
        return -EOPNOTSUPP;
    }
    if (r == 0) {
        atomic_set(known, 1);
    }
    return r;
}

int coroutine_fn export_co_trim(Export *e, uint64_t offset, uint64_t len,
                                bool fua)
{
    uint64_t g = e->hole_granularity;
    uint64_t start, end;
    int r = 0;

    if (!e->discard) {
        return 0;
    }
    /* Round inward (in image offsets): only whole blocks are freed. */
    start = ((e->offset + offset + g - 1) / g) * g - e->offset;
    end = ((e->offset + offset + len) / g) * g - e->offset;
    if (end > start) {
        r = try_fallocate(e, &e->can_punch,
                          FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          start, end - start);
        if (r == -EOPNOTSUPP) {
            r = 0;              /* TRIM is advisory */
        }
    }
    if (r == 0 && fua) {
        r = export_co_flush(e);
    }
    return r;
}

static const char *zero_buf(void)
{
    static char *buf;

    /* Racy first use is harmless: both threads store equal buffers. */
    if (!atomic_load_acquire(&buf)) {
        char *b = export_buf_alloc(ZERO_CHUNK);
        char *expected = NULL;

        if (!b) {
            return NULL;
        }
        memset(b, 0, ZERO_CHUNK);
        if (!__atomic_compare_exchange_n(&buf, &expected, b, false,
                                         __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)) {
            free(b);
        }
    }
    return buf;
}

int coroutine_fn export_co_zero(Export *e, uint64_t offset, uint64_t len,
                                bool may_trim, bool fast, bool fua)
{
    int r = -EOPNOTSUPP;

    if (len == 0) {
        return fua ? export_co_flush(e) : 0;
    }
    if (may_trim && e->discard) {
        r = try_fallocate(e, &e->can_punch,
                          FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          offset, len);
    }
    if (r == -EOPNOTSUPP) {
        r = try_fallocate(e, &e->can_zero_range,
                          FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                          offset, len);
    }
    if (r == -EOPNOTSUPP) {
        const char *zeros;

        if (fast) {
            /* Only slow writes of zeroes remain: fail, change nothing. */
            return -ENOTSUP;
        }
        zeros = zero_buf();
        if (!zeros) {
            return -ENOMEM;
        }
        r = 0;
        while (len > 0 && r == 0) {
            size_t n = MIN(len, ZERO_CHUNK);
            struct iovec iov = { (void *)zeros, n };
            ssize_t w = export_co_pwritev(e, &iov, 1, offset, false);

            r = w < 0 ? (int)w : 0;
            offset += n;
            len -= n;
        }
    }
    if (r == 0 && fua) {
        r = export_co_flush(e);
    }
    return r;
}

int coroutine_fn export_co_cache(Export *e, uint64_t offset, uint64_t len)
{
    if (e->direct) {
        return 0;               /* nothing to warm: no page cache */
    }
    /* Starts readahead; does not wait for it. */
    return -posix_fadvise(e->fd, e->offset + offset, len,
                          POSIX_FADV_WILLNEED);
}

/* ---- page cache residency ------------------------------------------ */

/* cachestat(2), Linux 6.5; glibc has no wrapper yet. */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

struct export_cachestat_range {
    uint64_t off;
    uint64_t len;
};

/* The kernel's layout: every member is needed for its size. */
struct export_cachestat {
    uint64_t nr_cache;
    uint64_t nr_dirty;
    uint64_t nr_writeback;
    uint64_t nr_evicted;
    uint64_t nr_recently_evicted;
};

static int cachestat_works = 1;     /* atomic: 0 once the kernel says no */

bool export_cached(Export *e, uint64_t offset, uint64_t len)
{
    struct export_cachestat_range range;
    struct export_cachestat cs;
    uint64_t page = (uint64_t)getpagesize(), first, last;

    if (e->direct || !atomic_read(&cachestat_works)) {
        return false;
    }
    range.off = e->offset + offset;
    range.len = len;
    if (syscall(__NR_cachestat, e->fd, &range, &cs, 0) < 0) {
        if (errno == ENOSYS || errno == EOPNOTSUPP) {
            atomic_set(&cachestat_works, 0);
        }
        return false;
    }
    first = range.off / page;
    last = (range.off + len + page - 1) / page;
    return cs.nr_cache >= last - first;
}

/* ---- block status -------------------------------------------------- */

/*
 * One fd per (thread, export) for lseek: SEEK_DATA moves the file
 * position, and threads sharing one open file serialise on its lock.
 * Reopened through /proc so it is the same inode even if the path moved.
 */
#define MAX_CACHED_FDS 64
static __thread int lseek_fds[MAX_CACHED_FDS];
static __thread Export *lseek_fd_owner[MAX_CACHED_FDS];

static int lseek_fd(Export *e)
{
    int i;

    for (i = 0; i < MAX_CACHED_FDS; i++) {
        if (lseek_fd_owner[i] == e) {
            return lseek_fds[i];
        }
        if (!lseek_fd_owner[i]) {
            char path[64];
            int fd;

            snprintf(path, sizeof(path), "/proc/self/fd/%d", e->fd);
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                return e->fd;
            }
            lseek_fds[i] = fd;
            lseek_fd_owner[i] = e;
            return fd;
        }
    }
    return e->fd;
}

typedef struct ExtentBuilder {
    Extent *ext;
    int n;
    int max;
    uint32_t align;             /* min block size */
    uint64_t pos;               /* export offset reached so far */
    uint64_t end;               /* export offset where we stop */
    uint64_t export_end;
    bool full;                  /* an extent did not fit: stop */
} ExtentBuilder;

/* Append [pos, pos+len) with @flags, merging with the previous extent. */
static void extent_push(ExtentBuilder *b, uint64_t len, uint32_t flags)
{
    if (b->full) {
        return;
    }
    if (b->n > 0 && b->ext[b->n - 1].flags == flags) {
        b->ext[b->n - 1].length += len;
    } else if (b->n < b->max) {
        b->ext[b->n].length = len;
        b->ext[b->n].flags = flags;
        b->n++;
    } else {
        b->full = true;
        return;
    }
    b->pos += len;
}

/*
 * Status @flags holds from b->pos up to @boundary (export offset).  Keep
 * extents on min-block boundaries: an unaligned change of status inside a
 * block makes that block "data" (status 0 is always correct).
 */
static void extent_add(ExtentBuilder *b, uint64_t boundary, uint32_t flags)
{
    uint64_t a = b->align;
    uint64_t aligned;

    if (boundary > b->end) {
        boundary = b->end;
    }
    if (a <= 1 || boundary == b->end || boundary == b->export_end) {
        extent_push(b, boundary - b->pos, flags);
        return;
    }
    aligned = boundary / a * a;
    if (aligned > b->pos) {
        extent_push(b, aligned - b->pos, flags);
    }
    if (aligned < boundary) {
        uint64_t blk_end = MIN(aligned + a, b->export_end);

        if (b->pos < blk_end) {
            extent_push(b, blk_end - b->pos, 0);
        }
    }
}

int export_block_status(Export *e, uint64_t offset, uint64_t len,
                        Extent *ext, int max_extents)
{
    uint64_t a = e->min_block;
    ExtentBuilder b = {
        .ext = ext,
        .max = max_extents,
        .align = a,
        .pos = offset,
        /* Extents never run past the request (old clients insist). */
        .end = MIN(offset + len, e->size),
        .export_end = e->size,
    };
    int64_t deadline = clock_ns() + BLOCK_STATUS_BUDGET_NS;
    int fd, steps = 0;

    if (len == 0 || offset >= e->size || offset % a) {
        return -EINVAL;
    }
    if (e->block_device) {
        extent_add(&b, b.end, 0);
        return b.n;
    }
    fd = lseek_fd(e);
    while (b.pos < b.end && !b.full) {
        off_t img = e->offset + b.pos;
        off_t data, hole;

        if (++steps % 32 == 0 && clock_ns() > deadline && b.n > 0) {
            break;
        }
        data = lseek(fd, img, SEEK_DATA);
        if (data < 0 && errno == ENXIO) {
            /* Nothing but hole up to the end of the file. */
            extent_add(&b, b.end, NBD_STATE_HOLE | NBD_STATE_ZERO);
            break;
        }
        if (data < 0) {
            /* No SEEK_DATA here: everything is data. */
            extent_add(&b, b.end, 0);
            break;
        }
        if (data > img) {
            extent_add(&b, data - e->offset, NBD_STATE_HOLE | NBD_STATE_ZERO);
            continue;
        }
        hole = lseek(fd, img, SEEK_HOLE);
        if (hole < 0 || hole <= img) {
            extent_add(&b, b.end, 0);
            break;
        }
        extent_add(&b, hole - e->offset, 0);
    }
    return b.n;
}
