#!/usr/bin/python3
"""Faults from below: backend calls made to fail through the
fault-injection build (RAWNBD_FAULTS, see coro/fault.h).  For each site
and error, the request that meets the fault gets the right NBD error,
requests in flight beside it at other offsets succeed and land, the
connection carries on, and the server logs the real errno once for the
failed request.  A delay (preadv=delayMS) holds one READ in the backend
to show that the requests behind it on the same connection are taken in
and answered meanwhile.  Skipped without a fault-injection build
(robustlib.use_binary looks for build-asan/ too).

Every batch puts the faulty request first: the laio-submit site checks
only the first request of a batch handed to io_submit (coro/linux-aio.c).
"""

import errno
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from robustlib import MiB, Skip, use_binary  # noqa: E402
from harness import (Server, Workdir, check_eq, diag,  # noqa: E402
                     make_image, pattern, read_file, run, test)
from nbdraw import *  # noqa: E402,F401,F403

SIZE = 8 * MiB
STEP = 256 * 1024           # requests of a batch are this far apart
FAULT_AT = 3 * STEP + 8192  # inside the fourth request of a batch
FAULT_LEN = 4096
NBATCH = 8
KiB = 1024


def strerror(name):
    return os.strerror(getattr(errno, name))


class FaultServer:
    """A server over a fresh image holding pattern(1), with @faults."""

    def __init__(self, w, faults, *args):
        self.faults = faults
        self.path = w.file("disk.img")
        make_image(self.path, SIZE, [(0, pattern(1, SIZE))])
        self.srv = Server(self.path, "-t", *args,
                          env={"RAWNBD_FAULTS": faults})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            # Announced on first use, that is once I/O was done.
            assert "fault injection: " + self.faults in self.srv.log_text(), \
                "the server did not announce the faults %r" % self.faults
        return self.srv.__exit__(*exc)

    def failed_lines(self):
        return [l for l in self.srv.log_text().splitlines()
                if re.search(r"NBD_CMD_\w+ at offset \d+ length \d+ failed",
                             l)]


def expect_logged_once(fs, cmd, offset, length, errname):
    """Exactly one 'failed' line, for this request, with the real errno."""
    want = "NBD_CMD_%s at offset %d length %d failed: %s" % (
        cmd, offset, length, strerror(errname))
    lines = fs.failed_lines()
    hits = [l for l in lines if want in l]
    assert len(hits) == 1 and len(lines) == 1, \
        "expected one log line with %r, got:\n%s" % (want, "\n".join(lines))


def batch(c, reqs):
    """Send all of @reqs [(cmd, offset, length, flags, payload)] before
    reading any reply; return the replies in order."""
    cookies = []
    for cmd, off, length, flags, payload in reqs:
        if c.extended and payload:
            flags |= CMD_FLAG_PAYLOAD_LEN
        cookies.append(c.send_request(cmd, off, length, flags, payload))
    return [c.reply(ck) for ck in cookies]


def order_fault_first(offsets):
    k = [i for i, o in enumerate(offsets) if o <= FAULT_AT < o + STEP][0]
    return [offsets[k]] + offsets[:k] + offsets[k + 1:]


def check_errors(replies, offsets, faulty, nbd_err, what):
    for r, off in zip(replies, offsets):
        want = nbd_err if off == faulty else 0
        assert r.error == want, "%s at %d: expected %s, got %r" % (
            what, off, err_name(want), r)


def carries_on(c, what):
    """The connection still reads and writes elsewhere."""
    data = pattern(77, 4096)
    r = c.write(7 * MiB, data)
    check_eq(r.error, 0, "%s: WRITE afterwards" % what)
    check_eq(c.read(7 * MiB, 4096).data, data, "%s: READ afterwards" % what)


def batch_offsets():
    return order_fault_first([i * STEP for i in range(NBATCH)])


# ---- writes ----------------------------------------------------------------------

def write_fault(errname, nbd_err, *args, site="pwritev", length=64 * KiB):
    faults = "%s=%s@%d+%d" % (site, errname, FAULT_AT, FAULT_LEN)
    offsets = batch_offsets()
    faulty = 3 * STEP
    with Workdir() as w, FaultServer(w, faults, *args) as fs, \
            fs.srv.connect() as c:
        reqs = []
        for k, off in enumerate(offsets):
            # Half with FUA: those take the worker-thread path.
            flags = CMD_FLAG_FUA if k % 2 else 0
            reqs.append((CMD_WRITE, off, length, flags,
                         pattern(100 + k, length)))
        replies = batch(c, reqs)
        check_errors(replies, offsets, faulty, nbd_err,
                     "WRITE with %s" % faults)
        # What a failed write leaves is unspecified; the others landed.
        # (From the file: a read of the faulty range may fail too.)
        for k, off in enumerate(offsets):
            if off != faulty:
                check_eq(read_file(fs.path, off, length) ==
                         pattern(100 + k, length), True,
                         "data at %d after the batch" % off)
        carries_on(c, faults)
        expect_logged_once(fs, "WRITE", faulty, length, errname)
        if nbd_err:
            # The fault stays: the same request fails again.
            r = c.write(faulty, pattern(9, length))
            check_eq(r.error, nbd_err, "the faulty WRITE again")
    return fs


@test
def pwritev_eio():
    use_binary(faults=True)
    write_fault("EIO", EIO)


@test
def pwritev_enospc():
    use_binary(faults=True)
    write_fault("ENOSPC", ENOSPC)


@test
def pwritev_edquot_is_enospc():
    use_binary(faults=True)
    write_fault("EDQUOT", ENOSPC)


@test
def pwritev_efbig_is_enospc():
    use_binary(faults=True)
    write_fault("EFBIG", ENOSPC)


@test
def pwritev_eio_large_and_simple_replies():
    """1 MiB writes (worker threads), and errors as simple replies."""
    use_binary(faults=True)
    faults = "pwritev=EIO@%d+%d" % (FAULT_AT, FAULT_LEN)
    with Workdir() as w, FaultServer(w, faults) as fs, \
            fs.srv.connect(structured=False) as c:
        offsets = [0, 3 * STEP, 2 * MiB]
        replies = batch(c, [(CMD_WRITE, o, MiB, 0, pattern(5, MiB))
                            for o in offsets])
        check_eq([r.error for r in replies], [EIO, EIO, 0],
                 "errors of three 1 MiB writes, the first two overlapping "
                 "the fault")
        check_eq(replies[0].chunks[0].kind, "simple", "reply kind")
        check_eq(read_file(fs.path, 2 * MiB, MiB), pattern(5, MiB),
                 "the third write in the file")
        carries_on(c, faults)


@test
def pwritev_short_continues():
    """A write the kernel cuts short is continued: success, all data."""
    use_binary(faults=True)
    with Workdir() as w, FaultServer(w, "pwritev=short") as fs, \
            fs.srv.connect() as c:
        for k, (off, length, flags) in enumerate(
                ((0, 4096, 0), (65536, 64 * KiB, 0), (MiB, MiB, 0),
                 (3 * MiB, 128 * KiB, CMD_FLAG_FUA))):
            data = pattern(30 + k, length)
            r = c.write(off, data, flags)
            check_eq(r.error, 0, "short-cut WRITE of %d at %d" % (length, off))
            check_eq(read_file(fs.path, off, length), data,
                     "file after the short-cut WRITE at %d" % off)
        check_eq(fs.failed_lines(), [], "failures logged")


# ---- reads ---------------------------------------------------------------------------

def read_fault(faults, nbd_err, length, *args, structured=True):
    offsets = batch_offsets()
    faulty = 3 * STEP
    expected = pattern(1, SIZE)
    with Workdir() as w, FaultServer(w, faults, *args) as fs, \
            fs.srv.connect(structured=structured) as c:
        replies = batch(c, [(CMD_READ, o, length, 0, b"") for o in offsets])
        check_errors(replies, offsets, faulty if nbd_err else None, nbd_err,
                     "READ with %s" % faults)
        for r, off in zip(replies, offsets):
            want = expected[off:off + length]
            if not r.error and r.data != want:
                first = next(i for i in range(length)
                             if r.data[i] != want[i])
                zero = r.data[first:] == bytes(length - first)
                raise AssertionError(
                    "READ of %d at %d with %s succeeded with wrong data from "
                    "byte %d on%s" % (length, off, faults, first,
                                      " (zeroes to the end)" if zero else ""))
        carries_on(c, faults)
        return fs


@test
def preadv_eio():
    """Reads under 64 KiB: never sent from the page cache by sendfile, so
    they always call preadv."""
    use_binary(faults=True)
    faults = "preadv=EIO@%d+%d" % (FAULT_AT, FAULT_LEN)
    fs = read_fault(faults, EIO, 32 * KiB)
    expect_logged_once(fs, "READ", 3 * STEP, 32 * KiB, "EIO")
    fs = read_fault(faults, EIO, 32 * KiB, structured=False)
    expect_logged_once(fs, "READ", 3 * STEP, 32 * KiB, "EIO")


@test
def preadv_eio_direct_threads():
    """1 MiB reads with O_DIRECT through the worker threads."""
    use_binary(faults=True)
    faults = "preadv=EIO@%d+%d" % (FAULT_AT, FAULT_LEN)
    offsets = [0, 3 * STEP, 2 * MiB]
    with Workdir() as w:
        need_direct_io(w)
        with FaultServer(w, faults, "--cache=none", "--aio=threads") as fs, \
                fs.srv.connect() as c:
            replies = batch(c, [(CMD_READ, o, MiB, 0, b"") for o in offsets])
            check_eq([r.error for r in replies], [EIO, EIO, 0],
                     "errors of 1 MiB reads")
            check_eq(replies[2].data, pattern(1, SIZE)[2 * MiB:3 * MiB],
                     "data of the third read")
            carries_on(c, faults)


@test
def preadv_short_continues():
    use_binary(faults=True)
    for args in ((), ("--cache=none", "--aio=threads")):
        with Workdir() as w:
            if args:
                need_direct_io(w)
            fs = read_fault("preadv=short", 0, 32 * KiB, *args)
            check_eq(fs.failed_lines(), [], "failures logged")
            fs = read_fault("preadv=short", 0, MiB, *args)
            check_eq(fs.failed_lines(), [], "failures logged")


# ---- flush, trim, zero ---------------------------------------------------------------

@test
def fdatasync_eio():
    use_binary(faults=True)
    with Workdir() as w, FaultServer(w, "fdatasync=EIO*1") as fs, \
            fs.srv.connect() as c:
        replies = batch(c, [(CMD_WRITE, 0, 4096, 0, pattern(3, 4096)),
                            (CMD_READ, MiB, 4096, 0, b"")])
        check_eq([r.error for r in replies], [0, 0], "write and read")
        r = c.request(CMD_FLUSH)
        check_eq(r.error, EIO, "the FLUSH that meets the fault")
        replies = batch(c, [(CMD_FLUSH, 0, 0, 0, b""),
                            (CMD_WRITE, 4096, 4096, CMD_FLAG_FUA,
                             pattern(4, 4096)),
                            (CMD_FLUSH, 0, 0, 0, b"")])
        check_eq([r.error for r in replies], [0, 0, 0],
                 "FLUSH, FUA write, FLUSH once the fault is spent")
        carries_on(c, "fdatasync=EIO*1")
        expect_logged_once(fs, "FLUSH", 0, 0, "EIO")
    with Workdir() as w, FaultServer(w, "fdatasync=EIO") as fs, \
            fs.srv.connect() as c:
        replies = batch(c, [(CMD_FLUSH, 0, 0, 0, b""),
                            (CMD_WRITE, 0, 4096, CMD_FLAG_FUA,
                             pattern(3, 4096)),
                            (CMD_TRIM, MiB, 64 * KiB, CMD_FLAG_FUA, b""),
                            (CMD_READ, 0, 4096, 0, b"")])
        check_eq([r.error for r in replies], [EIO, 0, EIO, 0],
                 "FLUSH, FUA WRITE (RWF_DSYNC, no fdatasync), FUA TRIM "
                 "(a flush after the trim), READ")
        carries_on(c, "fdatasync=EIO")


def fallocate_batch(c, cmd, flags, offsets, length):
    return batch(c, [(cmd, o, length, flags, b"") for o in offsets])


@test
def fallocate_eio():
    use_binary(faults=True)
    faults = "fallocate=EIO@%d+%d" % (FAULT_AT, FAULT_LEN)
    offsets = batch_offsets()
    faulty = 3 * STEP
    for cmd, flags, name in ((CMD_TRIM, 0, "TRIM"),
                             (CMD_WRITE_ZEROES, 0, "WRITE_ZEROES"),
                             (CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE,
                              "WRITE_ZEROES"),
                             (CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO,
                              "WRITE_ZEROES")):
        what = "%s flags 0x%x with %s" % (name, flags, faults)
        with Workdir() as w, FaultServer(w, faults) as fs, \
                fs.srv.connect() as c:
            replies = fallocate_batch(c, cmd, flags, offsets, 64 * KiB)
            check_errors(replies, offsets, faulty, EIO, what)
            for off in offsets:
                got = c.read(off, 64 * KiB).data
                if off == faulty:
                    assert got == pattern(1, SIZE)[off:off + 64 * KiB], \
                        "%s: data under the failed request changed" % what
                else:
                    assert got == bytes(64 * KiB), \
                        "%s: %d does not read as zeroes" % (what, off)
            carries_on(c, what)
            expect_logged_once(fs, name, faulty, 64 * KiB, "EIO")


@test
def fallocate_enospc_and_unsupported():
    """ENOSPC from fallocate is ENOSPC; without fallocate at all, TRIM
    succeeds doing nothing, WRITE_ZEROES writes zeroes (and fails with
    the write's error), FAST_ZERO fails with ENOTSUP."""
    use_binary(faults=True)
    faults = "fallocate=ENOSPC@%d+%d" % (FAULT_AT, FAULT_LEN)
    with Workdir() as w, FaultServer(w, faults) as fs, fs.srv.connect() as c:
        replies = batch(c, [(CMD_WRITE_ZEROES, 3 * STEP, 64 * KiB, 0, b""),
                            (CMD_WRITE_ZEROES, 0, 64 * KiB, 0, b"")])
        check_eq([r.error for r in replies], [ENOSPC, 0],
                 "WRITE_ZEROES with " + faults)
        expect_logged_once(fs, "WRITE_ZEROES", 3 * STEP, 64 * KiB, "ENOSPC")
    faults = "fallocate=EOPNOTSUPP;pwritev=EIO@%d+%d" % (FAULT_AT, FAULT_LEN)
    with Workdir() as w, FaultServer(w, faults) as fs, fs.srv.connect() as c:
        replies = batch(c, [(CMD_TRIM, STEP, 64 * KiB, 0, b""),
                            (CMD_WRITE_ZEROES, 2 * STEP, 64 * KiB, 0, b""),
                            (CMD_WRITE_ZEROES, 4 * STEP, 64 * KiB,
                             CMD_FLAG_FAST_ZERO, b""),
                            (CMD_WRITE_ZEROES, 3 * STEP, 64 * KiB, 0, b"")])
        check_eq([r.error for r in replies], [0, 0, ENOTSUP, EIO],
                 "TRIM, WRITE_ZEROES, FAST_ZERO, WRITE_ZEROES over a write "
                 "fault, without fallocate")
        orig = pattern(1, SIZE)
        check_eq(read_file(fs.path, STEP, 64 * KiB) ==
                 orig[STEP:STEP + 64 * KiB], True, "data under the TRIM")
        check_eq(read_file(fs.path, 2 * STEP, 64 * KiB), bytes(64 * KiB),
                 "zeroes written")
        check_eq(read_file(fs.path, 4 * STEP, 64 * KiB) ==
                 orig[4 * STEP:4 * STEP + 64 * KiB], True,
                 "data under the refused FAST_ZERO")
        carries_on(c, faults)
        expect_logged_once(fs, "WRITE_ZEROES", 3 * STEP, 64 * KiB, "EIO")


@test
def counted_faults_across_connections():
    """pwritev=EIO*20 with 4 connections x 32 writes in flight: exactly 20
    writes fail, each logged once, the rest land."""
    use_binary(faults=True)
    with Workdir() as w, FaultServer(w, "pwritev=EIO*20") as fs:
        conns = [fs.srv.connect() for _ in range(4)]
        try:
            sent = []
            for k in range(32):
                for n, c in enumerate(conns):
                    off = (n * 32 + k) * 16 * KiB
                    ck = c.send_request(CMD_WRITE, off, 16 * KiB,
                                        CMD_FLAG_FUA if k % 3 == 0 else 0,
                                        pattern(n * 32 + k, 16 * KiB))
                    sent.append((c, ck, n * 32 + k, off))
            failed = []
            for c, ck, i, off in sent:
                r = c.reply(ck)
                if r.error:
                    check_eq(r.error, EIO, "error of write %d" % i)
                    failed.append(off)
                else:
                    check_eq(read_file(fs.path, off, 16 * KiB) ==
                             pattern(i, 16 * KiB), True, "write %d" % i)
            check_eq(len(failed), 20, "writes failed")
            logged = fs.failed_lines()
            check_eq(len(logged), 20, "failures logged")
            for off in failed:
                assert sum("NBD_CMD_WRITE at offset %d length" % off in l
                           for l in logged) == 1, \
                    "the write at %d is not logged once" % off
            for c in conns:
                carries_on(c, "pwritev=EIO*20")
        finally:
            for c in conns:
                c.close()


@test
def read_error_between_holes():
    """A large READ served in several data chunks around a hole: an error
    on the second data extent makes the whole reply one ERROR_OFFSET chunk
    naming the start of that extent (the bytes before it were read)."""
    use_binary(faults=True)
    faults = "preadv=EIO@%d+%d" % (2 * MiB + 4096, 4096)
    with Workdir() as w:
        path = w.file("holes.img")
        make_image(path, SIZE, [(0, pattern(1, MiB)),
                                (2 * MiB, pattern(2, MiB))])
        with Server(path, "-t", env={"RAWNBD_FAULTS": faults}) as s, \
                s.connect() as c:
            # Drop the pages so the read is not sent from the page cache.
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            r = c.read(0, 4 * MiB)
            check_eq(r.error, EIO, "READ over data, hole, faulty data")
            check_eq([ch.type for ch in r.chunks], [TYPE_ERROR_OFFSET],
                     "chunks of the failed READ")
            check_eq(r.error_offset, 2 * MiB, "its error offset")
            # With extended headers too.
            with s.connect(extended=True) as ce:
                r = ce.read(0, 4 * MiB)
                check_eq((r.error, r.error_offset), (EIO, 2 * MiB),
                         "the same READ with extended headers")
            r = c.read(0, 2 * MiB)
            check_eq(r.error, 0, "READ over data and hole only")
            check_eq(r.data, pattern(1, MiB) + bytes(MiB), "its data")


# ---- delays: pipelining --------------------------------------------------------------

DELAY_MS = 600


def drop_cache(path):
    """Write back and drop @path's pages, so that no read of it can be
    served from the page cache on the loop."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def pipelined_past_slow_read(*args):
    """READ A meets a delay of DELAY_MS in the backend; READ B, WRITE C
    and READ D, sent right after it on the same connection without
    waiting, are answered while A still sleeps: every message of their
    replies arrives before the first of A's, and all data is right."""
    a_off, length = 3 * STEP, 64 * KiB
    faults = "preadv=delay%d@%d+%d" % (DELAY_MS, a_off + 8192, 4096)
    with Workdir() as w:
        if args:
            need_direct_io(w)
        with FaultServer(w, faults, *args) as fs, fs.srv.connect() as c:
            drop_cache(fs.path)
            expected = pattern(1, SIZE)
            wdata = pattern(40, length)
            t0 = time.monotonic()
            a = c.send_request(CMD_READ, a_off, length)
            b = c.send_request(CMD_READ, 6 * STEP, length)
            cw = c.send_request(CMD_WRITE, 5 * MiB, length, 0, wdata)
            d = c.send_request(CMD_READ, 0, 4096)
            names = {a: "READ A", b: "READ B", cw: "WRITE C", d: "READ D"}
            arrival = []            # (cookie, seconds since t0) per message
            done = set()
            while len(done) < len(names):
                m = c.read_message()
                arrival.append((m.cookie, time.monotonic() - t0))
                if m.done:
                    done.add(m.cookie)
            first_a = min(i for i, (ck, _) in enumerate(arrival) if ck == a)
            order = [names[ck] for ck, _ in arrival]
            for ck in (b, cw, d):
                last = max(i for i, (k, _) in enumerate(arrival) if k == ck)
                assert last < first_a, \
                    "%s answered after READ A, which sleeps %d ms in " \
                    "preadv: the requests behind it were not pipelined " \
                    "(messages in order: %s)" % (names[ck], DELAY_MS, order)
            a_time = arrival[first_a][1]
            assert a_time >= DELAY_MS / 1000 * 0.9, \
                "READ A answered after %.3f s: the %d ms delay was not " \
                "applied (%s)" % (a_time, DELAY_MS, faults)
            others = max(t for ck, t in arrival if ck != a)
            diag("%s: B, C, D answered within %.3f s, A after %.3f s"
                 % (" ".join(args) or "buffered", others, a_time))
            ra, rb, rc, rd = (c.reply(ck) for ck in (a, b, cw, d))
            check_eq(ra.error, 0, "READ A's error")
            check_eq(ra.data == expected[a_off:a_off + length], True,
                     "READ A's data")
            check_eq(rb.error, 0, "READ B's error")
            check_eq(rb.data == expected[6 * STEP:6 * STEP + length], True,
                     "READ B's data")
            check_eq(rc.error, 0, "WRITE C's error")
            check_eq(rd.data == expected[:4096], True, "READ D's data")
            check_eq(read_file(fs.path, 5 * MiB, length) == wdata, True,
                     "WRITE C in the file")
            check_eq(c.read(5 * MiB, length).data == wdata, True,
                     "WRITE C read back")
            check_eq(fs.failed_lines(), [], "failures logged")


@test
def pipelined_past_slow_read_buffered():
    use_binary(faults=True)
    pipelined_past_slow_read()


@test
def pipelined_past_slow_read_direct_threads():
    use_binary(faults=True)
    pipelined_past_slow_read("--cache=none", "--aio=threads")


@test
def fdatasync_eio_at_shutdown():
    """SIGTERM flushes every writable export; a failing flush is logged
    with its errno and the server still stops."""
    use_binary(faults=True)
    with Workdir() as w:
        fs = FaultServer(w, "fdatasync=EIO")
        c = fs.srv.connect()
        check_eq(c.write(0, pattern(3, 4096)).error, 0, "WRITE")
        rc = fs.srv.stop()
        c.close()
        fs.srv.check_clean_exit(rc)
        log = fs.srv.log_text()
        assert "flush at shutdown failed: Input/output error" in log, log


# ---- Linux AIO -------------------------------------------------------------------------

def need_direct_io(w):
    path = w.file(".direct")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT)
        os.close(fd)
    except OSError as e:
        raise Skip("no O_DIRECT in %s: %s" % (w.path, e))
    finally:
        if os.path.exists(path):
            os.unlink(path)


NATIVE = ("--cache=none", "--aio=native")


@test
def laio_submit_eio():
    use_binary(faults=True)
    faults = "laio-submit=EIO@%d+%d" % (FAULT_AT, FAULT_LEN)
    with Workdir() as w:
        need_direct_io(w)
    fs = read_fault(faults, EIO, 64 * KiB, *NATIVE)
    expect_logged_once(fs, "READ", 3 * STEP, 64 * KiB, "EIO")
    fs = write_fault("EIO", EIO, *NATIVE, site="laio-submit")
    assert fs.srv.returncode == 0


@test
def laio_read_eio():
    use_binary(faults=True)
    faults = "laio-read=EIO@%d+%d" % (FAULT_AT, FAULT_LEN)
    with Workdir() as w:
        need_direct_io(w)
    fs = read_fault(faults, EIO, 64 * KiB, *NATIVE)
    expect_logged_once(fs, "READ", 3 * STEP, 64 * KiB, "EIO")


@test
def laio_submit_eagain_retried():
    """io_submit saying EAGAIN is not an error: the requests wait and go."""
    use_binary(faults=True)
    with Workdir() as w:
        need_direct_io(w)
    fs = read_fault("laio-submit=EAGAIN*20", 0, 64 * KiB, *NATIVE)
    check_eq(fs.failed_lines(), [], "failures logged")


@test
def laio_read_short_continues():
    """A Linux-AIO read that returns less than asked, short of the end of
    the file, must be continued (or fail), like the worker threads'
    reads, not padded with zeroes (coro/linux-aio.c, laio_complete)."""
    use_binary(faults=True)
    with Workdir() as w:
        need_direct_io(w)
    faults = "laio-read=short@%d+%d" % (FAULT_AT, FAULT_LEN)
    fs = read_fault(faults, 0, 64 * KiB, *NATIVE)
    check_eq(fs.failed_lines(), [], "failures logged")


@test
def laio_read_short_block_device():
    """The same on a block device (a loop device), whose st_size is 0: a
    read cut short is not taken for the end of the device and padded."""
    use_binary(faults=True)
    if os.geteuid() != 0 or not shutil.which("losetup"):
        raise Skip("needs root and losetup for a loop device")
    with Workdir() as w:
        backing = w.file("backing.img")
        make_image(backing, SIZE, [(0, pattern(1, SIZE))])
        r = subprocess.run(["losetup", "--find", "--show", backing],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip("no loop device: %s" % r.stderr.strip())
        dev = r.stdout.strip()
        try:
            faults = "laio-read=short@%d+%d" % (FAULT_AT, FAULT_LEN)
            offsets = batch_offsets()
            with Server(dev, "-t", *NATIVE,
                        env={"RAWNBD_FAULTS": faults}) as s, \
                    s.connect() as c:
                replies = batch(c, [(CMD_READ, o, 64 * KiB, 0, b"")
                                    for o in offsets])
                expected = pattern(1, SIZE)
                for rep, off in zip(replies, offsets):
                    check_eq(rep.error, 0, "READ at %d" % off)
                    assert rep.data == expected[off:off + 64 * KiB], \
                        "READ at %d of the device: wrong data" % off
        finally:
            subprocess.run(["losetup", "-d", dev], check=False)


@test
def laio_write_eio():
    use_binary(faults=True)
    with Workdir() as w:
        need_direct_io(w)
    write_fault("EIO", EIO, *NATIVE, site="laio-write")


@test
def laio_write_short_is_enospc():
    """A short Linux-AIO write is not continued: the request fails with
    ENOSPC (what a short direct write means), logged as such."""
    use_binary(faults=True)
    with Workdir() as w:
        need_direct_io(w)
    faults = "laio-write=short@%d+%d" % (FAULT_AT, FAULT_LEN)
    offsets = batch_offsets()
    faulty = 3 * STEP
    with Workdir() as w, FaultServer(w, faults, *NATIVE) as fs, \
            fs.srv.connect() as c:
        replies = batch(c, [(CMD_WRITE, o, 64 * KiB, 0,
                             pattern(200 + k, 64 * KiB))
                            for k, o in enumerate(offsets)])
        check_errors(replies, offsets, faulty, ENOSPC, "WRITE with " + faults)
        for k, off in enumerate(offsets):
            if off != faulty:
                check_eq(read_file(fs.path, off, 64 * KiB) ==
                         pattern(200 + k, 64 * KiB), True, "data at %d" % off)
        carries_on(c, faults)
        expect_logged_once(fs, "WRITE", faulty, 64 * KiB, "ENOSPC")


if __name__ == "__main__":
    run()
