"""harness: TAP output, rawnbd processes and test images for the Python
interop tests.

Each test function is registered with @test and runs in order; a failing
assertion or any exception makes it "not ok" with the traceback and the
tail of every server log as TAP diagnostics.  Servers are started with
Server(...) (a context manager) on a private unix socket or a free
loopback port, and only the process it started is ever signalled; on
leaving the block the server must exit with status 0 and a log free of
sanitizer reports, else the test fails.
"""

import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import nbdraw

try:
    import nbd as libnbd        # libnbd's Python bindings, if installed
except ImportError:
    libnbd = None

RAWNBD = os.environ.get("RAWNBD")

_tests = []
_servers_this_test = []


class Skip(Exception):
    """Raise to skip the running test."""


def test(fn):
    _tests.append(fn)
    return fn


def diag(text):
    for line in str(text).splitlines():
        print("# " + line)
    sys.stdout.flush()


def main():
    """Run the registered tests (or those named on the command line)."""
    wanted = sys.argv[1:]
    tests = [t for t in _tests if not wanted or t.__name__ in wanted]
    if not RAWNBD or not os.access(RAWNBD, os.X_OK):
        print("1..0 # SKIP RAWNBD is not set to the rawnbd executable")
        return 0
    print("1..%d" % len(tests))
    sys.stdout.flush()
    failed = 0
    for i, fn in enumerate(tests, 1):
        name = fn.__name__.replace("_", "-")
        _servers_this_test.clear()
        start = time.monotonic()
        try:
            fn()
        except Skip as e:
            print("ok %d - %s # SKIP %s" % (i, name, e))
        except BaseException as e:  # noqa: B902 - report everything
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print("not ok %d - %s" % (i, name))
            diag(traceback.format_exc())
            for s in _servers_this_test:
                s.kill_if_running()
                diag("--- log of %s ---\n%s" % (s.describe(), s.log_tail()))
        else:
            print("ok %d - %s (%.1f s)" % (i, name,
                                          time.monotonic() - start))
        finally:
            for s in _servers_this_test:
                s.kill_if_running()
                s.cleanup()
        sys.stdout.flush()
    return 1 if failed else 0


def run():
    sys.exit(main())


# ---- processes ----------------------------------------------------------

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "ERROR: ThreadSanitizer",
                   "WARNING: ThreadSanitizer")


def sanitizer_report(text):
    """The first line of a sanitizer report in @text, or None."""
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKS):
            return line
    return None


def free_port():
    """A TCP port that was free a moment ago on 127.0.0.1 (and ::1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One rawnbd process.

    Server(image, "-t", ...) listens on a unix socket in its own temporary
    directory; Server(image, tcp=True) on a free 127.0.0.1 port (or
    bind="::1").  --print-uri is always passed: reading the URI line is
    how we know it listens.  image=None passes no FILE (--export only);
    exe= runs another rawnbd binary; wrapper= is a command line that
    execs the rawnbd command line appended to it.
    """

    def __init__(self, image, *args, tcp=False, bind="127.0.0.1",
                 unix=True, wait=True, env=None, wrapper=(), exe=None):
        self.dir = tempfile.mkdtemp(prefix="rawnbd-srv-")
        self.image = image
        self.args = list(args)
        self.tcp = tcp
        self.bind = bind
        self.proc = None
        self.uri = None
        self.log_path = os.path.join(self.dir, "server.log")
        self.sock_path = None
        self.port = None
        self.returncode = None
        self.wrapper = list(wrapper)    # argv before rawnbd's; must exec it
        self.exe = exe or RAWNBD
        _servers_this_test.append(self)
        if tcp:
            self._start_tcp(env)
        else:
            self.sock_path = os.path.join(self.dir, "nbd.sock")
            self._spawn(["-k", self.sock_path] + self.args, env)
        if wait:
            self.wait_listening()

    def describe(self):
        return "rawnbd %s" % " ".join(self.argv[1:])

    def _spawn(self, extra, env):
        self.argv = [self.exe, "--print-uri"] + extra
        if self.image is not None:      # None: exports from --export only
            self.argv.append(self.image)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.wrapper + self.argv,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=self.log, env=full_env)

    def _start_tcp(self, env):
        for attempt in range(5):
            self.port = free_port()
            self._spawn(["-b", self.bind, "-p", str(self.port)] + self.args,
                        env)
            try:
                self.wait_listening()
                return
            except AssertionError:
                if self.proc.poll() is None or attempt == 4:
                    raise
                # Port taken in between: try another.
                self.log.close()

    def wait_listening(self, timeout=30.0):
        if self.uri:
            return self.uri
        deadline = time.monotonic() + timeout
        line = b""
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(left, 0))
            if not r:
                raise AssertionError("%s: no URI on stdout after %.0f s"
                                     % (self.describe(), timeout))
            b = os.read(fd, 1)
            if not b:
                rc = self.proc.wait()
                raise AssertionError("%s exited with %d before listening: %s"
                                     % (self.describe(), rc,
                                        self.log_tail()))
            line += b
        self.uri = line.decode().strip()
        return self.uri

    @property
    def address(self):
        if self.sock_path:
            return self.sock_path
        return (self.bind, self.port)

    def client(self, **kw):
        return nbdraw.Client(self.address, **kw)

    def connect(self, **kw):
        """A client past the usual negotiation (SR + base:allocation)."""
        c = self.client()
        try:
            return c.connect_export(**kw)
        except BaseException:
            c.close()
            raise

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout=30.0):
        """Wait for the process to exit by itself; returns its status."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s still running after %.0f s"
                                 % (self.describe(), timeout))
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        """Signal the server and wait; returns its exit status."""
        if self.running():
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def check_clean_exit(self, rc=None):
        if rc is None:
            rc = self.returncode
        log = self.log_text()
        report = sanitizer_report(log)
        assert report is None, "sanitizer report in the server log: %s" % (
            report,)
        assert rc == 0, "%s exited with status %s" % (self.describe(), rc)

    def kill_if_running(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=10.0, count=1):
        """Wait until @count lines of the log match the regular expression
        @pattern; returns the matching lines."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log_text().splitlines()
                     if re.search(pattern, line)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError("%d of %d log lines match %r after "
                                     "%.0f s" % (len(found), count, pattern,
                                                 timeout))
            time.sleep(0.02)

    def log_tail(self, lines=40):
        """The end of the log, or a sanitizer report from its start."""
        text = self.log_text().splitlines()
        for i, line in enumerate(text):
            if any(m in line for m in SANITIZER_MARKS):
                return "\n".join(text[max(0, i - 3):i + 60])
        return "\n".join(text[-lines:])

    def cleanup(self):
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        if etype is not None:
            return False
        self.stop()
        self.check_clean_exit()
        return False


# ---- libnbd ---------------------------------------------------------------

def need_libnbd():
    """libnbd's Python module; skips the running test without it."""
    if libnbd is None:
        raise Skip("libnbd's Python bindings (module nbd) are not installed")
    return libnbd


def expect_nbd_error(call, errname, what):
    """call() raises nbd.Error with the errno named @errname ("EPERM":
    the bindings give errno as a name)."""
    try:
        call()
    except libnbd.Error as e:
        check_eq(e.errno, errname, "%s (%s)" % (what, e.string))
    else:
        raise AssertionError("%s succeeded" % what)


# ---- images -----------------------------------------------------------------

class Workdir:
    """A temporary directory for images, removed at the end."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="rawnbd-test-")

    def file(self, name):
        return os.path.join(self.path, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def pattern(seed, length):
    """Deterministic pseudo-random bytes; every 4 KiB block also starts
    with the seed and its block number, so misplaced data shows."""
    base = random.Random(seed).randbytes(4096)
    n = (length + 4095) // 4096
    out = b"".join(struct.pack("<QQ", seed, i) + base[16:] for i in range(n))
    return out[:length]


def make_image(path, size, data=()):
    """A sparse file of @size bytes with data regions [(offset, bytes)];
    everything else is a hole."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, b in data:
            f.seek(off)
            f.write(b)
        f.flush()
        os.fsync(f.fileno())


def file_map(path):
    """The data/hole layout of a file as [(offset, length, is_hole)]."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = size
            if data > pos:
                out.append((pos, data - pos, True))
                pos = data
                continue
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            out.append((pos, hole - pos, False))
            pos = hole
    finally:
        os.close(fd)
    return out


def read_file(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def blocks(path):
    """Allocated 512-byte units of @path."""
    return os.stat(path).st_blocks


def check_eq(actual, expected, what):
    assert actual == expected, "%s: expected %r, got %r" % (what, expected,
                                                           actual)


# ---- TLS credentials ----------------------------------------------------

_PKI_TEMPLATES = {
    "ca": "cn = rawnbd test CA\nca\ncert_signing_key\nexpiration_days = 2\n",
    "server": ("organization = rawnbd tests\ncn = localhost\n"
               "dns_name = localhost\nip_address = 127.0.0.1\n"
               "tls_www_server\nencryption_key\nsigning_key\n"
               "expiration_days = 2\n"),
    "client": ("cn = alice\ntls_www_client\nencryption_key\nsigning_key\n"
               "expiration_days = 2\n"),
}


def _certtool(workdir, *args):
    subprocess.run(["certtool"] + list(args), cwd=workdir, check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


def _make_ca(workdir, name):
    """CA key and certificate NAME-key.pem, NAME-cert.pem in @workdir."""
    with open(os.path.join(workdir, "ca.info"), "w") as f:
        f.write(_PKI_TEMPLATES["ca"])
    _certtool(workdir, "--generate-privkey", "--key-type=ecdsa", "--no-text",
              "--outfile", name + "-key.pem")
    _certtool(workdir, "--generate-self-signed", "--no-text",
              "--load-privkey", name + "-key.pem", "--template", "ca.info",
              "--outfile", name + "-cert.pem")


def _make_cert(workdir, ca, kind, outdir):
    """A KIND (server or client) key and certificate signed by CA, as
    outdir/KIND-key.pem and outdir/KIND-cert.pem."""
    info = os.path.join(workdir, kind + ".info")
    with open(info, "w") as f:
        f.write(_PKI_TEMPLATES[kind])
    key = os.path.join(outdir, kind + "-key.pem")
    _certtool(workdir, "--generate-privkey", "--key-type=ecdsa", "--no-text",
              "--outfile", key)
    _certtool(workdir, "--generate-certificate", "--no-text",
              "--load-privkey", key, "--load-ca-certificate", ca + "-cert.pem",
              "--load-ca-privkey", ca + "-key.pem", "--template", info,
              "--outfile", os.path.join(outdir, kind + "-cert.pem"))


def _psk_file(path, user, key_hex=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if key_hex is None:
        subprocess.run(["psktool", "-u", user, "-p", path], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=60)
    else:
        with open(path, "w") as f:
            f.write("%s:%s\n" % (user, key_hex))


def make_pki(path):
    """TLS credentials made with certtool and psktool under @path (made
    if missing), in the directory layouts rawnbd, libnbd and QEMU read:

      server/     ca-cert.pem, server-cert.pem, server-key.pem
                  (--tls-certificates; the CA also verifies clients)
      client/     ca-cert.pem, client-cert.pem, client-key.pem
      ca-only/    ca-cert.pem: trusts the server, has no certificate
      rogue/      ca-cert.pem with a client certificate from another CA
      psk/keys.psk        identity alice (--tls-psk; QEMU's dir=)
      wrong-psk/keys.psk  identity alice with another key

    The server certificate names localhost and 127.0.0.1.  Raises Skip
    when certtool or psktool is missing."""
    for tool in ("certtool", "psktool"):
        if not shutil.which(tool):
            raise Skip("%s is not installed" % tool)
    work = os.path.join(path, "ca")
    for d in ("ca", "server", "client", "ca-only", "rogue"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    _make_ca(work, "ca")
    _make_ca(work, "rogue-ca")
    _make_cert(work, "ca", "server", os.path.join(path, "server"))
    _make_cert(work, "ca", "client", os.path.join(path, "client"))
    _make_cert(work, "rogue-ca", "client", os.path.join(path, "rogue"))
    for d in ("server", "client", "ca-only", "rogue"):
        shutil.copy(os.path.join(work, "ca-cert.pem"),
                    os.path.join(path, d, "ca-cert.pem"))
    _psk_file(os.path.join(path, "psk", "keys.psk"), "alice")
    _psk_file(os.path.join(path, "wrong-psk", "keys.psk"), "alice",
              random.Random().randbytes(32).hex())
    return path


# ---- processes, seen from outside -----------------------------------------

def cpu_seconds(pid):
    """User plus system CPU time @pid has used so far (all its threads)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- maps for the shell tests -------------------------------------------

def _merged(entries):
    """[(offset, length, kind)] with neighbours of one kind merged."""
    out = []
    for off, length, kind in entries:
        if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == off:
            out[-1][1] += length
        else:
            out.append([off, length, kind])
    return out


def _print_map_command(argv):
    """harness.py file-map PATH | json-map qemu|nbdinfo < JSON: print
    "offset length data|hole" lines, neighbours merged.  harness.py pki
    DIR: make_pki(DIR), status 77 if the tools are missing."""
    import json
    if argv[:1] == ["pki"] and len(argv) == 2:
        try:
            make_pki(argv[1])
        except Skip as e:
            print(e, file=sys.stderr)
            sys.exit(77)
        return
    if argv[0] == "file-map":
        entries = [(o, n, "hole" if h else "data")
                   for o, n, h in file_map(argv[1])]
    elif argv[:2] == ["json-map", "qemu"]:
        entries = [(e["start"], e["length"], "data" if e["data"] else "hole")
                   for e in json.load(sys.stdin)]
    elif argv[:2] == ["json-map", "nbdinfo"]:
        kinds = {0: "data", 3: "hole"}
        entries = [(e["offset"], e["length"],
                    kinds.get(e["type"], "type%d" % e["type"]))
                   for e in json.load(sys.stdin)]
    else:
        sys.exit("usage: harness.py file-map PATH | json-map "
                 "qemu|nbdinfo | pki DIR")
    for o in _merged(entries):
        print(*o)


if __name__ == "__main__":
    _print_map_command(sys.argv[1:])
