#!/usr/bin/python3
"""Malformed lengths and ordering that tests/interop/test-raw.py and
test-ext.py do not cover already (those have: GO of 64 KiB + 1 and of
2 GiB, a 5000-byte EXPORT_NAME, a bad request magic alone, READs after
DISC, one oversize WRITE drained per header style).  Here:

- option lengths at and around the drain limit (1 MiB), 0xFFFFFFFF, and
  lengths inside INFO/GO and META_CONTEXT payloads that lie;
- options sent after GO or EXPORT_NAME: read as requests, so a bad
  request magic, and the connection closes without a byte;
- a bad request magic behind pipelined requests: those are answered
  first, then the connection closes;
- WRITEs after DISC: not answered, not written;
- over-maximum WRITEs drained back to back, their payloads trickling in,
  and the next request answered;
- headers and payloads sent a few bytes at a time; a reused cookie;
  offsets and lengths that overflow 64 bits.
"""

import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from robustlib import MiB, opt_bytes, req_bytes, use_binary  # noqa: E402
from harness import (Server, Workdir, check_eq, make_image,  # noqa: E402
                     pattern, read_file, run, test)
from nbdraw import *  # noqa: E402,F401,F403

SIZE = 8 * MiB
MAX_PAYLOAD = 64 * MiB


def image(w):
    path = w.file("disk.img")
    make_image(path, SIZE, [(0, pattern(1, SIZE))])
    return path


def alive(c, what):
    r = c.read(4096, 4096)
    check_eq(r.error, 0, "%s: READ afterwards" % what)
    check_eq(r.data, pattern(1, SIZE)[4096:8192], "%s: data" % what)


def negotiated_alive(c, what):
    check_eq(c.go(), REP_ACK, "%s: GO afterwards" % what)
    alive(c, what)


@test
def option_lengths_at_the_drain_limit():
    use_binary(asan=True)
    with Workdir() as w, Server(image(w), "-t") as s:
        # Up to 1 MiB is read and thrown away: ERR_TOO_BIG, and the next
        # option is parsed from the right place.
        for opt, length in ((OPT_GO, MiB), (OPT_LIST, 64 * 1024 + 1),
                            (OPT_STRUCTURED_REPLY, MiB), (12345, MiB),
                            (OPT_SET_META_CONTEXT, 200000)):
            with s.client() as c:
                c.handshake()
                # The payload holds what would be a valid option if the
                # server lost its place in the stream.
                fake = opt_bytes(OPT_ABORT)
                payload = (fake * (length // len(fake) + 1))[:length]
                replies = c.option(opt, payload)
                check_eq([r.type for r in replies], [REP_ERR_TOO_BIG],
                         "option %d of %d bytes" % (opt, length))
                check_eq(c.negotiate_structured(), REP_ACK,
                         "STRUCTURED_REPLY after option %d of %d bytes"
                         % (opt, length))
                negotiated_alive(c, "after %d bytes drained" % length)
        # Longer: dropped at once, nothing sent, whatever follows.
        for opt, length in ((OPT_GO, MiB + 1), (OPT_INFO, 0xFFFFFFFF),
                            (0xFFFFFFFF, 0x80000000),
                            (OPT_EXPORT_NAME, 4097)):
            with s.client() as c:
                c.handshake()
                c.send_option(opt, b"\0" * 64, length=length)
                check_eq(c.wait_closed(), b"",
                         "reply to option %d of %d bytes" % (opt, length))
        s.proc.poll()
        assert s.running(), "the server died"


@test
def lying_lengths_inside_options():
    use_binary(asan=True)
    q = b"base:allocation"
    cases = [
        ("GO name length 0xFFFFFFFF", OPT_GO,
         struct.pack(">I", 0xFFFFFFFF) + struct.pack(">H", 0)),
        ("GO info count 0xFFFF with one item", OPT_GO,
         struct.pack(">IH", 0, 0xFFFF) + struct.pack(">H", INFO_NAME)),
        ("INFO info count short by one", OPT_INFO,
         struct.pack(">IH", 0, 2) + struct.pack(">H", INFO_NAME)),
        ("GO without the info count", OPT_GO, struct.pack(">I", 0)),
        ("SET_META name length past the end", OPT_SET_META_CONTEXT,
         struct.pack(">I", 1000) + b"x"),
        ("SET_META query count 0xFFFFFFFF", OPT_SET_META_CONTEXT,
         struct.pack(">II", 0, 0xFFFFFFFF) + struct.pack(">I", len(q)) + q),
        ("LIST_META query length past the end", OPT_LIST_META_CONTEXT,
         struct.pack(">III", 0, 1, 0xFFFFFFF0) + q),
        ("LIST_META query count 0 with a query", OPT_LIST_META_CONTEXT,
         struct.pack(">II", 0, 0) + struct.pack(">I", len(q)) + q),
        ("SET_META empty payload", OPT_SET_META_CONTEXT, b""),
    ]
    with Workdir() as w, Server(image(w), "-t") as s, s.client() as c:
        c.handshake()
        check_eq(c.negotiate_structured(), REP_ACK, "STRUCTURED_REPLY")
        for what, opt, payload in cases:
            replies = c.option(opt, payload)
            final = replies[-1].type
            assert final in (REP_ERR_INVALID, REP_ERR_TOO_BIG), \
                "%s: final reply %s, expected an error" % (what,
                                                         rep_name(final))
        negotiated_alive(c, "after the lying options")


@test
def options_after_go_are_bad_requests():
    use_binary(asan=True)
    with Workdir() as w, Server(image(w), "-t") as s:
        for how in ("GO", "GO+extended", "EXPORT_NAME"):
            with s.client() as c:
                if how == "EXPORT_NAME":
                    c.handshake()
                    c.export_name()
                else:
                    c.connect_export(extended=how.endswith("extended"))
                alive(c, how)
                # A whole option, padded to a request header's size.
                c.send(opt_bytes(OPT_LIST) + b"\0" * 16)
                check_eq(c.wait_closed(), b"",
                         "bytes sent after an option in transmission (%s)"
                         % how)


@test
def bad_magic_after_pipelined_requests():
    """The requests before the bad header are served and answered, then
    the connection closes."""
    use_binary(asan=True)
    with Workdir() as w:
        path = image(w)
        with Server(path, "-t") as s, s.connect() as c:
            cookies = [c.send_request(CMD_READ, k * MiB, MiB)
                       for k in range(4)]
            wck = c.send_request(CMD_WRITE, 6 * MiB, 4096, 0,
                                 pattern(9, 4096))
            c.send(struct.pack(">IHHQQI", 0x12345678, 0, CMD_READ, 99, 0,
                               4096))
            c.send_request(CMD_WRITE, 7 * MiB, 4096, 0, pattern(10, 4096))
            for k, ck in enumerate(cookies):
                r = c.reply(ck)
                check_eq(r.error, 0, "READ %d before the bad magic" % k)
                assert r.data == pattern(1, SIZE)[k * MiB:(k + 1) * MiB], \
                    "data of READ %d" % k
            check_eq(c.reply(wck).error, 0, "WRITE before the bad magic")
            check_eq(c.wait_closed(), b"", "bytes after the bad magic")
        check_eq(read_file(path, 6 * MiB, 4096), pattern(9, 4096),
                 "the WRITE before the bad magic")
        check_eq(read_file(path, 7 * MiB, 4096),
                 pattern(1, SIZE)[7 * MiB:7 * MiB + 4096],
                 "the file where the WRITE after the bad magic would go")


@test
def writes_after_disc_are_ignored():
    use_binary(asan=True)
    with Workdir() as w:
        path = image(w)
        with Server(path, "-t") as s:
            for extended in (False, True):
                with s.connect(extended=extended) as c:
                    before = c.write(5 * MiB, pattern(20, 4096))
                    check_eq(before.error, 0, "WRITE before DISC")
                    flags = CMD_FLAG_PAYLOAD_LEN if extended else 0
                    big = c.send_request(CMD_WRITE, 2 * MiB, 4 * MiB, flags,
                                         pattern(21, 4 * MiB))
                    c.send_request(CMD_DISC)
                    c.send_request(CMD_WRITE, 6 * MiB, 4096, flags,
                                   pattern(22, 4096))
                    c.send_request(CMD_FLUSH)
                    check_eq(c.reply(big).error, 0, "WRITE in flight at DISC")
                    check_eq(c.wait_closed(), b"", "replies after DISC")
        check_eq(read_file(path, 2 * MiB, 4 * MiB) == pattern(21, 4 * MiB),
                 True, "the WRITE in flight at DISC")
        check_eq(read_file(path, 6 * MiB, 4096),
                 pattern(1, SIZE)[6 * MiB:6 * MiB + 4096],
                 "the file where the WRITE after DISC would go")


def trickle(c, data, piece, pause=0.0):
    for i in range(0, len(data), piece):
        c.send(data[i:i + piece])
        if pause:
            time.sleep(pause)


@test
def oversize_writes_drained_back_to_back():
    use_binary(asan=True)
    with Workdir() as w:
        path = image(w)
        with Server(path, "-t") as s:
            for extended in (False, True):
                with s.connect(extended=extended) as c:
                    flags = CMD_FLAG_PAYLOAD_LEN if extended else 0
                    n = MAX_PAYLOAD + 1
                    # Payloads that look like requests: only lengths count.
                    junk = (req_bytes(CMD_WRITE, 0, 4096, 0, b"", 7,
                                      extended) * (n // 28 + 1))[:n + 3]
                    cks = []
                    for k in range(2):
                        cks.append(c.send_request(CMD_WRITE, 0, n, flags))
                        trickle(c, junk[:n], 1 << 20)
                    # A third one whose payload comes in small pieces.
                    cks.append(c.send_request(CMD_WRITE, 0, MAX_PAYLOAD + 4,
                                              flags))
                    trickle(c, junk[:MAX_PAYLOAD + 4], 4 * MiB)
                    good = c.send_request(CMD_READ, 0, 4096)
                    for ck in cks:
                        check_eq(c.reply(ck).error, EINVAL,
                                 "over-maximum WRITE")
                    r = c.reply(good)
                    check_eq(r.data, pattern(1, 4096),
                             "READ after three drained WRITEs")
        check_eq(read_file(path, 0, 4096), pattern(1, 4096),
                 "the file under the refused WRITEs")


@test
def byte_at_a_time():
    """Handshake, headers and a payload arriving in 1- to 3-byte pieces."""
    use_binary(asan=True)
    with Workdir() as w:
        path = image(w)
        with Server(path, "-t") as s, s.client() as c:
            stream = (struct.pack(">I", FLAG_C_FIXED_NEWSTYLE |
                                  FLAG_C_NO_ZEROES) +
                      opt_bytes(OPT_STRUCTURED_REPLY) +
                      opt_bytes(OPT_GO, Client.go_payload(b"", ())))
            c.greeting()
            for i in range(len(stream)):
                c.send(stream[i:i + 1])
                time.sleep(0.001)
            c.option_replies(OPT_STRUCTURED_REPLY)
            c.structured = True
            replies = c.option_replies(OPT_GO)
            check_eq(replies[-1].type, REP_ACK, "GO sent byte by byte")
            data = pattern(30, 8192)
            ck = 77
            c.pending[ck] = Request(CMD_WRITE, 0, ck, 3 * MiB, 8192, 8192)
            msg = req_bytes(CMD_WRITE, 3 * MiB, 8192, 0, data, ck)
            for i in range(0, len(msg), 3):
                c.send(msg[i:i + 3])
                if i < 64:
                    time.sleep(0.001)
            check_eq(c.reply(ck).error, 0, "WRITE sent 3 bytes at a time")
            check_eq(c.read(3 * MiB, 8192).data, data, "its data")


@test
def reused_cookie_and_overflowing_ranges():
    use_binary(asan=True)
    with Workdir() as w, Server(image(w), "-t") as s, s.connect() as c:
        # Two requests in flight with one cookie: both answered.
        for _ in range(2):
            c.send(req_bytes(CMD_READ, 0, 4096, 0, b"", 5))
        c.pending[5] = Request(CMD_READ, 0, 5, 0, 4096, 0)
        for k in range(2):
            r = c.reply(5)
            check_eq(r.data, pattern(1, 4096), "reply %d to cookie 5" % k)
            c.pending[5] = Request(CMD_READ, 0, 5, 0, 4096, 0)
        del c.pending[5]
        top = (1 << 64) - 1
        for cmd in (CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES,
                    CMD_CACHE, CMD_BLOCK_STATUS):
            for off, length in ((top, 1), (top - 4095, 8192), (SIZE, 1),
                                (SIZE - 4096, 8192), (1 << 63, 1 << 31)):
                if cmd == CMD_WRITE and length > MiB:
                    continue        # the payload would be drained
                payload = b"\xaa" * length if cmd == CMD_WRITE else b""
                r = c.request(cmd, off, length, 0, payload)
                assert r.error in (EINVAL, ENOSPC), \
                    "command %d at %d length %d: %r" % (cmd, off, length, r)
        alive(c, "after the out-of-range requests")
        check_eq(c.block_status(0, 4096), [(4096, 0)], "block status")


if __name__ == "__main__":
    run()
