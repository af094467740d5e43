"""The upstream's answer to an upgrade request: a 101 that switches (head
relayed exactly, bytes after it first), refusals that keep the connection in
HTTP keep-alive, fake/wrong 101s that become 502 and never a tunnel, 1xx
relayed, Sec-WebSocket-Accept checked; and the client held (not read) while
the answer is pending."""
import pytest

from support.http import response_bytes, get
from support.tunnel import (upgrader, upgrade_request, switching, open_tunnel,  # noqa: F401 (fixture)
                            assert_bytes, End, ws_accept, WS_KEY_ACCEPT, drain_check)

VIA = b"Via: 1.1 switchyard\r\n"


# ------------------------------------------------------------------ 101

def test_101_relayed_exactly_and_upstream_bytes_first(proxy, upgrader):
    up101 = (b"HTTP/1.1 101 Switching Protocols\r\n"
             b"Upgrade: websocket\r\n"
             b"X-Server: a\r\n"
             b"Connection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: " + WS_KEY_ACCEPT.encode() + b"\r\n"
             b"Sec-WebSocket-Protocol: chat\r\n"
             b"Set-Cookie: s=1\r\n"
             b"\r\n")
    early = b"\x81\x05hello-from-upstream-before-any-client-byte"
    up = upgrader(answer=up101 + early)
    px = proxy(upstreams={"ws": [up.address]})
    c, cl, be, r = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        assert_bytes(r.head, b"HTTP/1.1 101 Switching Protocols\r\n"
                     b"X-Server: a\r\n"
                     b"Sec-WebSocket-Accept: " + WS_KEY_ACCEPT.encode() + b"\r\n"
                     b"Sec-WebSocket-Protocol: chat\r\n"
                     b"Set-Cookie: s=1\r\n"
                     b"Connection: upgrade\r\n"
                     b"Upgrade: websocket\r\n" + VIA + b"\r\n", "101 head at the client")
        cl.expect(early)
        cl.send(b"client-first")
        be.expect(b"client-first")
        be.send(b"later")
        cl.expect(b"later")
        assert bytes(c.raw) == r.head + early + b"later"


def test_101_reason_and_token_case_kept(proxy, upgrader):
    up = upgrader(answer=b"HTTP/1.1 101 Whatever You Like\r\nupgrade: WebSocket\r\n"
                         b"connection: upgrade\r\n\r\n")
    px = proxy(upstreams={"ws": [up.address]})
    c, cl, be, r = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        assert_bytes(r.head, b"HTTP/1.1 101 Whatever You Like\r\nConnection: upgrade\r\n"
                     b"upgrade: WebSocket\r\n" + VIA + b"\r\n")
        cl.send(b"x")
        be.expect(b"x")


def test_101_picks_second_offered_token(proxy, upgrader):
    up = upgrader(answer=switching("websocket"))
    px = proxy(upstreams={"ws": [up.address]})
    c, cl, be, r = open_tunnel(px, up, upgrade_request("/ws", upgrade="x-other/1, websocket"))
    with c:
        assert be.request.values("upgrade") == ["x-other/1, websocket"]
        assert r.values("upgrade") == ["websocket"]
        be.send(b"ok")
        cl.expect(b"ok")


# ------------------------------------------------------------------ the client is held

def test_client_not_read_until_answer_then_early_bytes_first(proxy, upgrader):
    """Bytes written with the head wait in the proxy until the 101, then go
    first and in order, before anything sent later."""
    early = b"EARLY-CLIENT-BYTES\x00\x01GET / HTTP/1.1\r\n\r\n"
    up = upgrader(answer=None)  # the test answers
    px = proxy(upstreams={"ws": [up.address]})
    with px.connect() as c:
        c.send(upgrade_request("/ws") + early)
        be = up.take()
        # the proxy must not pass anything on before the answer
        drain_check(be, 0.4)
        assert bytes(be.conn.raw) == be.request.head
        be.send(switching())
        r = c.response()
        assert r.status == 101
        be.expect(early)
        cl = End(c.sock, c.reader, "client")
        cl.send(b"LATER")
        be.expect(b"LATER")
        assert bytes(be.conn.raw) == be.request.head + early + b"LATER"


def test_refused_upgrade_then_pipelined_request(proxy, backend):
    """A request pipelined behind a refused upgrade is parsed as HTTP after the
    refusal, not before it, and answered on the same connection."""
    def answer(req):
        if req.has("upgrade"):
            return response_bytes(426, "Upgrade Required", headers=["Sec-WebSocket-Version: 13"],
                                  body=b"no")
        return response_bytes(200, body=req.target.encode())
    be = backend(response=answer)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        c.send(upgrade_request("/ws") + get("/next", host="ws.test"))
        r1 = c.response()
        r2 = c.response()
        assert r1.status == 426 and r1.body == b"no"
        assert r2.status == 200 and r2.body == b"/next"
        assert [q.target for q in be.requests] == ["/ws", "/next"]
        r3 = c.request(get("/third", host="ws.test"))
        assert r3.body == b"/third"


# ------------------------------------------------------------------ refusals stay HTTP

REFUSALS = {
    200: response_bytes(200, body=b"plain page"),
    302: response_bytes(302, "Found", headers=["Location: /elsewhere"], body=b""),
    400: response_bytes(400, "Bad Request", headers=["Content-Type: text/plain"], body=b"bad"),
    426: response_bytes(426, "Upgrade Required", headers=["Sec-WebSocket-Version: 13, 8"],
                        body=b"need v13"),
    503: response_bytes(503, "Service Unavailable", headers=["Retry-After: 1"], body=b"later"),
}


@pytest.mark.parametrize("status", sorted(REFUSALS))
def test_non_101_relayed_and_keep_alive(proxy, backend, status):
    canned = REFUSALS[status]

    def answer(req):
        return canned if req.has("upgrade") else response_bytes(200, body=req.target.encode())
    be = backend(response=answer)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        r = c.request(upgrade_request("/ws"))
        head, _, body = canned.partition(b"\r\n\r\n")
        assert_bytes(r.raw, head + b"\r\n" + VIA + b"\r\n" + body, "refusal at the client")
        r2 = c.request(get("/second", host="ws.test"))
        assert r2.status == 200 and r2.body == b"/second"
        cl = End(c.sock, c.reader, "client")
        drain_check(cl, 0.05)
    assert [q.target for q in be.requests] == ["/ws", "/second"]


def test_426_with_upgrade_field(proxy, backend):
    """RFC 9110 15.5.22: a 426 carries Upgrade. What matters here: the
    version hint passes and the connection stays usable."""
    canned = (b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
              b"Upgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n")

    def answer(req):
        return canned if req.has("upgrade") else response_bytes(200, body=b"plain")
    be = backend(response=answer)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        r = c.request(upgrade_request("/ws"))
        assert r.status == 426 and r.values("sec-websocket-version") == ["13"], r.head
        assert "close" not in r.tokens("connection"), r.head
        assert c.request(get("/p")).body == b"plain"


def test_100_continue_then_101(proxy, upgrader):
    up = upgrader(answer=b"HTTP/1.1 100 Continue\r\n\r\n" + switching() + b"tail")
    px = proxy(upstreams={"ws": [up.address]})
    with px.connect() as c:
        c.send(upgrade_request("/ws"))
        r100 = c.response(interim=True)
        assert_bytes(r100.head, b"HTTP/1.1 100 Continue\r\n" + VIA + b"\r\n", "interim head")
        r = c.response(interim=True)
        assert r.status == 101
        cl = End(c.sock, c.reader, "client")
        cl.expect(b"tail")
        be = up.take()
        cl.send(b"up")
        be.expect(b"up")


def test_100_continue_then_refusal_keeps_http(proxy, backend):
    def answer(req):
        if req.has("upgrade"):
            return b"HTTP/1.1 100 Continue\r\n\r\n" + response_bytes(403, "Forbidden", body=b"no")
        return response_bytes(200, body=b"again")
    be = backend(response=answer)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        r = c.request(upgrade_request("/ws"))
        assert [i.status for i in c.interim] == [100]
        assert r.status == 403 and r.body == b"no"
        assert c.request(get("/again")).body == b"again"


# ------------------------------------------------------------------ fake and wrong 101s

SMUGGLED = b"SMUGGLED\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad"


@pytest.mark.parametrize("case", [
    "plain-request", "upgrade-without-connection-token", "http10", "route-allows-none",
    "h2c-stripped", "token-stripped-by-route", "wrong-token", "other-token", "no-upgrade-field",
    "empty-upgrade-field",
])
def test_bad_101_is_502_never_a_tunnel(proxy, upgrader, case):
    routes = None
    reply_token = "websocket"
    request = upgrade_request("/ws")
    if case == "plain-request":
        request = get("/ws", host="ws.test")
    elif case == "upgrade-without-connection-token":
        request = upgrade_request("/ws", connection="keep-alive")
    elif case == "http10":
        request = upgrade_request("/ws", version="HTTP/1.0")
    elif case == "route-allows-none":
        routes = [{"match": {"path_prefix": "/"}, "upstream": "ws", "allow_upgrades": []}]
    elif case == "h2c-stripped":
        request = upgrade_request("/ws", upgrade="h2c", ws=False)
        reply_token = "h2c"
    elif case == "token-stripped-by-route":
        routes = [{"match": {"path_prefix": "/"}, "upstream": "ws", "allow_upgrades": ["websocket"]}]
        request = upgrade_request("/ws", upgrade="foo, websocket")
        reply_token = "foo"
    elif case == "wrong-token":
        request = upgrade_request("/ws", upgrade="websocket")
        reply_token = "h2c"
    elif case == "other-token":
        request = upgrade_request("/ws", upgrade="websocket, foo")
        reply_token = "bar"
    elif case == "no-upgrade-field":
        reply_token = None
    elif case == "empty-upgrade-field":
        reply_token = ""
    up = upgrader(answer=switching(reply_token) + SMUGGLED)
    px = proxy(upstreams={"ws": [up.address]}, routes=routes)
    with px.connect() as c:
        c.send(request)
        r = c.response()
        be = up.take()
        assert r.status == 502, r.head
        assert r.tokens("connection") == ["close"], r.head
        assert c.closed_by_peer(5), "the proxy kept the client connection after the 502"
        assert bytes(c.raw) == r.raw, "bytes beyond the 502: %r" % bytes(c.raw)[len(r.raw):]
        assert b"SMUGGLED" not in bytes(c.raw)
        # the upstream connection is dropped too, and nothing of the client reaches it
        how, extra = be.wait_end(5)
        assert extra == b"", "upstream received %r after its fake 101" % extra
    e = px.wait_log(lambda e: e.get("type", "request") == "request" and e.get("path") == "/ws")[0]
    assert e["status"] == 502, e
    assert not [e for e in px.log_entries() if e.get("type") == "tunnel"]


def test_fake_101_client_bytes_never_reach_upstream(proxy, upgrader):
    """Bytes the client sent behind a plain request are HTTP, not tunnel data:
    after the fake 101 they must not be relayed raw."""
    up = upgrader(answer=switching("websocket") + SMUGGLED)
    px = proxy(upstreams={"ws": [up.address]})
    with px.connect() as c:
        c.send(get("/a", host="ws.test") + b"RAW-AFTER-REQUEST")
        r = c.response()
        be = up.take()
        assert r.status == 502
        how, extra = be.wait_end(5)
        assert extra == b"", "upstream got %r" % extra
        assert b"RAW-AFTER" not in bytes(be.conn.raw)


# ------------------------------------------------------------------ Sec-WebSocket-Accept

def ws_route(**ws):
    return [{"match": {"path_prefix": "/"}, "upstream": "ws", "websocket": ws}]


@pytest.mark.parametrize("accept", [WS_KEY_ACCEPT, ws_accept("dGhlIHNhbXBsZSBub25jZQ==")])
def test_check_accept_right_value_tunnels(proxy, upgrader, accept):
    up = upgrader(answer=switching(headers=["Sec-WebSocket-Accept: " + accept]))
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_route(check_accept=True))
    c, cl, be, r = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        assert r.values("sec-websocket-accept") == [accept]
        cl.send(b"frame")
        be.expect(b"frame")


@pytest.mark.parametrize("accept", [
    None,                                   # missing
    "",                                     # empty
    "s3pPLMBiTxaQ9kYGzzhZRbK+xOO=",         # one character off
    ws_accept("c29tZSBvdGhlciBrZXkgISE="),  # right form, another key
    WS_KEY_ACCEPT + "x",
])
def test_check_accept_wrong_value_502(proxy, upgrader, accept):
    headers = [] if accept is None else ["Sec-WebSocket-Accept: " + accept]
    up = upgrader(answer=switching(headers=headers) + SMUGGLED)
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_route(check_accept=True))
    with px.connect() as c:
        c.send(upgrade_request("/ws"))
        r = c.response()
        assert r.status == 502, r.head
        assert c.closed_by_peer(5)
        assert bytes(c.raw) == r.raw and b"SMUGGLED" not in bytes(c.raw)


def test_accept_not_checked_by_default(proxy, upgrader):
    up = upgrader(answer=switching(headers=["Sec-WebSocket-Accept: not-checked"]))
    px = proxy(upstreams={"ws": [up.address]})
    c, cl, be, r = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        assert r.values("sec-websocket-accept") == ["not-checked"]
        cl.send(b"y")
        be.expect(b"y")


@pytest.mark.parametrize("keyline", [
    None,                                               # no key at all
    "Sec-WebSocket-Key: " + "QUJD" * 20,                # 80 characters
    "Sec-WebSocket-Key: " + "x" * 64,
], ids=["no-key", "long-key", "64-char-key"])
def test_check_accept_cannot_be_skipped_by_the_client(proxy, upgrader, keyline):
    """With check_accept on, a 101 whose Sec-WebSocket-Accept cannot be the
    answer to the client's key must never become a tunnel, whatever key the
    client sent (refusing the request up front is fine too)."""
    extra = [keyline] if keyline else []
    request = upgrade_request("/ws", ws=False, extra=["Sec-WebSocket-Version: 13"] + extra)
    up = upgrader(answer=switching(headers=["Sec-WebSocket-Accept: " + WS_KEY_ACCEPT]) + SMUGGLED)
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_route(check_accept=True))
    with px.connect() as c:
        c.send(request)
        r = c.response()
        assert r.status != 101, "tunnel opened with an unverifiable Sec-WebSocket-Accept: %r" % r.head
        assert r.status == 502 or 400 <= r.status < 500, r.head
        assert b"SMUGGLED" not in bytes(c.raw)
