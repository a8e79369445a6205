/*
 * server.h: the server's internal header, one section per file.
 *
 * Threads: the main thread parses options, opens exports, listens, accepts
 * and handles signals, in its own AioContext.  Each accepted connection is
 * handed to one of the loop threads (round-robin) and lives there: its
 * handshake, receive loop, request coroutines and sender all run in that
 * loop's AioContext.
 */
#ifndef RAWNBD_SERVER_H
#define RAWNBD_SERVER_H

#include "config.h"

#include <glib.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "coro/aio.h"
#include "coro/loop.h"
#include "proto/nbd-proto.h"

/* ---- log.c ------------------------------------------------------------ */

/* GError domain for set-up failures; the code is an errno value. */
#define RAWNBD_ERROR (rawnbd_error_quark())
GQuark rawnbd_error_quark(void);

typedef enum {
    LOG_TARGET_STDERR,
    LOG_TARGET_SYSLOG,
} LogTarget;

/* 0: errors and connection events; 1 (-v): requests; 2 (-vv): more. */
extern int log_verbosity;

void log_init(LogTarget target);
void log_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void log_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void log_info(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void log_debug_msg(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/* Debug logging: compiled in, one predictable branch when off. */
#define log_debug(...)                                                     \
    do {                                                                   \
        if (unlikely(log_verbosity > 0)) {                                 \
            log_debug_msg(__VA_ARGS__);                                    \
        }                                                                  \
    } while (0)

/* ---- cli.c: configuration ------------------------------------------- */

typedef enum {
    CACHE_WRITEBACK,            /* page cache (default) */
    CACHE_NONE,                 /* O_DIRECT */
} CacheMode;

typedef enum {
    AIO_MODE_AUTO,              /* native with cache=none, else threads */
    AIO_MODE_NATIVE,            /* Linux AIO (needs cache=none) */
    AIO_MODE_THREADS,           /* thread pool */
} AioMode;

typedef enum {
    TLS_OFF,                    /* STARTTLS refused */
    TLS_ON,                     /* offered; plaintext allowed */
    TLS_REQUIRE,                /* nothing but STARTTLS before TLS */
} TlsMode;

typedef struct ExportConfig {
    char *name;
    char *file;
    char *description;
    bool read_only;
    bool tls_only;              /* hidden and refused before TLS */
    uint64_t offset;            /* window into the image */
    uint64_t size;              /* 0: to the end of the image */
    bool size_set;
} ExportConfig;

typedef struct ServerConfig {
    GPtrArray *exports;         /* ExportConfig *, the first is default */
    char *socket_path;          /* -k / -U */
    char *bind_addr;            /* -b */
    char *port;                 /* -p (string for getaddrinfo) */
    bool tcp;                   /* listen on TCP (default without -k) */
    bool persistent;            /* -t */
    unsigned shared;            /* -e: max clients, 0 = unlimited */
    CacheMode cache;
    bool sync_writes;           /* writethrough/directsync: FUA always */
    AioMode aio;
    bool discard;               /* --discard=unmap */
    unsigned threads;           /* --threads: loops, 0 = one per CPU */
    bool pin;                   /* --pin */
    unsigned poll_us;           /* --poll: loops' polling window, max */
    char *pid_file;
    bool fork;
    unsigned handshake_limit;   /* seconds, 0 = none */
    unsigned max_handshakes;    /* connections still negotiating */
    unsigned max_inflight;      /* requests in flight per connection */
    LogTarget log_target;
    bool print_uri;
    TlsMode tls;
    char *tls_certificates;     /* directory of PEM files */
    char *tls_psk;              /* psktool key file */
    char *tls_priority;
    bool tls_verify_peer;
    int socket_mode;            /* with socket_mode_set */
    bool socket_mode_set;
    int socket_uid, socket_gid; /* -1: unchanged */
    char *metrics;              /* --metrics address, or NULL */
} ServerConfig;

/*
 * Parse the command line into @cfg.  On a bad option prints one line to
 * stderr and exits 2; --help and --version print and exit 0.
 */
void cli_parse(int argc, char **argv, ServerConfig *cfg);
void cli_free(ServerConfig *cfg);

/* ---- export.c: the image backend ------------------------------------ */

typedef struct Export Export;

struct Export {
    char *name;
    char *description;
    char *path;
    int fd;                     /* the image, O_DIRECT with cache=none */
    int fd_buffered;            /* cache=none: for unaligned requests */
    uint32_t dio_align;         /* cache=none: O_DIRECT's alignment */
    uint64_t offset;            /* export byte 0 is image byte @offset */
    uint64_t size;              /* export size, exact */
    bool read_only;
    bool tls_only;
    bool direct;                /* O_DIRECT */
    bool native_aio;            /* Linux AIO (else the thread pool) */
    bool buffered_aio;          /* cached reads batched through Linux AIO */
    bool discard;               /* TRIM punches holes */
    bool sync_writes;           /* every write durable before its reply */
    bool block_device;
    uint32_t min_block;         /* advertised minimum block size */
    uint32_t pref_block;
    uint32_t max_payload;
    uint32_t hole_granularity;  /* rounding for TRIM (fs block size) */
    uint16_t tflags;            /* transmission flags we advertise */
    int64_t pool_writes_until;  /* atomic: clock_ns() before which buffered
                                   writes go to the pool (see export.c) */
    int can_punch;              /* atomic: 1 yes, 0 unknown, -1 no */
    int can_zero_range;         /* atomic: same */
};

/*
 * Open and probe the image of @ec under @cfg's cache/aio policy.  Fills
 * @e; returns false with @errp set (caller exits 1).
 */
bool export_open(Export *e, const ExportConfig *ec, const ServerConfig *cfg,
                 GError **errp);
void export_close(Export *e);

/*
 * Data path: coroutine context in a loop thread.  Offsets are export
 * offsets, already validated against the size.  Return 0 (or byte count)
 * on success, -errno on failure.
 */
ssize_t coroutine_fn export_co_preadv(Export *e, struct iovec *iov, int n,
                                      uint64_t offset);
ssize_t coroutine_fn export_co_pwritev(Export *e, struct iovec *iov, int n,
                                       uint64_t offset, bool fua);
int coroutine_fn export_co_flush(Export *e);
int coroutine_fn export_co_trim(Export *e, uint64_t offset, uint64_t len,
                                bool fua);
int coroutine_fn export_co_zero(Export *e, uint64_t offset, uint64_t len,
                                bool may_trim, bool fast, bool fua);
int coroutine_fn export_co_cache(Export *e, uint64_t offset, uint64_t len);

/*
 * Allocation extents from @offset, at most @max_extents, covering at most
 * @len bytes (at least one extent, unless an error is returned).  Each
 * extent's length is a multiple of the minimum block size except one that
 * ends where the request or the export ends.  @offset must be aligned.
 * Returns the number of extents or -errno.
 */
typedef struct Extent {
    uint64_t length;
    uint32_t flags;             /* NBD_STATE_* */
} Extent;
int export_block_status(Export *e, uint64_t offset, uint64_t len,
                        Extent *ext, int max_extents);

/*
 * True if all of [@offset, @offset + @len) is in the page cache of a
 * buffered export, so that sending it from the file cannot block.
 */
bool export_cached(Export *e, uint64_t offset, uint64_t len);

/* Allocate an I/O buffer suited to @e (aligned for O_DIRECT). */
void *export_buf_alloc(size_t size);

/* ---- tls.c ------------------------------------------------------------ */

/* Load credentials and the priority string (no-op with TLS off). */
bool tls_init(const ServerConfig *cfg, GError **errp);
void tls_cleanup(void);

/* ---- metrics.c -------------------------------------------------------- */

#define METRICS_NCMDS 9         /* NBD_CMD_READ..BLOCK_STATUS, other */
#define METRICS_NERRS 9         /* the NBD errors, other */
#define METRICS_LAT_BUCKETS 24  /* up to 2^0 .. 2^22 us, and more */

/*
 * Counters for one export, kept per loop thread.  Written only by that
 * thread (with relaxed atomic loads and stores, no read-modify-write).
 */
typedef struct ExportStats {
    uint64_t requests[METRICS_NCMDS];
    uint64_t errors[METRICS_NERRS];
    uint64_t latency[METRICS_LAT_BUCKETS];
    uint64_t latency_sum_ns;
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t connections;       /* sessions started */
    int64_t connections_open;   /* may be negative in one thread's copy */
    int64_t in_flight;
} ExportStats;

/* Single-writer increment: the owning thread only. */
#define STAT_ADD(field, n) atomic_set(&(field), atomic_read(&(field)) + (n))

/* This thread's counters for @e (loop threads). */
ExportStats *metrics_export_stats(const Export *e);
unsigned metrics_latency_bucket(int64_t ns);
unsigned metrics_err_index(uint32_t nbd_err);

/* Prometheus text of every counter; g_free() it. */
char *metrics_format(void);
void metrics_dump(void);
bool metrics_start(AioContext *ctx, const char *addr, GError **errp);
void metrics_stop(void);
void metrics_free(void);

/* ---- main.c: the server as a whole ------------------------------------- */

typedef struct Server {
    ServerConfig *cfg;
    Export *exports;
    unsigned nexports;
    AioContext *main_ctx;
    AioLoops *loops;
    unsigned long conns_total;  /* atomic: connections ever accepted */
    unsigned conns_live;        /* atomic: connections open */
    unsigned conns_negotiating; /* atomic */
    bool shutting_down;         /* atomic */
} Server;

extern Server server;

/* Look an export up by name ("" = the default export); NULL if none. */
Export *server_find_export(const char *name, size_t len);

/* Called by connections, in their loop thread. */
void server_conn_opened(void);
void server_conn_closed(void);

/* ---- conn.c: connections ------------------------------------------- */

typedef struct Conn Conn;

/*
 * Take over the accepted socket @fd (non-blocking) and serve it in @ctx.
 * Any thread; the connection starts in @ctx's next iteration.
 */
void conn_start(AioContext *ctx, int fd, const char *peer);

/*
 * Ask every connection to finish its requests, flush and close, or with
 * @now to close at once.  Main thread.
 */
void conn_shutdown_all(bool now);

/* ---- listen.c ------------------------------------------------------- */

/*
 * Open the configured listeners (or take systemd's), register them in
 * @ctx.  Returns false with @errp set.
 */
bool listen_start(AioContext *ctx, GError **errp);
void listen_pause(bool paused);
/*
 * A listening unix socket at @path (non-blocking, close-on-exec),
 * replacing a stale socket file left there.  Returns the fd, or -1 with
 * @errp set.
 */
int unix_listen_socket(const char *path, int backlog, GError **errp);
void listen_stop(void);
/* The URI a client should use, for printing. */
char *listen_uri(void);

#endif /* RAWNBD_SERVER_H */
