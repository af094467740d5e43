"""IPv6: a "[::]:PORT" listener is dual-stack (IPv6 and IPv4 clients on one
socket), "[::1]:PORT" upstreams are connected to for requests and tunnels, and
an IPv6 client's address reaches X-Forwarded-For. Skipped when the host has no
IPv6 loopback.

An IPv4 client on a dual-stack socket is written as 127.0.0.1 (not
::ffff:127.0.0.1) everywhere, and the access log gives an IPv6 client's
address and port as separate fields (no bracket or port glued on)."""
import json
import os
import shutil
import socket
import subprocess

import pytest

from conftest import switchyard_bin
from support.backend import free_port
from support.http import get, wait_until
from support.interop import Children
from support.tunnel import Upgrader, switching, upgrade_request, open_tunnel


def _ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) here")


def v6_request(port, data, timeout=10.0):
    """One request to [::1]:port; returns the raw response bytes (Connection: close)."""
    with socket.create_connection(("::1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def get_close(path):
    return get(path, extra=b"Connection: close\r\n")


def dual(port):
    return [{"address": "[::]:%d" % port}]


def forwarded_for(be, n):
    """X-Forwarded-For of each of the first n requests the backend got."""
    be.wait_requests(n)
    return [r.value("X-Forwarded-For") for r in be.requests[:n]]


def test_dual_stack_listener_and_ipv6_upstream(proxy, backend):
    be = backend(host="::1")
    assert be.address.startswith("[::1]:")
    px = proxy(upstreams={"web": [be.address]}, listeners=dual)
    # IPv4 client on the [::] socket (the start-up probe already got in this way).
    r = px.request(get("/over-v4"))
    assert r.status == 200 and r.body == b"/over-v4", r.head
    # IPv6 client on the same socket.
    raw = v6_request(px.port, get_close("/over-v6"))
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    assert raw.endswith(b"/over-v6"), raw[-200:]
    # Both went to the IPv6 upstream, from the proxy's IPv6 address.
    be.wait_requests(2)
    assert [r.target for r in be.requests] == ["/over-v4", "/over-v6"]
    assert all(c.peer[0] == "::1" for c in be.conns), [c.peer for c in be.conns]
    xff = forwarded_for(be, 2)
    assert xff[1] == "::1", xff
    log = px.wait_log(lambda e: e.get("type") == "request" and e["path"].startswith("/over"), n=2)
    assert [e["path"] for e in log] == ["/over-v4", "/over-v6"], log
    assert all(e["upstream"] == be.address for e in log), log


def test_ipv6_only_listener(proxy, backend):
    be = backend()
    v6port = []

    def listeners(port):
        # 127.0.0.1:port for the start-up probe, and [::1] on a port of its own
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        v6port.append(s.getsockname()[1])
        s.close()
        return [{"address": "127.0.0.1:%d" % port}, {"address": "[::1]:%d" % v6port[-1]}]

    px = proxy(upstreams={"web": [be.address]}, listeners=listeners)
    raw = v6_request(v6port[-1], get_close("/v6-only"))
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"/v6-only"), raw[:300]
    # Only ::1 listens there: 127.0.0.1 on that port is refused.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", v6port[-1]), timeout=2).close()
    assert px.request(get("/v4")).status == 200


def test_tunnel_to_an_ipv6_upstream(proxy, backend):
    up = Upgrader(lambda **kw: backend(host="::1", **kw), switching(), name="v6-upgrader")
    try:
        px = proxy(upstreams={"ws": [up.address]}, listeners=dual)
        c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws/v6"))
        try:
            assert be.conn.peer[0] == "::1"
            cl.send(b"ping over v6")
            be.expect(b"ping over v6")
            be.send(b"pong")
            cl.expect(b"pong")
        finally:
            c.close()
            be.close()
    finally:
        up.release()


NETNS_TOOLS = [shutil.which(t) or "/usr/sbin/" + t for t in ("unshare", "nsenter", "ip", "curl")]


@pytest.mark.skipif(os.geteuid() != 0 or not all(os.access(t, os.X_OK) for t in NETNS_TOOLS),
                    reason="needs root, unshare, nsenter, ip and curl (a network namespace)")
def test_dual_stack_even_where_the_host_defaults_to_ipv6_only(tmp_path):
    """net.ipv6.bindv6only=1 (per network namespace, so set in a private one)
    makes a plain [::] socket IPv6-only; the listener still takes IPv4."""
    unshare, nsenter, ip, curl = NETNS_TOOLS
    port = free_port()
    cfg = tmp_path / "v6only.yaml"
    cfg.write_text('listeners: [{address: "[::]:%d"}]\n' % port)
    children = Children()
    try:
        px = children.start([unshare, "--net", "--", "sh", "-c",
                             "%s link set lo up && echo 1 > /proc/sys/net/ipv6/bindv6only && "
                             "exec %s -c %s" % (ip, switchyard_bin(), cfg)], "proxy-v6only")

        def status(host):
            r = subprocess.run([nsenter, "--net=/proc/%d/ns/net" % px.pid, "--", curl, "-s",
                                "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
                                "http://%s:%d/" % (host, port)],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            return r.stdout.decode()

        # No route: the proxy's own 404 proves the [::] socket accepted.
        wait_until(lambda: px.proc.poll() is not None or status("[::1]") == "404", 10,
                   "the proxy to answer in its namespace", interval=0.1)
        assert px.proc.poll() is None, px.stderr()
        r = subprocess.run([nsenter, "--net=/proc/%d/ns/net" % px.pid, "--", "cat",
                            "/proc/sys/net/ipv6/bindv6only"], capture_output=True, timeout=10)
        assert r.stdout.strip() == b"1", r
        assert status("127.0.0.1") == "404", "IPv4 refused by the [::] listener"
        px.proc.send_signal(15)
        assert px.wait(10) == 0, px.stderr()
    finally:
        children.stop_all()


def test_ipv4_client_on_dual_stack_socket_is_written_as_ipv4(proxy, backend):
    be = backend()
    px = proxy(upstreams={"web": [be.address]}, listeners=dual)
    assert px.request(get("/mapped")).status == 200
    xff = forwarded_for(be, 1)
    assert xff == ["127.0.0.1"], xff
    entry = px.wait_log(lambda e: e.get("path") == "/mapped")[0]
    assert entry["client_ip"] == "127.0.0.1", entry


def test_ipv6_client_in_the_access_log_is_split(proxy, backend):
    be = backend()
    px = proxy(upstreams={"web": [be.address]}, listeners=dual)
    raw = v6_request(px.port, get_close("/bracket"))
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    entry = px.wait_log(lambda e: e.get("path") == "/bracket")[0]
    assert entry["client_ip"] == "::1" and isinstance(entry["client_port"], int), \
        json.dumps(entry)
