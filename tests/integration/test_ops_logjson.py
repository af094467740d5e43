"""Access-log JSON: UTF-8 from the configuration comes out as UTF-8 (not
\\u00XX mojibake), and every line is valid JSON."""
import json

from support.http import response_bytes

ROUTE = "café-☕-路由"


def test_utf8_route_name_kept(proxy, backend):
    be = backend(response=response_bytes(200, body=b"ok"))
    px = proxy(upstreams={"web": [be.address]},
               routes=[{"name": ROUTE, "match": {"path_prefix": "/"}, "upstream": "web"}])
    assert px.request(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").status == 200
    e = px.wait_log(lambda e: e.get("type") == "request")[0]
    assert e["route"] == ROUTE, e
    raw = px.stdout()
    assert ROUTE.encode("utf-8") in raw.encode("utf-8"), raw  # the bytes, not escapes
    assert "\\u00" not in raw, raw
    for ln in raw.splitlines():
        json.loads(ln)
