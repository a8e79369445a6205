#!/usr/bin/python3
"""Extended headers (NBD_OPT_EXTENDED_HEADERS, branch extension-ext-header
of the spec) against the real rawnbd: 32-byte requests and replies,
64-bit lengths, BLOCK_STATUS_EXT and block-status payloads.  No client
installed here speaks them, so this uses the raw client (nbdraw)."""

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Server, Workdir, blocks, check_eq,  # noqa: E402
                     make_image, pattern, read_file, run, test)
from nbdraw import *  # noqa: E402,F401,F403

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MAX_PAYLOAD = 64 * MiB
HZ = STATE_HOLE | STATE_ZERO

# A small image: data [0, 256K), hole [256K, 1M), data [1M, 1M+64K),
# hole to 4M, data [4M-4K, 4M).
SMALL = 4 * MiB
SMALL_DATA = [(0, pattern(1, 256 * KiB)), (MiB, pattern(2, 64 * KiB)),
              (SMALL - 4 * KiB, pattern(3, 4 * KiB))]
SMALL_MAP = [(256 * KiB, 0), (768 * KiB, HZ), (64 * KiB, 0),
             (SMALL - 4 * KiB - MiB - 64 * KiB, HZ), (4 * KiB, 0)]


def small_image(w):
    path = w.file("small.img")
    make_image(path, SMALL, SMALL_DATA)
    return path


def expected_bytes(offset, length):
    buf = bytearray(SMALL)
    for off, b in SMALL_DATA:
        buf[off:off + len(b)] = b
    return bytes(buf[offset:offset + length])


def connect_ext(s, structured_first):
    """Negotiate extended headers, alone (as libnbd >= 1.18 and qemu >= 8.2
    do) or after STRUCTURED_REPLY.  Most tests negotiate both so that a
    bug in the extended-only path (see read_extended_only) does not hide
    everything else."""
    c = s.client()
    c.handshake()
    if structured_first:
        check_eq(c.negotiate_structured(), REP_ACK, "STRUCTURED_REPLY")
    check_eq(c.negotiate_extended(), REP_ACK, "EXTENDED_HEADERS")
    t, found = c.meta_context(OPT_SET_META_CONTEXT, b"",
                              (b"base:allocation",))
    check_eq(t, REP_ACK, "SET_META_CONTEXT after EXTENDED_HEADERS")
    check_eq(c.go(), REP_ACK, "GO")
    return c


def assert_err(r, err, what):
    assert r.error == err, "%s: expected %s, got %s (%r)" % (
        what, err_name(err), err_name(r.error), r)
    assert r.chunks[0].kind == "extended", "%s: %s reply" % (
        what, r.chunks[0].kind)
    assert r.message, "%s: error chunk without a message" % what


@test
def flags_advertised():
    with Workdir() as w, Server(small_image(w), "-t") as s:
        for sr in (False, True):
            with connect_ext(s, sr) as c:
                assert c.tflags & TF_BLOCK_STATUS_PAYLOAD, \
                    "BLOCK_STATUS_PAYLOAD not advertised (SR first: %s)" % sr
                assert c.tflags & TF_SEND_DF, "DF not advertised (SR: %s)" % sr
        with s.connect() as c:
            assert not c.tflags & TF_BLOCK_STATUS_PAYLOAD, \
                "BLOCK_STATUS_PAYLOAD advertised without extended headers"
        # INFO reports the flags this connection would get.
        with s.client() as c:
            c.handshake()
            c.go(opt=OPT_INFO)
            assert not c.info["tflags"] & TF_BLOCK_STATUS_PAYLOAD, \
                "INFO before EXTENDED_HEADERS shows BLOCK_STATUS_PAYLOAD"
            c.negotiate_extended()
            c.go(opt=OPT_INFO)
            assert c.info["tflags"] & TF_BLOCK_STATUS_PAYLOAD, \
                "INFO after EXTENDED_HEADERS lacks BLOCK_STATUS_PAYLOAD"


@test
def structured_reply_after_extended_refused():
    with Workdir() as w, Server(small_image(w)) as s, s.client() as c:
        c.handshake()
        check_eq(c.negotiate_extended(), REP_ACK, "EXTENDED_HEADERS")
        t = c.option_final(OPT_STRUCTURED_REPLY)
        check_eq(rep_name(t), rep_name(REP_ERR_EXT_HEADER_REQD),
                 "STRUCTURED_REPLY after EXTENDED_HEADERS")
        check_eq(c.go(), REP_ACK, "GO")
        r = c.read(0, 4096)
        check_eq(r.chunks[0].kind, "extended", "reply style")


def check_reads(c, what):
    """Small and large reads, with and without DF, over data and holes."""
    for off, length, flags in ((0, 4096, 0), (100, 1000, 0),
                               (0, 2 * MiB, 0), (0, 2 * MiB, CMD_FLAG_DF),
                               (200 * KiB, MiB, 0), (SMALL - 8192, 8192, 0)):
        r = c.read(off, length, flags)
        check_eq(r.error, 0, "%s: READ %d+%d flags %d" % (what, off, length,
                                                          flags))
        assert r.data == expected_bytes(off, length), \
            "%s: wrong data for READ %d+%d" % (what, off, length)
        for ch in r.chunks:
            check_eq((ch.kind, ch.offset), ("extended", off),
                     "%s: chunk header of READ %d+%d" % (what, off, length))
    # A big read over holes is sent as data and hole chunks.
    r = c.read(0, 2 * MiB)
    check_eq(r.holes, [(256 * KiB, 768 * KiB), (MiB + 64 * KiB,
                                                 MiB - 64 * KiB)],
             "%s: hole chunks" % what)


@test
def read_extended_only():
    with Workdir() as w, Server(small_image(w)) as s, \
            connect_ext(s, structured_first=False) as c:
        check_reads(c, "EXTENDED_HEADERS alone")


@test
def read_structured_then_extended():
    with Workdir() as w, Server(small_image(w)) as s, \
            connect_ext(s, structured_first=True) as c:
        check_reads(c, "STRUCTURED_REPLY then EXTENDED_HEADERS")


@test
def read_64bit_length():
    """The length field is 64 bits: a READ whose low 32 bits look small
    must fail as too large, not be truncated."""
    with Workdir() as w, Server(small_image(w)) as s, \
            connect_ext(s, True) as c:
        r = c.read(0, (1 << 32) + 4096)
        assert_err(r, EINVAL, "READ of 4 GiB + 4 KiB")
        r = c.read(0, MAX_PAYLOAD + 1)
        assert_err(r, EINVAL, "READ of 64 MiB + 1")
        r = c.read(SMALL - 4096, 8192)
        assert_err(r, EINVAL, "READ past the end")
        check_eq(r.chunks[0].type, TYPE_ERROR, "error chunk type")
        r = c.read(0, 4096)
        check_eq(r.data, expected_bytes(0, 4096), "READ after the errors")


@test
def write_needs_payload_len():
    with Workdir() as w, Server(small_image(w)) as s, \
            connect_ext(s, True) as c:
        data = pattern(9, 8192)
        r = c.request(CMD_WRITE, 8192, len(data),
                      CMD_FLAG_PAYLOAD_LEN | CMD_FLAG_FUA, data)
        check_eq(r.error, 0, "WRITE with PAYLOAD_LEN")
        check_eq(r.chunks[0].type, TYPE_NONE, "success chunk type")
        check_eq(c.read(8192, 8192).data, data, "data written")
        # Without PAYLOAD_LEN the length is an effect length: no payload
        # follows, the request is invalid, and the stream stays framed.
        r = c.request(CMD_WRITE, 0, 4096, 0)
        assert_err(r, EINVAL, "WRITE without PAYLOAD_LEN")
        check_eq(c.read(0, 4096).data, expected_bytes(0, 4096),
                 "data under the refused WRITE")
        # An oversize payload is drained (or the connection dropped; the
        # spec allows both): rawnbd drains and fails it.
        big = b"\xab" * (MAX_PAYLOAD + 1)
        r = c.request(CMD_WRITE, 0, len(big), CMD_FLAG_PAYLOAD_LEN, big)
        assert_err(r, EINVAL, "WRITE of 64 MiB + 1")
        check_eq(c.read(0, 4096).data, expected_bytes(0, 4096),
                 "data after the oversize WRITE")
        # A payload on a command that takes none is drained too.
        r = c.request(CMD_TRIM, 0, 16, CMD_FLAG_PAYLOAD_LEN, b"p" * 16)
        assert_err(r, EINVAL, "TRIM with a payload")
        r = c.request(CMD_READ, 0, 16, CMD_FLAG_PAYLOAD_LEN, b"p" * 16)
        assert_err(r, EINVAL, "READ with a payload")
        check_eq(c.read(0, 4096).data, expected_bytes(0, 4096),
                 "data after payloads on TRIM and READ")


@test
def other_commands():
    with Workdir() as w:
        path = small_image(w)
        with Server(path) as s, connect_ext(s, True) as c:
            for cmd, off, length, flags in (
                    (CMD_FLUSH, 0, 0, 0), (CMD_FLUSH, 0, 0, CMD_FLAG_FUA),
                    (CMD_CACHE, 0, SMALL, 0),
                    (CMD_WRITE_ZEROES, 4096, 4096, CMD_FLAG_NO_HOLE),
                    (CMD_WRITE_ZEROES, 8192, 4096, CMD_FLAG_FAST_ZERO),
                    (CMD_TRIM, MiB, 64 * KiB, CMD_FLAG_FUA)):
                r = c.request(cmd, off, length, flags)
                check_eq(r.error, 0, "command %d flags %d" % (cmd, flags))
                check_eq([(ch.kind, ch.type, ch.flags) for ch in r.chunks],
                         [("extended", TYPE_NONE, REPLY_FLAG_DONE)],
                         "reply to command %d" % cmd)
            check_eq(c.read(4096, 8192).data, bytes(8192), "zeroed range")
            r = c.request(CMD_WRITE_ZEROES, SMALL, 4096)
            assert_err(r, ENOSPC, "WRITE_ZEROES past the end")
            r = c.request(CMD_TRIM, SMALL - 4096, 8192)
            assert_err(r, EINVAL, "TRIM past the end")
        check_eq(read_file(path, MiB, 64 * KiB), bytes(64 * KiB),
                 "trimmed range in the file")


@test
def block_status_ext():
    with Workdir() as w, Server(small_image(w)) as s, \
            connect_ext(s, True) as c:
        r = c.request(CMD_BLOCK_STATUS, 0, SMALL)
        check_eq(r.status_types, [TYPE_BLOCK_STATUS_EXT], "status chunk types")
        check_eq(r.extents[c.contexts["base:allocation"]], SMALL_MAP,
                 "extents of the whole image")
        check_eq(c.block_status(300 * KiB, 100 * KiB), [(100 * KiB, HZ)],
                 "extents inside a hole")
        check_eq(c.block_status(0, SMALL, CMD_FLAG_REQ_ONE),
                 [(256 * KiB, 0)], "REQ_ONE")
        r = c.request(CMD_BLOCK_STATUS, SMALL, 4096)
        assert_err(r, EINVAL, "BLOCK_STATUS past the end")


@test
def block_status_payload():
    with Workdir() as w, Server(small_image(w)) as s, \
            connect_ext(s, True) as c:
        cid = c.contexts["base:allocation"]

        def bs(offset, payload, flags=0):
            return c.request(CMD_BLOCK_STATUS, offset, len(payload),
                             CMD_FLAG_PAYLOAD_LEN | flags, payload)

        r = bs(0, struct.pack(">QI", SMALL, cid))
        check_eq(r.error, 0, "BLOCK_STATUS with a payload")
        check_eq(r.extents.get(cid), SMALL_MAP, "extents")
        r = bs(MiB, struct.pack(">QI", 16 * KiB, cid))
        check_eq(r.extents.get(cid), [(16 * KiB, 0)],
                 "extents limited by the effect length")
        for payload, what in (
                (struct.pack(">QI", SMALL, cid + 1000), "unknown context id"),
                (struct.pack(">QII", SMALL, cid, cid), "duplicate context id"),
                (struct.pack(">QI", 0, cid), "effect length 0"),
                (struct.pack(">QI", SMALL, cid)[:9], "9-byte payload"),
                (struct.pack(">Q", SMALL), "no context id"),
                (b"x" * 4000, "4000-byte payload")):
            r = bs(0, payload)
            assert_err(r, EINVAL, "BLOCK_STATUS payload: %s" % what)
        r = bs(SMALL, struct.pack(">QI", 4096, cid))
        assert_err(r, EINVAL, "BLOCK_STATUS payload past the end")
        check_eq(c.block_status(0, MiB), SMALL_MAP[:2],
                 "BLOCK_STATUS after the payload errors")


@test
def beyond_4gib():
    """TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS with 64-bit lengths on a
    sparse 10 GiB image."""
    with Workdir() as w:
        path = w.file("big.img")
        size = 10 * GiB
        data = [(0, pattern(1, MiB)), (3 * GiB, pattern(2, MiB)),
                (9 * GiB, pattern(4, MiB))]
        make_image(path, size, data)
        with Server(path) as s, connect_ext(s, True) as c:
            check_eq(c.block_status(MiB, 6 * GiB),
                     [(3 * GiB - MiB, HZ), (MiB, 0), (3 * GiB, HZ)],
                     "extents of a 6 GiB BLOCK_STATUS")
            check_eq(c.block_status(3 * GiB + MiB, size - 3 * GiB - MiB),
                     [(6 * GiB - MiB, HZ), (MiB, 0), (GiB - MiB, HZ)],
                     "extents after 3 GiB (a 6 GiB hole in one descriptor)")
            r = c.request(CMD_CACHE, 0, size)
            check_eq(r.error, 0, "CACHE of 10 GiB")
            # Zero 0..6 GiB (holes allowed): the data at 0 and 3 GiB go.
            r = c.request(CMD_WRITE_ZEROES, 0, 6 * GiB)
            check_eq(r.error, 0, "WRITE_ZEROES of 6 GiB")
            for off in (0, 3 * GiB):
                check_eq(c.read(off, 4096).data, bytes(4096),
                         "data at %d GiB after WRITE_ZEROES" % (off // GiB))
            check_eq(c.read(9 * GiB, 4096).data, pattern(4, 4096),
                     "data at 9 GiB (outside the zeroed range)")
            check_eq(c.block_status(0, 8 * GiB), [(8 * GiB, HZ)],
                     "extents after WRITE_ZEROES")
            r = c.request(CMD_TRIM, 4 * GiB, 6 * GiB)
            check_eq(r.error, 0, "TRIM of 6 GiB")
            check_eq(c.read(9 * GiB, 4096).data, bytes(4096),
                     "data at 9 GiB after TRIM")
            r = c.request(CMD_WRITE_ZEROES, 4 * GiB, 6 * GiB + 1)
            assert_err(r, ENOSPC, "WRITE_ZEROES of 6 GiB + 1 past the end")
        assert blocks(path) == 0, "%d blocks left allocated" % blocks(path)


@test
def export_name_after_extended_disconnects():
    with Workdir() as w, Server(small_image(w)) as s, s.client() as c:
        c.handshake()
        check_eq(c.negotiate_extended(), REP_ACK, "EXTENDED_HEADERS")
        c.send_option(OPT_EXPORT_NAME, b"")
        check_eq(c.wait_closed(), b"", "reply to EXPORT_NAME")


@test
def compact_magic_after_extended_disconnects():
    with Workdir() as w, Server(small_image(w)) as s, \
            connect_ext(s, True) as c:
        # 32 bytes, but with the compact request magic.
        c.send_request(CMD_READ, 0, 512, magic=REQUEST_MAGIC)
        check_eq(c.wait_closed(), b"", "reply to a compact request magic")


@test
def disconnect_extended():
    with Workdir() as w, Server(small_image(w)) as s, \
            connect_ext(s, True) as c:
        cookies = [c.send_request(CMD_READ, i * MiB, MiB) for i in range(4)]
        c.send_request(CMD_DISC)
        c.send_request(CMD_READ, 0, 4096)
        for i, ck in enumerate(cookies):
            r = c.reply(ck)
            assert r.data == expected_bytes(i * MiB, MiB), "READ %d" % i
        check_eq(c.wait_closed(), b"", "bytes after DISC")


if __name__ == "__main__":
    run()
