#!/usr/bin/python3
"""A libnbd writer for the shutdown test.

    writer.py URI ID FIRST_BLOCK NBLOCKS FUA(0|1)

Writes each 4 KiB block of [FIRST_BLOCK, FIRST_BLOCK + NBLOCKS) once, in
random order, 16 writes in flight, with FUA or without.  Block contents:
the writer's ID and the block number, repeated (see expected_block()).
Prints "ack BLOCK" for every write the server acknowledged, then, when
the connection ends, one line "end ..." with what libnbd said, and exits
0 -- or "FAIL ..." and 1 if a write failed with an error reply or libnbd
reported anything but the connection closing (a torn or malformed reply
is a protocol error in libnbd).
"""

import random
import struct
import sys

import nbd

BLOCK = 4096
DEPTH = 16
ESHUTDOWN = 108

# libnbd's words for a connection the server closed, at a message
# boundary: anything else is a failure.
CLOSED_WORDS = ("disconnected", "enotconn", "not connected",
                "connection reset", "broken pipe", "closed", "dead")


def expected_block(writer, block):
    return struct.pack("<QQ", 0x57524954 + writer, block) * (BLOCK // 16)


def closed_error(e):
    # After a graceful stop libnbd says "invalid state: CLOSED".
    text = ("%s %s" % (e.string, e.errno)).lower()
    return any(w in text for w in CLOSED_WORDS) or \
        e.errno in (107, 32, 104, 108)      # ENOTCONN EPIPE ECONNRESET ESHUTDOWN


def main():
    uri, ident, first, count, fua = sys.argv[1:6]
    ident, first, count = int(ident), int(first), int(count)
    flags = nbd.CMD_FLAG_FUA if fua == "1" else 0
    h = nbd.NBD()
    h.connect_uri(uri)
    order = list(range(first, first + count))
    random.Random(ident).shuffle(order)
    inflight = {}
    bufs = {}
    nxt = 0
    end = None
    while end is None:
        try:
            while nxt < len(order) and len(inflight) < DEPTH:
                b = order[nxt]
                nxt += 1
                buf = nbd.Buffer.from_bytearray(
                    bytearray(expected_block(ident, b)))
                ck = h.aio_pwrite(buf, b * BLOCK, flags=flags)
                inflight[ck] = b
                bufs[ck] = buf
            if not inflight:
                end = "all %d written" % count
                break
            h.poll(-1)
        except nbd.Error as e:
            if not closed_error(e):
                print("FAIL libnbd: %s (errno %s)" % (e.string, e.errno),
                      flush=True)
                return 1
            end = "connection ended: %s" % e.string
        for ck, b in list(inflight.items()):
            try:
                done = h.aio_command_completed(ck)
            except nbd.Error as e:
                dead = h.aio_is_dead() or h.aio_is_closed()
                # Never answered, or refused for the shutdown (the spec
                # allows ESHUTDOWN): not acknowledged, not a failure.
                if e.errno != ESHUTDOWN and not (dead and closed_error(e)):
                    print("FAIL write of block %d: %s%s (errno %s)"
                          % (b, "" if dead else "error reply: ", e.string,
                             e.errno), flush=True)
                    return 1
                done = True
            else:
                if done:
                    print("ack %d" % b)
            if done:
                del inflight[ck]
                del bufs[ck]
        sys.stdout.flush()
    print("end %s; %d writes unanswered" % (end, len(inflight)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
