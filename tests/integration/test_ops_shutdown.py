"""Shutdown: SIGTERM/SIGINT drain (listeners close, idle keep-alive closes,
in-flight requests finish, tunnels get timeouts.drain, /readyz says draining,
exit 0); SIGQUIT closes everything at once."""
import signal
import threading
import time

from support.http import response_bytes, get, HTTPTimeout
from support.ops import AdminPort, wait_until, connect_refused, wait_exit, stdout_entries
from support.tunnel import upgrader, upgrade_request, open_tunnel, payload  # noqa: F401

SLOW_BODY = payload(2 * 1024 * 1024, "slow-body")


def gated_handler(gate):
    """Answers each request once `gate` is set: a 2 MiB body, written in pieces."""
    def handler(conn):
        for _ in range(100):
            req = conn.read_request(timeout=30)
            if req is None:
                return
            if req.target.startswith("/slow"):
                assert gate.wait(30), "the test never released the slow response"
                head = response_bytes(200, body=b"", length=False)
                conn.send(head[:-2] + b"Content-Length: %d\r\n\r\n" % len(SLOW_BODY))
                for i in range(0, len(SLOW_BODY), 256 * 1024):
                    conn.send(SLOW_BODY[i:i + 256 * 1024])
            else:
                conn.send(response_bytes(200, body=b"quick"))
    return handler


def start_proxy(proxy, backend, upgrader, adm, **extra):
    gate = threading.Event()
    be = backend(handler=gated_handler(gate), name="slow")
    up = upgrader()
    px = proxy(upstreams={"web": [be.address], "ws": [up.address]},
               routes=[{"name": "ws", "match": {"path_prefix": "/ws"}, "upstream": "ws"},
                       {"name": "web", "match": {"path_prefix": "/"}, "upstream": "web"}],
               admin=adm.config, **extra)
    return px, be, up, gate


def test_sigterm_drains(proxy, backend, upgrader):
    adm = AdminPort()
    drain = 2.0
    px, be, up, gate = start_proxy(proxy, backend, upgrader, adm, timeouts={"drain": "2s"})
    idle = px.connect()
    assert idle.request(get("/quick")).body == b"quick"
    c, cl, tbe, _ = open_tunnel(px, up, upgrade_request("/ws/drain"))
    slow = px.connect()
    try:
        slow.send(get("/slow"))
        be.wait_requests(2)  # /quick and /slow
        t0 = time.monotonic()
        px.proc.send_signal(signal.SIGTERM)
        # draining: /readyz 503, new connections refused, idle keep-alive closed
        r = wait_until(lambda: (lambda r: r if r.status == 503 else None)(adm.get("/readyz")), 3,
                       "/readyz to answer 503")
        assert r.text == "draining\n", r.text
        assert adm.get("/healthz").status == 200
        assert adm.status()["draining"] is True
        wait_until(lambda: connect_refused(px.port), 3, "the listener to close")
        for _ in range(5):
            assert connect_refused(px.port), "a new connection was accepted while draining"
        assert idle.closed_by_peer(3), "the idle keep-alive connection stayed open during the drain"
        # the tunnel still works while the drain lasts
        cl.send(b"during drain")
        tbe.expect(b"during drain")
        tbe.send(b"still up")
        cl.expect(b"still up")
        # the in-flight request completes with its full response, then the connection closes
        gate.set()
        r = slow.response(timeout=10)
        assert r.status == 200 and r.body == SLOW_BODY, (r.head, len(r.body))
        assert slow.closed_by_peer(5), "the connection stayed open after the response during the drain"
        # the tunnel is closed by the proxy when the drain time is up
        how, _ = cl.wait_end(drain + 5)
        took = time.monotonic() - t0
        assert how in ("eof", "reset"), how
        assert tbe.wait_end(3)[0] in ("eof", "reset")
        assert drain - 0.2 <= took <= drain + 3, "tunnel closed %.2fs after SIGTERM, drain is %.1fs" % (took, drain)
        rc = wait_exit(px, 5)
        assert rc == 0, rc
    finally:
        for x in (idle, c, slow):
            x.close()
        tbe.close()
    entries = stdout_entries(px)
    tun = [e for e in entries if e.get("type") == "tunnel"]
    assert len(tun) == 1, tun
    assert tun[0]["reason"] == "shutdown" and tun[0]["closed_by"] == "proxy", tun
    assert tun[0]["path"] == "/ws/drain" and tun[0]["bytes_to_upstream"] == len(b"during drain"), tun
    reqs = [e for e in entries if e.get("type") == "request" and e.get("path") == "/slow"]
    assert len(reqs) == 1 and reqs[0]["status"] == 200, reqs
    assert reqs[0]["bytes_out"] >= len(SLOW_BODY), reqs


def test_response_finished_during_drain_says_connection_close(proxy, backend, upgrader):
    """A response whose head goes out while draining is the last on its
    connection: it should say so (Connection: close, RFC 9112 section 9.6), so
    the client does not send another request into a closing connection."""
    adm = AdminPort()
    px, be, up, gate = start_proxy(proxy, backend, upgrader, adm, timeouts={"drain": "500ms"})
    with px.connect() as slow:
        slow.send(get("/slow"))
        be.wait_requests(1)
        px.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: adm.get("/readyz").status == 503, 3, "/readyz 503")
        gate.set()
        r = slow.response(timeout=10)
        assert r.status == 200 and r.body == SLOW_BODY
        assert slow.closed_by_peer(5)
        assert "close" in r.tokens("connection"), \
            "the proxy closed after this response without Connection: close: %r" % r.head
    assert wait_exit(px, 5) == 0


def test_drain_ends_early_when_tunnels_end(proxy, backend, upgrader):
    """With the default drain (30 s), a tunnel that ends on its own lets the
    proxy exit right away."""
    adm = AdminPort()
    px, be, up, gate = start_proxy(proxy, backend, upgrader, adm)
    c, cl, tbe, _ = open_tunnel(px, up, upgrade_request("/ws/early"))
    try:
        px.proc.send_signal(signal.SIGINT)
        r = wait_until(lambda: (lambda r: r if r.status == 503 else None)(adm.get("/readyz")), 3,
                       "/readyz to answer 503")
        assert r.text == "draining\n"
        assert px.proc.poll() is None, "the proxy exited with a tunnel open"
        cl.send(b"bye")
        tbe.expect(b"bye")
        cl.shutdown_write()
        tbe.shutdown_write()
        assert cl.wait_end(5)[0] == "eof"
        t0 = time.monotonic()
        rc = wait_exit(px, 5)
        assert rc == 0, rc
        assert time.monotonic() - t0 < 3
    finally:
        c.close()
        tbe.close()
    tun = [e for e in stdout_entries(px) if e.get("type") == "tunnel"]
    assert len(tun) == 1 and tun[0]["reason"] != "shutdown", tun


def test_idle_proxy_exits_at_once_on_sigterm(proxy, backend):
    be = backend(response=response_bytes(200, body=b"x"))
    px = proxy(upstreams={"web": [be.address]})
    assert px.request(get("/")).status == 200
    t0 = time.monotonic()
    px.proc.send_signal(signal.SIGTERM)
    assert wait_exit(px, 5) == 0
    assert time.monotonic() - t0 < 2


def test_sigquit_closes_everything_at_once(proxy, backend, upgrader):
    adm = AdminPort()
    px, be, up, gate = start_proxy(proxy, backend, upgrader, adm)  # drain 30s: SIGQUIT must not wait
    c, cl, tbe, _ = open_tunnel(px, up, upgrade_request("/ws/quit"))
    slow = px.connect()
    idle = px.connect()
    try:
        assert idle.request(get("/quick")).status == 200
        slow.send(get("/slow"))
        be.wait_requests(2)
        t0 = time.monotonic()
        px.proc.send_signal(signal.SIGQUIT)
        rc = wait_exit(px, 5)
        assert time.monotonic() - t0 < 3, "SIGQUIT took %.1fs" % (time.monotonic() - t0)
        assert rc == 0, rc
        assert cl.wait_end(3)[0] in ("eof", "reset")
        assert tbe.wait_end(3)[0] in ("eof", "reset")
        try:
            r = slow.response(timeout=3, allow_eof=True)
        except (AssertionError, HTTPTimeout) as e:
            raise AssertionError("in-flight client not closed by SIGQUIT: %s" % e)
        assert r is None or r.status >= 500, r.head
        assert idle.closed_by_peer(3)
        assert connect_refused(px.port)
    finally:
        gate.set()
        for x in (c, slow, idle):
            x.close()
        tbe.close()
    tun = [e for e in stdout_entries(px) if e.get("type") == "tunnel"]
    assert len(tun) == 1 and tun[0]["reason"] == "shutdown" and tun[0]["closed_by"] == "proxy", tun


def test_sigquit_cuts_a_drain_short(proxy, backend, upgrader):
    adm = AdminPort()
    px, be, up, gate = start_proxy(proxy, backend, upgrader, adm)
    c, cl, tbe, _ = open_tunnel(px, up, upgrade_request("/ws/cut"))
    try:
        px.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: adm.get("/readyz").status == 503, 3, "/readyz 503")
        px.proc.send_signal(signal.SIGQUIT)
        assert wait_exit(px, 5) == 0
        assert cl.wait_end(3)[0] in ("eof", "reset")
    finally:
        c.close()
        tbe.close()
