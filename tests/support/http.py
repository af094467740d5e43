"""Minimal, strict HTTP/1.1 message reading for tests.

Everything works on a socket through `Reader`, with an absolute deadline
(time.monotonic() value) on every blocking call, so no test can hang.
Parsers return the raw bytes as well as the parsed view, because the tests
assert on exact bytes.
"""
import socket
import time

CRLF = b"\r\n"


class HTTPTimeout(AssertionError):
    """A deadline passed while waiting for bytes (an AssertionError so pytest
    shows it as a test failure with the message)."""


class ProtocolError(AssertionError):
    """The peer sent something that is not valid HTTP/1.1 framing."""


def deadline_in(seconds):
    return time.monotonic() + seconds


class Reader:
    """Buffered reader over a socket.

    record: optional bytearray every received byte is appended to (up to
    record_limit bytes; `truncated` is set beyond that)."""

    def __init__(self, sock, record=None, record_limit=64 * 1024 * 1024):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.record = record
        self.record_limit = record_limit
        self.truncated = False
        self.total = 0

    def _fill(self, deadline, size=256 * 1024):
        """Receive once. Returns the number of bytes added (0 at EOF)."""
        if self.eof:
            return 0
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HTTPTimeout("deadline passed; buffered %d bytes: %r" %
                              (len(self.buf), bytes(self.buf[:300])))
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(size)
        except socket.timeout:
            raise HTTPTimeout("timed out; buffered %d bytes: %r" %
                              (len(self.buf), bytes(self.buf[:300]))) from None
        except (ConnectionResetError, ConnectionAbortedError):
            self.eof = True
            self.reset = True
            return 0
        if not data:
            self.eof = True
            return 0
        self.total += len(data)
        if self.record is not None:
            room = self.record_limit - len(self.record)
            if room >= len(data):
                self.record += data
            else:
                if room > 0:
                    self.record += data[:room]
                self.truncated = True
        self.buf += data
        return len(data)

    def read_until(self, delim, deadline, limit=1024 * 1024):
        """Bytes up to and including delim. Returns None on EOF with nothing
        buffered; raises ProtocolError on EOF mid-way."""
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError("no %r within %d bytes: %r" % (delim, limit, bytes(self.buf[:300])))
            start = max(0, len(self.buf) - len(delim) + 1)
            if self._fill(deadline) == 0:
                if not self.buf:
                    return None
                raise ProtocolError("EOF before %r; got %r" % (delim, bytes(self.buf[:300])))

    def read_exact(self, n, deadline, sink=None):
        """n bytes (or, with sink, pass them to sink in pieces and return None)."""
        if sink is None:
            while len(self.buf) < n:
                if self._fill(deadline) == 0:
                    raise ProtocolError("EOF after %d of %d bytes" % (len(self.buf), n))
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        left = n
        while left > 0:
            if not self.buf and self._fill(deadline) == 0:
                raise ProtocolError("EOF with %d of %d bytes missing" % (left, n))
            take = min(left, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            left -= take
        return None

    def read_to_eof(self, deadline, sink=None):
        out = bytearray()
        while True:
            if self.buf:
                if sink is None:
                    out += self.buf
                else:
                    sink(bytes(self.buf))
                self.buf.clear()
            if self._fill(deadline) == 0:
                return None if sink is not None else bytes(out)

    def wait_eof(self, deadline):
        """Read and discard until EOF; returns the discarded bytes. Raises
        HTTPTimeout if the peer keeps the connection open past the deadline."""
        return self.read_to_eof(deadline)


# ---------------------------------------------------------------- heads

def parse_head(head):
    """head: bytes ending in CRLFCRLF. Returns (start_line, lines, fields):
    lines = raw header lines (bytes, without CRLF), fields = [(name, value)] as
    str with the value's surrounding whitespace stripped."""
    if not head.endswith(b"\r\n\r\n"):
        raise ProtocolError("head does not end in CRLFCRLF: %r" % head[-20:])
    parts = head[:-4].split(b"\r\n")
    start = parts[0].decode("latin-1")
    lines = parts[1:] if parts[1:] != [b""] else []
    fields = []
    for ln in lines:
        if b":" not in ln:
            raise ProtocolError("header line without colon: %r" % ln)
        name, _, value = ln.partition(b":")
        fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return start, lines, fields


def field_values(fields, name):
    n = name.lower()
    return [v for k, v in fields if k.lower() == n]


def field_tokens(fields, name):
    out = []
    for v in field_values(fields, name):
        out += [t.strip().lower() for t in v.split(",") if t.strip()]
    return out


def read_chunked(reader, deadline, sink=None, limit=1 << 40):
    """Decode a chunked body. Returns (body or None with sink, raw bytes or None
    with sink, trailer lines)."""
    body = bytearray()
    raw = bytearray() if sink is None else None
    total = 0
    for _ in range(10 ** 7):
        line = reader.read_until(b"\r\n", deadline, limit=4096)
        if line is None:
            raise ProtocolError("EOF before chunk size line")
        if raw is not None:
            raw += line
        size_txt = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_txt, 16)
        except ValueError:
            raise ProtocolError("bad chunk size line %r" % line) from None
        if size == 0:
            trailers = []
            for _ in range(1000):
                t = reader.read_until(b"\r\n", deadline, limit=65536)
                if t is None:
                    raise ProtocolError("EOF in trailer section")
                if raw is not None:
                    raw += t
                if t == b"\r\n":
                    return (bytes(body) if sink is None else None,
                            bytes(raw) if raw is not None else None, trailers)
                trailers.append(t[:-2])
            raise ProtocolError("too many trailer lines")
        total += size
        if total > limit:
            raise ProtocolError("chunked body above %d bytes" % limit)
        if sink is None:
            data = reader.read_exact(size, deadline)
            body += data
            raw += data
        else:
            reader.read_exact(size, deadline, sink=sink)
        crlf = reader.read_exact(2, deadline)
        if raw is not None:
            raw += crlf
        if crlf != b"\r\n":
            raise ProtocolError("chunk data not followed by CRLF: %r" % crlf)
    raise ProtocolError("too many chunks")


class Message:
    """A request or response as read off the wire."""

    def __init__(self, head, start, lines, fields):
        self.head = head            # raw head bytes including the final CRLFCRLF
        self.start_line = start
        self.lines = lines          # raw header lines without CRLF
        self.fields = fields        # [(name, value)]
        self.body = b""            # decoded body (None when streamed to a sink)
        self.raw_body = b""        # body bytes as framed on the wire
        self.framing = "none"       # none | length | chunked | close
        self.trailers = []

    def values(self, name):
        return field_values(self.fields, name)

    def value(self, name):
        v = self.values(name)
        assert len(v) == 1, "expected exactly one %s field, got %r in %r" % (name, v, self.head)
        return v[0]

    def has(self, name):
        return bool(self.values(name))

    def tokens(self, name):
        return field_tokens(self.fields, name)

    @property
    def raw(self):
        return self.head + (self.raw_body or b"")

    def __repr__(self):
        return "<%s %r body=%d bytes>" % (type(self).__name__, self.head,
                                          len(self.body or b""))


class Request(Message):
    def __init__(self, head, start, lines, fields):
        super().__init__(head, start, lines, fields)
        parts = start.split(" ")
        if len(parts) != 3:
            raise ProtocolError("bad request line %r" % start)
        self.method, self.target, self.version = parts


class Response(Message):
    def __init__(self, head, start, lines, fields):
        super().__init__(head, start, lines, fields)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ProtocolError("bad status line %r" % start)
        self.version = parts[0]
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) == 3 else ""


def read_request(reader, deadline, sink=None, max_head=1024 * 1024):
    """One request (head + body). None on a clean EOF before the first byte."""
    head = reader.read_until(b"\r\n\r\n", deadline, limit=max_head)
    if head is None:
        return None
    req = Request(head, *parse_head(head))
    te = req.tokens("transfer-encoding")
    if te:
        if te[-1] != "chunked":
            raise ProtocolError("request with non-chunked final coding: %r" % te)
        req.framing = "chunked"
        req.body, req.raw_body, req.trailers = read_chunked(reader, deadline, sink)
    elif req.has("content-length"):
        n = int(req.value("content-length"))
        req.framing = "length"
        req.body = reader.read_exact(n, deadline, sink=sink)
        req.raw_body = req.body
    return req


def read_response(reader, deadline, method="GET", sink=None, max_head=1024 * 1024):
    """One response, 1xx included (the caller loops over interim ones).
    Returns None on a clean EOF before the first byte."""
    head = reader.read_until(b"\r\n\r\n", deadline, limit=max_head)
    if head is None:
        return None
    resp = Response(head, *parse_head(head))
    no_body = (method == "HEAD" or 100 <= resp.status < 200 or resp.status in (204, 304))
    if no_body:
        return resp
    te = resp.tokens("transfer-encoding")
    if te and te[-1] == "chunked":
        resp.framing = "chunked"
        resp.body, resp.raw_body, resp.trailers = read_chunked(reader, deadline, sink)
    elif not te and resp.has("content-length"):
        n = int(resp.value("content-length"))
        resp.framing = "length"
        resp.body = reader.read_exact(n, deadline, sink=sink)
        resp.raw_body = resp.body
    else:
        resp.framing = "close"
        resp.body = reader.read_to_eof(deadline, sink=sink)
        resp.raw_body = resp.body
    return resp


# ---------------------------------------------------------------- builders

def response_bytes(status=200, reason=None, headers=(), body=b"", length=True,
                   version="HTTP/1.1"):
    """A response with the given header lines (str or bytes, without CRLF)
    and, when length is true, a Content-Length line appended."""
    if reason is None:
        reason = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
                  404: "Not Found", 500: "Internal Server Error"}.get(status, "Status")
    out = bytearray(("%s %d %s\r\n" % (version, status, reason)).encode())
    for h in headers:
        out += (h.encode("latin-1") if isinstance(h, str) else h) + b"\r\n"
    if length:
        out += b"Content-Length: %d\r\n" % len(body)
    out += b"\r\n" + body
    return bytes(out)


def chunk(body, size=None):
    """Encode body as chunked (chunks of `size` bytes, default one chunk)."""
    out = bytearray()
    size = size or max(1, len(body))
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    out += b"0\r\n\r\n"
    return bytes(out)


def get(path="/", host="example.test", extra=b"", method="GET", version="HTTP/1.1"):
    """A request head without body: METHOD path VERSION, Host, extra lines
    (bytes, each ending in CRLF), final CRLF."""
    return (("%s %s %s\r\nHost: %s\r\n" % (method, path, version, host)).encode()
            + extra + b"\r\n")


def assert_bytes(got, want, what="bytes"):
    """Exact comparison with both sides shown line by line on failure."""
    got, want = bytes(got), bytes(want)
    if got == want:
        return
    def show(b):
        return "\n".join("    %r" % ln for ln in b.split(b"\r\n"))
    i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]),
             min(len(got), len(want)))
    raise AssertionError("%s differ at byte %d\n  observed:\n%s\n  expected:\n%s"
                         % (what, i, show(got), show(want)))


def wait_until(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns something true (and return that);
    AssertionError naming `what` after timeout seconds."""
    end = time.monotonic() + timeout
    for _ in range(10 ** 7):
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            break
        time.sleep(interval)  # poll interval of a bounded condition wait
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
