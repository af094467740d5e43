"""The PROXY protocol with HAProxy as the real peer: HAProxy's send-proxy /
send-proxy-v2 in front of switchyard (the client address it carries is the
client everywhere), garbage headers closed and counted, a "PROXY" line on a
listener without the option is a malformed request, and switchyard's
send_proxy towards an HAProxy that has accept-proxy."""
import socket

from support.backend import free_port
from support.haproxy import haproxy, connect_from  # noqa: F401
from support.http import Reader, read_response, deadline_in, response_bytes, get
from support.ops import AdminPort
from support.tunnel import upgrader, upgrade_request, switching, End, WS_KEY  # noqa: F401

OK = response_bytes(200, body=b"ok")
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CLIENT4 = "127.0.0.5"


def has_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ clients

def request_from(src, port, data, dst=None, timeout=10.0):
    s = connect_from(src, port, dst, timeout)
    try:
        s.sendall(data)
        r = read_response(Reader(s), deadline_in(timeout))
        assert r is not None, "closed without a response"
        return r
    finally:
        s.close()


def raw_to_end(port, data, timeout=5.0):
    """Send data, then read until the proxy closes: the bytes it sent back."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        return End(s, name="raw").wait_end(timeout)[1]
    finally:
        s.close()



def requests_to(be, path, timeout=10.0):
    be.wait_for(lambda: any(r.target == path for r in be.requests), timeout, "a request for " + path)
    return [r for r in be.requests if r.target == path]


def pp_listeners(modes):
    """The probe listener (plain, on the fixture's port) and one per mode."""
    ports = {m: free_port() for m in modes}

    def listeners(port):
        return [{"address": "127.0.0.1:%d" % port}] + [
            {"address": "127.0.0.1:%d" % p, "proxy_protocol": m} for m, p in ports.items()]
    return ports, listeners


# ------------------------------------------------------------------ (a) PROXY in

def test_haproxy_send_proxy_gives_the_client_address(proxy, backend, upgrader, haproxy):
    be = backend(response=OK)
    up = upgrader()
    ports, listeners = pp_listeners(["v1", "v2", "any"])
    px = proxy(upstreams={"web": [be.address], "ws": [up.address]},
               routes=[{"match": {"path_prefix": "/ws"}, "upstream": "ws"},
                       {"match": {"path_prefix": "/"}, "upstream": "web"}],
               listeners=listeners, workers=1)
    v6 = has_ipv6_loopback()
    # frontend name -> (bind host, port, switchyard listener mode, send-proxy option)
    fronts = {"f1": ("127.0.0.1", free_port(), "v1", "send-proxy"),
              "f2": ("127.0.0.1", free_port(), "v2", "send-proxy-v2"),
              "f3": ("127.0.0.1", free_port(), "any", "send-proxy"),
              "f4": ("127.0.0.1", free_port(), "any", "send-proxy-v2")}
    if v6:
        fronts["f6"] = ("::1", free_port(), "any", "send-proxy-v2")
        fronts["f7"] = ("::1", free_port(), "v1", "send-proxy")
    cfg = ""
    for name, (host, port, mode, opt) in fronts.items():
        bind = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        cfg += ("frontend %s\n  mode tcp\n  bind %s\n  default_backend b%s\n"
                "backend b%s\n  mode tcp\n  server s 127.0.0.1:%d %s\n"
                % (name, bind, name, name, ports[mode], opt))
    haproxy(cfg, [(h, p) for h, p, _, _ in fronts.values()])

    for name, (host, port, mode, opt) in fronts.items():
        src = "::1" if ":" in host else CLIENT4
        path = "/pp-%s" % name
        r = request_from(src, port, get(path, extra=b"Connection: close\r\n"), dst=host)
        assert r.status == 200, (name, r.head)
        req = requests_to(be, path)[0]
        assert req.values("X-Forwarded-For") == [src], (name, opt, req.head)
        e = px.wait_log(lambda e, p=path: e.get("path") == p)[0]
        assert e["client_ip"] == src, (name, e)

    # A WebSocket-style upgrade over the same path: the 101, the address, bytes both ways.
    host, port = fronts["f2"][:2]
    s = connect_from(CLIENT4, port, dst=host)
    try:
        s.sendall(upgrade_request("/ws/room"))
        rd = Reader(s)
        r = read_response(rd, deadline_in(10))
        assert r is not None and r.status == 101, r
        tbe = up.take(10)
        assert tbe.request.values("X-Forwarded-For") == [CLIENT4], tbe.request.head
        cl = End(s, rd, "client")
        cl.send(b"ping through haproxy")
        tbe.expect(b"ping through haproxy")
        tbe.send(b"pong")
        cl.expect(b"pong")
        cl.shutdown_write()
        assert tbe.wait_end(5)[0] == "eof"
        tbe.close()
    finally:
        s.close()
    t = px.wait_log(lambda e: e.get("type") == "tunnel")[0]
    assert t["client_ip"] == CLIENT4, t


# ------------------------------------------------------------------ (b) garbage

def test_bad_headers_closed_without_response_and_counted(proxy, backend):
    be = backend(response=OK)
    adm = AdminPort()
    ports, listeners = pp_listeners(["any"])
    port = ports["any"]
    px = proxy(upstreams={"web": [be.address]}, listeners=listeners, admin=adm.config,
               limits={"header_timeout": "1s"}, workers=1)

    def bad_count(m):
        return m.get("switchyard_proxy_protocol_errors_total", reason="bad")

    def good(n):
        hdr = b"PROXY TCP4 192.0.2.%d 127.0.0.1 4000 %d\r\n" % (n, port)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(hdr + get("/good%d" % n, extra=b"Connection: close\r\n"))
            r = read_response(Reader(s), deadline_in(10))
        finally:
            s.close()
        assert r is not None and r.status == 200, r
        assert requests_to(be, "/good%d" % n)[0].values("X-Forwarded-For") == ["192.0.2.%d" % n]

    good(1)
    base = bad_count(adm.metrics())
    # A connection stuck in the middle of its header does not hold others up.
    stuck = socket.create_connection(("127.0.0.1", port), timeout=10)
    stuck.sendall(b"PROXY TCP4 10.9.9.9 ")
    good(2)

    cases = [
        ("garbled", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n" + get("/garbled")),
        ("bad address", b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n" + get("/garbled2")),
        ("oversized", b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n" + get("/oversized")),
        ("v2 huge length", V2_SIG + b"\x21\x11\xff\xff" + b"\x00" * 64),
        ("not a header", get("/plain")),
    ]
    for i, (what, data) in enumerate(cases):
        assert raw_to_end(port, data) == b"", "%s: the proxy answered" % what
        adm.wait_metric(lambda m, n=base + i + 1: bad_count(m) >= n, 5, "%s counted" % what)
    # A truncated v1 header, then the client closes: reason "eof" (an end
    # before a whole header, as a balancer's plain TCP check does).
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"PROXY TCP4 1.2.3.4 5.6")
    s.close()
    n = base + len(cases)
    adm.wait_metric(lambda m: m.get("switchyard_proxy_protocol_errors_total", reason="eof") >= 1,
                    5, "truncated header counted")
    good(3)
    # The stuck one runs out of timeouts.header: closed, no response, counted.
    assert End(stuck, name="stuck").wait_end(5) == ("eof", b"")
    stuck.close()
    m = adm.wait_metric(lambda m: m.get("switchyard_proxy_protocol_errors_total",
                                        reason="timeout") >= 1, 5, "timeout counted")
    assert bad_count(m) == n, m.text
    assert m.get("switchyard_proxy_protocol_errors_total", reason="timeout") == 1, m.text
    assert m.get("switchyard_proxy_protocol_errors_total", reason="eof") == 1, m.text
    for path in ("/garbled", "/garbled2", "/oversized", "/plain"):
        assert not [r for r in be.requests if r.target == path], path
    assert not any("1.2.3.4" in r.head.decode("latin-1") for r in be.requests)


# ------------------------------------------------------------------ (c) off

def test_proxy_line_without_the_option_is_a_bad_request(proxy, backend):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]}, workers=1)
    r = request_from("127.0.0.1", px.port,
                     b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + get("/spoof"))
    assert r.status == 400, r.head
    assert request_from("127.0.0.1", px.port, get("/after")).status == 200
    assert requests_to(be, "/after")[0].values("X-Forwarded-For") == ["127.0.0.1"]
    assert not any(b"1.2.3.4" in r.head for r in be.requests), be.requests
    assert not [e for e in px.log_entries() if e.get("client_ip") == "1.2.3.4"]


# ------------------------------------------------------------------ (d) PROXY out

def test_send_proxy_to_haproxy_accept_proxy(proxy, backend, upgrader, haproxy):
    be = backend(response=OK)
    up = upgrader(switching(accept_for=WS_KEY))  # HAProxy checks Sec-WebSocket-Accept
    h1, h2, h3 = free_port(), free_port(), free_port()

    def front(name, port, target):
        return ("frontend %s\n  mode http\n  bind 127.0.0.1:%d accept-proxy\n"
                "  http-request set-header X-Seen %%[src]\n  default_backend b%s\n"
                "backend b%s\n  mode http\n  server s %s\n" % (name, port, name, name, target))
    haproxy(front("v1", h1, be.address) + front("v2", h2, be.address) + front("ws", h3, up.address),
            [("127.0.0.1", h1), ("127.0.0.1", h2), ("127.0.0.1", h3)])
    px = proxy(upstreams={
        "pp1": {"servers": [{"address": "127.0.0.1:%d" % h1}], "send_proxy": "v1"},
        "pp2": {"servers": [{"address": "127.0.0.1:%d" % h2}], "send_proxy": "v2"},
        "ws": {"servers": [{"address": "127.0.0.1:%d" % h3}], "send_proxy": "v2"}},
        routes=[{"match": {"path_prefix": "/v1"}, "upstream": "pp1"},
                {"match": {"path_prefix": "/v2"}, "upstream": "pp2"},
                {"match": {"path_prefix": "/ws"}, "upstream": "ws"}], workers=1)
    # Two clients one after the other on each: a pooled connection would show
    # the first client's address for the second.
    for ver in ("v1", "v2"):
        for src in ("127.0.0.5", "127.0.0.6"):
            path = "/%s/from-%s" % (ver, src)
            r = request_from(src, px.port, get(path))
            assert r.status == 200, (path, r.head)
            assert requests_to(be, path)[0].values("X-Seen") == [src], path

    s = connect_from(CLIENT4, px.port)
    try:
        s.sendall(upgrade_request("/ws/out"))
        rd = Reader(s)
        r = read_response(rd, deadline_in(10))
        assert r is not None and r.status == 101, r
        tbe = up.take(10)
        assert tbe.request.values("X-Seen") == [CLIENT4], tbe.request.head
        cl = End(s, rd, "client")
        cl.send(b"up")
        tbe.expect(b"up")
        tbe.send(b"down")
        cl.expect(b"down")
        tbe.close()
    finally:
        s.close()
