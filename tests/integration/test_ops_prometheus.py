"""/metrics as Prometheus sees it: `promtool check metrics` on a scrape after
mixed traffic (hostile label bytes included), the process and per-server
families, and a real Prometheus server (Debian package `prometheus`) scraping
the admin listener every second and answering PromQL over its HTTP API."""
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from support.backend import RefusingAddress, free_port
from support.http import get, response_bytes, wait_until
from support.ops import AdminPort, Metrics
from support.tunnel import (upgrader, upgrade_request, open_tunnel, Stream, pump,  # noqa: F401
                            assert_pumped, payload)

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool missing: scripts/setup.sh --tests")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None,
                                      reason="prometheus missing: scripts/setup.sh --tests")


def promtool_check(body):
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def version_of(binary):
    out = subprocess.run([binary, "-v"], capture_output=True, timeout=10).stdout.decode()
    return out.splitlines()[0].split()[-1]  # "switchyard X.Y.Z", then library versions


class PrometheusServer:
    """A Prometheus on a free loopback port, storage in a temp dir, scraping
    the given targets every second. stop() is always called (fixture)."""

    def __init__(self, tmp_path, targets):
        self.port = free_port()
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: switchyard\n    static_configs:\n"
            "      - targets: [%s]\n" % ", ".join("'%s'" % t for t in targets))
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, "--config.file=%s" % cfg, "--storage.tsdb.path=%s" % (self.dir / "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=str(self.dir))
        wait_until(self._ready, 60, "Prometheus to be ready on port %d" % self.port, interval=0.2)

    def _ready(self):
        assert self.proc.poll() is None, "prometheus exited (%s):\n%s" % (
            self.proc.returncode, self.logtext())
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def logtext(self):
        self.log.flush()
        return (self.dir / "prometheus.log").read_text(errors="replace")[-5000:]

    def query(self, expr):
        """Instant query: [(labels, float value)]."""
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (
            self.port, urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return [(x["metric"], float(x["value"][1])) for x in doc["data"]["result"]]

    def value(self, expr):
        """The single value of expr, or None while it has no result."""
        res = self.query(expr)
        assert len(res) <= 1, (expr, res)
        return res[0][1] if res else None

    def wait(self, expr, pred, timeout, what):
        last = [None]

        def check():
            last[0] = self.value(expr)
            return last[0] is not None and pred(last[0])
        try:
            wait_until(check, timeout, what, interval=0.25)
        except AssertionError as e:
            raise AssertionError("%s: %s = %r\nprometheus log:\n%s" % (
                e, expr, last[0], self.logtext())) from None
        return last[0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path):
    made = []

    def factory(targets):
        p = PrometheusServer(tmp_path, targets)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.stop()


class Traffic:
    """Requests through the proxy from a thread, paced, until stop()."""

    def __init__(self, px, path="/api/t"):
        self.px, self.path = px, path
        self.sent = 0
        self.errors = []
        self.done = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        end = time.monotonic() + 120  # bounded even if stop() is never reached
        try:
            with self.px.connect() as c:
                while not self.done.is_set() and time.monotonic() < end:
                    r = c.request(get("%s/%d" % (self.path, self.sent)))
                    assert r.status == 200, r.head
                    self.sent += 1
                    self.done.wait(0.02)  # pacing: ~50 requests a second
        except Exception as e:  # reported by stop()
            self.errors.append(e)

    def stop(self):
        self.done.set()
        self.t.join(timeout=15)
        assert not self.t.is_alive(), "traffic thread did not stop"
        assert not self.errors, self.errors


@needs_promtool
def test_promtool_accepts_scrape_after_traffic(proxy, backend, upgrader):
    api = backend(response=response_bytes(200, body=b"api"), name="api")
    err = backend(response=response_bytes(500, body=b"boom"), name="err")
    up = upgrader()
    dead = RefusingAddress()
    adm = AdminPort()
    t0 = time.time()
    weird = 'caf\u00e9 "q" \\ \u20ac'  # a route name needing escapes, and UTF-8 kept as such
    try:
        px = proxy(upstreams={"api": [api.address], "err": [err.address], "ws": [up.address],
                              "web": [dead.address, api.address]},
                   routes=[{"name": weird, "match": {"path_prefix": "/api"}, "upstream": "api"},
                           {"name": "err", "match": {"path_prefix": "/err"}, "upstream": "err"},
                           {"name": "web", "match": {"path_prefix": "/web"}, "upstream": "web"},
                           {"name": "ws", "match": {"path_prefix": "/ws"}, "upstream": "ws"}],
                   admin=adm.config, workers=2)
        with px.connect() as c:
            for i in range(3):
                assert c.request(get("/api/%d" % i)).status == 200
            assert c.request(get("/err")).status == 500
            assert c.request(get("/nowhere")).status == 404
            # round robin: every other pick is the refusing server, retried on api;
            # three failed connects eject it (passive health)
            for i in range(8):
                assert c.request(get("/web/%d" % i)).status == 200
        # upgrade tokens that are not UTF-8, or cut inside a character
        for token in (b"\xff", b"x" * 30 + b"\xc3\xa9", b'q"uo\\te'):
            with px.connect() as c:
                c.send(upgrade_request("/api/u", upgrade=token))
                r = c.response(allow_eof=True)
                assert r is None or r.status in (200, 400), r.head
        # a tunnel that moved bytes and ended
        c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws/1"))
        try:
            streams = [Stream(cl, be, payload(70000, "pu")), Stream(be, cl, payload(90000, "pd"))]
            pump(streams, timeout=20)
            assert_pumped(streams)
            cl.shutdown_write()
            be.shutdown_write()
            assert cl.wait_end(5)[0] == "eof"
        finally:
            c.close()
            be.close()
        m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 0 and
                            m.get("switchyard_connections_open") == 0 and
                            m.get("switchyard_tunnel_bytes_total") > 0, 10,
                            "the traffic to be counted")
    finally:
        dead.close()

    r = adm.get("/metrics")
    assert r.status == 200 and b"text/plain; version=0.0.4" in r.head, r.head
    body = r.body
    body.decode("utf-8")  # strict: invalid UTF-8 makes Prometheus drop the whole scrape
    rc, out = promtool_check(body)
    assert rc == 0, "promtool check metrics failed:\n%s\n--- scrape:\n%s" % (out, r.text)

    # every family has HELP and TYPE, from the registry
    helps = {ln.split()[2] for ln in r.text.splitlines() if ln.startswith("# HELP ")}
    m = Metrics(r.text)
    assert set(m.types) == helps, (set(m.types) ^ helps)
    assert "not in the registry" not in r.text, r.text
    for name, _, _ in m.samples:
        base = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[:-len(suffix)] in m.types:
                base = name[:-len(suffix)]
        assert base in m.types, "%s has no # TYPE" % name

    # 3 GETs and the 3 upgrades the api backend answered with a 200
    assert m.one("switchyard_requests_total", route=weird, class_="2xx") == 6, r.text
    assert m.one("switchyard_build_info", version=version_of(os.environ["SWITCHYARD_BIN"])) == 1
    fds, max_fds = m.one("switchyard_open_fds"), m.one("switchyard_max_fds")
    assert 5 <= fds < max_fds, (fds, max_fds)
    start = m.one("switchyard_start_time_seconds")
    assert t0 - 2 <= start <= time.time() + 1, (t0, start)
    assert m.one("switchyard_config_last_reload_success_timestamp_seconds") == start
    assert m.one("switchyard_metrics_series_dropped_total") == 0, r.text
    assert m.one("switchyard_upstream_ejections_total", upstream="web", server=dead.address) == 1, \
        r.text
    assert m.one("switchyard_upstream_ejections_total", upstream="web", server=api.address) == 0
    assert m.one("switchyard_upstream_server_up", upstream="web", server=dead.address) == 0


@needs_prometheus
def test_prometheus_server_scrapes_request_rate(proxy, backend, upgrader, prometheus):
    api = backend(response=response_bytes(200, body=b"ok"), name="api")
    up = upgrader()
    adm = AdminPort()
    px = proxy(upstreams={"api": [api.address], "ws": [up.address]},
               routes=[{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "api"},
                       {"name": "ws", "match": {"path_prefix": "/ws"}, "upstream": "ws"}],
               admin=adm.config, workers=2)
    # a client sending a token that is not UTF-8 once took the target down
    # ("invalid UTF-8 label value", up=0) until a restart
    with px.connect() as c:
        c.send(upgrade_request("/api/bad", upgrade=b"\xff\xfe"))
        r = c.response(allow_eof=True)
        assert r is None or r.status in (200, 400), r.head
    prom = prometheus([adm.address])
    traffic = Traffic(px)
    try:
        rate = prom.wait('sum(rate(switchyard_requests_total{route="api",class="2xx"}[5s]))',
                         lambda v: v > 0, 60, "a non-zero request rate in Prometheus")
    finally:
        traffic.stop()
    # paced at ~50/s on one connection: the rate is in that region, not off by a factor
    assert 1 < rate < 500, rate
    assert traffic.sent > 0
    # every scrape so far parsed: up never went to 0
    assert prom.value('min_over_time(up{job="switchyard"}[1m])') == 1
    assert prom.value('count(switchyard_build_info{job="switchyard"})') == 1
    assert prom.value('switchyard_open_fds{job="switchyard"}') > 0

    # Tunnel bytes. This part asserts the family reaches Prometheus after a
    # tunnel carried bytes and ended; the byte *rate while a tunnel is open*
    # is test_prometheus_tunnel_byte_rate_while_open below (needs the tunnel
    # progress reports wired into the connection code).
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws/1"))
    try:
        streams = [Stream(cl, be, payload(300000, "u")), Stream(be, cl, payload(200000, "d"))]
        pump(streams, timeout=20)
        assert_pumped(streams)
        cl.shutdown_write()
        be.shutdown_write()
        assert cl.wait_end(5)[0] == "eof"
    finally:
        c.close()
        be.close()
    total = prom.wait('sum(switchyard_tunnel_bytes_total{job="switchyard"})',
                      lambda v: v >= 500000, 30, "tunnel bytes in Prometheus")
    assert total == 500000, total


@needs_prometheus
def test_prometheus_tunnel_byte_rate_while_open(proxy, backend, upgrader, prometheus):
    up = upgrader()
    adm = AdminPort()
    px = proxy(upstreams={"ws": [up.address]},
               routes=[{"name": "ws", "match": {"path_prefix": "/ws"}, "upstream": "ws"}],
               admin=adm.config, workers=1)
    prom = prometheus([adm.address])
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws/live"))
    try:
        rate = [None]
        end = time.monotonic() + 30

        def moving():
            # keep bytes flowing both ways while polling the rate
            streams = [Stream(cl, be, payload(64 * 1024, "lu%f" % time.monotonic())),
                       Stream(be, cl, payload(32 * 1024, "ld%f" % time.monotonic()))]
            pump(streams, timeout=10)
            assert_pumped(streams)
            rate[0] = prom.value('sum(rate(switchyard_tunnel_bytes_total{route="ws",'
                                 'direction="to_upstream"}[5s]))')
            return rate[0] is not None and rate[0] > 0
        wait_until(moving, max(1, end - time.monotonic()),
                   "a non-zero tunnel byte rate while the tunnel is open", interval=0.1)
        assert adm.metrics().get("switchyard_tunnels_open") == 1  # still open
    finally:
        c.close()
        be.close()


def test_made_up_tokens_hosts_and_paths_add_no_series(proxy, backend):
    api = backend(response=response_bytes(200, body=b"ok"), name="api")
    adm = AdminPort()
    px = proxy(upstreams={"api": [api.address]},
               routes=[{"name": "api", "match": {"path_prefix": "/"}, "upstream": "api",
                        "allow_upgrades": ["websocket"]}],
               admin=adm.config, workers=1)
    assert px.request(get("/warm")).status == 200
    before = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5, "warm-up done")
    n_before = len(before.samples)
    with px.connect() as c:
        for i in range(3000):
            c.send(upgrade_request("/p/%d" % i, host="h%d.test" % i, upgrade="tok-%d" % i, ws=False))
            r = c.response()
            assert r.status == 200, r.head
    m = adm.wait_metric(lambda m: m.get("switchyard_requests_total") == 3001, 10, "3001 requests")
    assert m.get("switchyard_upgrades_total", protocol="other") == 3000, m.text
    assert m.one("switchyard_metrics_series_dropped_total") == 0
    # the new label sets: upgrades_total{other,...} and nothing per token, host or path
    assert len(m.samples) <= n_before + 3, [s for s in m.samples if s not in before.samples]


@needs_promtool
def test_histograms_and_per_server_counters_after_traffic(proxy, backend, upgrader):
    api = backend(response=response_bytes(200, body=b"ok"), name="api")
    up = upgrader()
    dead = RefusingAddress()
    adm = AdminPort()
    try:
        px = proxy(upstreams={"web": [dead.address, api.address], "ws": [up.address]},
                   routes=[{"name": "ws", "match": {"path_prefix": "/ws"}, "upstream": "ws"},
                           {"name": "web", "match": {"path_prefix": "/"}, "upstream": "web"}],
                   admin=adm.config, workers=1)
        with px.connect() as c:
            # round robin: the refusing server is picked, fails, and the request
            # is retried on api, until three failures eject it
            for i in range(10):
                assert c.request(get("/r/%d" % i)).status == 200
        c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws/1"))
        try:
            streams = [Stream(cl, be, payload(5000, "hu")), Stream(be, cl, payload(5000, "hd"))]
            pump(streams, timeout=20)
            assert_pumped(streams)
            cl.shutdown_write()
            be.shutdown_write()
            assert cl.wait_end(5)[0] == "eof"
        finally:
            c.close()
            be.close()
        m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 0 and
                            m.get("switchyard_connections_open") == 0, 10, "the traffic done")
    finally:
        dead.close()
    h = "switchyard_request_duration_seconds"
    assert m.one(h + "_count", route="web") == 10, m.text
    assert m.one(h + "_bucket", route="web", le="+Inf") == 10, m.text
    assert 0 < m.one(h + "_sum", route="web") < 10 * 5, m.text
    assert m.one(h + "_bucket", route="web", le="60") == 10, m.text
    assert m.one("switchyard_upstream_first_byte_seconds_count", upstream="web") == 10, m.text
    assert m.one("switchyard_upstream_connect_seconds_count", upstream="web") >= 1, m.text
    assert m.one("switchyard_upgrade_duration_seconds_count", route="ws") == 1, m.text
    assert m.one("switchyard_tunnel_duration_seconds_count", route="ws") == 1, m.text
    assert m.one("switchyard_upstream_requests_total", upstream="web", server=api.address,
                 class_="2xx") == 10, m.text
    assert not m.has("switchyard_upstream_requests_total", server=dead.address), m.text
    assert m.one("switchyard_upstream_connect_failures_total", upstream="web",
                 server=dead.address) == 3, m.text
    assert m.one("switchyard_upstream_retries_total", upstream="web", server=dead.address) == 3, \
        m.text
    assert m.one("switchyard_upstream_ejections_total", upstream="web", server=dead.address) == 1
    rc, out = promtool_check(adm.get("/metrics").body)
    assert rc == 0, out
