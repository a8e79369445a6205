#!/usr/bin/python3
"""Shutdown and durability.

- SIGTERM while 4 libnbd clients write random 4 KiB blocks (2 with FUA,
  2 without; 2 on the unix socket, 2 over TCP): the server exits 0
  within 15 s, no client sees an error reply or a protocol error, and
  every acknowledged write is in the image.
- SIGTERM while raw clients stream 4 MiB READs and 1 MiB WRITEs: every
  request the server took in is answered in full before the connection
  closes, over the unix socket and over TCP (a close that tears a reply
  shows as a partial message).
- SIGTERM while a WRITE's payload is half sent: the server does not wait
  for the rest.
- FLUSH across connections: a write acknowledged on connection A, a
  FLUSH on connection B, then SIGKILL: the data is in the file, with the
  page cache and with --cache=none.  What this can prove: the server
  acknowledged the write only once the kernel had it (nothing was held
  in the server's memory) and a FLUSH on another connection returns only
  after it.  What it cannot: that fdatasync reached stable storage -- a
  killed process loses nothing the kernel holds, page cache included.
  Power-loss behaviour is the VM crash test's (tests/vm).
"""

import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from robustlib import (HERE, MiB, SYSTEM_PYTHON, Skip, diag,  # noqa: E402
                       dual_server, use_binary)
from harness import (Workdir, check_eq, make_image, pattern,  # noqa: E402
                     read_file, run, test)
from nbdraw import *  # noqa: E402,F401,F403

sys.path.insert(0, HERE)
from writer import BLOCK, expected_block  # noqa: E402

EXIT_BOUND = 15.0


def stop_and_time(s):
    t = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    rc = s.wait_exit(timeout=EXIT_BOUND + 30)
    took = time.monotonic() - t
    s.check_clean_exit(rc)
    assert took < EXIT_BOUND, "exit %.1f s after SIGTERM" % took
    return took


@test
def sigterm_with_libnbd_writers():
    use_binary(asan=True)
    per = 65536                             # blocks of each writer
    with Workdir() as w:
        path = w.file("disk.img")
        make_image(path, 4 * per * BLOCK)
        s = dual_server(path, "-t")
        uris = ["nbd+unix:///?socket=%s" % s.sock_path,
                "nbd://127.0.0.1:%d/" % s.port]
        procs = []
        for ident in range(4):
            # ids 0, 1 on unix, 2, 3 over TCP; odd ids with FUA
            procs.append(subprocess.Popen(
                [SYSTEM_PYTHON, os.path.join(HERE, "writer.py"),
                 uris[ident // 2], str(ident), str(ident * per), str(per),
                 str(ident % 2)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outs = [None] * 4
        readers = []
        for k, p in enumerate(procs):
            def collect(k=k, p=p):
                outs[k] = p.stdout.read()
            t = threading.Thread(target=collect)
            t.start()
            readers.append(t)
        try:
            time.sleep(1.0)
            for k, p in enumerate(procs):
                assert p.poll() is None, "writer %d ended before SIGTERM" % k
            took = stop_and_time(s)
            for p in procs:
                p.wait(30)
            for t in readers:
                t.join(30)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        total = 0
        for ident, (p, out) in enumerate(zip(procs, outs)):
            lines = out.splitlines()
            tail = [l for l in lines if not l.startswith("ack ")]
            assert p.returncode == 0, "writer %d failed: %s" % (
                ident, "\n".join(tail[-10:]))
            acked = [int(l.split()[1]) for l in lines if l.startswith("ack ")]
            diag("writer %d (%s, %s): %d writes acknowledged; %s" % (
                ident, "unix" if ident < 2 else "TCP",
                "FUA" if ident % 2 else "no FUA", len(acked),
                tail[-1] if tail else "no end line"))
            assert len(acked) > 50, "writer %d: only %d writes" % (
                ident, len(acked))
            with open(path, "rb") as f:
                for b in acked:
                    f.seek(b * BLOCK)
                    if f.read(BLOCK) != expected_block(ident, b):
                        raise AssertionError(
                            "writer %d: acknowledged block %d is not in the "
                            "image" % (ident, b))
            total += len(acked)
        diag("%d acknowledged writes verified; exit %.2f s after SIGTERM"
             % (total, took))


class TrackingClient(Client):
    """nbdraw.Client that knows how much of the current message it had
    received when the connection ended."""

    def __init__(self, address, timeout=30.0):
        super().__init__(address, timeout)
        self.msg_bytes = 0
        self.cut_at = None
        self.reset = False
        self.pause = 0          # seconds to sleep after each recv()

    def read_message(self):
        self.msg_bytes = 0
        return super().read_message()

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                b = self.sock.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError:
                self.reset = True
                b = b""
            if self.pause:
                time.sleep(self.pause)
            if not b:
                self.cut_at = self.msg_bytes + len(buf)
                raise Closed("closed %d bytes into a message"
                             % self.cut_at)
            buf += b
        self.msg_bytes += n
        return bytes(buf)


def streamer(address, ident, base, data, result):
    """Alternate 4 MiB READs and 1 MiB WRITEs (to its own area at @base),
    8 in flight, until the server closes."""
    c = TrackingClient(address, timeout=30)
    result.update(client=c, answered=0, acked=[], bad=[], port=None)
    try:
        c.connect_export()
        if not isinstance(address, str):
            result["port"] = c.sock.getsockname()[1]
        credit = threading.Semaphore(8)
        stop = threading.Event()

        def send():
            k = 0
            try:
                while not stop.is_set():
                    if not credit.acquire(timeout=0.2):
                        continue
                    if k % 2:
                        off = base + (k // 2 % 16) * MiB
                        c.send_request(CMD_WRITE, off, MiB, 0,
                                       pattern(ident * 1000 + k, MiB),
                                       cookie=k + 1)
                    else:
                        c.send_request(CMD_READ, (k // 2 % 8) * 4 * MiB,
                                       4 * MiB, cookie=k + 1)
                    k += 1
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            while True:
                m = c.read_message()
                if not m.done:
                    continue
                r = c.reply(m.cookie)
                result["answered"] += 1
                k = m.cookie - 1
                if r.error:
                    result["bad"].append("request %d: %s" % (
                        k, err_name(r.error)))
                elif k % 2:
                    result["acked"].append((base + (k // 2 % 16) * MiB, k))
                elif r.data != data[(k // 2 % 8) * 4 * MiB:
                                    (k // 2 % 8 + 1) * 4 * MiB]:
                    result["bad"].append("READ %d: wrong data" % k)
                credit.release()
        except Closed:
            pass
        finally:
            stop.set()
            sender.join(5)
    except Exception as e:     # noqa: B902 - reported by the test
        result["bad"].append("%s: %s" % (type(e).__name__, e))
    finally:
        c.close()


def requests_read(log, port):
    """How many requests the server read from the client at @port (or the
    unix client), from its 'disconnected' line."""
    who = r"127\.0\.0\.1:%d" % port if port else r"unix"
    m = re.search(r"\(%s\): disconnected from export '' after (\d+) requests"
                  % who, log)
    assert m, "no disconnect line for %s in the log" % who
    return int(m.group(1))


@test
def sigterm_answers_everything_it_read():
    use_binary(asan=True)
    with Workdir() as w:
        path = w.file("disk.img")
        data = pattern(2, 32 * MiB)
        make_image(path, 128 * MiB, [(0, data)])
        s = dual_server(path, "-t")
        results = [dict() for _ in range(3)]
        addresses = [s.tcp_address, s.tcp_address, s.sock_path]
        threads = [threading.Thread(target=streamer,
                                    args=(a, k, (40 + k * 20) * MiB, data,
                                          results[k]))
                   for k, a in enumerate(addresses)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        took = stop_and_time(s)
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a client is still reading 60 s later"
        log = s.log_text()
        problems = []
        for k, (a, res) in enumerate(zip(addresses, results)):
            what = "client %d (%s)" % (k, "unix" if isinstance(a, str)
                                       else "TCP")
            c = res["client"]
            problems += ["%s: %s" % (what, b) for b in res["bad"]]
            if c.cut_at:
                problems.append("%s: the connection ended %d bytes into a "
                                "reply message%s" % (
                                    what, c.cut_at,
                                    " (reset by the server)" if c.reset
                                    else ""))
            read = requests_read(log, res["port"])
            if res["answered"] != read:
                problems.append("%s: the server read %d requests but %d "
                                "replies arrived%s" % (
                                    what, read, res["answered"],
                                    " (reset by the server)" if c.reset
                                    else ""))
            diag("%s: %d requests answered, %d read by the server, "
                 "connection %s" % (what, res["answered"], read,
                                    "reset" if c.reset else "closed"))
        assert not problems, "\n".join(problems)
        # The last acknowledged write to each place is in the file.
        for k, res in enumerate(results):
            last = {}
            for off, k2 in res["acked"]:
                last[off] = k2
            for off, k2 in last.items():
                if read_file(path, off, MiB) != pattern(k * 1000 + k2, MiB):
                    raise AssertionError("client %d: acknowledged WRITE %d "
                                         "is not in the file" % (k, k2))
        diag("exit %.2f s after SIGTERM" % took)


@test
def sigterm_unread_requests_tcp():
    """The plainest case of the above: a TCP client has 8 READs of 32 MiB
    in flight (the server takes in 5, the 128 MiB budget) and 560 KB of
    further request headers the server has not read when SIGTERM comes.
    The 5 replies must arrive whole, then the connection close, however
    slowly the client reads them."""
    use_binary(asan=True)
    with Workdir() as w:
        path = w.file("disk.img")
        data = pattern(1, 64 * MiB)
        make_image(path, 64 * MiB, [(0, data)])
        s = dual_server(path, "-t")
        c = TrackingClient(s.tcp_address).connect_export()
        try:
            port = c.sock.getsockname()[1]
            cks = [c.send_request(CMD_READ, (k % 2) * 32 * MiB, 32 * MiB)
                   for k in range(8)]
            c.send(b"".join(struct.pack(">IHHQQI", REQUEST_MAGIC, 0,
                                        CMD_READ, 1000 + k, 0, 4096)
                            for k in range(20000)))
            time.sleep(0.5)
            s.proc.send_signal(signal.SIGTERM)
            # A reader slower than the server keeps its socket buffer full.
            c.pause = 0.001
            answered = 0
            try:
                for ck in cks:
                    r = c.reply(ck)
                    check_eq(r.error, 0, "READ %d" % ck)
                    off = (ck - 1) % 2 * 32 * MiB
                    assert r.data == data[off:off + 32 * MiB], \
                        "data of READ %d" % ck
                    answered += 1
            except Closed:
                pass
            rc = s.wait_exit(timeout=EXIT_BOUND + 30)
            s.check_clean_exit(rc)
            read = requests_read(s.log_text(), port)
            assert c.cut_at in (None, 0), \
                "the connection ended %d bytes into reply %d of the %d the " \
                "server read%s" % (c.cut_at, answered + 1, read,
                                   " (reset)" if c.reset else "")
            check_eq(answered, read, "replies to the requests the server "
                     "read")
        finally:
            c.close()


@test
def sigterm_mid_payload():
    """A client stuck half way through a WRITE's payload does not hold up
    the exit; what it sent before is answered."""
    use_binary(asan=True)
    with Workdir() as w:
        path = w.file("disk.img")
        make_image(path, 16 * MiB)
        s = dual_server(path, "-t")
        clients = []
        for address in (s.sock_path, s.tcp_address):
            c = Client(address).connect_export()
            ck = c.send_request(CMD_WRITE, 0, 4096, 0, pattern(1, 4096))
            c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 99,
                               MiB, MiB) + bytes(1000))
            check_eq(c.reply(ck).error, 0, "WRITE before the stuck one")
            clients.append(c)
        took = stop_and_time(s)
        assert took < 5, "exit took %.1f s with a payload half sent" % took
        for c in clients:
            check_eq(c.wait_closed(), b"", "a reply to the half-sent WRITE")
            c.close()


def flush_then_kill(args):
    with Workdir() as w:
        path = w.file("disk.img")
        make_image(path, 16 * MiB)
        s = dual_server(path, "-t", *args)
        a = Client(s.sock_path).connect_export()
        b = Client(s.tcp_address).connect_export()
        try:
            for k in range(16):
                check_eq(a.write(k * MiB, pattern(50 + k, 64 * 1024)).error,
                         0, "WRITE %d on connection A" % k)
            check_eq(b.request(CMD_FLUSH).error, 0, "FLUSH on connection B")
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(30)
        finally:
            a.close()
            b.close()
        for k in range(16):
            check_eq(read_file(path, k * MiB, 64 * 1024) ==
                     pattern(50 + k, 64 * 1024), True,
                     "WRITE %d after SIGKILL (%s)" % (k, " ".join(args) or
                                                      "page cache"))


@test
def flush_across_connections_then_sigkill():
    use_binary(asan=True)
    flush_then_kill(())


@test
def flush_across_connections_then_sigkill_direct():
    use_binary(asan=True)
    with Workdir() as w:
        try:
            fd = os.open(w.file(".d"), os.O_RDWR | os.O_CREAT | os.O_DIRECT)
            os.close(fd)
        except OSError as e:
            raise Skip("no O_DIRECT: %s" % e)
    flush_then_kill(("--cache=none",))


if __name__ == "__main__":
    run()
