#!/usr/bin/python3
"""Slowloris: a thousand connections that never negotiate, and some that
stall in the middle of an option, must neither keep real clients out nor
stay forever.  With --handshake-limit 2 every stalled one is dropped
about 2 s after it connected; with --max-handshakes 100 the oldest are
dropped as soon as more than 100 negotiate at once, and real clients
still get through."""

import os
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from robustlib import (MiB, diag, dual_server, opt_bytes,  # noqa: E402
                       raise_nofile, use_binary)
from harness import (Server, Workdir, check_eq, make_image,  # noqa: E402
                     pattern, run, test)
from nbdraw import *  # noqa: E402,F401,F403

IDLE = 1000
LIMIT = 2.0
SERVED_BOUND = 5.0          # a real client: connect, negotiate, read
DROP_SLACK = 8.0            # dropped no later than LIMIT + this


def image(w):
    path = w.file("disk.img")
    make_image(path, 16 * MiB, [(0, pattern(1, MiB))])
    return path


def raw_connect(address):
    fam = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(address)
    return s


def stalled_prefixes():
    cflags = struct.pack(">I", FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
    return {
        "half the client flags": cflags[:2],
        "client flags only": cflags,
        "half an option header": cflags + opt_bytes(OPT_GO)[:8],
        "option header promising 1000 bytes, 10 sent":
            cflags + opt_bytes(OPT_GO, length=1000) + b"x" * 10,
        "after STRUCTURED_REPLY": cflags + opt_bytes(OPT_STRUCTURED_REPLY),
    }


def served(address, what):
    """A real client negotiates and reads; returns the seconds it took."""
    t = time.monotonic()
    c = Client(address, timeout=SERVED_BOUND * 4)
    try:
        c.connect_export()
        check_eq(c.read(0, 4096).data, pattern(1, 4096), "%s: read" % what)
        c.disconnect()
    finally:
        c.close()
    took = time.monotonic() - t
    assert took < SERVED_BOUND, "%s: a real client took %.1f s" % (what, took)
    return took


class Watch:
    """Sockets whose closing by the server we wait for."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.info = {}          # socket -> [label, connected at, closed at]

    def add(self, s, label, t):
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)
        self.info[s] = [label, t, None]

    def poll(self, timeout):
        for key, _ in self.sel.select(timeout):
            s = key.fileobj
            try:
                b = s.recv(4096)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                b = b""
            if not b:
                self.info[s][2] = time.monotonic()
                self.sel.unregister(s)

    def open_count(self):
        return sum(1 for v in self.info.values() if v[2] is None)

    def wait_all_closed(self, deadline):
        while self.open_count() and time.monotonic() < deadline:
            self.poll(0.1)
        return self.open_count() == 0

    def close(self):
        for s in self.info:
            s.close()
        self.sel.close()


@test
def idle_and_stalled_are_dropped_in_time():
    use_binary(asan=True)
    got = raise_nofile(IDLE * 2 + 200)
    assert got >= IDLE + 200, "fd limit %d too low" % got
    with Workdir() as w, dual_server(image(w), "-t", "--handshake-limit",
                                     "%d" % LIMIT,
                                     "--max-handshakes", "4096") as s:
        addresses = [s.sock_path, s.tcp_address]
        watch = Watch()
        try:
            t0 = time.monotonic()
            for k in range(IDLE):
                t = time.monotonic()
                watch.add(raw_connect(addresses[k % 2]), "idle %d" % k, t)
            prefixes = stalled_prefixes()
            for k in range(10):
                for label, data in prefixes.items():
                    t = time.monotonic()
                    c = raw_connect(addresses[k % 2])
                    c.sendall(data)
                    watch.add(c, label, t)
            opened = time.monotonic() - t0
            diag("%d connections opened in %.2f s" % (len(watch.info),
                                                       opened))
            times = [served(addresses[k % 2], "among %d stalled clients"
                            % len(watch.info)) for k in range(4)]
            diag("real clients served in %s s"
                 % ", ".join("%.2f" % x for x in times))
            early = [(v[0], v[2] - v[1]) for v in watch.info.values()
                     if v[2] is not None]
            assert not early or all(d >= LIMIT - 0.05 for _, d in early), \
                "dropped before the limit: %s" % early[:5]
            deadline = t0 + opened + LIMIT + DROP_SLACK
            ok = watch.wait_all_closed(deadline)
            left = [v[0] for v in watch.info.values() if v[2] is None]
            assert ok, "%d stalled clients still connected %.0f s after " \
                "the limit: %s" % (len(left), DROP_SLACK, left[:10])
            lives = [v[2] - v[1] for v in watch.info.values()]
            too_soon = [(v[0], v[2] - v[1]) for v in watch.info.values()
                        if v[2] - v[1] < LIMIT - 0.05]
            assert not too_soon, "dropped before %.0f s: %s" % (
                LIMIT, too_soon[:10])
            diag("dropped %.2f to %.2f s after connecting"
                 % (min(lives), max(lives)))
            served(addresses[0], "after the drops")
        finally:
            watch.close()


@test
def max_handshakes_drops_the_oldest():
    use_binary(asan=True)
    cap, extra = 100, 200
    raise_nofile(cap + extra + 100)
    with Workdir() as w, Server(image(w), "-t", "--handshake-limit", "0",
                                "--max-handshakes", str(cap)) as s:
        watch = Watch()
        socks = []
        try:
            for k in range(cap + extra):
                c = raw_connect(s.sock_path)
                # The greeting: the server has taken this one in, in order.
                read_greeting(c)
                socks.append(c)
                watch.add(c, "idle %d" % k, time.monotonic())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                watch.poll(0.1)
                if watch.open_count() <= cap:
                    break
            state = [watch.info[c][2] is None for c in socks]
            check_eq(state, [False] * extra + [True] * cap,
                     "open (True) or dropped (False), oldest first")
            took = served(s.sock_path, "with %d clients negotiating" % cap)
            diag("real client served in %.2f s" % took)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and watch.open_count() > cap - 1:
                watch.poll(0.1)
            watch.poll(0.3)
            state = [watch.info[c][2] is None for c in socks]
            check_eq(state, [False] * (extra + 1) + [True] * (cap - 1),
                     "after the real client: open (True) or dropped "
                     "(False), oldest first")
        finally:
            watch.close()


def read_greeting(c):
    got = c.recv(18, socket.MSG_WAITALL)
    magic, opts, _ = struct.unpack(">QQH", got)
    check_eq((magic, opts), (NBDMAGIC, IHAVEOPT), "greeting")


if __name__ == "__main__":
    run()
