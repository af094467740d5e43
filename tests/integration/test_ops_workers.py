"""workers: 2 — one SO_REUSEPORT socket per worker, every connection served,
/metrics sums both workers."""
import threading

from support.http import response_bytes, get
from support.ops import AdminPort, listening_sockets, wait_until
from support.tunnel import upgrader, upgrade_request  # noqa: F401


def test_two_workers_serve_everything_and_metrics_sum(proxy, backend):
    be = backend(response=response_bytes(200, body=b"w"))
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, admin=adm.config, workers=2)
    # the port accepts once the first worker listens; the second may be a moment later
    wait_until(lambda: listening_sockets(px.port) == 2, 5, "one listening socket per worker")
    m0 = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5, "the probe to close")
    assert m0.one("switchyard_workers") == 2
    acc0 = m0.get("switchyard_connections_accepted_total")
    nconn, per = 200, 3
    errors = []
    lock = threading.Lock()

    def run(k):
        try:
            for i in range(k, nconn, 8):
                with px.connect() as c:
                    for j in range(per):
                        r = c.request(get("/w/%d/%d" % (i, j)))
                        if r.status != 200 or r.body != b"w":
                            raise AssertionError("conn %d req %d: %r" % (i, j, r.head))
        except BaseException as e:
            with lock:
                errors.append(repr(e))
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "clients still running"
    assert not errors, errors[:5]
    m = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5, "all closed")
    assert m.get("switchyard_requests_total") == nconn * per, m.text
    assert m.one("switchyard_requests_total", route="#0", class_="2xx") == nconn * per, m.text
    assert m.get("switchyard_connections_accepted_total") == acc0 + nconn, m.text
    assert m.one("switchyard_workers") == 2
    st = adm.status()
    assert st["requests"] == nconn * per and st["connections_open"] == 0, st
    assert len(be.requests) == nconn * per


def test_two_workers_tunnel_metrics_sum(proxy, upgrader):
    up = upgrader()
    adm = AdminPort()
    px = proxy(upstreams={"ws": [up.address]}, admin=adm.config, workers=2)
    clients, ends = [], []
    try:
        for i in range(20):
            c = px.connect()
            clients.append(c)
            c.send(upgrade_request("/ws/%d" % i))
        for c in clients:
            assert c.response().status == 101
        for _ in clients:
            ends.append(up.take())
        m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 20, 5, "20 tunnels open")
        assert m.one("switchyard_tunnels_open", route="#0", protocol="websocket") == 20, m.text
        assert m.one("switchyard_upstream_active_connections", upstream="ws", server=up.address) == 20
        assert adm.status()["tunnels_open"] == 20
    finally:
        for c in clients:
            c.close()
        for e in ends:
            e.close()
    m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 0, 5, "tunnels closed")
    assert m.one("switchyard_tunnels_total", route="#0", protocol="websocket") == 20, m.text
