"""Access log to a file: one JSON object per line with the documented fields
for requests and tunnels; SIGUSR1 reopens the file after a rename."""
import os
import re
import select
import signal
import time

from support.http import response_bytes, get
from support.ops import file_entries, wait_until
from support.tunnel import upgrader, upgrade_request, open_tunnel, Stream, pump, assert_pumped  # noqa: F401

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REQUEST_KEYS = {"time", "type", "client_ip", "client_port", "method", "path", "route", "upstream", "status",
                "bytes_in", "bytes_out", "duration_ms"}
TUNNEL_KEYS = {"time", "type", "client_ip", "client_port", "protocol", "path", "route", "upstream", "duration_ms",
               "bytes_to_upstream", "bytes_to_client", "spliced", "copied", "closed_by", "reason"}


def num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def wait_entries(path, pred, n=1, timeout=5):
    return wait_until(lambda: (lambda h: h if len(h) >= n else None)(
        [e for e in file_entries(path) if pred(e)]), timeout, "%d matching lines in %s" % (n, path))


def test_request_and_tunnel_lines(proxy, backend, upgrader, tmp_path):
    log = tmp_path / "access.log"
    be = backend(response=response_bytes(200, body=b"hello"))
    up = upgrader()
    px = proxy(upstreams={"web": [be.address], "ws": [up.address]},
               routes=[{"name": "chat", "match": {"path_prefix": "/ws"}, "upstream": "ws"},
                       {"match": {"path_prefix": "/"}, "upstream": "web"}],
               access_log=str(log), workers=1)
    with px.connect() as c:
        req = get("/page?q=1")
        r = c.request(req)
        assert r.status == 200
        client_port = c.sock.getsockname()[1]
    e = wait_entries(log, lambda e: e.get("type") == "request")[0]
    assert REQUEST_KEYS <= set(e), REQUEST_KEYS - set(e)
    assert TIME.match(e["time"]), e
    assert (e["client_ip"], e["client_port"]) == ("127.0.0.1", client_port), e
    assert (e["method"], e["path"], e["route"], e["upstream"], e["status"]) == \
        ("GET", "/page", "#1", be.address, 200), e
    assert e["bytes_in"] in (0, len(req)) and e["bytes_out"] in (len(r.body), len(r.raw)), e
    assert num(e["duration_ms"]) and e["duration_ms"] < 5000, e

    c, cl, tbe, resp = open_tunnel(px, up, upgrade_request("/ws/room"))
    try:
        tport = c.sock.getsockname()[1]
        s = [Stream(cl, tbe, b"u" * 12345), Stream(tbe, cl, b"d" * 54321)]
        pump(s, timeout=10)
        assert_pumped(s)
        cl.shutdown_write()
        assert tbe.wait_end(5)[0] == "eof"
        tbe.shutdown_write()
        assert cl.wait_end(5)[0] == "eof"
    finally:
        c.close()
        tbe.close()
    t = wait_entries(log, lambda e: e.get("type") == "tunnel")[0]
    assert TUNNEL_KEYS <= set(t), TUNNEL_KEYS - set(t)
    assert TIME.match(t["time"]), t
    assert (t["client_ip"], t["client_port"]) == ("127.0.0.1", tport), t
    assert (t["protocol"], t["path"], t["route"], t["upstream"]) == \
        ("websocket", "/ws/room", "chat", up.address), t
    assert (t["bytes_to_upstream"], t["bytes_to_client"]) == (12345, 54321), t
    # bulk is spliced; reads that look like small messages (< 4 KiB) are copied
    assert t["spliced"] + t["copied"] == 12345 + 54321 and t["spliced"] >= 12345 + 54321 - 32768, t
    assert t["closed_by"] == "client" and t["reason"] == "eof", t
    assert num(t["duration_ms"]), t
    # the 101 itself is a request line too
    sw = [x for x in file_entries(log) if x.get("type") == "request" and x.get("path") == "/ws/room"]
    assert len(sw) == 1 and sw[0]["status"] == 101 and sw[0]["route"] == "chat", sw
    assert px.stdout() == ""


def test_sigusr1_reopens_after_rename(proxy, backend, tmp_path):
    log = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    be = backend(response=response_bytes(200, body=b"x"))
    px = proxy(upstreams={"web": [be.address]}, access_log=str(log), workers=2)
    for i in range(3):
        assert px.request(get("/before/%d" % i)).status == 200
    wait_entries(log, lambda e: e.get("path", "").startswith("/before"), n=3)
    os.rename(str(log), str(rotated))
    # still the old file (renamed) until the signal
    assert px.request(get("/between")).status == 200
    wait_entries(rotated, lambda e: e.get("path") == "/between")
    assert not log.exists()
    px.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: "reopening the access log" in px.stderr(), 5, "the SIGUSR1 message")
    wait_until(lambda: log.exists(), 5, "a new file at the access log path")
    for i in range(4):
        assert px.request(get("/after/%d" % i)).status == 200
    new = wait_entries(log, lambda e: e.get("path", "").startswith("/after"), n=4)
    assert len(new) == 4
    old = [e["path"] for e in file_entries(rotated)]
    # A line is queued after its response's last byte is written, so the next
    # request, on the other worker, can be logged first: only /between, sent
    # after the three were in the file, has a fixed place.
    assert sorted(old[:3]) == ["/before/0", "/before/1", "/before/2"] and old[3:] == ["/between"], old
    assert all(e["path"].startswith("/after") for e in file_entries(log)), file_entries(log)
    assert px.proc.poll() is None


def test_stuck_log_destination_never_stalls_requests(proxy, backend, tmp_path):
    """The access log goes to a FIFO whose reader never reads: once the pipe
    is full the log writer blocks, but requests keep being answered (lines
    queue in memory, then are dropped and counted) and the lines queued
    before are still delivered when the reader finally reads."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    # Opened before the proxy so its open() for writing does not wait.
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        be = backend(response=response_bytes(200, body=b"ok"))
        px = proxy(upstreams={"web": [be.address]}, access_log=str(fifo), workers=1)
        path = "/" + "p" * 400  # ~600-byte lines: 64 KiB of pipe is ~110 of them
        with px.connect() as c:
            for i in range(600):  # several pipe-fulls of log lines
                r = c.request(get(path + "/%d" % i))
                assert r.status == 200, (i, r.head)
        # the reader wakes up: what was queued arrives, whole lines of JSON
        got = b""
        end = time.monotonic() + 10
        while got.count(b"\n") < 200:
            try:
                chunk = os.read(rd, 1 << 16)
            except BlockingIOError:
                chunk = b""
            got += chunk
            assert time.monotonic() < end, "queued log lines never arrived"
            if not chunk:
                select.select([rd], [], [], 0.1)
        lines = got.split(b"\n")[:200]
        assert all(b'"type":"request"' in ln for ln in lines)
    finally:
        os.close(rd)
