"""`switchyard -t -c FILE`: config check, exit codes and file:line:column errors."""
import socket
import subprocess

import pytest

from conftest import SOURCE_DIR, switchyard_bin
from support.backend import free_port


def check(path, timeout=10):
    p = subprocess.run([switchyard_bin(), "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def first_error_line(stderr):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines, "no message on stderr"
    return lines[0]


GOOD = """\
listeners:
  - address: 127.0.0.1:{p1}
  - address: 127.0.0.1:{p2}
upstreams:
  web:
    servers:
      - address: 127.0.0.1:{u1}
      - address: 127.0.0.1:{u2}
  api:
    servers: [{{address: 127.0.0.1:{u1}}}]
routes:
  - match:
      host: "*.example.com"
      path_prefix: /api
      methods: [GET, POST]
      headers:
        - name: X-Tenant
          value: blue
        - name: X-Present
    upstream: api
  - match: {{ host: www.example.com, path: /exact }}
    upstream: web
  - match: {{ upgrade: [websocket] }}
    upstream: web
  - match: {{ path_prefix: / }}
    upstream: web
timeouts:
  connect: 2s
  response: 300ms
  client_idle: 1m
limits:
  max_header_bytes: 8KiB
  header_timeout: 10s
  max_headers: 50
forwarding:
  x_forwarded_for: true
  x_forwarded_proto: false
  x_forwarded_host: true
  via: false
access_log: off
"""


def good_text():
    return GOOD.format(p1=free_port(), p2=free_port(), u1=free_port(), u2=free_port())


def test_shipped_configs_pass():
    files = sorted((SOURCE_DIR / "config").glob("*.yaml"))
    assert files, "no config/*.yaml files in %s" % SOURCE_DIR
    for f in files:
        rc, out, err = check(f)
        assert rc == 0, "%s: rc=%d stderr=%s" % (f, rc, err)


def test_every_contract_key_accepted(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(good_text())
    rc, out, err = check(f)
    assert rc == 0, "rc=%d stderr=%s" % (rc, err)


@pytest.mark.parametrize("log", ["stdout", "off", "PATH"])
def test_access_log_values_accepted(tmp_path, log):
    if log == "PATH":
        log = str(tmp_path / "access.log")
    f = tmp_path / "good.yaml"
    f.write_text(good_text().replace("access_log: off", "access_log: %s" % log))
    rc, out, err = check(f)
    assert rc == 0, "rc=%d stderr=%s" % (rc, err)


def test_check_does_not_bind(tmp_path):
    """-t with the listener's port held by someone else still says OK (it does
    not try to bind), returns promptly, and leaves the port alone."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        f = tmp_path / "hold.yaml"
        f.write_text(good_text().replace("listeners:\n", "listeners:\n  - address: 127.0.0.1:%d\n" % port, 1))
        rc, out, err = check(f)
        assert rc == 0, "rc=%d stderr=%s" % (rc, err)
        # our socket still owns the port and is still the one that accepts
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        holder.settimeout(5)
        s, _ = holder.accept()
        s.close()
        c.close()
    finally:
        holder.close()
    # and with the port free, -t leaves it free: we can bind it afterwards
    port2 = free_port()
    f2 = tmp_path / "free.yaml"
    f2.write_text(good_text().replace("listeners:\n", "listeners:\n  - address: 127.0.0.1:%d\n" % port2, 1))
    rc, out, err = check(f2)
    assert rc == 0, err
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port2))
    finally:
        s.close()


def test_missing_file(tmp_path):
    rc, out, err = check(tmp_path / "nope.yaml")
    assert rc == 1
    assert "nope.yaml" in err


BASE = """\
listeners:
  - address: 127.0.0.1:{p1}
upstreams:
  web:
    servers:
      - address: 127.0.0.1:{u1}
routes:
  - match: {{ path_prefix: / }}
    upstream: web
"""

# (name, text appended/substituted, expected (line, column) choices, fragment of the message)
CASES = {
    # key position of the unknown key
    "unknown_key": (BASE.replace("      - address: 127.0.0.1:{u1}\n",
                                 "      - address: 127.0.0.1:{u1}\n    colour: blue\n"),
                    [(7, 5)], "colour"),
    # value position of the wrongly typed value
    "wrong_type": (BASE + "timeouts: [1, 2]\n", [(10, 11)], None),
    "missing_upstream": (BASE.replace("    upstream: web", "    upstream: nosuch"),
                         [(9, 15)], "nosuch"),
    # the second declaration: its address value (or the key starting the item)
    "duplicate_listener": (BASE.replace("  - address: 127.0.0.1:{p1}\n",
                                        "  - address: 127.0.0.1:{p1}\n  - address: 127.0.0.1:{p1}\n"),
                           [(3, 14), (3, 5)], None),
    "bad_duration": (BASE + "timeouts:\n  connect: 5 s\n", [(11, 12)], None),
    "bad_bool": (BASE + "forwarding:\n  via: sometimes\n", [(11, 8)], None),
    "bad_size": (BASE + "limits:\n  max_header_bytes: 4 KiB\n", [(11, 21)], None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_location(tmp_path, case):
    text, where, fragment = CASES[case]
    f = tmp_path / ("%s.yaml" % case)
    f.write_text(text.format(p1=free_port(), u1=free_port()))
    rc, out, err = check(f)
    assert rc == 1, "rc=%d stderr=%s" % (rc, err)
    line = first_error_line(err)
    prefixes = ["%s:%d:%d: " % (f, ln, col) for ln, col in where]
    assert any(line.startswith(p) for p in prefixes), \
        "expected a line starting with one of %r, got %r\nfile:\n%s" % (prefixes, line, f.read_text())
    msg = line.split(": ", 1)[1]
    assert msg.strip(), "empty message"
    if fragment:
        assert fragment in msg, "message %r does not name %r" % (msg, fragment)
