"""limits.max_connections: at the limit the proxy stops accepting (clients
wait in the kernel backlog) and resumes below it; it never crashes."""
import socket
import time

from support.http import response_bytes, get, Reader, read_response, deadline_in, HTTPTimeout
from support.ops import AdminPort, wait_until, listening_sockets


def waiting_client(port, path):
    """Connect and send a request; the answer is read later."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(get(path))
    return s


def answered(s, timeout):
    """The response on s within timeout, or None if nothing came."""
    try:
        return read_response(Reader(s), deadline_in(timeout))
    except HTTPTimeout:
        return None


def test_sixth_connection_waits_until_one_closes(proxy, backend):
    be = backend(response=response_bytes(200, body=b"ok"))
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, limits={"max_connections": 5}, admin=adm.config,
               workers=1)
    adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5,
                    "the start-up probe connection to close")
    held = []
    extra = None
    try:
        for i in range(5):
            c = px.connect()
            assert c.request(get("/held/%d" % i)).status == 200
            held.append(c)
        extra = waiting_client(px.port, "/sixth")  # the TCP handshake completes (backlog)
        assert answered(extra, 1.0) is None, "a 6th connection was served with max_connections 5"
        m = adm.metrics()
        assert m.get("switchyard_connections_open") == 5, m.text
        assert m.get("switchyard_listener_pauses_total") >= 1, m.text
        # the held ones still work
        assert held[0].request(get("/held/again")).status == 200
        held.pop(4).close()
        r = answered(extra, 5.0)
        assert r is not None and r.status == 200, "the waiting connection was not served after one closed"
        adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 5, 5, "5 open")
    finally:
        for c in held:
            c.close()
        if extra:
            extra.close()
    # and with room again, new connections are served at once
    for i in range(10):
        assert px.request(get("/later/%d" % i)).status == 200
    assert not px.crashed()


def test_many_over_the_limit_all_served_in_turn(proxy, backend):
    """30 clients against a limit of 5: none is lost, none crashes the proxy."""
    be = backend(response=response_bytes(200, body=b"ok"))
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, limits={"max_connections": 5}, admin=adm.config,
               workers=1)
    socks = [waiting_client(px.port, "/many/%d" % i) for i in range(30)]
    try:
        # each answered client closes, letting the next one in
        pending = list(range(30))
        end = time.monotonic() + 20
        for _ in range(1000):
            if not pending or time.monotonic() > end:
                break
            for i in list(pending):
                r = answered(socks[i], 0.02)
                if r is not None:
                    assert r.status == 200
                    socks[i].close()
                    pending.remove(i)
        assert not pending, "%d of 30 clients never served with max_connections 5" % len(pending)
        m = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5, "all closed")
        assert m.get("switchyard_requests_total") == 30, m.text
    finally:
        for s in socks:
            s.close()
    assert not px.crashed()


def test_limit_with_two_workers_resumes_the_other_worker(proxy, backend):
    """max_connections is process-wide: when a connection closes on one worker,
    a client waiting on the other worker's socket must get in too. Which worker
    a connection lands on is the kernel's choice (SO_REUSEPORT), so several
    rounds: in each, the waiting client and the closed connection are on
    different workers about half the time."""
    be = backend(response=response_bytes(200, body=b"ok"))
    adm = AdminPort()
    limit = 4
    px = proxy(upstreams={"web": [be.address]}, limits={"max_connections": limit}, admin=adm.config,
               workers=2)
    # the port accepts once the first worker listens; the second may be a moment later
    wait_until(lambda: listening_sockets(px.port) == 2, 5, "one listening socket per worker")
    for rnd in range(8):
        adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5,
                        "round %d: every connection closed" % rnd)
        held = []
        waiter = None
        try:
            for i in range(limit):
                c = px.connect()
                assert c.request(get("/held/%d/%d" % (rnd, i))).status == 200
                held.append(c)
            waiter = waiting_client(px.port, "/wait/%d" % rnd)
            assert answered(waiter, 0.3) is None, "round %d: served above the limit" % rnd
            held.pop(0).close()  # one open connection fewer than the limit
            r = answered(waiter, 3.0)
            assert r is not None and r.status == 200, \
                ("round %d: a connection closed (%d open, limit %d) but the waiting client was not "
                 "served within 3 s; /metrics connections_open=%s listener_pauses_total=%s"
                 % (rnd, limit - 1, limit, adm.metrics().get("switchyard_connections_open"),
                    adm.metrics().get("switchyard_listener_pauses_total")))
        finally:
            for c in held:
                c.close()
            if waiter:
                waiter.close()
    assert not px.crashed()


def test_reload_raising_the_limit_lets_waiting_clients_in(proxy, backend):
    import copy
    from support.ops import reload
    be = backend(response=response_bytes(200, body=b"ok"))
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, limits={"max_connections": 2}, admin=adm.config,
               workers=1)
    adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5, "the probe to close")
    held, waiter = [], None
    try:
        for i in range(2):
            c = px.connect()
            assert c.request(get("/h/%d" % i)).status == 200
            held.append(c)
        waiter = waiting_client(px.port, "/w")
        assert answered(waiter, 0.5) is None
        cfg = copy.deepcopy(px.config)
        cfg["limits"] = {"max_connections": 3}
        assert "reloaded" in reload(px, cfg)
        r = answered(waiter, 5)
        assert r is not None and r.status == 200, "still waiting after the limit was raised to 3"
    finally:
        for c in held:
            c.close()
        if waiter:
            waiter.close()
