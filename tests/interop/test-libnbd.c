/*
 * test-libnbd.c: the real rawnbd binary driven through libnbd's C API.
 *
 * Each test starts its own server ($RAWNBD) on a unix socket in a private
 * temporary directory, talks to it with libnbd, and stops it with SIGTERM
 * (or lets it exit after its last client): the server must then exit 0,
 * which under ASan also means no leak report.  Only the PIDs started here
 * are signalled; PR_SET_PDEATHSIG kills them if this program dies.
 *
 * Bad requests are sent with libnbd's strict mode off, and every expected
 * failure is checked to come from the server ("command failed"), not from
 * libnbd refusing to send it.
 *
 * GLib's GTest; run with --tap.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <inttypes.h>
#include <libnbd.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define MAX_PAYLOAD (64 * MiB)
#define HZ (LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO)

/* ---- checks that do not abort --------------------------------------- */

/* Record a failure and go on, so one test reports every mismatch. */
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            g_test_message("%s:%d: check failed: %s", __FILE__, __LINE__,  \
                           #cond);                                         \
            g_test_message(__VA_ARGS__);                                   \
            g_test_fail();                                                 \
        }                                                                  \
    } while (0)

/* A libnbd call that must succeed (fatal: later steps depend on it). */
#define NBD_OK(call)                                                       \
    do {                                                                   \
        if ((call) == -1) {                                                \
            g_error("%s:%d: %s failed: %s", __FILE__, __LINE__, #call,     \
                    nbd_get_error());                                      \
        }                                                                  \
    } while (0)

/* @r (a libnbd return) must be a failure with @err sent by the server. */
static void expect_err(int r, int err, const char *what)
{
    const char *msg;
    int got;

    if (r != -1) {
        g_test_message("%s: succeeded, expected %s", what, strerror(err));
        g_test_fail();
        return;
    }
    got = nbd_get_errno();
    msg = nbd_get_error();
    if (got != err || !msg || !strstr(msg, "command failed")) {
        g_test_message("%s: expected the server to fail it with %s, got "
                       "errno %d: %s", what, strerror(err), got,
                       msg ? msg : "(no message)");
        g_test_fail();
    }
}

static void expect_ok(int r, const char *what)
{
    if (r == -1) {
        g_test_message("%s: failed: %s", what, nbd_get_error());
        g_test_fail();
    }
}

/* ---- data patterns and images ------------------------------------------ */

static uint64_t mix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* Bytes of pattern @seed as found at absolute position @pos. */
static void fill(void *buf, size_t len, uint32_t seed, uint64_t pos)
{
    uint8_t *p = buf;
    size_t i = 0;

    while (i < len) {
        uint64_t at = pos + i;
        uint64_t w = mix(((uint64_t)seed << 48) ^ (at / 8));

        if (at % 8 == 0 && len - i >= 8) {
            memcpy(p + i, &w, 8);
            i += 8;
        } else {
            p[i++] = (uint8_t)(w >> (8 * (at % 8)));
        }
    }
}

static bool matches(const void *buf, size_t len, uint32_t seed, uint64_t pos)
{
    uint8_t *want = g_malloc(len);
    bool ok;

    fill(want, len, seed, pos);
    ok = memcmp(buf, want, len) == 0;
    g_free(want);
    return ok;
}

static bool all_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    size_t i;

    for (i = 0; i < len; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

typedef struct Region {
    uint64_t off, len;
    uint32_t seed;
} Region;

/* A sparse file of @size bytes with the @n data regions; fsynced. */
static void make_image(const char *path, uint64_t size, const Region *r,
                       int n)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int i;

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, size), ==, 0);
    for (i = 0; i < n; i++) {
        uint8_t *buf = g_malloc(r[i].len);

        fill(buf, r[i].len, r[i].seed, r[i].off);
        g_assert_cmpint(pwrite(fd, buf, r[i].len, r[i].off), ==, r[i].len);
        g_free(buf);
    }
    g_assert_cmpint(fsync(fd), ==, 0);
    close(fd);
}

static void read_image(const char *path, void *buf, size_t len, uint64_t off)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(pread(fd, buf, len, off), ==, len);
    close(fd);
}

static int64_t st_blocks(const char *path)
{
    struct stat st;

    g_assert_cmpint(stat(path, &st), ==, 0);
    return st.st_blocks;
}

static off_t seek(const char *path, off_t off, int whence)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    off_t r;

    g_assert_cmpint(fd, >=, 0);
    r = lseek(fd, off, whence);
    close(fd);
    return r;
}

/*
 * The TRIM/zero tests expect holes punched in 4 KiB file-system blocks
 * (ext4, xfs, tmpfs...); elsewhere they skip.
 */
static bool fs_blocks_4k(const char *path)
{
    struct stat st;

    if (stat(path, &st) == 0 && st.st_blksize == 4096 &&
        seek(path, 0, SEEK_HOLE) >= 0) {
        return true;
    }
    g_test_skip("the temporary directory's file system does not have 4 KiB "
                "blocks with SEEK_HOLE");
    return false;
}

/* --cache=none needs O_DIRECT where the images live; else skip. */
static bool direct_io_ok(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);

    if (fd >= 0) {
        close(fd);
        return true;
    }
    g_test_skip("the temporary directory does not support O_DIRECT");
    return false;
}

/* ---- the server --------------------------------------------------------- */

typedef struct Srv {
    GPid pid;
    char *dir;              /* private directory: socket, images */
    char *sock;
    char *image;            /* the image served */
    char *log;              /* the server's stderr, appended */
    int log_fd;
    char *uri;
    bool reaped;
    int status;
} Srv;

/* In the child: die with us, and write stderr to the server's log. */
static void child_setup(gpointer opaque)
{
    Srv *s = opaque;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(s->log_fd, STDERR_FILENO);
}

static char *srv_path(Srv *s, const char *name)
{
    return g_build_filename(s->dir, name, NULL);
}

/* A private directory with a socket path and an image of @size bytes
 * holding the @n data regions @r (the rest is holes). */
static Srv *srv_new(uint64_t size, const Region *r, int n)
{
    Srv *s = g_new0(Srv, 1);
    GError *err = NULL;

    s->dir = g_dir_make_tmp("rawnbd-libnbd-XXXXXX", &err);
    g_assert_no_error(err);
    s->sock = srv_path(s, "nbd.sock");
    s->image = srv_path(s, "disk.img");
    s->log = srv_path(s, "server.log");
    s->log_fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    g_assert_cmpint(s->log_fd, >=, 0);
    make_image(s->image, size, r, n);
    return s;
}

/*
 * Start rawnbd on @s's socket serving @s's image with the NULL-terminated
 * extra options; returns once it prints its URI (it then listens).
 */
static void srv_start(Srv *s, ...)
{
    const char *rawnbd = g_getenv("RAWNBD");
    GPtrArray *argv = g_ptr_array_new();
    GError *err = NULL;
    const char *arg;
    GString *line = g_string_new(NULL);
    gint64 deadline;
    va_list ap;
    int out;

    g_assert_nonnull(rawnbd);
    g_ptr_array_add(argv, (char *)rawnbd);
    g_ptr_array_add(argv, (char *)"--print-uri");
    g_ptr_array_add(argv, (char *)"-k");
    g_ptr_array_add(argv, s->sock);
    va_start(ap, s);
    while ((arg = va_arg(ap, const char *))) {
        g_ptr_array_add(argv, (char *)arg);
    }
    va_end(ap);
    g_ptr_array_add(argv, s->image);
    g_ptr_array_add(argv, NULL);
    if (!g_spawn_async_with_pipes(NULL, (char **)argv->pdata, NULL,
                                  G_SPAWN_DO_NOT_REAP_CHILD, child_setup,
                                  s, &s->pid, NULL, &out, NULL, &err)) {
        g_error("cannot start %s: %s", rawnbd, err->message);
    }
    g_ptr_array_free(argv, TRUE);
    s->reaped = false;

    deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (!line->len || line->str[line->len - 1] != '\n') {
        struct pollfd pfd = { out, POLLIN, 0 };
        gint64 left = (deadline - g_get_monotonic_time()) / 1000;
        char c;

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) {
            g_error("rawnbd printed no URI within 30 s");
        }
        if (read(out, &c, 1) != 1) {
            char *log = NULL;

            g_file_get_contents(s->log, &log, NULL, NULL);
            g_error("rawnbd exited before listening: %s", log ? log : "");
        }
        g_string_append_c(line, c);
    }
    close(out);
    g_strchomp(line->str);
    g_free(s->uri);             /* from an earlier start of this server */
    s->uri = g_string_free(line, FALSE);
}

/* Wait up to @secs for the server to exit; false if it is still running. */
static bool srv_wait(Srv *s, int secs)
{
    gint64 deadline = g_get_monotonic_time() + secs * G_USEC_PER_SEC;

    while (!s->reaped) {
        pid_t r = waitpid(s->pid, &s->status, WNOHANG);

        if (r == s->pid) {
            s->reaped = true;
            g_spawn_close_pid(s->pid);
            break;
        }
        g_assert_cmpint(r, ==, 0);
        if (g_get_monotonic_time() > deadline) {
            return false;
        }
        g_usleep(10000);
    }
    return true;
}

/* Show the server's log in the test output, from its first sanitizer
 * report if it has one (else its last 30 lines). */
static bool show_log(Srv *s, bool always)
{
    static const char *const marks[] = {
        "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
        "ThreadSanitizer",
    };
    char *text = NULL;
    char **lines;
    guint n, i, from, to;
    bool report = false;

    if (!g_file_get_contents(s->log, &text, NULL, NULL)) {
        return false;
    }
    lines = g_strsplit(text, "\n", -1);
    n = g_strv_length(lines);
    from = n > 30 ? n - 30 : 0;
    to = n;
    for (i = 0; i < n && !report; i++) {
        guint k;

        for (k = 0; k < G_N_ELEMENTS(marks); k++) {
            if (strstr(lines[i], marks[k])) {
                report = true;
                from = i;
                to = MIN(n, i + 60);
                break;
            }
        }
    }
    if (report || always) {
        g_test_message("--- server log %s ---", s->log);
        for (i = from; i < to; i++) {
            g_test_message("%s", lines[i]);
        }
    }
    g_strfreev(lines);
    g_free(text);
    return report;
}

static void check_exit_status(Srv *s)
{
    bool ok = WIFEXITED(s->status) && WEXITSTATUS(s->status) == 0;

    CHECK(!show_log(s, !ok), "sanitizer report in the server log");
    CHECK(ok, "rawnbd exited with status 0x%x", s->status);
}

/* Without -t, the server must exit 0 by itself after its last client. */
static void srv_exits(Srv *s)
{
    CHECK(srv_wait(s, 30), "rawnbd still running 30 s after its last "
          "client left");
    check_exit_status(s);
}

/* SIGTERM the server; it must exit 0 within 30 s. */
static void srv_stop(Srv *s)
{
    if (!s->reaped) {
        kill(s->pid, SIGTERM);
        if (!srv_wait(s, 30)) {
            kill(s->pid, SIGKILL);
            srv_wait(s, 30);
            CHECK(false, "rawnbd did not exit within 30 s of SIGTERM");
            return;
        }
    }
    check_exit_status(s);
}

static void rm_rf(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *name;

    if (!d) {
        return;
    }
    while ((name = g_dir_read_name(d))) {
        char *p = g_build_filename(dir, name, NULL);

        g_unlink(p);
        g_free(p);
    }
    g_dir_close(d);
    g_rmdir(dir);
}

static void srv_free(Srv *s)
{
    if (!s->reaped) {
        kill(s->pid, SIGKILL);
        srv_wait(s, 30);
    }
    rm_rf(s->dir);
    g_free(s->dir);
    close(s->log_fd);
    g_free(s->log);
    g_free(s->sock);
    g_free(s->image);
    g_free(s->uri);
    g_free(s);
}

/* ---- clients ------------------------------------------------------------- */

enum {
    OPEN_LAX = 1,           /* strict mode off: send what we are told */
    OPEN_NO_META = 2,       /* do not ask for base:allocation */
    OPEN_NO_SR = 4,         /* no structured replies */
};

static struct nbd_handle *open_nbd(Srv *s, int how)
{
    struct nbd_handle *h = nbd_create();

    g_assert_nonnull(h);
    if (!(how & OPEN_NO_META)) {
        NBD_OK(nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION));
    }
    if (how & OPEN_LAX) {
        NBD_OK(nbd_set_strict_mode(h, 0));
    }
    if (how & OPEN_NO_SR) {
        NBD_OK(nbd_set_request_structured_replies(h, false));
    }
    NBD_OK(nbd_connect_unix(h, s->sock));
    return h;
}

static void close_nbd(struct nbd_handle *h)
{
    NBD_OK(nbd_shutdown(h, 0));
    nbd_close(h);
}

/* Read [off, off+len) and compare with pattern @seed (0: zeroes). */
static void check_read(struct nbd_handle *h, uint64_t off, size_t len,
                       uint32_t seed, const char *what)
{
    uint8_t *buf = g_malloc(len);

    if (nbd_pread(h, buf, len, off, 0) == -1) {
        CHECK(false, "%s: read %zu at %" PRIu64 " failed: %s", what, len, off,
              nbd_get_error());
    } else if (seed) {
        CHECK(matches(buf, len, seed, off), "%s: wrong data read at %" PRIu64,
              what, off);
    } else {
        CHECK(all_zero(buf, len), "%s: non-zero data read at %" PRIu64, what,
              off);
    }
    g_free(buf);
}

static void write_pattern(struct nbd_handle *h, uint64_t off, size_t len,
                          uint32_t seed, uint32_t flags)
{
    uint8_t *buf = g_malloc(len);

    fill(buf, len, seed, off);
    NBD_OK(nbd_pwrite(h, buf, len, off, flags));
    g_free(buf);
}

/* ---- block status ----------------------------------------------------------- */

typedef struct Ext {
    uint64_t off, len;
    uint32_t flags;
} Ext;

typedef struct ExtCollect {
    GArray *ext;            /* Ext, merged */
    uint64_t pos;
    int calls;
    size_t entries;         /* descriptors in the last call */
} ExtCollect;

static int extent_cb(void *opaque, const char *ctx, uint64_t off,
                     uint32_t *entries, size_t n, int *error)
{
    ExtCollect *c = opaque;
    size_t i;

    if (strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) {
        return 0;
    }
    c->calls++;
    c->entries = n / 2;
    for (i = 0; i + 1 < n; i += 2) {
        Ext *last = c->ext->len ? &g_array_index(c->ext, Ext,
                                                 c->ext->len - 1) : NULL;

        if (last && last->flags == entries[i + 1] &&
            last->off + last->len == c->pos) {
            last->len += entries[i];
        } else {
            Ext e = { c->pos, entries[i], entries[i + 1] };

            g_array_append_val(c->ext, e);
        }
        c->pos += entries[i];
    }
    return 0;
}

/* The merged extents of [off, off+len) walked with as many requests as
 * needed.  Caller frees. */
static GArray *extents(struct nbd_handle *h, uint64_t off, uint64_t len)
{
    ExtCollect c = { g_array_new(FALSE, FALSE, sizeof(Ext)), off, 0, 0 };

    while (c.pos < off + len) {
        uint64_t before = c.pos;
        uint64_t want = MIN(off + len - c.pos, 1u << 30);

        c.calls = 0;
        NBD_OK(nbd_block_status(h, want, c.pos,
                                (nbd_extent_callback) { .callback = extent_cb,
                                                        .user_data = &c },
                                0));
        g_assert_cmpint(c.calls, ==, 1);
        g_assert_cmpuint(c.pos, >, before);
        CHECK(c.pos - before <= want, "block status returned %" PRIu64
              " bytes for a request of %" PRIu64, c.pos - before, want);
    }
    return c.ext;
}

static void check_extents(GArray *got, const Ext *want, int n,
                          const char *what)
{
    GString *s = g_string_new(NULL);
    bool ok = (int)got->len == n;
    guint i;

    for (i = 0; i < got->len; i++) {
        Ext *e = &g_array_index(got, Ext, i);

        g_string_append_printf(s, " [%" PRIu64 "+%" PRIu64 " %u]", e->off,
                               e->len, e->flags);
        if (ok && (e->off != want[i].off || e->len != want[i].len ||
                   e->flags != want[i].flags)) {
            ok = false;
        }
    }
    CHECK(ok, "%s: unexpected extents:%s", what, s->str);
    g_string_free(s, TRUE);
    g_array_free(got, TRUE);
}

/* ---- handshake -------------------------------------------------------------- */

typedef struct Listed {
    int n;
    char *name;
    char *desc;
} Listed;

static int list_cb(void *opaque, const char *name, const char *desc)
{
    Listed *l = opaque;

    l->n++;
    g_free(l->name);
    g_free(l->desc);
    l->name = g_strdup(name);
    l->desc = g_strdup(desc);
    return 0;
}

static void test_list(void)
{
    Srv *s = srv_new(1 * MiB, NULL, 0);
    Listed l = { 0 };
    struct nbd_handle *h;

    srv_start(s, "-x", "vol one", "-D", "The first volume", NULL);
    h = nbd_create();
    NBD_OK(nbd_set_opt_mode(h, true));
    NBD_OK(nbd_connect_unix(h, s->sock));
    CHECK(nbd_aio_is_negotiating(h), "not negotiating in opt mode");
    CHECK(nbd_opt_list(h, (nbd_list_callback) { .callback = list_cb,
                                                .user_data = &l }) == 1,
          "LIST did not return one export: %s", nbd_get_error());
    CHECK(l.n == 1 && !g_strcmp0(l.name, "vol one") &&
          !g_strcmp0(l.desc, "The first volume"),
          "LIST gave %d exports, last '%s' '%s'", l.n, l.name, l.desc);
    CHECK(!strcmp(nbd_get_protocol(h), "newstyle-fixed"), "protocol %s",
          nbd_get_protocol(h));
    NBD_OK(nbd_opt_abort(h));
    nbd_close(h);
    CHECK(srv_wait(s, 30), "no exit after the client aborted");
    check_exit_status(s);
    g_free(l.name);
    g_free(l.desc);
    srv_free(s);
}

static void test_info_go(void)
{
    Srv *s = srv_new(3 * MiB + 512, NULL, 0);
    struct nbd_handle *h;
    char *str;

    srv_start(s, "-x", "vol", "-D", "a description", NULL);
    h = nbd_create();
    NBD_OK(nbd_set_opt_mode(h, true));
    NBD_OK(nbd_set_full_info(h, true));
    NBD_OK(nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION));
    NBD_OK(nbd_connect_unix(h, s->sock));

    /* A missing export: INFO and GO fail, negotiation goes on. */
    NBD_OK(nbd_set_export_name(h, "nope"));
    CHECK(nbd_opt_info(h) == -1, "INFO for a missing export succeeded");
    CHECK(nbd_aio_is_negotiating(h), "INFO failure ended negotiation");
    CHECK(nbd_opt_go(h) == -1, "GO for a missing export succeeded");
    CHECK(nbd_aio_is_negotiating(h), "GO failure ended negotiation");

    NBD_OK(nbd_set_export_name(h, "vol"));
    NBD_OK(nbd_opt_info(h));
    CHECK(nbd_get_size(h) == (int64_t)(3 * MiB + 512), "size %" PRId64,
          nbd_get_size(h));
    CHECK(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM) == 1, "minimum %" PRId64,
          nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM));
    CHECK(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED) == 4096,
          "preferred %" PRId64, nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED));
    CHECK(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM) == (int64_t)MAX_PAYLOAD,
          "maximum %" PRId64, nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM));
    str = nbd_get_canonical_export_name(h);
    CHECK(str && !strcmp(str, "vol"), "canonical name %s", str);
    free(str);
    str = nbd_get_export_description(h);
    CHECK(str && !strcmp(str, "a description"), "description %s", str);
    free(str);
    CHECK(nbd_is_read_only(h) == 0, "read-only");
    CHECK(nbd_can_flush(h) == 1 && nbd_can_fua(h) == 1 &&
          nbd_can_trim(h) == 1 && nbd_can_zero(h) == 1 &&
          nbd_can_fast_zero(h) == 1 && nbd_can_df(h) == 1 &&
          nbd_can_multi_conn(h) == 1 && nbd_can_cache(h) == 1,
          "a capability is missing after INFO");
    CHECK(nbd_is_rotational(h) == 0, "rotational");

    NBD_OK(nbd_opt_go(h));
    CHECK(nbd_aio_is_ready(h), "not ready after GO");
    CHECK(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1,
          "base:allocation not negotiated");
    CHECK(nbd_get_structured_replies_negotiated(h) == 1, "no SR");
    check_read(h, 0, 4096, 0, "read after GO");
    close_nbd(h);
    srv_exits(s);
    srv_free(s);
}

typedef struct CtxList {
    int n;
    char *names;
} CtxList;

static int ctx_cb(void *opaque, const char *name)
{
    CtxList *l = opaque;
    char *old = l->names;

    l->n++;
    l->names = g_strconcat(old ? old : "", " ", name, NULL);
    g_free(old);
    return 0;
}

static void check_meta_list(struct nbd_handle *h, const char *const *queries,
                            int want_n, const char *want)
{
    CtxList l = { 0 };
    int r;

    NBD_OK(nbd_clear_meta_contexts(h));
    for (; *queries; queries++) {
        NBD_OK(nbd_add_meta_context(h, *queries));
    }
    r = nbd_opt_list_meta_context(h, (nbd_context_callback) {
                                         .callback = ctx_cb,
                                         .user_data = &l });
    CHECK(r == want_n && l.n == want_n && !g_strcmp0(l.names, want),
          "LIST_META_CONTEXT returned %d (%d callbacks:%s), expected %d:%s",
          r, l.n, l.names ? l.names : "", want_n, want ? want : "");
    g_free(l.names);
}

static void test_meta_context(void)
{
    static const char *const none[] = { NULL };
    static const char *const wildcard[] = { "base:", NULL };
    static const char *const exact[] = { "base:allocation", NULL };
    static const char *const unknown[] = { "qemu:dirty-bitmap:a", "foo:bar",
                                           "base:nothing", NULL };
    static const char *const mixed[] = { "foo:bar", "base:allocation", NULL };
    Srv *s = srv_new(1 * MiB, NULL, 0);
    struct nbd_handle *h;

    srv_start(s, NULL);
    h = nbd_create();
    NBD_OK(nbd_set_opt_mode(h, true));
    NBD_OK(nbd_connect_unix(h, s->sock));
    check_meta_list(h, none, 1, " base:allocation");
    check_meta_list(h, wildcard, 1, " base:allocation");
    check_meta_list(h, exact, 1, " base:allocation");
    check_meta_list(h, unknown, 0, NULL);
    check_meta_list(h, mixed, 1, " base:allocation");

    /* GO sets the contexts; the unknown one is simply not selected. */
    NBD_OK(nbd_clear_meta_contexts(h));
    NBD_OK(nbd_add_meta_context(h, "foo:bar"));
    NBD_OK(nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION));
    NBD_OK(nbd_opt_go(h));
    CHECK(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1,
          "base:allocation not selected");
    CHECK(nbd_can_meta_context(h, "foo:bar") == 0, "foo:bar selected");
    check_extents(extents(h, 0, 1 * MiB),
                  (Ext[]) { { 0, 1 * MiB, HZ } }, 1, "empty image");
    close_nbd(h);
    srv_stop(s);
    srv_free(s);
}

/* Structured replies off: simple replies, no DF, no metadata. */
static void test_no_structured(void)
{
    Region data[] = { { 0, 256 * KiB, 3 } };
    Srv *s = srv_new(4 * MiB, data, 1);
    struct nbd_handle *h;
    uint8_t *buf = g_malloc(MiB);

    srv_start(s, NULL);
    h = open_nbd(s, OPEN_NO_SR | OPEN_LAX);
    CHECK(nbd_get_structured_replies_negotiated(h) == 0, "SR negotiated");
    CHECK(nbd_can_df(h) == 0, "DF advertised without SR");
    CHECK(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0,
          "base:allocation without SR");
    /* A big read over data and hole comes back whole in a simple reply. */
    expect_ok(nbd_pread(h, buf, MiB, 0, 0), "1 MiB read");
    CHECK(matches(buf, 256 * KiB, 3, 0) &&
          all_zero(buf + 256 * KiB, MiB - 256 * KiB), "1 MiB read data");
    expect_err(nbd_pread(h, buf, 4096, 4 * MiB, 0), EINVAL,
               "simple read past the end");
    expect_err(nbd_block_status(h, 4096, 0, (nbd_extent_callback) {
                                    .callback = extent_cb }, 0),
               EINVAL, "block status without SR");
    write_pattern(h, 8192, 4096, 4, LIBNBD_CMD_FLAG_FUA);
    check_read(h, 8192, 4096, 4, "simple replies");
    close_nbd(h);
    srv_exits(s);
    g_free(buf);
    srv_free(s);
}

/* EXPORT_NAME instead of GO (no fixed newstyle), with and without the 124
 * zero bytes. */
static void test_export_name(void)
{
    static const uint32_t flags[] = {
        0, LIBNBD_HANDSHAKE_FLAG_NO_ZEROES,
        LIBNBD_HANDSHAKE_FLAG_FIXED_NEWSTYLE,
        LIBNBD_HANDSHAKE_FLAG_FIXED_NEWSTYLE | LIBNBD_HANDSHAKE_FLAG_NO_ZEROES,
    };
    Region data[] = { { 0, 64 * KiB, 5 } };
    Srv *s = srv_new(2 * MiB, data, 1);
    struct nbd_handle *h;
    size_t i;

    srv_start(s, "-t", "-x", "vol", NULL);
    for (i = 0; i < G_N_ELEMENTS(flags); i++) {
        bool fixed = flags[i] & LIBNBD_HANDSHAKE_FLAG_FIXED_NEWSTYLE;

        h = nbd_create();
        NBD_OK(nbd_set_handshake_flags(h, flags[i]));
        NBD_OK(nbd_set_export_name(h, "vol"));
        NBD_OK(nbd_connect_unix(h, s->sock));
        CHECK(!strcmp(nbd_get_protocol(h),
                      fixed ? "newstyle-fixed" : "newstyle"),
              "flags %u: protocol %s", flags[i], nbd_get_protocol(h));
        CHECK(nbd_get_size(h) == (int64_t)(2 * MiB), "flags %u: size",
              flags[i]);
        check_read(h, 0, 64 * KiB, 5, "after EXPORT_NAME");
        nbd_close(h);
    }
    /* A missing export through EXPORT_NAME: the server hangs up. */
    h = nbd_create();
    NBD_OK(nbd_set_handshake_flags(h, 0));
    NBD_OK(nbd_set_export_name(h, "nope"));
    CHECK(nbd_connect_unix(h, s->sock) == -1,
          "EXPORT_NAME of a missing export connected");
    nbd_close(h);
    srv_stop(s);
    srv_free(s);
}

/* ---- commands ------------------------------------------------------------ */

static void test_read_write(void)
{
    static const struct { uint64_t off; size_t len; } io[] = {
        { 0, 1 }, { 1, 511 }, { 4095, 2 }, { 12345, 54321 },
        { 1 * MiB - 7, 14 }, { 2 * MiB, 2 * MiB }, { 8 * MiB - 100, 100 },
    };
    Srv *s = srv_new(8 * MiB, NULL, 0);
    struct nbd_handle *h;
    uint8_t *buf = g_malloc(2 * MiB);
    size_t i;

    srv_start(s, NULL);
    h = open_nbd(s, 0);
    for (i = 0; i < G_N_ELEMENTS(io); i++) {
        write_pattern(h, io[i].off, io[i].len, 10 + i, 0);
    }
    for (i = 0; i < G_N_ELEMENTS(io); i++) {
        check_read(h, io[i].off, io[i].len, 10 + i, "read-back");
    }
    NBD_OK(nbd_flush(h, 0));
    close_nbd(h);
    srv_exits(s);
    /* The file itself holds the data. */
    for (i = 0; i < G_N_ELEMENTS(io); i++) {
        read_image(s->image, buf, io[i].len, io[i].off);
        CHECK(matches(buf, io[i].len, 10 + i, io[i].off),
              "file data of write %zu", i);
    }
    g_free(buf);
    srv_free(s);
}

/* FUA is accepted on every command (the server MUST, with SEND_FUA). */
static void test_fua_everywhere(void)
{
    Srv *s = srv_new(1 * MiB, NULL, 0);
    const uint32_t F = LIBNBD_CMD_FLAG_FUA;
    ExtCollect c = { 0 };
    struct nbd_handle *h;
    uint8_t buf[4096];

    srv_start(s, NULL);
    h = open_nbd(s, OPEN_LAX);
    fill(buf, sizeof(buf), 20, 0);
    expect_ok(nbd_pwrite(h, buf, sizeof(buf), 0, F), "WRITE+FUA");
    expect_ok(nbd_pread(h, buf, sizeof(buf), 0, F), "READ+FUA");
    CHECK(matches(buf, sizeof(buf), 20, 0), "data after WRITE+FUA");
    expect_ok(nbd_flush(h, F), "FLUSH+FUA");
    expect_ok(nbd_trim(h, 64 * KiB, 64 * KiB, F), "TRIM+FUA");
    expect_ok(nbd_zero(h, 4096, 128 * KiB, F), "WRITE_ZEROES+FUA");
    expect_ok(nbd_zero(h, 4096, 192 * KiB, F | LIBNBD_CMD_FLAG_NO_HOLE),
              "WRITE_ZEROES+FUA+NO_HOLE");
    expect_ok(nbd_cache(h, 64 * KiB, 0, F), "CACHE+FUA");
    c.ext = g_array_new(FALSE, FALSE, sizeof(Ext));
    expect_ok(nbd_block_status(h, 64 * KiB, 0, (nbd_extent_callback) {
                                   .callback = extent_cb, .user_data = &c },
                               F),
              "BLOCK_STATUS+FUA");
    g_array_free(c.ext, TRUE);
    close_nbd(h);
    srv_exits(s);
    srv_free(s);
}

/* TRIM punches whole file-system blocks, rounding inward. */
static void test_trim(void)
{
    Region data[] = { { 0, 4 * MiB, 30 } };
    Srv *s = srv_new(4 * MiB, data, 1);
    struct nbd_handle *h;
    int64_t b0, b1;

    if (!fs_blocks_4k(s->image)) {
        srv_free(s);
        return;
    }

    srv_start(s, NULL);
    h = open_nbd(s, 0);
    CHECK(nbd_can_trim(h) == 1, "TRIM not advertised");

    /* [1000, 11000) frees only the block [4096, 8192). */
    b0 = st_blocks(s->image);
    NBD_OK(nbd_trim(h, 10000, 1000, 0));
    b1 = st_blocks(s->image);
    CHECK(b0 - b1 == 8, "st_blocks %" PRId64 " -> %" PRId64
          " (expected 8 fewer)", b0, b1);
    CHECK(seek(s->image, 0, SEEK_HOLE) == 4096 && seek(s->image, 4096, SEEK_DATA) == 8192,
          "hole at %jd..%jd, expected 4096..8192",
          (intmax_t)seek(s->image, 0, SEEK_HOLE),
          (intmax_t)seek(s->image, 4096, SEEK_DATA));
    check_read(h, 0, 1000, 30, "before the trimmed range");
    check_read(h, 11000, 16 * KiB - 11000, 30, "after the trimmed range");

    /* An aligned 1 MiB trim frees 1 MiB. */
    NBD_OK(nbd_trim(h, 1 * MiB, 1 * MiB, 0));
    CHECK(b1 - st_blocks(s->image) == 2048, "st_blocks %" PRId64 " -> %" PRId64
          " (expected 2048 fewer)", b1, st_blocks(s->image));
    CHECK(seek(s->image, 1 * MiB, SEEK_HOLE) == (off_t)MiB &&
          seek(s->image, 1 * MiB, SEEK_DATA) == (off_t)(2 * MiB),
          "1 MiB trim did not punch [1M, 2M)");
    check_read(h, 1 * MiB, 1 * MiB, 0, "trimmed range");

    /* Less than a block after rounding: nothing is freed. */
    b1 = st_blocks(s->image);
    NBD_OK(nbd_trim(h, 100, 2 * MiB + 100, LIBNBD_CMD_FLAG_FUA));
    CHECK(st_blocks(s->image) == b1, "a 100-byte trim freed blocks");
    check_read(h, 2 * MiB, 4096, 30, "data under a sub-block trim");
    close_nbd(h);
    srv_stop(s);

    /* --discard=ignore: TRIM succeeds and frees nothing. */
    b1 = st_blocks(s->image);
    srv_start(s, "--discard=ignore", NULL);
    h = open_nbd(s, 0);
    NBD_OK(nbd_trim(h, 1 * MiB, 2 * MiB, 0));
    CHECK(st_blocks(s->image) == b1, "TRIM freed blocks with --discard=ignore");
    check_read(h, 2 * MiB, 1 * MiB, 30, "data after an ignored trim");
    close_nbd(h);
    srv_stop(s);
    srv_free(s);
}

/* FAST_ZERO of 64 KiB at @off of the test_zero image (pattern 31). */
static void fast_zero(struct nbd_handle *h, uint64_t off, uint32_t flags,
                      const char *what)
{
    if (nbd_zero(h, 64 * KiB, off, LIBNBD_CMD_FLAG_FAST_ZERO | flags) == 0) {
        check_read(h, off, 64 * KiB, 0, what);
    } else if (nbd_get_errno() == ENOTSUP) {
        g_test_message("%s: ENOTSUP (no fast zeroing here)", what);
        check_read(h, off, 64 * KiB, 31, "data after a refused FAST_ZERO");
    } else {
        CHECK(false, "%s failed: %s", what, nbd_get_error());
    }
}

/* WRITE_ZEROES: punched without NO_HOLE, allocated with it. */
static void test_zero(void)
{
    Region data[] = { { 0, 4 * MiB, 31 } };
    Srv *s = srv_new(4 * MiB, data, 1);
    struct nbd_handle *h;
    int64_t b0, b1;

    if (!fs_blocks_4k(s->image)) {
        srv_free(s);
        return;
    }

    srv_start(s, NULL);
    h = open_nbd(s, 0);
    CHECK(nbd_can_zero(h) == 1 && nbd_can_fast_zero(h) == 1,
          "WRITE_ZEROES or FAST_ZERO not advertised");

    b0 = st_blocks(s->image);
    NBD_OK(nbd_zero(h, 64 * KiB, 64 * KiB, 0));
    b1 = st_blocks(s->image);
    CHECK(b0 - b1 == 128, "WRITE_ZEROES without NO_HOLE: st_blocks %" PRId64
          " -> %" PRId64 " (expected a 64 KiB hole)", b0, b1);
    CHECK(seek(s->image, 64 * KiB, SEEK_HOLE) == (off_t)(64 * KiB),
          "no hole at 64 KiB");
    check_read(h, 64 * KiB, 64 * KiB, 0, "zeroed (hole)");
    check_read(h, 60 * KiB, 4 * KiB, 31, "before the zeroed range");
    check_read(h, 128 * KiB, 4 * KiB, 31, "after the zeroed range");

    /* (The file system may allocate an extent-tree block, never free.) */
    NBD_OK(nbd_zero(h, 64 * KiB, 256 * KiB, LIBNBD_CMD_FLAG_NO_HOLE));
    CHECK(st_blocks(s->image) >= b1, "WRITE_ZEROES with NO_HOLE: st_blocks %"
          PRId64 " -> %" PRId64 " (expected no hole)", b1,
          st_blocks(s->image));
    check_read(h, 256 * KiB, 64 * KiB, 0, "zeroed (NO_HOLE)");
    check_read(h, 320 * KiB, 4 * KiB, 31, "after the NO_HOLE range");

    /* Unaligned ranges zero exactly their bytes. */
    NBD_OK(nbd_zero(h, 100, 1000, LIBNBD_CMD_FLAG_NO_HOLE));
    NBD_OK(nbd_zero(h, 5000, 3000, 0));
    check_read(h, 1000, 100, 0, "unaligned zero (NO_HOLE)");
    check_read(h, 3000, 5000, 0, "unaligned zero");
    check_read(h, 0, 1000, 31, "before the unaligned zeroes");
    check_read(h, 1100, 1900, 31, "between the unaligned zeroes");
    check_read(h, 8000, 4096, 31, "after the unaligned zeroes");

    /* FAST_ZERO: done if the file system zeroes quickly (punching a hole,
     * or with NO_HOLE, FALLOC_FL_ZERO_RANGE), else ENOTSUP and the data
     * left alone. */
    fast_zero(h, 512 * KiB, 0, "FAST_ZERO");
    fast_zero(h, 768 * KiB, LIBNBD_CMD_FLAG_NO_HOLE, "FAST_ZERO with NO_HOLE");
    check_read(h, 832 * KiB, 64 * KiB, 31, "after the FAST_ZERO ranges");

    /* A big zero: 3 MiB in one request. */
    NBD_OK(nbd_zero(h, 3 * MiB, 1 * MiB, LIBNBD_CMD_FLAG_FUA));
    check_read(h, 1 * MiB, 3 * MiB, 0, "3 MiB zeroed");
    close_nbd(h);
    srv_stop(s);
    srv_free(s);
}

static void test_flush_cache(void)
{
    Srv *s = srv_new(4 * MiB, NULL, 0);
    struct nbd_handle *h;

    srv_start(s, NULL);
    h = open_nbd(s, 0);
    CHECK(nbd_can_flush(h) == 1 && nbd_can_cache(h) == 1,
          "FLUSH or CACHE not advertised");
    write_pattern(h, 0, 1 * MiB, 32, 0);
    NBD_OK(nbd_flush(h, 0));
    NBD_OK(nbd_cache(h, 4 * MiB, 0, 0));
    NBD_OK(nbd_cache(h, 1, 4 * MiB - 1, 0));
    check_read(h, 0, 1 * MiB, 32, "after FLUSH and CACHE");
    close_nbd(h);
    srv_exits(s);
    srv_free(s);
}

/* The image every block status and sparse-read test uses. */
static const Region sparse_data[] = {
    { 0, 64 * KiB, 40 },
    { 1 * MiB, 4 * KiB, 41 },
    { 4 * MiB, 512 * KiB, 42 },
};
static const Ext sparse_map[] = {
    { 0, 64 * KiB, 0 },
    { 64 * KiB, 1 * MiB - 64 * KiB, HZ },
    { 1 * MiB, 4 * KiB, 0 },
    { 1 * MiB + 4 * KiB, 3 * MiB - 4 * KiB, HZ },
    { 4 * MiB, 512 * KiB, 0 },
    { 4 * MiB + 512 * KiB, 3 * MiB + 512 * KiB, HZ },
};
#define SPARSE_SIZE (8 * MiB)

static Srv *start_sparse(void)
{
    Srv *s = srv_new(SPARSE_SIZE, sparse_data, G_N_ELEMENTS(sparse_data));

    srv_start(s, NULL);
    return s;
}

typedef struct OneExt {
    int calls;
    size_t n;
    uint32_t len, flags;
} OneExt;

static int one_ext_cb(void *opaque, const char *ctx, uint64_t off,
                      uint32_t *entries, size_t n, int *error)
{
    OneExt *o = opaque;

    o->calls++;
    o->n = n / 2;
    if (n >= 2) {
        o->len = entries[0];
        o->flags = entries[1];
    }
    return 0;
}

static void test_block_status(void)
{
    Srv *s = start_sparse();
    struct nbd_handle *h = open_nbd(s, 0);
    OneExt o = { 0 };

    check_extents(extents(h, 0, SPARSE_SIZE), sparse_map,
                  G_N_ELEMENTS(sparse_map), "whole image");
    check_extents(extents(h, 100 * KiB, 10 * KiB),
                  (Ext[]) { { 100 * KiB, 10 * KiB, HZ } }, 1, "inside a hole");
    check_extents(extents(h, 1 * MiB + 1000, 1000),
                  (Ext[]) { { 1 * MiB + 1000, 1000, 0 } }, 1,
                  "inside data, unaligned");
    check_extents(extents(h, 60 * KiB, 8 * KiB),
                  (Ext[]) { { 60 * KiB, 4 * KiB, 0 },
                            { 64 * KiB, 4 * KiB, HZ } }, 2,
                  "across a data/hole boundary");
    check_extents(extents(h, SPARSE_SIZE - 1, 1),
                  (Ext[]) { { SPARSE_SIZE - 1, 1, HZ } }, 1, "last byte");

    NBD_OK(nbd_block_status(h, SPARSE_SIZE, 0, (nbd_extent_callback) {
                                .callback = one_ext_cb, .user_data = &o },
                            LIBNBD_CMD_FLAG_REQ_ONE));
    CHECK(o.calls == 1 && o.n == 1 && o.len == 64 * KiB && o.flags == 0,
          "REQ_ONE at 0: %zu extents, first %u/%u", o.n, o.len, o.flags);
    o = (OneExt) { 0 };
    NBD_OK(nbd_block_status(h, 2 * MiB, 64 * KiB, (nbd_extent_callback) {
                                .callback = one_ext_cb, .user_data = &o },
                            LIBNBD_CMD_FLAG_REQ_ONE));
    CHECK(o.calls == 1 && o.n == 1 && o.len == 1 * MiB - 64 * KiB &&
          o.flags == HZ, "REQ_ONE at 64K: %zu extents, first %u/%u", o.n,
          o.len, o.flags);
    o = (OneExt) { 0 };
    NBD_OK(nbd_block_status(h, 1000, 64 * KiB, (nbd_extent_callback) {
                                .callback = one_ext_cb, .user_data = &o },
                            LIBNBD_CMD_FLAG_REQ_ONE));
    CHECK(o.n == 1 && o.len == 1000 && o.flags == HZ,
          "REQ_ONE shorter than the extent: %zu extents, first %u/%u", o.n,
          o.len, o.flags);

    /* Writes and zeroes show up in the next status. */
    write_pattern(h, 2 * MiB, 64 * KiB, 43, 0);
    NBD_OK(nbd_zero(h, 512 * KiB, 4 * MiB, 0));
    check_extents(extents(h, 1 * MiB + 4 * KiB, 7 * MiB - 4 * KiB),
                  (Ext[]) { { 1 * MiB + 4 * KiB, 1 * MiB - 4 * KiB, HZ },
                            { 2 * MiB, 64 * KiB, 0 },
                            { 2 * MiB + 64 * KiB, 6 * MiB - 64 * KiB, HZ } },
                  3, "after a write and a zero");
    close_nbd(h);
    srv_stop(s);
    srv_free(s);
}

typedef struct Chunk {
    uint64_t off;
    size_t len;
    unsigned status;
    bool data_ok;
} Chunk;

static int chunk_cb(void *opaque, const void *sub, size_t count,
                    uint64_t off, unsigned status, int *error)
{
    GArray *a = opaque;
    Chunk c = { off, count, status, true };
    size_t i;

    if (status == LIBNBD_READ_DATA) {
        /* Compare with what the sparse image holds there. */
        uint8_t *want = g_malloc0(count);

        for (i = 0; i < G_N_ELEMENTS(sparse_data); i++) {
            const Region *r = &sparse_data[i];
            uint64_t lo = MAX(r->off, off);
            uint64_t hi = MIN(r->off + r->len, off + count);

            if (lo < hi) {
                fill(want + (lo - off), hi - lo, r->seed, lo);
            }
        }
        c.data_ok = memcmp(sub, want, count) == 0;
        g_free(want);
    }
    g_array_append_val(a, c);
    return 0;
}

static gint chunk_cmp(gconstpointer a, gconstpointer b)
{
    const Chunk *x = a, *y = b;

    return x->off < y->off ? -1 : x->off > y->off;
}

static GArray *read_chunks(struct nbd_handle *h, void *buf, size_t len,
                           uint64_t off, uint32_t flags)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(Chunk));

    NBD_OK(nbd_pread_structured(h, buf, len, off, (nbd_chunk_callback) {
                                    .callback = chunk_cb, .user_data = a },
                                flags));
    g_array_sort(a, chunk_cmp);
    return a;
}

/* Reads of 128 KiB and more come back with OFFSET_HOLE chunks for holes;
 * DF reads in one data chunk. */
static void test_sparse_read(void)
{
    static const Chunk want[] = {
        { 0, 64 * KiB, LIBNBD_READ_DATA, true },
        { 64 * KiB, 1 * MiB - 64 * KiB, LIBNBD_READ_HOLE, true },
        { 1 * MiB, 4 * KiB, LIBNBD_READ_DATA, true },
        { 1 * MiB + 4 * KiB, 1 * MiB - 4 * KiB, LIBNBD_READ_HOLE, true },
    };
    Srv *s = start_sparse();
    struct nbd_handle *h = open_nbd(s, 0);
    uint8_t *buf = g_malloc(2 * MiB);
    GString *got = g_string_new(NULL);
    GArray *a;
    bool ok;
    guint i;

    CHECK(nbd_can_df(h) == 1, "DF not advertised");
    a = read_chunks(h, buf, 2 * MiB, 0, 0);
    ok = a->len == G_N_ELEMENTS(want);
    for (i = 0; i < a->len; i++) {
        Chunk *c = &g_array_index(a, Chunk, i);

        g_string_append_printf(got, " [%" PRIu64 "+%zu %s%s]", c->off, c->len,
                               c->status == LIBNBD_READ_HOLE ? "hole" : "data",
                               c->data_ok ? "" : " BAD DATA");
        ok = ok && c->off == want[i].off && c->len == want[i].len &&
             c->status == want[i].status && c->data_ok;
    }
    CHECK(ok, "2 MiB read: chunks%s", got->str);
    CHECK(matches(buf, 64 * KiB, 40, 0) &&
          all_zero(buf + 64 * KiB, MiB - 64 * KiB) &&
          matches(buf + MiB, 4 * KiB, 41, MiB) &&
          all_zero(buf + MiB + 4 * KiB, MiB - 4 * KiB),
          "2 MiB sparse read: wrong buffer");
    g_array_free(a, TRUE);

    /* DF: one data chunk, holes sent as zeroes. */
    memset(buf, 0xaa, 2 * MiB);
    a = read_chunks(h, buf, 2 * MiB, 0, LIBNBD_CMD_FLAG_DF);
    CHECK(a->len == 1 && g_array_index(a, Chunk, 0).off == 0 &&
          g_array_index(a, Chunk, 0).len == 2 * MiB &&
          g_array_index(a, Chunk, 0).status == LIBNBD_READ_DATA &&
          g_array_index(a, Chunk, 0).data_ok,
          "DF read: %u chunks", a->len);
    g_array_free(a, TRUE);

    /* All hole. */
    a = read_chunks(h, buf, 1 * MiB, 5 * MiB, 0);
    CHECK(a->len >= 1 && all_zero(buf, MiB), "hole-only read");
    for (i = 0; i < a->len; i++) {
        CHECK(g_array_index(a, Chunk, i).status == LIBNBD_READ_HOLE,
              "hole-only 1 MiB read sent data at %" PRIu64,
              g_array_index(a, Chunk, i).off);
    }
    g_array_free(a, TRUE);
    close_nbd(h);
    srv_stop(s);
    g_string_free(got, TRUE);
    g_free(buf);
    srv_free(s);
}

/* A size that is not a multiple of anything: 64 MiB + 100 bytes.  Also
 * the largest request (64 MiB) and the errors just past the end. */
static void test_size_exact(void)
{
    const uint64_t size = 64 * MiB + 100;
    Region data[] = { { 0, 4 * KiB, 50 }, { 64 * MiB, 100, 51 } };
    Srv *s = srv_new(size, data, 2);
    struct nbd_handle *h;
    uint8_t *buf = g_malloc(MAX_PAYLOAD + 1);
    OneExt o = { 0 };

    srv_start(s, NULL);
    h = open_nbd(s, OPEN_LAX);
    CHECK(nbd_get_size(h) == (int64_t)size, "size %" PRId64, nbd_get_size(h));

    /* The tail. */
    check_read(h, 64 * MiB, 100, 51, "the last 100 bytes");
    check_read(h, size - 1, 1, 51, "the last byte");
    expect_err(nbd_pread(h, buf, 1, size, 0), EINVAL, "read at the size");
    expect_err(nbd_pread(h, buf, 101, 64 * MiB, 0), EINVAL,
               "read 1 byte past the end");
    NBD_OK(nbd_block_status(h, 100, 64 * MiB, (nbd_extent_callback) {
                                .callback = one_ext_cb, .user_data = &o },
                            0));
    CHECK(o.n == 1 && o.len == 100 && o.flags == 0,
          "block status of the tail: %zu extents, %u/%u", o.n, o.len,
          o.flags);
    expect_err(nbd_block_status(h, 1, size, (nbd_extent_callback) {
                                    .callback = one_ext_cb,
                                    .user_data = &o }, 0),
               EINVAL, "block status at the size");

    /* 64 MiB, the maximum, in one read and one write. */
    CHECK(nbd_pread(h, buf, MAX_PAYLOAD, 100, 0) == 0,
          "64 MiB read failed: %s", nbd_get_error());
    CHECK(matches(buf, 4 * KiB - 100, 50, 100) &&
          all_zero(buf + 4 * KiB - 100, 64 * MiB - 4 * KiB) &&
          matches(buf + 64 * MiB - 100, 100, 51, 64 * MiB),
          "64 MiB read: wrong data");
    fill(buf, MAX_PAYLOAD, 52, 100);
    CHECK(nbd_pwrite(h, buf, MAX_PAYLOAD, 100, 0) == 0,
          "64 MiB write failed: %s", nbd_get_error());
    check_read(h, 100, 8 * MiB, 52, "after the 64 MiB write");
    check_read(h, size - 100, 100, 52, "the tail after the 64 MiB write");
    expect_err(nbd_pwrite(h, buf, MAX_PAYLOAD, 101, 0), ENOSPC,
               "64 MiB write 1 byte past the end");

    /* Writes at the end. */
    fill(buf, 100, 53, size - 100);
    expect_ok(nbd_pwrite(h, buf, 100, size - 100, 0), "write of the tail");
    check_read(h, size - 100, 100, 53, "the written tail");
    expect_err(nbd_pwrite(h, buf, 1, size, 0), ENOSPC, "write at the size");
    expect_err(nbd_pwrite(h, buf, 2, size - 1, 0), ENOSPC,
               "write across the end");
    expect_ok(nbd_zero(h, 100, size - 100, 0), "zero of the tail");
    check_read(h, size - 100, 100, 0, "the zeroed tail");
    expect_err(nbd_zero(h, 2, size - 1, 0), ENOSPC, "zero across the end");
    expect_ok(nbd_trim(h, 100, size - 100, 0), "trim of the tail");
    expect_err(nbd_trim(h, 2, size - 1, 0), EINVAL, "trim across the end");
    expect_ok(nbd_cache(h, 100, size - 100, 0), "cache of the tail");
    expect_err(nbd_cache(h, 2, size - 1, 0), EINVAL, "cache across the end");

    /* Offsets that overflow 64 bits with the length. */
    expect_err(nbd_pread(h, buf, 512, UINT64_MAX - 255, 0), EINVAL,
               "read at 2^64 - 256");
    expect_err(nbd_pwrite(h, buf, 512, UINT64_MAX - 255, 0), ENOSPC,
               "write at 2^64 - 256");
    expect_err(nbd_trim(h, 512, UINT64_MAX - 255, 0), EINVAL,
               "trim at 2^64 - 256");
    check_read(h, 100, 4096, 52, "after the errors");
    close_nbd(h);
    srv_stop(s);
    g_free(buf);
    srv_free(s);
}

/* -o/--offset: the export is a window into the image. */
static void test_offset_window(void)
{
    const uint64_t off = 1536;      /* not a multiple of the fs block */
    Region data[] = { { 0, 1 * MiB, 60 }, { 2 * MiB, 2 * MiB, 61 } };
    Srv *s = srv_new(4 * MiB, data, 2);
    struct nbd_handle *h;
    uint8_t *buf = g_malloc(64 * KiB);
    char offstr[32];

    if (!fs_blocks_4k(s->image)) {
        g_free(buf);
        srv_free(s);
        return;
    }

    snprintf(offstr, sizeof(offstr), "%" PRIu64, off);
    srv_start(s, "-t", "-o", offstr, NULL);
    h = open_nbd(s, OPEN_LAX);
    CHECK(nbd_get_size(h) == (int64_t)(4 * MiB - off), "size %" PRId64,
          nbd_get_size(h));
    NBD_OK(nbd_pread(h, buf, 4096, 0, 0));
    CHECK(matches(buf, 4096, 60, off), "export byte 0 is not image byte %"
          PRIu64, off);
    check_extents(extents(h, 0, 4 * MiB - off),
                  (Ext[]) { { 0, 1 * MiB - off, 0 },
                            { 1 * MiB - off, 1 * MiB, HZ },
                            { 2 * MiB - off, 2 * MiB, 0 } }, 3,
                  "extents of the window");
    /* Writes land at image offset + window offset. */
    fill(buf, 4096, 62, 8192);
    NBD_OK(nbd_pwrite(h, buf, 4096, 8192, 0));
    NBD_OK(nbd_flush(h, 0));
    memset(buf, 0, 4096);
    read_image(s->image, buf, 4096, 8192 + off);
    CHECK(matches(buf, 4096, 62, 8192), "write not at image offset %" PRIu64,
          8192 + off);
    /* TRIM rounds inward in image offsets: export [0, 8192) is image
     * [1536, 9728), whose only whole block is [4096, 8192). */
    NBD_OK(nbd_trim(h, 8192, 0, 0));
    CHECK(seek(s->image, 0, SEEK_HOLE) == 4096 && seek(s->image, 4096, SEEK_DATA) == 8192,
          "trim punched image %jd..%jd, expected 4096..8192",
          (intmax_t)seek(s->image, 0, SEEK_HOLE),
          (intmax_t)seek(s->image, 4096, SEEK_DATA));
    read_image(s->image, buf, off, 0);
    CHECK(matches(buf, off, 60, 0), "trim touched data before the window");
    expect_err(nbd_pread(h, buf, 1, 4 * MiB - off, 0), EINVAL,
               "read past the window");
    expect_err(nbd_pwrite(h, buf, 1, 4 * MiB - off, 0), ENOSPC,
               "write past the window");
    close_nbd(h);
    srv_stop(s);

    /* Suffixes: -o 1M. */
    srv_start(s, "--offset", "1M", NULL);
    h = open_nbd(s, 0);
    CHECK(nbd_get_size(h) == (int64_t)(3 * MiB), "size with -o 1M: %" PRId64,
          nbd_get_size(h));
    check_read(h, 0, 64 * KiB, 0, "export 0 (image 1M, a hole) with -o 1M");
    NBD_OK(nbd_pread(h, buf, 4096, 1 * MiB, 0));
    CHECK(matches(buf, 4096, 61, 2 * MiB),
          "export 1M is not image byte 2M with -o 1M");
    close_nbd(h);
    srv_exits(s);
    g_free(buf);
    srv_free(s);
}

/* ---- errors ----------------------------------------------------------------- */

static void test_past_end(void)
{
    const uint64_t size = 16 * MiB;
    Srv *s = srv_new(size, NULL, 0);
    struct nbd_handle *h;
    uint8_t buf[8192];
    OneExt o = { 0 };
    nbd_extent_callback cb = { .callback = one_ext_cb, .user_data = &o };

    srv_start(s, NULL);
    h = open_nbd(s, OPEN_LAX);
    expect_err(nbd_pread(h, buf, 4096, size, 0), EINVAL, "read");
    expect_err(nbd_pread(h, buf, 8192, size - 4096, 0), EINVAL,
               "read across the end");
    expect_err(nbd_pwrite(h, buf, 4096, size, 0), ENOSPC, "write");
    expect_err(nbd_pwrite(h, buf, 8192, size - 4096, 0), ENOSPC,
               "write across the end");
    expect_err(nbd_zero(h, 4096, size, 0), ENOSPC, "zero");
    expect_err(nbd_zero(h, 4096, size, LIBNBD_CMD_FLAG_NO_HOLE), ENOSPC,
               "zero with NO_HOLE");
    expect_err(nbd_trim(h, 4096, size, 0), EINVAL, "trim");
    expect_err(nbd_cache(h, 4096, size, 0), EINVAL, "cache");
    expect_err(nbd_block_status(h, 4096, size, cb, 0), EINVAL, "block status");
    expect_err(nbd_block_status(h, 8192, size - 4096, cb, 0), EINVAL,
               "block status across the end");
    check_read(h, size - 4096, 4096, 0, "after the errors");
    close_nbd(h);
    srv_exits(s);
    srv_free(s);
}

static void test_read_only(void)
{
    Region data[] = { { 0, 1 * MiB, 70 } };
    Srv *s = srv_new(2 * MiB, data, 1);
    struct nbd_handle *h;
    uint8_t buf[4096];
    OneExt o = { 0 };

    srv_start(s, "-r", NULL);
    h = open_nbd(s, OPEN_LAX);
    CHECK(nbd_is_read_only(h) == 1, "not read-only");
    CHECK(nbd_can_trim(h) == 0 && nbd_can_zero(h) == 0 &&
          nbd_can_fast_zero(h) == 0, "TRIM/ZERO advertised read-only");
    memset(buf, 0xee, sizeof(buf));
    expect_err(nbd_pwrite(h, buf, 4096, 0, 0), EPERM, "write");
    expect_err(nbd_pwrite(h, buf, 4096, 0, LIBNBD_CMD_FLAG_FUA), EPERM,
               "write with FUA");
    expect_err(nbd_trim(h, 4096, 0, 0), EPERM, "trim");
    expect_err(nbd_zero(h, 4096, 0, 0), EPERM, "zero");
    expect_err(nbd_zero(h, 4096, 0, LIBNBD_CMD_FLAG_NO_HOLE), EPERM,
               "zero with NO_HOLE");
    expect_err(nbd_pwrite(h, buf, 4096, 2 * MiB, 0), EPERM,
               "write past the end of a read-only export");
    expect_ok(nbd_flush(h, 0), "flush");
    expect_ok(nbd_cache(h, 4096, 0, 0), "cache");
    expect_ok(nbd_block_status(h, 4096, 0, (nbd_extent_callback) {
                                   .callback = one_ext_cb, .user_data = &o },
                               0), "block status");
    check_read(h, 0, 1 * MiB, 70, "read-only data");
    close_nbd(h);
    srv_exits(s);
    read_image(s->image, buf, sizeof(buf), 0);
    CHECK(matches(buf, sizeof(buf), 70, 0), "read-only image modified");
    srv_free(s);
}

/* Flags that are unknown, or known but not valid on that command. */
static void test_bad_flags(void)
{
    Srv *s = srv_new(1 * MiB, NULL, 0);
    struct nbd_handle *h;
    uint8_t buf[4096] = { 0 };
    OneExt o = { 0 };
    nbd_extent_callback cb = { .callback = one_ext_cb, .user_data = &o };
    const uint32_t NO_HOLE = LIBNBD_CMD_FLAG_NO_HOLE, DF = LIBNBD_CMD_FLAG_DF,
                   REQ_ONE = LIBNBD_CMD_FLAG_REQ_ONE,
                   FAST_ZERO = LIBNBD_CMD_FLAG_FAST_ZERO;

    srv_start(s, NULL);
    h = open_nbd(s, OPEN_LAX);
    expect_err(nbd_pread(h, buf, 512, 0, 0x100), EINVAL, "read flag 0x100");
    expect_err(nbd_pread(h, buf, 512, 0, 0x8000), EINVAL, "read flag 0x8000");
    expect_err(nbd_pread(h, buf, 512, 0, 0x20), EINVAL,
               "read with PAYLOAD_LEN (no extended headers)");
    expect_err(nbd_pread(h, buf, 512, 0, NO_HOLE), EINVAL, "read NO_HOLE");
    expect_err(nbd_pread(h, buf, 512, 0, REQ_ONE), EINVAL, "read REQ_ONE");
    expect_err(nbd_pread(h, buf, 512, 0, FAST_ZERO), EINVAL, "read FAST_ZERO");
    expect_err(nbd_pwrite(h, buf, 512, 0, DF), EINVAL, "write DF");
    expect_err(nbd_pwrite(h, buf, 512, 0, NO_HOLE), EINVAL, "write NO_HOLE");
    expect_err(nbd_pwrite(h, buf, 512, 0, REQ_ONE), EINVAL, "write REQ_ONE");
    expect_err(nbd_pwrite(h, buf, 512, 0, 0x40), EINVAL, "write flag 0x40");
    expect_err(nbd_trim(h, 512, 0, DF), EINVAL, "trim DF");
    expect_err(nbd_trim(h, 512, 0, NO_HOLE), EINVAL, "trim NO_HOLE");
    expect_err(nbd_trim(h, 512, 0, FAST_ZERO), EINVAL, "trim FAST_ZERO");
    expect_err(nbd_zero(h, 512, 0, DF), EINVAL, "zero DF");
    expect_err(nbd_zero(h, 512, 0, REQ_ONE), EINVAL, "zero REQ_ONE");
    expect_err(nbd_cache(h, 512, 0, DF), EINVAL, "cache DF");
    expect_err(nbd_cache(h, 512, 0, NO_HOLE), EINVAL, "cache NO_HOLE");
    expect_err(nbd_flush(h, DF), EINVAL, "flush DF");
    expect_err(nbd_flush(h, REQ_ONE), EINVAL, "flush REQ_ONE");
    expect_err(nbd_block_status(h, 512, 0, cb, DF), EINVAL, "block status DF");
    expect_err(nbd_block_status(h, 512, 0, cb, NO_HOLE), EINVAL,
               "block status NO_HOLE");
    check_read(h, 0, 4096, 0, "after the bad flags");
    close_nbd(h);
    srv_exits(s);
    srv_free(s);
}

static void test_no_meta_context(void)
{
    Srv *s = srv_new(1 * MiB, NULL, 0);
    struct nbd_handle *h;
    OneExt o = { 0 };

    srv_start(s, NULL);
    h = open_nbd(s, OPEN_LAX | OPEN_NO_META);
    CHECK(nbd_get_structured_replies_negotiated(h) == 1, "no SR");
    expect_err(nbd_block_status(h, 4096, 0, (nbd_extent_callback) {
                                    .callback = one_ext_cb,
                                    .user_data = &o }, 0),
               EINVAL, "block status without a context");
    check_read(h, 0, 4096, 0, "after the refused block status");
    close_nbd(h);
    srv_exits(s);
    srv_free(s);
}

/* --cache=none: O_DIRECT, the minimum block size is the logical block;
 * misaligned requests fail with EINVAL, aligned ones work. */
static void direct_io(const char *aio)
{
    Region data[] = { { 0, 2 * MiB, 90 } };
    Srv *s = srv_new(4 * MiB, data, 1);
    struct nbd_handle *h;
    uint8_t *buf = g_malloc(256 * KiB);
    OneExt o = { 0 };
    nbd_extent_callback cb = { .callback = one_ext_cb, .user_data = &o };
    char *aio_opt = g_strdup_printf("--aio=%s", aio);
    int64_t min;

    if (!direct_io_ok(s->image)) {
        g_free(aio_opt);
        g_free(buf);
        srv_free(s);
        return;
    }

    srv_start(s, "--cache=none", aio_opt, NULL);
    h = open_nbd(s, OPEN_LAX);
    min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    CHECK(min >= 512 && min <= 4096 && (min & (min - 1)) == 0,
          "minimum block size %" PRId64 " with --cache=none", min);
    if (min < 512) {
        min = 512;
    }
    CHECK(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED) == MAX(4096, min),
          "preferred block size %" PRId64,
          nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED));

    /* Aligned I/O works; the client's buffer need not be aligned. */
    fill(buf + 1, 128 * KiB, 91, 3 * min);
    NBD_OK(nbd_pwrite(h, buf + 1, 128 * KiB, 3 * min, 0));
    check_read(h, 3 * min, 128 * KiB, 91, "O_DIRECT read-back");
    write_pattern(h, 2 * MiB, 64 * KiB, 92, LIBNBD_CMD_FLAG_FUA);
    NBD_OK(nbd_zero(h, 2 * min, 0, LIBNBD_CMD_FLAG_NO_HOLE));
    NBD_OK(nbd_zero(h, 64 * KiB, 1 * MiB, 0));
    NBD_OK(nbd_trim(h, 64 * KiB, 1 * MiB + 64 * KiB, 0));
    NBD_OK(nbd_cache(h, min, 0, 0));
    NBD_OK(nbd_flush(h, 0));
    NBD_OK(nbd_block_status(h, min, 0, cb, 0));
    check_read(h, 0, 2 * min, 0, "zeroed with O_DIRECT");
    check_read(h, 1 * MiB, 64 * KiB, 0, "zeroed (hole) with O_DIRECT");
    check_read(h, 2 * MiB, 64 * KiB, 92, "FUA write with O_DIRECT");

    /* Misaligned: EINVAL, nothing changes. */
    memset(buf, 0xcc, 256 * KiB);
    expect_err(nbd_pread(h, buf, min, 1, 0), EINVAL, "read at offset 1");
    expect_err(nbd_pread(h, buf, min + 1, 0, 0), EINVAL, "read of min + 1");
    expect_err(nbd_pread(h, buf, min / 2, 0, 0), EINVAL, "read of min / 2");
    expect_err(nbd_pwrite(h, buf, min, min / 2, 0), EINVAL,
               "write at min / 2");
    expect_err(nbd_pwrite(h, buf, 1, 0, 0), EINVAL, "write of 1 byte");
    expect_err(nbd_zero(h, min, 1, 0), EINVAL, "zero at offset 1");
    expect_err(nbd_zero(h, 100, 0, LIBNBD_CMD_FLAG_NO_HOLE), EINVAL,
               "zero of 100 bytes");
    expect_err(nbd_trim(h, min + 1, 0, 0), EINVAL, "trim of min + 1");
    expect_err(nbd_cache(h, 1, 0, 0), EINVAL, "cache of 1 byte");
    expect_err(nbd_block_status(h, min, min / 2, cb, 0), EINVAL,
               "block status at min / 2");
    /* Descriptors must be whole blocks: so must the request. */
    expect_err(nbd_block_status(h, 100, 0, cb, 0), EINVAL,
               "block status of 100 bytes");
    expect_err(nbd_block_status(h, min + 100, min, cb,
                                LIBNBD_CMD_FLAG_REQ_ONE), EINVAL,
               "block status of min + 100 bytes, REQ_ONE");
    check_read(h, 3 * min, 128 * KiB, 91, "data after the misaligned writes");
    close_nbd(h);
    srv_exits(s);
    read_image(s->image, buf, 128 * KiB, 3 * min);
    CHECK(matches(buf, 128 * KiB, 91, 3 * min), "O_DIRECT data in the file");
    g_free(aio_opt);
    g_free(buf);
    srv_free(s);
}

static void test_direct_native(void)
{
    direct_io("native");
}

static void test_direct_threads(void)
{
    direct_io("threads");
}

/* ---- concurrency ------------------------------------------------------------- */

typedef struct Done {
    int done;
    int failed;
} Done;

static int done_cb(void *opaque, int *error)
{
    Done *d = opaque;

    d->done++;
    if (*error) {
        d->failed++;
    }
    return 1;               /* auto-retire the command */
}

/* Poll until @n commands completed; false (and a failure) after 30 s. */
static bool wait_all(struct nbd_handle *h, Done *d, int n, const char *what)
{
    gint64 deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;

    while (d->done < n) {
        NBD_OK(nbd_poll(h, 1000));
        if (g_get_monotonic_time() > deadline) {
            CHECK(false, "%s: only %d of %d completed after 30 s (%d still "
                  "in flight): the server stopped answering", what, d->done,
                  n, nbd_aio_in_flight(h));
            return false;
        }
    }
    return true;
}

/* 512 writes and 512 reads in flight at once, in several sizes. */
/*
 * Issue @n reads or writes at once, request i covering [off[i], off[i+1])
 * of @buf; true when all completed (failures are recorded).
 */
static bool batch(struct nbd_handle *h, bool write, uint8_t *buf,
                  const uint64_t *off, int n)
{
    const char *what = write ? "writes" : "reads";
    Done d = { 0 };
    int i, peak = 0;

    for (i = 0; i < n; i++) {
        nbd_completion_callback cb = { .callback = done_cb, .user_data = &d };
        /* Writes go in reverse order, some with FUA. */
        int k = write ? n - 1 - i : i;
        uint32_t fua = write && k % 64 == 0 ? LIBNBD_CMD_FLAG_FUA : 0;

        if (write) {
            NBD_OK(nbd_aio_pwrite(h, buf + off[k], off[k + 1] - off[k],
                                  off[k], cb, fua));
        } else {
            NBD_OK(nbd_aio_pread(h, buf + off[k], off[k + 1] - off[k],
                                 off[k], cb, 0));
        }
        peak = MAX(peak, nbd_aio_in_flight(h));
    }
    if (!wait_all(h, &d, n, what)) {
        return false;
    }
    CHECK(peak >= 256, "only %d %s in flight at once", peak, what);
    CHECK(d.failed == 0, "%d %s failed", d.failed, what);
    return true;
}

static char *sha256(const void *buf, size_t len)
{
    return g_compute_checksum_for_data(G_CHECKSUM_SHA256, buf, len);
}

/* 512 writes, then 512 reads, in flight at once, of sizes from 512 B to
 * 60 KiB; the data read back and the file must be what was written. */
static void many_in_flight(const char *max_inflight)
{
    const int n = 512;
    const uint64_t region = 16 * MiB;
    Srv *s = srv_new(region, NULL, 0);
    struct nbd_handle *h;
    uint8_t *src = g_malloc(region), *dst = g_malloc0(region);
    uint64_t off[513];
    char *want, *got;
    int i;

    off[0] = 0;
    for (i = 0; i < n; i++) {
        off[i + 1] = off[i] + 512 * (1 + (i * 37) % 120);
    }
    g_assert_cmpuint(off[n], <=, region);
    fill(src, off[n], 100, 0);
    srv_start(s, "--max-inflight", max_inflight, NULL);
    h = open_nbd(s, 0);
    if (!batch(h, true, src, off, n) || nbd_flush(h, 0) == -1 ||
        !batch(h, false, dst, off, n)) {
        nbd_close(h);
        srv_stop(s);
        goto out;
    }
    CHECK(memcmp(src, dst, off[n]) == 0, "data read back differs");
    close_nbd(h);
    srv_exits(s);

    read_image(s->image, dst, off[n], 0);
    want = sha256(src, off[n]);
    got = sha256(dst, off[n]);
    CHECK(!strcmp(want, got), "file checksum %s, written %s", got, want);
    g_free(want);
    g_free(got);
out:
    g_free(src);
    g_free(dst);
    srv_free(s);
}

static void test_many_in_flight(void)
{
    many_in_flight("256");
}

static void test_many_in_flight_throttled(void)
{
    many_in_flight("4");
}

/* Multi-conn: a FLUSH on one connection covers writes made on another,
 * and a third sees the data. */
static void test_multi_conn(void)
{
    Srv *s = srv_new(8 * MiB, NULL, 0);
    struct nbd_handle *h[3];
    uint8_t *buf = g_malloc(1 * MiB);
    int i;

    srv_start(s, NULL);
    for (i = 0; i < 3; i++) {
        h[i] = open_nbd(s, 0);
        CHECK(nbd_can_multi_conn(h[i]) == 1, "no multi-conn on %d", i);
    }
    write_pattern(h[0], 1 * MiB, 1 * MiB, 110, 0);
    NBD_OK(nbd_flush(h[1], 0));
    check_read(h[2], 1 * MiB, 1 * MiB, 110, "third connection");
    read_image(s->image, buf, 1 * MiB, 1 * MiB);
    CHECK(matches(buf, 1 * MiB, 110, 1 * MiB), "file after FLUSH");
    write_pattern(h[2], 3 * MiB, 64 * KiB, 111, LIBNBD_CMD_FLAG_FUA);
    check_read(h[0], 3 * MiB, 64 * KiB, 111, "first connection");
    NBD_OK(nbd_zero(h[1], 1 * MiB, 1 * MiB + 512 * KiB, 0));
    check_read(h[0], 1 * MiB + 512 * KiB, 1 * MiB, 0, "zeroed elsewhere");
    for (i = 0; i < 3; i++) {
        close_nbd(h[i]);
    }
    srv_exits(s);
    g_free(buf);
    srv_free(s);
}

/* -e 1: a second client waits (not even greeted) until the first leaves. */
static void test_shared_one(void)
{
    Srv *s = srv_new(1 * MiB, NULL, 0);
    struct nbd_handle *h1, *h2;
    gint64 deadline;

    srv_start(s, "-t", "-e", "1", NULL);
    h1 = open_nbd(s, 0);
    h2 = nbd_create();
    NBD_OK(nbd_aio_connect_unix(h2, s->sock));
    deadline = g_get_monotonic_time() + 500 * 1000;
    while (g_get_monotonic_time() < deadline) {
        NBD_OK(nbd_poll(h2, 50));
    }
    CHECK(!nbd_aio_is_ready(h2) && !nbd_aio_is_dead(h2),
          "second client in state %s while the first is connected",
          nbd_connection_state(h2));
    check_read(h1, 0, 4096, 0, "first client");
    close_nbd(h1);
    deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (!nbd_aio_is_ready(h2) && !nbd_aio_is_dead(h2) &&
           g_get_monotonic_time() < deadline) {
        NBD_OK(nbd_poll(h2, 100));
    }
    CHECK(nbd_aio_is_ready(h2), "second client not served after the first "
          "left: %s", nbd_connection_state(h2));
    if (nbd_aio_is_ready(h2)) {
        check_read(h2, 0, 4096, 0, "second client");
        NBD_OK(nbd_shutdown(h2, 0));
    }
    nbd_close(h2);
    srv_stop(s);
    srv_free(s);
}

/* Without -t the server exits 0 once the last of its clients has gone. */
static void test_exit_after_last_client(void)
{
    Srv *s = srv_new(1 * MiB, NULL, 0);
    struct nbd_handle *h1, *h2;

    srv_start(s, NULL);
    h1 = open_nbd(s, 0);
    h2 = open_nbd(s, 0);
    close_nbd(h1);
    CHECK(!srv_wait(s, 1), "exited while a client was still connected");
    check_read(h2, 0, 4096, 0, "remaining client");
    nbd_close(h2);          /* no NBD_CMD_DISC: a plain hang-up */
    CHECK(srv_wait(s, 30), "still running after the last client left");
    check_exit_status(s);
    srv_free(s);
}

int main(int argc, char **argv)
{
    if (!g_getenv("RAWNBD")) {
        printf("1..0 # SKIP RAWNBD is not set to the rawnbd executable\n");
        return 0;
    }
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/handshake/list", test_list);
    g_test_add_func("/handshake/info-go", test_info_go);
    g_test_add_func("/handshake/meta-context", test_meta_context);
    g_test_add_func("/handshake/no-structured-replies", test_no_structured);
    g_test_add_func("/handshake/export-name", test_export_name);
    g_test_add_func("/io/read-write", test_read_write);
    g_test_add_func("/io/fua-everywhere", test_fua_everywhere);
    g_test_add_func("/io/trim", test_trim);
    g_test_add_func("/io/zero", test_zero);
    g_test_add_func("/io/flush-cache", test_flush_cache);
    g_test_add_func("/io/block-status", test_block_status);
    g_test_add_func("/io/sparse-read", test_sparse_read);
    g_test_add_func("/io/size-exact", test_size_exact);
    g_test_add_func("/io/offset-window", test_offset_window);
    g_test_add_func("/errors/past-end", test_past_end);
    g_test_add_func("/errors/read-only", test_read_only);
    g_test_add_func("/errors/bad-flags", test_bad_flags);
    g_test_add_func("/errors/no-meta-context", test_no_meta_context);
    g_test_add_func("/direct/native", test_direct_native);
    g_test_add_func("/direct/threads", test_direct_threads);
    g_test_add_func("/concurrency/many-in-flight", test_many_in_flight);
    g_test_add_func("/concurrency/many-in-flight-throttled",
                    test_many_in_flight_throttled);
    g_test_add_func("/concurrency/multi-conn", test_multi_conn);
    g_test_add_func("/concurrency/shared-1", test_shared_one);
    g_test_add_func("/process/exit-after-last-client",
                    test_exit_after_last_client);
    return g_test_run();
}
