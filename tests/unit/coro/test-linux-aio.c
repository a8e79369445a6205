/*
 * Unit tests for Linux AIO and the thread-pool file operations, on a
 * temporary file (O_DIRECT where the file system allows it).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coro/aio.h"
#include "coro/linux-aio.h"
#include "coro/thread-pool.h"

#define BLK 4096

static AioContext *ctx;
static LinuxAioState *laio;
static int fd = -1;
static char *path;

/* Open a fresh temporary file; O_DIRECT if the file system supports it. */
static void open_file(void)
{
    path = g_build_filename(g_get_tmp_dir(), "rawnbd-laio-XXXXXX", NULL);
    fd = g_mkstemp_full(path, O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fd = g_mkstemp_full(path, O_RDWR | O_CLOEXEC, 0600);
    }
    g_assert_cmpint(fd, >=, 0);
    unlink(path);
}

static void teardown(void);

/* Returns false (test skipped) where io_setup is unavailable. */
static bool setup(void)
{
    ctx = aio_context_new();
    g_assert_nonnull(ctx);
    aio_context_set_current(ctx);
    open_file();
    laio = laio_get(ctx);
    if (!laio) {
        g_test_skip("io_setup is not available here");
        teardown();
        return false;
    }
    return true;
}

static void teardown(void)
{
    while (aio_poll(ctx, false)) {
    }
    aio_context_free(ctx);
    ctx = NULL;
    laio = NULL;
    close(fd);
    fd = -1;
    g_free(path);
    path = NULL;
}

/* For tests that run in a subprocess: can this machine do Linux AIO? */
static bool laio_available(void)
{
    AioContext *probe = aio_context_new();
    bool ok;

    g_assert_nonnull(probe);
    ok = laio_get(probe) != NULL;
    aio_context_free(probe);
    if (!ok) {
        g_test_skip("io_setup is not available here");
    }
    return ok;
}

static void *alloc_buf(size_t size, int fill)
{
    void *p = NULL;

    g_assert_cmpint(posix_memalign(&p, BLK, size), ==, 0);
    memset(p, fill, size);
    return p;
}

typedef struct Job {
    bool is_read;
    off_t offset;
    size_t len;
    char *buf;
    ssize_t ret;
    int *done;
    bool bad_fd;                /* use an fd io_submit refuses */
} Job;

static void job_co(void *opaque)
{
    Job *j = opaque;
    struct iovec iov = { j->buf, j->len };
    int jfd = j->bad_fd ? 999 : fd;

    j->ret = j->is_read ? laio_co_preadv(laio, jfd, &iov, 1, j->offset, 0)
                        : laio_co_pwritev(laio, jfd, &iov, 1, j->offset, 0);
    (*j->done)++;
}

/* Start @n jobs in the same loop iteration and wait for all of them. */
static void run_jobs(Job *jobs, int n)
{
    int done = 0, i;

    for (i = 0; i < n; i++) {
        jobs[i].done = &done;
        aio_co_enter(ctx, co_create(job_co, &jobs[i]));
    }
    while (done < n) {
        aio_poll(ctx, true);
    }
}

static void test_read_write(void)
{
    enum { N = 32 };
    Job jobs[N];
    int i;

    if (!setup()) {
        return;
    }
    for (i = 0; i < N; i++) {
        jobs[i] = (Job) { .is_read = false, .offset = (off_t)i * 3 * BLK,
                          .len = 2 * BLK, .buf = alloc_buf(2 * BLK, 'A' + i) };
    }
    run_jobs(jobs, N);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(jobs[i].ret, ==, 2 * BLK);
        memset(jobs[i].buf, 0, 2 * BLK);
        jobs[i].is_read = true;
    }
    run_jobs(jobs, N);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(jobs[i].ret, ==, 2 * BLK);
        g_assert_cmpint(jobs[i].buf[0], ==, 'A' + i);
        g_assert_cmpint(jobs[i].buf[2 * BLK - 1], ==, 'A' + i);
        free(jobs[i].buf);
    }
    teardown();
}

/* All requests of one iteration go to the kernel in one io_submit. */
static void test_batching(void)
{
    enum { N = 64 };
    Job jobs[N];
    LaioStats before, after;
    int i;

    if (!setup()) {
        return;
    }
    g_assert_cmpint(ftruncate(fd, N * BLK), ==, 0);
    for (i = 0; i < N; i++) {
        jobs[i] = (Job) { .is_read = true, .offset = (off_t)i * BLK,
                          .len = BLK, .buf = alloc_buf(BLK, 0xff) };
    }
    laio_stats(laio, &before);
    run_jobs(jobs, N);
    laio_stats(laio, &after);
    g_assert_cmpuint(after.submitted - before.submitted, ==, N);
    g_assert_cmpuint(after.submit_calls - before.submit_calls, ==, 1);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(jobs[i].ret, ==, BLK);
        g_assert_cmpint(jobs[i].buf[0], ==, 0);
        free(jobs[i].buf);
    }
    teardown();
}

typedef struct PlugJob {
    int *done;
    ssize_t ret;
    char *buf;
} PlugJob;

/* Plugging holds submissions back until the last unplug. */
static void test_plug(void)
{
    enum { N = 8 };
    Job jobs[N];
    LaioStats before, mid, after;
    int done = 0, i;

    if (!setup()) {
        return;
    }
    g_assert_cmpint(ftruncate(fd, N * BLK), ==, 0);
    laio_stats(laio, &before);
    laio_plug(laio);
    laio_plug(laio);
    for (i = 0; i < N; i++) {
        jobs[i] = (Job) { .is_read = true, .offset = (off_t)i * BLK,
                          .len = BLK, .buf = alloc_buf(BLK, 1),
                          .done = &done };
        aio_co_enter(ctx, co_create(job_co, &jobs[i]));
        while (aio_poll(ctx, false)) {
        }
    }
    laio_unplug(laio);
    while (aio_poll(ctx, false)) {
    }
    laio_stats(laio, &mid);
    g_assert_cmpuint(mid.submit_calls, ==, before.submit_calls);
    g_assert_cmpint(done, ==, 0);
    laio_unplug(laio);
    while (done < N) {
        aio_poll(ctx, true);
    }
    laio_stats(laio, &after);
    g_assert_cmpuint(after.submit_calls - before.submit_calls, ==, 1);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(jobs[i].ret, ==, BLK);
        free(jobs[i].buf);
    }
    teardown();
}

/* A read that crosses the end of the file is completed with zeros. */
static void test_eof_pads_zeros(void)
{
    Job job;
    char *data;
    int i;

    if (!setup()) {
        return;
    }
    data = alloc_buf(3 * BLK, 'x');
    g_assert_cmpint(pwrite(fd, data, 3 * BLK, 0), ==, 3 * BLK);
    g_assert_cmpint(ftruncate(fd, 2 * BLK + 100), ==, 0);
    job = (Job) { .is_read = true, .offset = BLK, .len = 2 * BLK,
                  .buf = alloc_buf(2 * BLK, 0xee) };
    run_jobs(&job, 1);
    g_assert_cmpint(job.ret, ==, 2 * BLK);
    for (i = 0; i < BLK + 100; i++) {
        g_assert_cmpint(job.buf[i], ==, 'x');
    }
    for (; i < 2 * BLK; i++) {
        g_assert_cmpint(job.buf[i], ==, 0);
    }
    /* Entirely past the end: all zeros. */
    memset(job.buf, 0xee, 2 * BLK);
    job.offset = 16 * BLK;
    run_jobs(&job, 1);
    g_assert_cmpint(job.ret, ==, 2 * BLK);
    g_assert_cmpint(job.buf[0], ==, 0);
    g_assert_cmpint(job.buf[2 * BLK - 1], ==, 0);
    free(job.buf);
    free(data);
    teardown();
}

/* A write cut short (here by RLIMIT_FSIZE) is an error, not success. */
static void test_short_write(void)
{
    if (g_test_subprocess()) {
        struct rlimit rl = { 2 * BLK, 2 * BLK };
        Job job;

        if (!setup()) {
            return;
        }
        signal(SIGXFSZ, SIG_IGN);
        g_assert_cmpint(setrlimit(RLIMIT_FSIZE, &rl), ==, 0);
        job = (Job) { .is_read = false, .offset = BLK, .len = 2 * BLK,
                      .buf = alloc_buf(2 * BLK, 'w') };
        run_jobs(&job, 1);
        g_assert_cmpint(job.ret, ==, -ENOSPC);
        free(job.buf);
        teardown();
        return;
    }
    if (!laio_available()) {
        return;
    }
    g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
    g_test_trap_assert_passed();
}

/* A request the kernel refuses at submission fails alone. */
static void test_submit_error(void)
{
    Job jobs[3];
    LaioStats st;
    int i;

    if (!setup()) {
        return;
    }
    g_assert_cmpint(ftruncate(fd, 4 * BLK), ==, 0);
    for (i = 0; i < 3; i++) {
        jobs[i] = (Job) { .is_read = true, .offset = (off_t)i * BLK,
                          .len = BLK, .buf = alloc_buf(BLK, 0) };
    }
    jobs[1].bad_fd = true;      /* io_submit fails it with EBADF */
    run_jobs(jobs, 3);
    g_assert_cmpint(jobs[0].ret, ==, BLK);
    g_assert_cmpint(jobs[1].ret, ==, -EBADF);
    g_assert_cmpint(jobs[2].ret, ==, BLK);
    laio_stats(laio, &st);
    g_assert_cmpuint(st.submitted, ==, 2);
    for (i = 0; i < 3; i++) {
        free(jobs[i].buf);
    }
    teardown();
}

/* More requests than the kernel's io context holds: EAGAIN is retried. */
static void test_eagain_retried(void)
{
    enum { N = 400 };
    Job *jobs = g_new(Job, N);
    LaioStats st;
    int i;

    laio_set_limits(1, 1024);
    if (!setup()) {
        laio_set_limits(1024, 1024);
        g_free(jobs);
        return;
    }
    laio_set_limits(1024, 1024);
    for (i = 0; i < N; i++) {
        jobs[i] = (Job) { .is_read = false, .offset = (off_t)i * BLK,
                          .len = BLK, .buf = alloc_buf(BLK, i & 0x7f) };
    }
    run_jobs(jobs, N);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(jobs[i].ret, ==, BLK);
        memset(jobs[i].buf, 0xff, BLK);
        jobs[i].is_read = true;
    }
    run_jobs(jobs, N);
    laio_stats(laio, &st);
    g_assert_cmpuint(st.eagain, >, 0);
    g_assert_cmpuint(st.completed, ==, 2 * N);
    for (i = 0; i < N; i++) {
        g_assert_cmpint(jobs[i].ret, ==, BLK);
        g_assert_cmpint(jobs[i].buf[BLK - 1], ==, i & 0x7f);
        free(jobs[i].buf);
    }
    g_free(jobs);
    teardown();
}

/*
 * RWF_NOWAIT reads of a buffered file: cached data comes back inside
 * io_submit; a range only partly cached fails with -EAGAIN instead of
 * being taken for the end of the file and padded with zeros.
 */
typedef struct NowaitJob {
    int fd;
    off_t offset;
    char *buf;
    ssize_t ret;
    bool done;
} NowaitJob;

static void nowait_co(void *opaque)
{
    NowaitJob *j = opaque;
    struct iovec iov = { j->buf, 4 * BLK };

    j->ret = laio_co_preadv(laio, j->fd, &iov, 1, j->offset, RWF_NOWAIT);
    j->done = true;
}

static void test_nowait_buffered(void)
{
    char *tpath = g_build_filename(g_get_tmp_dir(), "rawnbd-nowait-XXXXXX",
                                   NULL);
    NowaitJob j = { 0 }, j2;
    char *data = alloc_buf(8 * BLK, 'n');
    LaioStats st;

    if (!setup()) {
        g_free(tpath);
        free(data);
        return;
    }
    j.fd = g_mkstemp(tpath);
    g_assert_cmpint(j.fd, >=, 0);
    unlink(tpath);
    /* Block by block, so that the page cache holds small folios. */
    for (int i = 0; i < 8; i++) {
        g_assert_cmpint(pwrite(j.fd, data, BLK, i * BLK), ==, BLK);
    }
    g_assert_cmpint(fdatasync(j.fd), ==, 0);
    j.buf = alloc_buf(4 * BLK, 0);

    /* All cached: the data. */
    aio_co_enter(ctx, co_create(nowait_co, &j));
    while (!j.done) {
        aio_poll(ctx, true);
    }
    g_assert_cmpint(j.ret, ==, 4 * BLK);
    g_assert_cmpint(j.buf[4 * BLK - 1], ==, 'n');
    /* Alone in its loop iteration: one preadv2, no io_submit. */
    laio_stats(laio, &st);
    g_assert_cmpint(st.sync_reads, ==, 1);
    g_assert_cmpint(st.submit_calls, ==, 0);

    /* Two in one iteration: one io_submit carries both. */
    j2 = j;
    j2.offset = 2 * BLK;
    j2.buf = alloc_buf(4 * BLK, 0);
    j.done = false;
    aio_co_enter(ctx, co_create(nowait_co, &j));
    aio_co_enter(ctx, co_create(nowait_co, &j2));
    while (!j.done || !j2.done) {
        aio_poll(ctx, true);
    }
    g_assert_cmpint(j.ret, ==, 4 * BLK);
    g_assert_cmpint(j2.ret, ==, 4 * BLK);
    g_assert_cmpint(j2.buf[0], ==, 'n');
    laio_stats(laio, &st);
    g_assert_cmpint(st.sync_reads, ==, 1);
    g_assert_cmpint(st.submit_calls, ==, 1);
    g_assert_cmpint(st.submitted, ==, 2);
    free(j2.buf);

    /* The second half evicted: -EAGAIN, not zeros.  (Skip if the kernel
     * keeps the pages anyway.) */
    posix_fadvise(j.fd, 6 * BLK, 2 * BLK, POSIX_FADV_DONTNEED);
    memset(j.buf, 0, 4 * BLK);
    j.done = false;
    j.offset = 4 * BLK;
    aio_co_enter(ctx, co_create(nowait_co, &j));
    while (!j.done) {
        aio_poll(ctx, true);
    }
    if (j.ret == 4 * BLK) {
        g_assert_cmpint(j.buf[4 * BLK - 1], ==, 'n');
        g_test_skip("the evicted pages stayed cached");
    } else {
        g_assert_cmpint(j.ret, ==, -EAGAIN);
    }
    close(j.fd);
    free(j.buf);
    free(data);
    g_free(tpath);
    teardown();
}

/* ---- thread pool ----------------------------------------------------- */

typedef struct PoolJob {
    int wfd;
    pid_t home;
    bool same_thread;
    bool ok;
    bool done;
} PoolJob;

static void pool_co(void *opaque)
{
    PoolJob *p = opaque;
    char *wbuf = alloc_buf(3 * BLK, 'p'), *rbuf = alloc_buf(3 * BLK, 0);
    struct iovec wv[2] = { { wbuf, BLK }, { wbuf + BLK, 2 * BLK } };
    struct iovec rv = { rbuf, 3 * BLK };
    struct stat st;
    bool ok = true;

    ok &= pool_co_pwritev(POOL_WIDE, p->wfd, wv, 2, 0, RWF_DSYNC) == 3 * BLK;
    ok &= pool_co_fdatasync(p->wfd) == 0;
    ok &= pool_co_preadv(p->wfd, &rv, 1, 0) == 3 * BLK;
    ok &= memcmp(wbuf, rbuf, 3 * BLK) == 0;
    /* Punch the middle block: it reads back as zeros. */
    ok &= pool_co_fallocate(p->wfd, FALLOC_FL_PUNCH_HOLE |
                            FALLOC_FL_KEEP_SIZE, BLK, BLK) == 0;
    ok &= pool_co_preadv(p->wfd, &rv, 1, 0) == 3 * BLK;
    ok &= rbuf[BLK] == 0 && rbuf[2 * BLK - 1] == 0 && rbuf[0] == 'p';
    ok &= fstat(p->wfd, &st) == 0 && st.st_size == 3 * BLK;
    /* Past the end: padded with zeros. */
    memset(rbuf, 1, 3 * BLK);
    ok &= pool_co_preadv(p->wfd, &rv, 1, 2 * BLK) == 3 * BLK;
    ok &= rbuf[0] == 'p' && rbuf[BLK] == 0;
    /* Errors come back as -errno. */
    ok &= pool_co_fallocate(-1, 0, 0, BLK) == -EBADF;
    p->same_thread = gettid() == p->home;
    p->ok = ok;
    p->done = true;
    free(wbuf);
    free(rbuf);
}

static void test_thread_pool(void)
{
    PoolJob p = { .home = gettid() };
    char *tpath = g_build_filename(g_get_tmp_dir(), "rawnbd-pool-XXXXXX",
                                   NULL);

    ctx = aio_context_new();
    aio_context_set_current(ctx);
    p.wfd = g_mkstemp(tpath);
    g_assert_cmpint(p.wfd, >=, 0);
    unlink(tpath);
    aio_co_enter(ctx, co_create(pool_co, &p));
    while (!p.done) {
        aio_poll(ctx, true);
    }
    g_assert_true(p.ok);
    g_assert_true(p.same_thread);
    close(p.wfd);
    g_free(tpath);
    while (aio_poll(ctx, false)) {
    }
    aio_context_free(ctx);
    ctx = NULL;
}

/*
 * Each kind of pool runs at most its own number of calls at once: the
 * narrow one as many as it was given, the wide one more.
 */
enum { BOUND_CALLS = 16, NARROW_MAX = 2 };

typedef struct BoundState {
    pthread_mutex_t lock;       /* not GMutex: its futexes hide from TSan */
    int running;
    int most;
    int done;
} BoundState;

static long bound_call(void *opaque)
{
    BoundState *b = opaque;

    pthread_mutex_lock(&b->lock);
    b->running++;
    b->most = MAX(b->most, b->running);
    pthread_mutex_unlock(&b->lock);
    g_usleep(20 * 1000);
    pthread_mutex_lock(&b->lock);
    b->running--;
    pthread_mutex_unlock(&b->lock);
    return 7;
}

typedef struct BoundJob {
    BoundState *state;
    PoolKind kind;
} BoundJob;

static void bound_co(void *opaque)
{
    BoundJob *j = opaque;
    long r = thread_pool_co_run(j->kind, bound_call, j->state);

    g_assert_cmpint(r, ==, 7);
    j->state->done++;           /* the loop's thread: no lock needed */
}

static int pool_most_at_once(PoolKind kind)
{
    BoundState b = { .running = 0 };
    BoundJob jobs[BOUND_CALLS];
    int i;

    pthread_mutex_init(&b.lock, NULL);
    for (i = 0; i < BOUND_CALLS; i++) {
        jobs[i] = (BoundJob) { .state = &b, .kind = kind };
        aio_co_enter(ctx, co_create(bound_co, &jobs[i]));
    }
    while (b.done < BOUND_CALLS) {
        aio_poll(ctx, true);
    }
    pthread_mutex_destroy(&b.lock);
    return b.most;
}

static void test_pool_kinds(void)
{
    ctx = aio_context_new();
    aio_context_set_current(ctx);
    thread_pool_set_max_threads(POOL_NARROW, NARROW_MAX);
    g_assert_cmpint(pool_most_at_once(POOL_NARROW), ==, NARROW_MAX);
    g_assert_cmpint(pool_most_at_once(POOL_WIDE), >, NARROW_MAX);
    while (aio_poll(ctx, false)) {
    }
    aio_context_free(ctx);
    ctx = NULL;
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/linux-aio/read-write", test_read_write);
    g_test_add_func("/linux-aio/batching", test_batching);
    g_test_add_func("/linux-aio/plug", test_plug);
    g_test_add_func("/linux-aio/eof-pads-zeros", test_eof_pads_zeros);
    g_test_add_func("/linux-aio/short-write", test_short_write);
    g_test_add_func("/linux-aio/submit-error", test_submit_error);
    g_test_add_func("/linux-aio/eagain-retried", test_eagain_retried);
    g_test_add_func("/linux-aio/nowait-buffered", test_nowait_buffered);
    g_test_add_func("/thread-pool/file-ops", test_thread_pool);
    g_test_add_func("/thread-pool/kinds-bounded", test_pool_kinds);
    ret = g_test_run();
    co_pool_shutdown();
    return ret;
}
