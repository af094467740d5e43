"""Bytes through a switched connection: large transfers both ways at once,
data that looks like HTTP, small interactive frames, many tunnels at once."""
import hashlib
import select
import time

from support.tunnel import (upgrader, upgrade_request, open_tunnel,  # noqa: F401 (fixture)
                            Stream, pump, assert_pumped, payload, drain_check, End)

MiB = 1024 * 1024


def ws_proxy(proxy, up, **cfg):
    return proxy(upstreams={"ws": [up.address]}, **cfg)


def test_32mib_each_way_simultaneously(proxy, upgrader):
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/big"))
    with c:
        down = payload(32 * MiB, "down")
        upd = payload(32 * MiB, "up")
        t0 = time.monotonic()
        streams = pump([Stream(cl, be, upd, "client->upstream"),
                        Stream(be, cl, down, "upstream->client")], timeout=45)
        took = time.monotonic() - t0
        assert_pumped(streams)
        for s in streams:
            assert s.sha_received == hashlib.sha256(bytes(s.data)).hexdigest(), s.describe()
        assert took < 45, "took %.1fs" % took
        cl.shutdown_write()
        be.shutdown_write()
        assert cl.wait_end(5) == ("eof", b"")
        assert be.wait_end(5) == ("eof", b"")
    e = px.wait_log(lambda e: e.get("type") == "tunnel")[0]
    assert e["bytes_to_upstream"] == 32 * MiB and e["bytes_to_client"] == 32 * MiB, e


HTTP_LIKE_UP = (b"GET /admin HTTP/1.1\r\nHost: internal\r\nContent-Length: 5\r\n\r\nhello"
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"\x00\xff\r\n\r\n"
                b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
HTTP_LIKE_DOWN = (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                  b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                  b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n"
                  b"\r\n\r\n\x00HTTP/1.0 100 Continue\r\n\r\n")


def test_http_lookalike_bytes_pass_untouched(proxy, upgrader):
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, r = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        # in pieces that split lines, and whole
        for i in range(0, len(HTTP_LIKE_UP), 7):
            cl.send(HTTP_LIKE_UP[i:i + 7])
        be.expect(HTTP_LIKE_UP)
        be.send(HTTP_LIKE_DOWN)
        cl.expect(HTTP_LIKE_DOWN)
        cl.send(HTTP_LIKE_UP)
        be.expect(HTTP_LIKE_UP)
        for i in range(0, len(HTTP_LIKE_DOWN), 5):
            be.send(HTTP_LIKE_DOWN[i:i + 5])
        cl.expect(HTTP_LIKE_DOWN)
        drain_check(cl, 0.1)
        drain_check(be, 0.05)
        assert bytes(c.raw) == r.head + HTTP_LIKE_DOWN * 2
        assert bytes(be.conn.raw) == be.request.head + HTTP_LIKE_UP * 2
        cl.shutdown_write()
        be.shutdown_write()
        assert cl.wait_end(5) == ("eof", b"")
    # nothing was parsed as a request: one upstream connection, one request line
    assert len(up.backend.conns) == 1
    px.wait_log(lambda e: e.get("type") == "tunnel")
    reqs = [e for e in px.log_entries() if e.get("type", "request") == "request"]
    assert [(e["path"], e["status"]) for e in reqs] == [("/ws", 101)], reqs


def test_small_frames_not_delayed(proxy, upgrader):
    """Ping-pong of tiny frames: Nagle or SPLICE_F_MORE style batching would
    cost ~40 ms (or 200 ms) per round trip."""
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        rounds = 200
        t0 = time.monotonic()
        for i in range(rounds):
            frame = b"\x81\x02" + (b"%02d" % (i % 100))
            cl.send(frame)
            be.expect(frame, timeout=2)
            be.send(frame[::-1])
            cl.expect(frame[::-1], timeout=2)
        took = time.monotonic() - t0
    assert took < 2.0, "%d small round trips took %.2fs (%.1f ms each)" % (rounds, took, took * 1000 / rounds)


def test_order_kept_across_many_writes(proxy, upgrader):
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        pieces = [bytes([i % 251]) * (1 + (i * 37) % 3000) for i in range(600)]
        whole = b"".join(pieces)
        for p in pieces:
            cl.send(p)
        be.expect(whole, timeout=15)


def test_backpressure_bounds_proxy_memory(proxy, upgrader):
    """The upstream stops reading: the client's writes must stall instead of
    the proxy buffering everything (one pipe per direction at most)."""
    up = upgrader()
    px = ws_proxy(proxy, up)
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/slow"))
    with c:
        base = px.vm_hwm_kib()
        chunk = b"\x5a" * (256 * 1024)
        accepted = 0
        stalled = False
        c.sock.setblocking(False)
        end = time.monotonic() + 15
        idle_since = None
        for _ in range(100000):
            try:
                accepted += c.sock.send(chunk)
                idle_since = None
            except BlockingIOError:
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since > 0.5:   # no progress for 0.5 s: stalled
                    stalled = True
                    break
                select.select([], [c.sock], [], 0.05)
            if time.monotonic() > end or accepted > 256 * MiB:
                break
        c.sock.settimeout(10)
        assert stalled, "the client wrote %d MiB with the upstream not reading" % (accepted // MiB)
        grown = px.vm_hwm_kib() - base
        assert grown < 8 * 1024, "proxy peak RSS grew by %d KiB while stalled" % grown
        # and everything arrives once the upstream reads again
        s = Stream(cl, be, b"\x5a" * accepted, "stalled bytes")
        s.sent = accepted
        pump([s], timeout=30)
        assert_pumped([s])


def test_200_concurrent_tunnels(proxy, upgrader):
    n = 200
    size = 96 * 1024
    up = upgrader()
    px = ws_proxy(proxy, up)
    clients = []
    try:
        # open all of them first, so they are all live at the same time
        for i in range(n):
            c = px.connect(timeout=15)
            clients.append(c)
            c.send(upgrade_request("/t/%d" % i))
        ends = {}
        for i, c in enumerate(clients):
            r = c.response(timeout=15)
            assert r.status == 101, (i, r.head)
        for _ in range(n):
            be = up.take(15)
            idx = int(be.request.target.rsplit("/", 1)[1])
            assert idx not in ends, "two upstream connections for tunnel %d" % idx
            ends[idx] = be
        assert sorted(ends) == list(range(n))
        streams = []
        for i, c in enumerate(clients):
            cl = End(c.sock, c.reader, "client%d" % i)
            be = ends[i]
            streams.append(Stream(cl, be, payload(size + i, "u%d" % i), "c%d->u" % i))
            streams.append(Stream(be, cl, payload(size + 2 * i, "d%d" % i), "u%d->c" % i))
        pump(streams, timeout=40)
        assert_pumped(streams)
        # and they end independently: close the even ones, the odd ones still work
        for i in range(0, n, 2):
            clients[i].sock.shutdown(1)
            ends[i].shutdown_write()
        for i in range(0, n, 2):
            assert End(clients[i].sock, clients[i].reader, "c%d" % i).wait_end(10)[0] == "eof"
        odd = []
        for i in range(1, n, 2):
            cl = End(clients[i].sock, clients[i].reader, "client%d" % i)
            odd.append(Stream(cl, ends[i], b"again-%d" % i))
            odd.append(Stream(ends[i], cl, b"back-%d" % i))
        pump(odd, timeout=20)
        assert_pumped(odd)
        tl = px.wait_log(lambda e: e.get("type") == "tunnel", n=n // 2, timeout=10)
        assert all(e["reason"] == "eof" for e in tl), [e for e in tl if e["reason"] != "eof"][:3]
    finally:
        for c in clients:
            c.close()
