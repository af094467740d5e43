"""Reload on SIGHUP: the same file re-read; a bad file changes nothing; a good
one applies to new requests while open tunnels carry on untouched; listeners
added and removed."""
import copy
import re
import socket
import threading

from support.backend import free_port
from support.http import response_bytes, get
from support.ops import AdminPort, reload, wait_until, connect_refused
from support.tunnel import (upgrader, upgrade_request, End, Stream, pump,  # noqa: F401
                            assert_pumped, payload, open_tunnel)


def named(name):
    return response_bytes(200, body=name.encode())


def ws_routes(extra=()):
    return [{"name": "ws", "match": {"path_prefix": "/ws"}, "upstream": "ws"}] + list(extra)


def test_reload_with_100_streaming_tunnels(proxy, backend, upgrader):
    n = 100
    up = upgrader()
    newbe = backend(response=named("new"), name="new")
    adm = AdminPort()
    px = proxy(upstreams={"ws": [up.address]}, routes=ws_routes(), admin=adm.config)
    assert px.request(get("/new/before")).status == 404
    clients, ends = [], {}
    try:
        for i in range(n):
            c = px.connect(timeout=15)
            clients.append(c)
            c.send(upgrade_request("/ws/%d" % i))
        for i, c in enumerate(clients):
            r = c.response(timeout=15)
            assert r.status == 101, (i, r.head)
        for _ in range(n):
            be = up.take(15)
            ends[int(be.request.target.rsplit("/", 1)[1])] = be
        assert sorted(ends) == list(range(n))
        adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == n, 10, "%d open tunnels" % n)

        # Big enough that the pump is still running well after the reload.
        size = 1024 * 1024
        streams = []
        for i, c in enumerate(clients):
            cl = End(c.sock, c.reader, "client%d" % i)
            streams.append(Stream(cl, ends[i], payload(size + i, "ru%d" % i), "c%d->u" % i))
            streams.append(Stream(ends[i], cl, payload(size + 3 * i, "rd%d" % i), "u%d->c" % i))
        total = sum(len(s.data) for s in streams)
        result = {}

        def run():
            try:
                result["streams"] = pump(streams, timeout=50)
            except BaseException as e:  # surfaced below
                result["error"] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        wait_until(lambda: sum(s.received for s in streams) > total // 10 or not t.is_alive(), 20,
                   "10% of the tunnel data to move")
        at_reload = sum(s.received for s in streams)
        cfg = copy.deepcopy(px.config)
        cfg["upstreams"]["new"] = {"servers": [{"address": newbe.address}]}
        cfg["routes"] = ws_routes([{"name": "new", "match": {"path_prefix": "/new"}, "upstream": "new"}])
        line = reload(px, cfg)
        assert re.search(r"reloaded .*%s \(generation 1\)" % re.escape(px.config_path.name), line), line
        after_reload = sum(s.received for s in streams)
        # the new route is effective for the next request, while the tunnels stream on
        r = px.request(get("/new/after"))
        assert r.status == 200 and r.body == b"new", r.head
        t.join(60)
        assert not t.is_alive(), "pump still running"
        assert "error" not in result, result.get("error")
        assert after_reload < total, "the data had all moved before the reload was applied; " \
            "the test proves nothing (at SIGHUP %d, after %d of %d)" % (at_reload, after_reload, total)
        assert_pumped(streams)  # every byte, both ways, checksums equal
        # nothing was dropped: all tunnels still open, and still carry data
        m = adm.metrics()
        assert m.get("switchyard_tunnels_open") == n, m.text
        assert m.one("switchyard_config_generation") == 1, m.text
        assert m.one("switchyard_reloads_total", result="ok") == 1, m.text
        assert not [e for e in px.log_entries() if e.get("type") == "tunnel"], \
            "tunnels ended: %r" % [e for e in px.log_entries() if e.get("type") == "tunnel"][:3]
        again = []
        for i, c in enumerate(clients):
            cl = End(c.sock, c.reader, "client%d" % i)
            again += [Stream(cl, ends[i], b"after-%d" % i), Stream(ends[i], cl, b"back-%d" % i)]
        pump(again, timeout=20)
        assert_pumped(again)
        # and new tunnels still open on the kept route
        c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws/new"))
        try:
            cl.send(b"x")
            be.expect(b"x")
        finally:
            c.close()
            be.close()
    finally:
        for c in clients:
            c.close()
        for be in ends.values():
            be.close()
    assert not px.crashed()


def test_invalid_reload_keeps_serving(proxy, backend, upgrader):
    be = backend(response=named("old"))
    up = upgrader()
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address], "ws": [up.address]},
               routes=ws_routes([{"name": "web", "match": {"path_prefix": "/web"}, "upstream": "web"}]),
               admin=adm.config)
    good_text = px.config_path.read_text()
    c, cl, tbe, _ = open_tunnel(px, up, upgrade_request("/ws/kept"))
    try:
        with px.connect() as ka:
            assert ka.request(get("/web/1")).body == b"old"
            # 1: a syntax-level error (unknown key) on a known line
            bad = good_text + "bogus_key: 1\n"
            bad_line = bad.count("\n")
            line = reload(px, text=bad)
            assert "reload refused, running configuration kept: %s:%d:" % (px.config_path, bad_line) in line, \
                (line, bad_line)
            # 2: a route naming an upstream that does not exist
            bad2 = good_text.replace('upstream: "web"', 'upstream: "nosuch"')
            assert bad2 != good_text
            line2 = reload(px, text=bad2)
            assert re.search(r"reload refused, running configuration kept: %s:\d+:\d+: " %
                             re.escape(str(px.config_path)), line2), line2
            # 3: not YAML at all
            line3 = reload(px, text="routes: [\n  {match: \n")
            assert "reload refused, running configuration kept: " in line3, line3
            # the old configuration serves, on the old connection and on new ones
            assert ka.request(get("/web/2")).body == b"old"
        assert px.request(get("/web/3")).body == b"old"
        cl.send(b"still here")
        tbe.expect(b"still here")
        tbe.send(b"and back")
        cl.expect(b"and back")
        m = adm.metrics()
        assert m.one("switchyard_reloads_total", result="failed") == 3, m.text
        assert m.one("switchyard_reloads_total", result="ok") == 0, m.text
        assert m.one("switchyard_config_generation") == 0, m.text
        assert m.one("switchyard_tunnels_open", route="ws", protocol="websocket") == 1, m.text
        # the file fixed again: the next SIGHUP applies it
        line4 = reload(px, text=good_text)
        assert "reloaded" in line4 and "(generation 1)" in line4, line4
        assert adm.metrics().one("switchyard_reloads_total", result="ok") == 1
    finally:
        c.close()
        tbe.close()
    assert not px.crashed()


def test_reload_changes_upstream_for_new_connections(proxy, backend):
    a, b = backend(response=named("a"), name="a"), backend(response=named("b"), name="b")
    px = proxy(upstreams={"web": [a.address]})
    assert px.request(get("/x")).body == b"a"
    cfg = copy.deepcopy(px.config)
    cfg["upstreams"]["web"] = {"servers": [{"address": b.address}]}
    assert "reloaded" in reload(px, cfg)
    for i in range(4):
        r = px.request(get("/y/%d" % i))
        assert r.body == b"b", (i, r.head, r.body)


def test_reload_adds_and_removes_listener(proxy, backend, upgrader):
    be = backend(response=named("web"))
    up = upgrader()
    px = proxy(upstreams={"web": [be.address], "ws": [up.address]},
               routes=ws_routes([{"name": "web", "match": {"path_prefix": "/"}, "upstream": "web"}]),
               workers=2)
    a_port = px.port
    b_port = free_port()
    # a tunnel and an idle keep-alive connection accepted on listener A
    c, cl, tbe, _ = open_tunnel(px, up, upgrade_request("/ws/a"))
    try:
        cfg = copy.deepcopy(px.config)
        cfg["listeners"] = [{"address": "127.0.0.1:%d" % a_port}, {"address": "127.0.0.1:%d" % b_port}]
        assert "reloaded" in reload(px, cfg)
        wait_until(lambda: not connect_refused(b_port), 5, "the added listener to accept")
        for i in range(4):  # on both listeners, whichever worker takes it
            with socket.create_connection(("127.0.0.1", b_port), timeout=5) as s:
                s.sendall(get("/b/%d" % i))
                assert s.recv(100).startswith(b"HTTP/1.1 200"), i
            assert px.request(get("/a/%d" % i)).body == b"web"

        cfg2 = copy.deepcopy(cfg)
        cfg2["listeners"] = [{"address": "127.0.0.1:%d" % b_port}]
        assert "(generation 2)" in reload(px, cfg2)
        wait_until(lambda: connect_refused(a_port), 5, "the removed listener to stop accepting")
        for i in range(10):  # every worker closed its socket
            assert connect_refused(a_port), "connection %d to the removed listener was accepted" % i
        with socket.create_connection(("127.0.0.1", b_port), timeout=5) as s:
            s.sendall(get("/b/after"))
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        # the tunnel accepted on the removed listener carries on
        cl.send(b"ping")
        tbe.expect(b"ping")
        tbe.send(b"pong")
        cl.expect(b"pong")
    finally:
        c.close()
        tbe.close()
    assert not px.crashed()
