/*
 * metrics.c: live counters, per export and in total, readable while the
 * server runs (Prometheus text over a unix or TCP socket) and dumped to
 * the log on SIGUSR1.
 *
 * Counting costs no atomic read-modify-write: each loop thread owns one
 * ExportStats per export and is its only writer (relaxed loads and stores
 * keep the concurrent readers well-defined).  A reader sums the threads'
 * copies, so it sees each counter at some recent moment.
 */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define HTTP_REQ_MAX 4096           /* bytes of the request kept */
#define HTTP_HEAD_LIMIT (1 << 20)   /* longer heads: answer anyway */
#define HTTP_IDLE_NS (5ll * 1000 * 1000 * 1000)
#define HTTP_SEND_NS (30ll * 1000 * 1000 * 1000)

/* One thread's stats for every export. */
typedef struct ThreadStats {
    ExportStats *exports;
    struct ThreadStats *next;
} ThreadStats;

static GMutex stats_lock;
static ThreadStats *all_threads;       /* under stats_lock */
static __thread ThreadStats *my_stats;

ExportStats *metrics_export_stats(const Export *e)
{
    ThreadStats *t = my_stats;

    if (!t) {
        t = g_new0(ThreadStats, 1);
        t->exports = g_new0(ExportStats, server.nexports);
        g_mutex_lock(&stats_lock);
        t->next = all_threads;
        all_threads = t;
        g_mutex_unlock(&stats_lock);
        my_stats = t;
    }
    return &t->exports[e - server.exports];
}

unsigned metrics_latency_bucket(int64_t ns)
{
    uint64_t us = ns > 0 ? ((uint64_t)ns + 999) / 1000 : 0;
    unsigned b;

    /* Bucket b holds latencies up to 2^b microseconds: b = ceil(log2). */
    if (us <= 1) {
        return 0;
    }
    b = 64 - __builtin_clzll(us - 1);
    return b < METRICS_LAT_BUCKETS - 1 ? b : METRICS_LAT_BUCKETS - 1;
}

/* ---- summing and formatting --------------------------------------------- */

static void sum_into(ExportStats *dst, const ExportStats *src)
{
    unsigned i;

    for (i = 0; i < METRICS_NCMDS; i++) {
        dst->requests[i] += atomic_read(&src->requests[i]);
    }
    for (i = 0; i < METRICS_NERRS; i++) {
        dst->errors[i] += atomic_read(&src->errors[i]);
    }
    for (i = 0; i < METRICS_LAT_BUCKETS; i++) {
        dst->latency[i] += atomic_read(&src->latency[i]);
    }
    dst->latency_sum_ns += atomic_read(&src->latency_sum_ns);
    dst->bytes_read += atomic_read(&src->bytes_read);
    dst->bytes_written += atomic_read(&src->bytes_written);
    dst->connections += atomic_read(&src->connections);
    dst->connections_open += atomic_read(&src->connections_open);
    dst->in_flight += atomic_read(&src->in_flight);
}

static const char *const cmd_labels[METRICS_NCMDS] = {
    "read", "write", "disc", "flush", "trim", "cache", "write_zeroes",
    "block_status", "other",
};

/* NBD error values in the order of ExportStats.errors. */
static const uint32_t err_values[METRICS_NERRS] = {
    NBD_EPERM, NBD_EIO, NBD_ENOMEM, NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW,
    NBD_ENOTSUP, NBD_ESHUTDOWN, 0,
};

unsigned metrics_err_index(uint32_t nbd_err)
{
    unsigned i;

    for (i = 0; i < METRICS_NERRS - 1; i++) {
        if (err_values[i] == nbd_err) {
            return i;
        }
    }
    return METRICS_NERRS - 1;
}

static void escape_label(GString *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            g_string_append_c(out, '\\');
            g_string_append_c(out, *s);
        } else if (*s == '\n') {
            g_string_append(out, "\\n");
        } else {
            g_string_append_c(out, *s);
        }
    }
}

/* "{LABELS}" without a trailing comma, or "" when there are none. */
static char *braces(const char *label)
{
    size_t n = strlen(label);

    if (n == 0) {
        return g_strdup("");
    }
    return g_strdup_printf("{%.*s}", (int)(n - 1), label);
}

/*
 * One block of series for @st.  @label is "" for the totals, or
 * `export="NAME",` for an export; @prefix is "" or "export_".
 */
static void format_stats(GString *out, const ExportStats *st,
                         const char *prefix, const char *label, bool help)
{
    uint64_t cum = 0, count = 0;
    char *only = braces(label);
    unsigned i;

#define HELP(name, type, text)                                             \
    if (help) {                                                            \
        g_string_append_printf(out, "# HELP rawnbd_%s%s %s\n"             \
                               "# TYPE rawnbd_%s%s %s\n", prefix, name,    \
                               text, prefix, name, type);                  \
    }
    HELP("requests_total", "counter", "Requests received, by command.");
    for (i = 0; i < METRICS_NCMDS; i++) {
        g_string_append_printf(out, "rawnbd_%srequests_total{%scommand=\"%s\"}"
                               " %" PRIu64 "\n", prefix, label,
                               cmd_labels[i], st->requests[i]);
    }
    HELP("request_errors_total", "counter",
         "Requests answered with an error, by NBD error.");
    for (i = 0; i < METRICS_NERRS; i++) {
        g_string_append_printf(out,
                               "rawnbd_%srequest_errors_total{%serror=\"%s\"}"
                               " %" PRIu64 "\n", prefix, label,
                               i < METRICS_NERRS - 1
                               ? nbd_err_name(err_values[i]) : "other",
                               st->errors[i]);
    }
    HELP("read_bytes_total", "counter", "Bytes read by clients.");
    g_string_append_printf(out, "rawnbd_%sread_bytes_total%s %" PRIu64 "\n",
                           prefix, only, st->bytes_read);
    HELP("written_bytes_total", "counter", "Bytes written by clients.");
    g_string_append_printf(out, "rawnbd_%swritten_bytes_total%s %" PRIu64
                           "\n", prefix, only, st->bytes_written);
    HELP("requests_in_flight", "gauge", "Requests being served now.");
    g_string_append_printf(out, "rawnbd_%srequests_in_flight%s %" PRId64
                           "\n", prefix, only, st->in_flight);
    HELP("sessions_total", "counter", "Connections that entered "
         "transmission.");
    g_string_append_printf(out, "rawnbd_%ssessions_total%s %" PRIu64 "\n",
                           prefix, only, st->connections);
    HELP("sessions_open", "gauge", "Connections in transmission now.");
    g_string_append_printf(out, "rawnbd_%ssessions_open%s %" PRId64 "\n",
                           prefix, only, st->connections_open);
    HELP("request_duration_seconds", "histogram",
         "Time from request header to queued reply.");
    for (i = 0; i < METRICS_LAT_BUCKETS; i++) {
        cum += st->latency[i];
        if (i == METRICS_LAT_BUCKETS - 1) {
            g_string_append_printf(out, "rawnbd_%srequest_duration_seconds_"
                                   "bucket{%sle=\"+Inf\"} %" PRIu64 "\n",
                                   prefix, label, cum);
        } else {
            g_string_append_printf(out, "rawnbd_%srequest_duration_seconds_"
                                   "bucket{%sle=\"%.9g\"} %" PRIu64 "\n",
                                   prefix, label, (double)(1ull << i) * 1e-6,
                                   cum);
        }
    }
    count = cum;
    g_string_append_printf(out, "rawnbd_%srequest_duration_seconds_sum%s "
                           "%.9f\n", prefix, only,
                           st->latency_sum_ns * 1e-9);
    g_string_append_printf(out, "rawnbd_%srequest_duration_seconds_count%s"
                           " %" PRIu64 "\n", prefix, only, count);
    g_free(only);
#undef HELP
}

char *metrics_format(void)
{
    GString *out = g_string_new(NULL);
    ExportStats *per = g_new0(ExportStats, server.nexports);
    ExportStats total = { 0 };
    ThreadStats *t;
    unsigned i;

    g_mutex_lock(&stats_lock);
    for (t = all_threads; t; t = t->next) {
        for (i = 0; i < server.nexports; i++) {
            sum_into(&per[i], &t->exports[i]);
        }
    }
    g_mutex_unlock(&stats_lock);
    for (i = 0; i < server.nexports; i++) {
        sum_into(&total, &per[i]);
    }

    g_string_append_printf(out,
        "# HELP rawnbd_connections_total Connections accepted.\n"
        "# TYPE rawnbd_connections_total counter\n"
        "rawnbd_connections_total %lu\n"
        "# HELP rawnbd_connections_open Connections open now.\n"
        "# TYPE rawnbd_connections_open gauge\n"
        "rawnbd_connections_open %u\n"
        "# HELP rawnbd_connections_negotiating Connections negotiating now.\n"
        "# TYPE rawnbd_connections_negotiating gauge\n"
        "rawnbd_connections_negotiating %u\n",
        atomic_read(&server.conns_total), atomic_read(&server.conns_live),
        atomic_read(&server.conns_negotiating));
    format_stats(out, &total, "", "", true);
    for (i = 0; i < server.nexports; i++) {
        GString *label = g_string_new("export=\"");

        escape_label(label, server.exports[i].name);
        g_string_append(label, "\",");
        format_stats(out, &per[i], "export_", label->str, i == 0);
        g_string_free(label, TRUE);
    }
    g_free(per);
    return g_string_free(out, FALSE);
}

void metrics_dump(void)
{
    char *text = metrics_format();

    log_info("metrics (SIGUSR1):\n%s", text);
    g_free(text);
}

/* ---- the endpoint --------------------------------------------------------- */

/*
 * One reader of the endpoint, driven by fd handlers on the main loop: it
 * reads the request (http_read), then sends the reply as the socket takes
 * it (http_write), then is closed.  @timer bounds both phases: the request
 * must come within HTTP_IDLE_NS; the reply must keep moving (no stall of
 * HTTP_IDLE_NS) and be out within HTTP_SEND_NS, so a reader that stops
 * reading holds one reply's memory for a bounded time only.
 */
typedef struct HttpClient {
    int fd;
    AioHandler *h;
    AioTimer timer;
    GString *req;
    size_t seen;                /* bytes of the request read */
    char *resp;                 /* the reply once built, else NULL */
    size_t resp_len;
    size_t resp_off;            /* bytes of it sent */
    int64_t send_deadline;      /* clock_ns() by which it must be out */
    GList link;
} HttpClient;

static GQueue http_clients;
static int metrics_fd = -1;
static AioHandler *metrics_handler;
static char *metrics_unix_path;

static void http_close(HttpClient *hc)
{
    g_queue_unlink(&http_clients, &hc->link);
    aio_timer_del(&hc->timer);
    if (hc->h) {
        aio_fd_remove(hc->h);
    }
    close(hc->fd);
    g_string_free(hc->req, TRUE);
    g_free(hc->resp);
    g_free(hc);
}

/* Send what the socket takes; close once all is out or on an error. */
static void http_write(void *opaque)
{
    HttpClient *hc = opaque;

    while (hc->resp_off < hc->resp_len) {
        ssize_t w = send(hc->fd, hc->resp + hc->resp_off,
                         hc->resp_len - hc->resp_off, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0 && errno == EAGAIN) {
            /* Full: wait for room, but not past the stall or the end. */
            aio_timer_mod(&hc->timer, MIN(clock_ns() + HTTP_IDLE_NS,
                                          hc->send_deadline));
            return;
        }
        if (w <= 0) {
            break;              /* the reader went away */
        }
        hc->resp_off += w;
    }
    http_close(hc);
}

static void http_respond(HttpClient *hc)
{
    char *body = metrics_format();

    if (g_str_has_prefix(hc->req->str, "GET") ||
        g_str_has_prefix(hc->req->str, "HEAD")) {
        hc->resp = g_strdup_printf("HTTP/1.1 200 OK\r\n"
                                   "Content-Type: text/plain; "
                                   "version=0.0.4\r\n"
                                   "Content-Length: %zu\r\n"
                                   "Connection: close\r\n\r\n%s",
                                   strlen(body),
                                   g_str_has_prefix(hc->req->str, "HEAD")
                                   ? "" : body);
        g_free(body);
    } else {
        /* Not HTTP (e.g. a bare socket reader): just the text. */
        hc->resp = body;
    }
    hc->resp_len = strlen(hc->resp);
    hc->send_deadline = clock_ns() + HTTP_SEND_NS;
    /* Whatever else the reader sends is ignored from now on. */
    if (aio_fd_set(hc->h, NULL, http_write) < 0) {
        http_close(hc);
        return;
    }
    http_write(hc);
}

static void http_read(void *opaque)
{
    HttpClient *hc = opaque;
    char buf[1024];
    ssize_t r = recv(hc->fd, buf, sizeof(buf), 0);

    if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    if (r > 0) {
        /*
         * Read the whole request head, however long (closing with bytes
         * unread would reset the connection and lose the reply), but keep
         * only its start and the last bytes, where the end is looked for.
         */
        hc->seen += r;
        if (hc->req->len < HTTP_REQ_MAX) {
            g_string_append_len(hc->req, buf, r);
        } else {
            g_string_erase(hc->req, HTTP_REQ_MAX - 4, -1);
            g_string_append_len(hc->req, buf + (r > 4 ? r - 4 : 0),
                                r > 4 ? 4 : r);
        }
        if (!strstr(hc->req->str, "\r\n\r\n") &&
            !strstr(hc->req->str, "\n\n") && hc->seen < HTTP_HEAD_LIMIT) {
            return;
        }
    }
    http_respond(hc);
}

/*
 * The timer: a reader silent for HTTP_IDLE_NS gets the reply anyway; one
 * that stopped taking the reply is dropped with it unfinished.
 */
static void http_timeout(void *opaque)
{
    HttpClient *hc = opaque;

    if (hc->resp) {
        log_debug("metrics: reader stalled with %zu of %zu bytes sent: "
                  "dropped", hc->resp_off, hc->resp_len);
        http_close(hc);
    } else {
        http_respond(hc);
    }
}

static void metrics_accept(void *opaque)
{
    for (;;) {
        int fd = accept4(metrics_fd, NULL, NULL,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        HttpClient *hc;

        if (fd < 0) {
            return;
        }
        hc = g_new0(HttpClient, 1);
        hc->link.data = hc;
        g_queue_push_tail_link(&http_clients, &hc->link);
        hc->fd = fd;
        hc->req = g_string_new(NULL);
        hc->h = aio_fd_add(server.main_ctx, fd, http_read, NULL, hc, 0);
        aio_timer_init(server.main_ctx, &hc->timer, http_timeout, hc);
        aio_timer_mod(&hc->timer, clock_ns() + HTTP_IDLE_NS);
        if (!hc->h) {
            http_close(hc);
        }
    }
}

/* ADDR: [HOST]:PORT, else (a '/' or no ':') a unix socket path. */
static int metrics_socket(const char *addr, GError **errp)
{
    int fd, one = 1;

    if (strchr(addr, '/') || !strchr(addr, ':')) {
        fd = unix_listen_socket(addr, 16, errp);
        if (fd < 0) {
            g_prefix_error(errp, "metrics: ");
            return -1;
        }
        metrics_unix_path = g_strdup(addr);
        return fd;
    } else {
        const char *colon = strrchr(addr, ':');
        char *host;
        struct addrinfo hints = {
            .ai_socktype = SOCK_STREAM,
            .ai_flags = AI_PASSIVE,
        }, *res;
        int r;

        if (!colon || !colon[1]) {
            g_set_error(errp, RAWNBD_ERROR, EINVAL,
                        "--metrics '%s': use a socket path or [HOST]:PORT",
                        addr);
            return -1;
        }
        host = g_strndup(addr, colon - addr);
        if (host[0] == '[' && host[strlen(host) - 1] == ']') {
            memmove(host, host + 1, strlen(host));
            host[strlen(host) - 1] = '\0';
        }
        /* No host: loopback only, metrics are not for the world. */
        r = getaddrinfo(*host ? host : "127.0.0.1", colon + 1, &hints, &res);
        g_free(host);
        if (r != 0) {
            g_set_error(errp, RAWNBD_ERROR, EINVAL, "--metrics '%s': %s",
                        addr, gai_strerror(r));
            return -1;
        }
        fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC |
                    SOCK_NONBLOCK, 0);
        if (fd >= 0) {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        }
        if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 ||
            listen(fd, 16) < 0) {
            g_set_error(errp, RAWNBD_ERROR, errno,
                        "cannot listen for metrics on %s: %s", addr,
                        g_strerror(errno));
            if (fd >= 0) {
                close(fd);
            }
            freeaddrinfo(res);
            return -1;
        }
        freeaddrinfo(res);
        return fd;
    }
}

bool metrics_start(AioContext *ctx, const char *addr, GError **errp)
{
    metrics_fd = metrics_socket(addr, errp);
    if (metrics_fd < 0) {
        return false;
    }
    metrics_handler = aio_fd_add(ctx, metrics_fd, metrics_accept, NULL, NULL,
                                 0);
    return metrics_handler != NULL;
}

void metrics_stop(void)
{
    while (http_clients.head) {
        http_close(http_clients.head->data);
    }
    if (metrics_handler) {
        aio_fd_remove(metrics_handler);
        metrics_handler = NULL;
    }
    if (metrics_fd >= 0) {
        close(metrics_fd);
        metrics_fd = -1;
    }
    if (metrics_unix_path) {
        unlink(metrics_unix_path);
        g_free(metrics_unix_path);
        metrics_unix_path = NULL;
    }
}

void metrics_free(void)
{
    ThreadStats *t;

    g_mutex_lock(&stats_lock);
    while ((t = all_threads)) {
        all_threads = t->next;
        g_free(t->exports);
        g_free(t);
    }
    g_mutex_unlock(&stats_lock);
}
