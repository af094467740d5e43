"""Helpers for the operations tests (tests/integration/test_ops_*.py): the admin
listener, Prometheus text, reloads and signals, restartable named servers and
headless Chromium on the /status page.

    adm = AdminPort()                                   # a free loopback port
    px = proxy(upstreams=..., admin=adm.config)         # conftest's fixture
    m = adm.metrics(); m.get("switchyard_requests_total", route="r", class_="2xx")
    new = dict(px.config, routes=[...]); line = reload(px, new)   # SIGHUP, waits for the verdict
    rc = signal_and_wait(px, signal.SIGTERM, timeout=10)

Everything waits on a condition with a deadline; nothing sleeps to synchronise.
"""
import html.parser
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from .http import wait_until  # noqa: F401 (re-exported for the ops tests)
from .http import Reader, read_request, read_response, deadline_in, HTTPTimeout, ProtocolError, \
    response_bytes
from .backend import free_port


# ------------------------------------------------------------------ waiting

# wait_until lives in support.http (one poll loop for every helper)
def connect_refused(port, timeout=0.5):
    """True when a connect to 127.0.0.1:port is refused right away."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


# ------------------------------------------------------------------ admin

class AdminResponse:
    def __init__(self, status, head, body):
        self.status = status
        self.head = head
        self.body = body
        self.text = body.decode("utf-8", "replace")


class AdminPort:
    """A free loopback port for `admin: {address: ...}` and a client for it."""

    def __init__(self, token=None):
        self.port = free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.config = {"address": self.address}
        self.token = token  # sent as a bearer token by get() unless headers say otherwise
        if token:
            self.config["token"] = token

    def get(self, path, timeout=5.0, method="GET", headers=None):
        """One request on a fresh connection (the admin listener may start a
        moment after the proxy's own port: refused connects are retried).
        headers: extra header lines; None sends the bearer token if any."""
        end = time.monotonic() + timeout
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
                break
            except ConnectionRefusedError:
                if time.monotonic() > end:
                    raise AssertionError("admin listener %s refuses connections" % self.address)
                time.sleep(0.02)  # poll interval of a bounded condition wait
        try:
            if headers is None:
                headers = ["Authorization: Bearer %s" % self.token] if self.token else []
            s.sendall(("%s %s HTTP/1.1\r\nHost: admin\r\n%s\r\n"
                       % (method, path, "".join(h + "\r\n" for h in headers))).encode())
            r = read_response(Reader(s), deadline_in(timeout), method=method)
            assert r is not None, "admin listener closed without answering %s" % path
            return AdminResponse(r.status, r.head, r.body)
        finally:
            s.close()

    def metrics(self):
        r = self.get("/metrics")
        assert r.status == 200, r.head
        return Metrics(r.text)

    def status(self):
        r = self.get("/status.json")
        assert r.status == 200, r.head
        try:
            return json.loads(r.text)
        except ValueError:
            raise AssertionError("/status.json is not JSON: %r" % r.text[:2000]) from None

    def wait_metric(self, pred, timeout, what):
        """Poll /metrics until pred(Metrics) is true; returns that Metrics."""
        last = [None]

        def check():
            last[0] = self.metrics()
            return pred(last[0])
        try:
            wait_until(check, timeout, what, interval=0.05)
        except AssertionError as e:
            raise AssertionError("%s\nlast /metrics:\n%s" % (e, last[0].text if last[0] else None)) from None
        return last[0]


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|NaN|[-+]Inf))$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|$)')


class Metrics:
    """Prometheus text exposition, parsed strictly: every line is a comment
    (# TYPE/# HELP) or a sample whose labels parse completely."""

    def __init__(self, text):
        self.text = text
        self.samples = []  # (name, {label: value}, float)
        self.types = {}
        for ln in text.splitlines():
            if not ln.strip():
                continue
            if ln.startswith("#"):
                parts = ln.split()
                if len(parts) >= 4 and parts[1] == "TYPE":
                    assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), ln
                    assert parts[2] not in self.types, "two # TYPE lines for %s" % parts[2]
                    self.types[parts[2]] = parts[3]
                continue
            m = _SAMPLE.match(ln)
            assert m, "not a Prometheus sample line: %r" % ln
            name, labels_txt, value = m.groups()
            labels = {}
            if labels_txt:
                pos = 0
                while pos < len(labels_txt):
                    lm = _LABEL.match(labels_txt, pos)
                    assert lm, "bad label set in %r (at %d)" % (ln, pos)
                    assert lm.group(1) not in labels, "label %s twice in %r" % (lm.group(1), ln)
                    labels[lm.group(1)] = re.sub(r'\\(.)', lambda x: {"n": "\n"}.get(x.group(1), x.group(1)),
                                                 lm.group(2))
                    pos = lm.end()
            key = (name, tuple(sorted(labels.items())))
            assert key not in {(n, tuple(sorted(l.items()))) for n, l, _ in self.samples}, \
                "sample %r appears twice" % ln
            self.samples.append((name, labels, float(value)))

    def series(self, name, **labels):
        """Samples of `name` whose labels include the given ones (a trailing
        underscore is dropped from a keyword: class_="2xx")."""
        want = {k.rstrip("_"): v for k, v in labels.items()}
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == x for k, x in want.items())]

    def has(self, name, **labels):
        return bool(self.series(name, **labels))

    def get(self, name, **labels):
        """Sum of the matching samples (0 when there are none)."""
        return sum(v for _, v in self.series(name, **labels))

    def one(self, name, **labels):
        s = self.series(name, **labels)
        assert len(s) == 1, "expected one %s%r sample, got %r\n%s" % (name, labels, s, self.text)
        return s[0][1]


# ------------------------------------------------------------------ config, reload, signals

def _to_yaml(px):
    # conftest's own writer, so reloaded files look like the ones it starts with
    return sys.modules[type(px).__module__].to_yaml


def write_config(px, cfg=None, text=None):
    """Replace the proxy's config file (same path) atomically."""
    if text is None:
        text = _to_yaml(px)(cfg)
    tmp = str(px.config_path) + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, str(px.config_path))
    if cfg is not None:
        px.config = cfg


_VERDICT = re.compile(r"^.*(reloaded .*|reload refused.*)$", re.M)


def reload(px, cfg=None, text=None, timeout=10.0):
    """Write the new configuration (a dict, or raw text), send SIGHUP and wait
    for the proxy's verdict on stderr. Returns that stderr line."""
    before = len(_VERDICT.findall(px.stderr()))
    if cfg is not None or text is not None:
        write_config(px, cfg, text)
    px.proc.send_signal(signal.SIGHUP)
    end = time.monotonic() + timeout
    while True:
        found = _VERDICT.findall(px.stderr())
        if len(found) > before:
            return found[before]
        if px.proc.poll() is not None:
            raise AssertionError("the proxy exited (rc %s) after SIGHUP\nstderr:\n%s"
                                 % (px.proc.returncode, px.stderr()[-4000:]))
        if time.monotonic() > end:
            raise AssertionError("no reload verdict on stderr within %.0fs of SIGHUP\nstderr:\n%s"
                                 % (timeout, px.stderr()[-4000:]))
        time.sleep(0.02)  # poll interval of a bounded condition wait


def wait_exit(px, timeout):
    """The proxy's exit status, within timeout (AssertionError otherwise; the
    fixture kills it at teardown)."""
    try:
        return px.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("the proxy did not exit within %.1fs\nstderr:\n%s"
                             % (timeout, px.stderr()[-4000:])) from None


def stdout_entries(px):
    """Access log entries on stdout; every complete line must be JSON."""
    out = []
    for ln in px.stdout().splitlines():
        if ln.strip():
            try:
                out.append(json.loads(ln))
            except ValueError:
                raise AssertionError("access log line is not JSON: %r" % ln) from None
    return out


def file_entries(path):
    out = []
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        return out
    lines = text.split("\n")
    for ln in lines[:-1]:  # complete lines only
        if ln.strip():
            try:
                out.append(json.loads(ln))
            except ValueError:
                raise AssertionError("access log line in %s is not JSON: %r" % (path, ln)) from None
    return out


def listening_sockets(port):
    """Number of TCP sockets in LISTEN state on 127.0.0.1:port (from /proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for ln in f:
            parts = ln.split()
            local, state = parts[1], parts[3]
            ip, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                n += 1
    return n


# ------------------------------------------------------------------ servers

class NamedServer:
    """HTTP/1.1 server on 127.0.0.1 answering every request with 200 and its
    name as the body (keep-alive), GET /healthz with 200 "ok" (or 503 while
    `sick`). stop() closes the listening socket and every connection (so
    connects are refused); start() listens again on the same port.
    `hits` counts requests other than health checks; `health_hits` the rest."""

    def __init__(self, name, port=0):
        self.name = name
        self.port = port
        self.sick = False
        self.hits = 0
        self.health_hits = 0
        self.paths = []
        self.users = []  # X-User values seen
        self.lock = threading.Lock()
        self.lsock = None
        self.start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        self.lsock = s
        self.stopping = False
        self.conns = []
        self.threads = []
        t = threading.Thread(target=self._accept, args=(s,), daemon=True, name=self.name + "-accept")
        t.start()
        self.accept_thread = t

    def _accept(self, ls):
        ls.settimeout(0.1)
        born = time.monotonic()
        while not self.stopping and time.monotonic() - born < 600:
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True, name=self.name + "-conn")
            self.threads.append(t)
            t.start()

    def _serve(self, c):
        r = Reader(c)
        try:
            for _ in range(100000):
                req = read_request(r, deadline_in(60))
                if req is None:
                    return
                if req.target == "/healthz":
                    with self.lock:
                        self.health_hits += 1
                    body = b"sick" if self.sick else b"ok"
                    c.sendall(response_bytes(503 if self.sick else 200, body=body,
                                             headers=["Connection: close"]))
                    return
                with self.lock:
                    self.hits += 1
                    self.paths.append(req.target)
                    self.users += req.values("x-user")
                c.sendall(response_bytes(200, body=self.name.encode()))
        except (OSError, HTTPTimeout, ProtocolError):
            return
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        self.accept_thread.join(2)
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(2)

    close = stop


def take_any(ups, timeout=10.0):
    """The next upstream connection handed over by any of the Upgraders in ups:
    returns (index in ups, End)."""
    end = time.monotonic() + timeout
    while True:
        for i, u in enumerate(ups):
            try:
                return i, u.q.get_nowait()
            except queue.Empty:
                pass
        if time.monotonic() > end:
            raise AssertionError("no upgrade request reached any upstream within %.0fs" % timeout)
        time.sleep(0.005)  # poll interval of a bounded condition wait


# ------------------------------------------------------------------ Chromium --dump-dom

def _chromium(action, url, profile_dir, budget_ms, timeout, extra=()):
    from .interop import chromium_bin
    argv = [chromium_bin(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--disable-dev-shm-usage", "--no-default-browser-check",
            "--user-data-dir=%s" % profile_dir, "--virtual-time-budget=%d" % budget_ms] + \
        list(extra) + [action, url]
    env = dict(os.environ, HOME=str(profile_dir))
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
        raise AssertionError("chromium %s did not finish within %.0fs: %s"
                             % (action, timeout, err.decode(errors="replace")[-2000:]))
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # helpers it may have left (its own group only)
        except (ProcessLookupError, PermissionError):
            pass
    assert p.returncode == 0, "chromium exited %s: %s" % (p.returncode, err.decode(errors="replace")[-2000:])
    return out


def chromium_dump_dom(url, profile_dir, budget_ms=3000, timeout=60.0):
    """Headless Chromium loads url, lets virtual time run budget_ms and prints
    the DOM. Skips (via support.interop.chromium_bin) when chromium is absent."""
    return _chromium("--dump-dom", url, profile_dir, budget_ms, timeout).decode("utf-8", "replace")


def chromium_screenshot(url, profile_dir, png_path, size=(1280, 1100), budget_ms=3000, timeout=60.0):
    """The same page rendered to a PNG file (returns its bytes)."""
    _chromium("--screenshot=%s" % png_path, url, profile_dir, budget_ms, timeout,
              extra=["--window-size=%d,%d" % size, "--hide-scrollbars"])
    with open(png_path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG: %s" % png_path
    return data


class _Tables(html.parser.HTMLParser):
    """Collects text of elements with an id, and the rows of tables with an id."""

    def __init__(self):
        super().__init__()
        self.tables = {}
        self.texts = {}
        self._table = None
        self._row = None
        self._cell = None
        self._ids = []  # stack of (tag, id or None)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._ids.append((tag, a.get("id")))
        if a.get("id"):
            self.texts.setdefault(a["id"], "")
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        for i in range(len(self._ids) - 1, -1, -1):
            if self._ids[i][0] == tag:
                del self._ids[i:]
                break
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        for _, i in self._ids:
            if i:
                self.texts[i] += data


def parse_tables(dom):
    """(tables: {id: [[cell text, ...], ...]}, texts: {id: text})"""
    p = _Tables()
    p.feed(dom)
    return p.tables, p.texts
