/*
 * conn.h: connection internals shared by conn.c (transmission) and
 * handshake.c (negotiation).  Everything here runs in the connection's
 * loop thread.
 */
#ifndef RAWNBD_CONN_H
#define RAWNBD_CONN_H

#include "server.h"

#define CONN_IN_SIZE (16 * 1024)        /* receive buffer */
#define REPLY_HDR_SIZE 512              /* chunk headers of one reply */
#define READ_MAX_SEGMENTS 8             /* data/hole chunks per READ */
#define REQ_IOV_MAX (2 * READ_MAX_SEGMENTS + 2)

/* An error reply is one chunk, written over any headers built before. */
_Static_assert(REPLY_HDR_SIZE >= NBD_MAX_ERROR_CHUNK,
               "an error chunk must fit a request's header buffer");

typedef struct NBDReq NBDReq;

/*
 * The byte stream under the protocol: plain socket, or TLS later.  All
 * calls are non-blocking: -EAGAIN means wait (readable for recv, writable
 * for sendv).
 */
typedef struct Transport {
    /* Returns bytes read, 0 at end of stream, or -errno. */
    ssize_t (*recv)(Conn *c, void *buf, size_t len);
    /*
     * Returns bytes sent (possibly fewer than asked) or -errno.  @more:
     * more data follows at once (a hint to hold a small packet back).
     */
    ssize_t (*sendv)(Conn *c, const struct iovec *iov, int n, bool more);
    /*
     * Optional: send @len bytes of file @fd from @offset without copying
     * them through user space.  Same returns as sendv.
     */
    ssize_t (*sendfile)(Conn *c, int fd, off_t offset, size_t len);
    /*
     * Optional: push bytes the transport accepted but still holds.
     * Returns 0 when none are left, -EAGAIN (wait writable) or -errno.
     */
    int (*flush)(Conn *c);
    /*
     * A short recv() means the socket had nothing more: wait for the next
     * edge instead of calling recv() again just to see EAGAIN.
     */
    bool short_read_drains;
} Transport;

/* One request in flight, from its header until its reply is sent. */
struct NBDReq {
    Conn *conn;
    NBDRequest req;
    uint8_t *buf;                   /* data; cached between requests */
    size_t buf_size;
    uint64_t mem;                   /* bytes counted in conn->mem_inflight */
    int64_t start_ns;               /* when the header arrived */
    uint32_t err;                   /* NBD error of the reply, 0 = success */
    struct iovec iov[REQ_IOV_MAX];  /* the reply */
    int niov;
    uint32_t file_mask;             /* iov[i] is file data if bit i is set: */
    int file_fd;                    /* ...from this file... */
    off_t file_pos[REQ_IOV_MAX];    /* ...at this offset (iov_base unused) */
    uint8_t hdr[REPLY_HDR_SIZE];    /* reply headers the iov points into */
    size_t hdr_used;
    NBDReq *next;                   /* free list or send queue */
};

struct Conn {
    AioContext *ctx;
    int fd;
    char *peer;
    const Transport *tr;
    void *tls;                      /* gnutls_session_t once STARTTLS began */
    bool peer_eof;                  /* TLS: the socket reached end of stream */
    AioCoFd cofd;
    Coroutine *main_co;             /* handshake, then the receive loop */
    bool main_waiting;              /* main_co waits in conn_wait() */

    /* Buffered input: bytes [in_start, in_end) are unread. */
    uint8_t *in;
    size_t in_start, in_end;
    int64_t recv_ns;                /* when the buffer was last filled */
    bool rd_drained;                /* last recv was short (see Transport) */
    size_t in_limit;                /* if non-zero: the next buffered recv
                                       takes no more (see conn_read()) */

    /* Negotiated state. */
    bool no_zeroes;
    bool structured;                /* (implied by extended in transmission) */
    bool extended;
    uint32_t meta;                  /* selected contexts (mask) */
    Export *meta_export;            /* export those were selected for */
    Export *exp;                    /* in transmission */
    ExportStats *stats;             /* this loop's counters for exp */
    uint64_t nrequests;             /* requests read whole (header and
                                       payload), for the close log */
    NBDSession sess;

    /* Handshake limits. */
    bool negotiating;
    AioTimer handshake_timer;
    GList neg_link;                 /* in the global negotiating queue */
    GList all_link;                 /* in the global connection list */
    AioBH *stop_bh;                 /* main thread asks us to stop */
    bool stop_graceful;
    bool in_payload;                /* main_co reads a request's payload */
    AioTimer payload_timer;         /* bounds that read once stopping */

    /* Transmission. */
    NBDReq *slots;
    unsigned nslots;
    NBDReq *free_slots;
    unsigned inflight;              /* slots taken */
    uint64_t mem_inflight;
    uint64_t buf_cached;            /* bytes of slot buffers allocated */
    NBDReq *sendq;                  /* replies to send, FIFO */
    NBDReq **sendq_tailp;
    size_t sendq_off;               /* bytes of sendq head already sent */
    unsigned sendq_len;             /* replies queued since the last send */
    AioBH *send_bh;
    Coroutine *sender;              /* waits for writability, or NULL */
    bool dead;                      /* the socket failed: drop replies */
    bool stopping;                  /* no new requests */
};

/* ---- conn.c helpers used by the handshake ---------------------------- */

/*
 * Read exactly @len bytes.  Returns 0, -EPIPE at end of stream (or before
 * @len bytes), -ECANCELED if the connection is being stopped, or -errno.
 */
int coroutine_fn conn_read(Conn *c, void *buf, size_t len);

/* Read and discard @len bytes.  Same returns. */
int coroutine_fn conn_discard(Conn *c, uint64_t len);

/* Write all of @iov (blocking the coroutine).  0 or -errno. */
int coroutine_fn conn_writev(Conn *c, struct iovec *iov, int n);
int coroutine_fn conn_write(Conn *c, const void *buf, size_t len);

/* Log prefix: the peer. */
#define CONN_LOG(c) (c)->peer

/* ---- tls.c ----------------------------------------------------------- */

/*
 * Run the server side of the TLS handshake on @c and switch its transport
 * to TLS.  Returns 0, or -errno (the connection must close).
 */
int coroutine_fn tls_start(Conn *c);
/* Send close_notify if TLS is up (best effort). */
void coroutine_fn tls_bye(Conn *c);
void tls_conn_free(Conn *c);

/* ---- handshake.c ----------------------------------------------------- */

/*
 * Negotiate.  Returns 0 with c->exp set when the client enters
 * transmission, or -errno when the connection must close.
 */
int coroutine_fn handshake_co(Conn *c);

/* The transmission flags for @e as negotiated on @c. */
uint16_t conn_tflags(const Conn *c, const Export *e);

#endif /* RAWNBD_CONN_H */
