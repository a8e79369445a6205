#!/usr/bin/python3
"""Handshake and compact-header corner cases no real client produces,
sent over a raw socket (nbdraw) to the real rawnbd binary; and, under
strace, that replies to pipelined requests leave in batches."""

import contextlib
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

from harness import (Server, Skip, Workdir, check_eq, diag,  # noqa: E402
                     make_image, pattern, run, test)
from nbdraw import *  # noqa: E402,F401,F403

MiB = 1 << 20
MAX_PAYLOAD = 64 * MiB


def image(w, size=8 * MiB, name="disk.img"):
    path = w.file(name)
    make_image(path, size, [(0, pattern(1, MiB))])
    return path


def assert_error_reply(r, err, what):
    assert r.error == err, "%s: expected %s, got %s (%r)" % (
        what, err_name(err), err_name(r.error), r)


def assert_alive(c, what="connection"):
    """The connection still answers a READ correctly."""
    r = c.read(0, 4096)
    assert r.error == 0, "%s: READ after the error failed: %r" % (what, r)
    check_eq(r.data, pattern(1, MiB)[:4096], "%s: data read" % what)


@contextlib.contextmanager
def negotiating(*server_args):
    """A client past the greeting, on a new server of an 8 MiB image."""
    with Workdir() as w, Server(image(w), *server_args) as s, \
            s.client() as c:
        c.handshake()
        yield c


def go_and_read(c, what):
    """GO succeeds and the export reads correctly."""
    check_eq(c.go(), REP_ACK, "GO %s" % what)
    assert_alive(c, what)


# ---- handshake ----------------------------------------------------------

@test
def greeting_and_flags():
    with Workdir() as w, Server(image(w)) as s, s.client() as c:
        hflags = c.greeting()
        check_eq(hflags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
                 "handshake flags")


@test
def unknown_client_flags_disconnect():
    with Workdir() as w, Server(image(w), "-t") as s:
        for bad in (FLAG_C_FIXED_NEWSTYLE | 0x4, 0x80000000, 0xFFFFFFFF):
            with s.client() as c:
                c.greeting()
                c.send_client_flags(bad)
                check_eq(c.wait_closed(), b"",
                         "bytes sent before closing, client flags 0x%x" % bad)


@test
def unknown_option_unsupported():
    with negotiating() as c:
        for opt, data in ((0x1234, b"abcdefghij"), (4, b""), (0x7FFFFFFF, b"")):
            replies = c.option(opt, data)
            check_eq([r.type for r in replies], [REP_ERR_UNSUP],
                     "replies to option %d" % opt)
        go_and_read(c, "after unknown options")


@test
def option_data_where_none_allowed():
    with negotiating() as c:
        for opt in (OPT_LIST, OPT_STRUCTURED_REPLY, OPT_EXTENDED_HEADERS,
                    OPT_STARTTLS):
            replies = c.option(opt, b"\0\0\0\0")
            check_eq([r.type for r in replies], [REP_ERR_INVALID],
                     "replies to option %d with 4 bytes of data" % opt)
        # None of them took effect: SR and EH can still be negotiated.
        check_eq(c.negotiate_structured(), REP_ACK, "STRUCTURED_REPLY")
        go_and_read(c, "after the refused options")


@test
def option_too_big():
    with Workdir() as w, Server(image(w), "-t") as s:
        # Longer than the 64 KiB option limit but drainable: ERR_TOO_BIG.
        with s.client() as c:
            c.handshake()
            replies = c.option(OPT_GO, bytes(64 * 1024 + 1))
            check_eq([r.type for r in replies], [REP_ERR_TOO_BIG],
                     "replies to a 64 KiB + 1 GO")
            go_and_read(c, "after ERR_TOO_BIG")
        # 2 GiB announced, nothing sent: an error reply or a disconnect.
        with s.client() as c:
            c.handshake()
            c.send_option(OPT_GO, length=0x7FFFFFF0)
            got = c.wait_closed()
            if got:
                magic, opt, rtype, _ = struct.unpack(">QIII", got[:20])
                check_eq((magic, opt, rtype),
                         (OPT_REPLY_MAGIC, OPT_GO, REP_ERR_TOO_BIG),
                         "reply to a 2 GiB option")
        # An EXPORT_NAME longer than a name can be cannot be answered.
        with s.client() as c:
            c.handshake()
            c.send_option(OPT_EXPORT_NAME, b"x" * 5000)
            check_eq(c.wait_closed(), b"", "reply to a 5000-byte EXPORT_NAME")


@test
def structured_reply_twice():
    with negotiating() as c:
        check_eq(c.negotiate_structured(), REP_ACK, "first STRUCTURED_REPLY")
        check_eq(c.option_final(OPT_STRUCTURED_REPLY), REP_ERR_INVALID,
                 "second STRUCTURED_REPLY")
        check_eq(c.negotiate_extended(), REP_ACK, "first EXTENDED_HEADERS")
        check_eq(c.option_final(OPT_EXTENDED_HEADERS), REP_ERR_INVALID,
                 "second EXTENDED_HEADERS")
        go_and_read(c, "after the repeated options")


@test
def starttls_without_tls_policy():
    with negotiating() as c:
        replies = c.option(OPT_STARTTLS)
        check_eq([r.type for r in replies], [REP_ERR_POLICY], "STARTTLS")
        go_and_read(c, "after STARTTLS was refused")


@test
def abort_acknowledged():
    with Workdir() as w, Server(image(w)) as s, s.client() as c:
        c.handshake()
        check_eq(c.option_final(OPT_ABORT), REP_ACK, "ABORT")
        check_eq(c.wait_closed(), b"", "bytes after ABORT's ACK")
        # Without -t the server exits 0 once the client has gone.
        check_eq(s.wait_exit(), 0, "exit status after ABORT")


@test
def abort_with_data_acknowledged():
    with negotiating() as c:
        check_eq(c.option_final(OPT_ABORT, b"junk"), REP_ACK,
                 "ABORT with data (SHOULD be ignored)")
        check_eq(c.wait_closed(), b"", "bytes after ABORT's ACK")


@test
def bad_option_magic_disconnects():
    with negotiating() as c:
        c.send_option(OPT_LIST, magic=0x1122334455667788)
        check_eq(c.wait_closed(), b"", "reply to a bad option magic")


@test
def list_exports():
    with Workdir() as w, Server(image(w), "-x", "disk one", "-D",
                                "a test disk") as s, s.client() as c:
        c.handshake()
        replies = c.option(OPT_LIST)
        check_eq([r.type for r in replies], [REP_SERVER, REP_ACK],
                 "LIST replies")
        data = replies[0].data
        (n,) = struct.unpack(">I", data[:4])
        check_eq((data[4:4 + n], data[4 + n:]), (b"disk one", b"a test disk"),
                 "REP_SERVER name and description")


@test
def info_and_go():
    with Workdir() as w, Server(image(w), "-x", "vol", "-D", "desc") as s, \
            s.client() as c:
        c.handshake()
        check_eq(c.go(b"nope", opt=OPT_INFO), REP_ERR_UNKNOWN,
                 "INFO for a missing export")
        check_eq(c.go(b"nope"), REP_ERR_UNKNOWN, "GO for a missing export")
        # Name length beyond the payload: malformed.
        replies = c.option(OPT_GO, struct.pack(">I", 100) + b"vol\0\0")
        check_eq([r.type for r in replies], [REP_ERR_INVALID],
                 "GO with a bad name length")
        # Trailing garbage after the info list: malformed too.
        replies = c.option(OPT_INFO, c.go_payload(b"vol") + b"xx")
        check_eq([r.type for r in replies], [REP_ERR_INVALID],
                 "INFO with trailing bytes")
        check_eq(c.go(b"vol", opt=OPT_INFO), REP_ACK, "INFO")
        info = c.info
        check_eq(info["size"], 8 * MiB, "INFO_EXPORT size")
        tf = info["tflags"]
        for bit, name in ((TF_HAS_FLAGS, "HAS_FLAGS"), (TF_SEND_FLUSH, "FLUSH"),
                          (TF_SEND_FUA, "FUA"), (TF_SEND_TRIM, "TRIM"),
                          (TF_SEND_WRITE_ZEROES, "WRITE_ZEROES"),
                          (TF_CAN_MULTI_CONN, "MULTI_CONN"),
                          (TF_SEND_CACHE, "CACHE"),
                          (TF_SEND_FAST_ZERO, "FAST_ZERO")):
            assert tf & bit, "transmission flag %s missing (0x%x)" % (name, tf)
        for bit, name in ((TF_READ_ONLY, "READ_ONLY"), (TF_SEND_DF, "DF"),
                          (TF_BLOCK_STATUS_PAYLOAD, "BLOCK_STATUS_PAYLOAD"),
                          (TF_SEND_RESIZE, "RESIZE")):
            assert not tf & bit, "flag %s set without negotiation (0x%x)" % (
                name, tf)
        check_eq(info.get("name"), b"vol", "INFO_NAME")
        check_eq(info.get("description"), b"desc", "INFO_DESCRIPTION")
        check_eq(info.get("block_size"), (1, 4096, MAX_PAYLOAD),
                 "INFO_BLOCK_SIZE")
        # Block sizes come even when not asked for; the default export
        # is found by the empty name.
        check_eq(c.go(b"", infos=(), opt=OPT_INFO), REP_ACK, "INFO for ''")
        check_eq(c.info.get("block_size"), (1, 4096, MAX_PAYLOAD),
                 "INFO_BLOCK_SIZE not requested")
        check_eq(c.go(b"vol"), REP_ACK, "GO")
        assert_alive(c)


@test
def meta_contexts():
    with Workdir() as w, Server(image(w), "-x", "vol") as s, s.client() as c:
        c.handshake()
        t, _ = c.meta_context(OPT_LIST_META_CONTEXT, b"vol", ())
        check_eq(t, REP_ERR_INVALID, "LIST_META_CONTEXT before SR")
        t, _ = c.meta_context(OPT_SET_META_CONTEXT, b"vol",
                              (b"base:allocation",))
        check_eq(t, REP_ERR_INVALID, "SET_META_CONTEXT before SR")
        c.negotiate_structured()
        cases = [
            ((), [(0, b"base:allocation")]),
            ((b"base:",), [(0, b"base:allocation")]),
            ((b"base:allocation",), [(0, b"base:allocation")]),
            ((b"qemu:dirty-bitmap:x", b"foo:bar", b"base:other"), []),
            ((b"foo:bar", b"base:allocation"), [(0, b"base:allocation")]),
        ]
        for queries, expected in cases:
            t, found = c.meta_context(OPT_LIST_META_CONTEXT, b"vol", queries)
            check_eq((t, found), (REP_ACK, expected),
                     "LIST_META_CONTEXT %r" % (queries,))
        t, found = c.meta_context(OPT_LIST_META_CONTEXT, b"nope", ())
        check_eq(t, REP_ERR_UNKNOWN, "LIST_META_CONTEXT for a missing export")
        t, found = c.meta_context(OPT_SET_META_CONTEXT, b"vol", (b"base:",))
        check_eq((t, found), (REP_ACK, []),
                 "SET_META_CONTEXT 'base:' (no wildcard for SET)")
        t, found = c.meta_context(OPT_SET_META_CONTEXT, b"vol",
                                  (b"x-foo:bar", b"base:allocation"))
        check_eq(t, REP_ACK, "SET_META_CONTEXT")
        check_eq([n for _, n in found], [b"base:allocation"],
                 "contexts selected")
        assert found[0][0] != 0, "context id 0 after SET"
        check_eq(c.go(b"vol"), REP_ACK, "GO")
        ext = c.block_status(0, 2 * MiB)
        check_eq(ext, [(MiB, 0), (MiB, STATE_HOLE | STATE_ZERO)],
                 "block status")


@test
def export_name_old_style():
    with Workdir() as w, Server(image(w), "-t", "-x", "vol") as s:
        for cflags, no_zeroes in ((FLAG_C_FIXED_NEWSTYLE, False),
                                  (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES,
                                   True),
                                  (0, False), (FLAG_C_NO_ZEROES, True)):
            with s.client() as c:
                c.handshake(cflags)
                size, tflags = c.export_name(b"vol", no_zeroes=no_zeroes)
                check_eq(size, 8 * MiB, "size from EXPORT_NAME")
                assert not tflags & TF_SEND_DF, "DF without SR"
                # The next bytes are the reply to this READ: no stray zeroes.
                assert_alive(c, "after EXPORT_NAME (cflags %d)" % cflags)
        with s.client() as c:
            c.handshake()
            c.send_option(OPT_EXPORT_NAME, b"nope")
            check_eq(c.wait_closed(), b"", "reply to EXPORT_NAME 'nope'")


@test
def several_exports():
    """--export: each export has its own name, description, window and
    read-only flag; meta contexts chosen for one do not carry over."""
    with Workdir() as w:
        a, b = w.file("a.img"), w.file("b.img")
        make_image(a, 4 * MiB, [(0, pattern(11, MiB))])
        make_image(b, 8 * MiB, [(0, pattern(12, 4 * MiB))])
        with Server(a, "-t", "-x", "first", "--export=ro=%s,ro,description="
                    "read only" % a, "--export=win=%s,offset=1M,size=2M" % b) \
                as s:
            with s.client() as c:
                c.handshake()
                replies = c.option(OPT_LIST)
                names = sorted(r.data[4:4 + struct.unpack(">I", r.data[:4])[0]]
                               for r in replies[:-1])
                check_eq(names, [b"first", b"ro", b"win"], "exports listed")
                check_eq(c.go(b"ro", opt=OPT_INFO), REP_ACK, "INFO ro")
                assert c.info["tflags"] & TF_READ_ONLY, "ro is not read-only"
                check_eq(c.info.get("description"), b"read only",
                         "description of ro")
                check_eq(c.go(b"win", opt=OPT_INFO), REP_ACK, "INFO win")
                check_eq(c.info["size"], 2 * MiB, "size of the window")
                assert not c.info["tflags"] & TF_READ_ONLY, "win read-only"
                # Contexts set for 'first' are gone after GO 'win'.
                c.negotiate_structured()
                t, _ = c.meta_context(OPT_SET_META_CONTEXT, b"first",
                                      (b"base:allocation",))
                check_eq(t, REP_ACK, "SET_META_CONTEXT for first")
                check_eq(c.go(b"win"), REP_ACK, "GO win")
                check_eq(c.read(0, 4096).data, pattern(12, 4 * MiB)[MiB:MiB +
                                                                     4096],
                         "first bytes of the window")
                r = c.request(CMD_BLOCK_STATUS, 0, 4096)
                check_eq(r.error, EINVAL, "BLOCK_STATUS on win with the "
                         "contexts of first")
                r = c.read(2 * MiB - 512, 1024)
                check_eq(r.error, EINVAL, "READ past the window")
            with s.connect(name=b"ro") as c:
                r = c.write(0, b"x" * 512)
                check_eq(r.error, EPERM, "WRITE to the read-only export")


# ---- transmission (compact headers) ---------------------------------------

@test
def bad_request_magic_disconnects():
    with Workdir() as w, Server(image(w)) as s, s.connect() as c:
        assert_alive(c)
        c.send_request(CMD_READ, 0, 512, magic=0x12345678)
        check_eq(c.wait_closed(), b"", "reply to a bad request magic")


@test
def extended_magic_without_negotiation_disconnects():
    with Workdir() as w, Server(image(w)) as s, s.connect() as c:
        c.send_request(CMD_READ, 0, 512, magic=EXT_REQUEST_MAGIC)
        check_eq(c.wait_closed(), b"",
                 "reply to an extended request on a compact connection")


@test
def unknown_command_and_flags():
    with Workdir() as w, Server(image(w), "-t") as s:
        for structured in (True, False):
            with s.connect(structured=structured) as c:
                what = "structured" if structured else "simple"
                for cmd in (8, 42, 0xFFFF):
                    r = c.request(cmd, 0, 512)
                    assert_error_reply(r, EINVAL, "%s: command %d" % (what,
                                                                      cmd))
                r = c.request(CMD_FLUSH, 4096, 0)
                assert_error_reply(r, EINVAL, "%s: FLUSH with an offset" % what)
                r = c.request(CMD_FLUSH, 0, 4096)
                assert_error_reply(r, EINVAL, "%s: FLUSH with a length" % what)
                r = c.request(CMD_READ, 0, 512, 1 << 15)
                assert_error_reply(r, EINVAL, "%s: READ with flag 0x8000" % what)
                r = c.request(CMD_BLOCK_STATUS, 0, 512, CMD_FLAG_PAYLOAD_LEN)
                assert_error_reply(r, EINVAL,
                                   "%s: PAYLOAD_LEN without extended headers"
                                   % what)
                r = c.read(0, 512, CMD_FLAG_DF)
                if structured:
                    check_eq(r.error, 0, "DF read")
                    check_eq(len(r.data_chunks), 1, "data chunks of a DF read")
                else:
                    assert_error_reply(r, EINVAL, "DF without SR")
                assert_alive(c, what)


@test
def errors_carry_a_message():
    with Workdir() as w, Server(image(w)) as s, s.connect() as c:
        r = c.read(8 * MiB, 512)
        assert_error_reply(r, EINVAL, "READ past the end")
        check_eq(len(r.chunks), 1, "chunks in the error reply")
        check_eq(r.chunks[0].type, TYPE_ERROR, "error chunk type")
        assert r.message, "error chunk without a message"
        assert r.chunks[0].done, "error chunk without DONE"


@test
def simple_replies_errors():
    with Workdir() as w, Server(image(w)) as s, \
            s.connect(structured=False) as c:
        assert not c.tflags & TF_SEND_DF, "DF advertised without SR"
        r = c.read(8 * MiB - 512, 1024)
        assert_error_reply(r, EINVAL, "simple READ past the end")
        check_eq(r.chunks[0].kind, "simple", "reply kind")
        r = c.write(8 * MiB, b"x" * 512)
        assert_error_reply(r, ENOSPC, "simple WRITE past the end")
        r = c.request(CMD_BLOCK_STATUS, 0, 4096)
        assert_error_reply(r, EINVAL, "BLOCK_STATUS without SR")
        # If the server had sent data after the READ error, this would
        # read garbage.
        assert_alive(c, "simple replies")


@test
def oversize_read_and_write():
    with Workdir() as w:
        path = w.file("big.img")
        make_image(path, 128 * MiB, [(0, pattern(1, MiB))])
        with Server(path, "-t") as s:
            for structured in (True, False):
                with s.connect(structured=structured) as c:
                    what = "structured" if structured else "simple"
                    r = c.read(0, MAX_PAYLOAD + 1)
                    assert_error_reply(r, EINVAL, "%s: READ of 64 MiB + 1" % what)
                    r = c.write(4096, b"\xee" * (MAX_PAYLOAD + 1))
                    assert_error_reply(r, EINVAL, "%s: WRITE of 64 MiB + 1"
                                       % what)
                    # The payload was drained: the stream is still framed
                    # and nothing was written.
                    assert_alive(c, "%s: after the oversize WRITE" % what)
                    check_eq(c.read(4096, 4096).data, pattern(1, MiB)[4096:8192],
                             "%s: data under the refused WRITE" % what)
                    r = c.read(0, MAX_PAYLOAD)
                    check_eq(r.error, 0, "%s: READ of exactly 64 MiB" % what)
                    check_eq(r.data[:MiB], pattern(1, MiB), "64 MiB read")


@test
def zero_length_requests():
    """The spec leaves zero-length requests unspecified, but whatever the
    server answers must be a well-formed reply (an OFFSET_DATA chunk has
    at least one byte of data)."""
    with Workdir() as w, Server(image(w)) as s, s.connect() as c:
        bad = []
        for cmd, name in ((CMD_WRITE, "WRITE"), (CMD_TRIM, "TRIM"),
                          (CMD_WRITE_ZEROES, "WRITE_ZEROES"),
                          (CMD_CACHE, "CACHE")):
            r = c.request(cmd, 4096, 0)
            if r.error:
                bad.append("zero-length %s: %s (%s)" % (name, err_name(r.error),
                                                        r.message))
        r = c.request(CMD_BLOCK_STATUS, 0, 0)
        if r.error != EINVAL:
            bad.append("zero-length BLOCK_STATUS: %r, expected EINVAL" % r)
        try:
            r = c.read(4096, 0)
            if r.error not in (0, EINVAL):
                bad.append("zero-length READ: %r" % r)
            assert_alive(c, "after the zero-length READ")
        except ProtocolError as e:
            bad.append("zero-length READ: %s" % e)
        assert not bad, "; ".join(bad)


@test
def disconnect_answers_in_flight_first():
    with Workdir() as w:
        path = w.file("disk.img")
        make_image(path, 64 * MiB, [(0, pattern(7, 32 * MiB))])
        with Server(path) as s, s.connect() as c:
            cookies = [c.send_request(CMD_READ, i * 8 * MiB, 8 * MiB)
                       for i in range(3)]
            c.send_request(CMD_DISC)
            late = c.send_request(CMD_READ, 0, 4096)
            for i, ck in enumerate(cookies):
                r = c.reply(ck)
                check_eq(r.error, 0, "READ %d sent before DISC" % i)
                assert r.data == pattern(7, 32 * MiB)[i * 8 * MiB:
                                                      (i + 1) * 8 * MiB], \
                    "data of READ %d" % i
            check_eq(c.wait_closed(), b"",
                     "bytes after the replies (READ %d came after DISC)" % late)
            check_eq(s.wait_exit(), 0, "exit status after DISC")


@test
def pipelined_writes_with_few_slots():
    """64 writes sent back to back to a server with 4 request slots: it
    must read the rest as slots free up, and answer all 64."""
    block = 16 * 1024
    with Workdir() as w, Server(image(w), "--max-inflight", "4") as s, \
            s.connect() as c:
        c.sock.settimeout(10)
        errors = []

        def send_all():
            try:
                for i in range(64):
                    c.send_request(CMD_WRITE, i * block, block, 0,
                                   bytes([i]) * block, cookie=1000 + i)
            except OSError as e:
                errors.append(e)

        sender = threading.Thread(target=send_all)
        sender.start()
        answered = 0
        try:
            while answered < 64:
                m = c.read_message()
                if m.done:
                    answered += 1
        except socket.timeout:
            pass
        sender.join(15)
        assert answered == 64, "%d of 64 writes answered within 10 s of " \
            "the last reply: the server stopped reading requests (sender: " \
            "%s)" % (answered, errors or "all sent")
        c.pending.clear()
        c.received.clear()
        for i in (0, 31, 63):
            check_eq(c.read(i * block, block).data, bytes([i]) * block,
                     "block %d" % i)


@test
def out_of_order_cookies():
    """Many requests with arbitrary cookies: each reply carries its own."""
    with Workdir() as w, Server(image(w)) as s, s.connect() as c:
        data = pattern(1, MiB)
        cookies = {}
        for i in range(64):
            ck = (0xDEADBEEF00000000 | i * 7919) ^ (i << 40)
            off = (i * 13 % 256) * 4096
            c.send_request(CMD_READ, off, 4096, cookie=ck)
            cookies[ck] = off
        for ck, off in cookies.items():
            r = c.reply(ck)
            check_eq(r.data, data[off:off + 4096], "READ with cookie %x" % ck)


# ---- replies in batches -------------------------------------------------

SEND_CALLS = ("sendmsg", "sendmmsg", "sendto", "write", "writev",
              "sendfile")


def socket_fds(pid):
    """The file descriptors of @pid that are sockets."""
    fds = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith(
                    "socket:"):
                fds.add(int(name))
        except OSError:
            pass
    return fds


def tracers(pid):
    """TracerPid of each thread of @pid."""
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        out.append(int(line.split()[1]))
        except OSError:
            pass
    return out


class SendTrace:
    """strace -f on every thread of @pid, logging the calls that can send
    on a socket.  stop() detaches and returns {fd: calls}.  Skips the test
    when strace is missing or may not attach (no ptrace here)."""

    def __init__(self, pid, log):
        exe = shutil.which("strace")
        if not exe:
            raise Skip("strace is not installed")
        self.log = log
        self.proc = subprocess.Popen(
            [exe, "-f", "-q", "-s", "0", "-e", "signal=none",
             "-e", "trace=" + ",".join(SEND_CALLS), "-o", log,
             "-p", str(pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not all(t == self.proc.pid for t in tracers(pid)):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                if "Operation not permitted" in err:
                    raise Skip("ptrace is not permitted: " + err.strip())
                raise AssertionError("strace exited with %d: %s"
                                     % (self.proc.returncode, err))
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("strace did not attach to every "
                                     "thread of %d within 20 s" % pid)
            time.sleep(0.02)

    def stop(self):
        """Detach (SIGINT to our strace only); count the calls per fd."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.proc.stderr.close()
        calls = {}
        start = re.compile(r"^(?:\d+\s+)?(%s)\((\d+)," % "|".join(SEND_CALLS))
        with open(self.log) as f:
            for line in f:
                m = start.match(line)
                if m:           # "<... resumed>" lines do not match
                    fd = int(m.group(2))
                    calls[fd] = calls.get(fd, 0) + 1
        return calls


def count_send_calls(s, c, w, requests):
    """Send @requests in one write, read every reply only after that, and
    return the number of system calls the server made to send them."""
    socks = socket_fds(s.pid)
    tracer = SendTrace(s.pid, w.file("strace-%d.log" % c.next_cookie))
    try:
        cookies = c.send_batch(requests)
        replies = [c.reply(ck) for ck in cookies]
    finally:
        calls = tracer.stop()
    on_sockets = sum(n for fd, n in calls.items() if fd in socks)
    assert on_sockets > 0, \
        "strace saw no send on the server's sockets %s: %r" % (socks, calls)
    return replies, on_sockets


@test
def replies_sent_in_batches():
    """256 requests sent in one write, their replies read only once all
    are sent: the send bottom half must gather many replies into each
    sendmsg (strace counts the server's send calls), not send each
    reply with its own system call."""
    n = 256
    data = pattern(1, MiB)
    with Workdir() as w, Server(image(w), "-t") as s:
        with s.connect() as c:
            check_eq(c.read(0, MiB).data, data, "READ of 1 MiB (page cache)")
            offs = [(i * 4096 * 7) % MiB for i in range(n)]
            replies, calls = count_send_calls(
                s, c, w, [(CMD_READ, o, 4096, 0, b"") for o in offs])
            for r, o in zip(replies, offs):
                assert r.error == 0 and r.data == data[o:o + 4096], \
                    "READ at %d: %r" % (o, r)
            diag("%d structured READ replies of 4 KiB: %d send calls"
                 % (n, calls))
            assert calls <= n // 4, \
                "%d send calls for %d READ replies: not batched" % (calls, n)
        with s.connect(structured=False) as c:
            block = pattern(2, 512)
            replies, calls = count_send_calls(
                s, c, w, [(CMD_WRITE, 2 * MiB + i * 512, 512, 0, block)
                          for i in range(n)])
            check_eq([r.error for r in replies], [0] * n, "WRITE errors")
            diag("%d simple WRITE replies: %d send calls" % (n, calls))
            assert calls <= n // 4, \
                "%d send calls for %d WRITE replies: not batched" % (calls, n)
            check_eq(c.read(2 * MiB, 512).data, block, "a WRITE read back")


if __name__ == "__main__":
    run()
