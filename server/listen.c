/*
 * listen.c: listening sockets (unix, TCP over IPv4 and IPv6, or sockets
 * passed by systemd), accepting, and handing connections to the loops.
 * Main thread only.
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096
#define EMFILE_PAUSE_NS (100 * 1000 * 1000)

typedef struct Listener {
    int fd;
    AioHandler *h;
} Listener;

static GArray *listeners;       /* Listener */
static char *unix_path_created; /* unlinked at exit */
static bool paused;
static int activated;            /* sockets passed by systemd */
static AioTimer emfile_timer;
static AioContext *listen_ctx;

static void accept_cb(void *opaque);

static void set_watch(bool on)
{
    guint i;

    for (i = 0; i < listeners->len; i++) {
        Listener *l = &g_array_index(listeners, Listener, i);

        aio_fd_set(l->h, on ? accept_cb : NULL, NULL);
    }
}

void listen_pause(bool p)
{
    paused = p;
    if (!aio_timer_pending(&emfile_timer)) {
        set_watch(!p);
    }
}

static void emfile_resume(void *opaque)
{
    if (!paused) {
        set_watch(true);
    }
}

static char *peer_name(const struct sockaddr_storage *ss, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];

    switch (ss->ss_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;

        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        return g_strdup_printf("%s:%u", host, ntohs(in->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;

        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        return g_strdup_printf("[%s]:%u", host, ntohs(in6->sin6_port));
    }
    case AF_UNIX:
        return g_strdup("unix");
    default:
        return g_strdup("unknown");
    }
}

static void accept_cb(void *opaque)
{
    Listener *l = opaque;

    while (!paused) {
        struct sockaddr_storage ss = { 0 };
        socklen_t len = sizeof(ss);
        unsigned long n;
        char *peer;
        int fd, one = 1;

        fd = accept4(l->fd, (struct sockaddr *)&ss, &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                /* Out of descriptors: back off instead of spinning. */
                log_error("accept: %s", g_strerror(errno));
                set_watch(false);
                aio_timer_mod(&emfile_timer, clock_ns() + EMFILE_PAUSE_NS);
            } else if (errno != EAGAIN && errno != EINTR &&
                       errno != ECONNABORTED) {
                log_error("accept: %s", g_strerror(errno));
            }
            return;
        }
        if (atomic_load_seq(&server.shutting_down)) {
            close(fd);
            continue;
        }
        if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        n = atomic_fetch_add(&server.conns_total, 1) + 1;
        peer = peer_name(&ss, len);
        {
            char *label = g_strdup_printf("client %lu (%s)", n, peer);

            log_info("%s: connected", label);
            server_conn_opened();
            conn_start(aio_loops_next(server.loops), fd, label);
            g_free(label);
        }
        g_free(peer);
    }
}

static int add_listener(int fd, GError **errp)
{
    Listener l = { .fd = fd };

    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        g_set_error(errp, RAWNBD_ERROR, errno,
                    "cannot set up listening socket: %s", g_strerror(errno));
        return -1;
    }
    g_array_append_val(listeners, l);
    return 0;
}

int unix_listen_socket(const char *path, int backlog, GError **errp)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct stat st;
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        g_set_error(errp, RAWNBD_ERROR, EINVAL,
                    "unix socket path too long: %s", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);     /* length checked */
    /* A stale socket from an earlier run is replaced; other files not. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
        listen(fd, backlog) < 0) {
        int err = errno;

        if (fd >= 0) {
            close(fd);
        }
        g_set_error(errp, RAWNBD_ERROR, err,
                    "cannot listen on unix socket %s: %s", path,
                    g_strerror(err));
        return -1;
    }
    return fd;
}

static bool listen_unix(const char *path, GError **errp)
{
    int fd = unix_listen_socket(path, LISTEN_BACKLOG, errp);

    if (fd < 0) {
        return false;
    }
    unix_path_created = g_strdup(path);
    if ((server.cfg->socket_mode_set &&
         chmod(path, server.cfg->socket_mode) < 0) ||
        ((server.cfg->socket_uid >= 0 || server.cfg->socket_gid >= 0) &&
         chown(path, server.cfg->socket_uid, server.cfg->socket_gid) < 0)) {
        int err = errno;

        close(fd);
        g_set_error(errp, RAWNBD_ERROR, err,
                    "cannot set the mode or owner of %s: %s", path,
                    g_strerror(err));
        return false;
    }
    return add_listener(fd, errp) == 0;
}

static bool listen_tcp(const char *addr, const char *port, GError **errp)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
    };
    struct addrinfo *res, *ai;
    int r, count = 0, last_err = 0;

    r = getaddrinfo(addr, port, &hints, &res);
    if (r == EAI_ADDRFAMILY || r == EAI_NONAME) {
        hints.ai_flags &= ~AI_ADDRCONFIG;
        r = getaddrinfo(addr, port, &hints, &res);
    }
    if (r != 0) {
        g_set_error(errp, RAWNBD_ERROR, EINVAL,
                    "cannot resolve %s port %s: %s", addr ? addr : "*", port,
                    gai_strerror(r));
        return false;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        int fd, one = 1;

        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            last_err = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            /* IPv4 gets its own socket; keep them apart. */
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, LISTEN_BACKLOG) < 0) {
            last_err = errno;
            close(fd);
            continue;
        }
        if (add_listener(fd, errp) < 0) {
            close(fd);
            freeaddrinfo(res);
            return false;
        }
        count++;
    }
    freeaddrinfo(res);
    if (count == 0) {
        g_set_error(errp, RAWNBD_ERROR, last_err,
                    "cannot listen on %s port %s: %s", addr ? addr : "*",
                    port, g_strerror(last_err));
        return false;
    }
    return true;
}

/* systemd socket activation: LISTEN_PID/LISTEN_FDS, fds from 3 on. */
static int socket_activation_fds(void)
{
    const char *pid = getenv("LISTEN_PID");
    const char *fds = getenv("LISTEN_FDS");
    char *end;
    long n;

    if (!pid || !fds || strtol(pid, &end, 10) != getpid() || *end) {
        return 0;
    }
    n = strtol(fds, &end, 10);
    if (*end || n < 0 || n > 64) {
        return 0;
    }
    return (int)n;
}

bool listen_start(AioContext *ctx, GError **errp)
{
    const ServerConfig *cfg = server.cfg;
    guint i;

    activated = socket_activation_fds();
    listen_ctx = ctx;
    listeners = g_array_new(FALSE, TRUE, sizeof(Listener));
    aio_timer_init(ctx, &emfile_timer, emfile_resume, NULL);
    if (activated > 0) {
        int fd;

        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_FDNAMES");
        for (fd = 3; fd < 3 + activated; fd++) {
            if (add_listener(fd, errp) < 0) {
                return false;
            }
        }
    } else {
        if (cfg->socket_path && !listen_unix(cfg->socket_path, errp)) {
            return false;
        }
        if (cfg->tcp && !listen_tcp(cfg->bind_addr, cfg->port, errp)) {
            return false;
        }
    }
    for (i = 0; i < listeners->len; i++) {
        Listener *l = &g_array_index(listeners, Listener, i);

        l->h = aio_fd_add(ctx, l->fd, accept_cb, NULL, l, 0);
        if (!l->h) {
            g_set_error(errp, RAWNBD_ERROR, errno,
                        "cannot watch a listening socket: %s",
                        g_strerror(errno));
            return false;
        }
    }
    return true;
}

void listen_stop(void)
{
    guint i;

    if (!listeners) {
        return;
    }
    aio_timer_del(&emfile_timer);
    for (i = 0; i < listeners->len; i++) {
        Listener *l = &g_array_index(listeners, Listener, i);

        if (l->h) {
            aio_fd_remove(l->h);
        }
        close(l->fd);
    }
    g_array_free(listeners, TRUE);
    listeners = NULL;
    if (unix_path_created) {
        unlink(unix_path_created);
        g_free(unix_path_created);
        unix_path_created = NULL;
    }
}

/* The address of the first listener, for the URI under socket activation. */
static char *activated_address(bool *is_unix)
{
    struct sockaddr_storage ss = { 0 };
    socklen_t len = sizeof(ss);
    Listener *l;

    if (!listeners || !listeners->len) {
        return NULL;
    }
    l = &g_array_index(listeners, Listener, 0);
    if (getsockname(l->fd, (struct sockaddr *)&ss, &len) < 0) {
        return NULL;
    }
    if (ss.ss_family == AF_UNIX) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ss;

        *is_unix = true;
        return sun->sun_path[0] ? g_strdup(sun->sun_path) : NULL;
    }
    *is_unix = false;
    return peer_name(&ss, len);
}

/* The TCP port actually bound (it differs from -p 0), or NULL. */
static char *bound_port(void)
{
    guint i;

    for (i = 0; listeners && i < listeners->len; i++) {
        Listener *l = &g_array_index(listeners, Listener, i);
        struct sockaddr_storage ss = { 0 };
        socklen_t len = sizeof(ss);

        if (getsockname(l->fd, (struct sockaddr *)&ss, &len) < 0) {
            continue;
        }
        if (ss.ss_family == AF_INET) {
            return g_strdup_printf("%u", ntohs(((struct sockaddr_in *)&ss)
                                               ->sin_port));
        }
        if (ss.ss_family == AF_INET6) {
            return g_strdup_printf("%u", ntohs(((struct sockaddr_in6 *)&ss)
                                               ->sin6_port));
        }
    }
    return NULL;
}

char *listen_uri(void)
{
    const ServerConfig *cfg = server.cfg;
    const char *name = server.exports[0].name;
    /* nbds when the export named needs TLS: nothing else would reach it. */
    const char *tls = cfg->tls == TLS_REQUIRE || server.exports[0].tls_only
                      ? "s" : "";
    char *ename = g_uri_escape_string(name, NULL, FALSE);
    char *uri = NULL;

    if (activated > 0) {
        bool is_unix = false;
        char *addr = activated_address(&is_unix);

        if (addr && is_unix) {
            char *path = g_uri_escape_string(addr, "/", FALSE);

            uri = g_strdup_printf("nbd%s+unix:///%s?socket=%s", tls, ename,
                                  path);
            g_free(path);
        } else if (addr) {
            uri = g_strdup_printf("nbd%s://%s/%s", tls, addr, ename);
        } else {
            uri = g_strdup("(sockets passed by systemd)");
        }
        g_free(addr);
    } else if (cfg->socket_path && !cfg->tcp) {
        char *path = g_uri_escape_string(cfg->socket_path, "/", FALSE);

        uri = g_strdup_printf("nbd%s+unix:///%s?socket=%s", tls, ename,
                              path);
        g_free(path);
    } else {
        const char *host = cfg->bind_addr ? cfg->bind_addr : "localhost";
        bool v6 = strchr(host, ':') != NULL;
        char *bound = bound_port();
        const char *p = bound ? bound : cfg->port;
        bool port = strcmp(p, "10809") != 0;

        uri = g_strdup_printf("nbd%s://%s%s%s%s%s/%s", tls, v6 ? "[" : "",
                              host, v6 ? "]" : "", port ? ":" : "",
                              port ? p : "", ename);
        g_free(bound);
    }
    g_free(ename);
    return uri;
}
