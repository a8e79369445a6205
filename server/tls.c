/*
 * tls.c: TLS with gnutls, as a swap of the connection's transport after
 * NBD_OPT_STARTTLS.
 *
 * The socket stays non-blocking and the coroutine I/O path stays the same:
 * gnutls returns GNUTLS_E_AGAIN where the plain socket returns EAGAIN, and
 * the connection yields until the fd is ready.  Sends are corked: a batch
 * of replies (headers and payloads) goes into one gnutls_record_uncork(),
 * so they share TLS records.  Data left corked when the socket fills is
 * pushed by the transport's flush hook before anything else is sent.
 */
#include "conn.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TLS_DEFAULT_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
#define TLS_PSK_PRIORITY ":+ECDHE-PSK:+DHE-PSK:+PSK"
#define TLS_SEND_BATCH (256 * 1024)     /* bytes corked per send call */

static gnutls_certificate_credentials_t x509_creds;
static gnutls_psk_server_credentials_t psk_creds;
static gnutls_priority_t priority;
static bool verify_peer;

static bool file_exists(const char *path)
{
    return access(path, R_OK) == 0;
}

bool tls_init(const ServerConfig *cfg, GError **errp)
{
    char *prio;
    const char *err_pos = NULL;
    int r;

    if (cfg->tls == TLS_OFF) {
        return true;
    }
    r = gnutls_global_init();
    if (r < 0) {
        g_set_error(errp, RAWNBD_ERROR, EIO, "TLS: %s", gnutls_strerror(r));
        return false;
    }
    verify_peer = cfg->tls_verify_peer;

    if (cfg->tls_certificates) {
        char *ca = g_build_filename(cfg->tls_certificates, "ca-cert.pem",
                                    NULL);
        char *cert = g_build_filename(cfg->tls_certificates,
                                      "server-cert.pem", NULL);
        char *key = g_build_filename(cfg->tls_certificates,
                                     "server-key.pem", NULL);
        char *crl = g_build_filename(cfg->tls_certificates, "ca-crl.pem",
                                     NULL);
        bool ok = false;

        gnutls_certificate_allocate_credentials(&x509_creds);
        r = gnutls_certificate_set_x509_key_file(x509_creds, cert, key,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            g_set_error(errp, RAWNBD_ERROR, EINVAL,
                        "TLS: cannot load %s and %s: %s", cert, key,
                        gnutls_strerror(r));
            goto x509_done;
        }
        if (file_exists(ca)) {
            r = gnutls_certificate_set_x509_trust_file(x509_creds, ca,
                                                       GNUTLS_X509_FMT_PEM);
            if (r < 0) {
                g_set_error(errp, RAWNBD_ERROR, EINVAL,
                            "TLS: cannot load %s: %s", ca,
                            gnutls_strerror(r));
                goto x509_done;
            }
        } else if (verify_peer) {
            g_set_error(errp, RAWNBD_ERROR, ENOENT,
                        "TLS: --tls-verify-peer needs %s", ca);
            goto x509_done;
        }
        if (file_exists(crl)) {
            r = gnutls_certificate_set_x509_crl_file(x509_creds, crl,
                                                     GNUTLS_X509_FMT_PEM);
            if (r < 0) {
                g_set_error(errp, RAWNBD_ERROR, EINVAL,
                            "TLS: cannot load %s: %s", crl,
                            gnutls_strerror(r));
                goto x509_done;
            }
        }
        gnutls_certificate_set_known_dh_params(x509_creds,
                                               GNUTLS_SEC_PARAM_MEDIUM);
        ok = true;
x509_done:
        g_free(ca);
        g_free(cert);
        g_free(key);
        g_free(crl);
        if (!ok) {
            return false;
        }
    }
    if (cfg->tls_psk) {
        gnutls_psk_allocate_server_credentials(&psk_creds);
        r = gnutls_psk_set_server_credentials_file(psk_creds, cfg->tls_psk);
        if (r < 0) {
            g_set_error(errp, RAWNBD_ERROR, EINVAL,
                        "TLS: cannot load PSK file %s: %s", cfg->tls_psk,
                        gnutls_strerror(r));
            return false;
        }
        gnutls_psk_set_server_known_dh_params(psk_creds,
                                              GNUTLS_SEC_PARAM_MEDIUM);
    }

    prio = g_strconcat(cfg->tls_priority ? cfg->tls_priority
                                         : TLS_DEFAULT_PRIORITY,
                       cfg->tls_psk && !cfg->tls_priority
                       ? TLS_PSK_PRIORITY : "", NULL);
    r = gnutls_priority_init(&priority, prio, &err_pos);
    if (r < 0) {
        g_set_error(errp, RAWNBD_ERROR, EINVAL,
                    "TLS: bad priority string '%s' (at '%s'): %s", prio,
                    err_pos ? err_pos : "", gnutls_strerror(r));
        g_free(prio);
        return false;
    }
    g_free(prio);
    return true;
}

void tls_cleanup(void)
{
    if (priority) {
        gnutls_priority_deinit(priority);
        priority = NULL;
    }
    if (x509_creds) {
        gnutls_certificate_free_credentials(x509_creds);
        x509_creds = NULL;
    }
    if (psk_creds) {
        gnutls_psk_free_server_credentials(psk_creds);
        psk_creds = NULL;
    }
    gnutls_global_deinit();
}

/* ---- the TLS transport ------------------------------------------------- */

static ssize_t tls_errno(Conn *c, ssize_t r)
{
    switch (r) {
    case GNUTLS_E_AGAIN:
        return -EAGAIN;
    case GNUTLS_E_INTERRUPTED:
        return -EINTR;
    case GNUTLS_E_PREMATURE_TERMINATION:
        return -EPIPE;
    default:
        log_debug("%s: TLS: %s", CONN_LOG(c), gnutls_strerror((int)r));
        return -EIO;
    }
}

static ssize_t tls_recv(Conn *c, void *buf, size_t len)
{
    ssize_t r = gnutls_record_recv(c->tls, buf, len);

    if (r == GNUTLS_E_AGAIN && c->peer_eof) {
        return -EPIPE;          /* a record cut short by end of stream */
    }
    /* 0 is the peer's close_notify: end of stream, never "try again". */
    return r >= 0 ? r : tls_errno(c, r);
}

/* Push what is still corked.  0 when nothing is left, or -EAGAIN. */
static int tls_flush(Conn *c)
{
    while (gnutls_record_check_corked(c->tls) > 0) {
        int r = gnutls_record_uncork(c->tls, 0);

        if (r < 0) {
            return (int)tls_errno(c, r);
        }
    }
    return 0;
}

static ssize_t tls_sendv(Conn *c, const struct iovec *iov, int n, bool more)
{
    size_t taken = 0;
    int i, r;

    /* Earlier records first: the stream must stay in order. */
    r = tls_flush(c);
    if (r < 0) {
        return r;
    }
    gnutls_record_cork(c->tls);
    for (i = 0; i < n && taken < TLS_SEND_BATCH; i++) {
        const char *p = iov[i].iov_base;
        size_t len = MIN(iov[i].iov_len, TLS_SEND_BATCH - taken);

        while (len > 0) {
            ssize_t w = gnutls_record_send(c->tls, p, len);

            if (w < 0) {
                /* Corked sends only fail on memory or usage errors. */
                gnutls_record_uncork(c->tls, 0);
                return tls_errno(c, w);
            }
            p += w;
            len -= w;
            taken += w;
        }
    }
    /* Accepted: what the socket does not take now, tls_flush() pushes. */
    r = gnutls_record_uncork(c->tls, 0);
    if (r < 0 && r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED) {
        return tls_errno(c, r);
    }
    return taken;
}

static const Transport tls_transport = {
    .recv = tls_recv,
    .sendv = tls_sendv,
    .flush = tls_flush,
    .short_read_drains = false,     /* gnutls returns one record at a time */
};

/* ---- per connection ---------------------------------------------------- */

/*
 * gnutls reads and writes the socket through these, so that an end of
 * stream is remembered: gnutls may answer it with GNUTLS_E_AGAIN (a
 * record cut short), and an edge-triggered wait for more would never end.
 */
static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
    Conn *c = ptr;
    ssize_t r = recv(c->fd, buf, len, 0);

    if (r == 0) {
        /*
         * The client half-closed: that ends its requests, not our
         * replies.  A 0 here would make gnutls invalidate the session and
         * fail our sends; "try again" with peer_eof set lets tls_recv()
         * report the end of stream and the sends carry on.
         */
        c->peer_eof = true;
        gnutls_transport_set_errno(c->tls, EAGAIN);
        return -1;
    }
    if (r < 0) {
        gnutls_transport_set_errno(c->tls, errno);
    }
    return r;
}

static ssize_t tls_vec_push(gnutls_transport_ptr_t ptr, const giovec_t *iov,
                            int n)
{
    Conn *c = ptr;
    struct msghdr msg = {
        .msg_iov = (struct iovec *)iov,
        .msg_iovlen = n,
    };
    ssize_t r = sendmsg(c->fd, &msg, MSG_NOSIGNAL);

    if (r < 0) {
        gnutls_transport_set_errno(c->tls, errno);
    }
    return r;
}

static int coroutine_fn tls_wait(Conn *c)
{
    if (gnutls_record_get_direction(c->tls) == 0) {
        return c->peer_eof ? -EPIPE : aio_cofd_wait_readable(&c->cofd);
    }
    return aio_cofd_wait_writable(&c->cofd);
}

int coroutine_fn tls_start(Conn *c)
{
    gnutls_session_t s;
    int r;

    r = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NONBLOCK);
    if (r < 0) {
        log_error("%s: TLS: %s", CONN_LOG(c), gnutls_strerror(r));
        return -ENOMEM;
    }
    c->tls = s;
    gnutls_priority_set(s, priority);
    if (x509_creds) {
        gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, x509_creds);
        if (verify_peer) {
            gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
        }
    }
    if (psk_creds) {
        gnutls_credentials_set(s, GNUTLS_CRD_PSK, psk_creds);
    }
    gnutls_transport_set_ptr(s, c);
    gnutls_transport_set_pull_function(s, tls_pull);
    gnutls_transport_set_vec_push_function(s, tls_vec_push);

    /* Bytes read before the upgrade are plaintext: never feed them on. */
    c->in_start = c->in_end = 0;
    c->rd_drained = false;
    for (;;) {
        r = gnutls_handshake(s);
        if (r == 0) {
            break;
        }
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
            int w = tls_wait(c);

            if (w < 0) {
                return w;
            }
            continue;
        }
        /*
         * Anything else ends it, warnings included: retrying after, say, a
         * truncated record at end of stream would wait for data that will
         * never come.
         */
        log_warn("%s: TLS handshake failed: %s", CONN_LOG(c),
                 gnutls_strerror(r));
        return -EIO;
    }
    if (verify_peer && x509_creds &&
        gnutls_auth_get_type(s) == GNUTLS_CRD_CERTIFICATE) {
        unsigned status = 0;

        r = gnutls_certificate_verify_peers3(s, NULL, &status);
        if (r < 0 || status != 0) {
            gnutls_datum_t why = { NULL, 0 };

            if (r >= 0) {
                gnutls_certificate_verification_status_print(
                    status, GNUTLS_CRT_X509, &why, 0);
            }
            log_warn("%s: client certificate rejected: %s", CONN_LOG(c),
                     r < 0 ? gnutls_strerror(r)
                           : why.data ? (char *)why.data : "invalid");
            gnutls_free(why.data);
            return -EACCES;
        }
    }
    c->tr = &tls_transport;
    if (gnutls_auth_get_type(s) == GNUTLS_CRD_PSK) {
        const char *user = gnutls_psk_server_get_username(s);

        log_info("%s: TLS (PSK identity '%s')", CONN_LOG(c),
                 user ? user : "");
    } else {
        log_info("%s: TLS established", CONN_LOG(c));
    }
    return 0;
}

void coroutine_fn tls_bye(Conn *c)
{
    int tries;

    if (!c->tls || c->tr != &tls_transport) {
        return;
    }
    /* Best effort: one write-side close_notify, briefly retried. */
    for (tries = 0; tries < 4; tries++) {
        int r = gnutls_bye(c->tls, GNUTLS_SHUT_WR);

        if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED) {
            break;
        }
        if (tls_wait(c) < 0) {
            break;
        }
    }
}

void tls_conn_free(Conn *c)
{
    if (c->tls) {
        gnutls_deinit(c->tls);
        c->tls = NULL;
    }
}
