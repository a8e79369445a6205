#!/usr/bin/python3
"""rawnbd as a process: signals, --fork and --pid-file, the handshake
limits, clients that vanish, IPv6."""

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (RAWNBD, Server, Skip, Workdir, check_eq,  # noqa: E402
                     diag, make_image, pattern, run, sanitizer_report, test)
from nbdraw import *  # noqa: E402,F401,F403

MiB = 1 << 20
PR_SET_CHILD_SUBREAPER = 36


def image(w, size=16 * MiB):
    path = w.file("disk.img")
    make_image(path, size, [(0, pattern(1, MiB))])
    return path


@test
def sigterm_during_writes():
    """SIGTERM with writes streaming in: exit 0 within the grace period,
    and every acknowledged write is in the file."""
    block = 16 * 1024
    with Workdir() as w:
        path = w.file("disk.img")
        size = 512 * MiB       # SIGTERM at 0.5 s, or when it is full
        make_image(path, size)
        s = Server(path, "-t")
        c = s.connect()
        c.sock.settimeout(2.0)
        inflight, acked = {}, []
        sending, sigterm_at, i = True, None, 0
        start = time.monotonic()
        try:
            while True:
                if sigterm_at is None and time.monotonic() - start > 0.5:
                    s.proc.send_signal(signal.SIGTERM)
                    sigterm_at = time.monotonic()
                if sending and (i + 1) * block > size:
                    sending, start = False, 0   # out of room: stop now
                    continue
                if sending and len(inflight) < 32:
                    off = i * block
                    try:
                        ck = c.send_request(CMD_WRITE, off, block, 0,
                                            struct.pack("<Q", i) * (block // 8))
                    except (socket.timeout, OSError):
                        sending = False     # the server stopped reading
                        continue
                    inflight[ck] = i
                    i += 1
                    continue
                try:
                    m = c.read_message()
                except Closed:
                    break
                except socket.timeout:
                    if sending:
                        sending = False
                        continue
                    raise AssertionError("no reply and no close 2 s after "
                                         "the last write was sent")
                if m.done:
                    n = inflight.pop(m.cookie)
                    c.pending.pop(m.cookie)
                    c.received.pop(m.cookie)
                    ok = (m.kind == "simple" and m.error == 0) or \
                         m.type == TYPE_NONE
                    if ok:
                        acked.append(n)
                    elif sigterm_at is None:
                        raise AssertionError("write %d failed before SIGTERM"
                                             % n)
        finally:
            c.close()
        rc = s.wait_exit(timeout=25)
        took = time.monotonic() - sigterm_at
        s.check_clean_exit(rc)
        assert took < 20, "exit took %.1f s after SIGTERM" % took
        diag("%d writes sent, %d acknowledged, exit %.2f s after SIGTERM"
             % (i, len(acked), took))
        assert len(acked) > 100, "only %d writes acknowledged" % len(acked)
        with open(path, "rb") as f:
            for n in acked:
                f.seek(n * block)
                got = f.read(block)
                if got != struct.pack("<Q", n) * (block // 8):
                    raise AssertionError("acknowledged write %d (of %d) is "
                                         "not in the file" % (n, len(acked)))


@test
def sigint_and_sigterm_exit_zero():
    with Workdir() as w:
        img = image(w)
        for sig in (signal.SIGINT, signal.SIGTERM):
            # An idle client in transmission and one still negotiating.
            s = Server(img, "-t")
            c1 = s.connect()
            c2 = s.client()
            c2.greeting()
            s.proc.send_signal(sig)
            check_eq(c1.wait_closed(), b"", "bytes to an idle client")
            c2.wait_closed()
            rc = s.wait_exit(timeout=20)
            s.check_clean_exit(rc)
            c1.close()
            c2.close()


@test
def signals_during_startup():
    """Until the server listens, SIGTERM and SIGINT have their default
    effect: a server stuck opening its image (a FIFO with no writer, for
    -r) dies of the signal at once and leaves no socket behind."""
    with Workdir() as w:
        fifo = w.file("fifo")
        os.mkfifo(fifo)
        msock = w.file("metrics.sock")
        for sig in (signal.SIGTERM, signal.SIGINT):
            s = Server(fifo, "-r", "--metrics", msock, wait=False)
            time.sleep(0.5)
            assert s.running(), "exited before the signal: " + s.log_tail()
            try:
                with open("/proc/%d/wchan" % s.pid) as f:
                    diag("%s waits in %s" % (sig.name, f.read()))
            except OSError:
                pass
            s.proc.send_signal(sig)
            rc = s.wait_exit(timeout=5)
            check_eq(rc, -sig, "status after %s during start-up" % sig.name)
            assert not os.path.exists(s.sock_path), "socket left behind"
            assert not os.path.exists(msock), "metrics socket left behind"
            check_eq(s.proc.stdout.read(), b"", "stdout")


@test
def handshake_limit_default():
    """The default --handshake-limit is 10 s: a client that sends
    nothing after the greeting is still connected at 6 s and gone by
    12 s."""
    with Workdir() as w, Server(image(w), "-t") as s:
        t0 = time.monotonic()
        silent = s.client()
        silent.greeting()
        time.sleep(6 - (time.monotonic() - t0))
        assert silent.is_open(wait=0), "dropped before 6 s"
        silent.wait_closed(timeout=12 - (time.monotonic() - t0))
        took = time.monotonic() - t0
        assert 9 <= took <= 12, "dropped after %.1f s" % took
        silent.close()


@test
def sighup_ignored():
    with Workdir() as w, Server(image(w), "-t") as s:
        s.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert s.running(), "SIGHUP stopped the server"
        with s.connect() as c:
            check_eq(c.read(0, 4096).data, pattern(1, 4096), "read after SIGHUP")


@test
def client_vanishes_with_replies_pending():
    """A client that sends big reads and hangs up at once must not hurt
    the server (nbdkit 1.32 aborted on exactly this)."""
    with Workdir() as w, Server(image(w), "-t") as s:
        for _ in range(5):
            c = s.connect()
            for k in range(16):
                c.send_request(CMD_READ, (k % 16) * MiB, MiB)
            c.send_request(CMD_WRITE, 0, 4 * MiB, 0, b"\0" * 1000)  # cut short
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                              struct.pack("ii", 1, 0))      # RST
            c.close()
        with s.connect() as c:
            check_eq(c.read(0, 4096).data, pattern(1, 4096),
                     "read after the vanished clients")


@test
def fifty_clients_at_once():
    with Workdir() as w, Server(image(w), "-t") as s:
        clients = [s.connect() for _ in range(50)]
        cookies = [c.send_request(CMD_READ, (k % 16) * 4096, 4096)
                   for k, c in enumerate(clients)]
        for k, (c, ck) in enumerate(zip(clients, cookies)):
            r = c.reply(ck)
            off = (k % 16) * 4096
            check_eq(r.data, pattern(1, MiB)[off:off + 4096],
                     "read of client %d" % k)
            c.close()


def set_subreaper():
    """Become the parent of orphaned descendants (the --fork daemon)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise Skip("prctl(PR_SET_CHILD_SUBREAPER) failed")


def wait_pid(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    raise AssertionError("process %d still running after %.0f s"
                         % (pid, timeout))


@test
def fork_and_pid_file():
    set_subreaper()
    with Workdir() as w:
        img = image(w)
        sock, pidfile, log = w.file("s.sock"), w.file("pid"), w.file("log")
        for persistent in (True, False):
            args = [RAWNBD, "--fork", "--pid-file", pidfile, "-k", sock]
            args += ["-t"] if persistent else []
            with open(log, "wb") as logf:
                parent = subprocess.Popen(args + [img], stdout=logf,
                                          stderr=logf,
                                          stdin=subprocess.DEVNULL)
                check_eq(parent.wait(timeout=20), 0, "status of the parent")
            # Once the parent has exited the server listens and the pid
            # file names it.
            with open(pidfile) as f:
                pid = int(f.read().strip())
            assert pid != parent.pid, "pid file names the parent"
            exe = os.path.realpath("/proc/%d/exe" % pid)
            check_eq(exe, os.path.realpath(RAWNBD), "executable of pid %d"
                     % pid)
            c = nbdraw_client(sock)
            check_eq(c.read(0, 4096).data, pattern(1, 4096), "read")
            if persistent:
                c.close()
                time.sleep(0.2)
                check_eq(os.waitpid(pid, os.WNOHANG), (0, 0),
                         "-t daemon exited after its client")
                os.kill(pid, signal.SIGTERM)
            else:
                c.close()
            rc = wait_pid(pid, 30)
            with open(log, errors="replace") as f:
                text = f.read()
            assert sanitizer_report(text) is None, text
            check_eq(rc, 0, "exit status of the daemon")
            assert not os.path.exists(pidfile), "pid file left behind"
            assert not os.path.exists(sock), "socket left behind"


@test
def pid_file_of_successor_kept():
    """A server that exits leaves a pid file that names another process
    (a successor started on the same path) alone."""
    with Workdir() as w:
        img = image(w)
        pidfile = w.file("pid")
        with Server(img, "-t", "--pid-file", pidfile) as s:
            with open(pidfile) as f:
                check_eq(int(f.read()), s.proc.pid, "pid file")
            with open(pidfile, "w") as f:
                f.write("%d\n" % os.getpid())     # the successor's
        with open(pidfile) as f:
            check_eq(int(f.read()), os.getpid(), "successor's pid file")


def nbdraw_client(address):
    c = Client(address)
    try:
        return c.connect_export()
    except BaseException:
        c.close()
        raise


@test
def handshake_limit():
    with Workdir() as w, Server(image(w), "-t", "--handshake-limit", "1") as s:
        t0 = time.monotonic()
        silent = s.client()
        check_eq(silent.greeting(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
                 "greeting")
        slow = s.client()
        slow.handshake()
        # A real client is served meanwhile, and once in transmission it
        # may stay idle for longer than the limit.
        with s.connect() as good:
            check_eq(good.read(0, 4096).data, pattern(1, 4096), "read")
            # The slow client answers each option quickly, but in all
            # takes longer than the limit.
            dropped = False
            for _ in range(8):
                try:
                    slow.option(OPT_LIST)
                except (Closed, OSError):
                    dropped = True
                    break
                time.sleep(0.3)
            assert dropped, "a client negotiating for 2.4 s was not dropped"
            silent.wait_closed(timeout=15)
            took = time.monotonic() - t0
            assert took >= 0.9, "silent client dropped after %.2f s" % took
            time.sleep(max(0, 2.0 - took))
            check_eq(good.read(4096, 4096).data, pattern(1, 8192)[4096:],
                     "read after 2 s idle in transmission")
        silent.close()
        slow.close()


@test
def max_handshakes():
    with Workdir() as w, Server(image(w), "-t", "--max-handshakes", "2") as s:
        a, b, c = s.client(), s.client(), s.client()
        for x in (a, b, c):
            x.greeting()
        check_eq(a.wait_closed(timeout=10), b"",
                 "the oldest negotiating client")
        assert b.is_open() and c.is_open(), "a newer client was dropped"
        # A real client still gets through (dropping b).
        with s.connect() as d:
            check_eq(d.read(0, 4096).data, pattern(1, 4096), "read")
        b.wait_closed(timeout=10)
        assert c.is_open(), "the newest idle client was dropped"
        for x in (a, b, c):
            x.close()


@test
def ipv6_loopback():
    if not socket.has_ipv6:
        raise Skip("no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as t:
            t.bind(("::1", 0))
    except OSError as e:
        raise Skip("cannot bind ::1: %s" % e)
    with Workdir() as w, Server(image(w), "-t", tcp=True, bind="::1") as s:
        check_eq(s.uri, "nbd://[::1]:%d/" % s.port, "URI")
        out = subprocess.run(["nbdinfo", "--size", s.uri], capture_output=True,
                             text=True, timeout=30)
        check_eq((out.returncode, out.stdout.strip()), (0, str(16 * MiB)),
                 "nbdinfo --size %s (%s)" % (s.uri, out.stderr.strip()))
        with s.connect() as c:
            check_eq(c.read(0, 4096).data, pattern(1, 4096), "read over IPv6")
        try:
            socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
            raise AssertionError("-b ::1 also listens on 127.0.0.1")
        except ConnectionRefusedError:
            pass


if __name__ == "__main__":
    run()
