"""TLS listeners: certificate selection by SNI (exact, wildcard, SAN vs CN,
default), ALPN, protocol versions, and HTTP through a TLS listener (curl,
keep-alive, pipelining, large bodies, X-Forwarded-Proto: https).

Certificates are made at test time with `openssl` (support/tls.py)."""
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from support.backend import serve_canned
from support.http import Reader, read_response, deadline_in, response_bytes
from support.ops import wait_until
from support.tls import (pki, tls_proxy, client_ctx, tls_connect,  # noqa: F401
                         read_response_over, s_client)


def echo_target(req):
    return response_bytes(200, headers=["X-Backend: plain"], body=b"backend:" + req.target.encode())


@pytest.fixture
def plain_backend(backend):
    return backend(handler=serve_canned(echo_target))


CERT_ORDER = ["a", "b", "wild", "exact_wild", "cn_only", "san_over_cn"]


@pytest.fixture
def multi(pki, tls_proxy, plain_backend):
    """A TLS listener with six certificates; a.example.test is the default."""
    certs = [getattr(pki, n).entry() for n in CERT_ORDER]
    px = tls_proxy([{"tls": {"certificates": certs}}], upstreams={"web": [plain_backend.address]})
    return px


def served_cert(port, ctx, sni):
    t = tls_connect(port, ctx, server_hostname=sni)
    try:
        return t.peer_der()
    finally:
        t.close()


SNI_CASES = [
    (None, "a", "no SNI: the first certificate is the default"),
    ("a.example.test", "a", "exact SAN"),
    ("b.example.test", "b", "exact SAN of the second certificate"),
    ("x.wild.example.test", "wild", "wildcard SAN"),
    ("exact.wild.example.test", "exact_wild", "an exact name wins over a wildcard listed earlier"),
    ("deep.x.wild.example.test", "a", "a wildcard covers exactly one label"),
    ("wild.example.test", "a", "a wildcard does not cover its bare parent"),
    ("cn-only.example.test", "cn_only", "CN used when the certificate has no DNS SAN"),
    ("san.example.test", "san_over_cn", "SAN of a certificate whose CN differs"),
    ("cn-ignored.example.test", "a", "the CN is ignored when the certificate has DNS SANs"),
    ("unknown.example.test", "a", "no match: the default"),
]


@pytest.mark.parametrize("sni,want,why", SNI_CASES, ids=[c[0] or "no-sni" for c in SNI_CASES])
def test_sni_selects_certificate_python(multi, pki, sni, want, why):
    ctx = client_ctx(pki.ca, check_hostname=False)
    got = served_cert(multi.port, ctx, sni)
    names = {pki.der(getattr(pki, n).cert): n for n in CERT_ORDER}
    assert got == pki.der(getattr(pki, want).cert), (
        "SNI %r (%s): expected the %s certificate, the proxy served %s"
        % (sni, why, want, names.get(got, "an unknown certificate")))


def test_sni_is_case_insensitive(multi, pki):
    rc, out = s_client(multi.port, "-servername", "B.Example.TEST", "-CAfile", pki.ca)
    assert "subject=CN = b.example.test" in out, out


@pytest.mark.parametrize("args,subject", [
    (["-servername", "b.example.test"], "b.example.test"),
    (["-servername", "y.wild.example.test"], "*.wild.example.test"),
    (["-servername", "exact.wild.example.test"], "exact.wild.example.test"),
    (["-noservername"], "a.example.test"),
    (["-servername", "nothing.example.test"], "a.example.test"),
], ids=["exact", "wildcard", "exact-over-wildcard", "no-sni", "default"])
def test_sni_selects_certificate_s_client(multi, pki, args, subject):
    rc, out = s_client(multi.port, *args, "-CAfile", pki.ca, "-verify_return_error")
    assert "subject=CN = %s\n" % subject in out, out
    assert "Verify return code: 0 (ok)" in out, out


def test_served_chain_verifies_with_hostname(multi, pki):
    """Full verification (chain + hostname) the way a browser would do it."""
    for name in ("a.example.test", "b.example.test", "z.wild.example.test"):
        t = tls_connect(multi.port, client_ctx(pki.ca), server_hostname=name)
        t.close()


# ------------------------------------------------------------------ ALPN

@pytest.mark.parametrize("offer,want", [
    (["h2", "http/1.1"], "http/1.1"),
    (["http/1.1"], "http/1.1"),
    (["http/1.1", "h2"], "http/1.1"),
    (["h2"], None),
    (None, None),
], ids=["h2+http1.1", "http1.1", "http1.1+h2", "h2-only", "no-alpn"])
def test_alpn(multi, pki, plain_backend, offer, want):
    t = tls_connect(multi.port, client_ctx(pki.ca, alpn=offer), server_hostname="a.example.test")
    try:
        assert t.alpn() == want, "offered %r: selected %r, expected %r" % (offer, t.alpn(), want)
        # whatever was negotiated, the connection speaks HTTP/1.1
        t.sendall(b"GET /alpn HTTP/1.1\r\nHost: a.example.test\r\n\r\n")
        r = read_response_over(t)
        assert r.status == 200 and r.body == b"backend:/alpn", r
    finally:
        t.close()


def test_alpn_s_client(multi, pki):
    rc, out = s_client(multi.port, "-servername", "a.example.test", "-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in out, out
    rc, out = s_client(multi.port, "-servername", "a.example.test", "-alpn", "h2")
    assert "No ALPN negotiated" in out, out


# ------------------------------------------------------------------ versions

def handshake_error(port, ctx):
    try:
        t = tls_connect(port, ctx, server_hostname="a.example.test")
    except (ssl.SSLError, ConnectionError) as e:
        return e
    t.close()
    return None


def request_over(port, ctx, path="/v", sni="a.example.test"):
    t = tls_connect(port, ctx, server_hostname=sni)
    try:
        t.sendall(("GET %s HTTP/1.1\r\nHost: a.example.test\r\n\r\n" % path).encode())
        return t.version(), read_response_over(t)
    finally:
        t.close()


def test_versions_default_minimum_tls12(multi, pki):
    e = handshake_error(multi.port, client_ctx(pki.ca, min_version=ssl.TLSVersion.TLSv1_1,
                                               max_version=ssl.TLSVersion.TLSv1_1,
                                               seclevel0=True))
    assert e is not None, "a TLS 1.1-only client completed a handshake"
    assert "alert protocol version" in str(e).lower(), (
        "TLS 1.1 should be refused with a protocol_version alert, got %r" % e)
    for v, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        got, r = request_over(multi.port, client_ctx(pki.ca, min_version=v, max_version=v))
        assert got == name and r.status == 200, (got, r)
    assert "TLS handshake failed" in multi.stderr(), multi.stderr()


def test_versions_s_client(multi, pki):
    rc, out = s_client(multi.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
                       "-servername", "a.example.test")
    assert rc != 0 and "alert protocol version" in out, out
    rc, out = s_client(multi.port, "-tls1_2", "-servername", "a.example.test", "-CAfile", pki.ca)
    assert "Protocol  : TLSv1.2" in out, out
    rc, out = s_client(multi.port, "-tls1_3", "-servername", "a.example.test", "-CAfile", pki.ca)
    assert "New, TLSv1.3" in out, out


def test_min_version_tls13(pki, tls_proxy, plain_backend):
    px = tls_proxy([{"tls": {"certificates": [pki.a.entry()], "min_version": "TLS1.3"}}],
                   upstreams={"web": [plain_backend.address]})
    e = handshake_error(px.port, client_ctx(pki.ca, max_version=ssl.TLSVersion.TLSv1_2))
    assert e is not None, "a TLS 1.2-only client completed a handshake with min_version TLS1.3"
    assert "protocol version" in str(e).lower(), e
    got, r = request_over(px.port, client_ctx(pki.ca))
    assert got == "TLSv1.3" and r.status == 200


def test_ciphers_restrict_tls12(pki, tls_proxy, plain_backend):
    px = tls_proxy([{"tls": {"certificates": [pki.a.entry()],
                             "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"}}],
                   upstreams={"web": [plain_backend.address]})
    ctx = client_ctx(pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
    t = tls_connect(px.port, ctx, server_hostname="a.example.test")
    assert t.obj.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256", t.obj.cipher()
    t.close()
    ctx = client_ctx(pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    assert handshake_error(px.port, ctx) is not None


# ------------------------------------------------------------------ HTTP over TLS

def curl():
    c = shutil.which("curl")
    if not c:
        pytest.skip("curl not available")
    return c


def test_curl_https_through_proxy(multi, pki, plain_backend):
    url = "https://b.example.test:%d/hello?x=1" % multi.port
    p = subprocess.run([curl(), "-sS", "--cacert", pki.ca, "--resolve",
                        "b.example.test:%d:127.0.0.1" % multi.port, "-H", "X-Forwarded-Proto: http",
                        "-w", "\n%{http_code} %{http_version} %{ssl_verify_result}", url],
                       capture_output=True, timeout=20)
    out = p.stdout.decode()
    assert p.returncode == 0, "curl rc %d: %s" % (p.returncode, p.stderr.decode())
    body, status = out.rsplit("\n", 1)
    assert body == "backend:/hello?x=1"
    assert status == "200 1.1 0", status
    req = plain_backend.wait_requests(1)[0]
    assert req.values("x-forwarded-proto") == ["https"], (
        "backend saw X-Forwarded-Proto %r (client sent 'http', TLS listener must send https)"
        % req.values("x-forwarded-proto"))
    assert req.values("host") == ["b.example.test:%d" % multi.port]


def test_curl_http2_offer_gets_http11(multi, pki):
    p = subprocess.run([curl(), "-sS", "--http2", "--cacert", pki.ca, "--resolve",
                        "a.example.test:%d:127.0.0.1" % multi.port, "-o", "/dev/null",
                        "-w", "%{http_code} %{http_version}",
                        "https://a.example.test:%d/" % multi.port],
                       capture_output=True, timeout=20)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == "200 1.1"


def test_keepalive_pipelining_and_large_bodies(pki, tls_proxy, backend):
    be = backend(handler=serve_canned(
        lambda req: response_bytes(200, body=req.body if req.method == "POST"
                                   else b"get:" + req.target.encode())))
    px = tls_proxy([{"tls": {"certificates": [pki.a.entry()]}}], upstreams={"web": [be.address]})
    t = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        r = Reader(t)
        # three pipelined requests in one TLS record
        t.sendall(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
        for i in (1, 2, 3):
            resp = read_response(r, deadline_in(10))
            assert resp is not None and resp.body == b"get:/%d" % i, resp
        # 3 MiB up and back down on the same connection (many TLS records each way)
        body = bytes(range(256)) * (3 * 4096)
        t.sendall(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
        t.sendall(body)
        resp = read_response(r, deadline_in(30))
        assert resp is not None and resp.status == 200 and resp.body == body, (
            resp and (resp.status, len(resp.body)))
        t.sendall(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = read_response(r, deadline_in(10))
        assert resp.body == b"get:/after"
    finally:
        t.close()
    assert [q.values("x-forwarded-proto") for q in be.requests] == [["https"]] * 5


def test_request_split_across_records(multi, pki):
    """A head that arrives one TLS record (one byte) at a time."""
    t = tls_connect(multi.port, client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        for b in b"GET /slow HTTP/1.1\r\nHost: a.example.test\r\n\r\n":
            t.sendall(bytes([b]))
        r = read_response_over(t)
        assert r.status == 200 and r.body == b"backend:/slow"
    finally:
        t.close()


def test_client_close_notify_then_keepalive_end(multi, pki):
    """A client that ends with close_notify + FIN after a response: the proxy
    answers with its own close_notify and closes."""
    t = tls_connect(multi.port, client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        t.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        r = Reader(t)
        assert read_response(r, deadline_in(10)).status == 200
        t.close_notify()
        t.fin()
        rest = r.read_to_eof(deadline_in(5))
        assert rest == b""
        assert t.ended in ("close_notify", "eof"), t.ended
    finally:
        t.close()


def test_plaintext_to_tls_port_gets_no_http(multi, pki):
    """Cleartext HTTP on a TLS listener is a failed handshake: no HTTP
    answer, the connection ends, and the listener keeps serving."""
    s = socket.create_connection(("127.0.0.1", multi.port), timeout=5)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        got = Reader(s).read_to_eof(deadline_in(5))
        assert not got.startswith(b"HTTP/"), got
    finally:
        s.close()
    assert request_over(multi.port, client_ctx(pki.ca))[1].status == 200


def test_silent_client_times_out_in_handshake(pki, tls_proxy, plain_backend):
    px = tls_proxy([{"tls": {"certificates": [pki.a.entry()]}}],
                   upstreams={"web": [plain_backend.address]},
                   limits={"header_timeout": "300ms"})
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    try:
        t0 = time.monotonic()
        got = Reader(s).read_to_eof(deadline_in(5))
        took = time.monotonic() - t0
        assert got == b"" and took < 3, (got, took)
    finally:
        s.close()


def post_and_check_digest(t, body, piece, timeout, end=False):
    """POSTs body over the TLS connection t from a thread, in sendall()s of
    `piece` bytes (one TLS record per 16 KiB or less), then with end a
    close_notify and a FIN; the answer must be 200 with the body's SHA-256."""
    import hashlib
    import threading
    errors = []

    def send():
        try:
            t.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), piece):
                t.sendall(body[i:i + piece])
            if end:
                t.close_notify()
                t.fin()
        except OSError as e:
            errors.append(repr(e))
    th = threading.Thread(target=send, daemon=True)
    th.start()
    r = read_response_over(t, timeout=timeout)
    th.join(10)
    assert not errors, errors
    assert r.status == 200 and r.body == hashlib.sha256(body).hexdigest().encode(), r


def test_body_then_immediate_close_notify_and_fin(pki, tls_proxy, backend):
    """A client that sends a 4 MiB POST and ends its side at once (close_notify
    + FIN) still gets the answer to the whole request."""
    import hashlib
    be = backend(handler=serve_canned(
        lambda req: response_bytes(200, body=hashlib.sha256(req.body).hexdigest().encode())))
    px = tls_proxy([{"tls": {"certificates": [pki.a.entry()]}}], upstreams={"web": [be.address]})
    body = bytes(range(251)) * (4 * 1024 * 1024 // 251)
    t = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        post_and_check_digest(t, body, 128 * 1024, 30, end=True)
    finally:
        t.close()


def test_close_delimited_response_to_tls_client(pki, tls_proxy, backend):
    size = 4 << 20
    body = bytes(range(256)) * (size // 256)

    def handler(conn):
        if conn.read_request(timeout=10) is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        conn.send(body)
    be = backend(handler=handler)
    px = tls_proxy([{"tls": {"certificates": [pki.a.entry()]}}], upstreams={"web": [be.address]})
    t = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        t.sendall(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        r = read_response_over(t, timeout=30)
        assert r.status == 200 and len(r.body) == size and r.body == body, len(r.body)
        if r.framing == "close":
            assert t.ended == "close_notify", "the proxy should end with close_notify: %r" % t.ended
        else:  # re-framed: the connection goes on
            assert r.framing == "chunked", r.framing
            t.sendall(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
            r = read_response_over(t, timeout=30)
            assert r.status == 200 and r.body == body, len(r.body)
    finally:
        t.close()


def test_local_errors_over_tls(pki, tls_proxy, refusing):
    dead = refusing()
    px = tls_proxy([{"tls": {"certificates": [pki.a.entry()]}}],
                   upstreams={"web": [dead.address]},
                   routes=[{"match": {"path_prefix": "/app"}, "upstream": "web"}])
    t = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        r = Reader(t)
        t.sendall(b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(r, deadline_in(10)).status == 404
        t.sendall(b"GET /app HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(r, deadline_in(10)).status == 502
    finally:
        t.close()


def test_upload_to_slow_backend(pki, tls_proxy, backend):
    """A TLS client POSTs 32 MiB to a backend that pauses as it reads, so the
    body backs up in the proxy: the backend gets every byte. OpenSSL holds
    up to a socket block of ciphertext the 64 KiB flow cannot take yet; the
    debug build asserts before every socket read that no more than a partial
    record is left of it (src/conn/sides.c) - a read started while the flow
    is full would set a second block aside."""
    import hashlib

    def slow_sha(req_conn):
        for _ in range(100):
            h = hashlib.sha256()
            pieces = [0]

            def sink(piece):
                h.update(piece)
                pieces[0] += 1
                if pieces[0] % 16 == 0:
                    time.sleep(0.01)  # pauses, on purpose: the body backs up
            req = req_conn.read_request(timeout=60, sink=sink)
            if req is None:
                return
            req_conn.send(response_bytes(200, body=h.hexdigest().encode()))

    be = backend(handler=slow_sha)
    px = tls_proxy([{"tls": {"certificates": [pki.a.entry()]}}], upstreams={"web": [be.address]},
                   workers=1)
    body = bytes(range(251)) * (32 * 1024 * 1024 // 251)
    t = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        post_and_check_digest(t, body, 10000, 60)  # records that do not fill a flow evenly
    finally:
        t.close()
    assert not px.crashed(), px.stderr()[-3000:]


def test_garbled_records_are_logged_at_most_once_a_second(multi, pki):
    """A client that completes the handshake and then sends a record that
    does not decrypt ends its connection; a flood of them must not flood
    the log (one line a second, the rest counted as suppressed)."""
    n = 12
    t0 = time.monotonic()
    for _ in range(n):
        t = tls_connect(multi.port, client_ctx(pki.ca), server_hostname="a.example.test")
        try:
            # application data, TLS 1.2 framing, 64 bytes of noise
            t.raw.sendall(b"\x17\x03\x03\x00\x40" + b"\x5a" * 64)
            t.raw.settimeout(5)
            try:
                while t.raw.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
        finally:
            t.raw.close()
    elapsed = time.monotonic() - t0
    wait_until(lambda: "client 127.0.0.1" in multi.stderr(), 5, "the TLS error line")
    lines = [ln for ln in multi.stderr().splitlines()
             if "client 127.0.0.1" in ln and "handshake" not in ln]
    assert 1 <= len(lines) <= int(elapsed) + 2, (elapsed, lines)
