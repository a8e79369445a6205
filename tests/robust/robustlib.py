"""robustlib: what the robustness tests share on top of tests/interop.

The TAP runner, the Server class, images and the raw-socket client come
from tests/interop (harness.py, nbdraw.py); this module adds:

- choosing the binary: the one meson gives (RAWNBD), or a sanitizer or
  fault-injection build next to it when that one is up to date;
- a well-behaved libnbd client running in a child process (goodclient.py)
  whose progress is watched;
- reading a process's memory use, the fd limit, a server on both a unix
  socket and a TCP port.
"""

import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "interop"))

import harness  # noqa: E402
import nbdraw  # noqa: E402
from harness import Server, Skip, diag, free_port  # noqa: E402

# libnbd's Python binding is installed for the system interpreter.
SYSTEM_PYTHON = "/usr/bin/python3"
MiB = 1 << 20

_SOURCE_DIRS = ("server", "coro", "proto")


def _newest_source_mtime(root):
    newest = 0.0
    for d in _SOURCE_DIRS:
        top = os.path.join(root, d)
        for dirpath, _, names in os.walk(top):
            for n in names:
                if n.endswith((".c", ".h", ".S", ".build")):
                    newest = max(newest,
                                 os.stat(os.path.join(dirpath, n)).st_mtime)
    return newest


def _source_root():
    root = os.environ.get("RAWNBD_SOURCE_ROOT")
    if root:
        return root
    return os.path.dirname(os.path.dirname(HERE))


def is_sanitized(path):
    """Built with AddressSanitizer?"""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def has_faults(path):
    """A fault-injection build (-Dfault_injection=true)?"""
    try:
        out = subprocess.run([path, "-V"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "fault injection" in out


def _fresh_sibling(name):
    """SOURCE_ROOT/NAME/server/rawnbd if it was linked after the last change
    to the server's sources (so it is not a stale build), else None."""
    root = _source_root()
    path = os.path.join(root, name, "server", "rawnbd")
    if not os.access(path, os.X_OK):
        return None
    if os.stat(path).st_mtime < _newest_source_mtime(root):
        return None
    return path


def use_binary(asan=False, faults=False):
    """Point harness.RAWNBD at the binary to test and return it.

    RAWNBD_ROBUST overrides everything.  Otherwise RAWNBD (from meson) is
    used, unless it lacks what is asked for: then build-asan/ (ASan+UBSan
    and fault injection, see build.sh) is used if it is up to date.  With
    @faults and no fault-injection build at all, the test is skipped;
    a missing ASan build only means testing without sanitizers.
    """
    chosen = os.environ.get("RAWNBD_ROBUST") or harness.RAWNBD
    if not os.environ.get("RAWNBD_ROBUST"):
        wants_asan = asan and not is_sanitized(chosen)
        wants_faults = faults and not has_faults(chosen)
        if wants_asan or wants_faults:
            for sib in ("build-asan", "build-fault"):
                cand = _fresh_sibling(sib)
                if not cand:
                    continue
                if wants_faults and not has_faults(cand):
                    continue
                if wants_asan and not is_sanitized(cand) and not wants_faults:
                    continue
                chosen = cand
                break
    if faults and not has_faults(chosen):
        raise Skip("no up-to-date fault-injection build (RAWNBD is not one; "
                   "build-asan/ is missing or older than the sources)")
    harness.RAWNBD = chosen
    diag("binary: %s%s%s" % (chosen,
                              " (ASan+UBSan)" if is_sanitized(chosen) else "",
                              " (fault injection)" if faults else ""))
    return chosen


def raise_nofile(want=None):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status(pid):
    """VmRSS and VmHWM of @pid in bytes."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


class RssSampler:
    """Samples a process's VmRSS in a thread; .peak is the largest seen
    (VmHWM from the kernel is checked as well, at stop())."""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.hwm = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                st = proc_status(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, st.get("VmRSS", 0))
            self.hwm = max(self.hwm, st.get("VmHWM", 0))
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._t.join(5)
        try:
            st = proc_status(self.pid)
            self.peak = max(self.peak, st.get("VmRSS", 0))
            self.hwm = max(self.hwm, st.get("VmHWM", 0))
        except OSError:
            pass
        return max(self.peak, self.hwm)


def dual_server(image, *args, env=None):
    """A Server listening on a unix socket and on a free 127.0.0.1 port."""
    last = None
    for _ in range(5):
        port = free_port()
        try:
            s = Server(image, "-b", "127.0.0.1", "-p", str(port), *args,
                       env=env)
        except AssertionError as e:
            last = e
            continue
        s.port = port
        s.tcp_address = ("127.0.0.1", port)
        return s
    raise last


class GoodClient:
    """goodclient.py in a child process: libnbd writes, reads back and
    verifies, flushes and zeroes in a loop on @uri, printing a line per
    round.  stop() ends it and checks it never failed or stalled."""

    def __init__(self, uri, size, seed, name, stall_limit=15.0):
        self.name = name
        self.uri = uri
        self.stall_limit = stall_limit
        self.rounds = 0
        self.worst_gap = 0.0
        self.failure = None
        self.lines = []
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, os.path.join(HERE, "goodclient.py"), uri,
             str(size), str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self._last = time.monotonic()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()

    def _watch(self):
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            r, _, _ = select.select([fd], [], [], 1.0)
            now = time.monotonic()
            if not r:
                gap = now - self._last
                self.worst_gap = max(self.worst_gap, gap)
                if gap > self.stall_limit and self.failure is None:
                    self.failure = "no progress for %.1f s" % gap
                continue
            b = os.read(fd, 65536)
            if not b:
                return
            buf += b
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.decode(errors="replace")
                self.worst_gap = max(self.worst_gap, now - self._last)
                self._last = now
                if line.startswith("ok "):
                    self.rounds = int(line.split()[1])
                else:
                    self.lines.append(line)
                    if line.startswith("FAIL") and self.failure is None:
                        self.failure = line

    def check_alive(self):
        assert self.failure is None, "%s: %s" % (self.name, self.failure)
        assert self.proc.poll() is None, "%s exited early: %s" % (
            self.name, "\n".join(self.lines[-20:]))

    def stop(self, timeout=30):
        """Ask it to finish its round and disconnect; assert all was well."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("%s did not finish within %d s of being "
                                 "asked" % (self.name, timeout))
        self._t.join(5)
        assert self.failure is None, "%s: %s" % (self.name, self.failure)
        assert rc == 0, "%s exited with %d: %s" % (
            self.name, rc, "\n".join(self.lines[-20:]))
        assert self.rounds > 0, "%s: no round completed" % self.name
        return self.rounds

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


# ---- client byte streams, built without a server ------------------------

def opt_bytes(opt, data=b"", length=None, magic=None):
    return struct.pack(">QII", nbdraw.IHAVEOPT if magic is None else magic,
                       opt, len(data) if length is None else length) + data


def req_bytes(cmd, offset=0, length=0, flags=0, payload=b"", cookie=1,
              extended=False):
    if extended:
        return struct.pack(">IHHQQQ", nbdraw.EXT_REQUEST_MAGIC, flags, cmd,
                           cookie, offset, length) + payload
    return struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, flags, cmd, cookie,
                       offset, length) + payload


def session_stream(requests, extended=False, name=b"", export_name=False):
    """Client flags, the usual options and GO (or EXPORT_NAME), then
    @requests: the bytes a real client sends for a whole session."""
    n = nbdraw
    out = struct.pack(">I", n.FLAG_C_FIXED_NEWSTYLE | n.FLAG_C_NO_ZEROES)
    if export_name:
        return out + opt_bytes(n.OPT_EXPORT_NAME, name) + b"".join(requests)
    out += opt_bytes(n.OPT_EXTENDED_HEADERS if extended
                     else n.OPT_STRUCTURED_REPLY)
    q = b"base:allocation"
    meta = struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(q))
    out += opt_bytes(n.OPT_SET_META_CONTEXT, meta + q)
    out += opt_bytes(n.OPT_GO, n.Client.go_payload(name, (n.INFO_BLOCK_SIZE,)))
    return out + b"".join(requests)
