#!/usr/bin/python3
"""Memory bound: the data of the requests one connection has in progress
is limited to 128 MiB (server/conn.c, CONN_MEM_BUDGET; man page, "Limits
per connection"), and past it the server stops reading the socket.

- 40 WRITEs of 32 MiB sent back to back, no reply read until all are
  sent: the server's RSS stays under RSS_BOUND, then all are acknowledged
  and in the file.
- 40 READs of 32 MiB sent at once, no reply read: the server takes in at
  most 5 of them (the metrics say how many requests it received), its RSS
  stays under RSS_BOUND; then every reply arrives with the right data.
- 8 connections with 32 reads of 4 KiB in flight each: RSS under 64 MiB.

RSS is the server's VmRSS sampled every 20 ms and its VmHWM from
/proc/PID/status.  Under ASan the behaviour is checked but not the
bounds (shadow memory and the allocator's quarantine dominate).
"""

import os
import re
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from robustlib import (MiB, RssSampler, Skip, diag, is_sanitized,  # noqa
                       use_binary)
from harness import (Server, Workdir, check_eq, make_image,  # noqa: E402
                     pattern, read_file, run, test)
from nbdraw import *  # noqa: E402,F401,F403

BIG = 32 * MiB
COUNT = 40
RSS_BOUND = 200 * MiB
SMALL_RSS_BOUND = 64 * MiB
IMAGE = 256 * MiB


def check_bound(binary, peak, bound, what):
    diag("%s: peak RSS %.1f MiB (bound %.0f MiB)" % (what, peak / MiB,
                                                     bound / MiB))
    if is_sanitized(binary):
        return False
    assert peak < bound, "%s: server RSS reached %.1f MiB, bound %.0f MiB" % (
        what, peak / MiB, bound / MiB)
    return True


def need_direct_io(w):
    try:
        fd = os.open(w.file(".d"), os.O_RDWR | os.O_CREAT | os.O_DIRECT)
        os.close(fd)
    except OSError as e:
        raise Skip("no O_DIRECT: %s" % e)


def metric(path, name):
    """One sample of the metrics endpoint on unix socket @path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        text = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            text += b
    m = re.search(r"^%s (\d+)$" % re.escape(name), text.decode(), re.M)
    assert m, "no %s in the metrics" % name
    return int(m.group(1))


def send_all_parts(sock, parts):
    """sendmsg() until all of @parts is sent, without joining them."""
    parts = [memoryview(p) for p in parts]
    while parts:
        n = sock.sendmsg(parts)
        while parts and n >= len(parts[0]):
            n -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][n:]


def big_writes(args):
    binary = use_binary()
    with Workdir() as w:
        if "--cache=none" in args:
            need_direct_io(w)
        path = w.file("disk.img")
        make_image(path, IMAGE)
        with Server(path, "-t", *args) as s, s.connect() as c:
            c.sock.settimeout(120)
            rss = RssSampler(s.pid)
            offsets = [(k % (IMAGE // BIG)) * BIG for k in range(COUNT)]
            # The payloads differ only in their first block: building 40
            # distinct 32 MiB buffers would cost more than the test.
            body = pattern(7, BIG)
            errors = []

            def send_all():
                tail = memoryview(body)[4096:]
                try:
                    for k, off in enumerate(offsets):
                        c.pending[k + 1] = Request(CMD_WRITE, 0, k + 1, off,
                                                   BIG, BIG)
                        hdr = struct.pack(">IHHQQI", REQUEST_MAGIC, 0,
                                          CMD_WRITE, k + 1, off, BIG)
                        send_all_parts(c.sock, [hdr, pattern(k, 4096), tail])
                except OSError as e:
                    errors.append(e)

            t = threading.Thread(target=send_all)
            t0 = time.monotonic()
            t.start()
            t.join(180)
            assert not t.is_alive(), "sending 40 x 32 MiB took over 180 s"
            assert not errors, "sending failed: %s" % errors
            sent = time.monotonic() - t0
            peak = rss.stop()
            for k in range(COUNT):
                r = c.reply(k + 1)
                check_eq(r.error, 0, "WRITE %d" % k)
            diag("%s: %d x 32 MiB sent in %.1f s, all acknowledged"
                 % (" ".join(args) or "page cache", COUNT, sent))
            last = {off: k for k, off in enumerate(offsets)}
        for off, k in last.items():
            check_eq(read_file(path, off, 4096), pattern(k, 4096),
                     "first block of the last write at %d" % off)
        check_eq(read_file(path, BIG + 4096, MiB), body[4096:4096 + MiB],
                 "data after the first block")
        return check_bound(binary, peak, RSS_BOUND,
                           "%d WRITEs of 32 MiB %s" % (COUNT, " ".join(args)))


@test
def big_writes_unread_replies():
    if not big_writes(()):
        raise Skip("RSS bound not checked under ASan")


@test
def big_writes_unread_replies_direct():
    if not big_writes(("--cache=none",)):
        raise Skip("RSS bound not checked under ASan")


@test
def big_reads_unread_replies():
    """The replies cannot leave: the server must stop taking requests."""
    binary = use_binary()
    with Workdir() as w:
        need_direct_io(w)
        path = w.file("disk.img")
        data = pattern(3, 2 * BIG)
        make_image(path, 2 * BIG, [(0, data)])
        metrics = w.file("metrics.sock")
        with Server(path, "-t", "--cache=none", "--metrics", metrics) as s, \
                s.connect(structured=False) as c:
            c.sock.settimeout(60)
            rss = RssSampler(s.pid)
            for k in range(COUNT):
                c.send_request(CMD_READ, (k % 2) * BIG, BIG, cookie=k + 1)
            # Let it take in all it will.
            seen, still = -1, 0
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and still < 10:
                n = metric(metrics, 'rawnbd_requests_total{command="read"}')
                still = still + 1 if n == seen else 0
                seen = n
                time.sleep(0.05)
            held = rss.peak
            diag("the server took in %d of %d READs of 32 MiB while no "
                 "reply was read; RSS %.1f MiB" % (seen, COUNT, held / MiB))
            assert seen <= 5, "the server read %d requests of 32 MiB with " \
                "their replies unread: it does not stop at 128 MiB" % seen
            for k in range(COUNT):
                r = c.reply(k + 1)
                check_eq(r.error, 0, "READ %d" % k)
                off = (k % 2) * BIG
                if r.data != data[off:off + BIG]:
                    raise AssertionError("data of READ %d" % k)
            peak = rss.stop()
            check_eq(metric(metrics, 'rawnbd_requests_total{command="read"}'),
                     COUNT, "reads received in the end")
        if not check_bound(binary, peak, RSS_BOUND,
                           "%d READs of 32 MiB, replies unread" % COUNT):
            raise Skip("RSS bound not checked under ASan")


@test
def many_small_reads():
    binary = use_binary()
    nconn, depth, per_conn = 8, 32, 4000
    with Workdir() as w:
        path = w.file("disk.img")
        data = pattern(4, 16 * MiB)
        make_image(path, 16 * MiB, [(0, data)])
        with Server(path, "-t") as s:
            rss = RssSampler(s.pid)
            conns = [s.connect() for _ in range(nconn)]
            try:
                nblocks = 16 * MiB // 4096
                todo = [per_conn] * nconn
                inflight = [dict() for _ in range(nconn)]
                k = 0
                t0 = time.monotonic()
                while any(todo) or any(inflight):
                    for n, c in enumerate(conns):
                        while todo[n] and len(inflight[n]) < depth:
                            off = (k * 7919 % nblocks) * 4096
                            k += 1
                            inflight[n][c.send_request(CMD_READ, off,
                                                       4096)] = off
                            todo[n] -= 1
                        if inflight[n]:
                            ck, off = next(iter(inflight[n].items()))
                            r = c.reply(ck)
                            del inflight[n][ck]
                            if r.data != data[off:off + 4096]:
                                raise AssertionError("READ at %d" % off)
                took = time.monotonic() - t0
            finally:
                for c in conns:
                    c.close()
            peak = rss.stop()
        diag("%d x %d reads of 4 KiB at depth %d in %.1f s"
             % (nconn, per_conn, depth, took))
        if not check_bound(binary, peak, SMALL_RSS_BOUND,
                           "8 connections x QD32 x 4 KiB"):
            raise Skip("RSS bound not checked under ASan")


if __name__ == "__main__":
    run()
