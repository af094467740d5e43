"""The request head the upstream sees and the response head the client sees,
byte for byte (plain HTTP/1.1 forwarding, RFC 9110 7.6.1 hop-by-hop rules)."""
import socket

import pytest

from support.http import assert_bytes, response_bytes, get

OK = response_bytes(200, body=b"ok")


def appended(host, xff=True, proto=True, xhost=True, via=True):
    out = b""
    if xff:
        out += b"X-Forwarded-For: 127.0.0.1\r\n"
    if proto:
        out += b"X-Forwarded-Proto: http\r\n"
    if xhost:
        out += b"X-Forwarded-Host: " + host + b"\r\n"
    if via:
        out += b"Via: 1.1 switchyard\r\n"
    return out


def upstream_head_for(proxy, backend, request, response=OK, **cfg):
    be = backend(response=response)
    px = proxy(upstreams={"web": [be.address]}, **cfg)
    with px.connect() as c:
        r = c.request(request)
    req = be.wait_requests(1)[0]
    return req, r, be, px


def test_plain_get_head_exact(proxy, backend):
    client = (b"GET /a/b?x=1&y=%20z HTTP/1.1\r\nHost: example.test\r\n"
              b"User-Agent: t/1\r\nAccept: */*\r\n\r\n")
    req, r, be, _ = upstream_head_for(proxy, backend, client)
    assert r.status == 200 and r.body == b"ok"
    assert_bytes(req.head, (b"GET /a/b?x=1&y=%20z HTTP/1.1\r\nHost: example.test\r\n"
                        b"User-Agent: t/1\r\nAccept: */*\r\n" + appended(b"example.test") + b"\r\n"))
    assert be.conns[0].raw == req.head, "bytes after the head of a body-less GET"


def test_header_lines_byte_for_byte(proxy, backend):
    lines = (b"x-lower-case: a\r\n"
             b"X-NoSpace:b\r\n"
             b"X-Spaced:   c  d\r\n"
             b"X-Trailing: v  \r\n"
             b"X-Dup: 1\r\n"
             b"Host: Example.TEST:8080\r\n"
             b"X-Dup: 2\r\n"
             b"Cookie: a=1\r\n"
             b"cookie: b=2\r\n"
             b"X-Empty:\r\n"
             b"X-Tab:\tt\r\n")
    client = b"GET /h HTTP/1.1\r\n" + lines + b"\r\n"
    req, r, _, _ = upstream_head_for(proxy, backend, client)
    assert r.status == 200
    assert_bytes(req.head, (b"GET /h HTTP/1.1\r\n" + lines + appended(b"Example.TEST:8080") + b"\r\n"))


@pytest.mark.parametrize("empty", [b"X-Empty:", b"X-Empty: ", b"X-Empty:\t"])
def test_empty_header_value_does_not_end_the_head(proxy, backend, empty):
    """An empty field value is legal (RFC 9110 5.5); the lines after it and the
    proxy's own fields must still be forwarded (else X-Forwarded-For could be
    dropped by a client at will)."""
    client = (b"GET /e HTTP/1.1\r\nHost: e.test\r\nX-Forwarded-For: 6.6.6.6\r\n"
              + empty + b"\r\nX-After: 1\r\n\r\n")
    req, r, _, _ = upstream_head_for(proxy, backend, client)
    assert r.status == 200
    assert_bytes(req.head, b"GET /e HTTP/1.1\r\nHost: e.test\r\nX-Forwarded-For: 6.6.6.6\r\n"
                 + empty + b"\r\nX-After: 1\r\n" + appended(b"e.test") + b"\r\n")


def test_hop_by_hop_request_fields_removed(proxy, backend):
    client = (b"GET /hop HTTP/1.1\r\n"
              b"Host: h.test\r\n"
              b"Connection: keep-alive, X-Hop\r\n"
              b"X-Hop: secret\r\n"
              b"Keep-Alive: timeout=5\r\n"
              b"Proxy-Connection: keep-alive\r\n"
              b"TE: trailers\r\n"
              b"Trailer: X-T\r\n"
              b"Upgrade: websocket\r\n"
              b"X-Keep: yes\r\n"
              b"connection: x-other\r\n"
              b"X-Other: 1\r\n"
              b"X-Last: z\r\n"
              b"\r\n")
    req, r, _, _ = upstream_head_for(proxy, backend, client)
    assert r.status == 200
    assert_bytes(req.head, (b"GET /hop HTTP/1.1\r\nHost: h.test\r\nX-Keep: yes\r\nX-Last: z\r\n"
                        + appended(b"h.test") + b"\r\n"))


def test_client_forwarded_fields(proxy, backend):
    """Client X-Forwarded-For and Via are kept (ours appended after them);
    client X-Forwarded-Proto and X-Forwarded-Host are replaced."""
    client = (b"GET / HTTP/1.1\r\n"
              b"X-Forwarded-For: 10.0.0.1\r\n"
              b"Host: app.test\r\n"
              b"X-Forwarded-Proto: https\r\n"
              b"X-Forwarded-Host: evil.test\r\n"
              b"Via: 1.0 other\r\n"
              b"x-forwarded-for: 10.0.0.2, 10.0.0.3\r\n"
              b"x-forwarded-proto: https\r\n"
              b"X-Tail: 1\r\n"
              b"\r\n")
    req, r, _, _ = upstream_head_for(proxy, backend, client)
    assert r.status == 200
    assert_bytes(req.head, (b"GET / HTTP/1.1\r\n"
                        b"X-Forwarded-For: 10.0.0.1\r\n"
                        b"Host: app.test\r\n"
                        b"Via: 1.0 other\r\n"
                        b"x-forwarded-for: 10.0.0.2, 10.0.0.3\r\n"
                        b"X-Tail: 1\r\n"
                        + appended(b"app.test") + b"\r\n"))


@pytest.mark.parametrize("off", ["x_forwarded_for", "x_forwarded_proto", "x_forwarded_host", "via"])
def test_forwarding_switches(proxy, backend, off):
    client = b"GET /s HTTP/1.1\r\nHost: sw.test\r\n\r\n"
    flags = {"x_forwarded_for": True, "x_forwarded_proto": True, "x_forwarded_host": True, "via": True}
    flags[off] = False
    req, r, _, _ = upstream_head_for(proxy, backend, client, forwarding=flags)
    assert r.status == 200
    want = appended(b"sw.test", xff=flags["x_forwarded_for"], proto=flags["x_forwarded_proto"],
                    xhost=flags["x_forwarded_host"], via=flags["via"])
    assert_bytes(req.head, b"GET /s HTTP/1.1\r\nHost: sw.test\r\n" + want + b"\r\n")
    # the response Via is switched by the same key
    if off == "via":
        assert not r.has("via"), r.head
    else:
        assert r.values("via") == ["1.1 switchyard"], r.head


def test_all_forwarding_off(proxy, backend):
    client = b"GET /s HTTP/1.1\r\nHost: sw.test\r\nX-A: 1\r\n\r\n"
    flags = {"x_forwarded_for": False, "x_forwarded_proto": False, "x_forwarded_host": False,
             "via": False}
    req, r, _, _ = upstream_head_for(proxy, backend, client, forwarding=flags)
    assert_bytes(req.head, client)
    assert_bytes(r.head, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")


def test_http10_request_forwarded_as_http11(proxy, backend):
    client = b"GET /old HTTP/1.0\r\nHost: old.test\r\nX-A: 1\r\n\r\n"
    req, r, _, _ = upstream_head_for(proxy, backend, client)
    assert_bytes(req.head, (b"GET /old HTTP/1.1\r\nHost: old.test\r\nX-A: 1\r\n"
                        + appended(b"old.test") + b"\r\n"))
    assert r.status == 200 and r.body == b"ok"


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS", "PATCH", "PURGE"])
def test_methods_and_target_passed_verbatim(proxy, backend, method):
    # The path is already in normal form (paths are normalised before
    # routing); the query is never touched, escapes and case included.
    target = "/p%C3%A4th/;x=1?q=a%2fb&q=%E2%82%AC&r=%41/../x#"[:-1]
    client = ("%s %s HTTP/1.1\r\nHost: m.test\r\n\r\n" % (method, target)).encode()
    req, r, _, _ = upstream_head_for(proxy, backend, client)
    assert req.start_line == "%s %s HTTP/1.1" % (method, target)
    assert r.status == 200


def test_target_verbatim_without_normalisation(proxy, backend):
    target = "/p%41th//./x/../;x=1?q=a%2Fb"
    client = ("GET %s HTTP/1.1\r\nHost: m.test\r\n\r\n" % target).encode()
    req, r, _, _ = upstream_head_for(proxy, backend, client, paths={"normalize": False})
    assert req.start_line == "GET %s HTTP/1.1" % target
    assert r.status == 200


def test_options_asterisk(proxy, backend):
    client = b"OPTIONS * HTTP/1.1\r\nHost: m.test\r\n\r\n"
    # a host-only route: "*" is not under any path prefix
    req, r, _, _ = upstream_head_for(proxy, backend, client,
                                     routes=[{"match": {"host": "m.test"}, "upstream": "web"}])
    assert req.start_line == "OPTIONS * HTTP/1.1"
    assert r.status == 200


# ------------------------------------------------------------------ responses

def test_response_head_exact(proxy, backend):
    upstream = (b"HTTP/1.1 200 OK\r\n"
                b"Content-Type: text/plain\r\n"
                b"X-Dup: 1\r\n"
                b"x-dup:2\r\n"
                b"Set-Cookie: a=1\r\n"
                b"Set-Cookie: b=2\r\n"
                b"Via: 1.1 backend\r\n"
                b"Content-Length: 5\r\n"
                b"\r\nhello")
    _, r, _, _ = upstream_head_for(proxy, backend, get("/r"), response=upstream)
    assert_bytes(r.head, (b"HTTP/1.1 200 OK\r\n"
                      b"Content-Type: text/plain\r\n"
                      b"X-Dup: 1\r\n"
                      b"x-dup:2\r\n"
                      b"Set-Cookie: a=1\r\n"
                      b"Set-Cookie: b=2\r\n"
                      b"Via: 1.1 backend\r\n"
                      b"Content-Length: 5\r\n"
                      b"Via: 1.1 switchyard\r\n"
                      b"\r\n"))
    assert r.body == b"hello"


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 299 Whatever You Like",
                                         b"HTTP/1.1 404 Nope",
                                         b"HTTP/1.1 503 Busy Right Now",
                                         b"HTTP/1.1 200 "])
def test_reason_phrase_relayed(proxy, backend, status_line):
    upstream = status_line + b"\r\nContent-Length: 1\r\n\r\nx"
    _, r, _, _ = upstream_head_for(proxy, backend, get("/"), response=upstream)
    assert r.head.split(b"\r\n", 1)[0] == status_line
    assert r.body == b"x"


def test_hop_by_hop_response_fields_removed(proxy, backend):
    upstream = (b"HTTP/1.1 200 OK\r\n"
                b"Connection: X-Hop\r\n"
                b"X-Hop: 1\r\n"
                b"Keep-Alive: timeout=5\r\n"
                b"Proxy-Connection: keep-alive\r\n"
                b"Trailer: X-T\r\n"
                b"X-End: 1\r\n"
                b"Content-Length: 2\r\n"
                b"\r\nok")
    with_close = upstream.replace(b"Connection: X-Hop", b"Connection: close, X-Hop")
    for up in (upstream, with_close):
        _, r, _, _ = upstream_head_for(proxy, backend, get("/"), response=up)
        assert_bytes(r.head, (b"HTTP/1.1 200 OK\r\nX-End: 1\r\nContent-Length: 2\r\n"
                          b"Via: 1.1 switchyard\r\n\r\n"))
        assert r.body == b"ok"


def test_upstream_connection_close_does_not_close_client(proxy, backend):
    be = backend(response=response_bytes(200, headers=["Connection: close"], body=b"one"))
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        r1 = c.request(get("/1"))
        r2 = c.request(get("/2"))
    assert (r1.status, r1.body, r2.status, r2.body) == (200, b"one", 200, b"one")
    assert not r1.has("connection"), r1.head
    assert [q.target for q in be.requests] == ["/1", "/2"]


@pytest.mark.parametrize("src", ["127.0.0.2", "127.10.200.3", "127.255.99.250"])
def test_x_forwarded_for_is_the_client_address(proxy, backend, src):
    """The client's address as inet_ntop writes it (one-, two- and three-digit
    parts), from whichever loopback address the client connects."""
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]})
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(10)
        s.bind((src, 0))
        s.connect(("127.0.0.1", px.port))
        s.sendall(b"GET /x HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 200 "), got
    req = be.wait_requests(1)[0]
    assert req.values("x-forwarded-for") == [src], req.head
