#!/usr/bin/python3
"""Several exports through real clients (libnbd's Python bindings,
nbdinfo): FILE arguments and --export NAME=FILE,OPTS, names and
descriptions in LIST, sizes and read-only flags, windows made with
offset= and size= (only their bytes change), the empty name, and
duplicate names."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (RAWNBD, Server, Skip, Workdir, check_eq,  # noqa: E402
                     expect_nbd_error as expect_error, file_map,
                     libnbd as nbd, make_image, need_libnbd, pattern,
                     read_file, run, test)

KiB = 1 << 10
MiB = 1 << 20


def handle(s, name, meta=False):
    h = need_libnbd().NBD()
    if meta:
        h.add_meta_context("base:allocation")
    h.set_export_name(name)
    h.set_strict_mode(0)        # send what the server must refuse
    h.connect_unix(s.sock_path)
    return h


@test
def list_names_descriptions_sizes():
    """LIST (nbdinfo --list and libnbd opt_list): every export in order,
    with descriptions (",," is a comma), sizes and read-only flags."""
    with Workdir() as w:
        first, second = w.file("first.img"), w.file("second.img")
        comma = w.file("x,y.img")
        make_image(first, 1 * MiB)
        make_image(second, 2 * MiB)
        make_image(comma, 3 * MiB)
        with Server(second, "-t", "-D", "first one", first,
                    "--export", "a=%s,,y.img,description=left,, right"
                    % w.file("x"),
                    "--export", "w=%s,offset=64K,size=128K,ro,"
                    "description=win" % first) as s:
            out = subprocess.run(["nbdinfo", "--list", "--json", s.uri],
                                 capture_output=True, text=True, timeout=60)
            check_eq(out.returncode, 0, "nbdinfo --list (%s)" % out.stderr)
            got = [(e["export-name"], e.get("description"), e["export-size"],
                    e["is_read_only"])
                   for e in json.loads(out.stdout)["exports"]]
            check_eq(got, [("", "first one", 1 * MiB, False),
                           ("second.img", None, 2 * MiB, False),
                           ("a", "left, right", 3 * MiB, False),
                           ("w", "win", 128 * KiB, True)], "exports")
            if nbd is not None:
                h = nbd.NBD()
                h.set_opt_mode(True)
                h.connect_unix(s.sock_path)
                listed = []
                h.opt_list(lambda n, d: listed.append((n, d)) or 0)
                h.opt_abort()
                check_eq(listed, [("", "first one"), ("second.img", ""),
                                  ("a", "left, right"), ("w", "win")],
                         "libnbd opt_list")


@test
def windows_touch_only_their_bytes():
    """Reads, writes, zeroes and trims through offset=/size= windows (one
    not block-aligned) reach exactly the window's bytes of the image."""
    with Workdir() as w:
        img = w.file("disk.img")
        size = 2 * MiB
        make_image(img, size, [(0, pattern(7, size))])
        windows = {"a": (65536 + 1000, 300 * KiB), "b": (MiB, 64 * KiB)}
        args = ["--export=%s=%s,offset=%d,size=%d" % (n, img, off, length)
                for n, (off, length) in windows.items()]
        expect = bytearray(pattern(7, size))
        with Server(img, "-t", "-o", "3000", *args) as s:
            h = handle(s, "")
            check_eq((h.get_size(), h.pread(4096, 0)),
                     (size - 3000, bytes(expect[3000:7096])), "-o 3000")
            h.shutdown()
            for name, (off, length) in windows.items():
                h = handle(s, name)
                check_eq(h.get_size(), length, "size of %s" % name)
                check_eq(h.pread(length, 0), bytes(expect[off:off + length]),
                         "whole window %s" % name)
                h.trim(length, 0)           # its content is unspecified,
                data = pattern(8, length)   # so it is written over
                h.pwrite(data, 0)
                expect[off:off + length] = data
                h.zero(5000, 10000)
                expect[off + 10000:off + 15000] = bytes(5000)
                h.zero(3000, length - 3000, nbd.CMD_FLAG_NO_HOLE)
                expect[off + length - 3000:off + length] = bytes(3000)
                expect_error(lambda: h.pwrite(b"x" * 10, length - 5),
                             "ENOSPC", "write past the window of %s" % name)
                expect_error(lambda: h.pread(10, length - 5), "EINVAL",
                             "read past the window of %s" % name)
                check_eq(h.pread(4096, 0), data[:4096], "read back %s" % name)
                check_eq(h.pread(3000, length - 3000), bytes(3000),
                         "zeroes at the end of %s" % name)
                h.shutdown()
        with open(img, "rb") as f:
            got = f.read()
        check_eq(len(got), size, "image size")
        if got != expect:
            bad = next(i for i in range(size) if got[i] != expect[i])
            where = [n for n, (o, ln) in windows.items() if o <= bad < o + ln]
            raise AssertionError("image byte %d is wrong (%s)" % (
                bad, "in window %s" % where[0] if where else
                "outside the windows"))


@test
def window_block_status():
    """base:allocation of a window reports the image's holes shifted by
    the offset."""
    with Workdir() as w:
        img = w.file("sparse.img")
        make_image(img, 4 * MiB, [(256 * KiB, pattern(9, 64 * KiB))])
        if file_map(img)[0][2] is not True:
            raise Skip("the file system does not keep holes")
        with Server(img, "-t", "--export=w=%s,offset=192K,size=256K"
                    % img) as s:
            h = handle(s, "w", meta=True)
            seen = []

            def extent(ctx, offset, entries, err):
                for i in range(0, len(entries), 2):
                    seen.append((entries[i], entries[i + 1] & 1))
                return 0
            pos = 0
            while pos < 256 * KiB:
                before = len(seen)
                h.block_status(256 * KiB - pos, pos, extent)
                pos += sum(n for n, _ in seen[before:])
            h.shutdown()
            merged = []
            for n, hole in seen:
                if merged and merged[-1][1] == hole:
                    merged[-1][0] += n
                else:
                    merged.append([n, hole])
            check_eq(merged, [[64 * KiB, 1], [64 * KiB, 0], [128 * KiB, 1]],
                     "extents of the window")
            check_eq(read_file(img, 256 * KiB, 64 * KiB), pattern(9, 64 * KiB),
                     "data")


def first_bytes(s, name):
    h = handle(s, name)
    try:
        return h.pread(4096, 0), h.is_read_only()
    finally:
        h.shutdown()


@test
def empty_name_and_read_only():
    """The empty name reaches the export named "" if there is one, else
    the first; -r makes --export exports read-only too, ro just one."""
    with Workdir() as w:
        a, b, c = w.file("a.img"), w.file("b.img"), w.file("c.img")
        for seed, path in enumerate((a, b, c), 1):
            make_image(path, MiB, [(0, pattern(seed, 4096))])
        a_rw, b_rw = (pattern(1, 4096), False), (pattern(2, 4096), False)
        with Server(b, "-t", "-x", "first", a, "--export=c=%s,ro" % c) as s:
            check_eq(first_bytes(s, ""), a_rw, "'' with -x first")
            check_eq(first_bytes(s, "first"), a_rw, "first")
            check_eq(first_bytes(s, "b.img"), b_rw, "b.img")
            check_eq(first_bytes(s, "c"), (pattern(3, 4096), True), "c")
            h = handle(s, "c")
            expect_error(lambda: h.pwrite(b"x", 0), "EPERM", "write to c")
            h.shutdown()
        with Server(None, "-t", "--export=a=%s" % a, "--export=b=%s" % b) \
                as s:
            check_eq(first_bytes(s, ""), a_rw, "'' with --export only")
        with Server(None, "-t", "--export=a=%s" % a, "--export==%s" % b) \
                as s:
            check_eq(first_bytes(s, ""), b_rw, "'' with an export named ''")
        with Server(a, "-t", "-r", "--export=b=%s" % b) as s:
            for name in ("", "b"):
                h = handle(s, name)
                assert h.is_read_only(), "%r is writable under -r" % name
                expect_error(lambda: h.pwrite(b"x", 0), "EPERM",
                             "write to %r under -r" % name)
                h.shutdown()
        check_eq(read_file(a, 0, 4096) + read_file(b, 0, 4096),
                 pattern(1, 4096) + pattern(2, 4096), "images after -r")


def usage_error(*args):
    """rawnbd ARGS is bad usage: status 2, one line on stderr."""
    out = subprocess.run([RAWNBD] + list(args), capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and len(lines) == 1 and \
        lines[0].startswith("rawnbd: "), \
        "rawnbd %s: status %d, stderr %r" % (" ".join(args), out.returncode,
                                             out.stderr)


@test
def duplicate_names_refused():
    with Workdir() as w:
        a, b = w.file("a.img"), w.file("b.img")
        os.mkdir(w.file("d"))
        for path in (a, b, w.file("d/b.img")):
            make_image(path, MiB)
        sock = w.file("s.sock")
        usage_error("-k", sock, "-x", "b", a, "--export=b=%s" % b)
        usage_error("-k", sock, a, w.file("d/b.img"), "--export=b.img=%s" % a)
        usage_error("-k", sock, a, "--export==%s" % b)
        usage_error("-k", sock, "--export==%s" % a, "--export==%s" % b)
        usage_error("-k", sock, "--export=b=%s,ro" % a, "--export=b=%s" % a)
        assert not os.path.exists(sock), "socket made despite bad usage"


if __name__ == "__main__":
    run()
