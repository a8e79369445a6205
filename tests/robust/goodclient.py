#!/usr/bin/python3
"""A well-behaved libnbd client for the robustness tests.

    goodclient.py URI SIZE SEED

Connects to URI and, round after round, writes a random pattern at a
random place in the first SIZE bytes, reads it back and compares; every
few rounds it also zeroes a block and checks it reads as zeroes, and
flushes.  After each round it prints "ok ROUNDS WORST_SECONDS"; on any
error or wrong data it prints "FAIL ..." and exits 1.  It stops after the
round in progress once its standard input reaches end of file, and then
disconnects cleanly ("done ROUNDS").
"""

import os
import random
import select
import sys
import time

import nbd


def main():
    uri, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    worst = 0.0
    rounds = 0
    block = 4096
    nblocks = size // block
    while True:
        r, _, _ = select.select([sys.stdin], [], [], 0)
        if r and not os.read(sys.stdin.fileno(), 1):
            break
        t0 = time.monotonic()
        n = rng.randint(1, 16)
        first = rng.randrange(0, nblocks - n)
        off = first * block
        data = rng.randbytes(n * block)
        what = "write"
        try:
            h.pwrite(data, off)
            what = "read"
            got = h.pread(len(data), off)
            if got != data:
                print("FAIL round %d: data read at %d (%d bytes) differs "
                      "from what was written" % (rounds, off, len(data)),
                      flush=True)
                return 1
            if rounds % 5 == 4:
                what = "zero"
                h.zero(block, off)
                what = "read after zero"
                if h.pread(block, off) != bytes(block):
                    print("FAIL round %d: block at %d not zero after ZERO"
                          % (rounds, off), flush=True)
                    return 1
            if rounds % 7 == 6:
                what = "flush"
                h.flush()
        except nbd.Error as e:
            print("FAIL round %d: %s at %d: %s" % (rounds, what, off, e),
                  flush=True)
            return 1
        rounds += 1
        worst = max(worst, time.monotonic() - t0)
        print("ok %d %.3f" % (rounds, worst), flush=True)
    try:
        h.shutdown()
    except nbd.Error as e:
        print("FAIL disconnecting: %s" % e, flush=True)
        return 1
    print("done %d worst %.3f s" % (rounds, worst), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
