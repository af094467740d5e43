"""Admin listener: /healthz, /readyz, /metrics values moving with the traffic
the test drives, /status.json agreeing with /metrics."""
import threading
import time

from support.http import response_bytes, get
from support.ops import AdminPort
from support.tunnel import (upgrader, upgrade_request, open_tunnel, Stream, pump,  # noqa: F401
                            assert_pumped, payload)


def test_admin_endpoints(proxy, backend):
    be = backend()
    adm = AdminPort()
    proxy(upstreams={"web": [be.address]}, admin=adm.config, workers=1)
    r = adm.get("/healthz")
    assert (r.status, r.text) == (200, "ok\n"), r.head
    r = adm.get("/readyz")
    assert (r.status, r.text) == (200, "ready\n"), r.head
    r = adm.get("/metrics")
    assert r.status == 200 and b"text/plain" in r.head, r.head
    r = adm.get("/status")
    assert r.status == 200 and b"text/html" in r.head and "<table id=\"tunnels\"" in r.text, r.head
    r = adm.get("/status.json")
    assert r.status == 200 and b"application/json" in r.head, r.head
    assert adm.get("/nope").status == 404
    assert adm.get("/metrics", method="HEAD").status == 200
    m = adm.metrics()
    assert m.one("switchyard_workers") == 1
    assert m.one("switchyard_config_generation") == 0
    assert m.one("switchyard_reloads_total", result="ok") == 0
    assert m.one("switchyard_reloads_total", result="failed") == 0
    assert m.one("switchyard_upstream_server_up", upstream="web", server=be.address) == 1
    assert m.one("switchyard_upstream_active_connections", upstream="web", server=be.address) == 0
    st = adm.status()
    for k in ("generation", "draining", "connections_open", "requests", "tunnels_open",
              "pipes_in_use", "tunnels", "upstreams"):
        assert k in st, (k, st)
    assert st["draining"] is False and st["generation"] == 0
    assert st["upstreams"] == [{"name": "web", "servers": [{"address": be.address, "up": True,
                                                            "active": 0}]}], st


def test_metrics_follow_traffic(proxy, backend, upgrader):
    api = backend(response=response_bytes(200, body=b"api"), name="api")
    err = backend(response=response_bytes(500, body=b"boom"), name="err")
    refuse = backend(response=response_bytes(400, body=b"no upgrade here"), name="refuse")
    up = upgrader()
    adm = AdminPort()
    px = proxy(upstreams={"api": [api.address], "err": [err.address], "refuse": [refuse.address],
                          "ws": [up.address]},
               routes=[{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "api"},
                       {"name": "err", "match": {"path_prefix": "/err"}, "upstream": "err"},
                       {"name": "ref", "match": {"path_prefix": "/ref"}, "upstream": "refuse"},
                       {"name": "noup", "match": {"path_prefix": "/noup"}, "upstream": "api",
                        "allow_upgrades": []},
                       {"name": "ws", "match": {"path_prefix": "/ws"}, "upstream": "ws"}],
               admin=adm.config, workers=1)
    # the fixture's readiness probe is a connection without a request: let it go
    m0 = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5,
                         "the start-up probe connection to close")
    acc0 = m0.get("switchyard_connections_accepted_total")
    assert m0.get("switchyard_requests_total") == 0, m0.text

    with px.connect() as c:
        for i in range(3):
            assert c.request(get("/api/%d" % i)).status == 200
        for i in range(2):
            assert c.request(get("/nowhere/%d" % i)).status == 404
        assert c.request(get("/err")).status == 500
        # counted once the proxy has finished writing the response: wait for it
        m = adm.wait_metric(lambda m: m.get("switchyard_requests_total") == 6, 5, "6 requests counted")
        assert m.get("switchyard_connections_open") == 1, m.text
    assert m.one("switchyard_requests_total", route="api", class_="2xx") == 3, m.text
    assert m.one("switchyard_requests_total", route="err", class_="5xx") == 1, m.text
    assert m.get("switchyard_requests_total", class_="4xx") == 2, m.text
    assert m.get("switchyard_requests_total") == 6, m.text
    # the harness's start-up probe may be accepted after m0 was read (slow
    # sanitizer builds): one or two connections since then, never more
    assert acc0 + 1 <= m.get("switchyard_connections_accepted_total") <= acc0 + 2, m.text

    # upgrade refused by the upstream (400 relayed), and rejected by the route
    r = px.request(upgrade_request("/ref"))
    assert r.status == 400, r.head
    r = px.request(upgrade_request("/noup"))
    assert r.status == 200, r.head
    m = adm.wait_metric(lambda m: m.get("switchyard_upgrades_total") == 2, 5, "2 upgrades counted")
    assert m.get("switchyard_upgrades_total", protocol="websocket", outcome="refused") == 1, m.text
    # the route allows no upgrade: its token is "other" (a client cannot add series)
    assert m.get("switchyard_upgrades_total", protocol="other", outcome="rejected") == 1, m.text
    assert m.get("switchyard_upgrades_total", outcome="switched") == 0, m.text
    assert m.one("switchyard_requests_total", route="ref", class_="4xx") == 1, m.text

    # three tunnels: open goes to 3, pipes go back to 0 once they are idle
    tunnels = []
    try:
        for i in range(3):
            tunnels.append(open_tunnel(px, up, upgrade_request("/ws/%d" % i)))
        m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 3, 5, "3 open tunnels")
        assert m.one("switchyard_tunnels_open", route="ws", protocol="websocket") == 3, m.text
        assert m.one("switchyard_tunnels_total", route="ws", protocol="websocket") == 3, m.text
        assert m.get("switchyard_upgrades_total", protocol="websocket", outcome="switched") == 3, m.text
        assert m.one("switchyard_upstream_active_connections", upstream="ws", server=up.address) == 3, \
            m.text
        assert m.get("switchyard_connections_open") == 3, m.text
        st = adm.status()
        assert st["tunnels_open"] == 3, st
        assert {"route": "ws", "protocol": "websocket", "open": 3, "total": 3} in st["tunnels"], st
        assert st["upstreams"][-1]["servers"][0]["active"] == 3, st

        sent_up = sent_down = 0
        streams = []
        for i, (_, cl, be, _) in enumerate(tunnels):
            a, b = payload(100000 + i, "mu%d" % i), payload(200000 + i, "md%d" % i)
            sent_up += len(a)
            sent_down += len(b)
            streams += [Stream(cl, be, a), Stream(be, cl, b)]
        pump(streams, timeout=20)
        assert_pumped(streams)
        m = adm.wait_metric(lambda m: m.get("switchyard_pipes", state="in_use") == 0, 5,
                            "pipes in use back to 0 with the tunnels idle")
        assert m.get("switchyard_tunnels_open") == 3, m.text
        assert m.get("switchyard_pipes_created_total") >= 1, m.text
        assert adm.status()["pipes_in_use"] == 0
        # bytes are counted while the tunnels are open, at most a second behind
        adm.wait_metric(lambda m: m.get("switchyard_tunnel_bytes_total") > 0, 5,
                        "tunnel bytes counted while the tunnels are open")

        for c, cl, be, _ in tunnels:
            cl.shutdown_write()
            be.shutdown_write()
        for c, cl, be, _ in tunnels:
            assert cl.wait_end(5)[0] == "eof"
            assert be.wait_end(5)[0] == "eof"
    finally:
        for c, cl, be, _ in tunnels:
            c.close()
            be.close()
    m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 0 and
                        m.get("switchyard_connections_open") == 0, 5,
                        "tunnels and connections back to 0")
    assert m.one("switchyard_tunnels_open", route="ws", protocol="websocket") == 0, m.text
    assert m.one("switchyard_tunnels_total", route="ws", protocol="websocket") == 3, m.text
    assert m.one("switchyard_tunnel_bytes_total", direction="to_upstream") == sent_up, m.text
    assert m.one("switchyard_tunnel_bytes_total", direction="to_client") == sent_down, m.text
    # bulk is spliced; reads that look like small messages (< 4 KiB) are copied
    spliced = m.one("switchyard_tunnel_spliced_bytes_total")
    assert spliced + m.one("switchyard_tunnel_copied_bytes_total") == sent_up + sent_down, m.text
    assert spliced >= (sent_up + sent_down) // 2, m.text
    assert m.get("switchyard_pipes", state="in_use") == 0, m.text
    assert m.one("switchyard_upstream_active_connections", upstream="ws", server=up.address) == 0, m.text
    # 6 + refused + rejected + 3 switched
    assert m.get("switchyard_requests_total") == 11, m.text
    assert m.one("switchyard_requests_total", route="ws", class_="1xx") == 3, m.text
    st = adm.status()
    assert st["requests"] == 11 and st["tunnels_open"] == 0 and st["connections_open"] == 0, st
    assert {"route": "ws", "protocol": "websocket", "open": 0, "total": 3} in st["tunnels"], st


def test_unnamed_route_label_and_bad_101_rejected(proxy, backend, upgrader):
    """Routes without a name are "#<index>"; a 101 that fails the accept check
    counts as rejected, not switched."""
    plain = backend(response=response_bytes(200, body=b"x"))
    up = upgrader()  # answers 101 without Sec-WebSocket-Accept
    adm = AdminPort()
    px = proxy(upstreams={"plain": [plain.address], "ws": [up.address]},
               routes=[{"match": {"path_prefix": "/ws"}, "upstream": "ws",
                        "websocket": {"check_accept": True}},
                       {"match": {"path_prefix": "/"}, "upstream": "plain"}],
               admin=adm.config, workers=1)
    assert px.request(get("/a")).status == 200
    adm.wait_metric(lambda m: m.get("switchyard_requests_total") == 1, 5, "the request counted")
    with px.connect() as c:
        c.send(upgrade_request("/ws"))
        r = c.response(allow_eof=True)
        assert r is None or r.status == 502, r.head
    m = adm.wait_metric(lambda m: m.get("switchyard_upgrades_total") == 1, 5, "the upgrade to be counted")
    assert m.one("switchyard_requests_total", route="#1", class_="2xx") == 1, m.text
    assert m.get("switchyard_upgrades_total", protocol="websocket", outcome="rejected") == 1, m.text
    assert m.get("switchyard_tunnels_total") == 0, m.text


def test_names_needing_escapes_keep_metrics_and_status_json_valid(proxy, backend):
    """An upstream or route name with a double quote (legal in YAML) must be
    escaped in Prometheus labels and in /status.json."""
    be = backend(response=response_bytes(200, body=b"q"))
    adm = AdminPort()
    px = proxy(upstreams={'we"b': [be.address]},
               routes=[{"name": 'r"1', "match": {"path_prefix": "/"}, "upstream": 'we"b'}],
               admin=adm.config, workers=1)
    assert px.request(get("/q")).status == 200
    m = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5, "the request done")
    assert m.one("switchyard_requests_total", route='r"1', class_="2xx") == 1, m.text
    assert m.one("switchyard_upstream_server_up", upstream='we"b', server=be.address) == 1, m.text
    st = adm.status()
    assert st["upstreams"][0]["name"] == 'we"b', st


def test_long_route_name_is_counted(proxy, backend):
    """Route names are free text: a long one must not make its series vanish."""
    be = backend(response=response_bytes(200, body=b"l"))
    adm = AdminPort()
    name = "route-" + "x" * 150
    px = proxy(upstreams={"web": [be.address]},
               routes=[{"name": name, "match": {"path_prefix": "/"}, "upstream": "web"}],
               admin=adm.config, workers=1)
    for i in range(3):
        assert px.request(get("/l/%d" % i)).status == 200
    m = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5, "the requests done")
    assert m.get("switchyard_requests_total") == 3, \
        "3 requests served on a route with a %d-character name, /metrics counts %d:\n%s" % (
            len(name), m.get("switchyard_requests_total"), m.text)
    assert m.one("switchyard_requests_total", route=name, class_="2xx") == 3, m.text


def test_idle_memory_released_after_traffic_not_between_connections(proxy, backend):
    """A worker frees its cached buffers and trims its heap once its connections
    are gone and no new one came for a while. Under steady short-lived traffic
    the connection list empties between connections many times a second;
    releasing at those moments only made the next connections fault the same
    pages in again, so none may happen while traffic flows."""
    be = backend(response=response_bytes(200, body=b"x" * 2000))
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, admin=adm.config, workers=1)
    name = "switchyard_idle_memory_releases_total"
    # the harness's start-up probe leaves the worker quiet: that release comes first
    m = adm.wait_metric(lambda m: m.get(name) >= 1, 10, "the release after the start-up probe")
    r0 = m.get(name)

    stop = threading.Event()
    done, errors = [0], []

    def traffic():
        try:
            while not stop.is_set():
                r = px.request(get("/"))
                assert r.status == 200 and len(r.body) == 2000, r.head
                done[0] += 1
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=traffic)]  # one: the list empties after each
    for t in threads:
        t.start()
    try:
        # each quiet window is 200 ms: traffic spanning several of them, each
        # connection closed before the next (the list empties every time)
        start = time.monotonic()
        deadline = start + 30
        while not stop.is_set() and time.monotonic() < deadline and \
                (done[0] < 100 or time.monotonic() - start < 1.5):
            stop.wait(0.05)
        assert not errors, errors
        assert done[0] >= 100 and time.monotonic() - start >= 1.5, (done[0], errors)
        during = adm.metrics().get(name)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not errors, errors
    assert during == r0, "released %d times while connections kept coming" % (during - r0)
    adm.wait_metric(lambda m: m.get(name) > during, 10, "a release once the traffic stopped")
