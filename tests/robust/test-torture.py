#!/usr/bin/python3
"""Socket-level torture: thousands of mutated handshakes and request
streams, and clients hanging up at every byte, sent to the real binary
over a unix socket and TCP, while two well-behaved libnbd clients (one on
each transport, each on an export of its own) keep writing, reading back
and verifying.  At the end SIGTERM must stop the server with status 0
within a bound, and its log must hold no sanitizer report.  The
ASan+UBSan build is used when it is up to date (robustlib.use_binary).

Deterministic: ROBUST_SEED (default below) seeds everything; a failing
case prints the seed and its number, and ROBUST_TORTURE_ONLY=N runs that
case alone.  ROBUST_TORTURE_CASES sets how many mutated streams to send.
"""

import concurrent.futures
import os
import random
import select
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from robustlib import (MiB, GoodClient, diag, dual_server,  # noqa: E402
                       opt_bytes, req_bytes, session_stream, use_binary)
from harness import Workdir, make_image, pattern, run, test  # noqa: E402
from nbdraw import *  # noqa: E402,F401,F403

SEED = int(os.environ.get("ROBUST_SEED", "1122334455"))
CASES = int(os.environ.get("ROBUST_TORTURE_CASES", "20000"))
INFLIGHT_CASES = max(CASES // 50, 50)
ONLY = os.environ.get("ROBUST_TORTURE_ONLY")
WORKERS = 4
TORTURE_SIZE = 4 * MiB
GOOD_SIZE = 16 * MiB
CORPUS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "fuzz", "corpus", "conn")

# A client waits this long for the server to close after its own EOF.
CLOSE_BOUND = 10.0
# Sending may make no progress for this long (we drain replies meanwhile).
SEND_STALL = 8.0
# SIGTERM to exit, with stalled clients still connected.
EXIT_BOUND = 8.0


class CaseFailure(Exception):
    pass


# ---- streams -----------------------------------------------------------------

def every_command(extended):
    """Requests for every command, in a session that negotiated SR/EH."""
    pf = CMD_FLAG_PAYLOAD_LEN if extended else 0
    data = pattern(5, 4096)
    reqs = [
        req_bytes(CMD_WRITE, 8192, 4096, pf, data, 1, extended),
        req_bytes(CMD_READ, 8192, 4096, 0, b"", 2, extended),
        req_bytes(CMD_READ, 0, 256 * 1024, 0, b"", 3, extended),
        req_bytes(CMD_BLOCK_STATUS, 0, MiB, 0, b"", 4, extended),
        req_bytes(CMD_WRITE_ZEROES, 65536, 8192, CMD_FLAG_NO_HOLE, b"", 5,
                  extended),
        req_bytes(CMD_TRIM, 131072, 65536, 0, b"", 6, extended),
        req_bytes(CMD_CACHE, 0, 65536, 0, b"", 7, extended),
        req_bytes(CMD_FLUSH, 0, 0, 0, b"", 8, extended),
        req_bytes(CMD_WRITE, 0, 512, CMD_FLAG_FUA | pf, data[:512], 9,
                  extended),
        req_bytes(CMD_DISC, 0, 0, 0, b"", 10, extended),
    ]
    return reqs


def canonical_streams():
    """Whole sessions as real clients send them."""
    compact = session_stream(every_command(False))
    ext = session_stream(every_command(True), extended=True)
    old = session_stream([req_bytes(CMD_READ, 0, 4096),
                          req_bytes(CMD_WRITE, 4096, 512, 0, bytes(512), 2),
                          req_bytes(CMD_DISC, cookie=3)], export_name=True)
    info = (struct.pack(">I", FLAG_C_FIXED_NEWSTYLE) +
            opt_bytes(OPT_LIST) +
            opt_bytes(OPT_INFO, Client.go_payload(b"", (INFO_NAME,))) +
            opt_bytes(OPT_LIST_META_CONTEXT,
                      struct.pack(">II", 0, 0)) +
            opt_bytes(OPT_ABORT))
    return [("compact", compact), ("extended", ext), ("export-name", old),
            ("info-list-abort", info)]


def corpus_streams():
    """The fuzz corpus' captures of real clients and hand-made seeds
    (their first two bytes steer the fuzz harness and are dropped)."""
    out = []
    try:
        names = sorted(os.listdir(CORPUS))
    except OSError:
        return out
    for name in names:
        if name.startswith(("client-", "seed-")):
            with open(os.path.join(CORPUS, name), "rb") as f:
                data = f.read()[2:]
            if data:
                out.append((name, data))
    return out


INTERESTING32 = (0, 1, 0x7F, 0x80, 0xFF, 0x1000, 0xFFFF, 0x10000, 0x10001,
                 1 << 20, (1 << 20) + 1, 0x3FFFFFF, 64 * MiB, 64 * MiB + 1,
                 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF)
INTERESTING64 = (0, 1 << 32, (1 << 32) + 4096, 1 << 40, 1 << 62, 1 << 63,
                 (1 << 64) - 1, TORTURE_SIZE, TORTURE_SIZE - 1)
MAGICS = (struct.pack(">Q", IHAVEOPT), struct.pack(">I", REQUEST_MAGIC),
          struct.pack(">I", EXT_REQUEST_MAGIC))


def find_all(data, needle):
    out, i = [], data.find(needle)
    while i >= 0:
        out.append(i)
        i = data.find(needle, i + 1)
    return out


def mutate_request_field(rng, data, p, extended):
    """Change one field of the request header at @p."""
    field = rng.choice(("flags", "type", "offset", "length"))
    if field == "flags":
        data[p + 4:p + 6] = struct.pack(">H", rng.randrange(1 << 16))
    elif field == "type":
        data[p + 6:p + 8] = struct.pack(">H", rng.randrange(12))
    elif field == "offset":
        data[p + 16:p + 24] = struct.pack(">Q", rng.choice(INTERESTING64))
    elif extended:
        data[p + 24:p + 32] = struct.pack(">Q", rng.choice(INTERESTING64))
    else:
        data[p + 24:p + 28] = struct.pack(">I", rng.choice(INTERESTING32))


def mutate(rng, data, others):
    """One random mutation of bytearray @data (in place or replaced)."""
    kind = rng.randrange(11)
    n = len(data)
    if kind == 0 and n:                             # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1 and n:                           # random bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(n)] = rng.randrange(256)
    elif kind == 2:                                 # insertion
        i = rng.randint(0, n)
        data[i:i] = rng.randbytes(rng.choice((1, 2, 4, 8, 28, 100)))
    elif kind == 3 and n:                           # deletion
        i = rng.randrange(n)
        del data[i:i + rng.randint(1, 32)]
    elif kind == 4 and n:                           # truncation
        del data[rng.randrange(n):]
    elif kind == 5 and n:                           # duplication
        i = rng.randrange(n)
        chunk = data[i:i + rng.randint(1, 64)]
        j = rng.randint(0, n)
        data[j:j] = chunk
    elif kind == 6:                                 # splice
        other = rng.choice(others)
        i = rng.randint(0, n)
        j = rng.randint(0, len(other))
        data[i:] = other[j:]
    elif kind in (7, 8):                            # a field after a magic
        spots = [(m, p) for m in MAGICS for p in find_all(data, m)]
        if not spots:
            return mutate(rng, data, others)
        magic, p = rng.choice(spots)
        if magic == struct.pack(">Q", IHAVEOPT):
            if rng.random() < 0.5:                  # option number
                v = rng.choice((rng.randrange(0, 16), rng.randrange(1 << 32),
                                0x80000000 | rng.randrange(8)))
                data[p + 8:p + 12] = struct.pack(">I", v)
            else:                                   # option length
                data[p + 12:p + 16] = struct.pack(">I",
                                                  rng.choice(INTERESTING32))
        else:
            mutate_request_field(rng, data, p,
                                 magic == struct.pack(">I",
                                                      EXT_REQUEST_MAGIC))
    elif kind == 9:                                 # a wrong magic
        spots = [(m, p) for m in MAGICS for p in find_all(data, m)]
        if not spots:
            return mutate(rng, data, others)
        magic, p = rng.choice(spots)
        repl = rng.choice([m for m in MAGICS if len(m) == len(magic)
                           and m != magic] + [rng.randbytes(len(magic))])
        data[p:p + len(magic)] = repl
    elif kind == 10 and n >= 4:                     # any 32-bit field
        i = rng.randrange(n - 3)
        data[i:i + 4] = struct.pack(">I", rng.choice(INTERESTING32))
    return data


# ---- one client ----------------------------------------------------------------

def connect(address):
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(address)
    s.setblocking(False)
    return s


def hang_up(s, rst):
    if rst:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
    s.close()


def pump(s, data, fragment_rng=None):
    """Send @data while draining whatever the server sends.  Returns the
    number of bytes sent before the server closed (all of them normally);
    raises CaseFailure if sending makes no progress for SEND_STALL s."""
    sent = 0
    last = time.monotonic()
    while sent < len(data):
        left = SEND_STALL - (time.monotonic() - last)
        if left <= 0:
            raise CaseFailure("sending stalled at byte %d of %d for %.0f s "
                              "(replies were drained meanwhile)"
                              % (sent, len(data), SEND_STALL))
        r, w, _ = select.select([s], [s], [], left)
        if r:
            try:
                b = s.recv(1 << 20)
            except BlockingIOError:
                b = None
            except ConnectionResetError:
                b = b""
            if b == b"":
                return sent
        if w:
            chunk = data[sent:sent + (1 << 20)]
            if fragment_rng:
                chunk = chunk[:fragment_rng.randint(1, 7)]
            try:
                n = s.send(chunk)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return sent
            sent += n
            last = time.monotonic()
            if fragment_rng and fragment_rng.random() < 0.05:
                time.sleep(0.001)
    return sent


def drain_until_closed(s, bound):
    """After our EOF, the server must close within @bound seconds."""
    deadline = time.monotonic() + bound
    got = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CaseFailure("server still had the connection open %.0f s "
                              "after the client's EOF (%d bytes received)"
                              % (bound, got))
        r, _, _ = select.select([s], [], [], left)
        if not r:
            continue
        try:
            b = s.recv(1 << 20)
        except ConnectionResetError:
            return
        except BlockingIOError:
            continue
        if not b:
            return
        got += len(b)


def play(address, data, mode, rng):
    s = connect(address)
    try:
        if mode == "prefix":
            data = data[:rng.randint(0, len(data))]
        pump(s, data, rng if mode == "fragments" else None)
        if mode in ("eof-wait", "fragments"):
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass                # the server has closed already
            drain_until_closed(s, CLOSE_BOUND)
            s.close()
        else:
            hang_up(s, mode == "rst")
    except BaseException:
        s.close()
        raise


MODES = (["eof-wait"] * 8 + ["close"] * 5 + ["rst"] * 4 + ["prefix"] * 2 +
         ["fragments"])


def mutated_case(i, seeds, addresses):
    """Case @i: its own generator, so any case can be re-run alone."""
    rng = random.Random(SEED * 1000003 + i)
    name, base = rng.choice(seeds)
    data = bytearray(base)
    others = [d for _, d in seeds]
    steps = rng.randint(1, 4)
    for _ in range(steps):
        data = mutate(rng, data, others)
    mode = rng.choice(MODES)
    address = addresses[i % len(addresses)]
    try:
        play(address, bytes(data), mode, rng)
    except CaseFailure as e:
        return ("case %d (seed %d, from %s, %d mutations, mode %s, %s, "
                "%d bytes: %s%s): %s"
                % (i, SEED, name, steps, mode,
                   "unix" if isinstance(address, str) else "tcp", len(data),
                   bytes(data[:96]).hex(), "..." if len(data) > 96 else "",
                   e))
    except OSError as e:
        return "case %d (seed %d, mode %s): %s" % (i, SEED, mode, e)
    return None


# ---- the test --------------------------------------------------------------------

def run_parallel(jobs, what, goods, limit=5):
    """Run callables returning None or a failure string on WORKERS
    threads; stop at @limit failures or when a good client fails."""
    failures = []
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
        futures = [ex.submit(j) for j in jobs]
        for k, f in enumerate(futures):
            res = f.result()
            if res:
                failures.append(res)
            if k % 200 == 0:
                for g in goods:
                    g.check_alive()
            if len(failures) >= limit:
                for rest in futures:
                    rest.cancel()
                break
    assert not failures, "%s: %d failures (seed %d):\n%s" % (
        what, len(failures), SEED, "\n".join(failures))


def cut_points(n, payload_spans):
    """Every offset up to @n, but only every 97th inside long payloads."""
    out = []
    for k in range(n + 1):
        inside = any(a + 8 < k < b - 8 for a, b in payload_spans)
        if not inside or k % 97 == 0:
            out.append(k)
    return out


def hangup_jobs(addresses):
    """A client hanging up after each byte of whole sessions, with FIN and
    with RST, alternating transports."""
    jobs = []
    big = 1 << 20
    for label, stream in canonical_streams():
        spans = []
        p = stream.find(pattern(5, 4096)[:64])
        if p >= 0:
            spans.append((p, p + 4096))
        for k in cut_points(len(stream), spans):
            for rst in (False, True):
                addr = addresses[(k + rst) % len(addresses)]
                jobs.append(lambda a=addr, d=stream[:k], r=rst, lab=label, kk=k:
                            cut_job(a, d, r, "%s cut at byte %d" % (lab, kk)))
    # Between a request header and its payload, with a large payload.
    for ext in (False, True):
        head = session_stream([req_bytes(CMD_WRITE, 0, big,
                                         CMD_FLAG_PAYLOAD_LEN if ext else 0,
                                         b"", 1, ext)], extended=ext)
        for extra in (0, 1, 4095, 65536, big - 1):
            for rst in (False, True):
                addr = addresses[(extra + rst) % len(addresses)]
                d = head + bytes(extra)
                jobs.append(lambda a=addr, d=d, r=rst, x=extra, e=ext:
                            cut_job(a, d, r, "%s WRITE of 1 MiB cut after "
                                    "%d payload bytes"
                                    % ("extended" if e else "compact", x)))
    return jobs


def cut_job(address, data, rst, what, delay=0):
    try:
        s = connect(address)
        try:
            pump(s, data)
            if delay:
                time.sleep(delay)
        finally:
            hang_up(s, rst)
    except CaseFailure as e:
        return "%s (%s): %s" % (what, "RST" if rst else "FIN", e)
    except OSError as e:
        return "%s: %s" % (what, e)
    return None


def inflight_job(address, i):
    """Many READs (and a few WRITEs), then gone without reading a reply."""
    rng = random.Random(SEED * 7919 + i)
    reqs = []
    for k in range(rng.randint(16, 200)):
        length = rng.choice((4096, 65536, 256 * 1024, MiB))
        off = rng.randrange(0, TORTURE_SIZE - length + 1) & ~4095
        if rng.random() < 0.1:
            reqs.append(req_bytes(CMD_WRITE, off, 4096, 0, bytes(4096), k))
        else:
            reqs.append(req_bytes(CMD_READ, off, length,
                                  rng.choice((0, CMD_FLAG_DF)), b"", k))
    data = session_stream(reqs)
    # Some hang up at once, the others while the server is sending.
    delay = rng.choice((0, 0, 0.001, 0.005, 0.02))
    return cut_job(address, data, rng.random() < 0.5,
                   "in-flight case %d: %d requests, then hang up after "
                   "%.3f s" % (i, len(reqs), delay), delay)


def stalled_clients(addresses):
    """Clients left stalled when SIGTERM comes: after the greeting, half
    an option header, an option promising a payload, in transmission idle,
    half a request header, a WRITE header without its payload."""
    prefixes = [
        b"",
        struct.pack(">I", FLAG_C_FIXED_NEWSTYLE) + opt_bytes(OPT_GO)[:9],
        struct.pack(">I", FLAG_C_FIXED_NEWSTYLE) +
        opt_bytes(OPT_GO, length=1000) + b"x" * 10,
        session_stream([]),
        session_stream([req_bytes(CMD_READ, 0, 4096)[:13]]),
        session_stream([req_bytes(CMD_WRITE, 0, 65536)]),
    ]
    out = []
    for k in range(24):
        s = connect(addresses[k % len(addresses)])
        pump(s, prefixes[k % len(prefixes)])
        out.append(s)
    return out


@test
def torture():
    use_binary(asan=True)
    diag("seed %d, %d mutated cases" % (SEED, CASES))
    seeds = canonical_streams() + corpus_streams()
    diag("%d seed streams (%d from the fuzz corpus)"
         % (len(seeds), len(seeds) - 4))
    with Workdir() as w:
        img = w.file("torture.img")
        make_image(img, TORTURE_SIZE, [(0, pattern(1, TORTURE_SIZE))])
        gu, gt = w.file("good-unix.img"), w.file("good-tcp.img")
        make_image(gu, GOOD_SIZE)
        make_image(gt, GOOD_SIZE)
        s = dual_server(img, "-t", "--export", "wellbehaved-u=" + gu,
                        "--export", "wellbehaved-t=" + gt)
        addresses = [s.sock_path, s.tcp_address]
        if ONLY is not None:
            res = mutated_case(int(ONLY), seeds, addresses)
            assert res is None, res
            check_exit(s, [])
            return
        goods = [
            GoodClient("nbd+unix:///wellbehaved-u?socket=%s" % s.sock_path,
                       GOOD_SIZE, SEED, "libnbd client (unix)"),
            GoodClient("nbd://127.0.0.1:%d/wellbehaved-t" % s.port,
                       GOOD_SIZE, SEED + 1, "libnbd client (TCP)"),
        ]
        try:
            t0 = time.monotonic()
            while any(g.rounds == 0 for g in goods):
                for g in goods:
                    g.check_alive()
                assert time.monotonic() - t0 < 30, \
                    "the libnbd clients did not complete a round in 30 s"
                time.sleep(0.05)
            before = [g.rounds for g in goods]

            t = time.monotonic()
            jobs = hangup_jobs(addresses)
            run_parallel(jobs, "hang-ups", goods)
            diag("%d hang-ups at every byte: %.1f s"
                 % (len(jobs), time.monotonic() - t))

            t = time.monotonic()
            jobs = [lambda i=i: inflight_job(addresses[i % 2], i)
                    for i in range(INFLIGHT_CASES)]
            run_parallel(jobs, "hang-ups with replies in flight", goods)
            diag("%d hang-ups with replies in flight: %.1f s"
                 % (INFLIGHT_CASES, time.monotonic() - t))

            t = time.monotonic()
            jobs = [lambda i=i: mutated_case(i, seeds, addresses)
                    for i in range(CASES)]
            run_parallel(jobs, "mutated streams", goods)
            diag("%d mutated streams: %.1f s" % (CASES,
                                                 time.monotonic() - t))

            for g in goods:
                g.check_alive()
            stalled = stalled_clients(addresses)
            rounds = [g.stop() for g in goods]
            during = [r - b for r, b in zip(rounds, before)]
            diag("libnbd clients: %s rounds (%s during the torture), worst "
                 "gap %s s" % (rounds, during,
                               ["%.2f" % g.worst_gap for g in goods]))
            assert all(during), "a libnbd client made no progress during " \
                "the torture: %s rounds" % during
        finally:
            for g in goods:
                g.kill()
        check_exit(s, stalled)


def check_exit(s, stalled):
    t = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    rc = s.wait_exit(timeout=EXIT_BOUND + 30)
    took = time.monotonic() - t
    s.check_clean_exit(rc)
    assert took < EXIT_BOUND, "exit took %.1f s after SIGTERM (bound %.0f s)" \
        % (took, EXIT_BOUND)
    diag("exit %.2f s after SIGTERM, %d stalled clients connected"
         % (took, len(stalled)))
    for k, c in enumerate(stalled):
        try:
            c.setblocking(True)
            c.settimeout(5)
            while c.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError("stalled client %d still open after exit"
                                 % k)
        finally:
            c.close()


if __name__ == "__main__":
    run()
