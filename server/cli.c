/*
 * cli.c: command-line options.  Spellings follow qemu-nbd (and nbdkit
 * where qemu-nbd has none) wherever the meaning matches.
 */
#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_PORT "10809"
#define DEFAULT_HANDSHAKE_LIMIT 10
#define DEFAULT_MAX_HANDSHAKES 1024
#define DEFAULT_MAX_INFLIGHT 256

/* Bad usage: one line, exit 2. */
static void G_GNUC_PRINTF(1, 2) G_GNUC_NORETURN usage_error(const char *fmt,
                                                          ...)
{
    va_list ap;

    fputs("rawnbd: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (try 'rawnbd --help')\n", stderr);
    exit(2);
}

/* Parse an unsigned decimal with an optional K/M/G/T suffix (powers of 2). */
static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    int shift = 0;

    if (!s || !*s || *s == '-' || *s == '+') {
        return false;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s) {
        return false;
    }
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: break;
    }
    if (*end == 'i' && shift) {
        end++;
    }
    if (*end == 'B' && shift) {
        end++;
    }
    if (*end || (shift && v > (UINT64_MAX >> shift))) {
        return false;
    }
    *out = (uint64_t)v << shift;
    return true;
}

static unsigned parse_uint(const char *opt, const char *s, unsigned max)
{
    uint64_t v;
    char *end;

    errno = 0;
    if (!s || !*s || *s == '-' || *s == '+') {
        usage_error("invalid value for %s: '%s'", opt, s ? s : "");
    }
    v = strtoull(s, &end, 10);
    if (errno || *end || v > max) {
        usage_error("invalid value for %s: '%s'", opt, s);
    }
    return (unsigned)v;
}

static int verbose_count;

static gboolean opt_verbose(const gchar *name, const gchar *value,
                            gpointer data, GError **error)
{
    verbose_count++;
    return TRUE;
}

void cli_parse(int argc, char **argv, ServerConfig *cfg)
{
    char *socket_path = NULL, *unix_path = NULL, *bind = NULL, *ipaddr = NULL;
    char *port = NULL, *export_name = NULL, *description = NULL;
    char *cache = NULL, *aio = NULL, *discard = NULL, *format = NULL;
    char *shared = NULL, *threads = NULL, *handshake_limit = NULL;
    char *max_handshakes = NULL, *max_inflight = NULL, *offset = NULL;
    char *log_target = NULL, *pid_file = NULL;
    gboolean read_only = FALSE, persistent = FALSE, version = FALSE;
    gboolean nocache = FALSE, do_fork = FALSE, pin = FALSE;
    gboolean print_uri = FALSE;
    char **files = NULL;
    GOptionEntry entries[] = {
        { "socket", 'k', 0, G_OPTION_ARG_FILENAME, &socket_path,
          "Listen on the unix socket PATH (no TCP)", "PATH" },
        { "unix", 'U', 0, G_OPTION_ARG_FILENAME, &unix_path,
          "Same as --socket", "PATH" },
        { "port", 'p', 0, G_OPTION_ARG_STRING, &port,
          "TCP port to listen on (default 10809)", "PORT" },
        { "bind", 'b', 0, G_OPTION_ARG_STRING, &bind,
          "Address to listen on (default: all, IPv4 and IPv6)", "ADDR" },
        { "ipaddr", 'i', 0, G_OPTION_ARG_STRING, &ipaddr,
          "Same as --bind", "ADDR" },
        { "export-name", 'x', 0, G_OPTION_ARG_STRING, &export_name,
          "Export name (default: empty)", "NAME" },
        { "description", 'D', 0, G_OPTION_ARG_STRING, &description,
          "Export description shown to clients", "TEXT" },
        { "read-only", 'r', 0, G_OPTION_ARG_NONE, &read_only,
          "Export read-only", NULL },
        { "readonly", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_NONE, &read_only,
          NULL, NULL },
        { "offset", 'o', 0, G_OPTION_ARG_STRING, &offset,
          "Serve the image from byte OFFSET on", "OFFSET" },
        { "format", 'f', 0, G_OPTION_ARG_STRING, &format,
          "Image format: only 'raw' is supported", "raw" },
        { "persistent", 't', 0, G_OPTION_ARG_NONE, &persistent,
          "Keep running after the last client disconnects", NULL },
        { "shared", 'e', 0, G_OPTION_ARG_STRING, &shared,
          "Serve at most N clients at once (default 0: unlimited)", "N" },
        { "cache", 0, 0, G_OPTION_ARG_STRING, &cache,
          "none (O_DIRECT) or writeback (page cache; default)", "MODE" },
        { "nocache", 'n', 0, G_OPTION_ARG_NONE, &nocache,
          "Same as --cache=none", NULL },
        { "aio", 0, 0, G_OPTION_ARG_STRING, &aio,
          "native (Linux AIO, needs --cache=none) or threads", "MODE" },
        { "discard", 0, 0, G_OPTION_ARG_STRING, &discard,
          "unmap (TRIM punches holes; default) or ignore", "MODE" },
        { "threads", 0, 0, G_OPTION_ARG_STRING, &threads,
          "Number of event-loop threads (default: one per CPU)", "N" },
        { "pin", 0, 0, G_OPTION_ARG_NONE, &pin,
          "Pin each event-loop thread to a CPU", NULL },
        { "handshake-limit", 0, 0, G_OPTION_ARG_STRING, &handshake_limit,
          "Drop clients that have not finished negotiating after SECONDS "
          "(default 10, 0 = never)", "SECONDS" },
        { "max-handshakes", 0, 0, G_OPTION_ARG_STRING, &max_handshakes,
          "Connections allowed to negotiate at once; beyond it the oldest "
          "is dropped (default 1024)", "N" },
        { "max-inflight", 0, 0, G_OPTION_ARG_STRING, &max_inflight,
          "Requests in flight per connection (default 256)", "N" },
        { "fork", 0, 0, G_OPTION_ARG_NONE, &do_fork,
          "Run in the background once listening", NULL },
        { "pid-file", 0, 0, G_OPTION_ARG_FILENAME, &pid_file,
          "Write the server's process id to PATH", "PATH" },
        { "log", 0, 0, G_OPTION_ARG_STRING, &log_target,
          "Where to log: stderr (default) or syslog", "TARGET" },
        { "print-uri", 0, 0, G_OPTION_ARG_NONE, &print_uri,
          "Print the URI clients should use on stdout", NULL },
        { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK,
          opt_verbose, "Log each request (repeat for more)", NULL },
        { "version", 'V', 0, G_OPTION_ARG_NONE, &version,
          "Print the version and exit", NULL },
        { G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &files,
          NULL, "FILE" },
        { NULL },
    };
    GOptionContext *oc;
    GError *err = NULL;
    ExportConfig *ec;

    oc = g_option_context_new("FILE - serve a raw disk image over NBD");
    g_option_context_add_main_entries(oc, entries, NULL);
    g_option_context_set_summary(oc,
        "Serves FILE (a raw image or block device) to NBD clients: "
        "qemu-img, nbdcopy, nbd-client...");
    if (!g_option_context_parse(oc, &argc, &argv, &err)) {
        g_option_context_free(oc);
        usage_error("%s", err->message);
    }
    g_option_context_free(oc);

    if (version) {
        printf("rawnbd %s\n", RAWNBD_VERSION);
        exit(0);
    }

    memset(cfg, 0, sizeof(*cfg));
    cfg->exports = g_ptr_array_new();
    cfg->handshake_limit = DEFAULT_HANDSHAKE_LIMIT;
    cfg->max_handshakes = DEFAULT_MAX_HANDSHAKES;
    cfg->max_inflight = DEFAULT_MAX_INFLIGHT;
    cfg->discard = true;
    log_verbosity = verbose_count;

    if (!files || !files[0]) {
        usage_error("no image FILE given");
    }
    if (files[1]) {
        usage_error("unexpected argument '%s': one FILE only", files[1]);
    }
    if (format && strcmp(format, "raw") != 0) {
        usage_error("unsupported format '%s': only raw images", format);
    }
    if (socket_path && unix_path && strcmp(socket_path, unix_path) != 0) {
        usage_error("--socket and --unix name different paths");
    }
    cfg->socket_path = g_strdup(socket_path ? socket_path : unix_path);
    if (bind && ipaddr && strcmp(bind, ipaddr) != 0) {
        usage_error("--bind and --ipaddr name different addresses");
    }
    cfg->bind_addr = g_strdup(bind ? bind : ipaddr);
    if (port) {
        parse_uint("--port", port, 65535);
    }
    cfg->port = g_strdup(port ? port : DEFAULT_PORT);
    /* TCP unless only a unix socket was asked for. */
    cfg->tcp = !cfg->socket_path || port || cfg->bind_addr;

    if (cache) {
        if (!strcmp(cache, "none") || !strcmp(cache, "directsync")) {
            cfg->cache = CACHE_NONE;
        } else if (!strcmp(cache, "writeback")) {
            cfg->cache = CACHE_WRITEBACK;
        } else {
            usage_error("invalid --cache '%s': use none or writeback", cache);
        }
    }
    if (nocache) {
        cfg->cache = CACHE_NONE;
    }
    if (aio) {
        if (!strcmp(aio, "native")) {
            cfg->aio = AIO_MODE_NATIVE;
        } else if (!strcmp(aio, "threads")) {
            cfg->aio = AIO_MODE_THREADS;
        } else {
            usage_error("invalid --aio '%s': use native or threads", aio);
        }
    }
    if (cfg->aio == AIO_MODE_NATIVE && cfg->cache != CACHE_NONE) {
        usage_error("--aio=native needs --cache=none (O_DIRECT)");
    }
    if (discard) {
        if (!strcmp(discard, "unmap") || !strcmp(discard, "on")) {
            cfg->discard = true;
        } else if (!strcmp(discard, "ignore") || !strcmp(discard, "off")) {
            cfg->discard = false;
        } else {
            usage_error("invalid --discard '%s': use unmap or ignore",
                        discard);
        }
    }
    if (shared) {
        cfg->shared = parse_uint("--shared", shared, 1u << 20);
    }
    if (threads) {
        cfg->threads = parse_uint("--threads", threads, 1024);
        if (cfg->threads == 0) {
            usage_error("invalid value for --threads: '0'");
        }
    }
    if (handshake_limit) {
        cfg->handshake_limit = parse_uint("--handshake-limit",
                                          handshake_limit, 86400);
    }
    if (max_handshakes) {
        cfg->max_handshakes = parse_uint("--max-handshakes", max_handshakes,
                                         1u << 20);
        if (cfg->max_handshakes == 0) {
            usage_error("invalid value for --max-handshakes: '0'");
        }
    }
    if (max_inflight) {
        cfg->max_inflight = parse_uint("--max-inflight", max_inflight, 4096);
        if (cfg->max_inflight == 0) {
            usage_error("invalid value for --max-inflight: '0'");
        }
    }
    if (log_target) {
        if (!strcmp(log_target, "stderr")) {
            cfg->log_target = LOG_TARGET_STDERR;
        } else if (!strcmp(log_target, "syslog")) {
            cfg->log_target = LOG_TARGET_SYSLOG;
        } else {
            usage_error("invalid --log '%s': use stderr or syslog",
                        log_target);
        }
    }
    cfg->persistent = persistent;
    cfg->pin = pin;
    cfg->fork = do_fork;
    cfg->pid_file = g_strdup(pid_file);
    cfg->print_uri = print_uri;

    ec = g_new0(ExportConfig, 1);
    ec->name = g_strdup(export_name ? export_name : "");
    if (strlen(ec->name) > NBD_MAX_STRING) {
        usage_error("export name longer than %u bytes", NBD_MAX_STRING);
    }
    ec->description = g_strdup(description);
    if (description && strlen(description) > NBD_MAX_STRING) {
        usage_error("description longer than %u bytes", NBD_MAX_STRING);
    }
    ec->file = g_strdup(files[0]);
    ec->read_only = read_only;
    if (offset && !parse_size(offset, &ec->offset)) {
        usage_error("invalid value for --offset: '%s'", offset);
    }
    g_ptr_array_add(cfg->exports, ec);

    g_free(socket_path);
    g_free(unix_path);
    g_free(bind);
    g_free(ipaddr);
    g_free(port);
    g_free(export_name);
    g_free(description);
    g_free(cache);
    g_free(aio);
    g_free(discard);
    g_free(format);
    g_free(shared);
    g_free(threads);
    g_free(handshake_limit);
    g_free(max_handshakes);
    g_free(max_inflight);
    g_free(offset);
    g_free(log_target);
    g_free(pid_file);
    g_strfreev(files);
}

void cli_free(ServerConfig *cfg)
{
    unsigned i;

    for (i = 0; i < cfg->exports->len; i++) {
        ExportConfig *ec = g_ptr_array_index(cfg->exports, i);

        g_free(ec->name);
        g_free(ec->file);
        g_free(ec->description);
        g_free(ec);
    }
    g_ptr_array_free(cfg->exports, TRUE);
    g_free(cfg->socket_path);
    g_free(cfg->bind_addr);
    g_free(cfg->port);
    g_free(cfg->pid_file);
}
