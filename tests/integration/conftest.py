"""Fixtures for Switchyard integration tests.

`proxy(...)` starts the real binary with a YAML config on a free loopback port
and stops it at teardown; `backend(...)` starts scriptable backends
(tests/support/backend.py). Outputs of every process are printed at teardown,
so pytest shows them next to a failing test.

SY_VALGRIND=1 runs every proxy started through `Proxy` (so `proxy(...)` and
support.tls's `tls_proxy(...)`) under valgrind's memcheck, with longer start-up
and stop deadlines; an autouse fixture fails the test at teardown when a
proxy's valgrind log reports an error or a definite/indirect leak (the log is
printed). scripts/valgrind-suite.sh runs a representative subset that way.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support.http import (Reader, read_response, deadline_in, HTTPTimeout,  # noqa: E402
                          response_bytes)
from support.backend import Backend, RefusingAddress, blackhole, free_port  # noqa: E402

SOURCE_DIR = Path(os.environ.get("SY_SOURCE_DIR") or TESTS_DIR.parent)
BUILD_DIR = Path(os.environ.get("SY_BUILD_DIR") or SOURCE_DIR / "build")


VALGRIND = os.environ.get("SY_VALGRIND", "") not in ("", "0")
# Under memcheck the proxy runs 10-50x slower: every start/stop deadline below
# is stretched by this factor (tests' own deadlines are theirs to choose).
SLOWDOWN = 6.0 if VALGRIND else 1.0
VALGRIND_EXIT = 99
VALGRIND_ARGS = ["valgrind", "--tool=memcheck", "--leak-check=full",
                 "--show-leak-kinds=definite,indirect",
                 "--errors-for-leak-kinds=definite,indirect",
                 "--error-exitcode=%d" % VALGRIND_EXIT, "--track-fds=no",
                 "--num-callers=30"]

# every Proxy made during the current test (checked by _valgrind_check)
_ALL_PROXIES = []


def switchyard_bin():
    b = os.environ.get("SWITCHYARD_BIN") or str(BUILD_DIR / "switchyard")
    if not os.access(b, os.X_OK):
        pytest.fail("switchyard binary not found or not executable: %s "
                    "(set SWITCHYARD_BIN or SY_BUILD_DIR)" % b)
    return b


# ------------------------------------------------------------------ YAML

def _scalar(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent=0):
    """Block-style YAML for dicts, lists and scalars (enough for configs)."""
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append("%s%s:\n%s" % (pad, k, to_yaml(v, indent + 2)))
            elif isinstance(v, dict):
                out.append("%s%s: {}\n" % (pad, k))
            elif isinstance(v, list):
                out.append("%s%s: []\n" % (pad, k))
            else:
                out.append("%s%s: %s\n" % (pad, k, _scalar(v)))
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)) and v:
                inner = to_yaml(v, indent + 2)
                out.append("%s- %s" % (pad, inner[indent + 2:]))
            else:
                out.append("%s- %s\n" % (pad, _scalar(v) if not isinstance(v, (dict, list))
                                         else ("{}" if isinstance(v, dict) else "[]")))
    else:
        out.append(pad + _scalar(obj) + "\n")
    return "".join(out)


# ------------------------------------------------------------------ client

class Client:
    """A raw client connection to the proxy."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw = bytearray()  # everything received, for assertions on exact bytes
        self.reader = Reader(self.sock, record=self.raw)

    def send(self, data):
        self.sock.sendall(data)

    def response(self, method="GET", timeout=10.0, sink=None, interim=False, allow_eof=False):
        """Next response. With interim=False, 1xx responses are skipped (and
        kept in self.interim). A clean EOF instead of a response fails the
        test, or returns None with allow_eof."""
        self.interim = []
        end = deadline_in(timeout)
        for _ in range(20):
            r = read_response(self.reader, end, method=method, sink=sink)
            if r is None:
                if allow_eof:
                    return None
                raise AssertionError("the proxy closed the connection instead of responding "
                                     "(%s); received so far on this connection: %r"
                                     % ("reset" if self.reader.reset else "EOF", bytes(self.raw[-500:])))
            if interim or r.status >= 200 or r.status == 101:
                return r
            self.interim.append(r)
        raise AssertionError("more than 20 interim responses")

    def request(self, data, method=None, timeout=10.0):
        self.send(data)
        if method is None:
            method = data.split(b" ", 1)[0].decode()
        return self.response(method=method, timeout=timeout)

    def closed_by_peer(self, timeout=5.0):
        """True when the proxy closes (EOF or RST) within timeout with nothing
        more sent; AssertionError if it sends bytes; False on timeout."""
        try:
            extra = self.reader.read_to_eof(deadline_in(timeout))
        except HTTPTimeout:
            return False
        assert extra == b"", "unexpected bytes before close: %r" % extra[:300]
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ proxy

class Proxy:
    def __init__(self, config, workdir, name):
        self.config = config
        self.workdir = workdir
        self.name = name
        self.proc = None
        self.port = None
        self.stopped = False
        self.nofile = None   # (soft, hard) RLIMIT_NOFILE for the process, or None
        self.vg_log_path = None
        _ALL_PROXIES.append(self)

    def argv(self):
        argv = [switchyard_bin(), "-c", str(self.config_path)]
        if VALGRIND:  # %p: valgrind's pid, which is the proxy's (same process)
            argv = VALGRIND_ARGS + ["--log-file=%s" % (self.workdir / ("%s.vg.%%p.log" % self.name))] + argv
        return argv

    def _preexec(self):
        if self.nofile is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def start(self, ready_timeout=None):
        if ready_timeout is None:
            ready_timeout = 10.0 if not VALGRIND else 90.0
        self.config_path = self.workdir / ("%s.yaml" % self.name)
        self.config_path.write_text(to_yaml(self.config))
        self.out_path = self.workdir / ("%s.stdout" % self.name)
        self.err_path = self.workdir / ("%s.stderr" % self.name)
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(self.argv(),
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, cwd=str(self.workdir),
                                     env=dict(os.environ, LIBC_FATAL_STDERR_="1"),
                                     preexec_fn=self._preexec if self.nofile else None)
        self.pid = self.proc.pid
        if VALGRIND:
            self.vg_log_path = self.workdir / ("%s.vg.%d.log" % (self.name, self.pid))
        end = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                return False
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                s.close()
                return True
            except OSError:
                pass
            if time.monotonic() > end:
                raise AssertionError("proxy did not accept on port %d within %.0fs\nstderr:\n%s"
                                     % (self.port, ready_timeout, self.stderr()))
            time.sleep(0.02)  # poll interval of a bounded condition wait

    # -------------------------------------------------------------- output
    def stdout(self):
        return self.out_path.read_bytes().decode("utf-8", "replace")

    def stderr(self):
        return self.err_path.read_bytes().decode("utf-8", "replace")

    def log_entries(self):
        out = []
        for line in self.stdout().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def wait_log(self, predicate=lambda e: True, n=1, timeout=5.0):
        """Access log entries matching predicate, once there are at least n."""
        end = time.monotonic() + timeout
        while True:
            lines = [ln for ln in self.stdout().splitlines() if ln.strip()]
            entries = []
            for ln in lines:
                try:
                    entries.append(json.loads(ln))
                except ValueError:
                    if ln is lines[-1]:
                        break  # a line still being written
                    raise AssertionError("access log line is not JSON: %r" % ln)
            hits = [e for e in entries if predicate(e)]
            if len(hits) >= n:
                return hits
            if time.monotonic() > end:
                raise AssertionError("wanted %d matching access log entries, stdout:\n%s"
                                     % (n, self.stdout()))
            time.sleep(0.02)

    def vm_hwm_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/%d/status" % self.pid)

    def vm_rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/%d/status" % self.pid)

    def cpu_seconds(self):
        """utime + stime of the whole process (all threads), in seconds."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): utime is field 14, stime field 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sanitized(self):
        """True when the proxy runs with ASan/UBSan/TSan linked in (whose
        allocators keep freed memory in quarantine: RSS figures mean little)."""
        try:
            with open("/proc/%d/maps" % self.pid) as f:
                maps = f.read()
        except OSError:
            return False
        return any(lib in maps for lib in ("libasan", "libtsan", "libubsan", "libhwasan"))

    def open_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    # -------------------------------------------------------------- clients
    def connect(self, timeout=10.0):
        return Client(self.port, timeout)

    def request(self, data, method=None, timeout=10.0):
        """One request on a fresh connection; returns the response."""
        with self.connect() as c:
            return c.request(data, method=method, timeout=timeout)

    # -------------------------------------------------------------- stop
    def crashed(self):
        rc = self.proc.poll()
        return rc is not None and not self.stopped

    def stop(self, timeout=10.0):
        if self.proc is None or self.stopped:
            return self.proc.returncode if self.proc else None
        if VALGRIND:  # draining, then the leak check, at memcheck speed
            timeout = max(timeout * SLOWDOWN, 60.0)
        self.stopped = True
        rc = self.proc.poll()
        self.died_early = rc is not None
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.needed_kill = True
                self.proc.kill()
                rc = self.proc.wait(5)
        self._out.close()
        self._err.close()
        return rc

    # -------------------------------------------------------------- valgrind
    def valgrind_log(self):
        if self.vg_log_path is None:
            return None
        try:
            return self.vg_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def valgrind_problems(self):
        """What memcheck found in this (stopped) proxy: a list of strings."""
        log = self.valgrind_log()
        if log is None:
            return []
        found = []
        rc = self.proc.returncode if self.proc else None
        if rc == VALGRIND_EXIT:
            found.append("exit status %d (memcheck found errors)" % VALGRIND_EXIT)
        for pat in _VG_BAD:
            n = len(re.findall(pat, log))
            if n:
                found.append("%d x %r" % (n, pat))
        for kind in ("definitely lost", "indirectly lost"):
            for m in re.finditer(r"%s: ([0-9,]+) bytes in ([0-9,]+) blocks" % kind, log):
                if int(m.group(1).replace(",", "")):
                    found.append("%s: %s bytes in %s blocks" % (kind, m.group(1), m.group(2)))
        m = re.search(r"ERROR SUMMARY: ([0-9,]+) errors", log)
        if m and int(m.group(1).replace(",", "")):
            found.append("ERROR SUMMARY: %s errors" % m.group(1))
        if not m and not getattr(self, "needed_kill", False) and rc is not None and rc >= 0:
            found.append("no ERROR SUMMARY in the valgrind log (rc %s)" % rc)
        return found


# Kinds of memcheck reports that fail a test wherever they appear in a log.
_VG_BAD = [r"Invalid read", r"Invalid write", r"Invalid free", r"Mismatched free",
           r"uninitialised", r"Uninitialised", r"unaddressable", r"Source and destination overlap",
           r"Syscall param .* points to", r"Process terminating with default action",
           r"Argument 'size' of function \w+ has a fishy"]


@pytest.fixture(autouse=True)
def _valgrind_check():
    """With SY_VALGRIND=1: after every other fixture is torn down (so after the
    proxies were stopped), fail the test on any memcheck finding."""
    del _ALL_PROXIES[:]
    yield
    if not VALGRIND:
        del _ALL_PROXIES[:]
        return
    problems = []
    for p in list(_ALL_PROXIES):
        if p.proc is None:
            continue
        if not p.stopped:
            p.stop()
        found = p.valgrind_problems()
        if found:
            problems.append("%s (pid %d): %s" % (p.name, p.pid, "; ".join(found)))
            sys.stdout.write("\n--- valgrind log of %s (%s):\n%s\n"
                             % (p.name, p.vg_log_path, p.valgrind_log()[-60000:]))
        elif getattr(p, "needed_kill", False):
            sys.stdout.write("\n--- %s was killed: no leak check ran\n" % p.name)
    del _ALL_PROXIES[:]
    if problems:
        pytest.fail("valgrind: " + " | ".join(problems), pytrace=False)


@pytest.fixture
def proxy(tmp_path):
    """Factory: proxy(upstreams={"web": [addr, ...]}, routes=[...], **top_level_keys).

    upstreams values are lists of "host:port" (or full dicts); without routes,
    a single upstream gets a catch-all route. listeners may be a function of
    the free port the proxy is probed on (127.0.0.1:port must accept). Other keyword arguments become
    top-level config keys (timeouts=..., limits=..., forwarding=..., ...),
    except proc_nofile=N or (soft, hard): RLIMIT_NOFILE of the proxy process.
    """
    started = []

    def factory(upstreams=None, routes=None, listeners=None, proc_nofile=None, **extra):
        ups = {}
        for name, spec in (upstreams or {}).items():
            if isinstance(spec, dict):
                ups[name] = spec
            else:
                ups[name] = {"servers": [{"address": a} for a in spec]}
        if routes is None and len(ups) == 1:
            routes = [{"match": {"path_prefix": "/"}, "upstream": next(iter(ups))}]
        last = None
        for attempt in range(3):
            port = free_port()
            cfg = {}
            if callable(listeners):  # listeners(port): addresses built on the free port
                cfg["listeners"] = listeners(port)
            else:
                cfg["listeners"] = listeners or [{"address": "127.0.0.1:%d" % port}]
            if ups:
                cfg["upstreams"] = ups
            cfg["routes"] = routes or []
            cfg.update(extra)
            p = Proxy(cfg, tmp_path, "proxy%d" % len(started))
            p.port = port
            if proc_nofile is not None:
                p.nofile = (proc_nofile, proc_nofile) if isinstance(proc_nofile, int) \
                    else tuple(proc_nofile)
            started.append(p)
            if p.start():
                return p
            p.stop()
            last = p
            if "in use" not in p.stderr().lower():
                break
        pytest.fail("switchyard exited at start (rc=%s)\nconfig:\n%s\nstderr:\n%s"
                    % (last.proc.returncode, last.config_path.read_text(), last.stderr()))

    yield factory

    problems = []
    for p in started:
        if p.proc is None:
            continue
        rc_before = p.proc.poll() if not p.stopped else None
        rc = p.stop()
        sys.stdout.write("\n--- %s (pid %d) exit %s; config %s\n" % (p.name, p.pid, rc, p.config_path))
        sys.stdout.write("--- stdout:\n%s\n--- stderr:\n%s\n" % (p.stdout()[-20000:], p.stderr()[-20000:]))
        if rc_before is not None and rc_before < 0:
            problems.append("%s died from signal %d during the test" % (p.name, -rc_before))
        if getattr(p, "needed_kill", False):
            sys.stdout.write("--- %s did not exit within 10s of SIGTERM: killed\n" % p.name)
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def backend():
    """Factory: backend(response=bytes|callable, handler=fn, keep_alive=bool)."""
    made = []

    def factory(*args, **kw):
        b = Backend(*args, **kw)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()
        if b.errors:
            sys.stdout.write("--- %s handler errors: %r\n" % (b.name, b.errors))


@pytest.fixture
def refusing():
    made = []

    def factory():
        r = RefusingAddress()
        made.append(r)
        return r

    yield factory
    for r in made:
        r.close()


@pytest.fixture
def blackhole_backend():
    made = []

    def factory():
        b = blackhole()
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def simple_get(path="/", host="example.test", extra=b""):
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + extra + b"\r\n"


__all__ = ["Client", "Proxy", "to_yaml", "simple_get", "response_bytes", "switchyard_bin",
           "VALGRIND", "SLOWDOWN"]
