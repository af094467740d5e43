"""Helpers for upgrade and tunnel tests (stdlib + pytest only).

    up = upgrader(answer=switching("websocket"))      # fixture, see below
    px = proxy(upstreams={"ws": [up.address]})
    c, cl, be, resp = open_tunnel(px, up, upgrade_request("/ws"))
    cl.send(b"ping"); be.expect(b"ping")
    streams = pump([Stream(cl, be, data1), Stream(be, cl, data2)], timeout=30)

`Upgrader` is a scriptable backend (tests/support/backend.py underneath) whose
handler reads one request, writes a scripted answer and then hands the raw
socket over to the test as an `End`; the handler thread stays parked (owning
nothing) until the test ends, so the test drives every byte itself.

`End` is one socket of a tunnel as a test sees it: exact reads with deadlines,
half-close, abortive close (RST), bounded "nothing arrives" checks.

`pump` moves payloads through any number of ends at once with one selector
(no thread per socket), checking every received byte against what was sent.
"""
import base64
import hashlib
import queue
import random
import select
import selectors
import socket
import struct
import threading
import time

import pytest

from .http import Reader, deadline_in, HTTPTimeout, ProtocolError

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="          # RFC 6455 1.3 example
WS_KEY_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # ... and its accept value


def ws_accept(key):
    k = key.encode() if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(k + WS_GUID).digest()).decode()


def _line(h):
    return h.encode("latin-1") if isinstance(h, str) else h


def upgrade_request(path="/ws", host="ws.test", upgrade="websocket", connection="Upgrade",
                    key=WS_KEY, extra=(), method="GET", version="HTTP/1.1", ws=True):
    """An upgrade request head. upgrade/connection None leave the field out;
    ws adds Sec-WebSocket-Key/Version; extra: more header lines (str/bytes,
    without CRLF) appended after them."""
    out = bytearray(("%s %s %s\r\nHost: %s\r\n" % (method, path, version, host)).encode())
    if connection is not None:
        out += b"Connection: " + _line(connection) + b"\r\n"
    if upgrade is not None:
        out += b"Upgrade: " + _line(upgrade) + b"\r\n"
    if ws:
        out += b"Sec-WebSocket-Key: " + key.encode() + b"\r\nSec-WebSocket-Version: 13\r\n"
    for h in extra:
        out += _line(h) + b"\r\n"
    out += b"\r\n"
    return bytes(out)


def switching(token="websocket", headers=(), reason="Switching Protocols", connection="Upgrade",
              accept_for=None):
    """A 101 head from an upstream. token None leaves Upgrade out; accept_for=key
    adds the right Sec-WebSocket-Accept first."""
    out = bytearray(("HTTP/1.1 101 %s\r\n" % reason).encode())
    if token is not None:
        out += b"Upgrade: " + _line(token) + b"\r\n"
    if connection is not None:
        out += b"Connection: " + _line(connection) + b"\r\n"
    if accept_for is not None:
        out += b"Sec-WebSocket-Accept: " + ws_accept(accept_for).encode() + b"\r\n"
    for h in headers:
        out += _line(h) + b"\r\n"
    out += b"\r\n"
    return bytes(out)


def payload(n, seed):
    """n deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(n)


def diff_at(got, want):
    """Short description of where two byte strings first differ."""
    n = min(len(got), len(want))
    i = next((k for k in range(n) if got[k] != want[k]), n)
    return ("first difference at byte %d of %d/%d (got %r, want %r)"
            % (i, len(got), len(want), bytes(got[max(0, i - 20):i + 40]),
               bytes(want[max(0, i - 20):i + 40])))


def assert_bytes(got, want, what="bytes"):
    got = bytes(got)
    if got != want:
        raise AssertionError("%s differ: %s\n got: %r\nwant: %r"
                             % (what, diff_at(got, want), got[:2000], want[:2000]))


# ------------------------------------------------------------------ one end

class End:
    """One socket of a tunnel driven by the test. reader may already hold
    bytes received past an HTTP head; every read consumes those first."""

    def __init__(self, sock, reader=None, name="end"):
        self.sock = sock
        self.reader = reader if reader is not None else Reader(sock)
        self.name = name

    def send(self, data):
        self.sock.settimeout(10.0)
        self.sock.sendall(data)

    def recv_exact(self, n, timeout=10.0):
        try:
            return self.reader.read_exact(n, deadline_in(timeout))
        except HTTPTimeout as e:
            raise HTTPTimeout("%s: wanted %d bytes: %s" % (self.name, n, e)) from None
        except ProtocolError as e:
            raise ProtocolError("%s: wanted %d bytes, the connection ended (%s): %s"
                                % (self.name, n, "reset" if self.reader.reset else "EOF", e)) from None

    def expect(self, want, timeout=10.0):
        """Exactly these bytes next (reads exactly len(want))."""
        got = self.recv_exact(len(want), timeout)
        assert_bytes(got, want, "%s received" % self.name)

    def wait_end(self, timeout=5.0):
        """Read until EOF or reset. Returns (how, bytes received before the end),
        how = "eof" | "reset"; HTTPTimeout if the connection stays open."""
        try:
            data = self.reader.read_to_eof(deadline_in(timeout))
        except HTTPTimeout as e:
            raise HTTPTimeout("%s: still open after %.1fs: %s" % (self.name, timeout, e)) from None
        except OSError as e:  # e.g. EPIPE surfaced on a read
            return "reset:%s" % type(e).__name__, b""
        return ("reset" if self.reader.reset else "eof"), data

    def quiet(self, seconds):
        """Bytes (or an end) arriving within `seconds`: a bounded negative check.
        Returns b"" if nothing came, the bytes otherwise, b"<EOF>"/b"<RESET>"."""
        if self.reader.buf:
            out = bytes(self.reader.buf)
            self.reader.buf.clear()
            return out
        r, _, _ = select.select([self.sock], [], [], seconds)
        if not r:
            return b""
        try:
            self.sock.settimeout(1.0)
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.reader.eof = self.reader.reset = True
            return b"<RESET>"
        if not data:
            self.reader.eof = True
            return b"<EOF>"
        return data

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def abort(self):
        """Close with an RST (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------------ backend

class Upgrader:
    """Backend that answers the first request of each connection with `answer`
    (bytes, callable(req) -> bytes, or None for nothing) and hands the
    connection to the test: take() returns an End with .request and .conn."""

    def __init__(self, backend_factory, answer, name="upgrader", request_timeout=15.0):
        self.answer = answer
        self.request_timeout = request_timeout
        self.q = queue.Queue()
        self.released = threading.Event()
        self.backend = backend_factory(handler=self._handler, name=name)
        self.address = self.backend.address

    def _handler(self, conn):
        req = conn.read_request(timeout=self.request_timeout)
        if req is None:
            return
        data = self.answer(req) if callable(self.answer) else self.answer
        if data:
            conn.send(data)
        end = End(conn.sock, conn.reader, name="backend#%d" % conn.index)
        end.conn = conn
        end.request = req
        self.q.put(end)
        # The test owns the socket now; park (bounded) until it is done.
        end_by = time.monotonic() + 600
        while not self.released.wait(0.2):
            if conn.backend._stop or time.monotonic() > end_by:
                break

    def take(self, timeout=10.0):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("%s: no upgrade request arrived within %.0fs (conns=%d, errors=%r)"
                                 % (self.backend.name, timeout, len(self.backend.conns),
                                    self.backend.errors)) from None

    def idle(self):
        """True when no handed-over connection is waiting to be taken."""
        return self.q.empty()

    def release(self):
        self.released.set()


_DEFAULT = object()


@pytest.fixture
def upgrader(backend):
    """Factory: upgrader(answer=switching(...)) -> Upgrader (see above);
    answer=None: the backend writes nothing, the test answers."""
    made = []

    def factory(answer=_DEFAULT, name="upgrader", **kw):
        if answer is _DEFAULT:
            answer = switching()
        u = Upgrader(backend, answer, name=name, **kw)
        made.append(u)
        return u

    yield factory
    for u in made:
        u.release()


def open_tunnel(px, up, request, timeout=10.0):
    """Send an upgrade request through the proxy; expect a 101 and the
    upstream connection. Returns (Client, client End, backend End, 101 response)."""
    c = px.connect()
    try:
        c.send(request)
        r = c.response(timeout=timeout)
        assert r.status == 101, "expected a 101, got %r" % r.head
        be = up.take(timeout)
    except BaseException:
        c.close()
        raise
    return c, End(c.sock, c.reader, "client"), be, r


# ------------------------------------------------------------------ pump

class Stream:
    """payload written to src, expected (exactly, in order) at dst."""

    def __init__(self, src, dst, data, label=None):
        self.src, self.dst = src, dst
        self.data = memoryview(data)
        self.label = label or "%s->%s" % (src.name, dst.name)
        self.sent = 0
        self.received = 0
        self.sha_sent = hashlib.sha256(data).hexdigest()
        self.h = hashlib.sha256()
        self.mismatch = None
        self.extra = b""
        self.error = None
        self.ended = None  # "eof"/"reset" if dst's connection ended

    @property
    def sha_received(self):
        return self.h.hexdigest()

    @property
    def done(self):
        return self.error is not None or (self.sent == len(self.data) and
                                          self.received >= len(self.data))

    def ok(self):
        return (self.error is None and self.mismatch is None and not self.extra
                and self.received == len(self.data) and self.sha_received == self.sha_sent)

    def describe(self):
        return ("%s: sent %d/%d received %d%s%s%s%s" %
                (self.label, self.sent, len(self.data), self.received,
                 "" if self.mismatch is None else " MISMATCH " + self.mismatch,
                 " EXTRA %r" % self.extra[:100] if self.extra else "",
                 " ERROR %s" % self.error if self.error else "",
                 " (dst ended: %s)" % self.ended if self.ended else ""))

    def _got(self, chunk):
        n = len(chunk)
        want = len(self.data) - self.received
        if n > want:
            self.extra += bytes(chunk[want:])
            chunk = chunk[:want]
            n = want
        if n:
            if self.mismatch is None and bytes(chunk) != bytes(self.data[self.received:self.received + n]):
                self.mismatch = diff_at(bytes(chunk), bytes(self.data[self.received:self.received + n]))
                self.mismatch += " (stream offset %d)" % self.received
            self.h.update(chunk)
            self.received += n


def pump(streams, timeout=30.0, chunk=256 * 1024):
    """Move every stream's payload at once; returns when all are done, one has
    failed, or the deadline passes (no exception: inspect the streams, or use
    assert_pumped). Bytes already buffered in a dst reader count first."""
    end = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    writer = {}
    reader = {}
    socks = {}
    for s in streams:
        writer[s.src.sock.fileno()] = s
        reader[s.dst.sock.fileno()] = s
        socks[s.src.sock.fileno()] = s.src.sock
        socks[s.dst.sock.fileno()] = s.dst.sock
        if s.dst.reader.buf:
            s._got(bytes(s.dst.reader.buf))
            s.dst.reader.buf.clear()
    for fd, sk in socks.items():
        sk.setblocking(False)

    def mask(fd):
        m = 0
        w = writer.get(fd)
        if w is not None and w.error is None and w.sent < len(w.data):
            m |= selectors.EVENT_WRITE
        r = reader.get(fd)
        if r is not None and r.error is None and r.received < len(r.data):
            m |= selectors.EVENT_READ
        return m

    registered = {}

    def update(fd):
        m = mask(fd)
        old = registered.get(fd, 0)
        if m == old:
            return
        if old and m:
            sel.modify(socks[fd], m)
            registered[fd] = m
        elif m:
            sel.register(socks[fd], m)
            registered[fd] = m
        else:
            sel.unregister(socks[fd])
            del registered[fd]

    try:
        for fd in socks:
            update(fd)
        for _ in range(10 ** 8):
            if all(s.done for s in streams) or not registered:
                break
            left = end - time.monotonic()
            if left <= 0:
                break
            for key, ev in sel.select(min(left, 1.0)):
                fd = key.fd
                if ev & selectors.EVENT_READ:
                    s = reader[fd]
                    try:
                        data = socks[fd].recv(chunk)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError as e:
                        s.error = "recv: %r" % e
                        s.ended = "reset"
                        data = None
                    if data == b"":
                        s.ended = "eof"
                        s.error = "EOF at dst after %d of %d bytes" % (s.received, len(s.data))
                    elif data:
                        s._got(data)
                if ev & selectors.EVENT_WRITE:
                    s = writer[fd]
                    if s.error is None and s.sent < len(s.data):
                        try:
                            s.sent += socks[fd].send(s.data[s.sent:s.sent + chunk])
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError as e:
                            s.error = "send: %r" % e
                update(fd)
                # a socket's other role may have changed with this stream
        for s in streams:
            if not s.done and s.error is None:
                s.error = "timed out after %.0fs" % timeout
    finally:
        sel.close()
        for sk in socks.values():
            try:
                sk.settimeout(10.0)
            except OSError:
                pass
    return streams


def assert_pumped(streams):
    bad = [s for s in streams if not s.ok()]
    assert not bad, "%d of %d streams failed:\n%s" % (
        len(bad), len(streams), "\n".join(s.describe() for s in bad[:20]))


def drain_check(end, seconds=0.2):
    """Nothing more arrives at end within seconds (bounded negative check)."""
    extra = end.quiet(seconds)
    assert extra == b"", "%s received unexpected bytes: %r" % (end.name, extra[:300])
