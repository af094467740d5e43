"""Interop with node's `ws` package (npm, pinned in tests/interop/package-lock.json):
a `ws` client (tests/interop/ws_client.js) and a `ws` server
(tests/interop/ws_server.js) talk through Switchyard: text, UTF-8 and 1 MiB
binary messages, ping/pong both ways, close codes with reasons both ways,
permessage-deflate negotiated end to end (and declined), subprotocols narrowed
by the route, a frame sent right behind the 101, a refused handshake followed
by plain HTTP on the same connection, 40 concurrent connections; and the `ws`
client talks to sy-demo through Switchyard.

Needs node and `npm ci --prefix tests/interop` (run here on demand if npm is
available); skipped with a message otherwise."""
import pytest

from support.interop import (children, node_with_ws, NodeWsServer, run_ws_client,  # noqa: F401
                             start_sy_demo, header_values)


@pytest.fixture
def node():
    return node_with_ws()


def ws_routes(upstream, websocket=None):
    r = {"match": {"path_prefix": "/ws", "upgrade": ["websocket"]}, "upstream": upstream}
    if websocket is not None:
        r["websocket"] = websocket
    return [r, {"match": {"path_prefix": "/"}, "upstream": upstream}]


def ok(rep):
    assert rep.get("ok") and rep["_rc"] == 0, "ws client failed: %r" % rep
    return rep


def assert_echo(r, what):
    assert r["equal"], "%s did not round-trip: %r" % (what, r)
    assert r["sentLen"] == r["gotLen"]


@pytest.fixture
def through_proxy(proxy, node, children):
    """Starts a ws server (with args) behind a proxy; returns (server, ws url)."""
    def make(*server_args, websocket=None, path="/ws/chat"):
        srv = NodeWsServer(children, node, *server_args)
        px = proxy(upstreams={"ws": [srv.address]}, routes=ws_routes("ws", websocket))
        return srv, "ws://127.0.0.1:%d%s" % (px.port, path), px
    return make


def test_text_binary_ping_pong(through_proxy, children, node):
    srv, url, px = through_proxy(websocket={"check_accept": True})
    rep = ok(run_ws_client(children, node, url, "echo", serverCmds=True))
    assert rep["upgradeStatus"] == 101
    assert_echo(rep["text"], "text message")
    assert rep["text"]["isBinary"] is False
    assert_echo(rep["utf8"], "UTF-8 text message")
    assert_echo(rep["binary"], "1 MiB binary message")
    assert rep["binary"]["isBinary"] is True and rep["binary"]["gotLen"] == 1 << 20
    assert_echo(rep["after"], "text after the large message")
    # client ping -> server's automatic pong, payload intact
    assert rep["pongs"] == ["client-ping-1"]
    # server ping -> client's automatic pong, seen by the server
    assert rep["serverPing"]["pingsReceived"] == ["server-ping-1"]
    assert rep["serverPing"]["reply"] == "pong:server-ping-1"
    assert rep["close"] == {"code": 1000, "reason": "done"}
    conn = srv.wait_events("connection")[0]
    assert conn["url"] == "/ws/chat"
    assert header_values(conn["rawHeaders"], "upgrade") == ["websocket"]
    assert header_values(conn["rawHeaders"], "sec-websocket-version") == ["13"]
    closed = srv.wait_events("close")[0]
    assert (closed["code"], closed["reason"]) == (1000, "done")
    assert not px.crashed()


def test_close_code_and_reason_from_client(through_proxy, children, node):
    srv, url, _ = through_proxy()
    rep = ok(run_ws_client(children, node, url, "close", code=4001, reason="client says bye"))
    assert rep["text"]["equal"]
    # the server saw the client's close frame and echoed code and reason back
    closed = srv.wait_events("close")[0]
    assert (closed["code"], closed["reason"]) == (4001, "client says bye")
    assert rep["close"] == {"code": 4001, "reason": "client says bye"}


def test_close_code_and_reason_from_server(through_proxy, children, node):
    srv, url, _ = through_proxy()
    rep = ok(run_ws_client(children, node, url, "server-close", serverCmds=True,
                           code=4002, reason="server says bye \u2603"))
    assert rep["close"] == {"code": 4002, "reason": "server says bye \u2603"}
    closed = srv.wait_events("close")[0]
    assert closed["code"] == 4002


def test_permessage_deflate_end_to_end(through_proxy, children, node):
    srv, url, _ = through_proxy("--deflate", websocket={"check_accept": True})
    rep = ok(run_ws_client(children, node, url, "deflate", serverCmds=True))
    # negotiated: the client's view, the 101 the proxy relayed, the server's view
    assert rep["extensions"].startswith("permessage-deflate"), rep["extensions"]
    ext = header_values(rep["upgradeHeaders"], "sec-websocket-extensions")
    assert len(ext) == 1 and ext[0].startswith("permessage-deflate"), rep["upgradeHeaders"]
    assert rep["server"]["extensions"].startswith("permessage-deflate")
    offered = header_values(rep["server"]["rawHeaders"], "sec-websocket-extensions")
    assert len(offered) == 1 and "permessage-deflate" in offered[0], rep["server"]["rawHeaders"]
    # compressed messages round-trip
    assert_echo(rep["text"], "compressed text")
    assert_echo(rep["binary"], "compressed binary")
    assert rep["binary"]["isBinary"] is True
    assert_echo(rep["small"], "small compressed text")
    # ... and really were compressed on the wire, both ways
    wire = rep["wire"]
    assert wire["clientWrote"] < wire["payloadBytesEachWay"] // 10, wire
    assert wire["clientRead"] < wire["payloadBytesEachWay"] // 10, wire
    assert rep["server"]["bytesRead"] < wire["payloadBytesEachWay"] // 10, rep["server"]
    assert rep["close"]["code"] == 1000


def test_permessage_deflate_declined_by_server(through_proxy, children, node):
    """The offer reaches the backend; a backend that declines it gets no
    extension on either side, and messages still round-trip uncompressed."""
    srv, url, _ = through_proxy()
    rep = ok(run_ws_client(children, node, url, "deflate", serverCmds=True))
    assert rep["extensions"] == ""
    assert header_values(rep["upgradeHeaders"], "sec-websocket-extensions") == []
    assert "permessage-deflate" in header_values(rep["server"]["rawHeaders"],
                                                 "sec-websocket-extensions")[0]
    assert_echo(rep["text"], "text")
    assert_echo(rep["binary"], "binary")
    assert rep["wire"]["clientWrote"] > rep["wire"]["payloadBytesEachWay"]


def test_subprotocols_narrowed_by_route(through_proxy, children, node):
    srv, url, _ = through_proxy("--protocols", "superchat,chat",
                                websocket={"check_accept": True, "subprotocols": ["chat"]})
    rep = ok(run_ws_client(children, node, url, "protocols", serverCmds=True,
                           protocols=["superchat", "chat"]))
    assert rep["protocol"] == "chat"
    seen = header_values(rep["server"]["rawHeaders"], "sec-websocket-protocol")
    assert [t.strip() for v in seen for t in v.split(",")] == ["chat"], seen
    assert rep["server"]["protocol"] == "chat"


# ------------------------------------------------------------------ sy-demo

@pytest.fixture
def demo_url(proxy, children):
    _, addr = start_sy_demo(children)
    px = proxy(upstreams={"demo": [addr]}, routes=ws_routes("demo", {"check_accept": True}))
    return "ws://127.0.0.1:%d/ws/echo" % px.port


def test_ws_client_against_sy_demo(demo_url, children, node):
    rep = ok(run_ws_client(children, node, demo_url, "echo"))
    assert rep["upgradeStatus"] == 101
    assert_echo(rep["text"], "text message")
    assert_echo(rep["utf8"], "UTF-8 text message")
    assert_echo(rep["binary"], "1 MiB binary message")
    assert rep["binary"]["isBinary"] is True
    assert rep["pongs"] == ["client-ping-1"]
    assert_echo(rep["after"], "text after the large message")
    assert rep["close"]["code"] == 1000


def test_ws_client_close_code_against_sy_demo(demo_url, children, node):
    rep = ok(run_ws_client(children, node, demo_url, "close", code=4001, reason="bye"))
    # sy-demo echoes the code (its close frame carries no reason)
    assert rep["close"]["code"] == 4001


def test_ws_client_deflate_offer_against_sy_demo(demo_url, children, node):
    """sy-demo implements no extension: the offer is declined, nothing breaks."""
    rep = ok(run_ws_client(children, node, demo_url, "deflate"))
    assert rep["extensions"] == ""
    assert_echo(rep["text"], "text")
    assert_echo(rep["binary"], "binary")


# ------------------------------------------------------------------ more ws server behaviour

def test_frame_sent_with_the_101_is_delivered(through_proxy, children, node):
    """The server sends a message right after its 101, so the frame may arrive
    in the same read as the response head: it must be relayed, after the head."""
    srv, url, _ = through_proxy("--greet")
    for _ in range(3):
        rep = ok(run_ws_client(children, node, url, "echo", greet=True))
        assert rep["greeting"] == "welcome", rep
        assert_echo(rep["text"], "text after the greeting")


def test_handshake_refused_by_ws_server_then_keep_alive(through_proxy, children, node):
    """ws refuses the handshake (verifyClient -> 401): the client gets the 401
    with its headers and body, no tunnel; a raw client can then go on with plain
    HTTP on the same connection (ws's HTTP server answers 426)."""
    srv, url, px = through_proxy("--reject", "401")
    rep = run_ws_client(children, node, url, "handshake")
    assert rep["_rc"] == 0 and rep.get("ok"), rep
    ur = rep["unexpectedResponse"]
    assert ur["status"] == 401, ur
    assert header_values(ur["rawHeaders"], "x-test") == ["rejected"]
    assert ur["body"] == "refused by test server"
    assert srv.wait_events("rejected")[0]["url"] == "/ws/chat"
    with px.connect() as c:
        c.send(b"GET /ws/chat HTTP/1.1\r\nHost: t.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        r = c.response()
        assert r.status == 401 and r.body == b"refused by test server", r
        r2 = c.request(b"GET /plain HTTP/1.1\r\nHost: t.test\r\n\r\n")
        assert r2.status == 426 and r2.body == b"Upgrade Required", r2
    assert not any(e.get("type") == "tunnel" for e in px.log_entries())


def test_many_concurrent_connections(through_proxy, children, node):
    srv, url, px = through_proxy()
    rep = ok(run_ws_client(children, node, url, "many", timeout=45,
                           connections=40, messages=24, maxSize=128 * 1024))
    assert rep["mismatched"] == 0, rep
    assert sorted(rep["closes"]) == sorted("1000:conn %d" % i for i in range(40))
    assert len(srv.wait_events("close", n=40)) == 40
    px.wait_log(lambda e: e.get("type") == "tunnel", n=40)
