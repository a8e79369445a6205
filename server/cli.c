/*
 * cli.c: command-line options.  Spellings follow qemu-nbd (and nbdkit
 * where qemu-nbd has none) wherever the meaning matches.
 */
#include "server.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_PORT "10809"
#define DEFAULT_HANDSHAKE_LIMIT 10
#define DEFAULT_MAX_HANDSHAKES 1024
#define DEFAULT_MAX_INFLIGHT 256
#define DEFAULT_POLL_US 100

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

/* Add @ec, refusing duplicate names and over-long strings. */
static void add_export(ServerConfig *cfg, ExportConfig *ec)
{
    unsigned i;

    if (strlen(ec->name) > NBD_MAX_STRING) {
        usage_error("export name longer than %u bytes", NBD_MAX_STRING);
    }
    if (ec->description && strlen(ec->description) > NBD_MAX_STRING) {
        usage_error("description longer than %u bytes", NBD_MAX_STRING);
    }
    for (i = 0; i < cfg->exports->len; i++) {
        ExportConfig *o = g_ptr_array_index(cfg->exports, i);

        if (!strcmp(o->name, ec->name)) {
            usage_error("two exports named '%s'", ec->name);
        }
    }
    g_ptr_array_add(cfg->exports, ec);
}

/*
 * NAME=FILE[,ro][,description=TEXT][,offset=N][,size=N][,tls-only]
 * A comma inside a value is written twice (",,").
 */
static ExportConfig *parse_export(const char *spec)
{
    ExportConfig *ec = g_new0(ExportConfig, 1);
    const char *eq = strchr(spec, '=');
    GPtrArray *parts = g_ptr_array_new_with_free_func(g_free);
    GString *cur = g_string_new(NULL);
    const char *p;
    unsigned i;

    if (!eq) {
        usage_error("invalid --export '%s': use NAME=FILE[,OPTIONS]", spec);
    }
    ec->name = g_strndup(spec, eq - spec);
    for (p = eq + 1; ; p++) {
        if (*p == ',' && p[1] == ',') {
            g_string_append_c(cur, ',');
            p++;
        } else if (*p == ',' || !*p) {
            g_ptr_array_add(parts, g_string_free(cur, FALSE));
            cur = g_string_new(NULL);
            if (!*p) {
                break;
            }
        } else {
            g_string_append_c(cur, *p);
        }
    }
    g_string_free(cur, TRUE);
    ec->file = g_strdup(g_ptr_array_index(parts, 0));
    if (!*ec->file) {
        usage_error("invalid --export '%s': no FILE", spec);
    }
    for (i = 1; i < parts->len; i++) {
        const char *kv = g_ptr_array_index(parts, i);

        if (!strcmp(kv, "ro") || !strcmp(kv, "read-only")) {
            ec->read_only = true;
        } else if (!strcmp(kv, "tls-only")) {
            ec->tls_only = true;
        } else if (g_str_has_prefix(kv, "description=")) {
            g_free(ec->description);
            ec->description = g_strdup(kv + strlen("description="));
        } else if (g_str_has_prefix(kv, "offset=")) {
            if (!parse_size(kv + strlen("offset="), &ec->offset)) {
                usage_error("invalid offset in --export '%s'", spec);
            }
        } else if (g_str_has_prefix(kv, "size=")) {
            if (!parse_size(kv + strlen("size="), &ec->size)) {
                usage_error("invalid size in --export '%s'", spec);
            }
            ec->size_set = true;
        } else {
            usage_error("unknown export option '%s' in --export '%s'", kv,
                        spec);
        }
    }
    g_ptr_array_free(parts, TRUE);
    return ec;
}

static bool parse_owner(const char *spec, ServerConfig *cfg)
{
    char *user = g_strdup(spec), *group = strchr(user, ':');
    struct passwd *pw;
    struct group *gr;
    bool ok = true;

    if (group) {
        *group++ = '\0';
    }
    cfg->socket_uid = -1;
    cfg->socket_gid = -1;
    if (*user) {
        pw = getpwnam(user);
        if (pw) {
            cfg->socket_uid = pw->pw_uid;
            cfg->socket_gid = group ? -1 : (int)pw->pw_gid;
        } else {
            ok = false;
        }
    }
    if (ok && group && *group) {
        gr = getgrnam(group);
        if (gr) {
            cfg->socket_gid = gr->gr_gid;
        } else {
            ok = false;
        }
    }
    g_free(user);
    return ok;
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
    char *poll = NULL;
    char *log_target = NULL, *pid_file = NULL;
    gboolean read_only = FALSE, persistent = FALSE, version = FALSE;
    gboolean nocache = FALSE, do_fork = FALSE, pin = FALSE;
    gboolean print_uri = FALSE, tls_verify_peer = FALSE;
    char *tls = NULL, *tls_certificates = NULL, *tls_psk = NULL;
    char *tls_priority = NULL, *socket_mode = NULL, *socket_owner = NULL;
    char *metrics = NULL;
    char **files = NULL, **export_specs = NULL;
    GOptionEntry entries[] = {
        { "socket", 'k', 0, G_OPTION_ARG_FILENAME, &socket_path,
          "Listen on the unix socket PATH (and on TCP only if -p or -b is "
          "given too)", "PATH" },
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
          "writeback (page cache; default), none (O_DIRECT), writethrough "
          "or directsync (each write durable before its reply)", "MODE" },
        { "nocache", 'n', 0, G_OPTION_ARG_NONE, &nocache,
          "Same as --cache=none", NULL },
        { "aio", 0, 0, G_OPTION_ARG_STRING, &aio,
          "native (Linux AIO; needs --cache=none) or threads (thread pool; "
          "with the page cache, no Linux AIO for cached reads either)",
          "MODE" },
        { "discard", 0, 0, G_OPTION_ARG_STRING, &discard,
          "unmap (TRIM punches holes; default) or ignore", "MODE" },
        { "threads", 0, 0, G_OPTION_ARG_STRING, &threads,
          "Number of event-loop threads (default: one per CPU)", "N" },
        { "pin", 0, 0, G_OPTION_ARG_NONE, &pin,
          "Pin each event-loop thread to a CPU", NULL },
        { "poll", 0, 0, G_OPTION_ARG_STRING, &poll,
          "Event loops poll for up to USEC microseconds before they sleep "
          "(adaptive; default 100, 0 = never)", "USEC" },
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
        { "export", 0, 0, G_OPTION_ARG_STRING_ARRAY, &export_specs,
          "Serve FILE as export NAME; OPTS: ro, description=TEXT, "
          "offset=N, size=N, tls-only (repeatable)", "NAME=FILE[,OPTS]" },
        { "socket-mode", 0, 0, G_OPTION_ARG_STRING, &socket_mode,
          "Permissions of the unix socket, in octal (e.g. 0660)", "MODE" },
        { "socket-owner", 0, 0, G_OPTION_ARG_STRING, &socket_owner,
          "Owner of the unix socket", "USER[:GROUP]" },
        { "tls", 0, 0, G_OPTION_ARG_STRING, &tls,
          "off, on (offered) or require (default with credentials)", "MODE" },
        { "tls-certificates", 0, 0, G_OPTION_ARG_FILENAME, &tls_certificates,
          "Directory with server-cert.pem and server-key.pem (ca-cert.pem "
          "for --tls-verify-peer, ca-crl.pem optional)", "DIR" },
        { "tls-psk", 0, 0, G_OPTION_ARG_FILENAME, &tls_psk,
          "Pre-shared keys file (psktool format)", "FILE" },
        { "tls-verify-peer", 0, 0, G_OPTION_ARG_NONE, &tls_verify_peer,
          "Require client certificates signed by the CA", NULL },
        { "tls-priority", 0, 0, G_OPTION_ARG_STRING, &tls_priority,
          "gnutls priority string (default: TLS 1.2 and 1.3 only)",
          "STRING" },
        { "metrics", 0, 0, G_OPTION_ARG_STRING, &metrics,
          "Serve Prometheus metrics on [HOST]:PORT or a unix socket PATH",
          "ADDR" },
        { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK,
          opt_verbose, "Log each option and request (debugging)", NULL },
        { "version", 'V', 0, G_OPTION_ARG_NONE, &version,
          "Print the version and exit", NULL },
        { G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &files,
          NULL, "FILE..." },
        G_OPTION_ENTRY_NULL,
    };
    GOptionContext *oc;
    GError *err = NULL;
    ExportConfig *ec;
    unsigned i;

    oc = g_option_context_new("- serve raw disk images over NBD");
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
        printf("rawnbd %s%s\n", RAWNBD_VERSION,
               CONFIG_FAULT_INJECTION ? " (fault injection build)" : "");
        exit(0);
    }

    memset(cfg, 0, sizeof(*cfg));
    cfg->exports = g_ptr_array_new();
    cfg->handshake_limit = DEFAULT_HANDSHAKE_LIMIT;
    cfg->max_handshakes = DEFAULT_MAX_HANDSHAKES;
    cfg->max_inflight = DEFAULT_MAX_INFLIGHT;
    cfg->poll_us = DEFAULT_POLL_US;
    cfg->discard = true;
    cfg->socket_uid = -1;
    cfg->socket_gid = -1;
    log_verbosity = verbose_count;

    if ((!files || !files[0]) && !export_specs) {
        usage_error("no image FILE given");
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
        if (!strcmp(cache, "none")) {
            cfg->cache = CACHE_NONE;
        } else if (!strcmp(cache, "directsync")) {
            cfg->cache = CACHE_NONE;
            cfg->sync_writes = true;
        } else if (!strcmp(cache, "writeback")) {
            cfg->cache = CACHE_WRITEBACK;
        } else if (!strcmp(cache, "writethrough")) {
            cfg->cache = CACHE_WRITEBACK;
            cfg->sync_writes = true;
        } else {
            usage_error("invalid --cache '%s': use none, writeback, "
                        "writethrough or directsync", cache);
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
    if (poll) {
        cfg->poll_us = parse_uint("--poll", poll, 1000000);
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

    /* Positional files: the first takes -x/-D/-o, others their basename. */
    for (i = 0; files && files[i]; i++) {
        ec = g_new0(ExportConfig, 1);
        if (i == 0) {
            ec->name = g_strdup(export_name ? export_name : "");
            ec->description = g_strdup(description);
            if (offset && !parse_size(offset, &ec->offset)) {
                usage_error("invalid value for --offset: '%s'", offset);
            }
        } else {
            ec->name = g_path_get_basename(files[i]);
        }
        ec->file = g_strdup(files[i]);
        ec->read_only = read_only;
        add_export(cfg, ec);
    }
    if ((!files || !files[0]) && (export_name || description || offset)) {
        usage_error("-x, -D and -o apply to a FILE argument; with --export "
                    "use its own options");
    }
    for (i = 0; export_specs && export_specs[i]; i++) {
        ec = parse_export(export_specs[i]);
        ec->read_only |= read_only;
        add_export(cfg, ec);
    }

    if (tls) {
        if (!strcmp(tls, "off")) {
            cfg->tls = TLS_OFF;
        } else if (!strcmp(tls, "on")) {
            cfg->tls = TLS_ON;
        } else if (!strcmp(tls, "require")) {
            cfg->tls = TLS_REQUIRE;
        } else {
            usage_error("invalid --tls '%s': use off, on or require", tls);
        }
    } else if (tls_certificates || tls_psk) {
        cfg->tls = TLS_REQUIRE;
    }
    if (cfg->tls != TLS_OFF && !tls_certificates && !tls_psk) {
        usage_error("--tls=%s needs --tls-certificates or --tls-psk", tls);
    }
    if (tls_verify_peer && !tls_certificates) {
        usage_error("--tls-verify-peer needs --tls-certificates");
    }
    for (i = 0; i < cfg->exports->len; i++) {
        ExportConfig *x = g_ptr_array_index(cfg->exports, i);

        if (x->tls_only && cfg->tls == TLS_OFF) {
            usage_error("export '%s' is tls-only but TLS is off", x->name);
        }
    }
    cfg->tls_certificates = g_strdup(tls_certificates);
    cfg->tls_psk = g_strdup(tls_psk);
    cfg->tls_priority = g_strdup(tls_priority);
    cfg->tls_verify_peer = tls_verify_peer;

    if (socket_mode) {
        char *end;
        unsigned long m = strtoul(socket_mode, &end, 8);

        if (!*socket_mode || *end || m > 07777) {
            usage_error("invalid --socket-mode '%s': use octal, e.g. 0660",
                        socket_mode);
        }
        cfg->socket_mode = (int)m;
        cfg->socket_mode_set = true;
    }
    if (socket_owner && !parse_owner(socket_owner, cfg)) {
        usage_error("unknown user or group in --socket-owner '%s'",
                    socket_owner);
    }
    if ((socket_mode || socket_owner) && !cfg->socket_path) {
        usage_error("--socket-mode and --socket-owner need --socket");
    }
    cfg->metrics = g_strdup(metrics);

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
    g_free(poll);
    g_free(max_handshakes);
    g_free(max_inflight);
    g_free(offset);
    g_free(log_target);
    g_free(pid_file);
    g_free(tls);
    g_free(tls_certificates);
    g_free(tls_psk);
    g_free(tls_priority);
    g_free(socket_mode);
    g_free(socket_owner);
    g_free(metrics);
    g_strfreev(files);
    g_strfreev(export_specs);
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
    g_free(cfg->tls_certificates);
    g_free(cfg->tls_psk);
    g_free(cfg->tls_priority);
    g_free(cfg->metrics);
}
