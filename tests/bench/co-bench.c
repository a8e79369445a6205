/*
 * co-bench: microbenchmarks of the runtime.
 *
 *   co-bench [--seconds S] [--file PATH] [--depth N]
 *
 * Prints ns per pooled coroutine create+enter+terminate, ns per
 * yield/enter pair, ns per BH schedule+poll with 1, 1000 and 100000 idle
 * BHs in existence, ns per cross-thread BH round trip (two aio_notify
 * wake-ups, with the loops sleeping and polling), and 4 KiB random
 * read IOPS through Linux AIO on one loop against a file opened with
 * O_DIRECT (created if --file is not given).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coro/aio.h"
#include "coro/linux-aio.h"
#include "coro/loop.h"

static double seconds = 0.5;
static char *file_arg;
static int depth = 32;

/* Run @fn(@arg, iterations) with growing counts until it lasts long enough. */
static double ns_per_op(void (*fn)(void *, long), void *arg)
{
    long n = 1000;

    for (;;) {
        int64_t t0 = clock_ns(), dt;

        fn(arg, n);
        dt = clock_ns() - t0;
        if (dt >= seconds * 1e9 || n > (1L << 40)) {
            return (double)dt / n;
        }
        n = dt > 1000000 ? (long)(n * (seconds * 1e9 / dt) * 1.1) : n * 10;
    }
}

static void noop(void *opaque)
{
}

static void bench_create(void *arg, long n)
{
    long i;

    for (i = 0; i < n; i++) {
        co_enter(co_create(noop, NULL));
    }
}

static void yielder(void *opaque)
{
    for (;;) {
        co_yield();
    }
}

static void bench_yield(void *arg, long n)
{
    Coroutine *co = arg;
    long i;

    for (i = 0; i < n; i++) {
        co_enter(co);
    }
}

typedef struct BHBench {
    AioContext *ctx;
    AioBH *bh;
    long runs;
} BHBench;

static void bh_cb(void *opaque)
{
    ((BHBench *)opaque)->runs++;
}

static void bench_bh(void *arg, long n)
{
    BHBench *b = arg;
    long i;

    for (i = 0; i < n; i++) {
        aio_bh_schedule(b->bh);
        aio_bh_poll(b->ctx);
    }
}

/* Full aio_poll iterations: schedule, then a (non-blocking) poll. */
static void bench_bh_aio_poll(void *arg, long n)
{
    BHBench *b = arg;
    long i;

    for (i = 0; i < n; i++) {
        aio_bh_schedule(b->bh);
        aio_poll(b->ctx, true);
    }
}

static void report(const char *what, double ns)
{
    printf("%-52s %9.1f ns\n", what, ns);
}

static void bench_bhs(void)
{
    static const int idle_counts[] = { 1, 1000, 100000 };
    BHBench b = { 0 };
    unsigned i;

    b.ctx = aio_context_new();
    aio_context_set_current(b.ctx);
    b.bh = aio_bh_new(b.ctx, bh_cb, &b, "bench", 0);
    for (i = 0; i < G_N_ELEMENTS(idle_counts); i++) {
        int n = idle_counts[i] - 1;      /* plus the one we schedule */
        AioBH **idle = g_new(AioBH *, n > 0 ? n : 1);
        char label[80];
        int j;

        for (j = 0; j < n; j++) {
            idle[j] = aio_bh_new(b.ctx, bh_cb, &b, "idle", 0);
        }
        snprintf(label, sizeof(label), "BH schedule+aio_bh_poll, %d BHs exist",
                 idle_counts[i]);
        report(label, ns_per_op(bench_bh, &b));
        snprintf(label, sizeof(label), "BH schedule+aio_poll, %d BHs exist",
                 idle_counts[i]);
        report(label, ns_per_op(bench_bh_aio_poll, &b));
        for (j = 0; j < n; j++) {
            aio_bh_delete(idle[j]);
        }
        while (aio_poll(b.ctx, false)) {
        }
        g_free(idle);
    }
    aio_bh_delete(b.bh);
    while (aio_poll(b.ctx, false)) {
    }
    aio_context_free(b.ctx);
}

/* ---- cross-thread wake-ups ---------------------------------------------- */

typedef struct PingPong {
    AioContext *main_ctx;
    AioBH *ping;                /* runs in the loop thread */
    AioBH *pong;                /* runs in the main thread */
    bool back;
} PingPong;

static void ping_cb(void *opaque)
{
    aio_bh_schedule(((PingPong *)opaque)->pong);
}

static void pong_cb(void *opaque)
{
    ((PingPong *)opaque)->back = true;
}

static void delete_bh(void *opaque)
{
    aio_bh_delete(opaque);
}

/* One round trip: a BH on the loop thread answers with a BH back here. */
static void bench_ping_pong(void *arg, long n)
{
    PingPong *p = arg;
    long i;

    for (i = 0; i < n; i++) {
        p->back = false;
        aio_bh_schedule(p->ping);
        while (!p->back) {
            aio_poll(p->main_ctx, true);
        }
    }
}

/*
 * A BH scheduled on another thread's loop and one scheduled back: two
 * aio_notify() wake-ups per round trip, through the eventfd while the
 * loops sleep, or caught by adaptive polling.
 */
static void bench_cross_thread(void)
{
    AioLoops *loops = aio_loops_start(1, true);
    AioContext *loop_ctx;
    PingPong p = { 0 };

    if (!loops) {
        perror("aio_loops_start");
        return;
    }
    loop_ctx = aio_loops_get(loops, 0);
    p.main_ctx = aio_context_new();
    aio_context_set_current(p.main_ctx);
    p.ping = aio_bh_new(loop_ctx, ping_cb, &p, "ping", 0);
    p.pong = aio_bh_new(p.main_ctx, pong_cb, &p, "pong", 0);
    report("cross-thread BH round trip, loops sleep",
           ns_per_op(bench_ping_pong, &p));
    aio_context_set_poll_max(loop_ctx, 100000);
    aio_context_set_poll_max(p.main_ctx, 100000);
    report("cross-thread BH round trip, 100 us polling",
           ns_per_op(bench_ping_pong, &p));
    aio_context_set_poll_max(loop_ctx, 0);
    /* The ping BH belongs to the loop: delete it there. */
    aio_bh_schedule_oneshot(loop_ctx, delete_bh, p.ping, "delete-ping");
    aio_loops_stop(loops);
    aio_bh_delete(p.pong);
    while (aio_poll(p.main_ctx, false)) {
    }
    aio_context_free(p.main_ctx);
}

/* ---- AIO ------------------------------------------------------------- */

typedef struct AioBench {
    LinuxAioState *laio;
    int fd;
    off_t blocks;
    int64_t deadline;
    long ops;
    long errors;
    int running;
    GRand *rand;
} AioBench;

static void reader(void *opaque)
{
    AioBench *b = opaque;
    void *buf;
    struct iovec iov;

    if (posix_memalign(&buf, 4096, 4096)) {
        abort();
    }
    iov.iov_base = buf;
    iov.iov_len = 4096;
    while (clock_ns() < b->deadline) {
        off_t blk = g_rand_int_range(b->rand, 0, (gint32)b->blocks);

        if (laio_co_preadv(b->laio, b->fd, &iov, 1, blk * 4096, 0) != 4096) {
            b->errors++;
        }
        b->ops++;
    }
    free(buf);
    b->running--;
}

static void bench_aio(void)
{
    AioBench b = { 0 };
    AioContext *ctx = aio_context_new();
    char *path = NULL;
    LaioStats st;
    int64_t t0;
    double dt;
    int i;

    aio_context_set_current(ctx);
    b.laio = laio_get(ctx);
    if (!b.laio) {
        printf("linux-aio: io_setup unavailable: %s\n", strerror(errno));
        aio_context_free(ctx);
        return;
    }
    if (file_arg) {
        b.fd = open(file_arg, O_RDONLY | O_DIRECT | O_CLOEXEC);
    } else {
        /* 256 MiB of non-zero data, so reads touch real blocks. */
        char *chunk = g_malloc(1 << 20);

        path = g_build_filename(g_get_tmp_dir(), "co-bench-XXXXXX", NULL);
        b.fd = g_mkstemp(path);
        memset(chunk, 0x5a, 1 << 20);
        for (i = 0; i < 256; i++) {
            if (write(b.fd, chunk, 1 << 20) != 1 << 20) {
                perror("write");
                exit(1);
            }
        }
        fsync(b.fd);
        g_free(chunk);
        close(b.fd);
        b.fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    }
    if (b.fd < 0) {
        perror("open O_DIRECT");
        exit(1);
    }
    b.blocks = lseek(b.fd, 0, SEEK_END) / 4096;
    b.rand = g_rand_new_with_seed(42);
    b.deadline = clock_ns() + (int64_t)(seconds * 2e9);
    t0 = clock_ns();
    for (i = 0; i < depth; i++) {
        b.running++;
        aio_co_enter(ctx, co_create(reader, &b));
    }
    while (b.running) {
        aio_poll(ctx, true);
    }
    dt = (clock_ns() - t0) / 1e9;
    laio_stats(b.laio, &st);
    printf("linux-aio 4k random read, O_DIRECT, QD%-3d %13.0f IOPS"
           "  (%.1f iocbs per io_submit, %ld errors)\n",
           depth, b.ops / dt,
           st.submit_calls ? (double)st.submitted / st.submit_calls : 0.0,
           b.errors);
    close(b.fd);
    if (path) {
        unlink(path);
        g_free(path);
    }
    g_rand_free(b.rand);
    while (aio_poll(ctx, false)) {
    }
    aio_context_free(ctx);
}

int main(int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "seconds", 's', 0, G_OPTION_ARG_DOUBLE, &seconds,
          "time per measurement (default 0.5)", "S" },
        { "file", 'f', 0, G_OPTION_ARG_FILENAME, &file_arg,
          "file for the AIO benchmark (default: a 256 MiB temporary file)",
          "PATH" },
        { "depth", 'd', 0, G_OPTION_ARG_INT, &depth,
          "AIO queue depth (default 32)", "N" },
        G_OPTION_ENTRY_NULL,
    };
    GOptionContext *oc = g_option_context_new("- runtime microbenchmarks");
    GError *err = NULL;
    Coroutine *co;

    g_option_context_add_main_entries(oc, entries, NULL);
    if (!g_option_context_parse(oc, &argc, &argv, &err)) {
        fprintf(stderr, "co-bench: %s\n", err->message);
        return 2;
    }
    g_option_context_free(oc);

    report("pooled coroutine create+enter+terminate",
           ns_per_op(bench_create, NULL));
    co = co_create(yielder, NULL);
    co_enter(co);
    report("yield+enter pair", ns_per_op(bench_yield, co));
    bench_bhs();
    bench_cross_thread();
    bench_aio();
    return 0;
}
