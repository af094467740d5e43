"""HAProxy as a real peer (Debian's haproxy): in front of switchyard with
send-proxy(-v2), as an AWS NLB with the PROXY protocol would be, or behind it
with accept-proxy.

    def test_x(haproxy):               # from support.haproxy import haproxy
        h = haproxy(sections_text, [(host, port), ...])

`haproxy(sections, ports)` writes a config (DEFAULTS: a `global` and a
`defaults` section with timeouts of 5-30 s, then `sections`), runs
`haproxy -db -f cfg` in the foreground and returns once every (host, port) of
its frontends accepts; the fixture stops them all at teardown. Skips the test
when haproxy is not installed.

connect_from(src, port) is a TCP connection bound to a loopback source
address, so a test can tell the client's address from HAProxy's."""
import shutil
import socket
import subprocess
import time

import pytest

from . import procs

DEFAULTS = ("global\n  maxconn 200\n"
            "defaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
            "  timeout tunnel 30s\n")


class HAProxy:
    """`haproxy -db -f cfg` in the foreground; its frontends' ports are
    polled until they accept; stop() ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, cfg_text, ports, workdir, name="haproxy"):
        self.cfg = workdir / ("%s.cfg" % name)
        self.cfg.write_text(cfg_text)
        self.err_path = workdir / ("%s.stderr" % name)
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)],
                                     stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err)
        end = time.monotonic() + 10
        for host, port in ports:
            while True:
                assert self.proc.poll() is None, "haproxy exited: %s" % self.stderr()
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM)
                try:
                    s.settimeout(0.5)
                    s.connect((host, port))
                    break
                except OSError:
                    assert time.monotonic() < end, "haproxy not listening on %s:%d: %s" % (
                        host, port, self.stderr())
                    time.sleep(0.02)  # poll interval of a bounded condition wait
                finally:
                    s.close()

    def stderr(self):
        return self.err_path.read_bytes().decode("utf-8", "replace")

    def stop(self):
        procs.stop(self.proc)
        self._err.close()


@pytest.fixture
def haproxy(tmp_path):
    if not shutil.which("haproxy"):
        pytest.skip("haproxy is not installed")
    made = []

    def factory(sections, ports):
        h = HAProxy(DEFAULTS + sections, ports, tmp_path, "haproxy%d" % len(made))
        made.append(h)
        return h

    yield factory
    for h in made:
        h.stop()


def connect_from(src, port, dst=None, timeout=10.0):
    """A TCP connection bound to source address src (127.0.0.x or ::1)."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect((dst or ("::1" if fam == socket.AF_INET6 else "127.0.0.1"), port))
    return s
