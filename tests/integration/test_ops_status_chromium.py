"""The admin /status page in headless Chromium (--dump-dom): its script fetches
/status.json and fills the tables with the tunnels and upstreams the test set up.
Skipped with a message when chromium is not installed."""
from support.http import response_bytes
from support.ops import AdminPort, chromium_dump_dom, parse_tables
from support.tunnel import upgrader, upgrade_request, open_tunnel, switching  # noqa: F401


def test_status_page_shows_open_tunnels(proxy, backend, upgrader, tmp_path):
    from support.interop import chromium_bin
    chromium_bin()  # skip early when it is missing
    chat, feed = upgrader(name="chat"), upgrader(answer=switching("feedproto"), name="feed")
    web = backend(response=response_bytes(200, body=b"x"))
    adm = AdminPort()
    px = proxy(upstreams={"chat": [chat.address], "feed": [feed.address], "web": [web.address]},
               routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"},
                       {"match": {"path_prefix": "/feed"}, "upstream": "feed"},
                       {"name": "web", "match": {"path_prefix": "/"}, "upstream": "web"}],
               admin=adm.config)
    opened = []
    try:
        for i in range(3):
            opened.append(open_tunnel(px, chat, upgrade_request("/chat/%d" % i)))
        opened.append(open_tunnel(px, feed, upgrade_request("/feed/0", upgrade="feedproto", ws=False)))
        # one chat tunnel that already ended: total 4, open 3
        c, cl, be, _ = open_tunnel(px, chat, upgrade_request("/chat/gone"))
        c.close()
        be.close()
        adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 4 and
                        m.get("switchyard_tunnels_total") == 5, 5, "4 open tunnels of 5")

        dom = chromium_dump_dom("http://127.0.0.1:%d/status" % adm.port, tmp_path / "profile")
        tables, texts = parse_tables(dom)
        assert "tunnels" in tables and "upstreams" in tables, dom[:3000]
        rows = tables["tunnels"]
        assert rows[0] == ["route", "protocol", "open", "total"], rows
        body = sorted(rows[1:])
        assert body == [["#1", "feedproto", "1", "1"], ["chat", "websocket", "3", "4"]], \
            "tunnel rows on the status page: %r\nDOM:\n%s" % (rows, dom[:4000])
        assert texts.get("tunnels_open", "").strip() == "4", texts
        assert texts.get("generation", "").strip() == "0", texts
        assert texts.get("updated", "").strip() not in ("", "never"), texts
        ups = {r[0]: r for r in tables["upstreams"][1:]}
        assert ups["chat"] == ["chat", chat.address, "up", "3"], tables["upstreams"]
        assert ups["feed"] == ["feed", feed.address, "up", "1"], tables["upstreams"]
        assert ups["web"] == ["web", web.address, "up", "0"], tables["upstreams"]
    finally:
        for c, cl, be, _ in opened:
            c.close()
            be.close()
