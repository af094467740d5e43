"""TLS and reload (SIGHUP): certificates are re-read (rotation), a broken
certificate refuses the reload and the running contexts keep serving, a
listener switches between cleartext and TLS on the same address, upstream TLS
settings change for new requests, and open TLS connections/tunnels carry on
with the context they started with."""
import copy
import shutil

from support.http import Reader, read_response, deadline_in, response_bytes, get
from support.ops import reload
from support.tls import (pki, tls_proxy, tls_backend, client_ctx, server_ctx,  # noqa: F401
                         tls_connect, TLSEnd, read_response_over)
from support.tunnel import upgrader, upgrade_request  # noqa: F401


def named(name):
    return response_bytes(200, body=name.encode())


def cert_served(port, pki, sni=None):
    t = tls_connect(port, client_ctx(pki.ca, check_hostname=False), server_hostname=sni)
    try:
        return t.peer_der()
    finally:
        t.close()


def install(pair, d):
    """Copy a certificate and key to the fixed names the config uses."""
    shutil.copy(pair.cert, d / "site.pem")
    shutil.copy(pair.key, d / "site.key")


def test_certificate_rotation(tls_proxy, backend, upgrader, pki, tmp_path):
    be = backend(response=named("web"))
    up = upgrader()
    install(pki.a, tmp_path)
    px = tls_proxy([{"tls": {"certificates": [{"cert": str(tmp_path / "site.pem"),
                                                "key": str(tmp_path / "site.key")}]}}],
                   upstreams={"web": [be.address], "ws": [up.address]},
                   routes=[{"match": {"path_prefix": "/ws"}, "upstream": "ws"},
                           {"match": {"path_prefix": "/"}, "upstream": "web"}])
    assert cert_served(px.port, pki) == pki.der(pki.a.cert)
    # an open keep-alive connection and an open TLS tunnel, made before the reload
    ka = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
    ka_r = Reader(ka)
    ka.sendall(get("/before"))
    assert read_response(ka_r, deadline_in(10)).body == b"web"
    tun = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
    try:
        tun_r = Reader(tun)
        tun.sendall(upgrade_request("/ws/rot"))
        assert read_response(tun_r, deadline_in(10)).status == 101
        tbe = up.take()
        cl = TLSEnd(tun, tun_r, "client")
        install(pki.b, tmp_path)
        line = reload(px)
        assert "reloaded" in line, line
        # new connections get the new certificate ...
        assert cert_served(px.port, pki) == pki.der(pki.b.cert), "the reload did not re-read the certificate"
        t = tls_connect(px.port, client_ctx(pki.ca), server_hostname="b.example.test")
        t.sendall(get("/after"))
        assert read_response_over(t).body == b"web"
        t.close()
        # ... and what was open before carries on
        ka.sendall(get("/still"))
        assert read_response(ka_r, deadline_in(10)).body == b"web"
        cl.send(b"tunnel after reload")
        tbe.expect(b"tunnel after reload")
        tbe.send(b"and back")
        cl.expect(b"and back")
        cl.shutdown_write()
        tbe.shutdown_write()
        assert tbe.wait_end(5) == ("eof", b"")
        assert cl.wait_end(5) == ("close_notify", b"")
    finally:
        ka.close()
        tun.close()
    assert not px.crashed()


def test_reload_with_broken_certificate_keeps_serving(tls_proxy, backend, pki, tmp_path):
    be = backend(response=named("web"))
    install(pki.a, tmp_path)
    px = tls_proxy([{"tls": {"certificates": [{"cert": str(tmp_path / "site.pem"),
                                                "key": str(tmp_path / "site.key")}]}}],
                   upstreams={"web": [be.address]})
    shutil.copy(pki.mismatch_key, tmp_path / "site.key")   # a bad rotation
    line = reload(px)
    assert "reload refused, running configuration kept: %s:" % px.config_path in line, line
    assert "does not match" in line, line
    # the running context still has the old pair in memory
    assert cert_served(px.port, pki) == pki.der(pki.a.cert)
    t = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
    t.sendall(get("/x"))
    assert read_response_over(t).body == b"web"
    t.close()
    # fixed files: the next reload applies them
    install(pki.b, tmp_path)
    assert "reloaded" in reload(px)
    assert cert_served(px.port, pki) == pki.der(pki.b.cert)


def test_listener_switches_between_cleartext_and_tls(tls_proxy, backend, pki):
    be = backend(response=named("web"))
    px = tls_proxy([{}], upstreams={"web": [be.address]})
    from conftest import Client
    plain = Client(px.port)
    assert plain.request(get("/plain")).body == b"web"
    original = copy.deepcopy(px.config)
    cfg = copy.deepcopy(px.config)
    cfg["listeners"][0]["tls"] = {"certificates": [pki.a.entry()]}
    assert "reloaded" in reload(px, cfg)
    try:
        # new connections speak TLS on the same address ...
        t = tls_connect(px.port, client_ctx(pki.ca), server_hostname="a.example.test")
        t.sendall(get("/tls"))
        r = read_response_over(t)
        assert r.body == b"web"
        # ... the cleartext connection from before stays cleartext
        assert plain.request(get("/plain-again")).body == b"web"
        # and back: TLS off again; the TLS connection from before carries on
        assert "reloaded" in reload(px, original)
        assert Client(px.port).request(get("/plain-new")).body == b"web"
        t.sendall(get("/tls-again"))
        assert read_response_over(t).body == b"web"
        t.close()
    finally:
        plain.close()
    protos = [q.values("x-forwarded-proto") for q in be.requests]
    assert protos == [["http"], ["https"], ["http"], ["http"], ["https"]], protos


def test_upstream_tls_settings_reloaded(proxy, tls_backend, pki):
    be = tls_backend(server_ctx(pki.backend_ip))
    ups = {"sec": {"servers": [{"address": be.address}], "tls": {"ca": pki.other_ca}}}
    px = proxy(upstreams=ups)
    with px.connect() as c:
        assert c.request(get("/1")).status == 502
    cfg = copy.deepcopy(px.config)
    cfg["upstreams"]["sec"]["tls"]["ca"] = pki.ca
    assert "reloaded" in reload(px, cfg)
    with px.connect() as c:
        r = c.request(get("/2"))
        assert r.status == 200, r.head
