"""websocket.check_accept checks the request too (RFC 6455 §4.2.1, §4.4): a
missing, duplicated or malformed Sec-WebSocket-Key, or a Sec-WebSocket-Version
other than 13, is answered 400 by the proxy before anything goes upstream
(the version case with `Sec-WebSocket-Version: 13`). Without check_accept the
request is forwarded as it is."""
import pytest

from support.tunnel import (upgrader, upgrade_request, switching, open_tunnel,  # noqa: F401 (fixture)
                            WS_KEY, ws_accept)

GOOD_KEY2 = "AAECAwQFBgcICQoLDA0ODw=="  # base64 of bytes 0..15


def ws_route(check):
    return [{"match": {"path_prefix": "/"}, "upstream": "ws",
             "websocket": {"check_accept": check}}]


def answer(req):
    """A correct 101 for whatever key came (so only the proxy can refuse)."""
    key = req.value("sec-websocket-key") or ""
    return switching(headers=["Sec-WebSocket-Accept: " + ws_accept(key)])


def no_ws(extra):
    return upgrade_request("/ws", ws=False, extra=extra)


CASES = {
    "missing-key": no_ws(["Sec-WebSocket-Version: 13"]),
    "duplicate-key": no_ws(["Sec-WebSocket-Key: " + WS_KEY, "Sec-WebSocket-Key: " + GOOD_KEY2,
                            "Sec-WebSocket-Version: 13"]),
    "same-key-twice": no_ws(["Sec-WebSocket-Key: " + WS_KEY, "Sec-WebSocket-Key: " + WS_KEY,
                             "Sec-WebSocket-Version: 13"]),
    "key-list": no_ws(["Sec-WebSocket-Key: %s, %s" % (WS_KEY, GOOD_KEY2),
                       "Sec-WebSocket-Version: 13"]),
    "short-key": upgrade_request("/ws", key=WS_KEY[:-1]),
    "unpadded-key": upgrade_request("/ws", key=WS_KEY.rstrip("=")),
    "17-byte-key": upgrade_request("/ws", key="AAECAwQFBgcICQoLDA0ODxA="),
    "not-base64": upgrade_request("/ws", key="dGhlIHNhbXBsZSBub25j*Q=="),
    "30KB-key": upgrade_request("/ws", key="QUJD" * 7500),
}


def refused_then_probe(px, up, request, want_version_field=False):
    """The proxy answers 400 itself; afterwards a good upgrade is the first
    and only request the backend ever sees."""
    with px.connect() as c:
        c.send(request)
        r = c.response()
        assert r.status == 400, r.head
        if want_version_field:
            assert r.values("sec-websocket-version") == ["13"], r.head
        else:
            assert not r.has("sec-websocket-version"), r.head
    c2, _, be, _ = open_tunnel(px, up, upgrade_request("/ws", key=GOOD_KEY2))
    with c2:
        assert be.request.value("sec-websocket-key") == GOOD_KEY2
        assert len(up.backend.conns) == 1
        assert [q.value("sec-websocket-key") for q in up.backend.requests] == [GOOD_KEY2]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_key_400_before_upstream(proxy, upgrader, case):
    up = upgrader(answer=answer)
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_route(True))
    refused_then_probe(px, up, CASES[case])


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", None, "x"])
def test_unsupported_version_400_names_13(proxy, upgrader, version):
    extra = ["Sec-WebSocket-Key: " + WS_KEY]
    if version is not None:
        extra.append("Sec-WebSocket-Version: " + version)
    up = upgrader(answer=answer)
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_route(True))
    refused_then_probe(px, up, no_ws(extra), want_version_field=True)


def test_two_version_fields_400(proxy, upgrader):
    up = upgrader(answer=answer)
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_route(True))
    refused_then_probe(px, up, no_ws(["Sec-WebSocket-Key: " + WS_KEY, "Sec-WebSocket-Version: 13",
                                      "Sec-WebSocket-Version: 13"]), want_version_field=True)


@pytest.mark.parametrize("key", [WS_KEY, GOOD_KEY2, "AAAAAAAAAAAAAAAAAAAAAA=="])
def test_good_keys_tunnel(proxy, upgrader, key):
    up = upgrader(answer=answer)
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_route(True))
    c, cl, be, r = open_tunnel(px, up, upgrade_request("/ws", key=key))
    with c:
        assert r.values("sec-websocket-accept") == [ws_accept(key)]
        cl.send(b"ping")
        be.expect(b"ping")


def test_unchecked_route_forwards_any_key(proxy, upgrader):
    """Without check_accept the proxy does not judge the handshake."""
    up = upgrader(answer=answer)
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_route(False))
    c, _, be, r = open_tunnel(px, up, upgrade_request("/ws", key="not a key"))
    with c:
        assert be.request.value("sec-websocket-key") == "not a key"
