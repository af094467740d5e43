"""limits.max_connections_per_client, limits.max_tunnels, limits.body_timeout,
and the slow-loris header timeout."""
import socket
import time

from support.http import Reader, read_response, deadline_in, response_bytes
from support.tunnel import upgrade_request, switching


def upgrader_handler(conn):
    req = conn.read_request(timeout=10)
    if req is None:
        return
    conn.send(switching())
    conn.wait_eof(30)


def test_connections_per_client_address(proxy, backend):
    be = backend()
    px = proxy(upstreams={"web": [be.address]}, limits={"max_connections_per_client": 2})
    def open_served():
        # the harness's start-up probe may still count for a moment: retry
        end = time.monotonic() + 10
        while True:
            s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
            s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            r = read_response(Reader(s), deadline_in(10))
            if r.status == 200:
                return s
            s.close()
            assert time.monotonic() < end, "no slot ever freed"
    a = open_served()
    b = open_served()
    try:
        # a third one from the same address is refused cleanly with a 503
        with socket.create_connection(("127.0.0.1", px.port), timeout=10) as c:
            r = read_response(Reader(c), deadline_in(10))
            assert r is not None and r.status == 503, r
        # ... and one more is accepted once an earlier one closed
        a.close()
        end = time.monotonic() + 10
        while True:
            with socket.create_connection(("127.0.0.1", px.port), timeout=10) as c:
                c.sendall(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
                r = read_response(Reader(c), deadline_in(10))
            if r.status == 200:
                break
            assert time.monotonic() < end, "the freed slot was never given back"
    finally:
        a.close()
        b.close()
    assert any("max_connections_per_client" in ln for ln in px.stderr().splitlines())


def test_max_tunnels(proxy, backend):
    up = backend(handler=upgrader_handler)
    # one worker: the tunnel is counted before the next connection is read
    px = proxy(upstreams={"ws": [up.address]}, limits={"max_tunnels": 1}, workers=1)
    first = socket.create_connection(("127.0.0.1", px.port), timeout=10)
    try:
        first.sendall(upgrade_request("/ws"))
        assert read_response(Reader(first), deadline_in(10)).status == 101
        with socket.create_connection(("127.0.0.1", px.port), timeout=10) as c:
            c.sendall(upgrade_request("/ws"))
            r = read_response(Reader(c), deadline_in(10))
            assert r.status == 503, r.head
        assert len(up.conns) == 1, "the refused upgrade reached the upstream"
    finally:
        first.close()
    # once the tunnel is gone, a new one is allowed
    end = time.monotonic() + 10
    while True:
        with socket.create_connection(("127.0.0.1", px.port), timeout=10) as c:
            c.sendall(upgrade_request("/ws"))
            st = read_response(Reader(c), deadline_in(10)).status
        if st == 101:
            break
        assert st == 503 and time.monotonic() < end, st


def test_stalled_request_body_gets_408(proxy, backend):
    be = backend()
    px = proxy(upstreams={"web": [be.address]}, limits={"body_timeout": "300ms"})
    with socket.create_connection(("127.0.0.1", px.port), timeout=10) as c:
        c.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part")
        t0 = time.monotonic()
        r = read_response(Reader(c), deadline_in(10))
        assert r.status == 408, r.head
        assert time.monotonic() - t0 < 5
    # other connections are fine
    with socket.create_connection(("127.0.0.1", px.port), timeout=10) as c:
        c.sendall(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(Reader(c), deadline_in(10)).status == 200


def test_slowloris_cut_at_header_timeout(proxy, backend):
    be = backend()
    px = proxy(upstreams={"web": [be.address]}, limits={"header_timeout": "500ms"})
    with socket.create_connection(("127.0.0.1", px.port), timeout=10) as c:
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Trickle: "
        t0 = time.monotonic()
        closed = False
        for i in range(40):  # one byte every 100 ms: never completes in time
            try:
                c.sendall(head[i:i + 1] if i < len(head) else b"a")
            except OSError:
                closed = True
                break
            rd, _, _ = __import__("select").select([c], [], [], 0.1)
            if rd:
                data = c.recv(4096)
                assert data.startswith(b"HTTP/1.1 408 ") or data == b"", data
                closed = True
                break
        assert closed, "a trickling client was never cut"
        assert time.monotonic() - t0 < 3.5
    assert be.conns == [] or all(not bytes(x.raw) for x in be.conns)
