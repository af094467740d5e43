"""Route matching: host (exact, *.suffix, port ignored, case-insensitive),
path_prefix, path, methods, headers, upgrade; first match wins; no match 404."""
import pytest

from support.http import response_bytes, get


@pytest.fixture
def routed(proxy, backend):
    """One backend per upstream, each answering with its own name."""
    def make(routes, names=("a", "b", "c"), **cfg):
        bes = {n: backend(response=response_bytes(200, body=n.encode()), name=n) for n in names}
        px = proxy(upstreams={n: [be.address] for n, be in bes.items()}, routes=routes, **cfg)

        def who(request):
            r = px.request(request)
            return r.body.decode() if r.status == 200 else r.status
        return who, bes, px
    return make


def route(upstream, **match):
    return {"match": match, "upstream": upstream}


def test_host_exact_and_wildcard(routed):
    who, _, _ = routed([route("a", host="api.example.com"),
                        route("b", host="*.example.com"),
                        route("c", path_prefix="/")])
    assert who(get(host="api.example.com")) == "a"
    assert who(get(host="API.Example.COM")) == "a"
    assert who(get(host="api.example.com:8080")) == "a"
    assert who(get(host="www.example.com")) == "b"
    assert who(get(host="a.b.example.com")) == "b"
    assert who(get(host="WWW.EXAMPLE.COM:99")) == "b"
    assert who(get(host="example.com")) == "c"        # the suffix needs a label before it
    assert who(get(host="badexample.com")) == "c"
    assert who(get(host="api.example.com.evil")) == "c"


def test_no_match_is_404(routed):
    who, bes, _ = routed([route("a", host="only.test")])
    assert who(get(host="other.test")) == 404
    assert who(get(host="only.test")) == "a"
    assert len(bes["a"].requests) == 1


def test_path_prefix_and_exact_path(routed):
    who, _, _ = routed([route("a", path="/exact"),
                        route("b", path_prefix="/api"),
                        route("c", path_prefix="/")])
    assert who(get("/exact")) == "a"
    assert who(get("/exact?q=1")) == "a"     # the query is not part of the path
    assert who(get("/exact/")) == "c"
    assert who(get("/exactly")) == "c"
    assert who(get("/api")) == "b"
    assert who(get("/api/v1/x")) == "b"
    assert who(get("/other")) == "c"


def test_methods(routed):
    who, _, _ = routed([route("a", methods=["POST", "PUT"], path_prefix="/"),
                        route("b", path_prefix="/")])
    assert who(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n") == "a"
    assert who(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n") == "a"
    assert who(get()) == "b"
    assert who(get(method="DELETE")) == "b"


def test_headers(routed):
    who, _, _ = routed([route("a", headers=[{"name": "X-Tenant", "value": "blue"}]),
                        route("b", headers=[{"name": "X-Present"}]),
                        route("c", path_prefix="/")])
    assert who(get(extra=b"X-Tenant: blue\r\n")) == "a"
    assert who(get(extra=b"x-tenant: blue\r\n")) == "a"      # field names are case-insensitive
    assert who(get(extra=b"X-Tenant: green\r\n")) == "c"
    assert who(get(extra=b"X-Present: anything\r\n")) == "b"
    assert who(get(extra=b"X-Present:\r\n")) == "b"
    assert who(get()) == "c"


def test_first_match_wins(routed):
    who, bes, _ = routed([route("a", path_prefix="/"),
                          route("b", path_prefix="/specific")])
    assert who(get("/specific")) == "a"
    assert not bes["b"].conns


def test_upgrade_route_does_not_match_plain_requests(routed):
    who, _, _ = routed([route("a", upgrade=["websocket"]),
                        route("b", path_prefix="/")])
    assert who(get("/ws")) == "b"
    # an Upgrade header without Connection: upgrade is not an upgrade request
    assert who(get("/ws", extra=b"Upgrade: websocket\r\n")) == "b"


def test_combined_match(routed):
    who, _, _ = routed([route("a", host="*.svc.test", path_prefix="/v2", methods=["GET"],
                              headers=[{"name": "X-Canary", "value": "1"}]),
                        route("b", path_prefix="/")])
    canary = b"X-Canary: 1\r\n"
    assert who(get("/v2/x", host="one.svc.test", extra=canary)) == "a"
    assert who(get("/v1/x", host="one.svc.test", extra=canary)) == "b"
    assert who(get("/v2/x", host="one.svc.other", extra=canary)) == "b"
    assert who(get("/v2/x", host="one.svc.test")) == "b"
    assert who(get("/v2/x", host="one.svc.test", extra=canary, method="DELETE")) == "b"
