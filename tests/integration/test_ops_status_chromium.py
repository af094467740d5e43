"""The admin /status page in headless Chromium (--dump-dom): its script fetches
/status.json and fills the cards, graphs and tables with the traffic the test
produced; a screenshot of the page is saved (path printed). Skipped with a
message when chromium is not installed."""
import os
import re
import struct

from conftest import BUILD_DIR
from support.http import response_bytes
from support.ops import AdminPort, chromium_dump_dom, chromium_screenshot, parse_tables, reload, \
    wait_until
from support.tunnel import upgrader, upgrade_request, open_tunnel, switching  # noqa: F401

LATENCY = re.compile(r"^\d+(\.\d+)? ms$")


def screenshot_path(tmp_path):
    """Under the build directory when it is writable (kept after the run),
    else pytest's tmp_path."""
    d = BUILD_DIR / "test-artifacts"
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(str(d), os.W_OK):
            return d / "status-page.png"
    except OSError:
        pass
    return tmp_path / "status-page.png"


def test_status_page_shows_traffic(proxy, backend, upgrader, tmp_path):
    from support.interop import chromium_bin
    chromium_bin()  # skip early when it is missing
    chat, feed = upgrader(name="chat"), upgrader(answer=switching("feedproto"), name="feed")
    web = backend(response=response_bytes(200, body=b"x"))
    oops = backend(response=response_bytes(500, body=b"broken"))
    adm = AdminPort()
    px = proxy(upstreams={"chat": [chat.address], "feed": [feed.address], "web": [web.address],
                          "oops": [oops.address]},
               routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"},
                       {"match": {"path_prefix": "/feed"}, "upstream": "feed"},
                       {"name": "oops", "match": {"path_prefix": "/oops"}, "upstream": "oops"},
                       {"name": "web", "match": {"path_prefix": "/"}, "upstream": "web"}],
               admin=adm.config)
    # the admin listener takes its baseline sample when it starts: wait for it
    # so every request below falls inside the graphs' window
    assert adm.get("/healthz").status == 200
    opened = []
    try:
        for i in range(6):
            assert px.request(b"GET /page/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i).status == 200
        for i in range(3):
            assert px.request(b"GET /oops/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i).status == 500
        for i in range(3):
            opened.append(open_tunnel(px, chat, upgrade_request("/chat/%d" % i)))
        opened.append(open_tunnel(px, feed, upgrade_request("/feed/0", upgrade="feedproto", ws=False)))
        # one chat tunnel that moved 300 + 400 bytes and ended: total 4, open 3
        c, cl, be, _ = open_tunnel(px, chat, upgrade_request("/chat/gone"))
        cl.send(b"a" * 300)
        be.expect(b"a" * 300)
        be.send(b"b" * 400)
        cl.expect(b"b" * 400)
        c.close()
        be.close()
        m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 4 and
                            m.get("switchyard_tunnels_total") == 5 and
                            m.get("switchyard_tunnel_bytes_total") == 700, 5,
                            "4 open tunnels of 5, 700 tunnel bytes")
        total_requests = m.get("switchyard_requests_total")
        assert total_requests == 6 + 3 + 5, m.text  # the 101s count too
        # a refused reload shows as the last reload result
        assert "reload refused" in reload(px, text="listeners: []\n")

        # the 1-second samples catch up with the counters
        def window_complete():
            h = adm.status()["history"]
            return (sum(h["requests_per_s"]) == total_requests and sum(h["errors_per_s"]) == 3
                    and sum(h["tunnel_bytes_per_s"]) == 700 and h["tunnels_open"][-1] == 4)
        wait_until(window_complete, 5, "the status history to include every request and byte")
        st = adm.status()
        assert st["last_reload"]["ok"] is False and "listeners" in st["last_reload"]["error"], st
        assert st["last_reload"]["time"] >= st["started"], st

        dom = chromium_dump_dom("http://127.0.0.1:%d/status" % adm.port, tmp_path / "profile")
        tables, texts = parse_tables(dom)
        for t in ("tunnels", "routes", "servers", "counts"):
            assert t in tables, (t, dom[:3000])

        # cards and header
        assert texts.get("tunnels_open", "").strip() == "4", texts
        assert texts.get("generation", "").strip() == "0", texts
        assert texts.get("updated", "").strip() not in ("", "never"), texts
        assert texts.get("reload", "").startswith("failed at 20"), texts
        assert texts.get("w_requests", "").strip() == "14", texts
        assert texts.get("w_errors", "").strip() == "3", texts
        assert texts.get("w_bytes", "").strip() == "700 B", texts
        assert texts.get("w_tunnels", "").strip() == "4", texts
        assert texts.get("requests", "").strip() == "14", texts
        for g in ("g_requests", "g_errors", "g_tunnels", "g_bytes"):
            svg = re.search(r'<svg id="%s"[^>]*data-points="(\d+)"[^>]*>(.*?)</svg>' % g, dom, re.S)
            assert svg, "graph %s not drawn:\n%s" % (g, dom[:4000])
            assert int(svg.group(1)) >= 1 and "<polyline" in svg.group(2), svg.group(0)[:500]

        # routes: requests, 5xx, share, latency when the histogram exists
        rows = tables["routes"]
        assert rows[0] == ["route", "requests", "5xx", "5xx %", "avg latency", "p95 latency",
                           "tunnels open", "tunnel bytes"], rows
        routes = {r[0]: r for r in rows[1:]}
        assert sorted(routes) == ["#1", "chat", "oops", "web"], rows
        assert routes["web"][1:4] == ["6", "0", "0.0"], rows
        assert routes["oops"][1:4] == ["3", "3", "100.0"], rows
        assert routes["chat"][1:3] == ["4", "0"] and routes["chat"][6] == "3", rows
        assert routes["#1"][1] == "1" and routes["#1"][6] == "1", rows
        for name in ("web", "oops"):
            measured = m.has("switchyard_request_duration_seconds_count", route=name)
            for cell in routes[name][4:6]:
                assert (LATENCY.match(cell) if measured else cell == "-"), (name, measured, rows)

        # servers: health and active connections always; requests and 5xx from
        # the per-server family when the proxy exports it
        rows = tables["servers"]
        assert rows[0] == ["upstream", "server", "health", "active connections", "requests", "5xx",
                           "connect failures"], rows
        srv = {r[0]: r for r in rows[1:]}
        assert srv["chat"][:4] == ["chat", chat.address, "up", "3"], rows
        assert srv["feed"][:4] == ["feed", feed.address, "up", "1"], rows
        assert srv["web"][:4] == ["web", web.address, "up", "0"], rows
        for name, addr, n, errors in (("web", web.address, "6", "0"), ("oops", oops.address, "3", "3")):
            if m.has("switchyard_upstream_requests_total", upstream=name, server=addr):
                assert srv[name][4:6] == [n, errors], rows
            else:
                assert srv[name][4:6] == ["-", "-"], rows

        rows = tables["tunnels"]
        assert rows[0] == ["route", "protocol", "open", "total"], rows
        # "feedproto" is let through by the route's default "*" but is no
        # well-known token: its label is "other" (no client-made series)
        assert sorted(rows[1:]) == [["#1", "other", "1", "1"], ["chat", "websocket", "3", "4"]], \
            "tunnel rows on the status page: %r\nDOM:\n%s" % (rows, dom[:4000])

        png = screenshot_path(tmp_path)
        data = chromium_screenshot("http://127.0.0.1:%d/status" % adm.port, tmp_path / "profile2",
                                   str(png), size=(1280, 1100))
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (1280, 1100), (width, height)
        assert len(data) > 20000, "screenshot suspiciously small (%d bytes): blank page?" % len(data)
        print("status page screenshot: %s" % png)
    finally:
        for c, cl, be, _ in opened:
            c.close()
            be.close()


def test_status_page_with_token(proxy, backend, tmp_path):
    """With admin.token the page and its data need the token; Chromium gets a
    401 without it (what a browser turns into a login prompt)."""
    from support.interop import chromium_bin
    chromium_bin()
    adm = AdminPort(token="status-page-token-0123456789")
    px = proxy(upstreams={"web": [backend().address]}, admin=adm.config)
    r = adm.get("/status", headers=[])
    assert r.status == 401, r.head
    dom = chromium_dump_dom("http://127.0.0.1:%d/status" % adm.port, tmp_path / "profile")
    assert "<table" not in dom, dom[:2000]
    # Basic credentials (any user, the token as password), as after a login
    # prompt: the page loads and its script's fetches are let in too
    dom = chromium_dump_dom("http://ops:%s@127.0.0.1:%d/status" % (adm.token, adm.port),
                            tmp_path / "profile2")
    tables, texts = parse_tables(dom)
    assert texts.get("updated", "").strip() not in ("", "never", "failed (retrying)"), texts
    assert [r[:3] for r in tables["servers"][1:]] == [["web", px.config["upstreams"]["web"]["servers"][0]["address"], "up"]], tables
