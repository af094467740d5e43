"""RFC 2817 (Upgrading to TLS Within HTTP/1.1) on a cleartext listener with
`offer_tls_upgrade`: the optional upgrade (§3.1/§3.3), the mandatory one via
`OPTIONS *` (§3.2), `426 Upgrade Required` (§4.2: a `required` listener and a
`require_tls` route), TLS tokens never forwarded when the listener upgrades
itself, and with `offer_tls_upgrade: off` TLS/1.0 as an ordinary token that a
backend may accept (end-to-end TLS relayed through the proxy as opaque bytes).

Every client reads the 101 and then starts TLS on the very same socket."""
import socket
import ssl
import threading

import pytest

from support.backend import serve_canned
from support.http import Reader, read_response, deadline_in, response_bytes
from support.tls import (pki, tls_proxy, client_ctx, server_ctx, TLSConn,  # noqa: F401
                         read_response_over)
from support.tunnel import upgrader  # noqa: F401

SWITCH_101 = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: TLS/1.0, HTTP/1.1\r\n"
              b"Connection: Upgrade\r\n\r\n")


def req(method="GET", target="/", host="site.test", upgrade="TLS/1.0", connection="Upgrade",
        extra=b"", body=None):
    out = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target.encode(), host.encode())
    if connection:
        out += b"Connection: " + connection.encode() + b"\r\n"
    if upgrade:
        out += b"Upgrade: " + upgrade.encode() + b"\r\n"
    if body is not None:
        out += b"Content-Length: %d\r\n" % len(body)
    return out + extra + b"\r\n" + (body or b"")


def answer(r):
    return response_bytes(200, headers=["X-From: backend"], body=b"backend:" + r.target.encode())


@pytest.fixture
def be(backend):
    return backend(handler=serve_canned(answer))


@pytest.fixture
def optional(tls_proxy, pki, be):
    return tls_proxy([{"offer_tls_upgrade": "optional",
                       "tls": {"certificates": [pki.a.entry(), pki.b.entry()]}}],
                     upstreams={"web": [be.address]})


@pytest.fixture
def required(tls_proxy, pki, be):
    return tls_proxy([{"offer_tls_upgrade": "required",
                       "tls": {"certificates": [pki.a.entry()]}}],
                     upstreams={"web": [be.address]})


def read_101(c):
    """The exact 101 and nothing after it (the proxy waits for our ClientHello)."""
    head = c.reader.read_until(b"\r\n\r\n", deadline_in(10))
    assert head == SWITCH_101, "expected exactly %r, got %r" % (SWITCH_101, head)
    assert bytes(c.reader.buf) == b"", "bytes after the 101 before the handshake: %r" % c.reader.buf


def start_tls(c, pki, sni="a.example.test"):
    """TLS on the client's existing socket (ssl wrap_socket); returns (sslsock, Reader)."""
    c.sock.settimeout(10)
    s = client_ctx(pki.ca).wrap_socket(c.sock, server_hostname=sni)
    return s, Reader(s)


def upgrade(c, pki, request, sni="a.example.test"):
    c.send(request)
    read_101(c)
    return start_tls(c, pki, sni)


def next_response(reader, method="GET"):
    r = read_response(reader, deadline_in(10), method=method)
    assert r is not None, "the connection ended instead of a response"
    return r


def assert_plain_upstream(q, proto):
    """What the backend got: no upgrade machinery, the right X-Forwarded-Proto."""
    assert q.values("upgrade") == [], "Upgrade reached the backend: %r" % q.head
    assert "upgrade" not in q.tokens("connection"), "Connection: upgrade reached the backend: %r" % q.head
    assert b"tls/" not in q.head.lower(), "a TLS token reached the backend: %r" % q.head
    assert q.values("x-forwarded-proto") == [proto], q.head


# ------------------------------------------------------------------ optional (§3.1, §3.3)

@pytest.mark.parametrize("token", ["TLS/1.0", "TLS/1.2", "tls/1.3"])
def test_optional_upgrade_then_request_over_tls(optional, be, pki, token):
    with optional.connect() as c:
        s, r = upgrade(c, pki, req(target="/secure?x=1", upgrade=token))
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        resp = next_response(r)
        assert resp.status == 200 and resp.body == b"backend:/secure?x=1", resp
        # the connection goes on in TLS
        s.sendall(req(target="/again", upgrade=None, connection=None))
        resp = next_response(r)
        assert resp.body == b"backend:/again"
        s.close()
    qs = be.wait_requests(2)
    assert [q.target for q in qs] == ["/secure?x=1", "/again"]
    for q in qs:
        assert_plain_upstream(q, "https")
    assert qs[0].values("host") == ["site.test"]


def test_optional_upgrade_with_http11_token(optional, be, pki):
    """RFC 2817's own example: `Upgrade: TLS/1.0, HTTP/1.1`. HTTP/1.1 names
    what runs over TLS; nothing of the upgrade may reach the backend."""
    with optional.connect() as c:
        s, r = upgrade(c, pki, req(target="/rfc", upgrade="TLS/1.0, HTTP/1.1"))
        resp = next_response(r)
        assert resp.status == 200 and resp.body == b"backend:/rfc", resp
        s.close()
    assert_plain_upstream(be.wait_requests(1)[0], "https")


def test_optional_certificate_by_sni(optional, pki):
    with optional.connect() as c:
        s, r = upgrade(c, pki, req(target="/b"), sni="b.example.test")
        assert s.getpeercert(binary_form=True) == pki.der(pki.b.cert)
        assert next_response(r).status == 200
        s.close()


def test_optional_client_not_asking_served_in_cleartext(optional, be):
    with optional.connect() as c:
        r = c.request(req(target="/plain", upgrade=None, connection=None))
        assert r.status == 200 and r.body == b"backend:/plain"
        r = c.request(req(target="/plain2", upgrade=None, connection=None))
        assert r.body == b"backend:/plain2"
    for q in be.wait_requests(2):
        assert_plain_upstream(q, "http")


def test_optional_upgrade_after_cleartext_request(optional, be, pki):
    """A keep-alive connection first used in cleartext upgrades later."""
    with optional.connect() as c:
        assert c.request(req(target="/first", upgrade=None, connection=None)).status == 200
        s, r = upgrade(c, pki, req(target="/second"))
        assert next_response(r).body == b"backend:/second"
        s.close()
    qs = be.wait_requests(2)
    assert [q.values("x-forwarded-proto") for q in qs] == [["http"], ["https"]]


def test_optional_request_with_body_not_upgraded(optional, be):
    """A request with a body is not switched (its body would sit between the
    head and the handshake): it is served in cleartext, without the token."""
    with optional.connect() as c:
        r = c.request(req("POST", "/form", body=b"a=1&b=2"))
        assert r.status == 200 and r.body == b"backend:/form", r
        assert b"101" not in bytes(c.raw).split(b"\r\n", 1)[0]
    q = be.wait_requests(1)[0]
    assert q.body == b"a=1&b=2"
    assert_plain_upstream(q, "http")


def test_optional_tls_token_again_over_tls_not_forwarded(optional, be, pki):
    """Once in TLS, a request that names TLS/1.0 again is just served."""
    with optional.connect() as c:
        s, r = upgrade(c, pki, req(target="/one"))
        assert next_response(r).status == 200
        s.sendall(req(target="/two", upgrade="TLS/1.2"))
        resp = next_response(r)
        assert resp.status == 200 and resp.body == b"backend:/two", resp
        s.close()
    for q in be.wait_requests(2):
        assert_plain_upstream(q, "https")


def test_client_hello_sent_with_the_request(optional, be, pki):
    """A client that does not wait for the 101: its ClientHello follows the
    request head in the same segment."""
    sock = socket.create_connection(("127.0.0.1", optional.port), timeout=10)
    try:
        t = TLSConn(sock, client_ctx(pki.ca), server_hostname="a.example.test")
        try:
            t.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = t.outgoing.read()
        assert hello[:1] == b"\x16"
        sock.sendall(req(target="/eager") + hello)
        raw = Reader(sock)
        assert raw.read_until(b"\r\n\r\n", deadline_in(10)) == SWITCH_101
        t.incoming.write(bytes(raw.buf))  # the server's handshake bytes read with the 101
        raw.buf.clear()
        t.handshake(10)
        resp = read_response_over(t)
        assert resp.status == 200 and resp.body == b"backend:/eager"
    finally:
        sock.close()
    assert_plain_upstream(be.wait_requests(1)[0], "https")


def test_handshake_failure_after_101_sends_nothing_upstream(optional, be, pki):
    with optional.connect() as c:
        c.send(req(target="/never"))
        read_101(c)
        c.sock.settimeout(10)
        with pytest.raises(ssl.SSLError):
            client_ctx(pki.other_ca).wrap_socket(c.sock, server_hostname="a.example.test")
    assert "TLS handshake failed" in _wait_stderr(optional, "TLS handshake failed")
    assert be.requests == [], "the request was forwarded although TLS never came up"


def _wait_stderr(px, needle, timeout=5.0):
    import time
    end = time.monotonic() + timeout
    while needle not in px.stderr():
        assert time.monotonic() < end, "no %r in stderr:\n%s" % (needle, px.stderr())
        time.sleep(0.02)  # poll interval of a bounded condition wait
    return px.stderr()


# ------------------------------------------------------------------ mandatory (§3.2)

def test_mandatory_options_star(optional, be, pki):
    with optional.connect() as c:
        s, r = upgrade(c, pki, req("OPTIONS", "*"))
        resp = next_response(r, method="OPTIONS")
        assert resp.status == 200, resp.head
        assert resp.values("content-length") == ["0"] and resp.body == b"", resp.head
        # the connection continues in TLS
        s.sendall(req(target="/after-options", upgrade=None, connection=None))
        resp = next_response(r)
        assert resp.status == 200 and resp.body == b"backend:/after-options"
        s.close()
    qs = be.wait_requests(1)
    assert [q.method for q in be.requests] == ["GET"], "OPTIONS * must not reach the backend"
    assert_plain_upstream(qs[0], "https")


# ------------------------------------------------------------------ 426 (§4.2)

def assert_426(r, connection=("upgrade",)):
    assert r.status == 426, r.head
    assert r.reason == "Upgrade Required", r.head
    assert r.values("upgrade") == ["TLS/1.2, HTTP/1.1"], r.head
    if connection is None:
        assert "upgrade" in r.tokens("connection"), r.head
    else:
        assert r.tokens("connection") == list(connection), r.head
    assert r.value("content-type").startswith("text/html"), r.head
    assert b"<html" in r.body.lower() and 0 < len(r.body) < 4096, r.body


def test_required_listener_426_then_upgrade_on_same_connection(required, be, pki):
    with required.connect() as c:
        assert_426(c.request(req(target="/x", upgrade=None, connection=None)))
        assert_426(c.request(req(target="/y", upgrade=None, connection=None)))
        # the connection stays usable: the mandatory upgrade on it
        s, r = upgrade(c, pki, req("OPTIONS", "*"))
        assert next_response(r, method="OPTIONS").status == 200
        s.sendall(req(target="/x", upgrade=None, connection=None))
        resp = next_response(r)
        assert resp.status == 200 and resp.body == b"backend:/x"
        s.close()
    qs = be.wait_requests(1)
    assert len(be.requests) == 1, "a cleartext request reached the backend: %r" % be.requests
    assert_plain_upstream(qs[0], "https")


@pytest.mark.parametrize("where", ["required_listener", "require_tls_route"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_426_for_request_with_body_keeps_its_word(request, be, framing, where):
    """A 426 to a request with a body: either the proxy says Connection: close
    and closes, or it reads past the body and the connection stays usable.
    Closing without saying so strands a keep-alive client's next request."""
    px = request.getfixturevalue("required" if where == "required_listener" else "routed")
    with px.connect() as c:
        if framing == "length":
            c.send(req("POST", "/secure/form", upgrade=None, connection=None, body=b"a=1&b=2"))
        else:
            c.send(req("POST", "/secure/form", upgrade=None, connection=None,
                       extra=b"Transfer-Encoding: chunked\r\n") + b"7\r\na=1&b=2\r\n0\r\n\r\n")
        r = c.response()
        assert_426(r, connection=None)
        if "close" in r.tokens("connection"):
            assert c.closed_by_peer(5), "said Connection: close but kept the connection open"
        else:
            c.send(req(target="/secure/next", upgrade=None, connection=None))
            r2 = c.response(allow_eof=True)
            assert r2 is not None, (
                "the 426 (%r) did not announce Connection: close, yet the proxy closed the "
                "connection instead of answering the next request" % r.head)
            assert_426(r2)
    assert be.requests == []


def test_required_listener_optional_form(required, be, pki):
    with required.connect() as c:
        s, r = upgrade(c, pki, req(target="/direct"))
        resp = next_response(r)
        assert resp.status == 200 and resp.body == b"backend:/direct"
        s.close()
    assert_plain_upstream(be.wait_requests(1)[0], "https")


def test_required_listener_body_with_upgrade_gets_426(required, be):
    with required.connect() as c:
        assert_426(c.request(req("POST", "/form", body=b"x=1")))
    assert be.requests == []


@pytest.fixture
def routed(tls_proxy, pki, be):
    """An optional listener and a TLS listener; /secure requires TLS."""
    return tls_proxy([{"offer_tls_upgrade": "optional", "tls": {"certificates": [pki.a.entry()]}},
                      {"tls": {"certificates": [pki.a.entry()]}},
                      {}],
                     upstreams={"web": [be.address]},
                     routes=[{"match": {"path_prefix": "/secure"}, "upstream": "web",
                              "require_tls": True},
                             {"match": {"path_prefix": "/"}, "upstream": "web"}])


def test_require_tls_route_426_then_upgrade(routed, be, pki):
    with routed.connect() as c:
        r = c.request(req(target="/public", upgrade=None, connection=None))
        assert r.status == 200 and r.body == b"backend:/public"
        assert_426(c.request(req(target="/secure/page", upgrade=None, connection=None)))
        s, rd = upgrade(c, pki, req(target="/secure/page"))
        resp = next_response(rd)
        assert resp.status == 200 and resp.body == b"backend:/secure/page"
        s.close()
    qs = be.wait_requests(2)
    assert [q.target for q in be.requests] == ["/public", "/secure/page"]
    assert_plain_upstream(qs[1], "https")


def test_require_tls_route_served_on_tls_listener(routed, be, pki):
    from support.tls import tls_connect
    t = tls_connect(routed.ports[1], client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        t.sendall(req(target="/secure/x", upgrade=None, connection=None))
        resp = read_response_over(t)
        assert resp.status == 200 and resp.body == b"backend:/secure/x"
    finally:
        t.close()


def test_require_tls_route_on_plain_listener(routed, be):
    """A listener that does not offer the upgrade still refuses with 426."""
    from conftest import Client
    with Client(routed.ports[2]) as c:
        assert_426(c.request(req(target="/secure", upgrade=None, connection=None)))
        r = c.request(req(target="/open", upgrade=None, connection=None))
        assert r.status == 200
    assert [q.target for q in be.requests] == ["/open"]


# ------------------------------------------------------------------ off: an ordinary token

def test_off_tls_token_reaches_backend_which_declines(proxy, backend):
    b = backend(handler=serve_canned(answer))
    px = proxy(upstreams={"web": [b.address]})
    with px.connect() as c:
        r = c.request(req(target="/offer", upgrade="TLS/1.0"))
        assert r.status == 200 and r.body == b"backend:/offer"
    q = b.wait_requests(1)[0]
    assert q.values("upgrade") == ["TLS/1.0"], q.head
    assert "upgrade" in q.tokens("connection"), q.head


def test_off_backend_accepts_end_to_end_tls_spliced(proxy, upgrader, pki):
    up = upgrader(answer=SWITCH_101)
    px = proxy(upstreams={"web": [up.address]})
    with px.connect() as c:
        c.send(req(target="/e2e", upgrade="TLS/1.0, HTTP/1.1"))
        r101 = c.response()
        assert r101.status == 101 and r101.values("upgrade") == ["TLS/1.0, HTTP/1.1"], r101.head
        assert bytes(c.reader.buf) == b""
        be = up.take()
        assert be.request.values("upgrade") == ["TLS/1.0, HTTP/1.1"], be.request.head
        # the backend is the TLS server now; the proxy only splices
        srv = TLSConn(be.sock, server_ctx(pki.backend_name), server_side=True, name="backend")
        errors = []

        def serve():
            try:
                srv.handshake(10)
                rd = Reader(srv)
                q = rd.read_until(b"\r\n\r\n", deadline_in(10))
                srv.sendall(response_bytes(200, body=b"end-to-end:" + q.split(b" ")[1]))
                srv.shutdown(socket.SHUT_WR)
                errors.append(("sni", getattr(srv.obj, "_sy_sni", None)))
            except Exception as e:  # reported below
                errors.append(("error", repr(e)))

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        s, r = start_tls(c, pki, sni="backend.example.test")
        # the certificate is the backend's own, not one of the proxy's
        assert s.getpeercert()["subject"] == ((("commonName", "backend.example.test"),),)
        s.sendall(b"GET /inside HTTP/1.1\r\nHost: backend.example.test\r\n\r\n")
        resp = next_response(r)
        assert resp.status == 200 and resp.body == b"end-to-end:/inside"
        th.join(10)
        assert errors == [("sni", "backend.example.test")], errors
        s.close()
    e = px.wait_log(lambda e: e.get("type") == "tunnel")[0]
    assert e["protocol"].lower().startswith("tls/1.0"), e
    # relayed as opaque bytes (the certificate above was the backend's); records this
    # small are copied, not spliced
    assert e["bytes_to_upstream"] > 0 and e["bytes_to_client"] > 0, e
    assert e["spliced"] + e["copied"] == e["bytes_to_upstream"] + e["bytes_to_client"], e


def test_stalled_handshake_after_101_times_out(tls_proxy, pki, be):
    import time
    px = tls_proxy([{"offer_tls_upgrade": "optional", "tls": {"certificates": [pki.a.entry()]}}],
                   upstreams={"web": [be.address]}, limits={"header_timeout": "300ms"})
    with px.connect() as c:
        c.send(req(target="/stall"))
        read_101(c)
        t0 = time.monotonic()
        assert c.closed_by_peer(5), "the proxy kept a connection whose handshake never started"
        took = time.monotonic() - t0
        assert took < 2.0, took
    assert be.requests == []
