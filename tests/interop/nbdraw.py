"""nbdraw: a small NBD client over a raw socket, for the interop tests.

Real clients (libnbd 1.14, qemu 7.2) never send malformed options or
requests and do not speak extended headers, so the tests that need either
use this module.  It sends exactly what it is told, and checks every reply
it reads against the spec: a malformed reply raises ProtocolError, so each
read or block status in a test is also a conformance check.

Standard library only (struct, socket; ssl for STARTTLS).
"""

import select
import socket
import struct
import time

# Magics
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
EXT_REQUEST_MAGIC = 0x21E41C71
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXT_REPLY_MAGIC = 0x6E8A278C

# Handshake flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# Options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# Option replies
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR = 1 << 31
REP_ERR_UNSUP = REP_ERR | 1
REP_ERR_POLICY = REP_ERR | 2
REP_ERR_INVALID = REP_ERR | 3
REP_ERR_PLATFORM = REP_ERR | 4
REP_ERR_TLS_REQD = REP_ERR | 5
REP_ERR_UNKNOWN = REP_ERR | 6
REP_ERR_SHUTDOWN = REP_ERR | 7
REP_ERR_BLOCK_SIZE_REQD = REP_ERR | 8
REP_ERR_TOO_BIG = REP_ERR | 9
REP_ERR_EXT_HEADER_REQD = REP_ERR | 10

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Transmission flags
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_RESIZE = 1 << 9
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11
TF_BLOCK_STATUS_PAYLOAD = 1 << 12

# Commands
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4
CMD_FLAG_PAYLOAD_LEN = 1 << 5

# Reply chunks
REPLY_FLAG_DONE = 1 << 0
TYPE_NONE = 0
TYPE_OFFSET_DATA = 1
TYPE_OFFSET_HOLE = 2
TYPE_BLOCK_STATUS = 5
TYPE_BLOCK_STATUS_EXT = 6
TYPE_ERROR = (1 << 15) | 1
TYPE_ERROR_OFFSET = (1 << 15) | 2

# Errors
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

def _names(prefix):
    return {v: k[len(prefix):] for k, v in globals().items()
            if k.startswith(prefix)}


_REP_NAMES = _names("REP_")
_ERR_NAMES = {v: k for k, v in globals().items()
              if k in ("EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC",
                       "EOVERFLOW", "ENOTSUP", "ESHUTDOWN")}


def rep_name(t):
    return _REP_NAMES.get(t, "0x%x" % t)


def err_name(e):
    return "OK" if e == 0 else _ERR_NAMES.get(e, str(e))


class ProtocolError(Exception):
    """The server sent something the spec does not allow."""


class Closed(Exception):
    """The server closed the connection."""


class OptReply:
    def __init__(self, opt, rtype, data):
        self.opt = opt
        self.type = rtype
        self.data = data

    @property
    def is_error(self):
        return bool(self.type & REP_ERR)

    def __repr__(self):
        return "OptReply(%s, %r)" % (rep_name(self.type), self.data[:64])


class Chunk:
    """One reply message: a simple reply, or a structured/extended chunk."""

    def __init__(self, kind, cookie, flags=0, ctype=None, payload=b"",
                 offset=None, error=0):
        self.kind = kind            # 'simple', 'structured' or 'extended'
        self.cookie = cookie
        self.flags = flags
        self.type = ctype
        self.payload = payload
        self.offset = offset        # echoed request offset (extended only)
        self.error = error          # simple replies

    @property
    def done(self):
        return self.kind == "simple" or bool(self.flags & REPLY_FLAG_DONE)

    def __repr__(self):
        if self.kind == "simple":
            return "Simple(error=%s, %d data bytes)" % (
                err_name(self.error), len(self.payload))
        return "Chunk(%s, type=%d, flags=%d, len=%d)" % (
            self.kind, self.type, self.flags, len(self.payload))


class Reply:
    """All the messages answering one request, checked and decoded."""

    def __init__(self, request, chunks):
        self.request = request
        self.chunks = chunks
        self.error = 0
        self.message = None
        self.error_offset = None    # from an ERROR_OFFSET chunk
        self.data = None            # READ: the bytes read
        self.holes = []             # READ: (offset, size) of hole chunks
        self.data_chunks = []       # READ: (offset, length) of data chunks
        self.extents = {}           # BLOCK_STATUS: context id -> [(len, flags)]
        self.status_types = []      # BLOCK_STATUS: chunk types seen

    def __repr__(self):
        return "Reply(error=%s, message=%r, chunks=%r)" % (
            err_name(self.error), self.message, self.chunks)


class Request:
    def __init__(self, cmd, flags, cookie, offset, length, payload_len):
        self.cmd = cmd
        self.flags = flags
        self.cookie = cookie
        self.offset = offset
        self.length = length
        self.payload_len = payload_len


class Client:
    """One connection.  Methods raise ProtocolError on bad replies and
    Closed when the server hangs up."""

    def __init__(self, address, timeout=30.0):
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.settimeout(timeout)
        self.hflags = None
        self.structured = False
        self.extended = False
        self.size = None
        self.tflags = None
        self.block_sizes = None
        self.info = {}
        self.contexts = {}          # name -> id after SET_META_CONTEXT
        self.pending = {}           # cookie -> Request
        self.received = {}          # cookie -> [Chunk]
        self.next_cookie = 1

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- bytes -------------------------------------------------------

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n):
        parts = []
        while n > 0:
            try:
                b = self.sock.recv(min(n, 1 << 20))
            except ConnectionResetError:
                b = b""
            if not b:
                raise Closed("server closed the connection (%d bytes short)"
                             % n)
            parts.append(b)
            n -= len(b)
        return b"".join(parts)

    def wait_closed(self, timeout=10.0):
        """Wait until the server closes; return whatever it sent first.
        Raises AssertionError if it is still open after @timeout."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "server did not close the connection within %.0f s "
                    "(received %d bytes)" % (timeout, sum(map(len, got))))
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            try:
                b = self.sock.recv(65536)
            except ConnectionResetError:
                b = b""
            if not b:
                return b"".join(got)
            got.append(b)

    def is_open(self, wait=0.3):
        """True if the server has neither closed nor sent anything within
        @wait seconds."""
        r, _, _ = select.select([self.sock], [], [], wait)
        if not r:
            return True
        try:
            b = self.sock.recv(1, socket.MSG_PEEK)
        except ConnectionResetError:
            return False
        return bool(b)

    # ---- handshake ---------------------------------------------------

    def greeting(self):
        magic, opts, hflags = struct.unpack(">QQH", self.recv_exact(18))
        if magic != NBDMAGIC or opts != IHAVEOPT:
            raise ProtocolError("bad greeting magic %x %x" % (magic, opts))
        self.hflags = hflags
        return hflags

    def send_client_flags(self, cflags):
        self.send(struct.pack(">I", cflags))

    def handshake(self, cflags=FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
        hflags = self.greeting()
        if not hflags & FLAG_FIXED_NEWSTYLE:
            raise ProtocolError("server does not offer fixed newstyle")
        self.send_client_flags(cflags)
        return hflags

    def send_option(self, opt, data=b"", length=None, magic=IHAVEOPT):
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", magic, opt, length) + data)

    def read_option_reply(self, opt):
        magic, ropt, rtype, length = struct.unpack(">QIII",
                                                    self.recv_exact(20))
        if magic != OPT_REPLY_MAGIC:
            raise ProtocolError("bad option reply magic 0x%x" % magic)
        if ropt != opt:
            raise ProtocolError("reply for option %d, expected %d"
                                % (ropt, opt))
        data = self.recv_exact(length) if length else b""
        return OptReply(ropt, rtype, data)

    def option(self, opt, data=b"", length=None):
        """Send one option; return its replies, the final one last."""
        self.send_option(opt, data, length)
        return self.option_replies(opt)

    def option_replies(self, opt):
        replies = []
        while True:
            r = self.read_option_reply(opt)
            replies.append(r)
            if r.type == REP_ACK or r.is_error:
                return replies
            if r.type not in (REP_SERVER, REP_INFO, REP_META_CONTEXT):
                raise ProtocolError("unexpected reply type %s"
                                    % rep_name(r.type))

    def option_final(self, opt, data=b""):
        """Send an option that has only a final reply; return its type."""
        replies = self.option(opt, data)
        if len(replies) != 1:
            raise ProtocolError("option %d: %d replies, expected 1"
                                % (opt, len(replies)))
        return replies[-1].type

    def negotiate_structured(self):
        t = self.option_final(OPT_STRUCTURED_REPLY)
        if t == REP_ACK:
            self.structured = True
        return t

    def negotiate_extended(self):
        t = self.option_final(OPT_EXTENDED_HEADERS)
        if t == REP_ACK:
            self.extended = True
        return t

    @staticmethod
    def go_payload(name=b"", infos=()):
        return (struct.pack(">I", len(name)) + name +
                struct.pack(">H", len(infos)) +
                b"".join(struct.pack(">H", i) for i in infos))

    def go(self, name=b"", infos=(INFO_NAME, INFO_DESCRIPTION,
                                  INFO_BLOCK_SIZE), opt=OPT_GO):
        """INFO or GO; decodes the REP_INFO items into self.info and
        returns the final reply type."""
        replies = self.option(opt, self.go_payload(name, infos))
        info = {}
        for r in replies[:-1]:
            if r.type != REP_INFO:
                raise ProtocolError("%s reply to GO/INFO" % rep_name(r.type))
            (itype,) = struct.unpack(">H", r.data[:2])
            body = r.data[2:]
            if itype == INFO_EXPORT:
                if len(body) != 10:
                    raise ProtocolError("INFO_EXPORT of %d bytes" % len(r.data))
                info["size"], info["tflags"] = struct.unpack(">QH", body)
            elif itype == INFO_BLOCK_SIZE:
                if len(body) != 12:
                    raise ProtocolError("INFO_BLOCK_SIZE of %d bytes"
                                        % len(r.data))
                info["block_size"] = struct.unpack(">III", body)
            elif itype == INFO_NAME:
                info["name"] = body
            elif itype == INFO_DESCRIPTION:
                info["description"] = body
            info.setdefault("order", []).append(itype)
        final = replies[-1].type
        if final == REP_ACK:
            if "size" not in info:
                raise ProtocolError("GO/INFO acknowledged without INFO_EXPORT")
            self.info = info
            if opt == OPT_GO:
                self.size = info["size"]
                self.tflags = info["tflags"]
                self.block_sizes = info.get("block_size")
        return final

    def meta_context(self, opt, name=b"", queries=()):
        """LIST or SET_META_CONTEXT; returns (final type, [(id, name)])."""
        data = struct.pack(">I", len(name)) + name
        data += struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q)) + q
        replies = self.option(opt, data)
        found = []
        for r in replies[:-1]:
            if r.type != REP_META_CONTEXT:
                raise ProtocolError("%s reply to META_CONTEXT"
                                    % rep_name(r.type))
            (cid,) = struct.unpack(">I", r.data[:4])
            found.append((cid, r.data[4:]))
        if opt == OPT_SET_META_CONTEXT and replies[-1].type == REP_ACK:
            self.contexts = {n.decode(): cid for cid, n in found}
        return replies[-1].type, found

    def starttls(self, context, server_hostname="localhost"):
        """NBD_OPT_STARTTLS, then the TLS handshake with @context (an
        ssl.SSLContext) over the same socket.  Returns the reply type; on
        ACK everything negotiated before is forgotten, as on the server."""
        t = self.option_final(OPT_STARTTLS)
        if t == REP_ACK:
            self.sock = context.wrap_socket(self.sock,
                                            server_hostname=server_hostname)
            self.structured = False
            self.extended = False
            self.contexts = {}
        return t

    def export_name(self, name=b"", no_zeroes=True):
        """EXPORT_NAME; returns (size, tflags) and enters transmission."""
        self.send_option(OPT_EXPORT_NAME, name)
        size, tflags = struct.unpack(">QH", self.recv_exact(10))
        if not no_zeroes:
            zeroes = self.recv_exact(124)
            if zeroes != bytes(124):
                raise ProtocolError("EXPORT_NAME reply padding not zero")
        self.size, self.tflags = size, tflags
        return size, tflags

    def connect_export(self, name=b"", structured=True, extended=False,
                       meta=(b"base:allocation",), greet=True):
        """The usual negotiation: flags, SR/EH, meta contexts, GO (from
        SR on with greet=False, as after STARTTLS)."""
        if greet:
            self.handshake()
        if structured:
            t = self.negotiate_structured()
            if t != REP_ACK:
                raise ProtocolError("STRUCTURED_REPLY: %s" % rep_name(t))
        if extended:
            t = self.negotiate_extended()
            if t != REP_ACK:
                raise ProtocolError("EXTENDED_HEADERS: %s" % rep_name(t))
        if meta and (structured or extended):
            t, _ = self.meta_context(OPT_SET_META_CONTEXT, name, meta)
            if t != REP_ACK:
                raise ProtocolError("SET_META_CONTEXT: %s" % rep_name(t))
        t = self.go(name)
        if t != REP_ACK:
            raise ProtocolError("GO: %s" % rep_name(t))
        return self

    # ---- transmission ------------------------------------------------

    def send_request(self, cmd, offset=0, length=0, flags=0, payload=b"",
                     cookie=None, magic=None, extended=None):
        """Send one request header (compact or extended as negotiated,
        unless @extended says otherwise) and its payload.  Returns the
        cookie."""
        if extended is None:
            extended = self.extended
        if cookie is None:
            cookie = self.next_cookie
            self.next_cookie += 1
        if extended:
            hdr = struct.pack(">IHHQQQ", magic or EXT_REQUEST_MAGIC, flags,
                              cmd, cookie, offset, length)
        else:
            hdr = struct.pack(">IHHQQI", magic or REQUEST_MAGIC, flags, cmd,
                              cookie, offset, length)
        self.pending[cookie] = Request(cmd, flags, cookie, offset, length,
                                       len(payload))
        self.send(hdr + payload)
        return cookie

    def send_batch(self, requests):
        """Send every request of @requests [(cmd, offset, length, flags,
        payload)] in one write, so that the server finds them all waiting
        at once.  Returns their cookies."""
        out = []
        self.send = out.append      # shadows the method until del
        try:
            cookies = [self.send_request(*r) for r in requests]
        finally:
            del self.send
        self.send(b"".join(out))
        return cookies

    def read_message(self):
        """Read one reply message (any request) and file it."""
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_REPLY_MAGIC:
            if self.extended:
                raise ProtocolError("simple reply with extended headers")
            error, cookie = struct.unpack(">IQ", self.recv_exact(12))
            req = self._request_for(cookie)
            data = b""
            if req.cmd == CMD_READ and error == 0:
                if self.structured:
                    raise ProtocolError("simple reply to READ with "
                                        "structured replies on")
                data = self.recv_exact(req.length)
            c = Chunk("simple", cookie, payload=data, error=error)
        elif magic == STRUCTURED_REPLY_MAGIC:
            if self.extended:
                raise ProtocolError("compact chunk with extended headers")
            if not self.structured:
                raise ProtocolError("structured chunk without negotiation")
            flags, ctype, cookie, length = struct.unpack(
                ">HHQI", self.recv_exact(16))
            self._request_for(cookie)
            payload = self.recv_exact(length) if length else b""
            c = Chunk("structured", cookie, flags, ctype, payload)
        elif magic == EXT_REPLY_MAGIC:
            if not self.extended:
                raise ProtocolError("extended chunk without negotiation")
            flags, ctype, cookie, offset, length = struct.unpack(
                ">HHQQQ", self.recv_exact(28))
            req = self._request_for(cookie)
            if offset != req.offset:
                raise ProtocolError("extended reply offset %d, request "
                                    "offset %d" % (offset, req.offset))
            if length > (64 << 20) + 4096:
                raise ProtocolError("extended chunk of %d bytes" % length)
            payload = self.recv_exact(length) if length else b""
            c = Chunk("extended", cookie, flags, ctype, payload, offset)
        else:
            raise ProtocolError("bad reply magic 0x%08x" % magic)
        self.received.setdefault(c.cookie, []).append(c)
        return c

    def _request_for(self, cookie):
        req = self.pending.get(cookie)
        if req is None:
            raise ProtocolError("reply for unknown cookie %d" % cookie)
        return req

    def reply(self, cookie):
        """Read until the reply to @cookie is complete; check and decode
        it."""
        while True:
            chunks = self.received.get(cookie, [])
            if chunks and chunks[-1].done:
                break
            self.read_message()
        del self.received[cookie]
        req = self.pending.pop(cookie)
        return self._decode(req, chunks)

    def _decode(self, req, chunks):
        r = Reply(req, chunks)
        if chunks[0].kind == "simple":
            if len(chunks) != 1:
                raise ProtocolError("simple reply mixed with chunks")
            r.error = chunks[0].error
            if req.cmd == CMD_READ and not r.error:
                r.data = chunks[0].payload
            return r
        for c in chunks[:-1]:
            if c.done:
                raise ProtocolError("chunk after the DONE chunk")
        content = []
        for c in chunks:
            if c.type == TYPE_NONE:
                if c.payload or not c.done:
                    raise ProtocolError("NONE chunk with payload or "
                                        "without DONE")
            elif c.type in (TYPE_ERROR, TYPE_ERROR_OFFSET):
                self._decode_error(r, c)
            elif c.type in (TYPE_OFFSET_DATA, TYPE_OFFSET_HOLE):
                if req.cmd != CMD_READ:
                    raise ProtocolError("content chunk for command %d"
                                        % req.cmd)
                content.append(c)
            elif c.type in (TYPE_BLOCK_STATUS, TYPE_BLOCK_STATUS_EXT):
                if req.cmd != CMD_BLOCK_STATUS:
                    raise ProtocolError("status chunk for command %d"
                                        % req.cmd)
                self._decode_status(r, c)
            elif c.type & 0x8000:
                r.error = r.error or EINVAL
            else:
                raise ProtocolError("unknown chunk type %d" % c.type)
        if req.cmd == CMD_READ:
            self._decode_read(r, content)
        if req.cmd == CMD_BLOCK_STATUS and not r.error and not r.extents:
            if not (req.flags & CMD_FLAG_PAYLOAD_LEN):
                raise ProtocolError("successful BLOCK_STATUS without "
                                    "a status chunk")
        return r

    def _decode_error(self, r, c):
        p = c.payload
        if len(p) < 6:
            raise ProtocolError("error chunk of %d bytes" % len(p))
        err, msglen = struct.unpack(">IH", p[:6])
        extra = 8 if c.type == TYPE_ERROR_OFFSET else 0
        if len(p) != 6 + msglen + extra:
            raise ProtocolError("error chunk length %d, message %d"
                                % (len(p), msglen))
        if err == 0:
            raise ProtocolError("error chunk with error 0")
        r.error = r.error or err
        r.message = p[6:6 + msglen].decode("utf-8")
        if extra:
            (off,) = struct.unpack(">Q", p[6 + msglen:])
            req = r.request
            if not req.offset <= off < req.offset + req.length:
                raise ProtocolError("error offset %d outside the request "
                                    "%d+%d" % (off, req.offset, req.length))
            r.error_offset = off

    def _decode_read(self, r, content):
        req = r.request
        start, end = req.offset, req.offset + req.length
        # Only successful reads (at most the 64 MiB maximum) fill a buffer.
        buf = bytearray(req.length if content else 0)
        covered = []
        for c in content:
            p = c.payload
            if c.type == TYPE_OFFSET_DATA:
                if len(p) < 9:
                    raise ProtocolError("OFFSET_DATA chunk of %d bytes "
                                        "(the spec requires at least 9)"
                                        % len(p))
                (off,) = struct.unpack(">Q", p[:8])
                n = len(p) - 8
                buf[off - start:off - start + n] = p[8:]
                r.data_chunks.append((off, n))
            else:
                if len(p) != 12:
                    raise ProtocolError("OFFSET_HOLE chunk of %d bytes"
                                        % len(p))
                off, n = struct.unpack(">QI", p)
                if n == 0:
                    raise ProtocolError("OFFSET_HOLE of size 0")
                r.holes.append((off, n))
            if off < start or off + n > end:
                raise ProtocolError("content chunk [%d,+%d) outside the "
                                    "request [%d,+%d)"
                                    % (off, n, start, req.length))
            covered.append((off, n))
        covered.sort()
        pos = start
        for off, n in covered:
            if off < pos:
                raise ProtocolError("content chunks overlap at %d" % off)
            pos = off + n
        if req.flags & CMD_FLAG_DF and len(content) > 1:
            raise ProtocolError("%d content chunks with DF" % len(content))
        if not r.error:
            if sum(n for _, n in covered) != req.length:
                raise ProtocolError("READ reply covers %d of %d bytes"
                                    % (sum(n for _, n in covered),
                                       req.length))
            r.data = bytes(buf)

    def _decode_status(self, r, c):
        req = r.request
        p = c.payload
        if c.type == TYPE_BLOCK_STATUS:
            if len(p) < 12 or (len(p) - 4) % 8:
                raise ProtocolError("BLOCK_STATUS chunk of %d bytes"
                                    % len(p))
            (cid,) = struct.unpack(">I", p[:4])
            ext = [struct.unpack(">II", p[i:i + 8])
                   for i in range(4, len(p), 8)]
        else:
            if not self.extended:
                raise ProtocolError("BLOCK_STATUS_EXT without extended "
                                    "headers")
            if len(p) < 24 or (len(p) - 8) % 16:
                raise ProtocolError("BLOCK_STATUS_EXT chunk of %d bytes"
                                    % len(p))
            cid, count = struct.unpack(">II", p[:8])
            ext = [struct.unpack(">QQ", p[i:i + 16])
                   for i in range(8, len(p), 16)]
            if count not in (0, len(ext)):
                raise ProtocolError("BLOCK_STATUS_EXT count %d for %d "
                                    "descriptors" % (count, len(ext)))
        if cid in r.extents:
            raise ProtocolError("two status chunks for context %d" % cid)
        if cid not in self.contexts.values():
            raise ProtocolError("status for unselected context %d" % cid)
        for length, _ in ext:
            if length == 0:
                raise ProtocolError("extent of length 0")
        if req.flags & CMD_FLAG_REQ_ONE and len(ext) != 1:
            raise ProtocolError("%d extents with REQ_ONE" % len(ext))
        r.extents[cid] = ext
        r.status_types.append(c.type)

    def request(self, cmd, offset=0, length=0, flags=0, payload=b"", **kw):
        """Send a request and return its decoded Reply."""
        return self.reply(self.send_request(cmd, offset, length, flags,
                                            payload, **kw))

    def read(self, offset, length, flags=0):
        return self.request(CMD_READ, offset, length, flags)

    def write(self, offset, data, flags=0):
        if self.extended:
            flags |= CMD_FLAG_PAYLOAD_LEN
        return self.request(CMD_WRITE, offset, len(data), flags, data)

    def block_status(self, offset, length, flags=0):
        """Extents of base:allocation as [(length, flags)], or raise."""
        r = self.request(CMD_BLOCK_STATUS, offset, length, flags)
        if r.error:
            raise ProtocolError("BLOCK_STATUS failed: %s" % err_name(r.error))
        return r.extents[self.contexts["base:allocation"]]

    def disconnect(self):
        self.send_request(CMD_DISC)
