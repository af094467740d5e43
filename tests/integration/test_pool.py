"""Upstream keep-alive pool: stale-connection retry, never pooled after an
upgrade, non-idempotent requests not retried."""
import socket
import struct

from support.http import response_bytes


def get(path, method="GET"):
    return ("%s %s HTTP/1.1\r\nHost: pool.test\r\n\r\n" % (method, path)).encode()


def rst_close(conn):
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.sock.close()
    conn.closed = True


def first_conn_dies_on_second_request(conn):
    """Connection 0 answers one request, then dies (RST) when the second
    arrives, as a server does whose idle timeout races the reuse. Later
    connections answer everything."""
    for i in range(10):
        req = conn.read_request(timeout=10)
        if req is None:
            return
        if conn.index == 0 and i == 1:
            rst_close(conn)
            return
        conn.send(response_bytes(200, body=req.target.encode()))


def test_stale_pooled_connection_is_retried_once_for_idempotent_requests(proxy, backend):
    be = backend(handler=first_conn_dies_on_second_request)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        r1 = c.request(get("/one"))
        r2 = c.request(get("/two"))
    assert (r1.status, r1.body) == (200, b"/one")
    # /two went out on the pooled connection, which died before answering:
    # the proxy sent it again on a fresh connection instead of a 502.
    assert (r2.status, r2.body) == (200, b"/two")
    be.wait_requests(3)
    assert [q.target for q in be.conns[0].requests] == ["/one", "/two"]
    assert [q.target for q in be.conns[1].requests] == ["/two"]


def test_non_idempotent_request_is_not_retried(proxy, backend):
    be = backend(handler=first_conn_dies_on_second_request)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        assert c.request(get("/one")).status == 200
        c.send(b"POST /two HTTP/1.1\r\nHost: pool.test\r\nContent-Length: 0\r\n\r\n")
        r = c.response(method="POST", allow_eof=True)
    # A POST may have had effects: the proxy answers 502, never sends it twice.
    assert r is not None and r.status == 502, r
    assert sum(1 for x in be.requests if x.target == "/two") == 1


def upgrade_refused_then_plain(conn):
    for _ in range(10):
        req = conn.read_request(timeout=10)
        if req is None:
            return
        conn.send(response_bytes(200, body=req.target.encode()))


def test_connection_that_carried_an_upgrade_is_never_pooled(proxy, backend):
    be = backend(handler=upgrade_refused_then_plain)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        r1 = c.request(b"GET /ws HTTP/1.1\r\nHost: pool.test\r\nConnection: upgrade\r\n"
                       b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        r2 = c.request(get("/after"))
        r3 = c.request(get("/again"))
    assert r1.status == 200 and r2.status == 200 and r3.status == 200
    be.wait_requests(3)
    # The refused upgrade's upstream connection carried Upgrade: it is closed,
    # not reused; the two plain requests share one pooled connection.
    assert [q.target for q in be.conns[0].requests] == ["/ws"]
    assert [q.target for q in be.conns[1].requests] == ["/after", "/again"]


def answer_then_close(conn):
    """One answer that claims keep-alive, then the server closes at once
    (its idle limit was one request): the FIN comes with the response."""
    req = conn.read_request(timeout=10)
    if req is None:
        return
    # Corked, the FIN rides on the answer's own segment: the proxy sees both
    # in one event (without the cork they may come a turn apart, a race no
    # proxy can close: the next request may already be on its way).
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    conn.send(response_bytes(200, body=req.target.encode()))
    conn.sock.shutdown(socket.SHUT_WR)


def test_connection_closed_with_its_answer_is_not_pooled(proxy, backend):
    """Pipelined POSTs: the FIN that came with the first answer was seen by
    the proxy but not read yet when the second request looked in the pool;
    a POST cannot be retried, so reusing that connection was a 502."""
    be = backend(handler=answer_then_close)
    px = proxy(upstreams={"web": [be.address]}, workers=1)
    post = "POST /p%d HTTP/1.1\r\nHost: pool.test\r\nContent-Length: 2\r\n\r\nok"
    for round_ in range(5):
        with px.connect() as c:
            c.send((post % (2 * round_) + post % (2 * round_ + 1)).encode())
            rs = [c.response(method="POST", timeout=10) for _ in range(2)]
        assert [r.status for r in rs] == [200, 200], [r.head for r in rs]
        assert [r.body for r in rs] == [b"/p%d" % (2 * round_), b"/p%d" % (2 * round_ + 1)]
