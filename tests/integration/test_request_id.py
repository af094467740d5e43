"""Request ids: every request's access-log line has one (the client's
X-Request-Id when sane, else a generated one); with forwarding.request_id the
same id also goes upstream and back to the client, on the proxy's own answers
too. Off by default: requests and responses stay as sent."""
import re

from support.http import get, response_bytes

OK = response_bytes(200, body=b"ok")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_off_by_default_but_logged(proxy, backend):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]})
    r = px.request(get("/plain"))
    assert r.status == 200 and not r.has("x-request-id"), r.head
    assert b"x-request-id" not in be.requests[0].head.lower()
    e = px.wait_log(lambda e: e.get("path") == "/plain")[0]
    assert HEX32.match(e["request_id"]), e
    r = px.request(get("/theirs", extra=b"X-Request-Id: abc-123\r\n"))
    e = px.wait_log(lambda e: e.get("path") == "/theirs")[0]
    assert e["request_id"] == "abc-123", e
    assert be.requests[1].head.count(b"X-Request-Id: abc-123") == 1  # passed through untouched


def test_forwarded_and_returned_when_on(proxy, backend):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]},
               routes=[{"match": {"path_prefix": "/ok"}, "upstream": "web"}],
               forwarding={"request_id": True})
    r = px.request(get("/ok/new"))
    rid = r.value("x-request-id")
    assert HEX32.match(rid), r.head
    assert re.search(rb"\r\nX-Request-Id: " + rid.encode() + rb"\r\n", be.requests[0].head)
    e = px.wait_log(lambda e: e.get("path") == "/ok/new")[0]
    assert e["request_id"] == rid, e
    # a sane client id is kept; a bad one (space, too long) is replaced
    r = px.request(get("/ok/kept", extra=b"X-Request-Id: trace-7\r\n"))
    assert r.value("x-request-id") == "trace-7"
    assert be.requests[1].head.count(b"X-Request-Id") == 1
    r = px.request(get("/ok/bad", extra=b"X-Request-Id: a b\r\n"))
    assert HEX32.match(r.value("x-request-id")), r.head
    r = px.request(get("/ok/long", extra=b"X-Request-Id: " + b"x" * 200 + b"\r\n"))
    assert HEX32.match(r.value("x-request-id")), r.head
    # the proxy's own answer carries it too
    r = px.request(get("/nowhere", extra=b"X-Request-Id: mine\r\n"))
    assert r.status == 404 and r.value("x-request-id") == "mine", r.head
