#!/usr/bin/python3
"""ENOSPC for real: a sparse image larger than the small file system it
lies on (a loop-mounted 16 MiB ext4, or a tmpfs with size=16m where loop
devices cannot be had; skipped if neither can be mounted).  Writes until
it is full fail with NBD_ENOSPC, the connection goes on (reads, flush,
overwrites in place), and writes succeed again once a TRIM has given
space back.  With the page cache and with O_DIRECT (ext4 only).
ROBUST_ENOSPC_FS=tmpfs uses the tmpfs even where loop devices work."""

import contextlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from robustlib import MiB, Skip, diag, use_binary  # noqa: E402
from harness import (Server, Workdir, check_eq, pattern,  # noqa: E402
                     read_file, run, test)
from nbdraw import *  # noqa: E402,F401,F403

FS_SIZE = 16 * MiB
IMAGE_SIZE = 64 * MiB


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def small_fs(w):
    """Mount a FS_SIZE file system; yields (mount point, kind)."""
    mnt = w.file("mnt")
    os.mkdir(mnt)
    kind = None
    backing = w.file("fs.ext4")
    with open(backing, "wb") as f:
        f.truncate(FS_SIZE)
    # -m 0: no blocks reserved for root (the tests run as root).
    r = sh("mkfs.ext4", "-q", "-F", "-m", "0", backing)
    if os.environ.get("ROBUST_ENOSPC_FS") == "tmpfs":
        r.returncode, r.stderr = 1, "ROBUST_ENOSPC_FS=tmpfs"
    if r.returncode == 0:
        r = sh("mount", "-o", "loop", backing, mnt)
        if r.returncode == 0:
            kind = "ext4"
    why = r.stderr.strip()
    if kind is None:
        r = sh("mount", "-t", "tmpfs", "-o", "size=%d" % FS_SIZE, "tmpfs",
               mnt)
        if r.returncode != 0:
            raise Skip("cannot mount a small file system (loop ext4: %s; "
                       "tmpfs: %s)" % (why, r.stderr.strip()))
        kind = "tmpfs"
    try:
        yield mnt, kind
    finally:
        for _ in range(50):
            if sh("umount", mnt).returncode == 0:
                break
            time.sleep(0.1)
        else:
            sh("umount", "-l", mnt)


def fill_until_full(c, what):
    """Write 1 MiB blocks from the start until one fails; returns the
    number written.  The failure must be ENOSPC."""
    for i in range(IMAGE_SIZE // MiB):
        r = c.write(i * MiB, pattern(i, MiB))
        if r.error:
            check_eq(err_name(r.error), "ENOSPC",
                     "%s: error of the write of block %d into a full file "
                     "system (%s)" % (what, i, r.message))
            return i
    raise AssertionError("%s: %d MiB written into a %d MiB file system"
                         % (what, IMAGE_SIZE // MiB, FS_SIZE // MiB))


def enospc_session(args):
    with Workdir() as w, small_fs(w) as (mnt, kind):
        what = "%s%s" % (kind, " " + " ".join(args) if args else "")
        if args and kind != "ext4":
            raise Skip("no O_DIRECT on %s" % kind)
        path = os.path.join(mnt, "disk.img")
        with open(path, "wb") as f:
            f.truncate(IMAGE_SIZE)
        with Server(path, "-t", *args) as s, s.connect() as c:
            full = fill_until_full(c, what)
            diag("%s: full after %d MiB" % (what, full))
            assert full >= 4, "%s: full after only %d MiB" % (what, full)
            # Still full: another new block fails the same way.
            r = c.write((full + 1) * MiB, pattern(99, MiB))
            check_eq(err_name(r.error), "ENOSPC", "%s: the next write" % what)
            # The connection carries on: reads, flush, WRITE_ZEROES that
            # would allocate fails cleanly, overwrites in place succeed.
            for i in (0, full // 2, full - 1):
                check_eq(c.read(i * MiB, MiB).data == pattern(i, MiB), True,
                         "%s: block %d read back" % (what, i))
            check_eq(c.request(CMD_FLUSH).error, 0, "%s: FLUSH" % what)
            r = c.request(CMD_WRITE_ZEROES, (full + 2) * MiB, MiB,
                          CMD_FLAG_NO_HOLE)
            assert r.error in (0, ENOSPC), \
                "%s: WRITE_ZEROES (no hole) when full: %r" % (what, r)
            check_eq(c.write(0, pattern(50, MiB)).error, 0,
                     "%s: overwriting block 0 in place" % what)
            # Space back: TRIM four blocks, then the failed write works.
            check_eq(c.request(CMD_TRIM, MiB, 4 * MiB).error, 0,
                     "%s: TRIM" % what)
            check_eq(c.read(MiB, MiB).data, bytes(MiB),
                     "%s: trimmed block reads as zeroes" % what)
            r = c.write(full * MiB, pattern(full, MiB))
            check_eq(r.error, 0, "%s: the write that failed, after the TRIM"
                     % what)
            check_eq(c.request(CMD_FLUSH).error, 0,
                     "%s: FLUSH after the TRIM" % what)
            check_eq(c.read(full * MiB, MiB).data == pattern(full, MiB), True,
                     "%s: block %d read back" % (what, full))
        assert "No space left on device" in s.log_text(), \
            "%s: the server did not log ENOSPC" % what
        check_eq(read_file(path, 0, MiB) == pattern(50, MiB), True,
                 "%s: block 0 in the file" % what)
        check_eq(read_file(path, full * MiB, MiB) == pattern(full, MiB), True,
                 "%s: block %d in the file" % (what, full))
        for i in range(5, full):
            if read_file(path, i * MiB, MiB) != pattern(i, MiB):
                raise AssertionError("%s: block %d is not in the file"
                                     % (what, i))


@test
def enospc_page_cache():
    use_binary()
    enospc_session(())


@test
def enospc_direct():
    use_binary()
    enospc_session(("--cache=none",))


if __name__ == "__main__":
    run()
