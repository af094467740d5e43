"""TLS to upstreams: verification against a CA (ok, wrong CA, wrong name,
system store), verify: false, the SNI sent (default and override), client
certificates (mTLS), WebSocket through a TLS upstream, large bodies, and
upstreams that do not speak TLS.

The backends are Python TLS servers (support/tls.py TLSBackend) using a test
CA made with `openssl`."""
import json
import socket
import time

import pytest

from support.http import read_request, deadline_in, response_bytes, get
from support.ops import AdminPort
from support.tls import (pki, tls_backend, server_ctx, ws_frame,  # noqa: F401
                         read_ws_frame, ws_client_request)
from support.tunnel import ws_accept


def sec_upstream(be, **tls):
    return {"servers": [{"address": be.address}], "tls": tls}


def describe_body(r):
    assert r.status == 200, "expected 200 from the TLS backend, got %r %r" % (r.head, r.body[:300])
    return json.loads(r.body)


def wait_stderr(px, needle, timeout=5.0):
    end = time.monotonic() + timeout
    while needle not in px.stderr():
        if time.monotonic() > end:
            raise AssertionError("no %r in the proxy's stderr:\n%s" % (needle, px.stderr()))
        time.sleep(0.02)  # poll interval of a bounded condition wait
    return [ln for ln in px.stderr().splitlines() if needle in ln]


def test_verify_ok_with_ca(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_ip, alpn=["http/1.1"]))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    with px.connect() as c:
        d1 = describe_body(c.request(get("/one?q=1", host="site.test")))
        d2 = describe_body(c.request(get("/two", host="site.test")))
    assert d1["target"] == "/one?q=1" and d2["target"] == "/two"
    hs = be.wait_handshakes(1)[0]
    assert "error" not in hs, hs
    # the address is an IP: no SNI is sent (RFC 6066 3), the IP is verified
    assert hs["sni"] is None, hs
    assert hs["alpn"] == "http/1.1", "the proxy should offer ALPN http/1.1 upstream: %r" % hs
    assert hs["version"] == "TLSv1.3", hs
    hdr = dict((k.lower(), v) for k, v in d1["headers"])
    assert hdr["host"] == "site.test"
    assert hdr["x-forwarded-proto"] == "http"  # the client came in cleartext
    assert "TLS handshake failed" not in px.stderr()


def expect_502(px, path="/"):
    with px.connect() as c:
        r = c.request(get(path))
    assert r.status == 502, "expected 502 for a failed upstream handshake, got %r" % r.head
    return r


def test_verify_fails_wrong_ca(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_other_ca))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    expect_502(px)
    lines = wait_stderr(px, "TLS handshake failed")
    assert any("certificate verify failed" in ln and be.address in ln for ln in lines), lines
    assert be.wait_handshakes(1)[0].get("error"), "the backend's handshake should have failed"
    assert be.requests == []


def test_verify_fails_default_system_store(proxy, tls_backend, pki):
    """Without `ca` the system store is used, which does not know the test CA."""
    be = tls_backend(server_ctx(pki.backend_ip))
    px = proxy(upstreams={"sec": sec_upstream(be)})
    expect_502(px)
    lines = wait_stderr(px, "TLS handshake failed")
    assert any("certificate verify failed" in ln for ln in lines), lines


def test_verify_fails_wrong_ip(proxy, tls_backend, pki):
    """A certificate for backend.example.test only, dialled as 127.0.0.1."""
    be = tls_backend(server_ctx(pki.backend_name))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    expect_502(px)
    lines = wait_stderr(px, "TLS handshake failed")
    assert any("certificate verify failed" in ln for ln in lines), lines
    assert be.requests == []


def test_verify_fails_wrong_sni_name(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_ip))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca, sni="other.example.test")})
    expect_502(px)
    lines = wait_stderr(px, "TLS handshake failed")
    assert any("certificate verify failed" in ln for ln in lines), lines
    hs = be.wait_handshakes(1)[0]
    assert hs.get("error"), hs


def test_sni_override_sent_and_verified(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_name))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca, sni="backend.example.test")})
    with px.connect() as c:
        d = describe_body(c.request(get("/sni")))
    assert d["sni"] == "backend.example.test", d
    # the Host header is the client's, not the SNI
    assert dict((k.lower(), v) for k, v in d["headers"])["host"] == "example.test"


def test_verify_false_self_signed(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.selfsigned))
    px = proxy(upstreams={"sec": sec_upstream(be, verify=False)})
    with px.connect() as c:
        describe_body(c.request(get("/self")))


def test_verify_false_ignores_name(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_other_ca))
    px = proxy(upstreams={"sec": sec_upstream(be, verify=False, sni="whatever.example.test")})
    with px.connect() as c:
        d = describe_body(c.request(get("/any")))
    assert d["sni"] == "whatever.example.test"


def test_verify_true_self_signed_refused(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.selfsigned))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    expect_502(px)
    assert any("certificate verify failed" in ln
               for ln in wait_stderr(px, "TLS handshake failed")), px.stderr()


def test_mtls_client_certificate(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_ip, client_ca=pki.ca))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca, cert=pki.client.cert,
                                              key=pki.client.key)})
    with px.connect() as c:
        d = describe_body(c.request(get("/mtls")))
    assert d["peer"] is not None and d["peer"].get("commonName") == "switchyard-proxy", d


def test_mtls_required_but_no_client_certificate(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_ip, client_ca=pki.ca))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    expect_502(px)
    hs = be.wait_handshakes(1)[0]
    assert hs.get("error"), hs
    assert be.requests == []
    # TLS 1.3: the client's side of the handshake is over before the server
    # checks the certificate, so the reason comes as an alert afterwards
    assert wait_stderr(px, "alert certificate required"), px.stderr()


def test_mtls_client_certificate_from_other_ca(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_ip, client_ca=pki.other_ca))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca, cert=pki.client.cert,
                                              key=pki.client.key)})
    expect_502(px)
    assert be.requests == []
    assert wait_stderr(px, "alert unknown ca"), px.stderr()


def big_app(size):
    def app(be, t, reader, info):
        for _ in range(100):
            req = read_request(reader, deadline_in(30))
            if req is None:
                return
            be._record(be.requests, (info, req))
            if req.method == "POST":
                t.sendall(response_bytes(200, body=req.body))
            else:
                t.sendall(response_bytes(200, body=bytes(range(256)) * (size // 256)))
    return app


def test_large_bodies_both_ways(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_ip), app=big_app(3 << 20))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    with px.connect() as c:
        r = c.request(get("/big"), timeout=30)
        assert r.status == 200 and r.body == bytes(range(256)) * ((3 << 20) // 256)
        body = bytes(reversed(range(256))) * (8 * 1024)
        c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        r = c.response(timeout=30)
        assert r.status == 200 and r.body == body
        c.send(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        r = c.response(timeout=30)
        assert r.status == 200 and r.body == b"hello world"


def test_websocket_through_tls_upstream(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_ip))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)},
               routes=[{"name": "wss", "match": {"path_prefix": "/"}, "upstream": "sec",
                        "websocket": {"check_accept": True}}])
    key = "x3JJHMbDL1EzLkh9GBhXDw=="
    with px.connect() as c:
        c.send(ws_client_request("/ws/echo", key=key))
        r = c.response()
        assert r.status == 101, r.head
        assert r.value("sec-websocket-accept") == ws_accept(key)
        big = bytes(range(256)) * 1024
        for op, data in ((1, b"hello over wss"), (2, big), (1, "gr\u00fc\u00df".encode())):
            c.send(ws_frame(op, data))
            fin, gop, got = read_ws_frame(c.reader, deadline_in(10))
            assert (fin, gop, got) == (True, op, data), (gop, len(got))
        c.send(ws_frame(9, b"ping!"))
        assert read_ws_frame(c.reader, deadline_in(10)) == (True, 10, b"ping!")
        c.send(ws_frame(8, b"\x03\xe8bye"))
        assert read_ws_frame(c.reader, deadline_in(10)) == (True, 8, b"\x03\xe8bye")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.reader.read_to_eof(deadline_in(5)) == b""
    e = px.wait_log(lambda e: e.get("type") == "tunnel")[0]
    assert e["spliced"] == 0, "a TLS upstream cannot be spliced: %r" % e
    assert e["copied"] > len(big) * 2 and e["copied"] == e["bytes_to_upstream"] + e["bytes_to_client"], e
    assert e["protocol"] == "websocket" and e["route"] == "wss", e


def test_upstream_not_speaking_tls(proxy, backend, pki):
    """A cleartext HTTP server behind `tls:`: it answers the ClientHello with
    a 400 and closes; the proxy gives 502 and logs the failed handshake."""
    def handler(conn):
        conn.reader._fill(deadline_in(10))  # the ClientHello
        conn.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    be = backend(handler=handler)
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    expect_502(px)
    assert wait_stderr(px, "TLS handshake failed"), px.stderr()


def test_upstream_closes_during_handshake(proxy, backend, pki):
    def handler(conn):
        conn.reader._fill(deadline_in(10))  # the ClientHello, then close
    be = backend(handler=handler)
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    expect_502(px)
    lines = wait_stderr(px, "TLS handshake failed")
    assert any(be.address in ln for ln in lines), lines


def failing_then_good(proxy, failing, good, pki, n):
    """`failing` first, `good` second, round robin: n requests must all be
    answered by `good`. Returns failing's series from /metrics and stderr's
    "TLS handshake failed" lines."""
    adm = AdminPort()
    px = proxy(upstreams={"sec": {"servers": [{"address": failing.address},
                                              {"address": good.address}],
                                  "tls": {"ca": pki.ca}}},
               admin=adm.config, workers=1)
    for i in range(n):
        with px.connect() as c:
            assert describe_body(c.request(get("/r/%d" % i)))["target"] == "/r/%d" % i
    m = adm.metrics()
    assert not m.has("switchyard_upstream_connect_failures_total", server=good.address), m.text
    got = {k: m.one("switchyard_upstream_%s_total" % k, upstream="sec", server=failing.address)
           for k in ("connect_failures", "retries", "ejections")}
    return got, wait_stderr(px, "TLS handshake failed")


def test_failed_handshake_is_a_failed_connect(proxy, tls_backend, pki):
    """As a refused connect: counted against the server, the request goes to
    the next one (nothing of it was sent), and after `unhealthy` failures
    in a row the server is ejected (round robin meets it every other
    request until then)."""
    bad = tls_backend(server_ctx(pki.backend_other_ca))
    good = tls_backend(server_ctx(pki.backend_ip))
    got, lines = failing_then_good(proxy, bad, good, pki, 8)
    assert got == {"connect_failures": 3, "retries": 3, "ejections": 1}, got
    assert bad.requests == [] and len(good.requests) == 8
    assert any("certificate verify failed" in ln for ln in lines), lines


def test_server_closing_during_handshake_is_a_failed_connect(proxy, tls_backend, backend, pki):
    """A server that takes the ClientHello and closes (a sidecar not ready, a
    pod going away) is skipped for the next one like a refused connect."""
    def handler(conn):
        conn.reader._fill(deadline_in(10))  # the ClientHello, then close
    closing = backend(handler=handler)
    good = tls_backend(server_ctx(pki.backend_ip))
    got, lines = failing_then_good(proxy, closing, good, pki, 6)
    assert got == {"connect_failures": 3, "retries": 3, "ejections": 1}, got
    assert any(closing.address in ln and "connection" in ln for ln in lines), lines


def test_tls_upstream_and_plain_upstream_side_by_side(proxy, tls_backend, backend, pki):
    tb = tls_backend(server_ctx(pki.backend_ip))
    pb = backend()
    px = proxy(upstreams={"sec": sec_upstream(tb, ca=pki.ca),
                          "plain": {"servers": [{"address": pb.address}]}},
               routes=[{"match": {"path_prefix": "/s"}, "upstream": "sec"},
                       {"match": {"path_prefix": "/"}, "upstream": "plain"}])
    with px.connect() as c:
        for i in range(3):
            d = describe_body(c.request(get("/s/%d" % i)))
            assert d["target"] == "/s/%d" % i
            r = c.request(get("/p/%d" % i))
            assert r.status == 200 and r.body == b"/p/%d" % i


def close_delimited_app(size, end):
    """Answers with a body delimited by the end of the connection, then ends
    with close_notify + FIN ("close_notify") or a bare FIN ("fin")."""
    def app(be, t, reader, info):
        req = read_request(reader, deadline_in(30))
        if req is None:
            return
        be._record(be.requests, (info, req))
        t.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        body = bytes(range(256)) * (size // 256)
        for i in range(0, len(body), 256 * 1024):
            t.sendall(body[i:i + 256 * 1024])
        if end == "close_notify":
            t.shutdown(socket.SHUT_WR)
        else:
            t.fin()
        try:
            reader.read_to_eof(deadline_in(10))
        except Exception:
            pass
    return app


@pytest.mark.parametrize("end", ["close_notify", "fin"])
def test_close_delimited_response_from_tls_upstream(proxy, tls_backend, pki, end):
    size = 4 << 20
    be = tls_backend(server_ctx(pki.backend_ip), app=close_delimited_app(size, end))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    with px.connect() as c:
        c.send(get("/stream"))
        r = c.response(timeout=30)
        assert r.status == 200
        assert len(r.body) == size and r.body == bytes(range(256)) * (size // 256), (
            "got %d of %d body bytes (upstream ended with %s)" % (len(r.body), size, end))


def test_sequential_requests_leave_no_upstream_connection_behind(proxy, tls_backend, pki):
    """Whether or not TLS upstream connections are pooled, every request is
    answered and no upstream connection is left open once the client is gone."""
    be = tls_backend(server_ctx(pki.backend_ip))
    px = proxy(upstreams={"sec": sec_upstream(be, ca=pki.ca)})
    with px.connect() as c:
        for i in range(6):
            d = describe_body(c.request(get("/seq/%d" % i)))
            assert d["target"] == "/seq/%d" % i
    for i in range(3):
        with px.connect() as c:
            describe_body(c.request(get("/fresh/%d" % i)))
    n = len(be.backend.conns)
    assert 1 <= n <= 9, n
    if n < 9:  # pooled: the idle ones go at the pool's idle timeout, not here
        return
    be.backend.wait_closed(n, timeout=5)
