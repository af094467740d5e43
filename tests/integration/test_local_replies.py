"""The proxy's own answers follow the connection rules (RFC 9112 §9.6): a client
that sent `Connection: close`, or spoke HTTP/1.0 without keep-alive, gets
`Connection: close` and the connection ends after the answer; otherwise the
connection stays usable, as after an upstream's answer."""
import pytest

from support.http import get, response_bytes

OK = response_bytes(200, body=b"ok")


@pytest.fixture
def px(proxy, backend, refusing):
    be = backend(response=OK)
    bad = refusing()
    return proxy(upstreams={"web": [be.address], "down": [bad.address]},
                 routes=[{"match": {"path_prefix": "/ok"}, "upstream": "web"},
                         {"match": {"path_prefix": "/down"}, "upstream": "down"},
                         {"match": {"path_prefix": "/secure"}, "upstream": "web",
                          "require_tls": True}])


# (path, status) for every answer the proxy writes without a broken stream
CASES = [("/nowhere", 404), ("/down/x", 502), ("/secure/x", 426)]


def connection_tokens(r):
    return [t.strip().lower() for v in r.values("connection") for t in v.split(",") if t.strip()]


@pytest.mark.parametrize("path,status", CASES)
def test_connection_close_is_sent_and_honoured(px, path, status):
    with px.connect() as c:
        r = c.request(get(path, extra=b"Connection: close\r\n"))
        assert r.status == status, r.head
        assert "close" in connection_tokens(r), r.head
        assert c.closed_by_peer(timeout=5.0), "connection left open after Connection: close"


@pytest.mark.parametrize("path,status", CASES)
def test_http10_without_keepalive_is_closed(px, path, status):
    with px.connect() as c:
        r = c.request(get(path, version="HTTP/1.0"))
        assert r.status == status, r.head
        assert "close" in connection_tokens(r), r.head
        assert c.closed_by_peer(timeout=5.0)


@pytest.mark.parametrize("path,status", CASES)
def test_keepalive_goes_on_after_a_local_answer(px, path, status):
    with px.connect() as c:
        r = c.request(get(path))
        assert r.status == status, r.head
        assert "close" not in connection_tokens(r), r.head
        r2 = c.request(get("/ok"))
        assert r2.status == 200 and r2.body == b"ok"


def test_http10_keepalive_is_said_and_kept(px):
    with px.connect() as c:
        r = c.request(get("/nowhere", version="HTTP/1.0", extra=b"Connection: keep-alive\r\n"))
        assert r.status == 404
        assert connection_tokens(r) == ["keep-alive"], r.head
        r2 = c.request(get("/ok", version="HTTP/1.0", extra=b"Connection: keep-alive\r\n"))
        assert r2.status == 200


def test_errors_that_break_the_stream_always_close(px):
    with px.connect() as c:
        r = c.request(b"GET /ok HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        assert r.status == 400
        assert "close" in connection_tokens(r), r.head
        assert c.closed_by_peer(timeout=5.0)
