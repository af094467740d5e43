"""Paths are normalised before routing (RFC 3986 §6, like nginx and Envoy):
a route guarding /admin cannot be walked around with dot segments, doubled
slashes or escaped unreserved characters, and the upstream receives the path
the route matched, with the query as sent. A path above the root, a bad
escape, or (escaped_slashes: reject) an escaped slash gets 400 and nothing
goes upstream. `paths: {normalize: false}` restores raw matching."""
import pytest

from support.http import response_bytes


@pytest.fixture
def guarded(proxy, backend):
    """/admin -> backend "a", everything else -> backend "b"."""
    def make(**cfg):
        bes = {n: backend(response=response_bytes(200, body=n.encode()), name=n) for n in "ab"}
        px = proxy(upstreams={n: [be.address] for n, be in bes.items()},
                   routes=[{"match": {"path_prefix": "/admin"}, "upstream": "a"},
                           {"match": {"path_prefix": "/"}, "upstream": "b"}], **cfg)
        return px, bes["a"], bes["b"]
    return make


def req(target, host="example.test"):
    return ("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)).encode()


def reaches(px, be, target):
    """Sends target, checks the answer came from `be`; returns the target
    `be` received."""
    n = len(be.requests)
    r = px.request(req(target))
    assert r.status == 200, (target, r.status)
    assert r.body.decode() == be.name, (target, r.body)
    return be.wait_requests(n + 1)[n].target


def refused(px, bes, target):
    """400 from the proxy itself, and no backend saw the request: a request
    that is forwarded afterwards is the first either backend gets."""
    seen = [[q.target for q in be.requests] for be in bes]
    r = px.request(req(target))
    assert r.status == 400, (target, r.status, r.head)
    probe = "/probe-%d" % len(seen[1])
    assert reaches(px, bes[1], probe) == probe
    assert [q.target for q in bes[0].requests] == seen[0]
    assert [q.target for q in bes[1].requests] == seen[1] + [probe]


@pytest.mark.parametrize("target,want", [
    ("/x/../admin/secret", "/admin/secret"),
    ("//admin/secret", "/admin/secret"),
    ("/%61dmin/secret", "/admin/secret"),
    ("/x/%2E%2e/admin/secret", "/admin/secret"),
    ("/./admin//./secret/", "/admin/secret/"),
    ("/%61dmin/x/../secret?next=/../b&%61=%2e%2e", "/admin/secret?next=/../b&%61=%2e%2e"),
    ("/admin%2fsecret", "/admin%2Fsecret"),   # an escaped slash stays escaped
])
def test_bypasses_reach_the_guarded_route_normalised(guarded, target, want):
    px, a, b = guarded()
    assert reaches(px, a, target) == want
    assert b.requests == []


def test_absolute_form_routed_and_forwarded_normalised(guarded):
    px, a, b = guarded()
    assert reaches(px, a, "http://example.test/x/../%61dmin/secret?q") == \
        "http://example.test/admin/secret?q"
    assert b.requests == []


def test_other_paths_untouched(guarded):
    px, a, b = guarded()
    assert reaches(px, b, "/public/page?x=%2F") == "/public/page?x=%2F"
    assert reaches(px, b, "/administrator/../x") == "/x"
    assert a.requests == []


@pytest.mark.parametrize("target", [
    "/..", "/../admin/secret", "/x/../../admin", "/%2e%2e/etc/passwd", "//../admin",
    "/admin/%zz", "/admin/%", "/admin/%2",
])
def test_above_root_and_bad_escapes_400(guarded, target):
    px, a, b = guarded()
    refused(px, (a, b), target)


def test_escaped_slashes_rejected_on_request(guarded):
    px, a, b = guarded(paths={"escaped_slashes": "reject"})
    refused(px, (a, b), "/admin%2Fsecret")
    refused(px, (a, b), "/x%5c..%5cadmin")
    assert reaches(px, a, "/%61dmin/secret") == "/admin/secret"


def test_merge_slashes_off_keeps_empty_segments(guarded):
    px, a, b = guarded(paths={"merge_slashes": False})
    # "//admin" is not under "/admin" when the empty segment is kept, and the
    # upstream gets exactly what was matched.
    assert reaches(px, b, "//admin/secret") == "//admin/secret"
    assert reaches(px, a, "/x/../%61dmin/secret") == "/admin/secret"
    assert reaches(px, a, "/admin//../secret") == "/admin/secret"


def test_normalize_off_is_raw_matching(guarded):
    """The documented unsafe opt-out: the raw bytes route and travel."""
    px, a, b = guarded(paths={"normalize": False})
    assert reaches(px, b, "/%61dmin/secret") == "/%61dmin/secret"
    assert reaches(px, b, "/x/../admin/secret") == "/x/../admin/secret"
    assert reaches(px, a, "/admin/secret") == "/admin/secret"
