"""JSON access log: one object per request on stdout (or a file, or off)."""
import json

from support.http import response_bytes, get

KEYS = {"time", "client_ip", "client_port", "method", "path", "route", "upstream", "status",
        "bytes_in", "bytes_out", "duration_ms"}


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_common(e, method, path, status):
    missing = KEYS - set(e)
    assert not missing, "access log entry lacks %r: %r" % (missing, e)
    assert isinstance(e["time"], str) and len(e["time"]) >= 10, e
    assert e["client_ip"] == "127.0.0.1" and isinstance(e["client_port"], int), e
    assert e["method"] == method, e
    assert e["path"] == path, e
    assert e["status"] == status and isinstance(e["status"], int), e
    assert isinstance(e["bytes_in"], int) and isinstance(e["bytes_out"], int), e
    assert is_number(e["duration_ms"]) and 0 <= e["duration_ms"] < 10000, e


def test_simple_get_logged(proxy, backend):
    be = backend(response=response_bytes(200, body=b"hello world"))
    px = proxy(upstreams={"web": [be.address]})
    req = get("/logged")
    with px.connect() as c:
        r = c.request(req)
    assert r.status == 200
    e = px.wait_log(lambda e: e.get("path") == "/logged")[0]
    check_common(e, "GET", "/logged", 200)
    assert e["route"] not in (None, ""), e
    assert isinstance(e["upstream"], str) and ("web" in e["upstream"] or be.address in e["upstream"]), e
    # counted either as body bytes or as all bytes on the wire
    assert e["bytes_in"] in (0, len(req)), e
    assert e["bytes_out"] in (len(r.body), len(r.raw)), e


def test_body_bytes_counted(proxy, backend):
    be = backend(response=response_bytes(201, body=b"x" * 1000))
    px = proxy(upstreams={"web": [be.address]})
    body = b"y" * 5000
    req = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body
    r = px.request(req)
    assert r.status == 201
    e = px.wait_log(lambda e: e.get("path") == "/up")[0]
    check_common(e, "POST", "/up", 201)
    assert e["bytes_in"] in (len(body), len(req)), e
    assert e["bytes_out"] in (1000, len(r.raw)), e


def test_404_logged_without_upstream(proxy, backend):
    be = backend(response=response_bytes(200, body=b"ok"))
    px = proxy(upstreams={"web": [be.address]},
               routes=[{"match": {"host": "only.test"}, "upstream": "web"}])
    r = px.request(get("/missing", host="elsewhere.test"))
    assert r.status == 404
    e = px.wait_log(lambda e: e.get("path") == "/missing")[0]
    check_common(e, "GET", "/missing", 404)
    assert e["upstream"] in (None, ""), e
    assert e["route"] in (None, ""), e


def test_one_line_per_request_on_keepalive(proxy, backend):
    be = backend(response=response_bytes(200, body=b"ok"))
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        for i in range(3):
            assert c.request(get("/ka/%d" % i)).status == 200
    es = px.wait_log(lambda e: str(e.get("path", "")).startswith("/ka/"), n=3)
    assert [e["path"] for e in es] == ["/ka/0", "/ka/1", "/ka/2"]
    px.stop()
    lines = [ln for ln in px.stdout().splitlines() if ln.strip()]
    for ln in lines:
        assert isinstance(json.loads(ln), dict), ln
    assert len([ln for ln in lines if "/ka/" in ln]) == 3


def test_query_not_in_path(proxy, backend):
    be = backend(response=response_bytes(200, body=b"ok"))
    px = proxy(upstreams={"web": [be.address]})
    assert px.request(get("/q?secret=1")).status == 200
    e = px.wait_log(lambda e: str(e.get("path", "")).startswith("/q"))[0]
    assert e["path"] == "/q", e


def test_access_log_off(proxy, backend):
    be = backend(response=response_bytes(200, body=b"ok"))
    px = proxy(upstreams={"web": [be.address]}, access_log="off")
    assert px.request(get("/quiet")).status == 200
    be.wait_requests(1)
    px.stop()  # everything the proxy would ever write is on stdout now
    assert px.stdout() == "", px.stdout()


def test_access_log_to_file(proxy, backend, tmp_path):
    be = backend(response=response_bytes(200, body=b"ok"))
    path = tmp_path / "access.log"
    px = proxy(upstreams={"web": [be.address]}, access_log=str(path))
    assert px.request(get("/tofile")).status == 200
    px.stop()
    assert px.stdout() == "", "access log went to stdout with access_log: PATH"
    entries = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    hits = [e for e in entries if e.get("path") == "/tofile"]
    assert len(hits) == 1
    check_common(hits[0], "GET", "/tofile", 200)
