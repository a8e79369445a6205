#!/usr/bin/python3
"""TLS: X.509 certificates and pre-shared keys through libnbd's Python
bindings, --tls-verify-peer, --tls=require and --tls=on, tls-only exports,
what STARTTLS forgets, and clients that vanish in the middle of a TLS
session.  The raw-socket client (nbdraw) speaks TLS with Python's ssl
module, which has no PSK here: it uses X.509 only.  Credentials are made
at test time (harness.make_pki)."""

import atexit
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Server, Skip, Workdir, check_eq,  # noqa: E402
                     cpu_seconds, diag, libnbd as nbd, make_image, make_pki,
                     need_libnbd, pattern, run, test)
from nbdraw import *  # noqa: E402,F401,F403

MiB = 1 << 20
_pki_dir = None


def pki(*parts):
    """A path in the credentials made once for this script."""
    global _pki_dir
    if _pki_dir is None:
        d = tempfile.mkdtemp(prefix="rawnbd-pki-")
        atexit.register(shutil.rmtree, d, True)
        _pki_dir = make_pki(d)
    return os.path.join(_pki_dir, *parts)


def certs_args(*extra):
    return ("-t", "--tls-certificates", pki("server")) + extra


def psk_args(*extra):
    return ("-t", "--tls-psk", pki("psk", "keys.psk")) + extra


def image(w, name="disk.img", seed=1, size=4 * MiB):
    path = w.file(name)
    make_image(path, size, [(0, pattern(seed, MiB))])
    return path


# ---- libnbd -----------------------------------------------------------------

def handle(certs=None, psk=None, tls=None):
    """A libnbd handle with the client credentials in pki(@certs) or the
    key file pki(@psk, keys.psk) for identity alice."""
    h = need_libnbd().NBD()
    if tls is None:
        tls = nbd.TLS_REQUIRE if certs or psk else nbd.TLS_DISABLE
    h.set_tls(tls)
    if certs:
        h.set_tls_certificates(pki(certs))
    if psk:
        h.set_tls_psk_file(pki(psk, "keys.psk"))
        h.set_tls_username("alice")
    return h


def nbd_connect(h, s, name=""):
    h.set_export_name(name)
    if s.sock_path:
        h.connect_unix(s.sock_path)
    else:
        h.connect_tcp(s.bind, str(s.port))
    return h


def check_read_write(h, seed, what):
    """Data of pattern(@seed) reads back; a write reads back too."""
    check_eq(h.pread(4096, 8192), pattern(seed, MiB)[8192:12288],
             "%s: pread" % what)
    h.pwrite(b"\xa5" * 4096, 65536)
    check_eq(h.pread(4096, 65536), b"\xa5" * 4096, "%s: read after write"
             % what)


def expect_refused(h, s, what):
    """Connecting @h to @s fails; the server lives on."""
    try:
        nbd_connect(h, s)
    except nbd.Error as e:
        diag("%s: refused as expected: %s" % (what, e.string))
    else:
        h.shutdown()
        raise AssertionError("%s: connected" % what)
    assert s.running(), "the server exited after %s" % what


# ---- the raw client over TLS ----------------------------------------------

def ssl_context(client_cert=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki("server", "ca-cert.pem"))
    if client_cert:
        ctx.load_cert_chain(pki("client", "client-cert.pem"),
                            pki("client", "client-key.pem"))
    return ctx


def list_names(c):
    """NBD_OPT_LIST: [(name, description)]."""
    replies = c.option(OPT_LIST)
    check_eq(replies[-1].type, REP_ACK, "LIST final reply")
    out = []
    for r in replies[:-1]:
        (n,) = struct.unpack(">I", r.data[:4])
        out.append((r.data[4:4 + n], r.data[4 + n:]))
    return out


# ---- X.509 and PSK -------------------------------------------------------

@test
def x509_unix_and_tcp():
    with Workdir() as w:
        img = image(w)
        for tcp in (False, True):
            with Server(img, *certs_args(), tcp=tcp) as s:
                want = ("nbds://127.0.0.1:%d/" % s.port if tcp else
                        "nbds+unix:///?socket=%s" % s.sock_path)
                check_eq(s.uri, want, "--print-uri under --tls=require")
                h = nbd_connect(handle(certs="client"), s)
                assert h.get_tls_negotiated(), "TLS not negotiated"
                check_read_write(h, 1, "x509 over %s" % ("TCP" if tcp
                                                         else "unix"))
                h.shutdown()
            assert "TLS established" in s.log_text(), s.log_text()


@test
def psk_alice():
    with Workdir() as w:
        img = image(w)
        with Server(img, *psk_args(), tcp=True) as s:
            h = nbd_connect(handle(psk="psk"), s)
            assert h.get_tls_negotiated(), "TLS not negotiated"
            check_eq(h.get_tls_username(), "alice", "username")
            check_read_write(h, 1, "PSK")
            h.shutdown()
        assert "PSK identity 'alice'" in s.log_text(), s.log_text()


@test
def wrong_psk_refused():
    with Workdir() as w, Server(image(w), *psk_args()) as s:
        expect_refused(handle(psk="wrong-psk"), s, "a wrong key for alice")
        h = nbd_connect(handle(psk="psk"), s)
        check_read_write(h, 1, "the right key after a wrong one")
        h.shutdown()


@test
def psk_file_reread_per_handshake():
    """The key file of --tls-psk is read again for every handshake: a
    file replaced (renamed over the old one) takes effect without a
    restart, for new sessions only.  While it is missing, handshakes
    fail and the server lives on; once it is back, they succeed."""
    with Workdir() as w:
        keys = w.file("keys.psk")
        shutil.copy(pki("psk", "keys.psk"), keys)
        with Server(image(w), "-t", "--tls-psk", keys) as s:
            old = nbd_connect(handle(psk="psk"), s)
            check_read_write(old, 1, "the first key")
            shutil.copy(pki("wrong-psk", "keys.psk"), keys + ".new")
            os.rename(keys + ".new", keys)
            new = nbd_connect(handle(psk="wrong-psk"), s)
            check_eq(new.pread(4096, 8192), pattern(1, MiB)[8192:12288],
                     "the replacement key")
            expect_refused(handle(psk="psk"), s, "the replaced key")
            check_eq(old.pread(4096, 8192), pattern(1, MiB)[8192:12288],
                     "a session made with the replaced key")
            old.shutdown()
            os.unlink(keys)
            expect_refused(handle(psk="wrong-psk"), s, "no key file")
            s.wait_log(r"TLS handshake failed: .*key file")
            shutil.copy(pki("psk", "keys.psk"), keys)
            h = nbd_connect(handle(psk="psk"), s)
            check_read_write(h, 1, "the key file back")
            h.shutdown()
            new.shutdown()


@test
def verify_peer():
    """--tls-verify-peer: a certificate from the CA is needed; none, or
    one from another CA, is refused; PSK clients are not asked."""
    with Workdir() as w, Server(image(w), *certs_args(
            "--tls-verify-peer", "--tls-psk", pki("psk", "keys.psk"))) as s:
        h = nbd_connect(handle(certs="client"), s)
        check_read_write(h, 1, "client certificate")
        h.shutdown()
        expect_refused(handle(certs="ca-only"), s, "no client certificate")
        expect_refused(handle(certs="rogue"), s,
                       "a certificate from another CA")
        # The raw client: the same with Python's ssl.
        with s.client() as c:
            c.handshake()
            check_eq(c.starttls(ssl_context(client_cert=True)), REP_ACK,
                     "STARTTLS")
            check_eq(c.go(b""), REP_ACK, "GO with a client certificate")
        h = nbd_connect(handle(psk="psk"), s)
        check_read_write(h, 1, "PSK under --tls-verify-peer")
        h.shutdown()


@test
def revoked_certificate_refused():
    """ca-crl.pem next to the server's certificate revokes a client
    certificate under --tls-verify-peer."""
    with Workdir() as w:
        srv = w.file("srv")
        shutil.copytree(pki("server"), srv)
        with open(w.file("crl.info"), "w") as f:
            f.write("crl_next_update = 2\ncrl_number = 1\n")
        subprocess.run(["certtool", "--generate-crl", "--no-text",
                        "--load-ca-privkey", pki("ca", "ca-key.pem"),
                        "--load-ca-certificate", pki("ca", "ca-cert.pem"),
                        "--load-certificate", pki("client", "client-cert.pem"),
                        "--template", w.file("crl.info"), "--outfile",
                        os.path.join(srv, "ca-crl.pem")], check=True,
                       capture_output=True, timeout=60)
        with Server(image(w), "-t", "--tls-certificates", srv,
                    "--tls-verify-peer") as s:
            expect_refused(handle(certs="client"), s, "a revoked certificate")
            s.wait_log(r"client certificate rejected: .*revoked")


@test
def priority_string_replaces_default():
    """--tls-priority replaces the default, PSK key exchanges included:
    without one a PSK client is refused, with one it gets in; a TLS 1.2
    only string gives TLS 1.2 sessions."""
    with Workdir() as w:
        img = image(w)
        with Server(img, *psk_args("--tls-priority", "NORMAL")) as s:
            expect_refused(handle(psk="psk"), s, "PSK without a PSK kx")
        with Server(img, *psk_args("--tls-priority",
                                   "NORMAL:+ECDHE-PSK:+PSK")) as s:
            h = nbd_connect(handle(psk="psk"), s)
            check_read_write(h, 1, "PSK with its own priority string")
            h.shutdown()
        with Server(img, *certs_args("--tls-priority",
                                     "NORMAL:-VERS-ALL:+VERS-TLS1.2")) as s, \
                s.client() as c:
            c.handshake()
            check_eq(c.starttls(ssl_context()), REP_ACK, "STARTTLS")
            check_eq(c.sock.version(), "TLSv1.2", "protocol version")


def tls_version_context(version):
    """A client context that offers @version (an ssl.TLSVersion) only;
    TLS 1.1 needs OpenSSL's security level 0 to be offered at all."""
    ctx = ssl_context()
    with warnings.catch_warnings():     # "TLSv1_1 is deprecated": we know
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def try_version(s, version):
    """The version of a session from STARTTLS with only @version offered,
    or None when the handshake fails."""
    with s.client() as c:
        c.handshake()
        try:
            check_eq(c.starttls(tls_version_context(version)), REP_ACK,
                     "STARTTLS")
        except ssl.SSLError as e:
            diag("%s: %s" % (version.name, e))
            return None
        return c.sock.version()


@test
def default_priority_versions():
    """The default priority string accepts TLS 1.3 and 1.2 and refuses
    TLS 1.1 (checked against a server told to accept it, so that a
    client unable to offer 1.1 cannot pass for a refusal)."""
    with Workdir() as w:
        img = image(w)
        with Server(img, *certs_args()) as s:
            check_eq(try_version(s, ssl.TLSVersion.TLSv1_3), "TLSv1.3",
                     "TLS 1.3 session")
            check_eq(try_version(s, ssl.TLSVersion.TLSv1_2), "TLSv1.2",
                     "TLS 1.2 session")
            refused = try_version(s, ssl.TLSVersion.TLSv1_1) is None
            if refused:
                s.wait_log(r"TLS handshake failed")
        with Server(img, *certs_args("--tls-priority",
                                     "NORMAL:-VERS-ALL:+VERS-TLS1.1")) as s:
            control = try_version(s, ssl.TLSVersion.TLSv1_1)
        if control != "TLSv1.1":
            raise Skip("this client and server cannot make a TLS 1.1 "
                       "session at all")
        assert refused, "a TLS 1.1 session under the default priority"


@test
def transmission_under_tls():
    """Every kind of reply through the TLS transport: simple, structured
    and extended, big reads of cached data (sendfile must not be used
    under TLS), writes, block status, EXPORT_NAME."""
    with Workdir() as w:
        path = w.file("big.img")
        data = pattern(4, 8 * MiB)
        make_image(path, 16 * MiB, [(0, data)])
        with Server(path, *certs_args()) as s:
            for kw in (dict(structured=False), dict(structured=True),
                       dict(extended=True)):
                with s.client() as c:
                    c.handshake()
                    check_eq(c.starttls(ssl_context()), REP_ACK, "STARTTLS")
                    c.connect_export(greet=False, **kw)
                    for _ in range(2):      # the second is from the cache
                        check_eq(c.read(MiB, 4 * MiB).data,
                                 data[MiB:5 * MiB], "4 MiB read %r" % kw)
                    new = pattern(5, 2 * MiB)
                    check_eq(c.write(10 * MiB, new).error, 0, "write %r" % kw)
                    check_eq(c.read(10 * MiB, 2 * MiB).data, new,
                             "read back %r" % kw)
                    if c.structured:
                        ext = c.block_status(8 * MiB, 2 * MiB)
                        check_eq(ext[0], (2 * MiB, STATE_HOLE | STATE_ZERO),
                                 "block status of a hole %r" % kw)
                    c.disconnect()
            with s.client() as c:
                c.handshake()
                check_eq(c.starttls(ssl_context()), REP_ACK, "STARTTLS")
                size, _ = c.export_name(b"")
                check_eq(size, 16 * MiB, "EXPORT_NAME under TLS")
                check_eq(c.read(0, 128 * 1024).data, data[:128 * 1024],
                         "read after EXPORT_NAME")


# ---- --tls=require and --tls=on ------------------------------------------

@test
def require_refuses_plaintext():
    """--tls=require (the default with credentials): every option but
    STARTTLS and ABORT gets ERR_TLS_REQD; EXPORT_NAME disconnects."""
    with Workdir() as w, Server(image(w), *certs_args()) as s:
        with s.client() as c:
            c.handshake()
            check_eq(c.option_final(OPT_LIST), REP_ERR_TLS_REQD, "LIST")
            for opt in (OPT_INFO, OPT_GO):
                check_eq(c.option_final(opt, Client.go_payload()),
                         REP_ERR_TLS_REQD, "option %d" % opt)
            for opt in (OPT_STRUCTURED_REPLY, OPT_EXTENDED_HEADERS):
                check_eq(c.option_final(opt), REP_ERR_TLS_REQD,
                         "option %d" % opt)
            t, _ = c.meta_context(OPT_LIST_META_CONTEXT, b"",
                                  (b"base:allocation",))
            check_eq(t, REP_ERR_TLS_REQD, "LIST_META_CONTEXT")
            check_eq(c.option_final(OPT_ABORT), REP_ACK, "ABORT")
        with s.client() as c:
            c.handshake()
            c.send_option(OPT_EXPORT_NAME, b"")
            check_eq(c.wait_closed(), b"", "bytes after plaintext "
                     "EXPORT_NAME")
        # libnbd without TLS: refused, and it says why.
        if nbd is not None:
            msgs = []
            h = handle(tls=nbd.TLS_DISABLE)
            h.set_debug_callback(lambda ctx, msg: msgs.append(msg))
            h.set_debug(True)
            h.set_opt_mode(True)
            h.connect_unix(s.sock_path)
            for name, call in (("opt_list", lambda: h.opt_list(
                    lambda n, d: 0)), ("opt_info", h.opt_info),
                    ("opt_go", h.opt_go)):
                try:
                    call()
                    raise AssertionError("libnbd %s succeeded in plaintext"
                                         % name)
                except nbd.Error as e:
                    diag("libnbd %s: %s" % (name, e.string))
            told = [m for m in msgs if "requires TLS" in m]
            assert told, "libnbd never saw the server's TLS message"
            h.opt_abort()


@test
def tls_on_serves_both():
    with Workdir() as w, Server(image(w), "--tls=on", *certs_args()) as s:
        check_eq(s.uri, "nbd+unix:///?socket=%s" % s.sock_path,
                 "--print-uri under --tls=on")
        h = nbd_connect(handle(), s)
        assert not h.get_tls_negotiated(), "TLS negotiated with TLS off"
        check_read_write(h, 1, "plaintext under --tls=on")
        h.shutdown()
        h = nbd_connect(handle(certs="client"), s)
        assert h.get_tls_negotiated(), "TLS not negotiated"
        check_eq(h.pread(4096, 65536), b"\xa5" * 4096, "TLS read")
        h.shutdown()
        with s.connect() as c:
            check_eq(c.read(0, 4096).data, pattern(1, 4096), "raw plaintext")


def logged_warnings(s):
    return [ln for ln in s.log_text().splitlines() if "warning" in ln]


@test
def tls_off_ignores_credentials():
    """--tls=off with credentials: one warning at start-up naming what is
    ignored; plaintext served; STARTTLS refused with ERR_POLICY, after
    which the client may go on in plaintext.  The credentials are not
    even read (a directory that does not exist is fine)."""
    with Workdir() as w:
        img = image(w)
        with Server(img, "--tls=off", *certs_args(
                "--tls-psk", pki("psk", "keys.psk"))) as s:
            check_eq(s.uri, "nbd+unix:///?socket=%s" % s.sock_path,
                     "--print-uri under --tls=off")
            # Written before the URI, so already in the log.
            check_eq(logged_warnings(s),
                     ["rawnbd: warning: TLS is off: ignoring "
                      "--tls-certificates, --tls-psk"], "warnings logged")
            with s.client() as c:
                c.handshake()
                check_eq(c.option_final(OPT_STARTTLS), REP_ERR_POLICY,
                         "STARTTLS under --tls=off")
                c.connect_export(greet=False)
                check_eq(c.read(0, 4096).data, pattern(1, 4096),
                         "plaintext read after a refused STARTTLS")
            if nbd is not None:
                expect_refused(handle(certs="client"), s, "libnbd "
                               "requiring TLS")
                h = nbd_connect(handle(certs="client", tls=nbd.TLS_ALLOW), s)
                assert not h.get_tls_negotiated(), "TLS negotiated"
                check_read_write(h, 1, "libnbd allowing TLS")
                h.shutdown()
        with Server(img, "-t", "--tls=off", "--tls-certificates",
                    w.file("none"), "--tls-verify-peer",
                    "--tls-priority", "BOGUS") as s:
            check_eq(logged_warnings(s),
                     ["rawnbd: warning: TLS is off: ignoring "
                      "--tls-certificates, --tls-verify-peer, "
                      "--tls-priority"], "warnings logged")
            with s.connect() as c:
                check_eq(c.read(0, 4096).data, pattern(1, 4096), "read")
        with Server(img, "-t", "--tls=off") as s:
            with s.connect() as c:
                c.read(0, 4096)
            check_eq(logged_warnings(s), [], "warnings without credentials")


@test
def second_starttls_invalid():
    with Workdir() as w, Server(image(w), *certs_args()) as s, \
            s.client() as c:
        c.handshake()
        check_eq(c.starttls(ssl_context()), REP_ACK, "first STARTTLS")
        check_eq(c.option_final(OPT_STARTTLS), REP_ERR_INVALID,
                 "second STARTTLS")
        c.connect_export(greet=False)
        check_eq(c.read(0, 4096).data, pattern(1, 4096), "read after both")


def negotiate_then_starttls(c, header_option):
    """Plaintext: @header_option (SR or EH) and base:allocation; then
    STARTTLS."""
    c.handshake()
    check_eq(c.option_final(header_option), REP_ACK,
             "option %d in plaintext" % header_option)
    c.structured = True
    t, _ = c.meta_context(OPT_SET_META_CONTEXT, b"", (b"base:allocation",))
    check_eq(t, REP_ACK, "SET_META_CONTEXT in plaintext")
    check_eq(c.starttls(ssl_context()), REP_ACK, "STARTTLS")


@test
def starttls_forgets_negotiated_state():
    """Structured replies, extended headers and meta contexts chosen in
    plaintext are gone after STARTTLS."""
    with Workdir() as w, Server(image(w), "--tls=on", *certs_args()) as s:
        with s.client() as c:
            negotiate_then_starttls(c, OPT_STRUCTURED_REPLY)
            check_eq(c.go(b""), REP_ACK, "GO")
            assert not c.tflags & TF_SEND_DF, \
                "DF offered without structured replies"
            # nbdraw refuses a structured chunk it did not negotiate.
            r = c.read(0, 4096)
            check_eq((r.chunks[0].kind, r.data), ("simple", pattern(1, 4096)),
                     "reply to READ after STARTTLS")
        with s.client() as c:
            negotiate_then_starttls(c, OPT_EXTENDED_HEADERS)
            # "already on" would be ERR_INVALID.
            check_eq(c.negotiate_structured(), REP_ACK,
                     "STRUCTURED_REPLY again after STARTTLS")
            check_eq(c.go(b""), REP_ACK, "GO")
            r = c.request(CMD_BLOCK_STATUS, 0, 4096)
            check_eq(r.error, EINVAL, "BLOCK_STATUS without contexts "
                     "chosen under TLS")
            r = c.read(0, 4096)
            check_eq((r.chunks[0].kind, r.data),
                     ("structured", pattern(1, 4096)), "compact READ")


@test
def starttls_drops_injected_plaintext():
    """Options sent in plaintext right behind STARTTLS must not be
    answered, before or after the switch (CVE-2021-3716 in nbdkit)."""
    with Workdir() as w, Server(image(w), *certs_args()) as s, \
            s.client() as c:
        c.handshake()
        injected = struct.pack(">QII", IHAVEOPT, OPT_LIST, 0)
        c.send(struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0) + injected)
        r = c.read_option_reply(OPT_STARTTLS)
        check_eq(r.type, REP_ACK, "STARTTLS")
        c.sock = ssl_context().wrap_socket(c.sock, server_hostname="localhost")
        # The first reply under TLS answers INFO, not the injected LIST.
        check_eq(c.go(b"", opt=OPT_INFO), REP_ACK, "INFO under TLS")


@test
def tls_only_export():
    with Workdir() as w:
        img, secret = image(w), image(w, "secret.img", seed=2)
        args = certs_args("--tls=on", "--export",
                          "secret=%s,tls-only,description=hidden" % secret)
        with Server(img, *args) as s:
            with s.client() as c:
                c.handshake()
                check_eq(list_names(c), [(b"", b"")], "plaintext LIST")
                for opt in (OPT_INFO, OPT_GO):
                    check_eq(c.go(b"secret", opt=opt), REP_ERR_TLS_REQD,
                             "plaintext option %d for secret" % opt)
                c.negotiate_structured()
                t, _ = c.meta_context(OPT_SET_META_CONTEXT, b"secret",
                                      (b"base:allocation",))
                check_eq(t, REP_ERR_TLS_REQD, "SET_META_CONTEXT secret")
                check_eq(c.starttls(ssl_context()), REP_ACK, "STARTTLS")
                check_eq(list_names(c), [(b"", b""), (b"secret", b"hidden")],
                         "LIST under TLS")
                check_eq(c.negotiate_structured(), REP_ACK, "SR")
                check_eq(c.go(b"secret"), REP_ACK, "GO secret under TLS")
                check_eq(c.read(0, 4096).data, pattern(2, 4096),
                         "read from secret")
            with s.client() as c:
                c.handshake()
                c.send_option(OPT_EXPORT_NAME, b"secret")
                check_eq(c.wait_closed(), b"", "plaintext EXPORT_NAME secret")
            with s.connect() as c:
                check_eq(c.read(0, 4096).data, pattern(1, 4096),
                         "plaintext read of the default export")
            if nbd is not None:
                names = []
                h = handle()
                h.set_opt_mode(True)
                nbd_connect(h, s)
                h.opt_list(lambda n, d: names.append(n) or 0)
                h.opt_abort()
                check_eq(names, [""], "libnbd plaintext list")
                h = nbd_connect(handle(certs="client"), s, "secret")
                check_eq(h.pread(4096, 0), pattern(2, 4096),
                         "libnbd read of secret under TLS")
                h.shutdown()


# ---- clients that vanish ------------------------------------------------

class BioSession:
    """A raw client past STARTTLS whose TLS runs through memory BIOs, so
    that the test decides which encrypted bytes reach the socket and when
    its side of the stream ends.  With @finish the handshake is done,
    else the ClientHello waits in the outgoing BIO."""

    def __init__(self, s, finish=True):
        self.c = c = s.client()
        c.handshake()
        check_eq(c.option_final(OPT_STARTTLS), REP_ACK, "STARTTLS")
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ssl_context().wrap_bio(self.incoming, self.outgoing,
                                          server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not finish:
                    return
                c.send(self.outgoing.read())
                data = c.sock.recv(65536)
                if not data:
                    raise Closed("closed during the TLS handshake")
                self.incoming.write(data)
        c.send(self.outgoing.read())

    def send(self, data, cut=0):
        """Encrypt @data and send all but the last @cut bytes of it."""
        self.tls.write(data)
        records = self.outgoing.read()
        self.c.send(records[:len(records) - cut])

    def close_notify(self):
        """Send close_notify: under TLS 1.3 it ends our direction only."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.c.send(self.outgoing.read())

    def read_all(self):
        """Everything the server sends until it ends the stream: (the
        decrypted bytes, whether the end was a close_notify)."""
        out = []
        while True:
            b = self.c.sock.recv(1 << 20)
            if not b:
                return b"".join(out), False
            self.incoming.write(b)
            while True:
                try:
                    d = self.tls.read(1 << 20)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    d = b""
                if not d:
                    return b"".join(out), True
                out.append(d)


def vanish_mid_reads(s, how):
    """Big reads in flight, then RST or FIN (no close_notify)."""
    ctx = ssl_context()
    c = s.client()
    c.handshake()
    check_eq(c.starttls(ctx), REP_ACK, "STARTTLS")
    c.connect_export(greet=False)
    for k in range(24):
        c.send_request(CMD_READ, (k % 8) * MiB, MiB)
    c.sock.recv(4096)           # replies are coming
    if how == "rst":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
    c.close()


def vanish_mid_record(s, where):
    """The socket closes in the middle of a TLS record: during the
    handshake, or within a WRITE's payload."""
    if where == "handshake":
        b = BioSession(s, finish=False)
        hello = b.outgoing.read()
        b.c.send(hello[:len(hello) // 2])
    else:
        b = BioSession(s)
        b.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 6) + bytes(6))
        b.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0,
                           256 * 1024) + b"w" * 256 * 1024, cut=100)
    b.c.sock.shutdown(socket.SHUT_WR)
    time.sleep(0.1)
    b.c.close()


@test
def vanishing_tls_clients():
    """Clients that drop a TLS session mid-transfer: no spinning (CPU
    time stays small afterwards), no crash, others still served."""
    with Workdir() as w:
        path = w.file("big.img")
        make_image(path, 8 * MiB, [(0, pattern(3, 8 * MiB))])
        with Server(path, *certs_args()) as s:
            vanish_mid_reads(s, "rst")
            vanish_mid_reads(s, "fin")
            vanish_mid_record(s, "handshake")
            vanish_mid_record(s, "write payload")
            deadline = time.monotonic() + 10
            while s.log_text().count(": disconnected") < 4:
                assert time.monotonic() < deadline, \
                    "not every vanished client was disconnected:\n" + \
                    s.log_text()
                time.sleep(0.05)
            before = cpu_seconds(s.pid)
            time.sleep(1.0)
            used = cpu_seconds(s.pid) - before
            diag("CPU time over the second after: %.2f s" % used)
            assert used < 0.25, "the server used %.2f s of CPU in 1 s " \
                "with no clients" % used
            with s.client() as c:
                c.handshake()
                check_eq(c.starttls(ssl_context()), REP_ACK, "STARTTLS")
                c.connect_export(greet=False)
                check_eq(c.read(MiB, 4096).data, pattern(3, 2 * MiB)[
                    MiB:MiB + 4096], "read after the vanished clients")


def requests_then_end(s, end, n=8):
    """GO (no structured replies), @n reads of 1 MiB, then the end of the
    client's side: "disc" (NBD_CMD_DISC), "close_notify" (TLS 1.3 half
    close) or "fin" (TCP FIN, no close_notify).  Returns {cookie: data}
    of the replies that came, and whether the server sent close_notify."""
    b = BioSession(s)
    b.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 6) + bytes(6))
    for k in range(n):
        b.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, k + 1,
                           k * MiB, MiB))
    if end == "disc":
        b.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 99, 0, 0))
    elif end == "close_notify":
        b.close_notify()
    else:
        b.c.sock.shutdown(socket.SHUT_WR)
    stream, notified = b.read_all()
    b.c.close()
    # Skip the GO replies, then split the simple replies.
    pos = 0
    while True:
        _, _, rtype, length = struct.unpack(">QIII", stream[pos:pos + 20])
        pos += 20 + length
        if rtype == REP_ACK:
            break
    replies = {}
    while pos + 16 <= len(stream):
        magic, err, cookie = struct.unpack(">IIQ", stream[pos:pos + 16])
        check_eq((magic, err), (SIMPLE_REPLY_MAGIC, 0), "reply header")
        replies[cookie] = stream[pos + 16:pos + 16 + MiB]
        pos += 16 + MiB
    return replies, notified


@test
def replies_after_the_client_ends_cleanly():
    """Reads followed by NBD_CMD_DISC, or by a TLS 1.3 close_notify from
    the client, are all answered before the server closes (with its own
    close_notify)."""
    with Workdir() as w:
        path = w.file("big.img")
        data = pattern(3, 8 * MiB)
        make_image(path, 8 * MiB, [(0, data)])
        with Server(path, *certs_args()) as s:
            for end in ("disc", "close_notify"):
                replies, notified = requests_then_end(s, end)
                check_eq(sorted(replies), list(range(1, 9)),
                         "replies before the close (%s)" % end)
                for k, got in replies.items():
                    check_eq(got, data[(k - 1) * MiB:k * MiB],
                             "data of read %d (%s)" % (k, end))
                assert notified, "no close_notify from the server (%s)" % end


@test
def replies_after_tcp_fin_like_plaintext():
    """A client that ends its side with a bare TCP FIN after sending
    requests gets their replies in plaintext; over TLS it should too (the
    server treats the FIN as the end of requests in both cases)."""
    with Workdir() as w:
        path = w.file("big.img")
        make_image(path, 8 * MiB, [(0, pattern(3, 8 * MiB))])
        with Server(path, "--tls=on", *certs_args()) as s:
            with s.connect(structured=False, meta=()) as c:
                cookies = [c.send_request(CMD_READ, k * MiB, MiB)
                           for k in range(8)]
                c.sock.shutdown(socket.SHUT_WR)
                for ck in cookies:
                    check_eq(c.reply(ck).error, 0, "plaintext reply")
            replies, _ = requests_then_end(s, "fin")
            check_eq(len(replies), 8, "TLS replies after a FIN (the log "
                     "says: %s)" % [ln for ln in s.log_text().splitlines()
                                    if "warning" in ln])


@test
def handshake_limit_covers_tls():
    """A client stuck in the TLS handshake is dropped by
    --handshake-limit like any slow negotiator."""
    with Workdir() as w, Server(image(w), *certs_args(
            "--handshake-limit", "1")) as s, s.client() as c:
        c.handshake()
        check_eq(c.option_final(OPT_STARTTLS), REP_ACK, "STARTTLS")
        t0 = time.monotonic()
        c.wait_closed(timeout=10)
        took = time.monotonic() - t0
        assert took < 5, "dropped after %.1f s" % took


if __name__ == "__main__":
    run()
