"""Interop for h2c (HTTP/1.1 Upgrade to cleartext HTTP/2, RFC 7540 §3.2) with
nghttp2's own tools: `nghttp -u` (Debian nghttp2-client) is the client,
`nghttpx` (Debian nghttp2-proxy) with a no-tls frontend is the h2c-speaking
backend, and sy-demo sits behind nghttpx.

    nghttp -u --HTTP/1.1 Upgrade--> switchyard --> nghttpx (h2c) --> sy-demo

A route that names h2c lets the upgrade through and the response comes back
over HTTP/2; a route that does not name it (allow_upgrades absent, ["*"], or
other tokens) strips the offer and the request is served as plain HTTP/1.1.
Skipped with a message when nghttp or nghttpx is not installed."""
import json
import re

import pytest

from support.interop import (children, find_tool, start_sy_demo, free_port,  # noqa: F401
                             port_accepts, wait_until)

ACCESS_FORMAT = '$remote_addr "$request" $status alpn=$alpn upgrade=$http_upgrade'


@pytest.fixture
def nghttp():
    return find_tool("nghttp", "nghttp2-client")


@pytest.fixture
def nghttpx_backend(children, tmp_path):
    """nghttpx (no-tls frontend, so it accepts Upgrade: h2c) in front of
    sy-demo; returns the child (its stdout is the access log) and its address."""
    nghttpx = find_tool("nghttpx", "nghttp2-proxy")
    _, demo = start_sy_demo(children)
    host, dport = demo.split(":")
    for attempt in range(3):
        port = free_port()
        c = children.start([nghttpx, "--conf=/dev/null", "-f127.0.0.1,%d;no-tls" % port,
                            "-b%s,%s" % (host, dport), "-n1", "--no-ocsp",
                            "--errorlog-file=/dev/stderr", "--accesslog-file=/dev/stdout",
                            "--accesslog-format=" + ACCESS_FORMAT,
                            "--pid-file=%s" % (tmp_path / ("nghttpx%d.pid" % attempt))],
                           "nghttpx-%d" % attempt, cwd=str(tmp_path))
        wait_until(lambda: port_accepts(port) or c.proc.poll() is not None, 15,
                   "nghttpx to listen on %d" % port)
        if c.proc.poll() is None:
            return c, "127.0.0.1:%d" % port
        if "in use" not in c.stderr().lower():
            break
    raise AssertionError("nghttpx did not start:\n%s" % c.stderr())


def run_nghttp(children, nghttp, *urls, timeout=20):
    c = children.start([nghttp, "-u", "-v", "--timeout=10"] + list(urls), "nghttp")
    rc = c.wait(timeout)
    return rc, c.stdout().replace("\r\n", "\n"), c.stderr()


def access_lines(nghttpx_child, n, timeout=10):
    def lines():
        return [ln for ln in nghttpx_child.stdout().splitlines() if ln.startswith("127.0.0.1 ")]
    wait_until(lambda: len(lines()) >= n, timeout, "%d nghttpx access log lines; stdout:\n%s"
               % (n, nghttpx_child.stdout()))
    return lines()


def proxy_to(proxy, addr, **route):
    r = {"match": {"path_prefix": "/"}, "upstream": "h2"}
    r.update(route)
    return proxy(upstreams={"h2": [addr]}, routes=[r])


def test_h2c_upgrade_through_route_that_names_it(proxy, children, nghttp, nghttpx_backend):
    nx, addr = nghttpx_backend
    px = proxy_to(proxy, addr, allow_upgrades=["h2c"])
    rc, out, err = run_nghttp(children, nghttp, "http://127.0.0.1:%d/echo" % px.port)
    assert rc == 0, "nghttp rc %s\n%s\n%s" % (rc, out, err)
    # the HTTP/1.1 upgrade request, as nghttp sent it
    assert "upgrade: h2c" in out and "http2-settings:" in out, out
    # the 101 relayed by the proxy, then HTTP/2 frames on the same connection
    m = re.search(r"HTTP Upgrade response\n(HTTP/1\.1 101 [^\n]*)\n(.*?)\n\n", out, re.S)
    assert m, "no 101 in nghttp's output:\n%s" % out
    assert re.search(r"(?im)^upgrade: h2c$", m.group(2)), m.group(0)
    assert "HTTP Upgrade success" in out
    assert re.search(r"recv SETTINGS frame <length=\d+, flags=0x00, stream_id=0>", out), out
    # (the server's SETTINGS ACK may come after nghttp is done: not asserted)
    assert "recv (stream_id=1) :status: 200" in out, out
    assert re.search(r"recv HEADERS frame <[^>]*stream_id=1>", out), out
    assert re.search(r"recv DATA frame <[^>]*flags=0x01, stream_id=1>", out), out  # END_STREAM
    assert '"path": "/echo"' in out  # sy-demo's echo body arrived over HTTP/2
    assert "HTTP Upgrade failed" not in out
    # nghttpx saw the upgrade and served the request as h2c
    line = access_lines(nx, 1)[0]
    assert '"GET /echo HTTP/1.1" 200 alpn=h2c upgrade=h2c' in line, line
    # the proxy logged the switch and a tunnel of protocol h2c
    px.wait_log(lambda e: e.get("type") == "request" and e.get("status") == 101)
    tun = px.wait_log(lambda e: e.get("type") == "tunnel")[0]
    assert tun["protocol"] == "h2c"
    assert not px.crashed()


def test_h2c_later_streams_bypass_routing(proxy, children, nghttp, nghttpx_backend):
    """Why h2c is opt-in: after the switch, further requests are HTTP/2 streams
    in the tunnel; the proxy sees (and routes, and logs) only the first."""
    nx, addr = nghttpx_backend
    px = proxy_to(proxy, addr, allow_upgrades=["h2c"])
    base = "http://127.0.0.1:%d" % px.port
    rc, out, err = run_nghttp(children, nghttp, base + "/echo", base + "/healthz")
    assert rc == 0, "nghttp rc %s\n%s\n%s" % (rc, out, err)
    assert "HTTP/1.1 101 " in out
    assert "recv (stream_id=1) :status: 200" in out
    later = [s for s in re.findall(r"recv \(stream_id=(\d+)\) :status: 200", out) if s != "1"]
    assert len(later) == 1, out  # the second request: a later stream of the same connection
    lines = access_lines(nx, 2)
    assert any('"GET /healthz HTTP/2" 200 alpn=h2c' in ln for ln in lines), lines
    px.wait_log(lambda e: e.get("type") == "tunnel")
    reqs = [e for e in px.log_entries() if e.get("type") == "request"]
    assert [e["path"] for e in reqs] == ["/echo"], reqs


@pytest.mark.parametrize("route", [{}, {"allow_upgrades": ["*"]},
                                   {"allow_upgrades": ["websocket", "TLS/1.0"]}],
                         ids=["default", "star", "other-tokens"])
def test_h2c_not_named_is_plain_http11(proxy, children, nghttp, nghttpx_backend, route):
    nx, addr = nghttpx_backend
    px = proxy_to(proxy, addr, **route)
    rc, out, err = run_nghttp(children, nghttp, "http://127.0.0.1:%d/echo" % px.port)
    assert "upgrade: h2c" in out  # nghttp did offer it
    m = re.search(r"HTTP Upgrade response\n(HTTP/1\.1 (\d+) [^\n]*)\n", out)
    assert m, "no upgrade response in nghttp's output (rc %s):\n%s\n%s" % (rc, out, err)
    assert m.group(2) == "200", m.group(1)
    assert "101" not in m.group(1)
    assert "HTTP Upgrade success" not in out
    assert "recv SETTINGS frame" not in out and "stream_id=1" not in out, out
    assert '"path": "/echo"' in out  # served over HTTP/1.1 all the same
    # nghttpx got a plain HTTP/1.1 request without the Upgrade offer
    line = access_lines(nx, 1)[0]
    assert '"GET /echo HTTP/1.1" 200 alpn=http/1.1 upgrade=-' in line, line
    px.wait_log(lambda e: e.get("type") == "request" and e.get("status") == 200)
    assert not any(e.get("type") == "tunnel" for e in px.log_entries())


def test_h2c_upgrade_with_body_via_options_asterisk(proxy, children, nghttp, nghttpx_backend, tmp_path):
    """`nghttp -u -d FILE` upgrades with `OPTIONS *` and sends the POST as the
    first HTTP/2 stream. "*" is under no path prefix, so the route matches on
    nothing but its upstream (match: {})."""
    nx, addr = nghttpx_backend
    px = proxy(upstreams={"h2": [addr]},
               routes=[{"match": {}, "upstream": "h2", "allow_upgrades": ["h2c"]}])
    body = tmp_path / "body.bin"
    body.write_bytes(bytes(range(256)) * 400)  # 102400 bytes: several DATA frames
    c = children.start([nghttp, "-u", "-v", "--timeout=10", "-d", str(body),
                        "http://127.0.0.1:%d/echo" % px.port], "nghttp-post")
    rc = c.wait(20)
    out = c.stdout().replace("\r\n", "\n")
    assert rc == 0, "nghttp rc %s\n%s\n%s" % (rc, out, c.stderr())
    assert "OPTIONS * HTTP/1.1" in out
    assert re.search(r"HTTP Upgrade response\nHTTP/1\.1 101 ", out), out
    sid = re.search(r"send HEADERS frame <[^>]*stream_id=(\d+)>[^[]*\n[^\n]*:method: POST", out)
    assert sid, out
    assert "recv (stream_id=%s) :status: 200" % sid.group(1) in out, out
    assert '"body_length": 102400' in out, out  # sy-demo got the whole body
    lines = access_lines(nx, 2)
    assert any(ln.startswith('127.0.0.1 "OPTIONS * HTTP/1.1"') and "upgrade=h2c" in ln for ln in lines), lines
    assert any('"POST /echo HTTP/2" 200 alpn=h2c' in ln for ln in lines), lines
    tun = px.wait_log(lambda e: e.get("type") == "tunnel")[0]
    assert tun["protocol"] == "h2c" and tun["path"] == "*"
    assert tun["bytes_to_upstream"] > 102400


@pytest.mark.parametrize("allow", [True, False], ids=["h2c-allowed", "h2c-not-named"])
def test_h2c_offer_to_http11_only_backend(proxy, children, nghttp, allow):
    """sy-demo speaks only HTTP/1.1 and ignores the offer: nghttp falls back to
    HTTP/1.1 either way. Its /echo shows what the proxy forwarded: with h2c
    allowed, Upgrade: h2c, Connection: upgrade and HTTP2-Settings (the header
    the protocol needs); without, none of the three."""
    _, addr = start_sy_demo(children)
    route = {"match": {"path_prefix": "/"}, "upstream": "demo"}
    if allow:
        route["allow_upgrades"] = ["h2c"]
    px = proxy(upstreams={"demo": [addr]}, routes=[route])
    rc, out, err = run_nghttp(children, nghttp, "http://127.0.0.1:%d/echo" % px.port)
    m = re.search(r"HTTP Upgrade response\n(HTTP/1\.1 (\d+) [^\n]*)\n", out)
    assert m and m.group(2) == "200", "rc %s\n%s\n%s" % (rc, out, err)
    assert "HTTP Upgrade success" not in out
    body = out[out.index("{"):out.rindex("}") + 1]
    headers = [h.split(":", 1)[0].strip().lower() for h in json.loads(body)["headers"]]
    lines = json.loads(body)["headers"]
    if allow:
        assert "upgrade: h2c" in [h.lower() for h in lines], lines
        conn = [h.split(":", 1)[1] for h in lines if h.lower().startswith("connection:")]
        assert len(conn) == 1, lines
        assert {t.strip().lower() for t in conn[0].split(",")} == {"upgrade", "http2-settings"}, lines
        assert any(h.lower().startswith("http2-settings: ") for h in lines), lines
    else:
        assert not {"upgrade", "http2-settings", "connection"} & set(headers), lines
    px.wait_log(lambda e: e.get("type") == "request" and e.get("status") == 200)
    assert not any(e.get("type") == "tunnel" for e in px.log_entries())
