#!/usr/bin/python3
"""--metrics: the Prometheus text over a unix socket (curl) and TCP
(http.client), exact counters after a known workload from libnbd, the
latency histogram, SIGUSR1, readers that send nothing, label escaping."""

import http.client
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Server, Workdir, check_eq, diag,  # noqa: E402
                     expect_nbd_error, free_port, make_image,
                     need_libnbd, pattern, run, test)
from nbdraw import *  # noqa: E402,F401,F403

MiB = 1 << 20
COMMANDS = ("read", "write", "disc", "flush", "trim", "cache",
            "write_zeroes", "block_status", "other")
ERRORS = ("NBD_EPERM", "NBD_EIO", "NBD_ENOMEM", "NBD_EINVAL", "NBD_ENOSPC",
          "NBD_EOVERFLOW", "NBD_ENOTSUP", "NBD_ESHUTDOWN", "other")
# The documented series (rawnbd(8), METRICS) and their types.
SERVER_SERIES = {"connections_total": "counter",
                 "connections_open": "gauge",
                 "connections_negotiating": "gauge"}
EXPORT_SERIES = {"requests_total": "counter",
                 "request_errors_total": "counter",
                 "read_bytes_total": "counter",
                 "written_bytes_total": "counter",
                 "requests_in_flight": "gauge",
                 "sessions_total": "counter",
                 "sessions_open": "gauge",
                 "request_duration_seconds": "histogram"}


# ---- reading the endpoint ------------------------------------------------

def connect(addr, timeout=10):
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr)
        return s
    return socket.create_connection(addr, timeout=timeout)


def read_all(s):
    out = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(out)
        out.append(b)


def http_get(addr, method="GET", path="/metrics"):
    """(status, headers, body) of one request on a new connection."""
    if isinstance(addr, str):
        with connect(addr) as s:
            s.sendall(("%s %s HTTP/1.1\r\nHost: localhost\r\n\r\n"
                       % (method, path)).encode())
            raw = read_all(s)
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        return status, headers, body
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|$)')


def unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1),
                                                      m.group(1)), v)


def parse(text):
    """Check the text format line by line; return (samples, types) with
    samples {(name, ((label, value), ...)): float}, labels sorted."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, "two TYPE lines for %s" % name
            types[name] = kind
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = []
        rest = m.group(2) or ""
        while rest:
            lm = _LABEL.match(rest)
            assert lm, "bad labels in %r" % line
            labels.append((lm.group(1), unescape(lm.group(2))))
            rest = rest[lm.end():]
        key = (m.group(1), tuple(sorted(labels)))
        assert key not in samples, "sample given twice: %r" % line
        samples[key] = float(m.group(3))
    return samples, types


class Metrics:
    """One reading of the endpoint."""

    def __init__(self, addr):
        status, headers, body = http_get(addr)
        check_eq(status, 200, "HTTP status")
        check_eq(int(headers["content-length"]), len(body), "Content-Length")
        self.text = body.decode()
        self.samples, self.types = parse(self.text)

    def get(self, name, export=None, **labels):
        """A value; export=NAME reads rawnbd_export_NAME{export=...}."""
        if export is not None:
            name = name.replace("rawnbd_", "rawnbd_export_", 1)
            labels["export"] = export
        key = (name, tuple(sorted(labels.items())))
        assert key in self.samples, "no sample %s%r" % key
        return self.samples[key]

    def by_label(self, name, label, export=None):
        values = COMMANDS if label == "command" else ERRORS
        return {v: self.get(name, export, **{label: v}) for v in values}


def wait_idle(addr, timeout=10):
    """The metrics once every connection has closed and every counter
    has settled (threads add theirs a moment after the reply)."""
    deadline = time.monotonic() + timeout
    while True:
        m = Metrics(addr)
        if (m.get("rawnbd_connections_open") == 0 and
                m.get("rawnbd_sessions_open") == 0 and
                m.get("rawnbd_requests_in_flight") == 0):
            return m
        assert time.monotonic() < deadline, "connections still open:\n" + \
            m.text
        time.sleep(0.05)


def nbd_handle(s, name=""):
    h = need_libnbd().NBD()
    h.set_strict_mode(0)        # let the failing requests through
    h.set_export_name(name)
    h.connect_unix(s.sock_path)
    return h


# ---- tests --------------------------------------------------------------------

@test
def endpoint_unix_curl():
    """curl on the unix socket: 200, the documented series with their
    types and labels; HEAD and any path answered; socket gone at exit."""
    with Workdir() as w:
        img = w.file("a.img")
        make_image(img, MiB)
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--metrics", msock):
            curl = shutil.which("curl")
            if curl:
                out = subprocess.run(
                    [curl, "-sS", "-i", "--unix-socket", msock,
                     "http://localhost/metrics"], capture_output=True,
                    timeout=30)
                check_eq(out.returncode, 0, "curl status (%s)" % out.stderr)
                head = out.stdout.split(b"\r\n", 1)[0]
                check_eq(head, b"HTTP/1.1 200 OK", "status line")
                parse(out.stdout.split(b"\r\n\r\n", 1)[1].decode())
            else:
                diag("curl is not installed: raw socket only")
            m = Metrics(msock)
            for name, kind in SERVER_SERIES.items():
                check_eq(m.types.get("rawnbd_" + name), kind, "TYPE of " + name)
                m.get("rawnbd_" + name)
            for name, kind in EXPORT_SERIES.items():
                for prefix in ("rawnbd_", "rawnbd_export_"):
                    check_eq(m.types.get(prefix + name), kind,
                             "TYPE of " + prefix + name)
            for export in (None, ""):
                m.by_label("rawnbd_requests_total", "command", export)
                m.by_label("rawnbd_request_errors_total", "error", export)
                for name in ("read_bytes_total", "written_bytes_total",
                             "requests_in_flight", "sessions_total",
                             "sessions_open",
                             "request_duration_seconds_count",
                             "request_duration_seconds_sum"):
                    m.get("rawnbd_" + name, export)
            status, headers, body = http_get(msock, "HEAD")
            check_eq((status, body), (200, b""), "HEAD")
            assert int(headers["content-length"]) > 1000, headers
            status, _, body = http_get(msock, "GET", "/anything/else")
            check_eq(status, 200, "GET of another path")
            parse(body.decode())
        assert not os.path.exists(msock), "metrics socket left behind"


@test
def endpoint_tcp():
    with Workdir() as w:
        img = w.file("a.img")
        make_image(img, MiB)
        for spec in ("127.0.0.1:%d", ":%d"):
            port = free_port()
            with Server(img, "-t", "--metrics", spec % port):
                m = Metrics(("127.0.0.1", port))
                check_eq(m.get("rawnbd_connections_total"), 0,
                         "connections before any client (%s)" % spec)


@test
def exact_counters():
    """10 writes and 5 reads of 4 KiB, a write past the end (ENOSPC) and
    one to a read-only export (EPERM), through libnbd: every counter, in
    total and per export."""
    need_libnbd()
    with Workdir() as w:
        img, ro = w.file("a.img"), w.file("ro.img")
        make_image(img, MiB, [(0, pattern(1, MiB))])
        make_image(ro, MiB)
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--metrics", msock, "--export",
                    "ro=%s,ro" % ro) as s:
            h = nbd_handle(s)
            for i in range(10):
                h.pwrite(pattern(2, 4096), i * 4096)
            for i in range(5):
                check_eq(h.pread(4096, i * 4096), pattern(2, 4096), "read")
            expect_nbd_error(lambda: h.pwrite(bytes(4096), MiB - 2048),
                             "ENOSPC", "write past the end")
            # While connected: one session, plus one client negotiating.
            with s.client() as c:
                c.greeting()
                time.sleep(0.1)
                m = Metrics(msock)
                check_eq((m.get("rawnbd_connections_open"),
                          m.get("rawnbd_connections_negotiating"),
                          m.get("rawnbd_sessions_open"),
                          m.get("rawnbd_sessions_open", "")),
                         (2, 1, 1, 1), "open, negotiating, sessions, "
                         "sessions of ''")
            h.shutdown()
            h = nbd_handle(s, "ro")
            expect_nbd_error(lambda: h.pwrite(bytes(4096), 0), "EPERM",
                             "write to the read-only export")
            h.shutdown()
            m = wait_idle(msock)
            zero_cmds = dict.fromkeys(COMMANDS, 0)
            zero_errs = dict.fromkeys(ERRORS, 0)
            want = {
                None: (dict(zero_cmds, read=5, write=12, disc=2),
                       dict(zero_errs, NBD_ENOSPC=1, NBD_EPERM=1),
                       20480, 40960, 2, 17),
                "": (dict(zero_cmds, read=5, write=11, disc=1),
                     dict(zero_errs, NBD_ENOSPC=1), 20480, 40960, 1, 16),
                "ro": (dict(zero_cmds, write=1, disc=1),
                       dict(zero_errs, NBD_EPERM=1), 0, 0, 1, 1),
            }
            for export, (cmds, errs, rbytes, wbytes, sessions,
                         answered) in want.items():
                what = "export %r" % export if export is not None else "total"
                check_eq(m.by_label("rawnbd_requests_total", "command",
                                    export), cmds, "requests, " + what)
                check_eq(m.by_label("rawnbd_request_errors_total", "error",
                                    export), errs, "errors, " + what)
                got = tuple(m.get("rawnbd_" + n, export) for n in (
                    "read_bytes_total", "written_bytes_total",
                    "sessions_total", "sessions_open", "requests_in_flight",
                    "request_duration_seconds_count"))
                check_eq(got, (rbytes, wbytes, sessions, 0, 0, answered),
                         "bytes read, written, sessions, open, in flight, "
                         "answered: " + what)
                check_histogram(m, export, answered)
            check_eq((m.get("rawnbd_connections_total"),
                      m.get("rawnbd_connections_open"),
                      m.get("rawnbd_connections_negotiating")), (3, 0, 0),
                     "connections total, open, negotiating")


def check_histogram(m, export, count):
    """Buckets at 1 us doubling to 2^22 us, then +Inf; cumulative; +Inf
    and _count equal @count; _sum positive."""
    name = "rawnbd_request_duration_seconds_bucket"
    if export is not None:
        name = name.replace("rawnbd_", "rawnbd_export_", 1)
    got = sorted(((float(dict(labels)["le"]), v) for (n, labels), v in
                  m.samples.items() if n == name and
                  dict(labels).get("export") == export), key=lambda x: x[0])
    bounds = [le for le, _ in got]
    check_eq(len(bounds), 24, "number of buckets of %r" % (export,))
    for i, le in enumerate(bounds[:-1]):
        assert abs(le - (1 << i) * 1e-6) < 1e-12, "bucket %d: le=%r" % (i, le)
    check_eq(bounds[-1], float("inf"), "last bucket")
    values = [v for _, v in got]
    assert values == sorted(values), "buckets not cumulative: %r" % values
    check_eq(values[-1], count, "+Inf bucket of %r" % (export,))
    check_eq(m.get("rawnbd_request_duration_seconds_count", export), count,
             "_count of %r" % (export,))
    total = m.get("rawnbd_request_duration_seconds_sum", export)
    assert (total > 0) == (count > 0) and total < 60, "_sum %r" % total


@test
def exact_counters_concurrent():
    """Four connections on four loop threads at once: the threads'
    counters add up exactly."""
    need_libnbd()
    with Workdir() as w:
        img = w.file("a.img")
        make_image(img, 16 * MiB)
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--threads", "4", "--metrics", msock) as s:
            errors = []

            def worker(k):
                try:
                    h = nbd_handle(s)
                    for i in range(200):
                        off = (k * 4 * MiB) + (i % 64) * 4096
                        h.pwrite(pattern(k, 4096), off)
                        h.pread(4096, off)
                    h.shutdown()
                except Exception as e:  # noqa: B902
                    errors.append(e)
            threads = [threading.Thread(target=worker, args=(k,))
                       for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            m = wait_idle(msock)
            check_eq(m.by_label("rawnbd_requests_total", "command"),
                     dict(dict.fromkeys(COMMANDS, 0), read=800, write=800,
                          disc=4), "requests")
            check_eq((m.get("rawnbd_read_bytes_total"),
                      m.get("rawnbd_written_bytes_total"),
                      m.get("rawnbd_sessions_total"),
                      m.get("rawnbd_request_duration_seconds_count")),
                     (800 * 4096, 800 * 4096, 4, 1600),
                     "bytes read, written, sessions, answered")


@test
def gauges_settle_after_vanished_clients():
    """Clients that reset the connection with reads in flight, or leave
    while negotiating: the gauges come back to 0, and no more requests
    are counted as answered than were received."""
    with Workdir() as w:
        img = w.file("a.img")
        make_image(img, 16 * MiB, [(0, pattern(1, 16 * MiB))])
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--metrics", msock) as s:
            for _ in range(3):
                c = s.connect()
                for k in range(16):
                    c.send_request(CMD_READ, k * MiB, MiB)
                c.sock.recv(1)
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                  struct.pack("ii", 1, 0))
                c.close()
                with s.client() as c:
                    c.greeting()
            m = wait_idle(msock)
            received = m.get("rawnbd_requests_total", command="read")
            answered = m.get("rawnbd_request_duration_seconds_count")
            assert 3 <= received <= 48 and answered <= received, \
                "%d reads received, %d answered" % (received, answered)
            check_eq((m.get("rawnbd_connections_total"),
                      m.get("rawnbd_connections_negotiating"),
                      m.get("rawnbd_sessions_total")), (6, 0, 3),
                     "connections, negotiating, sessions")


@test
def sigusr1_dumps_the_same_text():
    with Workdir() as w:
        img = w.file("a.img")
        make_image(img, MiB)
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--metrics", msock) as s:
            with s.connect() as c:
                c.read(0, 4096)
                c.disconnect()
            before = wait_idle(msock).text
            s.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while "metrics (SIGUSR1):" not in s.log_text():
                assert time.monotonic() < deadline, "nothing logged"
                time.sleep(0.05)
            time.sleep(0.2)
            log = s.log_text()
            dumped = log.split("metrics (SIGUSR1):\n", 1)[1]
            dumped = dumped[:len(before)]
            check_eq(dumped, before, "text logged on SIGUSR1")
            check_eq(Metrics(msock).text, before, "text after SIGUSR1")


@test
def silent_reader():
    """A metrics client that sends nothing blocks neither the NBD side
    nor other metrics readers; it gets the bare text after ~5 s, or at
    once when it shuts down its sending side."""
    with Workdir() as w:
        img = w.file("a.img")
        make_image(img, MiB, [(0, pattern(1, MiB))])
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--metrics", msock) as s:
            t0 = time.monotonic()
            silent = connect(msock, timeout=15)
            with s.connect() as c:
                check_eq(c.read(0, 4096).data, pattern(1, 4096),
                         "NBD read while a metrics reader is silent")
                Metrics(msock)
            took = time.monotonic() - t0
            assert took < 2, "NBD and metrics took %.1f s" % took
            with connect(msock) as half:
                half.shutdown(socket.SHUT_WR)
                text = read_all(half).decode()
            assert text.startswith("# HELP rawnbd_connections_total"), text
            parse(text)
            text = read_all(silent).decode()
            took = time.monotonic() - t0
            silent.close()
            assert 4 <= took <= 8, "silent reader answered after %.1f s" % took
            assert text.startswith("# HELP rawnbd_"), text[:200]
            parse(text)


@test
def long_request_answered():
    """A GET whose headers pass 4 KiB (big cookies, long user agents) is
    still a GET: it must be answered, not reset."""
    with Workdir() as w:
        img = w.file("a.img")
        make_image(img, MiB)
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--metrics", msock):
            for pad in (1000, 3500, 6000):
                with connect(msock) as c:
                    c.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n"
                              b"X-Pad: " + b"p" * pad + b"\r\n\r\n")
                    try:
                        reply = read_all(c)
                    except ConnectionResetError:
                        raise AssertionError("a GET with %d bytes of headers "
                                             "was reset unanswered" % pad)
                    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), \
                        "GET with %d bytes of headers: %r" % (pad, reply[:80])


def many_exports(w, n=150):
    """An image and --export options for @n exports of it: enough that
    the metrics text (~3.4 KiB an export) outgrows a socket buffer."""
    img = w.file("a.img")
    make_image(img, MiB)
    return img, ["--export=export-%03d=%s" % (i, img) for i in range(n)]


def split_reply(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


@test
def big_reply_to_slow_reader():
    """A reply larger than the socket buffer reaches a scraper that
    starts reading late, whole: as many body bytes as Content-Length,
    over the unix socket and TCP.  The NBD side is served meanwhile."""
    with Workdir() as w:
        img, args = many_exports(w)
        msock = w.file("metrics.sock")
        port = free_port()
        with Server(img, "-t", "--metrics", msock, *args) as s, \
                Server(img, "-t", "--metrics", "127.0.0.1:%d" % port,
                       *args):
            for addr in (msock, ("127.0.0.1", port)):
                with connect(addr, timeout=20) as c:
                    c.sendall(b"GET /metrics HTTP/1.1\r\n"
                              b"Host: localhost\r\n\r\n")
                    time.sleep(1.5)
                    with s.connect() as n:
                        check_eq(n.read(0, 4096).data, b"\0" * 4096,
                                 "NBD read while a reply is pending")
                    raw = read_all(c)
                status, headers, body = split_reply(raw)
                check_eq(status, "HTTP/1.1 200 OK", "status line")
                length = int(headers["content-length"])
                assert length > 400000, "only %d bytes of metrics" % length
                check_eq(len(body), length, "body bytes received over %r "
                         "(Content-Length)" % (addr,))
                samples, _ = parse(body.decode())
                check_eq(samples[("rawnbd_export_sessions_total",
                                  (("export", "export-149"),))], 0,
                         "the last export's series")


@test
def stalled_reader_dropped():
    """A scraper that never reads its reply is dropped after about five
    seconds without progress: it holds no memory for ever, and what it
    finally reads is a cut-short reply and the end of the stream."""
    with Workdir() as w:
        img, args = many_exports(w)
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--metrics", msock, *args) as s:
            stalled = connect(msock, timeout=20)
            stalled.sendall(b"GET / HTTP/1.1\r\n\r\n")
            time.sleep(0.5)
            status, headers, body = http_get(msock)
            check_eq(len(body), int(headers["content-length"]),
                     "a second reader's body while one stalls")
            time.sleep(6.5)
            # Dropped: the rest never comes, only the end of the stream.
            raw = read_all(stalled)
            stalled.close()
            _, headers, body = split_reply(raw)
            assert len(body) < int(headers["content-length"]), \
                "the stalled reader got the whole reply"
            check_eq(Metrics(msock).get("rawnbd_connections_total"), 0,
                     "metrics after a dropped reader")
            assert s.running()
            # One more stalled reader while the server stops: it must not
            # delay the exit or leak its reply.
            stalled = connect(msock, timeout=20)
            stalled.sendall(b"GET / HTTP/1.1\r\n\r\n")
            time.sleep(0.3)
        stalled.close()


@test
def labels_escaped():
    with Workdir() as w:
        img = w.file("a.img")
        make_image(img, MiB)
        names = ['say "hi"', 'back\\slash', 'two\nlines']
        args = ["--export=%s=%s" % (n, img) for n in names]
        msock = w.file("metrics.sock")
        with Server(img, "-t", "--metrics", msock, *args):
            m = Metrics(msock)
            for n in [""] + names:
                check_eq(m.get("rawnbd_sessions_total", n), 0,
                         "sessions of %r" % n)
                check_eq(set(m.by_label("rawnbd_requests_total", "command",
                                        n)), set(COMMANDS), "commands of %r"
                         % n)


if __name__ == "__main__":
    run()
