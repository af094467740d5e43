"""Helpers for the interop tests (tests/integration/test_interop_*.py): tools
nobody here wrote (node's `ws`, headless Chromium, nghttp2's nghttp/nghttpx)
run as child processes on loopback.

Every child is started in its own session (process group) and stopped through
`Child.stop()`, which signals that group only, so helpers a tool forks (Chromium's
zygote and renderers, nghttpx workers) go with it. Waits are on conditions with
deadlines; nothing sleeps to synchronise.
"""
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .http import wait_until  # noqa: F401 (re-exported for the interop tests)

TESTS_DIR = Path(__file__).resolve().parents[1]
SOURCE_DIR = Path(os.environ.get("SY_SOURCE_DIR") or TESTS_DIR.parent)
BUILD_DIR = Path(os.environ.get("SY_BUILD_DIR") or SOURCE_DIR / "build")
INTEROP_DIR = SOURCE_DIR / "tests" / "interop"

NPM_HINT = "npm ci --prefix tests/interop"
APT_HINT = "apt-get install --no-install-recommends %s (scripts/setup.sh --tests)"


# ------------------------------------------------------------------ tools

def find_tool(name, package, extra_dirs=("/usr/sbin", "/usr/bin", "/sbin", "/bin")):
    """Absolute path of an executable, or pytest.skip naming the package."""
    path = shutil.which(name)
    if not path:
        for d in extra_dirs:
            p = os.path.join(d, name)
            if os.access(p, os.X_OK):
                path = p
                break
    if not path:
        pytest.skip("%s not available: %s" % (name, APT_HINT % package))
    return path


def sy_demo_bin():
    b = os.environ.get("SY_DEMO_BIN") or str(BUILD_DIR / "sy-demo")
    if not os.access(b, os.X_OK):
        pytest.fail("sy-demo binary not found or not executable: %s "
                    "(set SY_DEMO_BIN or SY_BUILD_DIR)" % b)
    return b


_node_lock = threading.Lock()


def node_with_ws():
    """Path of node once `ws` is importable from tests/interop. If node_modules
    is missing but npm is there, installs it once from the committed lock file
    (`npm ci`); skips only when node/npm are absent or the install fails."""
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.skip("node not available: install Debian's nodejs (scripts/setup.sh --tests)")
    with _node_lock:
        if not (INTEROP_DIR / "node_modules" / "ws" / "package.json").exists():
            npm = shutil.which("npm")
            if not npm:
                pytest.skip("node's ws package is not installed and npm is missing: run %s" % NPM_HINT)
            try:
                r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(INTEROP_DIR)],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=180)
            except subprocess.TimeoutExpired:
                pytest.skip("`%s` did not finish within 180 s" % NPM_HINT)
            if r.returncode != 0:
                pytest.skip("`%s` failed (rc %d): %s" % (NPM_HINT, r.returncode,
                                                         r.stderr.decode(errors="replace")[-800:]))
    r = subprocess.run([node, "-e", "require('ws'); process.stdout.write(require('ws/package.json').version)"],
                       cwd=str(INTEROP_DIR), capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.fail("node cannot load ws from %s: %s" % (INTEROP_DIR, r.stderr.decode(errors="replace")))
    return node


# ------------------------------------------------------------------ waiting

# wait_until lives in support.http (one poll loop for every helper)
def port_accepts(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


# ------------------------------------------------------------------ children

class Child:
    """A child process in its own process group, with stdout/stderr collected
    by reader threads (so a chatty child never blocks on a full pipe)."""

    def __init__(self, argv, name, cwd=None, env=None, stdin=subprocess.DEVNULL, pass_fds=()):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.out = bytearray()
        self.err = bytearray()
        self.lines = queue.Queue()
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=env, stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, pass_fds=pass_fds)
        self.pid = self.proc.pid
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True),
                                          daemon=True, name=name + "-out"),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False),
                                          daemon=True, name=name + "-err")]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink, split_lines):
        pending = b""
        for _ in range(10 ** 7):
            data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not data:
                break
            with self.cond:
                sink += data
                if split_lines:
                    pending += data
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        self.lines.put(line.decode("utf-8", "replace"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def stdout(self):
        with self.cond:
            return bytes(self.out).decode("utf-8", "replace")

    def stderr(self):
        with self.cond:
            return bytes(self.err).decode("utf-8", "replace")

    def wait_output(self, pred, timeout, what):
        """Wait until pred(stdout_text) is true (or the child exits)."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                text = bytes(self.out).decode("utf-8", "replace")
                if pred(text):
                    return text
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError("%s exited (rc %s) before %s\nstdout:\n%s\nstderr:\n%s"
                                         % (self.name, self.proc.returncode, what, text[-3000:],
                                            bytes(self.err).decode("utf-8", "replace")[-3000:]))
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: timed out after %.1fs waiting for %s\nstdout:\n%s\nstderr:\n%s"
                                         % (self.name, timeout, what, text[-3000:],
                                            bytes(self.err).decode("utf-8", "replace")[-3000:]))
                self.cond.wait(min(left, 0.1))

    def wait(self, timeout):
        """Exit status once the child exits; kills its group on timeout and raises."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError("%s did not finish within %.0fs\nstdout:\n%s\nstderr:\n%s"
                                 % (self.name, timeout, self.stdout()[-3000:], self.stderr()[-3000:]))
        for t in self._threads:
            t.join(timeout=5)
        return rc

    def _signal_group(self, sig):
        try:
            os.killpg(self.pid, sig)  # the group this child leads (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace=5.0):
        """SIGTERM the child, SIGKILL its process group after `grace` seconds;
        members of the group that outlive the leader are SIGKILLed too."""
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            # The leader first: it shuts its own helpers down in order (nghttpx's
            # master and worker, Chromium's browser process); a TERM to the whole
            # group makes nghttpx linger for ~1.5 s.
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(5)
        # Children of the leader (same group) that are still around.
        if group_alive(self.pid):
            self._signal_group(signal.SIGKILL)
            wait_until(lambda: not group_alive(self.pid), 5, "process group %d to exit" % self.pid)
        for t in self._threads:
            t.join(timeout=5)
        return self.proc.returncode


def group_alive(pgid):
    """True while a live (non-zombie) process is in process group pgid.
    Zombies do not count: orphans are reaped by whatever PID 1 the container
    has, which may take its time, and a zombie holds no port or file."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


class Children:
    """Fixture object: start(...) children, all stopped at teardown, outputs
    printed so a failing test shows them."""

    def __init__(self):
        self.all = []

    def start(self, argv, name, **kw):
        c = Child(argv, name, **kw)
        self.all.append(c)
        return c

    def stop_all(self):
        import sys
        for c in reversed(self.all):
            rc = c.stop()
            sys.stdout.write("\n--- %s (pid %d) exit %s: %s\n--- stdout:\n%s\n--- stderr:\n%s\n"
                             % (c.name, c.pid, rc, " ".join(c.argv), c.stdout()[-4000:],
                                c.stderr()[-4000:]))


# ------------------------------------------------------------------ sy-demo

def start_sy_demo(children):
    """sy-demo on a free loopback port; returns (child, "127.0.0.1:PORT")."""
    for attempt in range(3):
        port = free_port()
        c = children.start([sy_demo_bin(), "-l", "127.0.0.1:%d" % port], "sy-demo")
        try:
            wait_until(lambda: port_accepts(port) or c.proc.poll() is not None, 10,
                       "sy-demo to listen on %d" % port)
        except AssertionError:
            c.stop()
            raise
        if c.proc.poll() is None:
            return c, "127.0.0.1:%d" % port
    raise AssertionError("sy-demo did not start: %s" % c.stderr())


# ------------------------------------------------------------------ node ws

class NodeWsServer:
    """tests/interop/ws_server.js: a `ws` echo server; events are JSON lines."""

    def __init__(self, children, node, *args):
        self.child = children.start([node, str(INTEROP_DIR / "ws_server.js")] + list(args),
                                    "ws-server", cwd=str(INTEROP_DIR), stdin=subprocess.PIPE)
        self.child.wait_output(lambda t: '"listening"' in t, 15, "ws server to listen")
        ev = self.events()[0]
        assert ev["event"] == "listening", ev
        self.port = ev["port"]
        self.address = "127.0.0.1:%d" % self.port

    @staticmethod
    def _parse(text, kind=None):
        out = []
        for ln in text.split("\n")[:-1]:  # complete lines only
            if ln.strip():
                e = json.loads(ln)
                if kind is None or e.get("event") == kind:
                    out.append(e)
        return out

    def events(self, kind=None):
        return self._parse(self.child.stdout(), kind)

    def wait_events(self, kind, n=1, timeout=10):
        text = self.child.wait_output(lambda t: len(self._parse(t, kind)) >= n, timeout,
                                      "%d %r events from the ws server" % (n, kind))
        return self._parse(text, kind)


def run_ws_client(children, node, url, scenario, timeout=30, **opts):
    """Runs tests/interop/ws_client.js once; returns its JSON report."""
    opts.setdefault("deadlineMs", int((timeout - 5) * 1000))
    c = children.start([node, str(INTEROP_DIR / "ws_client.js"), url, scenario, json.dumps(opts)],
                       "ws-client-" + scenario, cwd=str(INTEROP_DIR))
    rc = c.wait(timeout)
    out = c.stdout().strip().splitlines()
    assert out, "ws client printed nothing (rc %s); stderr:\n%s" % (rc, c.stderr())
    rep = json.loads(out[-1])
    rep["_rc"] = rc
    rep["_stderr"] = c.stderr()
    return rep


def raw_headers_dict(raw):
    """node's rawHeaders [name, value, ...] -> [(lower name, value)]."""
    return [(raw[i].lower(), raw[i + 1]) for i in range(0, len(raw) - 1, 2)]


def header_values(raw, name):
    return [v for k, v in raw_headers_dict(raw) if k == name.lower()]


@pytest.fixture
def children():
    """Import into a test module to use: `from support.interop import children`."""
    c = Children()
    yield c
    c.stop_all()


# ------------------------------------------------------------------ Chromium (CDP over a pipe)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio"]


def chromium_bin():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name) or (os.path.join("/usr/bin", name)
                                   if os.access(os.path.join("/usr/bin", name), os.X_OK) else None)
        if p:
            return p
    pytest.skip("chromium not available: %s" % (APT_HINT % "chromium"))


def _fd_above(fd, low):
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    os.close(fd)
    return new


class Chromium:
    """Headless Chromium driven through the DevTools protocol on a pipe
    (--remote-debugging-pipe: commands on its fd 3, replies on its fd 4, JSON
    messages separated by NUL). Only the standard library is needed, and the
    page can be polled until a condition holds, which --dump-dom cannot do:
    its virtual time does not wait for a WebSocket, so the DOM may be dumped
    before the socket opened."""

    def __init__(self, children, tmp_path, name="chromium"):
        self.profile = tmp_path / ("%s-profile" % name)
        self.profile.mkdir()
        to_r, self._to_w = os.pipe()      # we write commands, chromium reads fd 3
        self._from_r, from_w = os.pipe()  # chromium writes fd 4, we read
        # Chromium's ends above 9, so the shell's 3/4 redirections cannot clobber them.
        to_r, from_w = (_fd_above(fd, 10) for fd in (to_r, from_w))
        argv = ["/bin/bash", "-c", 'exec "$0" "$@" 3<&%d 4>&%d %d<&- %d>&-' % (to_r, from_w, to_r, from_w),
                chromium_bin()] + \
            CHROMIUM_FLAGS + ["--user-data-dir=%s" % self.profile, "--remote-debugging-pipe", "about:blank"]
        env = dict(os.environ, HOME=str(tmp_path))
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        self.child = children.start(argv, name, env=env, pass_fds=(to_r, from_w))
        os.close(to_r)
        os.close(from_w)
        self._next_id = 0
        self._replies = {}
        self.events = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=name + "-cdp")
        self._reader.start()
        self.session = None
        self._closed = False

    def _read_loop(self):
        buf = b""
        for _ in range(10 ** 8):
            try:
                data = os.read(self._from_r, 65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                m = json.loads(msg)
                with self._cond:
                    if "id" in m:
                        self._replies[m["id"]] = m
                    elif len(self.events) < 10000:
                        self.events.append(m)
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()
        os.close(self._from_r)

    def call(self, method, params=None, session=True, timeout=15.0):
        self._next_id += 1
        mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies:
                left = end - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError("no DevTools reply to %s (%s); chromium stderr:\n%s"
                                         % (method, "chromium exited" if self._eof else "timeout",
                                            self.child.stderr()[-3000:]))
                self._cond.wait(min(left, 0.1))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise AssertionError("DevTools %s failed: %r" % (method, reply["error"]))
        return reply["result"]

    def open(self, url):
        """A new tab on url, attached (flat session) for later calls."""
        target = self.call("Target.createTarget", {"url": url}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise AssertionError("page script failed: %r" % r["exceptionDetails"])
        return r["result"].get("value")

    def wait_for(self, expression, done, timeout, what):
        """Evaluate expression until done(value); returns the last value."""
        end = time.monotonic() + timeout
        while True:
            v = self.evaluate(expression)
            if done(v):
                return v
            if time.monotonic() > end:
                raise AssertionError("timed out after %.0fs waiting for %s; last value %r"
                                     % (timeout, what, v))
            time.sleep(0.05)  # poll interval of a bounded condition wait

    def close(self, timeout=10.0):
        if self._closed:
            return self.child.proc.returncode
        self._closed = True
        try:
            self.call("Browser.close", session=False, timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            os.close(self._to_w)
        except OSError:
            pass
        try:
            self.child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.child.stop()
        return self.child.proc.returncode
