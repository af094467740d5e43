"""Balancing and server health: active checks eject and bring back, passive
ejection after connect failures, least_conn counts tunnels, hash(header:X-User)
is sticky, weights 3:1."""
import copy
import re
import time

from support.backend import RefusingAddress
from support.http import get
from support.ops import AdminPort, NamedServer, wait_until, take_any, reload
from support.tunnel import upgrader, upgrade_request  # noqa: F401

HEALTH = {"path": "/healthz", "interval": "200ms", "timeout": "100ms", "healthy": 1, "unhealthy": 1}


def servers(*addrs, **extra):
    d = {"servers": [{"address": a} for a in addrs]}
    d.update(extra)
    return d


def body_of(px, path, extra=b""):
    r = px.request(get(path, extra=extra))
    return r.status, r.body


def test_health_check_ejects_and_restores(proxy):
    a, b = NamedServer("a"), NamedServer("b")
    adm = AdminPort()
    try:
        px = proxy(upstreams={"web": servers(a.address, b.address, health=HEALTH)},
                   admin=adm.config, workers=1)
        wait_until(lambda: a.health_hits >= 2 and b.health_hits >= 2, 5, "health checks on both")
        got = sorted(body_of(px, "/x%d" % i)[1] for i in range(4))
        assert got == [b"a", b"a", b"b", b"b"], got

        b.stop()  # refused from now on
        m = adm.wait_metric(lambda m: m.get("switchyard_upstream_server_up", server=b.address) == 0, 5,
                            "b to be marked down")
        assert m.one("switchyard_upstream_server_up", upstream="web", server=a.address) == 1, m.text
        assert m.get("switchyard_health_checks_total", upstream="web", server=b.address,
                     result="failed") >= 1, m.text
        assert m.get("switchyard_health_checks_total", upstream="web", server=a.address,
                     result="ok") >= 1, m.text
        assert "server %s is down" % b.address in px.stderr()
        before = a.hits
        for i in range(6):
            assert body_of(px, "/only-a/%d" % i) == (200, b"a")
        assert a.hits == before + 6

        a.sick = True  # answers /healthz with 503: every server down -> 503
        adm.wait_metric(lambda m: m.get("switchyard_upstream_server_up", upstream="web") == 0, 5,
                        "a to be marked down too")
        for i in range(3):
            st, _ = body_of(px, "/none/%d" % i)
            assert st == 503, st
        st = adm.status()
        assert [s["up"] for s in st["upstreams"][0]["servers"]] == [False, False], st

        b.start()  # same port
        a.sick = False
        adm.wait_metric(lambda m: m.get("switchyard_upstream_server_up", upstream="web") == 2, 5,
                        "both servers back up")
        assert "server %s is healthy again" % b.address in px.stderr()
        hits_b = b.hits
        got = sorted(body_of(px, "/back/%d" % i)[1] for i in range(4))
        assert got == [b"a", b"a", b"b", b"b"], got
        assert b.hits == hits_b + 2
    finally:
        a.stop()
        b.stop()


def test_reload_without_checks_releases_what_they_ejected(proxy):
    """A server the probes took out (its /healthz sick, the rest fine) comes
    back when a reload removes `health`: no probe would ever bring it back."""
    a, b = NamedServer("a"), NamedServer("b")
    b.sick = True
    adm = AdminPort()
    try:
        px = proxy(upstreams={"web": servers(a.address, b.address, health=HEALTH)},
                   admin=adm.config, workers=1)
        adm.wait_metric(lambda m: m.has("switchyard_upstream_server_up", server=b.address) and
                        m.get("switchyard_upstream_server_up", server=b.address) == 0, 5,
                        "b to be marked down by its probe")
        assert [body_of(px, "/x%d" % i)[1] for i in range(4)] == [b"a"] * 4
        cfg = copy.deepcopy(px.config)
        del cfg["upstreams"]["web"]["health"]
        assert "reloaded" in reload(px, cfg)
        got = sorted(body_of(px, "/y%d" % i)[1] for i in range(4))
        assert got == [b"a", b"a", b"b", b"b"], got
        adm.wait_metric(lambda m: m.get("switchyard_upstream_server_up", server=b.address) == 1, 5,
                        "b up again")
    finally:
        a.stop()
        b.stop()


def test_probe_runs_survive_a_restart_of_the_checks(proxy):
    """The checks restart at every reload and DNS change (each server probed
    at once); a failing server's run of failures goes on across them, or pods
    churning faster than `unhealthy` intervals would keep a sick one in."""
    a, b = NamedServer("a"), NamedServer("b")
    b.sick = True
    adm = AdminPort()
    slow = dict(HEALTH, interval="1m", timeout="2s", unhealthy=3)
    try:
        px = proxy(upstreams={"web": servers(a.address, b.address, health=slow)},
                   admin=adm.config, workers=1)
        for n in (1, 2, 3):  # the probe at start, then one per reload
            if n > 1:
                assert "reloaded" in reload(px)
            m = adm.wait_metric(lambda m: m.get("switchyard_health_checks_total", server=b.address,
                                                result="failed") >= n, 5, "failed probe %d" % n)
        assert m.one("switchyard_upstream_server_up", upstream="web", server=b.address) == 0, m.text
        assert m.one("switchyard_upstream_server_up", upstream="web", server=a.address) == 1, m.text
    finally:
        a.stop()
        b.stop()


def test_health_check_timeout_marks_down(proxy, blackhole_backend):
    """A server that accepts but never answers the check is down after the
    check timeout; traffic goes to the other one."""
    hole = blackhole_backend()
    a = NamedServer("a")
    adm = AdminPort()
    try:
        px = proxy(upstreams={"web": servers(hole.address, a.address, health=HEALTH)},
                   admin=adm.config, workers=1)
        adm.wait_metric(lambda m: m.get("switchyard_upstream_server_up", server=hole.address) == 0, 5,
                        "the silent server to be marked down")
        for i in range(4):
            assert body_of(px, "/t/%d" % i) == (200, b"a")
    finally:
        a.stop()


def test_passive_ejection_and_retry_after_rest(proxy):
    dead = RefusingAddress()
    a = NamedServer("a")
    adm = AdminPort()
    try:
        px = proxy(upstreams={"web": servers(dead.address, a.address)}, admin=adm.config, workers=1)
        # round robin: every other pick is the dead server, retried on a
        for i in range(8):
            assert body_of(px, "/p/%d" % i) == (200, b"a")
        m = adm.metrics()
        assert m.one("switchyard_upstream_server_up", upstream="web", server=dead.address) == 0, m.text
        assert re.search(r"server %s ejected after 3 failed connects" % re.escape(dead.address),
                         px.stderr()), px.stderr()
        t_eject = time.monotonic()
        # the address comes alive: the ejected server gets traffic again after its rest (10 s)
        port = dead.port
        dead.close()
        revived = NamedServer("revived", port=port)
        try:
            end = time.monotonic() + 15
            seen = []
            while time.monotonic() < end and revived.hits == 0:
                seen.append(body_of(px, "/again"))
                time.sleep(0.25)  # request pacing while waiting out the rest period
            rested = time.monotonic() - t_eject
            assert revived.hits > 0, "the ejected server never got a request again within 15 s"
            assert all(x == (200, b"a") for x in seen[:-1]), seen
            assert rested >= 9, "the ejected server was tried again after %.1fs (rest is 10 s)" % rested
            adm.wait_metric(lambda m: m.get("switchyard_upstream_server_up", server=dead.address) == 1,
                            5, "the revived server to be up")
            got = sorted(body_of(px, "/rr/%d" % i)[1] for i in range(4))
            assert got == [b"a", b"a", b"revived", b"revived"], got
        finally:
            revived.stop()
    finally:
        a.stop()
        dead.close()


def test_least_conn_counts_tunnels(proxy, upgrader):
    ups = [upgrader(name="A"), upgrader(name="B")]
    adm = AdminPort()
    px = proxy(upstreams={"ws": servers(ups[0].address, ups[1].address, balance="least_conn")},
               admin=adm.config, workers=1)
    open_ = {0: [], 1: []}
    clients = []

    def tunnel(i):
        c = px.connect()
        clients.append(c)
        c.send(upgrade_request("/ws/%d" % i))
        r = c.response()
        assert r.status == 101, r.head
        k, be = take_any(ups)
        open_[k].append((c, be))
        return k

    try:
        first = [tunnel(i) for i in range(4)]
        assert sorted(first) == [0, 0, 1, 1], first
        assert first[0] != first[1] and first[2] != first[3], first
        # close both tunnels on A
        for c, be in open_[0]:
            c.close()
            be.close()
        open_[0] = []
        adm.wait_metric(lambda m: m.get("switchyard_upstream_active_connections",
                                        server=ups[0].address) == 0, 5, "A to have no tunnel")
        # A has 0, B has 2: the next two go to A, whatever round robin would say
        nxt = [tunnel(10 + i) for i in range(2)]
        assert nxt == [0, 0], "least_conn sent new tunnels to %r with A:0 B:2 open" % nxt
        m = adm.metrics()
        assert m.one("switchyard_upstream_active_connections", upstream="ws", server=ups[0].address) == 2
        assert m.one("switchyard_upstream_active_connections", upstream="ws", server=ups[1].address) == 2
    finally:
        for c in clients:
            c.close()
        for k in open_:
            for c, be in open_[k]:
                be.close()


def test_least_conn_remembers_tunnels_across_reload(proxy, upgrader):
    """Tunnels opened before a reload still count for least_conn (and in
    /metrics) after it: the servers did not change."""
    ups = [upgrader(name="A"), upgrader(name="B")]
    adm = AdminPort()
    px = proxy(upstreams={"ws": servers(ups[0].address, ups[1].address, balance="least_conn")},
               admin=adm.config, workers=1)
    held = []
    try:
        where = []
        for i in range(4):
            c = px.connect()
            c.send(upgrade_request("/ws/%d" % i))
            assert c.response().status == 101
            k, be = take_any(ups)
            held.append((k, c, be))
            where.append(k)
        assert sorted(where) == [0, 0, 1, 1], where
        for k, c, be in [h for h in held if h[0] == 0]:
            c.close()
            be.close()
        held = [h for h in held if h[0] == 1]
        adm.wait_metric(lambda m: m.get("switchyard_upstream_active_connections",
                                        server=ups[0].address) == 0, 5, "A to have no tunnel")
        cfg = copy.deepcopy(px.config)
        cfg["routes"] = cfg["routes"] + [{"match": {"path_prefix": "/other"}, "upstream": "ws"}]
        assert "reloaded" in reload(px, cfg)
        m = adm.metrics()
        active_b = m.one("switchyard_upstream_active_connections", upstream="ws", server=ups[1].address)
        nxt = []
        for i in range(2):
            c = px.connect()
            c.send(upgrade_request("/ws/n%d" % i))
            assert c.response().status == 101
            k, be = take_any(ups)
            held.append((k, c, be))
            nxt.append(k)
        assert active_b == 2 and nxt == [0, 0], \
            ("after a reload /metrics shows %d tunnels on B (2 open) and least_conn sent the next "
             "two tunnels to %r (expected A, A)" % (active_b, ["AB"[k] for k in nxt]))
    finally:
        for k, c, be in held:
            c.close()
            be.close()


def test_hash_header_is_sticky(proxy):
    srv = [NamedServer("s%d" % i) for i in range(3)]
    try:
        px = proxy(upstreams={"web": servers(*[s.address for s in srv], balance="hash(header:X-User)")},
                   workers=1)
        where = {}
        for rnd in range(3):
            for u in range(12):
                user = "user-%d" % u
                st, body = body_of(px, "/h/%d/%d" % (rnd, u), extra=b"X-User: " + user.encode() + b"\r\n")
                assert st == 200
                where.setdefault(user, set()).add(body)
        moved = {u: s for u, s in where.items() if len(s) > 1}
        assert not moved, "users moved between servers: %r" % moved
        used = set().union(*where.values())
        assert len(used) >= 2, "12 users all hashed to %r" % used
        # on one keep-alive connection, different users still go to their own server
        with px.connect() as c:
            for u in range(12):
                user = "user-%d" % u
                r = c.request(get("/k/%d" % u, extra=b"X-User: " + user.encode() + b"\r\n"))
                assert {r.body} == where[user], (user, r.body, where[user])
    finally:
        for s in srv:
            s.stop()


def test_weights_3_to_1(proxy):
    a, b = NamedServer("a"), NamedServer("b")
    try:
        px = proxy(upstreams={"web": {"servers": [{"address": a.address, "weight": 3},
                                                  {"address": b.address, "weight": 1}]}},
                   workers=1)
        got = [body_of(px, "/w/%d" % i)[1] for i in range(8)]
        assert got.count(b"a") == 6 and got.count(b"b") == 2, got
        assert (a.hits, b.hits) == (6, 2)
    finally:
        a.stop()
        b.stop()
