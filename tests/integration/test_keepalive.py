"""Client-side keep-alive, pipelining, Connection: close, HTTP/1.0, idle timeout."""
import socket
import time

from support.http import get, deadline_in


def echo_proxy(proxy, backend, **cfg):
    be = backend()  # echo: 200 with the request target as body
    return be, proxy(upstreams={"web": [be.address]}, **cfg)


def test_sequential_requests_on_one_connection(proxy, backend):
    be, px = echo_proxy(proxy, backend)
    with px.connect() as c:
        bodies = [c.request(get("/seq/%d" % i)).body for i in range(4)]
    assert bodies == [b"/seq/0", b"/seq/1", b"/seq/2", b"/seq/3"]
    be.wait_requests(4)
    # the upstream keep-alive pool carries them all on one upstream connection
    assert [len(conn.requests) for conn in be.conns] == [4]


def test_pool_disabled_gives_one_upstream_connection_per_request(proxy, backend):
    """keepalive.max_idle: 0 turns the upstream pool off."""
    be = backend()
    px = proxy(upstreams={"web": {"servers": [{"address": be.address}],
                                  "keepalive": {"max_idle": 0}}})
    with px.connect() as c:
        bodies = [c.request(get("/seq/%d" % i)).body for i in range(3)]
    assert bodies == [b"/seq/0", b"/seq/1", b"/seq/2"]
    be.wait_requests(3)
    assert [len(conn.requests) for conn in be.conns] == [1, 1, 1]


def test_pipelined_requests_answered_in_order(proxy, backend):
    be, px = echo_proxy(proxy, backend)
    with px.connect() as c:
        c.send(get("/p/1") + get("/p/2") + b"POST /p/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        rs = [c.response(timeout=10) for _ in range(3)]
        r4 = c.request(get("/p/4"))
    assert [r.body for r in rs] == [b"/p/1", b"/p/2", b"/p/3"]
    assert r4.body == b"/p/4"
    assert [q.target for q in be.requests] == ["/p/1", "/p/2", "/p/3", "/p/4"]
    assert be.requests[2].body == b"abc"
    assert bytes(c.raw) == b"".join(r.raw for r in rs + [r4])


def test_pipelined_requests_then_half_close_all_answered(proxy, backend):
    """A client that writes its requests and then shuts its side (nc -N,
    a batch script) gets every answer, then the close; a half-close is the
    end of the requests, not of the answers (RFC 9112 §9.6)."""
    be, px = echo_proxy(proxy, backend)
    with px.connect() as c:
        c.send(get("/h/1") + get("/h/2") + get("/h/3"))
        c.sock.shutdown(socket.SHUT_WR)
        rs = [c.response(timeout=10) for _ in range(3)]
        rest = c.reader.wait_eof(deadline_in(10))
    assert [r.body for r in rs] == [b"/h/1", b"/h/2", b"/h/3"], [r.head for r in rs]
    assert rs[-1].values("Connection") == ["close"], rs[-1].head
    assert rest == b""


def test_client_connection_close(proxy, backend):
    be, px = echo_proxy(proxy, backend)
    with px.connect() as c:
        r = c.request(get("/bye", extra=b"Connection: close\r\n"))
        assert c.closed_by_peer(5), "proxy kept the connection open after Connection: close"
    assert r.status == 200 and r.body == b"/bye"
    assert r.values("connection") == ["close"], r.head
    assert not be.requests[0].has("connection")


def test_pipelined_after_connection_close_is_ignored(proxy, backend):
    be, px = echo_proxy(proxy, backend)
    with px.connect() as c:
        c.send(get("/a", extra=b"Connection: close\r\n") + get("/b"))
        r = c.response()
        assert c.closed_by_peer(5)
    assert r.body == b"/a"
    be.wait_requests(1)
    assert [q.target for q in be.requests] == ["/a"]


def test_http10_without_keepalive_closed(proxy, backend):
    be, px = echo_proxy(proxy, backend)
    with px.connect() as c:
        r = c.request(get("/old", version="HTTP/1.0"))
        assert c.closed_by_peer(5), "HTTP/1.0 connection left open"
    assert r.status == 200 and r.body == b"/old"
    assert r.tokens("connection") == ["close"], r.head


def test_http10_keepalive(proxy, backend):
    be, px = echo_proxy(proxy, backend)
    with px.connect() as c:
        r1 = c.request(get("/k1", version="HTTP/1.0", extra=b"Connection: keep-alive\r\n"))
        r2 = c.request(get("/k2", version="HTTP/1.0", extra=b"Connection: Keep-Alive\r\n"))
        r3 = c.request(get("/k3", version="HTTP/1.0"))
        assert c.closed_by_peer(5)
    assert (r1.body, r2.body, r3.body) == (b"/k1", b"/k2", b"/k3")
    assert r1.values("connection") == ["keep-alive"], r1.head
    assert r2.values("connection") == ["keep-alive"], r2.head
    assert not r1.has("transfer-encoding") and r1.framing == "length"
    assert r3.tokens("connection") == ["close"], r3.head
    for q in be.requests:
        assert not q.has("connection") and not q.has("keep-alive"), q.head


def test_idle_keepalive_closed_after_client_idle(proxy, backend):
    be, px = echo_proxy(proxy, backend, timeouts={"client_idle": "300ms"})
    with px.connect() as c:
        r = c.request(get("/idle"))
        t0 = time.monotonic()
        assert c.closed_by_peer(5), "idle connection not closed within 5 s (client_idle 300ms)"
        waited = time.monotonic() - t0
    assert r.status == 200
    assert 0.2 <= waited < 3.0, "closed after %.2fs, client_idle is 300ms" % waited


def test_busy_connection_not_cut_by_client_idle(proxy, backend):
    """client_idle counts idleness between requests, not the connection's age."""
    be, px = echo_proxy(proxy, backend, timeouts={"client_idle": "300ms"})
    with px.connect() as c:
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.0 and n < 2000:  # bounded: 1 s and 2000 requests
            assert c.request(get("/busy/%d" % n)).status == 200
            n += 1
    assert n > 5
