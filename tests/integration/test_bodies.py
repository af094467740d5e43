"""Request and response bodies: framing, re-framing, HEAD/204/304, 100-continue,
and streaming 200 MiB each way with bounded proxy memory."""
import hashlib
import os
import socket
import threading
import time

import pytest

from support.http import assert_bytes, response_bytes, get, chunk, deadline_in

OK = response_bytes(200, body=b"ok")
VIA = b"Via: 1.1 switchyard\r\n"


def one_proxy(proxy, backend, response=OK, handler=None, **cfg):
    be = backend(handler=handler) if handler else backend(response=response)
    return be, proxy(upstreams={"web": [be.address]}, **cfg)


# ------------------------------------------------------------------ request bodies

def test_content_length_body_forwarded_as_is(proxy, backend):
    be, px = one_proxy(proxy, backend)
    body = bytes(range(256)) * 40 + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    client = (b"POST /up HTTP/1.1\r\nHost: b.test\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Length: %d\r\nX-After: 1\r\n\r\n" % len(body)) + body
    with px.connect() as c:
        r = c.request(client)
    assert r.status == 200
    req = be.wait_requests(1)[0]
    assert_bytes(req.head, (b"POST /up HTTP/1.1\r\nHost: b.test\r\nContent-Type: application/octet-stream\r\n"
                        b"Content-Length: %d\r\nX-After: 1\r\n" % len(body)
                        + b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                          b"X-Forwarded-Host: b.test\r\n" + VIA + b"\r\n"))
    assert req.body == body
    assert bytes(be.conns[0].raw) == req.head + body
    assert len(be.requests) == 1, "body bytes were parsed as a second request"


def test_chunked_request_body_reframed(proxy, backend):
    be, px = one_proxy(proxy, backend)
    body = os.urandom(5000) + b"0\r\n\r\n"
    wire = (b"10;ext=1\r\n" + body[:16] + b"\r\n" + b"%x\r\n" % (len(body) - 16) + body[16:] + b"\r\n"
            + b"0\r\n\r\n")
    client = (b"POST /chunked HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n"
              b"X-After: 1\r\n\r\n") + wire
    with px.connect() as c:
        r = c.request(client)
        # the connection is still in sync: a second request works
        r2 = c.request(get("/next", host="c.test"))
    assert r.status == 200 and r2.status == 200
    req = be.wait_requests(2)[0]
    assert req.framing == "chunked"
    assert req.body == body
    assert req.values("transfer-encoding") == ["chunked"], req.head
    assert not req.has("content-length"), req.head
    assert req.lines[:2] == [b"Host: c.test", b"X-After: 1"], req.head
    assert be.requests[1].target == "/next"


def test_chunked_request_many_small_chunks(proxy, backend):
    be, px = one_proxy(proxy, backend)
    body = b"".join(b"piece-%04d;" % i for i in range(500))
    client = (b"PUT /many HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\n"
              + chunk(body, 7))
    with px.connect() as c:
        c.send(client[:100])
        c.send(client[100:])
        r = c.response()
    assert r.status == 200
    req = be.wait_requests(1)[0]
    assert req.body == body
    assert req.values("transfer-encoding") == ["chunked"]


def test_empty_content_length_body(proxy, backend):
    be, px = one_proxy(proxy, backend)
    client = b"POST /e HTTP/1.1\r\nHost: e.test\r\nContent-Length: 0\r\n\r\n"
    with px.connect() as c:
        r = c.request(client)
        r2 = c.request(get("/e2"))
    assert r.status == 200 and r2.status == 200
    req = be.wait_requests(1)[0]
    assert req.lines[1] == b"Content-Length: 0" and req.body == b""


# ------------------------------------------------------------------ response bodies

def test_chunked_response_to_http11(proxy, backend):
    body = b"hello chunked world " * 50
    up = (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(body, 33))
    be, px = one_proxy(proxy, backend, response=up)
    with px.connect() as c:
        r = c.request(get("/c"))
        r2 = c.request(get("/c2"))
    assert r.status == 200 and r.framing == "chunked"
    assert r.body == body and r2.body == body
    assert r.values("transfer-encoding") == ["chunked"], r.head
    assert r.lines[0] == b"X-A: 1"
    assert sorted(r.lines[1:]) == sorted([b"Transfer-Encoding: chunked", b"Via: 1.1 switchyard"]), r.head
    assert not r.has("content-length")


def close_delimited(body):
    def handler(conn):
        if conn.read_request(timeout=10) is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n" + body)
        conn.close()
    return handler


def test_close_delimited_response_to_http11_is_chunked(proxy, backend):
    body = os.urandom(70000)
    be, px = one_proxy(proxy, backend, handler=close_delimited(body))
    with px.connect() as c:
        r = c.request(get("/cd"))
        r2 = c.request(get("/cd2"))  # the client connection survives the upstream close
    assert r.status == 200 and r.framing == "chunked", r.head
    assert r.body == body and r2.body == body
    assert r.lines[0] == b"X-A: 1"
    assert sorted(r.lines[1:]) == sorted([b"Transfer-Encoding: chunked", b"Via: 1.1 switchyard"]), r.head


def test_close_delimited_response_to_http10(proxy, backend):
    body = os.urandom(70000)
    be, px = one_proxy(proxy, backend, handler=close_delimited(body))
    with px.connect() as c:
        r = c.request(get("/cd", version="HTTP/1.0"))
        assert c.closed_by_peer(5)
    assert r.status == 200
    assert r.framing in ("close", "length"), r.head
    assert not r.has("transfer-encoding"), r.head
    assert r.body == body
    assert r.tokens("connection") == ["close"], r.head


def test_chunked_response_to_http10(proxy, backend):
    body = b"abc" * 1000
    up = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(body, 100)
    be, px = one_proxy(proxy, backend, response=up)
    with px.connect() as c:
        r = c.request(get("/c", version="HTTP/1.0"))
        assert c.closed_by_peer(5)
    assert r.status == 200
    assert not r.has("transfer-encoding"), r.head
    assert r.body == body


def head_then_get(head_response):
    """HEAD gets head_response (no body), GET gets 200 'after'."""
    def handler(conn):
        for _ in range(10):
            req = conn.read_request(timeout=10)
            if req is None:
                return
            if req.method == "HEAD" or req.target.startswith("/nobody"):
                conn.send(head_response)
            else:
                conn.send(response_bytes(200, body=b"after"))
    return handler


def test_head_response_has_no_body(proxy, backend):
    be, px = one_proxy(proxy, backend, handler=head_then_get(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1234\r\n\r\n"))
    with px.connect() as c:
        c.send(get("/h", method="HEAD"))
        r = c.response(method="HEAD")
        r2 = c.request(get("/g"))
    assert_bytes(r.head, (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1234\r\n"
                      + VIA + b"\r\n"))
    assert r2.status == 200 and r2.body == b"after"
    assert bytes(c.raw) == r.head + r2.raw, "bytes after the HEAD response head"


def test_head_response_chunked_headers_kept(proxy, backend):
    be, px = one_proxy(proxy, backend, handler=head_then_get(
        b"HTTP/1.1 200 OK\r\nX-H: 1\r\nTransfer-Encoding: chunked\r\n\r\n"))
    with px.connect() as c:
        c.send(get("/h", method="HEAD"))
        r = c.response(method="HEAD")
        r2 = c.request(get("/g"))
    assert r.status == 200 and r.lines[0] == b"X-H: 1"
    assert r2.status == 200 and r2.body == b"after"
    assert bytes(c.raw) == r.head + r2.raw


@pytest.mark.parametrize("up", [
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 100\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"y\"\r\n\r\n",
], ids=["204", "304-with-length", "304"])
def test_204_and_304_have_no_body(proxy, backend, up):
    status = int(up[9:12])
    be, px = one_proxy(proxy, backend, handler=head_then_get(up))
    with px.connect() as c:
        r = c.request(get("/nobody"))
        assert r.status == status
        assert_bytes(r.head, up[:-2] + VIA + b"\r\n")
        # the next request on the connection is answered: no body was expected
        r2 = c.request(get("/g"), timeout=5)
    assert r2.status == 200 and r2.body == b"after"
    assert bytes(c.raw) == r.head + r2.raw


def test_expect_100_continue_end_to_end(proxy, backend):
    def handler(conn):
        req = conn.reader.read_until(b"\r\n\r\n", deadline_in(10))
        conn.head_seen = req
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = conn.reader.read_exact(5, deadline_in(10))
        conn.body_seen = body
        conn.send(response_bytes(201, body=b"got " + body))
    be, px = one_proxy(proxy, backend, handler=handler)
    with px.connect() as c:
        c.send(b"POST /e HTTP/1.1\r\nHost: e.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        interim = c.response(interim=True, timeout=5)
        assert interim.status == 100, interim.head
        assert interim.start_line == "HTTP/1.1 100 Continue"
        c.send(b"hello")
        r = c.response()
    assert r.status == 201 and r.body == b"got hello"
    conn = be.wait_connections(1)[0]
    assert b"\r\nExpect: 100-continue\r\n" in conn.head_seen
    assert conn.body_seen == b"hello"


def test_final_head_split_after_an_interim(proxy, backend):
    """A 103 and the start of the final head in one read, the rest of that
    head later: the 103 goes out first, and the final head must not be
    moved under its half-read fields when the 103's write completes."""
    got_103 = threading.Event()

    def handler(conn):
        conn.reader.read_until(b"\r\n\r\n", deadline_in(10))
        conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Ty")
        assert got_103.wait(10), "the client never saw the 103"
        conn.send(b"pe: text/html\r\nContent-Length: 5\r\n\r\nhello")
    be, px = one_proxy(proxy, backend, handler=handler)
    with px.connect() as c:
        c.send(get("/early"))
        interim = c.response(interim=True, timeout=5)
        assert interim.status == 103, interim.head
        got_103.set()
        r = c.response(timeout=5)
    assert r.status == 200 and r.body == b"hello", (r.head, r.body)
    assert r.values("Content-Type") == ["text/html"], r.head


def test_trailers_do_not_count_as_header_fields(proxy, backend):
    """A chunked request whose head is near limits.max_headers and whose
    trailer section has a few fields: trailers are not head fields (and are
    not forwarded: the body is re-framed), so the request goes through."""
    be, px = one_proxy(proxy, backend, limits={"max_headers": 20})
    head = b"POST /t HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n" + \
        b"".join(b"X-H%d: v\r\n" % i for i in range(17)) + b"\r\n"
    body = b"5\r\nhello\r\n0\r\n" + b"".join(b"X-T%d: t\r\n" % i for i in range(8)) + b"\r\n"
    with px.connect() as c:
        c.send(head + body)
        r = c.response(timeout=5)
        assert r.status == 200, r.head
        r2 = c.request(get("/after"))  # the connection goes on
    assert r2.status == 200
    assert be.requests[0].body == b"hello"


def test_answer_before_the_body_ends_says_close(proxy, backend):
    """An upstream that answers (401) before the request body is in: the
    connection cannot carry another request after it, and the head says so
    instead of promising keep-alive and then closing."""
    def handler(conn):
        conn.reader.read_until(b"\r\n\r\n", deadline_in(10))
        conn.send(response_bytes(401, body=b"who?"))
    be, px = one_proxy(proxy, backend, handler=handler)
    with px.connect() as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: u.test\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        r = c.response(timeout=5)
        assert r.status == 401 and r.body == b"who?"
        assert r.values("Connection") == ["close"], r.head


def test_no_interim_answer_to_an_http10_client(proxy, backend):
    """RFC 9110 §15.2: a 1xx is never sent to an HTTP/1.0 client, which
    would take it for the answer."""
    def handler(conn):
        conn.reader.read_until(b"\r\n\r\n", deadline_in(10))
        conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        conn.send(response_bytes(200, body=b"final"))
    be, px = one_proxy(proxy, backend, handler=handler)
    with px.connect() as c:
        c.send(b"GET /old HTTP/1.0\r\nHost: old.test\r\n\r\n")
        r = c.response(timeout=5)
    assert r.status == 200 and r.body == b"final", r.head
    assert b"103" not in bytes(c.raw), bytes(c.raw)


# ------------------------------------------------------------------ big bodies

MiB = 1024 * 1024
BIG = 200 * MiB
RSS_LIMIT_KIB = 64 * 1024


def big_blocks():
    base = os.urandom(MiB)
    for i in range(BIG // MiB):
        yield i.to_bytes(8, "big") + base[8:]


def test_200mib_upload_streams(proxy, backend):
    result = {}

    def handler(conn):
        h = hashlib.sha256()
        n = [0]

        def sink(piece):
            h.update(piece)
            n[0] += len(piece)
        req = conn.read_request(timeout=50, sink=sink)
        result["n"], result["sha"], result["head"] = n[0], h.hexdigest(), req.head
        conn.send(response_bytes(200, body=b"stored"))

    be = backend(handler=handler, record_limit=64 * 1024)
    px = proxy(upstreams={"web": [be.address]})
    expect = hashlib.sha256()
    t0 = time.monotonic()
    with px.connect(timeout=50) as c:
        c.send(b"PUT /big HTTP/1.1\r\nHost: big.test\r\nContent-Length: %d\r\n\r\n" % BIG)
        for block in big_blocks():
            expect.update(block)
            c.send(block)
        r = c.response(timeout=50)
    assert r.status == 200 and r.body == b"stored"
    assert result["n"] == BIG
    assert result["sha"] == expect.hexdigest()
    hwm = px.vm_hwm_kib()
    print("proxy VmHWM %d KiB" % hwm)
    assert hwm < RSS_LIMIT_KIB, "proxy VmHWM %d KiB after a 200 MiB upload" % hwm
    assert time.monotonic() - t0 < 55


def test_200mib_download_streams(proxy, backend):
    expect = hashlib.sha256()
    started = threading.Event()

    def handler(conn):
        if conn.read_request(timeout=10) is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
        started.set()
        for block in big_blocks():
            expect.update(block)
            conn.send(block)

    be = backend(handler=handler, record_limit=64 * 1024)
    px = proxy(upstreams={"web": [be.address]})
    got = hashlib.sha256()
    n = [0]

    def sink(piece):
        got.update(piece)
        n[0] += len(piece)
    with px.connect(timeout=50) as c:
        c.send(get("/big"))
        r = c.response(timeout=50, sink=sink)
    assert r.status == 200 and n[0] == BIG
    assert got.hexdigest() == expect.hexdigest()
    hwm = px.vm_hwm_kib()
    print("proxy VmHWM %d KiB" % hwm)
    assert hwm < RSS_LIMIT_KIB, "proxy VmHWM %d KiB after a 200 MiB download" % hwm


def test_slow_reader_download_is_bounded(proxy, backend):
    """A client that reads nothing while the upstream pushes 200 MiB: the proxy
    must apply backpressure instead of buffering the response."""
    sent = [0]
    done = threading.Event()

    def handler(conn):
        if conn.read_request(timeout=10) is None:
            return
        conn.sock.settimeout(30)
        try:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            for block in big_blocks():
                conn.send(block)
                sent[0] += len(block)
        except OSError:
            pass
        finally:
            done.set()

    be = backend(handler=handler, record_limit=64 * 1024)
    px = proxy(upstreams={"web": [be.address]})
    c = px.connect()
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.send(get("/big"))
        # wait until the upstream is stalled: `sent` stops growing for a while
        end = time.monotonic() + 20
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < end:
            if sent[0] != last:
                last, stable_since = sent[0], time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                break
            done.wait(0.05)
        assert sent[0] < BIG, "the upstream could send all 200 MiB to a client reading nothing"
        hwm = px.vm_hwm_kib()
        assert hwm < RSS_LIMIT_KIB, "proxy VmHWM %d KiB with a stalled reader" % hwm
    finally:
        c.close()
