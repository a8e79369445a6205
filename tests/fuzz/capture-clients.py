#!/usr/bin/env python3
"""capture-clients.py: record what real NBD clients send, as conn seeds.

    python3 tests/fuzz/capture-clients.py [BUILD_DIR]

Serves a 1 MiB image with BUILD_DIR/server/rawnbd (default: build) on a
unix socket, puts a logging proxy in front of it, runs libnbd's nbdinfo,
nbdcopy and nbdsh (structured replies on and off) and qemu-img/qemu-io
through the proxy, and writes each connection's client-to-server bytes
to corpus/conn/client-NAME[-N], behind the two control bytes of
fuzz-conn.c (0, 0).  Clients that are not installed are skipped.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


class Proxy:
    """Accepts on `path`, relays to `target`, records the client's bytes."""

    def __init__(self, path, target):
        self.target = target
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(8)
        self.streams = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.target)
            rec = bytearray()
            with self.lock:
                self.streams.append(rec)
            t1 = threading.Thread(target=self.pump, args=(c, s, rec), daemon=True)
            t2 = threading.Thread(target=self.pump, args=(s, c, None), daemon=True)
            t1.start()
            t2.start()

    @staticmethod
    def pump(src, dst, rec):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if rec is not None:
                    rec.extend(b)
                dst.sendall(b)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def take(self):
        time.sleep(0.3)
        with self.lock:
            got, self.streams = self.streams, []
        return [bytes(g) for g in got]


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, 'build')
    rawnbd = os.path.join(build, 'server', 'rawnbd')
    out = os.path.join(HERE, 'corpus', 'conn')
    tmp = tempfile.mkdtemp(prefix='rawnbd-capture-')
    img = os.path.join(tmp, 'disk.img')
    with open(img, 'wb') as f:
        f.truncate(1 << 20)
        f.seek(64 * 1024)
        f.write(b'\x5a' * 4096)
    srv_sock = os.path.join(tmp, 'srv.sock')
    px_sock = os.path.join(tmp, 'px.sock')
    srv = subprocess.Popen([rawnbd, '--persistent', '-k', srv_sock, img],
                           stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(srv_sock):
            break
        time.sleep(0.05)
    proxy = Proxy(px_sock, srv_sock)
    uri = 'nbd+unix:///?socket=' + px_sock
    qemu_uri = 'nbd:unix:' + px_sock
    copy_dst = os.path.join(tmp, 'copy.img')
    nbdsh_ops = ('h.connect_uri("%s"); h.pread(4096, 0); '
                 'h.pwrite(b"x" * 512, 8192); h.flush(); '
                 'h.block_status(65536, 0, lambda *a: 0) '
                 'if h.can_meta_context("base:allocation") else None; '
                 'h.shutdown()' % uri)
    runs = {
        'nbdinfo': ['nbdinfo', uri],
        'nbdinfo-list': ['nbdinfo', '--list', uri],
        'nbdinfo-map': ['nbdinfo', '--map', uri],
        'nbdcopy-read': ['nbdcopy', uri, copy_dst],
        'nbdcopy-write': ['nbdcopy', img, uri],
        'nbdsh-structured': ['nbdsh', '-c', 'h.add_meta_context("base:allocation")',
                             '-c', nbdsh_ops],
        'nbdsh-simple': ['nbdsh', '-c', 'h.set_request_structured_replies(False)',
                         '-c', nbdsh_ops],
        'qemu-img-info': ['qemu-img', 'info', qemu_uri],
        'qemu-img-convert': ['qemu-img', 'convert', '-O', 'raw', qemu_uri, copy_dst],
        'qemu-io': ['qemu-io', '-f', 'raw', qemu_uri, '-c', 'write -P 7 0 4k',
                    '-c', 'write -z 8k 8k', '-c', 'discard 64k 64k',
                    '-c', 'read 0 4k', '-c', 'flush'],
    }
    # nbdsh runs "python3": the system's, which has the nbd module.
    env = dict(os.environ, PATH='/usr/bin:/bin:' + os.environ.get('PATH', ''))
    try:
        for name, argv in runs.items():
            if not shutil.which(argv[0]):
                print('skipped (not installed):', name)
                continue
            r = subprocess.run(argv, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=60, env=env)
            streams = [s for s in proxy.take() if s]
            print('%s: exit %d, %d connection(s)' % (name, r.returncode,
                                                     len(streams)))
            for i, data in enumerate(streams):
                suffix = '' if len(streams) == 1 else '-%d' % (i + 1)
                with open(os.path.join(out, 'client-' + name + suffix), 'wb') as f:
                    f.write(b'\x00\x00' + data)
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(tmp)


if __name__ == '__main__':
    main()
