"""HAProxy as a real peer: `haproxy -db -f cfg` in the foreground.

    def test_x(haproxy):                 # the fixture (import it into the test module)
        h = haproxy("frontend f\n  mode tcp\n  bind 127.0.0.1:%d\n ...", [("127.0.0.1", port)])

The fixture adds global and defaults sections (timeouts of 5-30 s), waits until
every given (host, port) accepts, and stops each HAProxy at teardown; skipped
when haproxy is not installed."""
import shutil
import socket
import subprocess
import time

import pytest

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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
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
