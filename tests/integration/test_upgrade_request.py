"""Upgrade requests: detection, routing on the offered token, which tokens go
through, and the exact head (and body) the upstream sees (DESIGN.md, "What
transparent and upgrade-aware mean here")."""
import pytest

from support.http import response_bytes, get
from support.tunnel import (upgrader, upgrade_request, open_tunnel,  # noqa: F401 (fixture)
                            assert_bytes, WS_KEY)

OK = response_bytes(200, body=b"ok")
KEYV = b"Sec-WebSocket-Key: " + WS_KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n"


def appended(host=b"ws.test"):
    return (b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Host: " + host + b"\r\nVia: 1.1 switchyard\r\n")


def upstream_head(proxy, backend, request, response=OK, **cfg):
    """Send request through a proxy to a canned backend; (upstream request, client response)."""
    be = backend(response=response)
    px = proxy(upstreams={"web": [be.address]}, **cfg)
    with px.connect() as c:
        r = c.request(request)
    return be.wait_requests(1)[0], r


def one_route(**route):
    r = {"match": {"path_prefix": "/"}, "upstream": "web"}
    r.update(route)
    return [r]


# ------------------------------------------------------------------ detection

def test_websocket_upgrade_head_exact(proxy, upgrader):
    """The full rewrite: hop-by-hop lines out (wherever they are), every other
    line byte for byte and in order, repeated Sec-WebSocket-* lines kept, then
    Connection/Upgrade, then the forwarding lines."""
    client = (b"GET /chat?room=1 HTTP/1.1\r\n"
              b"Host: ws.test\r\n"
              b"X-Before: 1\r\n"
              b"Connection: keep-alive, Upgrade, X-Hop\r\n"
              b"Sec-WebSocket-Key: " + WS_KEY.encode() + b"\r\n"
              b"Upgrade: websocket\r\n"
              b"X-Hop: dropped\r\n"
              b"Sec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Protocol: chat\r\n"
              b"sec-websocket-protocol: superchat, v2\r\n"
              b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
              b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"
              b"Keep-Alive: timeout=5\r\n"
              b"Proxy-Connection: keep-alive\r\n"
              b"TE: trailers\r\n"
              b"Origin: http://ws.test\r\n"
              b"\r\n")
    up = upgrader()
    px = proxy(upstreams={"ws": [up.address]})
    c, cl, be, r = open_tunnel(px, up, client)
    with c:
        assert_bytes(be.request.head,
                     b"GET /chat?room=1 HTTP/1.1\r\n"
                     b"Host: ws.test\r\n"
                     b"X-Before: 1\r\n"
                     b"Sec-WebSocket-Key: " + WS_KEY.encode() + b"\r\n"
                     b"Sec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Protocol: chat\r\n"
                     b"sec-websocket-protocol: superchat, v2\r\n"
                     b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                     b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"
                     b"Origin: http://ws.test\r\n"
                     b"Connection: upgrade\r\n"
                     b"Upgrade: websocket\r\n"
                     + appended() + b"\r\n", "upstream request head")
        assert bytes(be.conn.raw) == be.request.head, "bytes after the head of a body-less upgrade"
        cl.send(b"through")
        be.expect(b"through")


@pytest.mark.parametrize("conn_lines", [
    b"Connection: Upgrade\r\n",
    b"connection: UPGRADE\r\n",
    b"Connection: keep-alive, upgrade\r\n",
    b"Connection: keep-alive\r\nConnection: Upgrade\r\n",   # the token on a second line
    b"Connection: Upgrade\r\nConnection: keep-alive\r\n",
    b"CONNECTION:foo ,  Upgrade\t, bar\r\nFoo: named\r\nbar: named\r\n",  # odd spacing; named fields go
], ids=["plain", "case", "list", "second-line", "first-line", "spacing"])
def test_connection_token_forms_detected(proxy, backend, conn_lines):
    client = (b"GET /ws HTTP/1.1\r\nHost: ws.test\r\n" + conn_lines +
              b"Upgrade: websocket\r\n" + KEYV + b"\r\n")
    req, r = upstream_head(proxy, backend, client,
                           response=response_bytes(426, "Upgrade Required",
                                                   headers=["Sec-WebSocket-Version: 13"]))
    assert r.status == 426
    assert_bytes(req.head, b"GET /ws HTTP/1.1\r\nHost: ws.test\r\n" + KEYV +
                 b"Connection: upgrade\r\nUpgrade: websocket\r\n" + appended() + b"\r\n")


@pytest.mark.parametrize("lines", [
    b"Upgrade: websocket\r\n",                              # no Connection at all
    b"Connection: keep-alive\r\nUpgrade: websocket\r\n",    # Connection without the token
    b"Connection: upgraded, x-upgrade\r\nUpgrade: websocket\r\n",  # look-alike tokens
    b"Connection: Upgrade\r\n",                             # token without an Upgrade field
], ids=["no-connection", "no-token", "lookalike", "no-upgrade-field"])
def test_not_an_upgrade_forwarded_plain(proxy, backend, lines):
    client = b"GET /ws HTTP/1.1\r\nHost: ws.test\r\n" + lines + KEYV + b"X-After: 1\r\n\r\n"
    req, r = upstream_head(proxy, backend, client)
    assert r.status == 200 and r.body == b"ok"
    assert_bytes(req.head, b"GET /ws HTTP/1.1\r\nHost: ws.test\r\n" + KEYV + b"X-After: 1\r\n"
                 + appended() + b"\r\n")


def test_http10_upgrade_is_plain(proxy, backend):
    client = (b"GET /ws HTTP/1.0\r\nHost: ws.test\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\n" + KEYV + b"\r\n")
    req, r = upstream_head(proxy, backend, client)
    assert r.status == 200 and r.body == b"ok"
    assert_bytes(req.head, b"GET /ws HTTP/1.1\r\nHost: ws.test\r\n" + KEYV + appended() + b"\r\n")


# ------------------------------------------------------------------ routing

@pytest.fixture
def split(proxy, backend):
    """/ws with match.upgrade [websocket] -> "ws", everything else -> "web"."""
    ws = backend(response=response_bytes(200, body=b"ws"), name="ws")
    web = backend(response=response_bytes(200, body=b"web"), name="web")
    px = proxy(upstreams={"ws": [ws.address], "web": [web.address]},
               routes=[{"match": {"path_prefix": "/ws", "upgrade": ["websocket"]}, "upstream": "ws"},
                       {"match": {"path_prefix": "/"}, "upstream": "web"}])

    def who(request):
        with px.connect() as c:
            r = c.request(request)
        assert r.status == 200, r.head
        return r.body.decode()
    return who, ws, web


def test_route_on_upgrade_token(split):
    who, ws, web = split
    assert who(upgrade_request("/ws")) == "ws"
    assert who(get("/ws", host="ws.test")) == "web"
    assert who(upgrade_request("/ws", upgrade="WebSocket")) == "ws"        # tokens are case-insensitive
    assert who(upgrade_request("/ws", upgrade="foo, websocket")) == "ws"   # among other offers
    assert who(upgrade_request("/ws", upgrade="foo")) == "web"             # another token
    assert who(upgrade_request("/ws", connection=None)) == "web"           # no Connection token
    assert who(upgrade_request("/ws", connection="keep-alive")) == "web"
    assert who(upgrade_request("/ws", version="HTTP/1.0")) == "web"
    # the plain route still forwards the non-websocket upgrade as an upgrade
    foo = [q for q in web.requests if q.values("upgrade")]
    assert [q.values("upgrade") for q in foo] == [["foo"]], [q.head for q in web.requests]
    assert [q.values("connection") for q in foo] == [["upgrade"]]
    assert [q.values("upgrade") for q in ws.requests] == [["websocket"], ["WebSocket"], ["foo, websocket"]]


# ------------------------------------------------------------------ which tokens go through

@pytest.mark.parametrize("allow,offer,forwarded", [
    (None, b"h2c, websocket, foo/1", b"websocket, foo/1"),    # default: everything but h2c
    (["*"], b"websocket, H2C", b"websocket"),
    (["websocket"], b"foo, WebSocket, h2c", b"WebSocket"),     # client's spelling kept
    (["foo", "websocket"], b"websocket,foo", b"websocket, foo"),  # client's order, ", "-joined
    (["h2c", "websocket"], b"h2c, websocket", b"h2c, websocket"),
    (["*", "h2c"], b"h2c, x/2", b"h2c, x/2"),
], ids=["default", "star", "only-ws", "order", "h2c-named", "star-h2c"])
def test_allowed_tokens_forwarded(proxy, backend, allow, offer, forwarded):
    route = {} if allow is None else {"allow_upgrades": allow}
    client = upgrade_request("/t", upgrade=offer, ws=False)
    req, r = upstream_head(proxy, backend, client, routes=one_route(**route))
    assert r.status == 200
    assert_bytes(req.head, b"GET /t HTTP/1.1\r\nHost: ws.test\r\nConnection: upgrade\r\n"
                 b"Upgrade: " + forwarded + b"\r\n" + appended() + b"\r\n")


def test_upgrade_offers_on_several_lines(proxy, backend):
    client = (b"GET /t HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: foo/2\r\n"
              b"X-Mid: 1\r\nupgrade: h2c, websocket\r\n\r\n")
    req, _ = upstream_head(proxy, backend, client)
    assert_bytes(req.head, b"GET /t HTTP/1.1\r\nHost: ws.test\r\nX-Mid: 1\r\nConnection: upgrade\r\n"
                 b"Upgrade: foo/2, websocket\r\n" + appended() + b"\r\n")


@pytest.mark.parametrize("allow,offer", [
    ([], b"websocket"),
    (None, b"h2c"),
    (["websocket"], b"foo, h2c"),
], ids=["none-allowed", "h2c-default", "none-left"])
def test_no_token_left_forwarded_plain(proxy, backend, allow, offer):
    route = {} if allow is None else {"allow_upgrades": allow}
    client = upgrade_request("/t", upgrade=offer)
    req, r = upstream_head(proxy, backend, client, routes=one_route(**route))
    assert r.status == 200 and r.body == b"ok"
    assert r.values("connection") == [], r.head
    assert_bytes(req.head, b"GET /t HTTP/1.1\r\nHost: ws.test\r\n" + KEYV + appended() + b"\r\n")


H2S = b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"


def test_h2c_allowed_keeps_http2_settings(proxy, backend):
    client = (b"GET /h2 HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              b"Upgrade: h2c\r\n" + H2S + b"Accept: */*\r\n\r\n")
    req, _ = upstream_head(proxy, backend, client, routes=one_route(allow_upgrades=["h2c"]))
    assert_bytes(req.head, b"GET /h2 HTTP/1.1\r\nHost: ws.test\r\n" + H2S + b"Accept: */*\r\n"
                 b"Connection: upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" + appended() + b"\r\n")


def test_h2c_refused_drops_http2_settings(proxy, backend):
    client = (b"GET /h2 HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              b"Upgrade: h2c\r\n" + H2S + b"Accept: */*\r\n\r\n")
    req, r = upstream_head(proxy, backend, client)  # default route: no h2c
    assert r.status == 200
    assert_bytes(req.head, b"GET /h2 HTTP/1.1\r\nHost: ws.test\r\nAccept: */*\r\n"
                 + appended() + b"\r\n")


def test_h2c_and_websocket_offered_only_websocket_allowed(proxy, backend):
    """HTTP2-Settings belongs to h2c: when h2c is stripped it goes too."""
    client = (b"GET /h2 HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              b"Upgrade: h2c, websocket\r\n" + H2S + KEYV + b"\r\n")
    req, _ = upstream_head(proxy, backend, client)
    assert_bytes(req.head, b"GET /h2 HTTP/1.1\r\nHost: ws.test\r\n" + KEYV +
                 b"Connection: upgrade\r\nUpgrade: websocket\r\n" + appended() + b"\r\n")


# ------------------------------------------------------------------ subprotocols

@pytest.mark.parametrize("lines,want", [
    (b"Sec-WebSocket-Protocol: other, chat\r\nX-Mid: 1\r\nSec-WebSocket-Protocol: SuperChat, x\r\n",
     b"Sec-WebSocket-Protocol: chat, SuperChat\r\nX-Mid: 1\r\n"),
    (b"X-Mid: 1\r\nSec-WebSocket-Protocol: superchat\r\n",
     b"X-Mid: 1\r\nSec-WebSocket-Protocol: superchat\r\n"),
    (b"Sec-WebSocket-Protocol: other\r\nX-Mid: 1\r\nSec-WebSocket-Protocol: x, y\r\n",
     b"X-Mid: 1\r\n"),
], ids=["two-lines", "one-kept", "none-kept"])
def test_subprotocols_restricted(proxy, backend, lines, want):
    client = (b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              + KEYV + lines + b"Origin: o\r\n\r\n")
    req, _ = upstream_head(proxy, backend, client,
                           routes=one_route(websocket={"subprotocols": ["chat", "superchat"]}))
    assert_bytes(req.head, b"GET /ws HTTP/1.1\r\nHost: ws.test\r\n" + KEYV + want + b"Origin: o\r\n"
                 b"Connection: upgrade\r\nUpgrade: websocket\r\n" + appended() + b"\r\n")


def test_subprotocols_unrestricted_pass_untouched(proxy, backend):
    lines = b"Sec-WebSocket-Protocol: other, chat\r\nX-Mid: 1\r\nSec-WebSocket-Protocol: x\r\n"
    client = (b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              + KEYV + lines + b"\r\n")
    req, _ = upstream_head(proxy, backend, client)
    assert_bytes(req.head, b"GET /ws HTTP/1.1\r\nHost: ws.test\r\n" + KEYV + lines +
                 b"Connection: upgrade\r\nUpgrade: websocket\r\n" + appended() + b"\r\n")


# ------------------------------------------------------------------ a body before the switch

def test_content_length_body_then_tunnel(proxy, upgrader):
    body = b"hello world"
    client = upgrade_request("/post", method="POST", extra=["Content-Length: %d" % len(body)]) + body
    up = upgrader()
    px = proxy(upstreams={"ws": [up.address]})
    c, cl, be, r = open_tunnel(px, up, client)
    with c:
        assert_bytes(be.request.head, b"POST /post HTTP/1.1\r\nHost: ws.test\r\n" + KEYV +
                     b"Content-Length: 11\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                     + appended() + b"\r\n", "upstream head")
        assert be.request.body == body
        cl.send(b"after-switch")
        be.expect(b"after-switch")
        assert bytes(be.conn.raw) == be.request.head + body + b"after-switch"
        be.send(b"down")
        cl.expect(b"down")


def test_chunked_body_then_tunnel(proxy, upgrader):
    client = (upgrade_request("/post", method="POST", extra=["Transfer-Encoding: chunked"])
              + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    up = upgrader()
    px = proxy(upstreams={"ws": [up.address]})
    c, cl, be, r = open_tunnel(px, up, client)
    with c:
        assert be.request.framing == "chunked" and be.request.body == b"hello world"
        assert be.request.values("transfer-encoding") == ["chunked"]
        assert be.request.values("upgrade") == ["websocket"]
        cl.send(b"after-switch")
        be.expect(b"after-switch")
        assert bytes(be.conn.raw).endswith(b"0\r\n\r\nafter-switch"), bytes(be.conn.raw)[-80:]
