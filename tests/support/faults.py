"""Helpers for the fault-injection and soak tests (test_faults.py, test_soak.py).

    by = Bystander(px, "/bystander")     # a keep-alive client that must keep working
    by.check()                            # one request/response on it, asserted
    line = wait_stderr(px, r"connect failed")
    wait_stall(lambda: progress.sent, what="backend send")   # until a counter stops moving
    rss = px.vm_rss_kib()   /  px.cpu_seconds()               # conftest.Proxy

Everything waits on a condition with a deadline; the only sleeps are poll
intervals of bounded waits and the fixed windows of a measurement.
"""
import hashlib
import re
import select
import socket
import struct
import threading
import time

from .http import Reader, read_response, deadline_in, wait_until

MiB = 1024 * 1024
RSS_LIMIT_KIB = 64 * 1024


# ------------------------------------------------------------------ waiting

# wait_until lives in support.http (one poll loop for every helper)
def wait_stderr(px, pattern, timeout=5.0, n=1):
    """The proxy's stderr lines matching the regex pattern, once there are n."""
    rx = re.compile(pattern)
    last = [""]

    def found():
        last[0] = px.stderr()
        hits = [ln for ln in last[0].splitlines() if rx.search(ln)]
        return hits if len(hits) >= n else None
    try:
        return wait_until(found, timeout, "stderr line /%s/" % pattern)
    except AssertionError as e:
        raise AssertionError("%s\nstderr:\n%s" % (e, last[0][-4000:])) from None


def wait_stall(counter, what, quiet=0.7, timeout=30.0, interval=0.05):
    """Wait until counter() has not changed for `quiet` seconds (a writer is
    blocked by backpressure). Returns the value it settled on."""
    end = time.monotonic() + timeout
    last = counter()
    since = time.monotonic()
    for _ in range(10 ** 7):
        time.sleep(interval)  # poll interval of a bounded condition wait
        v = counter()
        now = time.monotonic()
        if v != last:
            last, since = v, now
        elif now - since >= quiet:
            return v
        if now > end:
            raise AssertionError("%s never stalled within %.0fs (still moving at %d)"
                                 % (what, timeout, v))
    raise AssertionError("unreachable")


def assert_alive(px):
    rc = px.proc.poll()
    assert rc is None, "the proxy exited (rc %s)\nstderr:\n%s" % (rc, px.stderr()[-4000:])


def rss_samples(px, seconds=1.0, every=0.1):
    """VmRSS (KiB) sampled over a window; returns the list."""
    out = []
    end = time.monotonic() + seconds
    for _ in range(10000):
        out.append(px.vm_rss_kib())
        if time.monotonic() >= end:
            break
        time.sleep(every)  # sampling interval of a fixed measurement window
    return out


def cpu_delta(px, seconds=1.0):
    """CPU seconds (user + system, all threads) the proxy used over a window."""
    c0 = px.cpu_seconds()
    time.sleep(seconds)  # the measurement window itself
    return px.cpu_seconds() - c0


# ------------------------------------------------------------------ sockets

def abort(sock):
    """Close with an RST (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def ended_within(sock, seconds):
    """Read (discarding) until the peer closes; returns "eof", "reset" or
    "error:..." — or None if the connection is still open after seconds."""
    end = time.monotonic() + seconds
    sock.setblocking(False)
    try:
        for _ in range(10 ** 6):
            left = end - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([sock], [], [], min(left, 0.2))
            if not r:
                continue
            try:
                data = sock.recv(256 * 1024)
            except (BlockingIOError, InterruptedError):
                continue
            except (ConnectionResetError, ConnectionAbortedError):
                return "reset"
            except OSError as e:
                return "error:%s" % type(e).__name__
            if not data:
                return "eof"
        return None
    finally:
        try:
            sock.settimeout(10.0)
        except OSError:
            pass


def ends_while_writing(sock, seconds, chunk=64 * 1024):
    """Keep writing to sock (and reading what comes) until its connection
    fails or ends; returns how ("send: ...", "eof", "recv: ..."), or None if
    it is still open and writable-or-blocked after seconds."""
    sock.setblocking(False)
    data = b"w" * chunk
    end = time.monotonic() + seconds
    try:
        for _ in range(10 ** 6):
            if time.monotonic() > end:
                return None
            try:
                sock.send(data)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                return "send: %s" % type(e).__name__
            r, _, _ = select.select([sock], [], [], 0.02)
            if r:
                try:
                    if sock.recv(256 * 1024) == b"":
                        return "eof"
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    return "recv: %s" % type(e).__name__
        return None
    finally:
        try:
            sock.settimeout(10.0)
        except OSError:
            pass


# ------------------------------------------------------------------ data

class Pattern:
    """A long deterministic byte stream made of one random block repeated,
    with the block index stamped into each block (so a dropped or repeated
    block changes the bytes, not only the count)."""

    def __init__(self, total, block=MiB, seed=7):
        import random
        self.total = total
        self.block = block
        self.base = bytearray(random.Random(seed).randbytes(block))

    def piece(self, offset, n):
        """n bytes of the stream from offset (offset block-aligned or not)."""
        out = bytearray()
        while n > 0 and offset < self.total:
            bi, off = divmod(offset, self.block)
            blk = self._block(bi)
            take = min(n, self.block - off, self.total - offset)
            out += blk[off:off + take]
            offset += take
            n -= take
        return bytes(out)

    def _block(self, i):
        c = getattr(self, "_cache", None)  # one tuple: safe to share between threads
        if c is None or c[0] != i:
            b = bytearray(self.base)
            b[0:8] = struct.pack(">Q", i)
            c = (i, bytes(b))
            self._cache = c
        return c[1]

    def sha256(self):
        h = hashlib.sha256()
        for off in range(0, self.total, self.block):
            h.update(self.piece(off, self.block))
        return h.hexdigest()


class Checker:
    """Checks received bytes against a Pattern as they arrive."""

    def __init__(self, pattern):
        self.p = pattern
        self.got = 0
        self.mismatch = None

    def feed(self, data):
        if self.mismatch is None:
            want = self.p.piece(self.got, len(data))
            if want != bytes(data[:len(want)]) or len(data) > len(want):
                i = next((k for k in range(min(len(want), len(data))) if want[k] != data[k]),
                         min(len(want), len(data)))
                self.mismatch = "first difference at stream offset %d" % (self.got + i)
        self.got += len(data)


# ------------------------------------------------------------------ bystander

class Bystander:
    """A keep-alive client connection through the proxy that a fault must not
    disturb: check() sends one request on it and asserts a 200 whose body is
    the path (the backend is support.backend's echo handler)."""

    def __init__(self, px, path="/bystander", host="example.test"):
        self.px = px
        self.path = path
        self.host = host
        self.n = 0
        self.sock = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = Reader(self.sock)

    def check(self, timeout=10.0, fresh_too=True):
        self.n += 1
        target = "%s/%d" % (self.path, self.n)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, self.host)).encode())
        r = read_response(self.reader, deadline_in(timeout))
        assert r is not None, "the bystander's keep-alive connection was closed by the proxy"
        assert r.status == 200 and r.body == target.encode(), \
            "bystander got %r %r" % (r.head[:200], r.body[:200])
        if fresh_too:
            with socket.create_connection(("127.0.0.1", self.px.port), timeout=10) as s:
                s.sendall(("GET %s/fresh HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                           % (self.path, self.host)).encode())
                r = read_response(Reader(s), deadline_in(timeout))
                assert r is not None and r.status == 200, "a fresh connection got %r" % (r,)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------------ backends

class Progress:
    def __init__(self):
        self.sent = 0
        self.received = 0
        self.ended = None
        self.lock = threading.Lock()


def streaming_handler(pattern, progress, head=None, chunk=256 * 1024):
    """Backend handler: read one request, answer 200 with Content-Length
    pattern.total and the pattern as body, counting progress.sent."""
    def handler(conn):
        req = conn.read_request(timeout=15)
        if req is None:
            return
        conn.sock.sendall(head if head is not None else
                          b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % pattern.total)
        conn.sock.settimeout(120)
        off = 0
        try:
            while off < pattern.total:
                piece = pattern.piece(off, chunk)
                conn.sock.sendall(piece)
                off += len(piece)
                progress.sent = off
            progress.ended = "done"
        except OSError as e:
            progress.ended = "send: %r" % e
        conn.wait_eof(timeout=30)
    return handler


def echo_end(end, progress, stop, timeout=120.0):
    """Thread body: echo everything end receives back to it until EOF/error
    (or stop is set / timeout)."""
    sock = end.sock
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    if end.reader.buf:
        data = bytes(end.reader.buf)
        end.reader.buf.clear()
        sock.sendall(data)
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                data = sock.recv(256 * 1024)
            except socket.timeout:
                continue
            if not data:
                progress.ended = "eof"
                return
            progress.received += len(data)
            view = memoryview(data)
            while view and not stop.is_set():
                try:
                    n = sock.send(view)
                except socket.timeout:
                    continue
                view = view[n:]
                progress.sent += n
    except OSError as e:
        progress.ended = "error: %s" % type(e).__name__
