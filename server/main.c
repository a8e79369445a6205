/*
 * main.c: start-up, signals, shutdown.
 *
 * Exit status: 0 after a clean stop (signal, or the last client leaving
 * without --persistent); 1 when setting up fails (image, TLS credentials,
 * listening, metrics, pid file, threads); 2 for bad usage.  With --fork
 * the parent exits only once the child is ready, with the child's
 * start-up status.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coro/thread-pool.h"

#define SHUTDOWN_GRACE_NS (10ll * 1000 * 1000 * 1000)

Server server;

static bool quit;               /* main thread: leave the main loop */
static bool stopping;           /* main thread: shutdown in progress */
static AioTimer grace_timer;
static int signal_fd = -1;
static AioHandler *signal_handler;

Export *server_find_export(const char *name, size_t len)
{
    unsigned i;

    for (i = 0; i < server.nexports; i++) {
        Export *e = &server.exports[i];

        if (strlen(e->name) == len && memcmp(e->name, name, len) == 0) {
            return e;
        }
    }
    /* The empty name means the default export, the first. */
    return len == 0 && server.nexports ? &server.exports[0] : NULL;
}

/* ---- connection accounting ---------------------------------------------- */

void server_conn_opened(void)
{
    unsigned live = atomic_fetch_add(&server.conns_live, 1) + 1;

    if (server.cfg->shared && live >= server.cfg->shared) {
        listen_pause(true);
    }
}

static void conn_closed_bh(void *opaque)
{
    unsigned live = atomic_load_seq(&server.conns_live);

    if (!stopping && server.cfg->shared && live < server.cfg->shared) {
        listen_pause(false);
    }
    if (live == 0 && (stopping || !server.cfg->persistent)) {
        quit = true;
    }
}

void server_conn_closed(void)
{
    atomic_fetch_sub(&server.conns_live, 1);
    aio_bh_schedule_oneshot(server.main_ctx, conn_closed_bh, NULL,
                            "conn-closed");
}

/* ---- shutdown --------------------------------------------------------- */

static void grace_expired(void *opaque)
{
    log_warn("clients still connected after %lld s: dropping them",
             SHUTDOWN_GRACE_NS / 1000000000);
    conn_shutdown_all(true);
}

static void begin_shutdown(const char *why)
{
    if (stopping) {
        /* A second signal: do not wait for requests in flight. */
        log_info("%s again: dropping clients now", why);
        conn_shutdown_all(true);
        return;
    }
    log_info("%s: finishing requests in flight, then exiting", why);
    stopping = true;
    atomic_store_seq(&server.shutting_down, true);
    listen_stop();
    conn_shutdown_all(false);
    aio_timer_mod(&grace_timer, clock_ns() + SHUTDOWN_GRACE_NS);
    if (atomic_load_seq(&server.conns_live) == 0) {
        quit = true;
    }
}

static void signal_read(void *opaque)
{
    struct signalfd_siginfo si;

    while (read(signal_fd, &si, sizeof(si)) == sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGINT:
            begin_shutdown("interrupted");
            break;
        case SIGTERM:
            begin_shutdown("terminated");
            break;
        case SIGUSR1:
            metrics_dump();
            break;
        case SIGHUP:
            log_info("SIGHUP ignored: logs go to %s and need no reopening",
                     server.cfg->log_target == LOG_TARGET_SYSLOG
                     ? "syslog" : "stderr");
            break;
        default:
            break;
        }
    }
}

static void handled_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGUSR1);
}

/*
 * Called right before the server makes its first socket: from then on the
 * handled signals wait (blocked) until the main loop reads them from the
 * signalfd, so that SIGTERM never kills a server that has made a socket
 * file without removing it.  Until then they have their default effect,
 * so that a start-up stuck (opening a FIFO, an NFS image) can be
 * interrupted.  No thread exists yet; the loop threads, started later,
 * block every signal themselves (aio_loops_start), and so do the threads
 * they start.
 */
static void block_signals(void)
{
    sigset_t set;

    handled_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void setup_signals(AioContext *ctx)
{
    sigset_t set;

    handled_signals(&set);
    signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (signal_fd < 0) {
        fprintf(stderr, "rawnbd: signalfd: %s\n", g_strerror(errno));
        exit(1);
    }
    signal_handler = aio_fd_add(ctx, signal_fd, signal_read, NULL, NULL, 0);
}

/* Many clients need many descriptors: raise the soft limit to the hard. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static bool write_pid_file(const char *path, GError **errp)
{
    char *s = g_strdup_printf("%d\n", getpid());
    bool ok = g_file_set_contents(path, s, -1, errp);

    g_free(s);
    if (!ok) {
        g_prefix_error(errp, "cannot write pid file: ");
    }
    return ok;
}

/*
 * Remove our pid file, unless it names another process by now: a server
 * started on the same path while we were stopping must keep its file.
 */
static void remove_pid_file(const char *path)
{
    char *text = NULL;

    if (g_file_get_contents(path, &text, NULL, NULL) &&
        strtol(text, NULL, 10) == getpid()) {
        unlink(path);
    }
    g_free(text);
}

static int ready_fd = -1;       /* --fork: tells the parent we are up */

/*
 * Fork.  The parent waits until the child says it is ready (listening,
 * loops running) and exits 0, or 1 if the child failed first; the child
 * goes on and calls daemon_ready().
 */
static void daemonize(void)
{
    int pipefd[2];
    pid_t pid;
    char c;

    if (pipe2(pipefd, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
        fprintf(stderr, "rawnbd: fork: %s\n", g_strerror(errno));
        exit(1);
    }
    if (pid > 0) {
        close(pipefd[1]);
        _exit(read(pipefd[0], &c, 1) == 1 ? 0 : 1);
    }
    close(pipefd[0]);
    ready_fd = pipefd[1];
    setsid();
}

static void daemon_ready(void)
{
    int devnull;

    if (ready_fd < 0) {
        return;
    }
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) {
        dup2(devnull, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO);
        close(devnull);
    }
    if (write(ready_fd, "", 1) != 1) {
        /* The parent is gone: nobody to tell. */
    }
    close(ready_fd);
    ready_fd = -1;
}

/*
 * Start-up failed: say why once, remove the sockets (and metrics socket)
 * already made, exit 1.
 */
static int setup_failed(GError *err)
{
    fprintf(stderr, "rawnbd: %s\n", err->message);
    g_error_free(err);
    listen_stop();
    metrics_stop();
    return 1;
}

/*
 * TLS off with TLS credentials or settings: they are not used, which
 * is allowed (a script may switch TLS off with one option) but said once.
 */
static void warn_unused_tls_options(const ServerConfig *c)
{
    GString *opts;

    if (c->tls != TLS_OFF || (!c->tls_certificates && !c->tls_psk &&
                              !c->tls_priority && !c->tls_verify_peer)) {
        return;
    }
    opts = g_string_new(NULL);
    if (c->tls_certificates) {
        g_string_append(opts, ", --tls-certificates");
    }
    if (c->tls_psk) {
        g_string_append(opts, ", --tls-psk");
    }
    if (c->tls_verify_peer) {
        g_string_append(opts, ", --tls-verify-peer");
    }
    if (c->tls_priority) {
        g_string_append(opts, ", --tls-priority");
    }
    log_warn("TLS is off: ignoring %s", opts->str + 2);
    g_string_free(opts, TRUE);
}

/* File scope, so that what it holds stays reachable on early exits. */
static ServerConfig cfg;

int main(int argc, char **argv)
{
    GError *err = NULL;
    char *uri;
    unsigned i;

    signal(SIGPIPE, SIG_IGN);
    cli_parse(argc, argv, &cfg);
    server.cfg = &cfg;
    log_init(cfg.log_target);
    warn_unused_tls_options(&cfg);
    raise_fd_limit();

    server.nexports = cfg.exports->len;
    server.exports = g_new0(Export, server.nexports);
    for (i = 0; i < server.nexports; i++) {
        if (!export_open(&server.exports[i],
                         g_ptr_array_index(cfg.exports, i), &cfg, &err)) {
            return setup_failed(err);
        }
    }
    /* Buffered writes queue per file (its inode lock): a few per image. */
    thread_pool_set_max_threads(POOL_NARROW, CLAMP(2 * server.nexports, 2, 16));

    if (!tls_init(&cfg, &err)) {
        return setup_failed(err);
    }

    server.main_ctx = aio_context_new();
    if (!server.main_ctx) {
        fprintf(stderr, "rawnbd: cannot create the event loop: %s\n",
                g_strerror(errno));
        return 1;
    }
    aio_context_set_current(server.main_ctx);
    aio_timer_init(server.main_ctx, &grace_timer, grace_expired, NULL);
    block_signals();
    if (!listen_start(server.main_ctx, &err)) {
        return setup_failed(err);
    }

    if (cfg.metrics && !metrics_start(server.main_ctx, cfg.metrics, &err)) {
        return setup_failed(err);
    }

    if (cfg.fork) {
        daemonize();
    }
    if (cfg.pid_file && !write_pid_file(cfg.pid_file, &err)) {
        return setup_failed(err);
    }
    setup_signals(server.main_ctx);

    server.loops = aio_loops_start(cfg.threads, cfg.pin);
    if (!server.loops) {
        g_set_error(&err, RAWNBD_ERROR, errno,
                    "cannot start event loops: %s", g_strerror(errno));
        return setup_failed(err);
    }
    for (i = 0; i < aio_loops_count(server.loops); i++) {
        aio_context_set_poll_max(aio_loops_get(server.loops, i),
                                 cfg.poll_us * 1000ll);
    }

    /*
     * Ready: the pid file written, the loops running.  The "listening at"
     * line and --print-uri come only now, so that whoever waits for them
     * can rely on both; with --fork the parent exits after them.
     */
    uri = listen_uri();
    for (i = 0; i < server.nexports; i++) {
        Export *e = &server.exports[i];

        log_info("export '%s': %s, %" PRIu64 " bytes%s%s%s", e->name,
                 e->path, e->size, e->read_only ? ", read-only" : "",
                 e->direct ? ", O_DIRECT" : "",
                 e->tls_only ? ", TLS only" : "");
    }
    log_info("listening at %s%s", uri,
             cfg.tls == TLS_REQUIRE ? " (TLS required)" :
             cfg.tls == TLS_ON ? " (TLS offered)" : "");
    if (cfg.print_uri) {
        printf("%s\n", uri);
        fflush(stdout);
    }
    g_free(uri);
    daemon_ready();

    while (!quit) {
        aio_poll(server.main_ctx, true);
    }

    if (!stopping) {
        log_info("last client disconnected: exiting");
        stopping = true;
        atomic_store_seq(&server.shutting_down, true);
        listen_stop();
    }
    aio_timer_del(&grace_timer);
    aio_loops_stop(server.loops);
    while (aio_poll(server.main_ctx, false)) {
    }
    for (i = 0; i < server.nexports; i++) {
        export_close(&server.exports[i]);
    }
    g_free(server.exports);
    if (cfg.pid_file) {
        remove_pid_file(cfg.pid_file);
    }
    metrics_stop();
    metrics_free();
    aio_fd_remove(signal_handler);
    close(signal_fd);
    aio_context_free(server.main_ctx);
    if (cfg.tls != TLS_OFF) {
        tls_cleanup();
    }
    cli_free(&cfg);
    co_pool_shutdown();
    return 0;
}
