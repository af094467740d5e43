"""How a tunnel ends: half-close in each direction with data still flowing the
other way, abrupt close and RST from each side, idle and FIN timeouts, and the
access log lines ("type":"request" with 101 at the start, "type":"tunnel" at
the end)."""
import select
import socket
import threading
import time

import pytest

from support.tunnel import (upgrader, upgrade_request, switching, open_tunnel,  # noqa: F401 (fixture)
                            Stream, pump, assert_pumped, payload, drain_check, End)

MiB = 1024 * 1024
TUNNEL_KEYS = {"protocol", "route", "duration_ms", "bytes_to_upstream", "bytes_to_client",
               "closed_by", "reason"}


def ws_proxy(proxy, up, route=None, **cfg):
    r = {"name": "wsroute", "match": {"path_prefix": "/"}, "upstream": "ws"}
    r.update(route or {})
    return proxy(upstreams={"ws": [up.address]}, routes=[r], **cfg)


def tunnel_log(px, timeout=5.0):
    return px.wait_log(lambda e: e.get("type") == "tunnel", timeout=timeout)[0]


def check_tunnel_log(e, closed_by, reason, to_up=None, to_client=None, protocol="websocket"):
    missing = TUNNEL_KEYS - set(e)
    assert not missing, "tunnel log lacks %r: %r" % (missing, e)
    assert e["closed_by"] == closed_by and e["reason"] == reason, e
    assert e["protocol"] == protocol, e
    assert e["route"] == "wsroute", e
    assert isinstance(e["duration_ms"], (int, float)) and e["duration_ms"] >= 0, e
    if to_up is not None:
        assert e["bytes_to_upstream"] == to_up, e
    if to_client is not None:
        assert e["bytes_to_client"] == to_client, e


def ends_within(end, seconds):
    """(how, extra, elapsed) for the end of end's connection."""
    t0 = time.monotonic()
    how, extra = end.wait_end(seconds)
    return how, extra, time.monotonic() - t0


# ------------------------------------------------------------------ half-close

def test_client_half_close_upstream_keeps_sending(proxy, upgrader):
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        cl.send(b"last words")
        cl.shutdown_write()
        be.expect(b"last words")
        how, extra, _ = ends_within(be, 5)
        assert (how, extra) == ("eof", b""), "upstream should see the client's FIN"
        # the other direction still flows, in bulk and after a pause
        data = payload(4 * MiB, "after-fin")
        assert_pumped(pump([Stream(be, cl, data)], timeout=20))
        drain_check(cl, 0.3)
        be.send(b"final")
        cl.expect(b"final")
        be.shutdown_write()
        how, extra, t = ends_within(cl, 5)
        assert (how, extra) == ("eof", b"")
    check_tunnel_log(tunnel_log(px), "client", "eof", to_up=10, to_client=4 * MiB + 5)


def test_upstream_half_close_client_keeps_sending(proxy, upgrader):
    up = upgrader(answer=switching() + b"bye")
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        be.shutdown_write()
        cl.expect(b"bye")
        how, extra, _ = ends_within(cl, 5)
        assert (how, extra) == ("eof", b""), "client should see the upstream's FIN"
        data = payload(4 * MiB, "client-after-fin")
        assert_pumped(pump([Stream(cl, be, data)], timeout=20))
        drain_check(be, 0.3)
        cl.send(b"final")
        be.expect(b"final")
        cl.shutdown_write()
        how, extra, _ = ends_within(be, 5)
        assert (how, extra) == ("eof", b"")
    check_tunnel_log(tunnel_log(px), "upstream", "eof", to_up=4 * MiB + 5, to_client=3)


def test_fin_waits_for_bytes_in_flight(proxy, upgrader):
    """Data written just before the FIN arrives in full before the EOF."""
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        data = payload(3 * MiB, "in-flight")
        be.sock.settimeout(20)
        # written and FIN'd before the client reads a byte
        err = []

        def writer():
            try:
                be.sock.sendall(data)
                be.shutdown_write()
            except OSError as e:
                err.append(e)
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        got = cl.recv_exact(len(data), timeout=20)
        t.join(10)
        assert not err, err
        assert got == data
        assert cl.wait_end(5) == ("eof", b"")


def test_upstream_data_and_fin_right_behind_the_101(proxy, upgrader):
    """101, payload and FIN back to back: the client gets the 101, the payload,
    then EOF, and can still talk to the upstream."""
    up = upgrader(answer=None)
    px = ws_proxy(proxy, up)
    with px.connect() as c:
        c.send(upgrade_request("/ws"))
        be = up.take()
        be.send(switching() + b"goodbye")
        be.sock.shutdown(socket.SHUT_WR)
        r = c.response()
        assert r.status == 101
        cl = End(c.sock, c.reader, "client")
        cl.expect(b"goodbye")
        assert cl.wait_end(5) == ("eof", b"")
        cl.send(b"reply after your FIN")
        be.expect(b"reply after your FIN")
        cl.shutdown_write()
        assert be.wait_end(5) == ("eof", b"")
    check_tunnel_log(tunnel_log(px), "upstream", "eof", to_up=20, to_client=7)


def test_client_early_bytes_and_fin_before_the_answer(proxy, upgrader):
    """The client sends its head, early bytes and FIN before the 101: after
    the switch the upstream gets the bytes, then EOF, and the client still
    receives what the upstream sends."""
    up = upgrader(answer=None)
    px = ws_proxy(proxy, up)
    with px.connect() as c:
        c.send(upgrade_request("/ws") + b"early+fin")
        c.sock.shutdown(socket.SHUT_WR)
        be = up.take(5)
        drain_check(be, 0.3)
        be.send(switching())
        r = c.response()
        assert r.status == 101
        be.expect(b"early+fin")
        assert be.wait_end(5) == ("eof", b"")
        be.send(b"answer")
        cl = End(c.sock, c.reader, "client")
        cl.expect(b"answer")
        be.shutdown_write()
        assert cl.wait_end(5) == ("eof", b"")
    check_tunnel_log(tunnel_log(px), "client", "eof", to_up=9, to_client=6)


# ------------------------------------------------------------------ abrupt ends

def test_client_reset_reaches_upstream(proxy, upgrader):
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    cl.send(b"x")
    be.expect(b"x")
    cl.abort()
    how, extra, t = ends_within(be, 3)
    assert extra == b"" and t < 2.0, (how, extra, t)
    assert how in ("reset", "eof"), how
    check_tunnel_log(tunnel_log(px), "client", "reset", to_up=1)


def test_upstream_reset_reaches_client(proxy, upgrader):
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        be.send(b"y")
        cl.expect(b"y")
        be.abort()
        how, extra, t = ends_within(cl, 3)
        assert extra == b"" and t < 2.0, (how, extra, t)
        assert how in ("reset", "eof"), how
    check_tunnel_log(tunnel_log(px), "upstream", "reset", to_client=1)


def test_client_reset_while_upstream_streams(proxy, upgrader):
    """The client resets while the upstream is pushing data to it: the
    upstream's connection must end promptly (reads or writes fail)."""
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    be.send(b"z" * 200000)
    cl.recv_exact(1000)
    cl.abort()
    be.sock.setblocking(False)
    ended = None
    t0 = time.monotonic()
    for _ in range(100000):
        if time.monotonic() - t0 > 3:
            break
        try:
            be.sock.send(b"z" * 65536)
        except BlockingIOError:
            pass
        except OSError as e:
            ended = "send: %r" % e
            break
        r, _, _ = select.select([be.sock], [], [], 0.02)
        if r:
            try:
                if be.sock.recv(65536) == b"":
                    ended = "eof"
                    break
            except BlockingIOError:
                pass
            except OSError as e:
                ended = "recv: %r" % e
                break
    be.sock.settimeout(5)
    assert ended, "upstream still writable and open 3 s after the client's reset"
    assert time.monotonic() - t0 < 2.5
    e = tunnel_log(px)
    check_tunnel_log(e, "client", "reset")


def test_upstream_abrupt_close_with_unread_data(proxy, upgrader):
    """close() with unread bytes is an RST: the client sees the end promptly."""
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        cl.send(b"q" * 5000)
        # the upstream has the bytes in its receive buffer and closes unread
        r, _, _ = select.select([be.sock], [], [], 5)
        assert r
        be.sock.close()
        how, extra, t = ends_within(cl, 3)
        assert extra == b"" and t < 2.0
    e = tunnel_log(px)
    check_tunnel_log(e, "upstream", "reset")


def test_client_plain_close_then_upstream_closes(proxy, upgrader):
    """close() without unread data is a FIN: passed on, and when the upstream
    closes too the tunnel ends as a clean double EOF."""
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    cl.send(b"end")
    be.expect(b"end")
    c.close()
    assert ends_within(be, 3)[:2] == ("eof", b"")
    be.sock.close()
    check_tunnel_log(tunnel_log(px), "client", "eof", to_up=3, to_client=0)


# ------------------------------------------------------------------ timeouts

@pytest.mark.parametrize("where", ["route", "global"])
def test_idle_timeout(proxy, upgrader, where):
    up = upgrader()
    if where == "route":
        px = ws_proxy(proxy, up, route={"timeouts": {"tunnel_idle": "300ms"}})
    else:
        px = ws_proxy(proxy, up, timeouts={"tunnel_idle": "300ms"})
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        # traffic every 100 ms for 1 s keeps it open past 300 ms
        for i in range(10):
            assert cl.quiet(0.1) == b"", "tunnel ended although traffic kept moving (round %d)" % i
            cl.send(b"p")
            be.expect(b"p", timeout=2)
        t_last = time.monotonic()
        how, extra = cl.wait_end(3)
        idle = time.monotonic() - t_last
        assert extra == b""
        assert 0.25 <= idle <= 1.5, "ended after %.3fs of silence (tunnel_idle 300ms)" % idle
        assert be.wait_end(3)[1] == b""
    e = tunnel_log(px)
    check_tunnel_log(e, "proxy", "idle_timeout", to_up=10, to_client=0)
    assert e["duration_ms"] >= 1200, e


def test_idle_timeout_counts_either_direction(proxy, upgrader):
    """Traffic only from the upstream keeps the tunnel alive too."""
    up = upgrader()
    px = ws_proxy(proxy, up, route={"timeouts": {"tunnel_idle": "300ms"}})
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        for i in range(8):
            assert be.quiet(0.1) == b"", "tunnel ended although the upstream kept sending"
            be.send(b"d")
            cl.expect(b"d", timeout=2)
        assert cl.wait_end(3)[1] == b""


def test_fin_timeout(proxy, upgrader):
    """After the client's FIN the upstream never closes: the tunnel ends at
    tunnel_fin, and until then the other direction still flows."""
    up = upgrader()
    px = ws_proxy(proxy, up, route={"timeouts": {"tunnel_fin": "300ms", "tunnel_idle": "30s"}})
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        cl.shutdown_write()
        t_fin = time.monotonic()
        assert be.wait_end(3) == ("eof", b"")
        be.send(b"still here")
        cl.expect(b"still here")
        how, extra = cl.wait_end(3)
        waited = time.monotonic() - t_fin
        assert extra == b""
        assert 0.25 <= waited <= 1.5, "closed %.3fs after the first FIN (tunnel_fin 300ms)" % waited
        # the upstream side is closed as well: a write now meets an RST
        be.sock.setblocking(False)
        failed = None
        end = time.monotonic() + 3
        for _ in range(1000):
            try:
                be.sock.send(b"late")
            except BlockingIOError:
                pass
            except OSError as e:
                failed = e
                break
            if time.monotonic() > end:
                break
            time.sleep(0.01)  # poll interval: give the RST time to come back
        be.sock.settimeout(5)
        assert failed is not None, "the upstream socket still accepts writes after the fin timeout"
    check_tunnel_log(tunnel_log(px), "proxy", "fin_timeout", to_up=0, to_client=10)


def test_fin_timeout_global_from_upstream_side(proxy, upgrader):
    up = upgrader()
    px = ws_proxy(proxy, up, timeouts={"tunnel_fin": "300ms"})
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        be.shutdown_write()
        t_fin = time.monotonic()
        assert cl.wait_end(3) == ("eof", b"")
        cl.send(b"reply")
        be.expect(b"reply")
        how, extra = be.wait_end(3)
        waited = time.monotonic() - t_fin
        assert 0.25 <= waited <= 1.5, waited
    check_tunnel_log(tunnel_log(px), "proxy", "fin_timeout", to_up=5, to_client=0)


# ------------------------------------------------------------------ log lines

def test_log_lines_for_a_tunnel(proxy, upgrader):
    up = upgrader(answer=switching() + b"0123456789")  # 10 bytes behind the 101
    px = ws_proxy(proxy, up)
    with px.connect() as c:
        c.send(upgrade_request("/chat?x=1") + b"early")   # 5 bytes behind the head
        r = c.response()
        assert r.status == 101
        be = up.take()
        # the request line is written when the tunnel starts, not when it ends
        start = px.wait_log(lambda e: e.get("type", "request") == "request")[0]
        assert start["status"] == 101 and start["method"] == "GET" and start["path"] == "/chat", start
        assert start["route"] == "wsroute", start
        assert not [e for e in px.log_entries() if e.get("type") == "tunnel"]
        be.expect(b"early")
        cl = End(c.sock, c.reader, "client")
        cl.expect(b"0123456789")
        cl.send(b"a" * 1000)
        be.expect(b"a" * 1000)
        be.send(b"b" * 2000)
        cl.expect(b"b" * 2000)
        assert cl.quiet(0.2) == b""   # hold the tunnel open a measurable time
        be.shutdown_write()
        assert cl.wait_end(5) == ("eof", b"")
        cl.shutdown_write()
        assert be.wait_end(5) == ("eof", b"")
    e = tunnel_log(px)
    check_tunnel_log(e, "upstream", "eof", to_up=1005, to_client=2010)
    assert e["duration_ms"] >= 200, e
    lines = px.log_entries()
    kinds = [x.get("type", "request") for x in lines]
    assert kinds == ["request", "tunnel"], lines


def test_log_protocol_is_the_switched_token(proxy, upgrader):
    """The client offers two tokens and the upstream picks the second: the
    tunnel is that protocol."""
    up = upgrader(answer=switching("websocket"))
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws", upgrade="x-first/1, websocket"))
    with c:
        cl.shutdown_write()
        be.shutdown_write()
        assert cl.wait_end(5)[0] == "eof"
    check_tunnel_log(tunnel_log(px), "client", "eof", protocol="websocket")


def sigterm_caught(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (15 - 1)))
    return False


def test_shutdown_closes_tunnels(proxy, upgrader):
    """SIGTERM drains: a tunnel that does not end by itself within
    timeouts.drain is closed by the proxy and logged as a shutdown."""
    up = upgrader()
    px = ws_proxy(proxy, up, timeouts={"drain": "300ms"})
    # Handlers are installed before the listeners accept; this wait only
    # keeps the test about tunnels should that ever regress.
    end = time.monotonic() + 5
    while not sigterm_caught(px.pid):
        assert time.monotonic() < end, "the proxy never installed a SIGTERM handler"
        time.sleep(0.01)  # poll interval of a bounded condition wait
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        cl.send(b"hi")
        be.expect(b"hi")
        rc = px.stop(10)
        assert rc == 0, rc
        assert not getattr(px, "needed_kill", False), "SIGTERM did not stop the proxy with a tunnel open"
        assert cl.wait_end(3)[1] == b""
        assert be.wait_end(3)[1] == b""
    e = [x for x in px.log_entries() if x.get("type") == "tunnel"]
    assert len(e) == 1, px.stdout()
    check_tunnel_log(e[0], "proxy", "shutdown", to_up=2, to_client=0)
