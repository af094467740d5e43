"""The PROXY protocol on a TLS listener (listeners[].tls + proxy_protocol):
the header is read before the handshake and what follows it is TLS.

- HAProxy (mode tcp, send-proxy / send-proxy-v2) in front of TLS listeners:
  the client's address, not HAProxy's, is the client for HTTP and for a
  WebSocket upgrade over TLS (X-Forwarded-For, the access log);
- the header and the ClientHello in one send, and the header cut into pieces
  (with part of the ClientHello behind its last piece): the handshake completes;
- a ClientHello without a header on such a listener: closed, nothing sent,
  counted as reason="bad"; a PROXY header on a TLS listener without the
  option: the handshake fails, nothing is trusted or forwarded.

Every send below is its own send(2) on a TCP_NODELAY socket. Between the
pieces of a split header the test makes a request on another connection to
the same (single) worker and waits for its answer: the worker's loop has then
read what was already in the socket's queue, so the pieces reach the parser
apart."""
import socket
import ssl
import struct

import pytest

from support.backend import free_port
from support.haproxy import haproxy, connect_from  # noqa: F401
from support.http import Reader, read_response, deadline_in, response_bytes, get
from support.ops import AdminPort
from support.tls import (pki, client_ctx, TLSConn, read_response_over,  # noqa: F401
                         ws_frame, read_ws_frame)
from support.tunnel import upgrader, upgrade_request, switching, End, WS_KEY  # noqa: F401

OK = response_bytes(200, body=b"ok")
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CLIENT4 = "127.0.0.5"
SNI = "a.example.test"


# ------------------------------------------------------------------ helpers

def v1_header(src, dst_port, src_port=4000):
    return b"PROXY TCP4 %s 127.0.0.1 %d %d\r\n" % (src.encode(), src_port, dst_port)


def v2_header(src, dst_port, src_port=4000, tlvs=b""):
    """PROXY v2, PROXY command, TCP over IPv4, with optional TLVs."""
    addrs = (socket.inet_aton(src) + socket.inet_aton("127.0.0.1")
             + struct.pack("!HH", src_port, dst_port))
    return V2_SIG + b"\x21\x11" + struct.pack("!H", len(addrs) + len(tlvs)) + addrs + tlvs


def client_hello(pki, sock):
    """A TLSConn on sock whose ClientHello is made but not sent: (conn, hello)."""
    t = TLSConn(sock, client_ctx(pki.ca), server_hostname=SNI)
    with pytest.raises(ssl.SSLWantReadError):
        t.obj.do_handshake()
    hello = t.outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:16]
    return t, hello


def raw_conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def send_once(sock, data):
    """One send(2) carrying all of data (loopback takes a few KiB at once)."""
    n = sock.send(data)
    assert n == len(data), "send took %d of %d bytes" % (n, len(data))


def requests_to(be, path, timeout=10.0):
    be.wait_for(lambda: any(r.target == path for r in be.requests), timeout, "a request for " + path)
    return [r for r in be.requests if r.target == path]


def tls_listener(pki, port, mode):
    item = {"address": "127.0.0.1:%d" % port, "tls": {"certificates": [pki.a.entry()]}}
    if mode != "off":
        item["proxy_protocol"] = mode
    return item


def tls_pp_proxy(proxy, pki, be, modes, up=None, admin=None):
    """A proxy with a cleartext listener on px.port (the start probe and the
    barrier) and one TLS listener per mode (px.tls[mode] = its port); one
    worker, so a barrier request runs on the loop that reads the others."""
    ports = {m: free_port() for m in modes}
    ups = {"web": [be.address]}
    routes = [{"match": {"path_prefix": "/"}, "upstream": "web"}]
    if up is not None:
        ups["ws"] = [up.address]
        routes.insert(0, {"match": {"path_prefix": "/ws"}, "upstream": "ws"})
    extra = {"admin": admin.config} if admin else {}
    px = proxy(upstreams=ups, routes=routes, workers=1,
               listeners=lambda port: [{"address": "127.0.0.1:%d" % port}]
               + [tls_listener(pki, p, m) for m, p in ports.items()], **extra)
    px.tls = ports
    px.barriers = 0
    return px


def barrier(px, be):
    """A whole request on the cleartext listener: once answered, the single
    worker has read everything that reached its sockets before it."""
    px.barriers += 1
    path = "/barrier-%d" % px.barriers
    s = raw_conn(px.port)
    try:
        s.sendall(get(path, extra=b"Connection: close\r\n"))
        r = read_response(Reader(s), deadline_in(10))
    finally:
        s.close()
    assert r is not None and r.status == 200, r
    requests_to(be, path)


def request_over(t, path):
    t.sendall(get(path, host=SNI, extra=b"Connection: close\r\n"))
    return read_response_over(t)


def bad_count(m):
    return m.get("switchyard_proxy_protocol_errors_total", reason="bad")


def ws_echo_through(t, rd, tbe, text):
    """A masked text frame from the client, echoed unmasked by the backend."""
    cl = End(t, rd, "client")
    cl.send(ws_frame(0x1, text))
    fin, op, data = read_ws_frame(tbe.reader, deadline_in(10))
    assert (fin, op, data) == (True, 0x1, text)
    tbe.send(ws_frame(0x1, data, mask=False))
    fin, op, data = read_ws_frame(cl.reader, deadline_in(10))
    assert (fin, op, data) == (True, 0x1, text)


# ------------------------------------------------------------------ (a) HAProxy

@pytest.mark.parametrize("opt,mode", [("send-proxy-v2", "v2"), ("send-proxy", "v1"),
                                      ("send-proxy-v2", "any")])
def test_haproxy_in_front_of_a_tls_listener(proxy, backend, upgrader, haproxy, pki, opt, mode):
    be = backend(response=OK)
    up = upgrader(switching(accept_for=WS_KEY))
    adm = AdminPort()
    px = tls_pp_proxy(proxy, pki, be, [mode], up=up, admin=adm)
    front = free_port()
    haproxy("frontend f\n  mode tcp\n  bind 127.0.0.1:%d\n  default_backend b\n"
            "backend b\n  mode tcp\n  server s 127.0.0.1:%d %s\n" % (front, px.tls[mode], opt),
            [("127.0.0.1", front)])

    # HTTP over TLS, through HAProxy, from 127.0.0.5: HAProxy connects from
    # 127.0.0.1, the header says 127.0.0.5.
    t = TLSConn(connect_from(CLIENT4, front), client_ctx(pki.ca), server_hostname=SNI)
    try:
        t.handshake()
        r = request_over(t, "/pp-tls")
        assert r.status == 200 and r.body == b"ok", r.head
    finally:
        t.close()
    req = requests_to(be, "/pp-tls")[0]
    assert req.values("X-Forwarded-For") == [CLIENT4], req.head
    assert req.values("X-Forwarded-Proto") == ["https"], req.head
    e = px.wait_log(lambda e: e.get("path") == "/pp-tls")[0]
    assert e["client_ip"] == CLIENT4, e

    # A WebSocket upgrade over the same path (wss), then frames both ways.
    t = TLSConn(connect_from(CLIENT4, front), client_ctx(pki.ca), server_hostname=SNI)
    try:
        t.handshake()
        t.sendall(upgrade_request("/ws/room", host=SNI))
        rd = Reader(t)
        r = read_response(rd, deadline_in(10))
        assert r is not None and r.status == 101, r
        tbe = up.take(10)
        assert tbe.request.values("X-Forwarded-For") == [CLIENT4], tbe.request.head
        assert tbe.request.values("X-Forwarded-Proto") == ["https"], tbe.request.head
        assert not rd.buf, bytes(rd.buf)
        ws_echo_through(t, rd, tbe, b"hello over wss through haproxy")
        tbe.close()
    finally:
        t.close()
    tun = px.wait_log(lambda e: e.get("type") == "tunnel")[0]
    assert tun["client_ip"] == CLIENT4, tun

    m = adm.metrics()
    assert m.get("switchyard_proxy_protocol_errors_total") == 0, m.text
    assert m.get("switchyard_tunnels_total", protocol="websocket") == 1, m.text


# ------------------------------------------------------------------ (b) one segment, pieces

CASES = {
    "v1": lambda port: v1_header("192.0.2.11", port),
    "v2": lambda port: v2_header("192.0.2.12", port),
    # A NOOP TLV (type 0x04) and an AUTHORITY TLV (0x02) after the addresses.
    "v2-tlvs": lambda port: v2_header("192.0.2.13", port,
                                      tlvs=b"\x04\x00\x03abc\x02\x00\x0e" + SNI.encode()),
}


@pytest.mark.parametrize("mode,case", [("v1", "v1"), ("v2", "v2"), ("v2", "v2-tlvs"),
                                       ("any", "v1"), ("any", "v2-tlvs")])
def test_header_and_client_hello_in_one_send(proxy, backend, pki, mode, case):
    be = backend(response=OK)
    px = tls_pp_proxy(proxy, pki, be, [mode])
    port = px.tls[mode]
    header = CASES[case](port)
    src = socket.inet_ntoa(header[16:20]) if header.startswith(V2_SIG) else \
        header.split(b" ")[2].decode()
    t, hello = client_hello(pki, raw_conn(port))
    try:
        send_once(t.raw, header + hello)
        t.handshake()
        assert t.version() in ("TLSv1.2", "TLSv1.3"), t.version()
        path = "/one-send-%s-%s" % (mode, case)
        r = request_over(t, path)
        assert r.status == 200, r.head
    finally:
        t.close()
    assert requests_to(be, path)[0].values("X-Forwarded-For") == [src]
    assert px.wait_log(lambda e: e.get("path") == path)[0]["client_ip"] == src


def split_at(data, cuts):
    out, last = [], 0
    for c in cuts:
        out.append(data[last:c])
        last = c
    out.append(data[last:])
    return [p for p in out if p]


@pytest.mark.parametrize("case", ["v1", "v2"])
def test_header_in_pieces_then_client_hello(proxy, backend, pki, case):
    """The header in several sends, its last piece carrying the start of the
    ClientHello (less than one TLS record), then the rest of the ClientHello."""
    be = backend(response=OK)
    px = tls_pp_proxy(proxy, pki, be, ["any"])
    port = px.tls["any"]
    header = CASES[case](port)
    src = socket.inet_ntoa(header[16:20]) if case == "v2" else header.split(b" ")[2].decode()
    t, hello = client_hello(pki, raw_conn(port))
    n = len(header)
    # v1: inside "PROXY", inside the source address, before the CRLF;
    # v2: inside the signature, inside the fixed part, inside the addresses.
    cuts = [3, 14, n - 1] if case == "v1" else [5, 14, 20]
    pieces = split_at(header + hello, cuts + [n + 7])
    assert len(pieces) == 5, [len(p) for p in pieces]
    try:
        for piece in pieces[:-1]:
            send_once(t.raw, piece)
            barrier(px, be)
        send_once(t.raw, pieces[-1])
        t.handshake()
        r = request_over(t, "/pieces-%s" % case)
        assert r.status == 200, r.head
    finally:
        t.close()
    assert requests_to(be, "/pieces-%s" % case)[0].values("X-Forwarded-For") == [src]


# ------------------------------------------------------------------ (c) refused

def test_client_hello_without_header_is_closed_and_counted(proxy, backend, pki):
    be = backend(response=OK)
    adm = AdminPort()
    modes = ["v1", "v2", "any"]
    px = tls_pp_proxy(proxy, pki, be, modes, admin=adm)
    base = bad_count(adm.metrics())
    for i, mode in enumerate(modes):
        t, hello = client_hello(pki, raw_conn(px.tls[mode]))
        try:
            send_once(t.raw, hello)
            how, data = End(t.raw, name="hello-only").wait_end(5)
        finally:
            t.close()
        assert data == b"", "%s: the proxy answered a ClientHello without a header: %r" % (
            mode, data[:32])
        assert how in ("eof", "reset"), how
        adm.wait_metric(lambda m, k=base + i + 1: bad_count(m) >= k, 5, "%s counted" % mode)
    # The same listeners still work for a client that sends the header.
    for mode in modes:
        port = px.tls[mode]
        t, hello = client_hello(pki, raw_conn(port))
        try:
            header = v1_header("192.0.2.20", port) if mode == "v1" else v2_header("192.0.2.20", port)
            send_once(t.raw, header + hello)
            t.handshake()
            assert request_over(t, "/after-%s" % mode).status == 200
        finally:
            t.close()
    m = adm.metrics()
    assert bad_count(m) == base + len(modes), m.text
    assert [r.target for r in be.requests] == ["/after-v1", "/after-v2", "/after-any"]


@pytest.mark.parametrize("case", ["v1", "v2"])
def test_proxy_header_on_a_tls_listener_without_the_option(proxy, backend, pki, case):
    be = backend(response=OK)
    adm = AdminPort()
    px = tls_pp_proxy(proxy, pki, be, ["off"], admin=adm)
    port = px.tls["off"]
    header = CASES[case](port)
    t, hello = client_hello(pki, raw_conn(port))
    try:
        send_once(t.raw, header + hello)
        # The header's bytes are TLS to this listener: garbage, so no handshake.
        with pytest.raises((ssl.SSLError, OSError)):
            t.handshake(10)
        assert t.obj.version() is None  # nothing was negotiated
    finally:
        t.close()
    # A plain TLS client afterwards: served, with its own address.
    t, hello = client_hello(pki, raw_conn(port))
    try:
        send_once(t.raw, hello)
        t.handshake()
        assert request_over(t, "/plain-tls").status == 200
    finally:
        t.close()
    assert requests_to(be, "/plain-tls")[0].values("X-Forwarded-For") == ["127.0.0.1"]
    assert [r.target for r in be.requests] == ["/plain-tls"]
    assert not [e for e in px.log_entries() if e.get("client_ip", "").startswith("192.0.2.")]
    m = adm.metrics()
    assert m.get("switchyard_proxy_protocol_errors_total") == 0, m.text
