#!/usr/bin/env python3
"""make-seeds.py: write the hand-made seeds into corpus/TARGET/.

Run from anywhere: python3 tests/fuzz/make-seeds.py.  Seeds are named
seed-*; re-running rewrites them.  Real clients' streams (client-*) come
from capture-clients.sh; libFuzzer's finds are merged in by `make fuzz`.
conn inputs start with two control bytes (see fuzz-conn.c).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

OPTS_MAGIC = b'IHAVEOPT'
REQ_MAGIC = 0x25609513
EXT_MAGIC = 0x21e41c71
(OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK, OPT_STARTTLS, OPT_INFO,
 OPT_GO, OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED) = range(1, 12)
(READ, WRITE, DISC, FLUSH, TRIM, CACHE, WZ, BS) = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN = (1, 2, 4, 8, 16, 32)
C_FIXED, C_NOZEROES = 1, 2


def be32(v):
    return struct.pack('>I', v)


def opt(o, payload=b''):
    return OPTS_MAGIC + struct.pack('>II', o, len(payload)) + payload


def name(s):
    s = s.encode() if isinstance(s, str) else s
    return be32(len(s)) + s


def go(export='', infos=()):
    return name(export) + struct.pack('>H', len(infos)) + b''.join(
        struct.pack('>H', i) for i in infos)


def meta(export='', queries=()):
    return name(export) + be32(len(queries)) + b''.join(name(q) for q in queries)


class Reqs:
    """Requests with distinct cookies."""
    def __init__(self, extended=False):
        self.ext = extended
        self.cookie = 0

    def __call__(self, typ, off=0, length=0, flags=0, data=b''):
        self.cookie += 1
        if self.ext:
            return struct.pack('>IHHQQQ', EXT_MAGIC, flags, typ, self.cookie,
                               off, length) + data
        return struct.pack('>IHHQQI', REQ_MAGIC, flags, typ, self.cookie, off,
                           length) + data


def conn(mode, split, body):
    return bytes([mode, split]) + body


def hs(*opts, cflags=C_FIXED | C_NOZEROES):
    return be32(cflags) + b''.join(opts)


SET_BASE = opt(OPT_SET_META, meta('', ['base:allocation']))
GO = opt(OPT_GO, go('', [0, 1, 2, 3]))


def conn_seeds():
    s = {}
    r = Reqs()
    every = (r(READ, 0, 4096) + r(READ, 448 * 1024, 256 * 1024) +
             r(WRITE, 65536, 512, data=b'\xab' * 512) +
             r(WRITE, 4096, 4096, FUA, data=b'\x01' * 4096) + r(FLUSH) +
             r(TRIM, 0, 65536) + r(WZ, 8192, 8192) +
             r(WZ, 8192, 8192, NO_HOLE) + r(WZ, 0, 4096, FAST_ZERO) +
             r(CACHE, 0, 1 << 20) + r(BS, 0, 1 << 20) + r(99, 0, 0))
    s['oldstyle-every-command'] = conn(0, 0, hs(opt(OPT_EXPORT_NAME, b'')) +
                                       every + r(DISC))
    s['export-name-zeroes'] = conn(0, 0, hs(opt(OPT_EXPORT_NAME, b''),
                                            cflags=C_FIXED) + Reqs()(READ, 0, 512))
    r = Reqs()
    s['structured-every-command'] = conn(0, 0, hs(
        opt(OPT_STRUCTURED), SET_BASE, GO) +
        r(READ, 0, 4096) + r(READ, 448 * 1024, 256 * 1024) +
        r(READ, 448 * 1024, 256 * 1024, DF) + r(BS, 0, 1 << 20) +
        r(BS, 0, 1 << 20, REQ_ONE) + r(WRITE, 0, 1024, data=b'x' * 1024) +
        r(WZ, 0, 1 << 19) + r(TRIM, 4096, 8192) + r(FLUSH) +
        r(READ, 1 << 20, 1) + r(WRITE, 0, 70 << 20) + r(DISC))
    r = Reqs(extended=True)
    s['extended-every-command'] = conn(0, 0, hs(
        opt(OPT_EXTENDED), SET_BASE, GO) +
        r(WRITE, 0, 512, PAYLOAD_LEN, b'e' * 512) + r(READ, 0, 8192) +
        r(BS, 0, 12, PAYLOAD_LEN, struct.pack('>QI', 1 << 20, 1)) +
        r(BS, 0, 1 << 20) + r(BS, 0, 16, PAYLOAD_LEN,
                              struct.pack('>QII', 4096, 1, 1)) +
        r(BS, 0, 12, PAYLOAD_LEN, struct.pack('>QI', 4096, 2)) +
        r(WRITE, 0, 512, 0) + r(WZ, 0, 1 << 30) + r(CACHE, 0, 4096) +
        r(READ, 1 << 40, 1 << 33) + r(DISC))
    r = Reqs(extended=True)
    s['extended-only-read'] = conn(0, 0, hs(opt(OPT_EXTENDED), GO) +
                                   r(READ, 0, 4096) + r(READ, 500 * 1024, 200 * 1024))
    r = Reqs(extended=True)
    s['structured-then-extended'] = conn(0, 0, hs(
        opt(OPT_STRUCTURED), opt(OPT_EXTENDED), opt(OPT_STRUCTURED),
        opt(OPT_EXTENDED), SET_BASE, GO) + r(BS, 0, 65536, REQ_ONE))
    s['list-info-meta-abort'] = conn(0, 0, hs(
        opt(OPT_LIST), opt(OPT_LIST, b'junk'), opt(OPT_INFO, go('', [1, 2, 3])),
        opt(OPT_INFO, go('ro', [1])), opt(OPT_INFO, go('nope')),
        opt(OPT_INFO, go('win', [3, 3, 9])), opt(OPT_INFO, b'\x00'),
        opt(OPT_LIST_META, meta('', [])), opt(OPT_STRUCTURED),
        opt(OPT_LIST_META, meta('', ['base:'])),
        opt(OPT_LIST_META, meta('', ['qemu:dirty-bitmap:x', 'base:allocation'])),
        opt(OPT_SET_META, meta('ro', ['base:allocation', 'nocolon'])),
        opt(OPT_SET_META, meta('', ['base:allocation'] * 130)),
        opt(OPT_PEEK), opt(42, b'abc'), opt(OPT_ABORT)))
    s['starttls-off'] = conn(0, 0, hs(opt(OPT_STARTTLS), opt(OPT_STARTTLS, b'x'),
                                      opt(OPT_LIST)))
    s['starttls-on-garbage'] = conn(2, 0, hs(opt(OPT_STARTTLS)) +
                                    b'\x16\x03\x01\x00\x05hello')
    s['tls-required'] = conn(4, 0, hs(opt(OPT_LIST), opt(OPT_GO, go('secret')),
                                      opt(OPT_INFO, go('')), opt(OPT_EXPORT_NAME, b'')))
    s['tls-only-export-hidden'] = conn(2, 0, hs(opt(OPT_LIST), opt(OPT_INFO, go('secret')),
                                                opt(OPT_EXPORT_NAME, b'secret')))
    r = Reqs()
    s['read-only-writes'] = conn(1, 0, hs(opt(OPT_STRUCTURED), GO) +
                                 r(WRITE, 0, 16, data=b'w' * 16) + r(TRIM, 0, 4096) +
                                 r(WZ, 0, 4096) + r(READ, 0, 16) + r(FLUSH))
    r = Reqs()
    s['window-export'] = conn(0, 0, hs(opt(OPT_STRUCTURED), opt(OPT_SET_META,
                              meta('win', ['base:allocation'])),
                              opt(OPT_GO, go('win', [3]))) +
                              r(READ, 699 * 1024, 2017) + r(READ, 700000, 2) +
                              r(BS, 4096, 700001 - 4096) + r(WRITE, 700000, 1, data=b'z'))
    s['bad-option-magic'] = conn(0, 0, hs(b'IHAVEOPX' + b'\x00' * 8))
    s['bad-client-flags'] = conn(0, 0, be32(0x80) + opt(OPT_LIST))
    s['no-zeroes-flag'] = conn(0, 0, be32(C_NOZEROES) + opt(OPT_LIST))
    s['export-name-too-long'] = conn(0, 0, hs(opt(OPT_EXPORT_NAME, b'a' * 5000)))
    s['option-too-long'] = conn(0, 0, hs(OPTS_MAGIC + struct.pack('>II', 9, 70000) +
                                         b'\x00' * 70000 + opt(OPT_LIST)))
    s['option-way-too-long'] = conn(0, 0, hs(OPTS_MAGIC + struct.pack('>II', 9, 2 << 20)))
    s['export-name-unknown'] = conn(0, 0, hs(opt(OPT_EXPORT_NAME, b'nope')))
    s['export-name-after-extended'] = conn(0, 0, hs(opt(OPT_EXTENDED),
                                                    opt(OPT_EXPORT_NAME, b'')))
    r = Reqs()
    s['bad-request-magic'] = conn(0, 0, hs(GO) + r(READ, 0, 512) +
                                  b'\x25\x60\x95\x14' + b'\x00' * 24 + r(READ, 0, 512))
    r = Reqs()
    s['disc-in-the-middle'] = conn(0, 0, hs(GO) + r(READ, 0, 512) + r(DISC) +
                                   r(READ, 0, 512))
    r = Reqs()
    s['truncated-write-payload'] = conn(0, 0, hs(GO) + r(WRITE, 0, 4096, data=b'q' * 100))
    r = Reqs()
    pipelined = b''.join(r(READ, i * 4096, 4096) for i in range(24))
    s['pipelined-one-in-flight'] = conn(16, 0, hs(GO) + pipelined)
    r = Reqs()
    s['byte-at-a-time'] = conn(0, 1, hs(opt(OPT_STRUCTURED), SET_BASE, GO) +
                               r(READ, 0, 4096) + r(BS, 0, 65536) +
                               r(WRITE, 0, 100, data=b'b' * 100))
    r = Reqs()
    s['big-chunks'] = conn(8, 200, hs(opt(OPT_STRUCTURED), GO) +
                           r(WRITE, 0, 65536, data=b'\x00' * 65536) + r(READ, 0, 65536))
    r = Reqs()
    s['handshake-only-go-default-ro'] = conn(1, 3, hs(opt(OPT_INFO, go('')), GO) +
                                             r(READ, 0, 1))
    return s


def option_seeds():
    s = {}
    s['export-name'] = bytes([OPT_EXPORT_NAME]) + b'disk'
    s['go'] = bytes([OPT_GO | 0x80]) + go('disk', [0, 1, 2, 3])
    s['info'] = bytes([OPT_INFO]) + go('', [])
    s['meta'] = bytes([OPT_SET_META]) + meta('', ['base:allocation', 'x:'])
    s['header'] = bytes([OPT_LIST]) + opt(OPT_GO, go(''))
    s['error-message'] = bytes([OPT_ABORT]) + ('é' * 200).encode()
    return s


def meta_seeds():
    return {
        'set-base': b'\x00' + meta('', ['base:allocation']),
        'list-namespace': b'\x01' + meta('disk', ['base:', 'qemu:']),
        'list-none': b'\x01' + meta('', []),
        'bad-query': b'\x00' + meta('', [':x']),
    }


def session(ctl, k=12, maxp=0, size=1 << 20, tflags=0xffff):
    return struct.pack('>BBIQH', ctl, k, maxp, size, tflags)


def request_seeds():
    s = {}
    s['compact-read'] = session(0x20 | 0x40, 9) + struct.pack(
        '>IHHQQI', REQ_MAGIC, 0, READ, 1, 4096, 4096)
    s['compact-write'] = session(0x20) + struct.pack(
        '>IHHQQI', REQ_MAGIC, FUA, WRITE, 2, 0, 512) + b'w' * 8
    s['extended-bs-payload'] = session(0x20 | 0x01 | 0x08) + struct.pack(
        '>IHHQQQ', EXT_MAGIC, PAYLOAD_LEN, BS, 3, 0, 12) + struct.pack('>QI', 4096, 1)
    s['extended-write'] = session(0x21) + struct.pack(
        '>IHHQQQ', EXT_MAGIC, PAYLOAD_LEN, WRITE, 4, 0, 1 << 20)
    s['disc'] = session(0x20) + struct.pack('>IHHQQI', REQ_MAGIC, 0, DISC, 5, 0, 0)
    return s


def bs_seeds():
    return {
        'one-id': session(0x08) + struct.pack('>QB', 0, REQ_ONE) +
        struct.pack('>QI', 4096, 1),
        'two-ids': session(0x18) + struct.pack('>QB', 512, 0) +
        struct.pack('>QII', 4096, 1, 2),
    }


def client_flags_seeds():
    return {
        'fixed-nozeroes': struct.pack('>HIHIB', 3, 3, 0x21, 75, 30),
        'unknown': struct.pack('>HIHIB', 1, 0x80000003, 0xffff, 12345, 3),
    }


def main():
    for target, seeds in (('conn', conn_seeds()), ('option', option_seeds()),
                          ('meta', meta_seeds()), ('request', request_seeds()),
                          ('bs-payload', bs_seeds()),
                          ('client-flags', client_flags_seeds())):
        d = os.path.join(HERE, 'corpus', target)
        os.makedirs(d, exist_ok=True)
        for n, data in seeds.items():
            with open(os.path.join(d, 'seed-' + n), 'wb') as f:
                f.write(data)


if __name__ == '__main__':
    main()
