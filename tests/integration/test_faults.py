"""Fault injection ("Hardening", item 5): peers that refuse, die, reset or stop
reading at the worst moment, descriptor exhaustion and a config naming a host
that does not resolve. Each test asserts that the proxy did not crash, that a
bystander connection (and a fresh one) is still served, the status or close the
client sees, and the log line the operator gets."""
import re
import select
import socket
import subprocess
import threading
import time

import pytest

from conftest import VALGRIND, simple_get, switchyard_bin, to_yaml
from support.http import Reader, read_response, deadline_in, chunk
from support.ops import AdminPort
from support.tunnel import (upgrader, upgrade_request, switching, open_tunnel,  # noqa: F401 (fixture)
                            Stream, pump, assert_pumped, payload, End)
from support.faults import (MiB, RSS_LIMIT_KIB, Bystander, Pattern, Checker, Progress, abort,
                            assert_alive, cpu_delta, echo_end, ends_while_writing,
                            rss_samples, streaming_handler, wait_stall, wait_stderr, wait_until)

no_valgrind = pytest.mark.skipif(VALGRIND, reason="memory/CPU figures are memcheck's under valgrind")


def two_route_proxy(proxy, good, bad_address, bad_route=None, **cfg):
    """/fault/... goes to the faulty upstream, everything else to `good` (an echo backend)."""
    r = {"name": "fault", "match": {"path_prefix": "/fault"}, "upstream": "bad"}
    r.update(bad_route or {})
    return proxy(upstreams={"good": [good.address], "bad": [bad_address]},
                 routes=[r, {"name": "good", "match": {"path_prefix": "/"}, "upstream": "good"}],
                 **cfg)


def ws_proxy(proxy, good, up, **cfg):
    return proxy(upstreams={"good": [good.address], "ws": [up.address]},
                 routes=[{"name": "wsroute", "match": {"path_prefix": "/ws"}, "upstream": "ws"},
                         {"name": "good", "match": {"path_prefix": "/"}, "upstream": "good"}],
                 **cfg)


def tunnel_log(px, timeout=5.0):
    return px.wait_log(lambda e: e.get("type") == "tunnel", timeout=timeout)[0]


def finish(px, by):
    """The common end of every test: the proxy is alive and still serves."""
    assert_alive(px)
    by.check()
    by.close()
    assert_alive(px)


def read_raw_until_end(sock, timeout):
    """Everything the peer sends until it closes: (bytes, "eof"|"reset"), or
    AssertionError when it is still open after timeout."""
    r = Reader(sock)
    try:
        data = r.read_to_eof(deadline_in(timeout))
    except AssertionError as e:
        raise AssertionError("connection still open after %.0fs: %s" % (timeout, e)) from None
    return data, ("reset" if r.reset else "eof")


def split_head(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no complete response head in %r" % raw[:300]
    return head + sep, body


def chunked_state(body):
    """(payload bytes, complete?) of a chunked body, however far it got."""
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(out), body.find(b"\r\n", eol + 2) >= 0
        if len(body) < eol + 2 + size + 2:
            out += body[eol + 2:eol + 2 + size]
            return bytes(out), False
        out += body[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


# ------------------------------------------------------------------ upstream refuses

def test_upstream_refuses(proxy, backend, refusing):
    good = backend()
    bad = refusing()
    px = two_route_proxy(proxy, good, bad.address)
    by = Bystander(px)
    by.check()
    statuses = []
    for i in range(6):
        statuses.append(px.request(simple_get("/fault/%d" % i)).status)
        by.check(fresh_too=False)
    # the first answers are 502; once the server is ejected (3 failed connects)
    # "no server is up" is a 503
    assert statuses[0] == 502 and all(s in (502, 503) for s in statuses), statuses
    wait_stderr(px, r"upstream %s: connect failed" % re.escape(bad.address))
    es = px.wait_log(lambda e: str(e.get("path", "")).startswith("/fault/"), n=6)
    assert [e["status"] for e in es] == statuses, es
    finish(px, by)


# ------------------------------------------------------------------ upstream dies mid-request

def dies_after_body_bytes(n, how):
    """Backend handler: read the head and n bytes of the body, then die
    ("rst": close with unread data pending = RST; "fin": drain-free close)."""
    def handler(conn):
        head = conn.reader.read_until(b"\r\n\r\n", deadline_in(10))
        if head is None:
            return
        conn.reader.read_exact(n, deadline_in(10))
        if how == "rst":
            abort(conn.sock)
        else:
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.sock.close()
        conn.closed = True
    return handler


def upload_into_dying_upstream(px, path, total=32 * MiB):
    """POST a large body on a fresh connection (a thread sends it) and return
    the response the proxy gives while the upstream dies under the upload."""
    s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
    sent = [0]

    def upload():
        try:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: example.test\r\n"
                      b"Content-Length: %d\r\n\r\n" % (path.encode(), total))
            block = b"u" * (256 * 1024)
            while sent[0] < total:
                s.sendall(block)
                sent[0] += len(block)
        except OSError:
            pass  # the proxy stopped reading: expected
    t = threading.Thread(target=upload, daemon=True)
    t.start()
    try:
        r = read_response(Reader(s), deadline_in(15))
        assert r is not None, "connection closed without an answer (sent %d)" % sent[0]
        assert sent[0] < total, "the whole body went through a dead upstream?"
        return r
    finally:
        s.close()
        t.join(10)


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_upstream_dies_mid_upload(proxy, backend, how):
    """The upstream dies after 256 KiB of a 32 MiB upload: 502, the client's
    connection is closed cleanly, nothing else is disturbed. Three rounds:
    the crash this found (a write request zeroed while queued on the closing
    upstream handle) depends on event ordering."""
    good = backend()
    bad = backend(handler=dies_after_body_bytes(256 * 1024, how), name="dies")
    px = two_route_proxy(proxy, good, bad.address)
    by = Bystander(px)
    by.check()
    for i in range(3):
        r = upload_into_dying_upstream(px, "/fault/upload/%d" % i)
        assert r.status == 502, r.head
        assert_alive(px)
        by.check(fresh_too=False)
    es = px.wait_log(lambda e: str(e.get("path", "")).startswith("/fault/upload/"), n=3)
    assert [e["status"] for e in es] == [502] * 3, es
    finish(px, by)


# ------------------------------------------------------------------ upstream dies mid-response

def dies_mid_response(framing, how, body_bytes, go):
    """Backend handler: answer with part of a body, wait until the test has
    seen some of it arrive (go), then die (FIN or RST)."""
    def handler(conn):
        req = conn.read_request(timeout=10)
        if req is None:
            return
        if framing == "length":
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 * body_bytes)
            body = body_bytes * b"L"
        elif framing == "chunked":
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            body = chunk(b"C" * body_bytes, 64 * 1024)[:-5]  # without the last-chunk
        else:  # ends at EOF
            head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
            body = body_bytes * b"E"
        conn.sock.sendall(head + body)
        go.wait(10)
        if how == "rst":
            abort(conn.sock)
        else:
            conn.sock.close()
        conn.closed = True
    return handler


@pytest.mark.parametrize("framing,how", [("length", "fin"), ("length", "rst"),
                                         ("chunked", "fin"), ("chunked", "rst"),
                                         ("eof", "rst")])
def test_upstream_dies_mid_response(proxy, backend, framing, how):
    """Part of the body is out: the client must see its connection end
    without a complete message (no last-chunk, fewer bytes than
    Content-Length, or an RST for a close-delimited body)."""
    good = backend()
    n = 1 * MiB
    go = threading.Event()
    bad = backend(handler=dies_mid_response(framing, how, n, go), name="dies")
    px = two_route_proxy(proxy, good, bad.address)
    by = Bystander(px)
    by.check()
    with socket.create_connection(("127.0.0.1", px.port), timeout=10) as s:
        s.sendall(simple_get("/fault/download"))
        r = Reader(s)
        head = r.read_until(b"\r\n\r\n", deadline_in(10))
        assert head and head.startswith(b"HTTP/1.1 200 "), head
        while len(r.buf) < 64 * 1024:   # some of the body is through: now the upstream dies
            assert r._fill(deadline_in(10)) > 0, "EOF before any body arrived"
        go.set()
        body = r.read_to_eof(deadline_in(10))  # (starts with what is buffered)
        end = "reset" if r.reset else "eof"
    lhead = head.lower()
    if b"content-length:" in lhead:
        declared = int(re.search(rb"content-length: *(\d+)", lhead).group(1))
        assert len(body) < declared, "a truncated response looked complete: %r" % head
        got = body
    elif b"transfer-encoding: chunked" in lhead:
        got, complete = chunked_state(body)
        assert not complete, "the proxy ended a truncated body with a last-chunk: %r" % body[-40:]
    else:
        # close-delimited towards the client too: only an RST tells a truncation
        assert end == "reset", "a close-delimited body cut by the upstream's RST ended " \
                               "with a clean FIN: the client takes it as complete"
        got = body
    assert len(got) <= n and got == got[:1] * len(got), "body bytes corrupted"
    wait_stderr(px, r"upstream %s: connection closed before the response ended"
                % re.escape(bad.address))
    finish(px, by)


# ------------------------------------------------------------------ upstream closes a tunnel

def answer_101_then_close(how):
    def handler(conn):
        req = conn.read_request(timeout=10)
        if req is None:
            return
        conn.sock.sendall(switching())
        if how == "rst":
            abort(conn.sock)
        else:
            conn.sock.close()
        conn.closed = True
    return handler


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_upstream_closes_right_after_101(proxy, backend, how):
    good = backend()
    bad = backend(handler=answer_101_then_close(how), name="101-close")
    px = proxy(upstreams={"good": [good.address], "ws": [bad.address]},
               routes=[{"name": "wsroute", "match": {"path_prefix": "/ws"}, "upstream": "ws"},
                       {"name": "good", "match": {"path_prefix": "/"}, "upstream": "good"}],
               timeouts={"tunnel_fin": "2s"})
    by = Bystander(px)
    by.check()
    with px.connect() as c:
        c.send(upgrade_request("/ws"))
        r = c.response()
        assert r.status == 101, r.head
        cl = End(c.sock, c.reader, "client")
        how_end, extra = cl.wait_end(5)
        assert extra == b"", extra[:200]
    e = tunnel_log(px, timeout=6)
    assert e["closed_by"] == "upstream" and e["reason"] in ("eof", "reset"), e
    assert e["bytes_to_client"] == 0 and e["bytes_to_upstream"] == 0, e
    finish(px, by)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_upstream_dies_mid_tunnel(proxy, backend, upgrader, how):
    """The upstream goes away while the client is sending in bulk: the
    client sees EOF or RST promptly, the tunnel is logged as ended by it."""
    good = backend()
    up = upgrader()
    px = ws_proxy(proxy, good, up, timeouts={"tunnel_fin": "2s"})
    by = Bystander(px)
    by.check()
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    with c:
        assert_pumped(pump([Stream(cl, be, payload(2 * MiB, "up")),
                            Stream(be, cl, payload(2 * MiB, "down"))], timeout=20))
        cl.send(b"x" * 100000)      # in flight towards the upstream
        if how == "rst":
            be.abort()              # dies with those bytes unread: RST
        else:
            be.expect(b"x" * 100000)
            be.close()              # dies with nothing unread: FIN
        t0 = time.monotonic()
        ended = ends_while_writing(c.sock, 5)
        assert ended, "the client's connection is still open 5 s after the upstream died"
        assert time.monotonic() - t0 < 3, ended
    e = tunnel_log(px)
    assert e["closed_by"] == "upstream", e
    assert e["reason"] in (("reset", "error") if how == "rst" else ("eof", "reset", "error")), e
    finish(px, by)


# ------------------------------------------------------------------ client resets

def test_client_resets_mid_upload(proxy, backend):
    good = backend()
    got = Progress()

    def sink_handler(conn):
        head = conn.reader.read_until(b"\r\n\r\n", deadline_in(10))
        if head is None:
            return
        got.received = len(conn.reader.buf)
        conn.reader.buf.clear()
        conn.sock.settimeout(10)
        while True:
            try:
                d = conn.sock.recv(256 * 1024)
            except ConnectionResetError:
                got.ended = "reset"
                return
            except socket.timeout:
                got.ended = "timeout"
                return
            if not d:
                got.ended = "eof"
                return
            got.received += len(d)
    bad = backend(handler=sink_handler, name="sink")
    px = two_route_proxy(proxy, good, bad.address)
    by = Bystander(px)
    by.check()
    s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
    s.sendall(b"POST /fault/upload HTTP/1.1\r\nHost: example.test\r\n"
              b"Content-Length: %d\r\n\r\n" % (64 * MiB))
    s.sendall(b"b" * (2 * MiB))
    client_addr = "127.0.0.1:%d" % s.getsockname()[1]
    wait_until(lambda: got.received >= MiB, 10, "the upload to reach the upstream")
    abort(s)
    t0 = time.monotonic()
    wait_until(lambda: got.ended, 5, "the upstream connection to be closed")
    assert got.ended in ("eof", "reset"), got.ended
    assert time.monotonic() - t0 < 2.0, "upstream closed only after %.1fs" % (time.monotonic() - t0)
    by.check()
    # The operator learns about the abandoned request somewhere: an access log
    # entry for it, or a diagnostic on stderr.
    logged = [e for e in px.log_entries() if e.get("path") == "/fault/upload"]
    err = [ln for ln in px.stderr().splitlines() if client_addr in ln]
    assert logged or err, ("a request abandoned mid-upload by a client reset leaves no trace: "
                           "no access log entry, no stderr line\nstdout:\n%s\nstderr:\n%s"
                           % (px.stdout()[-2000:], px.stderr()[-2000:]))
    finish(px, by)


def test_client_resets_mid_tunnel(proxy, backend, upgrader):
    good = backend()
    up = upgrader()
    px = ws_proxy(proxy, good, up)
    by = Bystander(px)
    by.check()
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    assert_pumped(pump([Stream(cl, be, payload(MiB, "a")), Stream(be, cl, payload(MiB, "b"))],
                       timeout=20))
    cl.send(b"y" * 200000)
    be.sock.sendall(b"z" * 200000)
    cl.abort()
    t0 = time.monotonic()
    ended = ends_while_writing(be.sock, 5)
    assert ended, "upstream still open 5 s after the client's reset"
    assert time.monotonic() - t0 < 2.0, (ended, time.monotonic() - t0)
    e = tunnel_log(px)
    assert e["closed_by"] == "client" and e["reason"] == "reset", e
    finish(px, by)


# ------------------------------------------------------------------ readers that stop reading

@no_valgrind
def test_download_reader_stops_reading(proxy, backend):
    """A 100 MiB response to a client that does not read: the upstream is
    held back, the proxy's RSS stays bounded, and everything arrives intact
    once the client reads."""
    good = backend()
    pat = Pattern(100 * MiB)
    prog = Progress()
    bad = backend(handler=streaming_handler(pat, prog), name="big")
    px = two_route_proxy(proxy, good, bad.address)
    by = Bystander(px)
    by.check()
    base = px.vm_rss_kib()
    s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    try:
        s.sendall(simple_get("/fault/big"))
        stalled_at = wait_stall(lambda: prog.sent, "the upstream's sending", timeout=30)
        assert stalled_at < pat.total, "all 100 MiB left the upstream with nobody reading"
        rss = rss_samples(px, 1.0)
        print("download: upstream stalled after %d bytes; RSS %d KiB (baseline %d)"
              % (stalled_at, max(rss), base))
        assert max(rss) < RSS_LIMIT_KIB, "RSS %r KiB (baseline %d) with a stalled reader" % (rss, base)
        by.check()
        # now read it all
        r = Reader(s)
        head = r.read_until(b"\r\n\r\n", deadline_in(10))
        assert head.startswith(b"HTTP/1.1 200 "), head
        chk = Checker(pat)
        r.read_exact(pat.total, deadline_in(120), sink=chk.feed)
        assert chk.got == pat.total and chk.mismatch is None, (chk.got, chk.mismatch)
    finally:
        s.close()
    assert max(rss_samples(px, 0.3)) < RSS_LIMIT_KIB
    e = px.wait_log(lambda e: e.get("path") == "/fault/big")[0]
    assert e["status"] == 200 and e["bytes_out"] >= pat.total, e
    finish(px, by)


@no_valgrind
def test_tunnel_reader_stops_reading(proxy, backend, upgrader):
    """The upstream floods a tunnel whose client does not read: bounded RSS,
    the flood is held back, and it all arrives once the client reads."""
    good = backend()
    up = upgrader()
    px = ws_proxy(proxy, good, up)
    by = Bystander(px)
    by.check()
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    pat = Pattern(64 * MiB)
    prog = Progress()

    def flood():
        be.sock.settimeout(120)
        try:
            for off in range(0, pat.total, 256 * 1024):
                be.sock.sendall(pat.piece(off, 256 * 1024))
                prog.sent = off + 256 * 1024
            prog.ended = "done"
        except OSError as e:
            prog.ended = "send: %r" % e
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    with c:
        stalled_at = wait_stall(lambda: prog.sent, "the upstream's flood", timeout=30)
        assert stalled_at < pat.total, "the whole flood left the upstream with nobody reading"
        rss = rss_samples(px, 1.0)
        print("tunnel: flood stalled after %d bytes; RSS %d KiB" % (stalled_at, max(rss)))
        assert max(rss) < RSS_LIMIT_KIB, "RSS %r KiB with a stalled tunnel reader" % rss
        by.check()
        chk = Checker(pat)
        cl.reader.record = None
        cl.reader.read_exact(pat.total, deadline_in(120), sink=chk.feed)
        assert chk.got == pat.total and chk.mismatch is None, (chk.got, chk.mismatch)
        t.join(10)
        assert prog.ended == "done", prog.ended
        cl.send(b"bye")
        be.expect(b"bye")
        be.close()
        assert cl.wait_end(5)[1] == b""
    e = tunnel_log(px)
    assert e["bytes_to_client"] == pat.total, e
    finish(px, by)


# ------------------------------------------------------------------ EMFILE

@pytest.mark.skipif(VALGRIND, reason="valgrind keeps descriptors of its own under the limit")
def test_descriptor_limit_pauses_instead_of_dropping(proxy, backend):
    """RLIMIT_NOFILE 64 (soft and hard): the proxy caps its connections at
    what the descriptors allow (2 each, after a reserve: 16 here) and says so
    at start. Clients beyond that wait in the listen backlog: never accepted
    and dropped (libuv's EMFILE fallback would do that silently), never a
    crash or a spin. Early connections are served, each request with a new
    upstream descriptor; a waiting connection is served once one closes."""
    good = backend()
    # no upstream keep-alive: every request needs a new upstream descriptor
    px = proxy(upstreams={"good": {"servers": [{"address": good.address}],
                                   "keepalive": {"max_idle": 0}}},
               workers=1, proc_nofile=64)
    wait_stderr(px, r"accepting at most 16 connections")
    held = []
    try:
        for i in range(40):
            held.append(socket.create_connection(("127.0.0.1", px.port), timeout=2))
        wait_stderr(px, r"max_connections \(16\) reached: not accepting")
        cpu = cpu_delta(px, 1.0)
        peak = px.open_fds()
        assert peak < 64, "the proxy used %d of its 64 descriptors" % peak
        # nobody was shut out: no connection is readable (EOF or RST)
        shut = [i for i, s in enumerate(held) if select.select([s], [], [], 0)[0]]
        assert not shut, "connections %r were closed by the proxy" % shut
        # the first ones were accepted: served, each with a new upstream socket
        for s in held[:3]:
            s.sendall(simple_get("/early"))
            r = read_response(Reader(s), deadline_in(5))
            assert r and r.status == 200, r
        # the last one waits in the backlog; a closed early one makes room
        last = held[-1]
        last.sendall(simple_get("/late"))
        for s in held[:len(held) - 16 + 1]:
            s.close()
        r = read_response(Reader(last), deadline_in(10))
        assert r and r.status == 200, r
    finally:
        for s in held:
            s.close()
    assert cpu < 0.5, "the proxy burnt %.2fs of CPU in 1 s while paused" % cpu
    assert px.request(simple_get("/again"), timeout=3).status == 200
    assert not re.search(r"(?i)accept.*(too many open files|EMFILE)", px.stderr()), \
        "accept ran out of descriptors: %r" % px.stderr()[-400:]
    finish(px, Bystander(px))


# ------------------------------------------------------------------ unresolvable host

def test_unresolvable_upstream_host(tmp_path, proxy, backend):
    """A name that does not resolve is no configuration error (it may resolve
    later, DNS discovery): -t passes, the proxy starts, requests to that
    upstream get 503 and the others are served."""
    good = backend()
    ups = {"web": {"servers": [{"address": "no-such-host.invalid:8080"}]},
           "good": {"servers": [{"address": good.address}]}}
    routes = [{"match": {"path_prefix": "/ok"}, "upstream": "good"},
              {"match": {"path_prefix": "/"}, "upstream": "web"}]
    path = tmp_path / "unresolvable.yaml"
    path.write_text(to_yaml({"listeners": [{"address": "127.0.0.1:1"}],
                             "upstreams": ups, "routes": routes}))
    p = subprocess.run([switchyard_bin(), "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p
    px = proxy(upstreams=ups, routes=routes)
    assert px.request(simple_get("/x")).status == 503
    assert px.request(simple_get("/ok")).status == 200
    assert not px.crashed()


def test_badly_formed_upstream_host_is_refused_with_its_position(tmp_path):
    cfg = {"listeners": [{"address": "127.0.0.1:1"}],
           "upstreams": {"web": {"servers": [{"address": "no_such..host:8080"}]}},
           "routes": [{"match": {"path_prefix": "/"}, "upstream": "web"}]}
    text = to_yaml(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "no_such" in ln)
    col = text.splitlines()[line - 1].index('"no_such') + 1
    for argv in (["-t", "-c", str(path)], ["-c", str(path)]):
        p = subprocess.run([switchyard_bin()] + argv, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
        err = p.stderr.decode(errors="replace")
        assert p.returncode == 1, (argv, p.returncode, err)
        m = re.search(r"%s:(\d+):(\d+): (.*)" % re.escape(str(path)), err)
        assert m, "no file:line:column in %r" % err
        assert int(m.group(1)) == line and int(m.group(2)) == col, (m.groups(), line, col, text)
        assert "valid host name" in m.group(3), err


def test_unresolvable_upstream_host_on_reload(proxy, backend):
    from support.ops import reload
    good = backend()
    px = proxy(upstreams={"good": [good.address]})
    by = Bystander(px)
    by.check()
    ups = dict(px.config["upstreams"], web={"servers": [{"address": "no-such-host.invalid:80"}]})
    routes = [{"match": {"path_prefix": "/web"}, "upstream": "web"}] + px.config["routes"]
    verdict = reload(px, dict(px.config, upstreams=ups, routes=routes))
    assert "reloaded" in verdict, verdict  # taken: the name may resolve later
    assert px.request(simple_get("/web/x")).status == 503
    finish(px, by)


# ------------------------------------------------------------------ RST with data in flight

def test_client_reset_with_megabytes_in_flight(proxy, backend, upgrader):
    """Through an echo tunnel the client sends megabytes without reading,
    until everything is stuck (pipes and socket buffers full both ways), then
    resets. The tunnel must be freed (log line, tunnels_open 0), the upstream
    closed, and the proxy's CPU idle."""
    good = backend()
    up = upgrader()
    adm = AdminPort()
    px = ws_proxy(proxy, good, up, admin=adm.config)
    by = Bystander(px)
    by.check()
    c, cl, be, _ = open_tunnel(px, up, upgrade_request("/ws"))
    prog = Progress()
    stop = threading.Event()
    t = threading.Thread(target=echo_end, args=(be, prog, stop), daemon=True)
    t.start()
    try:
        s = c.sock
        s.setblocking(False)
        sent = [0]
        block = b"m" * (64 * 1024)

        def push():
            for _ in range(1000):
                try:
                    sent[0] += s.send(block)
                except (BlockingIOError, InterruptedError):
                    return sent[0]
                if sent[0] >= 64 * MiB:
                    return sent[0]
            return sent[0]
        wait_stall(push, "the client's sending", quiet=0.5, timeout=30, interval=0.02)
        assert sent[0] > 2 * MiB, "only %d bytes went in before the tunnel stalled" % sent[0]
        print("echo tunnel: %d bytes in before the stall, %d echoed" % (sent[0], prog.sent))
        adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 1, 5, "one tunnel open")
        abort(s)
        t0 = time.monotonic()
        wait_until(lambda: prog.ended, 5, "the upstream side of the tunnel to be closed")
        assert time.monotonic() - t0 < 2.0, "upstream closed only after %.1fs" % (time.monotonic() - t0)
    finally:
        stop.set()
        t.join(5)
    e = tunnel_log(px)
    assert e["closed_by"] == "client" and e["reason"] in ("reset", "error"), e
    adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 0, 5, "no tunnel open")
    if not VALGRIND:
        d = cpu_delta(px, 1.0)
        print("CPU in the second after the reset: %.3fs" % d)
        assert d < 0.2, "the proxy used %.2fs of CPU in the second after the reset" % d
    finish(px, by)
