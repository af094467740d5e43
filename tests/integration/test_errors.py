"""Errors the proxy generates itself: 404, 400, 431 (and their bodies)."""
import threading

from support.http import response_bytes, get

OK = response_bytes(200, body=b"ok")


def assert_error_response(r, status):
    assert r is not None, "connection closed without a response"
    assert r.status == status, r.head
    assert r.version == "HTTP/1.1"
    assert r.framing == "length", "error response without Content-Length: %r" % r.head
    assert 0 < len(r.body) <= 1024, "error body should be short and non-empty: %r" % r.body
    assert int(r.value("content-length")) == len(r.body)


def test_no_route_is_404(proxy, backend):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]},
               routes=[{"match": {"host": "only.example", "path_prefix": "/"}, "upstream": "web"}])
    with px.connect() as c:
        r = c.request(get("/x", host="other.example"))
        r2 = c.request(get("/y", host="only.example"))  # keep-alive after a 404
    assert_error_response(r, 404)
    assert r2.status == 200
    assert [q.target for q in be.requests] == ["/y"]
    assert len(be.conns) == 1


def test_no_routes_at_all_is_404(proxy, backend):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]}, routes=[])
    r = px.request(get("/"))
    assert_error_response(r, 404)


def test_no_route_with_body_keeps_connection_in_sync(proxy, backend):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]},
               routes=[{"match": {"path_prefix": "/ok"}, "upstream": "web"}])
    body = b"GET /ok/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    with px.connect() as c:
        c.send(b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        r = c.response()
        assert_error_response(r, 404)
        # either the body was skipped and the connection goes on, or it was closed
        try:
            c.send(get("/ok/real"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        r2 = c.response(allow_eof=True)
    if r2 is not None:
        assert r2.status == 200
    assert all(q.target != "/ok/smuggled" for q in be.requests), \
        "a 404'd request's body was parsed as a request"


def bad_request_case(proxy, backend, bad, status):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]}, limits={"max_header_bytes": "4KiB"})
    # a second client, connected before, must not be affected
    with px.connect() as other:
        with px.connect() as c:
            c.send(bad)
            r = c.response()
            assert_error_response(r, status)
            assert r.tokens("connection") == ["close"], r.head
            assert c.closed_by_peer(5), "connection kept open after %d" % status
        r2 = other.request(get("/after"))
        assert r2.status == 200
    be.wait_requests(1)
    assert len(be.conns) == 1 and [q.target for q in be.requests] == ["/after"], \
        "the upstream saw bytes of the bad request: %r" % [bytes(x.raw) for x in be.conns]


def test_malformed_header_is_400(proxy, backend):
    bad_request_case(proxy, backend, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400)


def test_garbage_request_line_is_400(proxy, backend):
    bad_request_case(proxy, backend, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40
                     + b"\r\n\r\n", 400)


def test_bad_content_length_is_400(proxy, backend):
    bad_request_case(proxy, backend,
                     b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                     400)


def test_cl_and_te_together_is_400(proxy, backend):
    """Request smuggling guard (RFC 9112 6.3): both framings -> reject."""
    bad_request_case(proxy, backend,
                     b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)


def test_space_before_colon_is_400(proxy, backend):
    bad_request_case(proxy, backend, b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad : 1\r\n\r\n", 400)


def test_oversized_head_is_431(proxy, backend):
    big = b"X-Big: " + b"a" * 8192 + b"\r\n"
    bad_request_case(proxy, backend, b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n", 431)


def test_oversized_head_in_many_lines_is_431(proxy, backend):
    many = b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * 60) for i in range(120))  # ~8 KiB
    bad_request_case(proxy, backend, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", 431)


def test_head_just_under_limit_passes(proxy, backend):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]}, limits={"max_header_bytes": "4KiB"})
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Fill: "
    head += b"f" * (3000 - len(head)) + b"\r\n\r\n"
    r = px.request(head)
    assert r.status == 200


def test_oversized_head_sent_slowly_is_431(proxy, backend):
    """The limit holds when the head arrives in many small writes."""
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]}, limits={"max_header_bytes": "4KiB"})
    with px.connect() as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        r = None
        try:
            for i in range(200):  # 200 x 64 B = 12.8 KiB, bounded
                c.send(b"X-Slow-%03d: %s\r\n" % (i, b"s" * 50))
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.response()
    assert_error_response(r, 431)
    assert not be.conns


def test_many_clients_after_errors(proxy, backend):
    """Errors on some connections do not disturb concurrent good ones."""
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]})
    results, lock = [], threading.Lock()

    def worker(i):
        with px.connect() as c:
            if i % 2:
                c.send(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
            else:
                c.send(get("/good/%d" % i))
            r = c.response(allow_eof=True)
            with lock:
                results.append((i, r.status if r else None))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [(i, 400 if i % 2 else 200) for i in range(20)]
