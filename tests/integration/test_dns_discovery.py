"""DNS discovery against a real DNS server (dnsmasq on a loopback port, its
hosts file rewritten during the test): an upstream given by name follows its
A records (0 -> 1 -> 2 -> 1) within min_ttl plus a second, a tunnel to an
address that left keeps flowing, NXDOMAIN turns into servers when the name
appears, a resolver that never answers gives 503 for its upstream only, and
an answer with hundreds of records is capped.

Backends listen on 127.0.0.2, 127.0.0.3, ... with one port, as pods behind a
headless Service do."""
import socket
import time
from pathlib import Path

import pytest

from conftest import VALGRIND
from support.backend import Backend, free_port
from support.dns import Dnsmasq, dnsmasq_bin, DOMAIN
from support.http import response_bytes, get, wait_until
from support.ops import AdminPort, reload
from support.tls import TLSBackend, pki, server_ctx  # noqa: F401
from support.tunnel import Upgrader, switching, upgrade_request, open_tunnel

NAME = "chat." + DOMAIN
MIN_TTL = 1.0
# The proxy follows a change within min_ttl plus a second (dnsmasq's TTL is
# 1 s too); the slack covers a loaded test machine.
FOLLOW = MIN_TTL + 1.0 + 1.5


def _conn_uses_sets():
    src = Path(__file__).resolve().parents[2] / "src"
    return any("sy_upstream_acquire" in p.read_text()
               for p in list(src.glob("conn*.c")) + list(src.glob("conn/*.c")))


pytestmark = [
    pytest.mark.skipif(not dnsmasq_bin(), reason="dnsmasq not installed (dnsmasq-base)"),
    pytest.mark.skipif(not _conn_uses_sets(),
                       reason="the connection code does not pick from server sets yet"),
]


@pytest.fixture
def dns(tmp_path):
    d = Dnsmasq(tmp_path)
    yield d
    d.stop()


@pytest.fixture
def named_backends():
    """Factory: named_backends(2) -> backends on 127.0.0.2, 127.0.0.3, ...
    with one port, each answering its own address as the body."""
    made = []

    def factory(n, port=None):
        for _ in range(20):
            port = port or free_port()
            out = []
            try:
                for i in range(n):
                    host = "127.0.0.%d" % (2 + i)
                    out.append(Backend(response=response_bytes(200, body=host.encode()),
                                       name="be-" + host, host=host, port=port))
            except OSError:  # the port was free on 127.0.0.1 only
                for b in out:
                    b.close()
                port = None
                continue
            made.extend(out)
            return out
        raise AssertionError("no port free on 127.0.0.2-%d" % (1 + n))

    yield factory
    for b in made:
        b.close()


def ask(px, path="/"):
    """(status, body) of one request on a new connection."""
    c = px.connect()
    try:
        c.send(get(path))
        r = c.response(timeout=10)
        return r.status, r.body
    finally:
        c.close()


def answers(px, want_status, want_bodies, timeout):
    """Polls until requests get want_status and, for 200, every body of
    want_bodies (and no other) within a few requests each round."""
    def check():
        seen = set()
        for _ in range(2 * max(1, len(want_bodies)) + 2):
            status, body = ask(px)
            if status != want_status:
                return False
            if status == 200:
                seen.add(body)
        return status != 200 or seen == set(want_bodies)
    return wait_until(check, timeout, "status %d from %r" % (want_status, want_bodies), 0.05)


def dns_proxy(proxy, dns, port, adm=None, extra_upstreams=None, routes=None, **kw):
    ups = {"chat": {"servers": [{"address": "%s:%d" % (NAME, port)}]}}
    ups.update(extra_upstreams or {})
    cfg = dict(upstreams=ups, routes=routes,
               resolver={"nameservers": [dns.nameserver] if dns else [kw.pop("nameserver")],
                         "min_ttl": "1s", "max_ttl": "1m"},
               workers=2, **kw)
    if adm:
        cfg["admin"] = adm.config
    return proxy(**cfg)


def test_follows_records_0_1_2_1(proxy, dns, named_backends):
    a, b = named_backends(2)
    adm = AdminPort()
    px = dns_proxy(proxy, dns, a.port, adm)
    # 0 records: no server, 503, and the proxy says why.
    assert ask(px)[0] == 503
    wait_until(lambda: "chat.dns.test: no such name" in px.stderr(), 5, "the NXDOMAIN log line")
    m = adm.wait_metric(lambda m: m.get("switchyard_dns_resolutions_total", upstream="chat",
                                        result="nxdomain") >= 1, 5, "an nxdomain lookup")
    assert m.one("switchyard_upstream_servers", upstream="chat") == 0

    dns.set_hosts({NAME: ["127.0.0.2"]})
    t0 = time.monotonic()
    answers(px, 200, {b"127.0.0.2"}, FOLLOW)
    took_1 = time.monotonic() - t0

    dns.set_hosts({NAME: ["127.0.0.2", "127.0.0.3"]})
    t0 = time.monotonic()
    answers(px, 200, {b"127.0.0.2", b"127.0.0.3"}, FOLLOW)
    took_2 = time.monotonic() - t0
    m = adm.metrics()
    assert m.one("switchyard_upstream_servers", upstream="chat") == 2
    servers = {s["address"] for u in adm.status()["upstreams"] if u["name"] == "chat"
               for s in u["servers"]}
    assert servers == {"127.0.0.2:%d" % a.port, "127.0.0.3:%d" % a.port}

    dns.set_hosts({NAME: ["127.0.0.3"]})
    t0 = time.monotonic()
    answers(px, 200, {b"127.0.0.3"}, FOLLOW)
    took_3 = time.monotonic() - t0
    # A server that left takes no new connection: many requests, none to .2.
    before = len(a.conns)
    for _ in range(20):
        assert ask(px) == (200, b"127.0.0.3")
    assert len(a.conns) == before
    print("followed the records in %.2f / %.2f / %.2f s" % (took_1, took_2, took_3))
    # One log line per change, not per lookup (dnsmasq's TTL is 1 s: several
    # lookups happened since).
    assert px.stderr().count("chat.dns.test: 2 address(es)") == 1, px.stderr()


def test_a_and_aaaa_records(proxy, dns, named_backends, backend):
    (a,) = named_backends(1)
    try:
        v6 = backend(response=response_bytes(200, body=b"::1"), host="::1", port=a.port)
    except OSError:
        pytest.skip("no IPv6 loopback")
    dns.set_hosts({NAME: ["127.0.0.2", "::1"]})
    adm = AdminPort()
    px = dns_proxy(proxy, dns, a.port, adm)
    answers(px, 200, {b"127.0.0.2", b"::1"}, FOLLOW)
    servers = {s["address"] for u in adm.status()["upstreams"] if u["name"] == "chat"
               for s in u["servers"]}
    assert servers == {"127.0.0.2:%d" % a.port, "[::1]:%d" % v6.port}


def test_health_checks_follow_the_records(proxy, dns, named_backends):
    (a,) = named_backends(1)  # 127.0.0.2 answers; nothing listens on 127.0.0.3
    adm = AdminPort()
    px = proxy(upstreams={"chat": {"servers": [{"address": "%s:%d" % (NAME, a.port)}],
                                   "health": {"interval": "250ms", "timeout": "1s",
                                              "unhealthy": 1}}},
               resolver={"nameservers": [dns.nameserver], "min_ttl": "1s"},
               admin=adm.config, workers=1)
    dead = "127.0.0.3:%d" % a.port
    dns.set_hosts({NAME: ["127.0.0.2", "127.0.0.3"]})
    adm.wait_metric(lambda m: m.get("switchyard_health_checks_total", upstream="chat",
                                    server=dead, result="failed") >= 1
                    and m.get("switchyard_upstream_server_up", upstream="chat", server=dead) == 0
                    and m.has("switchyard_upstream_server_up", upstream="chat", server=dead),
                    FOLLOW + 3, "the new, dead server checked and down")
    for _ in range(6):
        assert ask(px) == (200, b"127.0.0.2")
    # The probe names the server as written, not the address it resolved to.
    probes = [q for q in a.requests if q.values("User-Agent") == ["switchyard-health"]]
    assert probes and all(q.values("Host") == ["%s:%d" % (NAME, a.port)] for q in probes), \
        [q.head for q in probes[:2]]


def test_tls_server_found_by_name_gets_the_name_as_sni(proxy, dns, backend, pki):
    """A TLS upstream given by a DNS name: every address found is verified
    against the name and sent it as SNI (the pod's certificate names the
    Service, never its changing IP)."""
    named = pki.leaf("chat-name", NAME, dns=[NAME])  # no IP SAN
    be = TLSBackend(lambda **kw: backend(host="127.0.0.2", **kw),
                    server_ctx(named, alpn=["http/1.1"]))
    px = proxy(upstreams={"chat": {"servers": [{"address": "%s:%d" % (NAME, be.port)}],
                                   "tls": {"ca": pki.ca}}},
               resolver={"nameservers": [dns.nameserver], "min_ttl": "1s"}, workers=1)
    dns.set_hosts({NAME: ["127.0.0.2"]})
    wait_until(lambda: ask(px)[0] == 200, FOLLOW + 3, "a 200 from the server found by name", 0.05)
    hs = be.wait_handshakes(1)
    assert all("error" not in h and h["sni"] == NAME for h in hs), hs
    assert "TLS handshake failed" not in px.stderr(), px.stderr()


def test_ip_and_name_in_one_upstream(proxy, dns, named_backends, backend):
    (a,) = named_backends(1)
    static = backend(response=response_bytes(200, body=b"static"))
    adm = AdminPort()
    px = proxy(upstreams={"chat": {"servers": [{"address": static.address},
                                               {"address": "%s:%d" % (NAME, a.port)}]}},
               resolver={"nameservers": [dns.nameserver], "min_ttl": "1s"},
               admin=adm.config, workers=1)
    # The name does not resolve yet: the IP entry serves alone.
    answers(px, 200, {b"static"}, 5)
    dns.set_hosts({NAME: ["127.0.0.2"]})
    answers(px, 200, {b"static", b"127.0.0.2"}, FOLLOW)
    assert adm.metrics().one("switchyard_upstream_servers", upstream="chat") == 2
    dns.set_hosts({})
    answers(px, 200, {b"static"}, FOLLOW)


def test_tunnel_to_removed_address_keeps_flowing(proxy, dns, named_backends, backend):
    port = named_backends(1)[0].port  # .2 serves HTTP; the upgrader below is .3
    up = Upgrader(lambda **kw: backend(host="127.0.0.3", port=port, **kw),
                  switching("websocket"), name="ws-.3")
    dns.set_hosts({NAME: ["127.0.0.3"]})
    px = dns_proxy(proxy, dns, port)
    wait_until(lambda: "chat.dns.test: 1 address(es)" in px.stderr(), FOLLOW, "the first answer")
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    try:
        cl.send(b"before")
        be.expect(b"before")
        dns.set_hosts({NAME: ["127.0.0.2"]})
        answers(px, 200, {b"127.0.0.2"}, FOLLOW)
        # The address left the set; its tunnel carries on both ways.
        for i in range(3):
            cl.send(b"ping %d" % i)
            be.expect(b"ping %d" % i)
            be.send(b"pong %d" % i)
            cl.expect(b"pong %d" % i)
    finally:
        c.close()
        up.released.set()


def test_nxdomain_then_appearing_and_reload(proxy, dns, named_backends, tmp_path):
    (a,) = named_backends(1)
    adm = AdminPort()
    px = dns_proxy(proxy, dns, a.port, adm)
    adm.wait_metric(lambda m: m.get("switchyard_dns_resolutions_total", upstream="chat",
                                    result="nxdomain") >= 2, 5, "repeated nxdomain lookups")
    assert ask(px)[0] == 503
    dns.set_hosts({NAME: ["127.0.0.2"]})
    answers(px, 200, {b"127.0.0.2"}, FOLLOW)
    m = adm.metrics()
    assert m.get("switchyard_dns_resolutions_total", upstream="chat", result="ok") >= 1
    assert m.one("switchyard_upstream_servers", upstream="chat") == 1
    # A reload keeps what the name gave: no 503 while it is looked up again.
    new = dict(px.config, timeouts={"connect": "3s"})
    assert "reloaded" in reload(px, new)
    for _ in range(10):
        assert ask(px) == (200, b"127.0.0.2")


def test_resolver_down_503_without_stalling_others(proxy, named_backends, backend):
    (a,) = named_backends(1)
    static = backend(response=response_bytes(200, body=b"static"))
    # A name server that never answers: a bound UDP socket nobody reads.
    mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mute.bind(("127.0.0.1", 0))
    adm = AdminPort()
    try:
        px = dns_proxy(proxy, None, a.port, adm,
                       nameserver="127.0.0.1:%d" % mute.getsockname()[1],
                       extra_upstreams={"static": {"servers": [{"address": static.address}]}},
                       routes=[{"match": {"path_prefix": "/static"}, "upstream": "static"},
                               {"match": {"path_prefix": "/"}, "upstream": "chat"}])
        # Not ready while the first lookup of a name is out (a fresh instance
        # would answer 503 for it): the first attempt alone lasts 1 s.
        r = adm.get("/readyz")
        assert (r.status, r.body) == (503, b"resolving\n"), r.head
        # Lookups time out again and again; meanwhile both upstreams answer
        # at once: 503 for the unresolved one, 200 for the other.
        end = time.monotonic() + 4
        while time.monotonic() < end:
            t0 = time.monotonic()
            assert ask(px, "/static") == (200, b"static")
            assert ask(px, "/")[0] == 503
            # A query attempt lasts 1 s: a request that waited for one takes longer.
            # (Under memcheck everything is slower; the answers still must come.)
            assert VALGRIND or time.monotonic() - t0 < 0.8, "a request waited for DNS"
        adm.wait_metric(lambda m: m.get("switchyard_dns_resolutions_total", upstream="chat",
                                        result="timeout") >= 1, 10, "a timed out lookup")
        assert px.stderr().count("chat.dns.test: lookup failed") == 1, px.stderr()
        # A failure is an answer too: ready, with the name's upstream at 503.
        r = adm.get("/readyz")
        assert (r.status, r.body) == (200, b"ready\n"), r.head
    finally:
        mute.close()


def test_resolver_gone_keeps_last_answer(proxy, dns, named_backends):
    (a,) = named_backends(1)
    dns.set_hosts({NAME: ["127.0.0.2"]})
    px = dns_proxy(proxy, dns, a.port)
    answers(px, 200, {b"127.0.0.2"}, FOLLOW)
    dns.stop()
    wait_until(lambda: "chat.dns.test: lookup failed" in px.stderr(), 10, "a failed lookup")
    for _ in range(10):
        assert ask(px) == (200, b"127.0.0.2")


def test_hundreds_of_records_capped(proxy, dns, named_backends):
    (a,) = named_backends(1)
    many = ["127.0.%d.%d" % (1 + i // 250, 1 + i % 250) for i in range(300)]
    dns.set_hosts({NAME: many})
    adm = AdminPort()
    px = dns_proxy(proxy, dns, a.port, adm)
    m = adm.wait_metric(lambda m: m.get("switchyard_upstream_servers", upstream="chat") > 0,
                        FOLLOW + 5, "servers from a large answer")
    assert m.one("switchyard_upstream_servers", upstream="chat") == 64
    assert m.get("switchyard_dns_records_dropped_total", upstream="chat") >= 300 - 64
    wait_until(lambda: "300 addresses, only 64 used" in px.stderr(), 5, "the cap's log line")
    # The 64 kept are the lowest addresses, the same on every replica.
    kept = {s["address"] for u in adm.status()["upstreams"] if u["name"] == "chat"
            for s in u["servers"]}
    assert kept == {"%s:%d" % (h, a.port) for h in sorted(many, key=socket.inet_aton)[:64]}
    assert px.proc.poll() is None
