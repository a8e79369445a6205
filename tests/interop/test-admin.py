#!/usr/bin/python3
"""What an operator sees and sets: the log lines for each connection, I/O
errors logged with their real errno (fault-injection build), -v, SIGHUP,
--log=syslog (to a private /dev/log in a mount namespace), and -e N."""

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (RAWNBD, Server, Skip, Workdir, check_eq,  # noqa: E402
                     diag, make_image, pattern, run, test)
from nbdraw import *  # noqa: E402,F401,F403

MiB = 1 << 20


def image(w, name="disk.img"):
    path = w.file(name)
    make_image(path, 4 * MiB, [(0, pattern(1, MiB))])
    return path


# ---- connection log lines ------------------------------------------------

@test
def connection_lines():
    """One line when a client connects and one when it leaves, naming the
    peer (address:port over TCP) and, on leaving, the export and the
    number of requests it sent."""
    with Workdir() as w, Server(image(w), "-t", "-x", "my disk",
                                tcp=True) as s:
        with s.connect(name=b"my disk") as c:
            port = c.sock.getsockname()[1]
            for k in range(3):
                c.read(k * 4096, 4096)
            c.disconnect()
            c.wait_closed()
        peer = re.escape("(127.0.0.1:%d)" % port)
        opened = s.wait_log(r"^rawnbd: client \d+ %s: connected$" % peer)
        closed = s.wait_log(r"^rawnbd: client \d+ %s: disconnected from "
                            r"export 'my disk' after 4 requests$" % peer)
        label = opened[0].split(": ")[1]
        check_eq(closed[0].split(": ")[1], label, "label of the close line")
        # A client that leaves while negotiating.
        with s.client() as c:
            port = c.sock.getsockname()[1]
            c.handshake()
        s.wait_log(r"^rawnbd: client \d+ \(127.0.0.1:%d\): disconnected "
                   r"while negotiating$" % port)
        lines = [ln for ln in s.log_text().splitlines()
                 if "(127.0.0.1:" in ln]
        opens = [ln for ln in lines if ln.endswith(": connected")]
        closes = [ln for ln in lines if ": disconnected " in ln]
        check_eq((len(opens), len(closes)), (2, 2), "open and close lines:\n"
                 + "\n".join(lines))
    with Workdir() as w, Server(image(w), "-t") as s, s.connect() as c:
        c.disconnect()
        s.wait_log(r"^rawnbd: client \d+ \(unix\): disconnected from export "
                   r"'' after 1 requests$")


@test
def verbose_logs_options_and_requests():
    with Workdir() as w, Server(image(w), "-t", "-v") as s:
        with s.connect() as c:
            c.read(4096, 512)
            r = c.read(4 * MiB - 100, 512)
            check_eq(r.error, EINVAL, "read past the end")
            c.write(8192, b"v" * 100)
            c.disconnect()
        s.wait_log(r"^rawnbd: debug: client 1 \(unix\): option "
                   r"NBD_OPT_STRUCTURED_REPLY length 0$")
        s.wait_log(r"^rawnbd: debug: client 1 \(unix\): option NBD_OPT_GO "
                   r"length \d+$")
        s.wait_log(r"^rawnbd: debug: client 1 \(unix\): NBD_CMD_READ flags=\S+"
                   r" offset=4096 length=512$")
        s.wait_log(r"NBD_CMD_READ flags=\S+ offset=%d length=512 -> "
                   r"NBD_EINVAL$" % (4 * MiB - 100))
        s.wait_log(r"NBD_CMD_WRITE flags=\S+ offset=8192 length=100$")
        s.wait_log(r"NBD_CMD_DISC ")
    with Workdir() as w, Server(image(w), "-t") as s:
        with s.connect() as c:
            c.read(0, 512)
            c.disconnect()
        s.wait_log(r": disconnected from export")
        assert "debug:" not in s.log_text(), "debug lines without -v"


@test
def sighup_logged_and_ignored():
    with Workdir() as w, Server(image(w), "-t") as s:
        s.proc.send_signal(signal.SIGHUP)
        s.wait_log(r"^rawnbd: SIGHUP ")
        assert s.running(), "SIGHUP stopped the server"
        with s.connect() as c:
            check_eq(c.read(0, 4096).data, pattern(1, 4096), "read")


# ---- I/O errors ------------------------------------------------------------

def fault_build():
    """A rawnbd that honours RAWNBD_FAULTS: $RAWNBD, else
    $RAWNBD_FAULT_BUILD; skips the test without one."""
    for exe in (RAWNBD, os.environ.get("RAWNBD_FAULT_BUILD")):
        if not exe or not os.access(exe, os.X_OK):
            continue
        out = subprocess.run([exe, "-V"], capture_output=True, text=True,
                             timeout=30).stdout
        if "(fault injection build)" in out:
            return exe
    raise Skip("not a fault-injection build (meson -Dfault_injection=true; "
               "or set RAWNBD_FAULT_BUILD)")


@test
def io_errors_logged_with_errno():
    """A failing write or read is answered with an error and logged with
    the real errno text, the command, offset and length."""
    exe = fault_build()
    faults = "pwritev=EIO@8192*1;pwritev=ENOSPC@16384*1;preadv=EROFS@65536*1"
    with Workdir() as w, Server(image(w), "-t", exe=exe,
                                env={"RAWNBD_FAULTS": faults}) as s:
        with s.connect() as c:
            r = c.write(8192, b"x" * 4096)
            check_eq(r.error, EIO, "write with an EIO fault")
            assert "Input/output error" in (r.message or ""), r.message
            check_eq(c.write(16384, b"y" * 4096).error, ENOSPC,
                     "write with an ENOSPC fault")
            r = c.read(65536, 4096)
            assert r.error, "read with an EROFS fault succeeded"
            check_eq(c.write(8192, b"z" * 4096).error, 0, "write again")
            c.disconnect()
        for what in (r"NBD_CMD_WRITE at offset 8192 length 4096 failed: "
                     r"Input/output error$",
                     r"NBD_CMD_WRITE at offset 16384 length 4096 failed: "
                     r"No space left on device$",
                     r"NBD_CMD_READ at offset 65536 length 4096 failed: "
                     r"Read-only file system$"):
            s.wait_log(r"^rawnbd: warning: client 1 \(unix\): " + what)


# ---- syslog ------------------------------------------------------------------

class SyslogSink:
    """A private /dev/log: a directory to mount over /dev in a new mount
    namespace, holding the datagram socket 'log' and bind mounts of the
    few devices a process may open."""

    DEVICES = ("null", "zero", "random", "urandom")

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rawnbd-dev-")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.path.join(self.dir, "log"))
        self.messages = []

    def wrapper(self):
        """argv that runs the appended command with our /dev."""
        script = "".join('touch "$D/%s" && mount --bind /dev/%s "$D/%s" && '
                         % (n, n, n) for n in self.DEVICES)
        script += 'mount --rbind "$D" /dev && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private",
                "env", "D=" + self.dir, "sh", "-c", script, "sh"]

    def receive(self, pattern, timeout=10):
        """Wait for a message matching @pattern; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages:
                if re.search(pattern, m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no syslog message matches %r; got:\n%s"
                                     % (pattern, "\n".join(self.messages)))
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                self.messages.append(self.sock.recv(65536).decode(
                    "utf-8", "replace"))

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def can_unshare():
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--mount", "true"], capture_output=True,
                       timeout=30)
    return r.returncode == 0


@test
def log_to_syslog():
    """--log=syslog: messages go to /dev/log as rawnbd[PID] with facility
    daemon and their priority (which replaces the "warning: " tag);
    nothing of them on stderr."""
    if not can_unshare():
        raise Skip("cannot make a mount namespace (unshare --mount)")
    sink = SyslogSink()
    try:
        with Workdir() as w, Server(image(w), "-t", "--log=syslog",
                                    wrapper=sink.wrapper()) as s:
            with s.connect() as c:
                c.read(0, 512)
                c.send_request(CMD_READ, 0, 512, magic=0x12345678)
                c.wait_closed()
            pid = s.pid
            daemon_info, daemon_warning = 3 * 8 + 6, 3 * 8 + 4
            m = sink.receive(r"rawnbd\[%d\]: export '': " % pid)
            assert m.startswith("<%d>" % daemon_info), m
            sink.receive(r"^<%d>.*rawnbd\[%d\]: client 1 \(unix\): connected$"
                         % (daemon_info, pid))
            sink.receive(r"^<%d>.*rawnbd\[%d\]: client 1 \(unix\): bad "
                         r"request magic" % (daemon_warning, pid))
            sink.receive(r"rawnbd\[%d\]: client 1 \(unix\): disconnected "
                         r"from export '' after 1 requests$" % pid)
            s.proc.send_signal(signal.SIGHUP)
            sink.receive(r"rawnbd\[%d\]: SIGHUP .*syslog" % pid)
        check_eq(s.log_text(), "", "stderr under --log=syslog")
        diag("%d syslog messages" % len(sink.messages))
    finally:
        sink.close()
    # Start-up failures still go to stderr.
    out = subprocess.run([RAWNBD, "--log=syslog", "-k", "/nonexistent/s.sock",
                          "/nonexistent.img"], capture_output=True, text=True,
                         timeout=30)
    check_eq(out.returncode, 1, "status of a failed start")
    assert "/nonexistent.img" in out.stderr, out.stderr


# ---- -e N -------------------------------------------------------------------

def waiting(c, secs=0.5):
    """True if @c has been sent nothing (not even the greeting)."""
    r, _, _ = select.select([c.sock], [], [], secs)
    return not r


@test
def shared_limit_queues_clients():
    """-e 2: while two connections are open (negotiating ones count) a
    third waits unanswered; it is served when one leaves."""
    with Workdir() as w, Server(image(w), "-t", "-e", "2") as s:
        a = s.client()
        a.greeting()                    # negotiating
        b = s.connect()                 # in transmission
        c = s.client()
        assert waiting(c), "a third client was answered with 2 open"
        a.close()
        t0 = time.monotonic()
        c.connect_export()
        diag("third client served %.3f s after the first left"
             % (time.monotonic() - t0))
        d = s.client()
        assert waiting(d), "a fourth client was answered with 2 open"
        b.disconnect()
        b.close()
        d.connect_export()
        for x in (c, d):
            check_eq(x.read(0, 4096).data, pattern(1, 4096), "read")
            x.close()


if __name__ == "__main__":
    run()
