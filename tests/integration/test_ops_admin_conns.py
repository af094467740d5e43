"""The admin listener's own connections are bounded: a client that stalls is
closed after limits.header_timeout (before its head, and again while not
reading its answer), at most 64 are open at once, and shutdown closes the
ones still open, so the process exits however its admin clients behave."""
import signal
import socket
import time

from support.http import get
from support.ops import AdminPort, wait_until, wait_exit

MAX_CONNS = 64


def admin_socket(adm):
    s = socket.create_connection(("127.0.0.1", adm.port), timeout=5)
    s.settimeout(5)
    return s


def closed_by_peer(s, timeout):
    """True when the proxy closes s (EOF or reset) within timeout."""
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_stalled_clients_are_closed(proxy, backend):
    be = backend()
    adm = AdminPort()
    proxy(upstreams={"web": [be.address]}, admin=adm.config, limits={"header_timeout": "300ms"})
    assert adm.get("/healthz").status == 200
    silent, partial = admin_socket(adm), admin_socket(adm)
    try:
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        assert closed_by_peer(silent, 5) and closed_by_peer(partial, 5)
        assert time.monotonic() - t0 < 4
    finally:
        silent.close()
        partial.close()
    assert adm.get("/healthz").status == 200


def test_at_most_64_open(proxy, backend):
    be = backend()
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, admin=adm.config, limits={"header_timeout": "60s"})
    assert adm.get("/healthz").status == 200
    held = []
    try:
        for _ in range(MAX_CONNS):
            held.append(admin_socket(adm))
        # Accepted in order: once the proxy has seen all of them, one more
        # is closed at once rather than held.
        extra = admin_socket(adm)
        held.append(extra)
        assert closed_by_peer(extra, 5), "a connection past the cap was kept open"
        wait_until(lambda: "connections open, closing a new one" in px.stderr(), 5, "the warning")
        for s in held[:8]:
            s.close()
        # Room again: a probe gets through once the closes were seen.
        wait_until(lambda: _healthz(adm), 5, "/healthz answered after room was made")
    finally:
        for s in held:
            s.close()


def _healthz(adm):
    try:
        return adm.get("/healthz", timeout=1).status == 200
    except (OSError, AssertionError):
        return False


def test_shutdown_with_a_stalled_client(proxy, backend):
    be = backend()
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, admin=adm.config,
               limits={"header_timeout": "60s"}, timeouts={"drain": "1s"})
    assert px.request(get("/")).status == 200
    s = admin_socket(adm)
    try:
        s.sendall(b"GET /status.json HTTP/1.1\r\n")  # and never the end of the head
        assert adm.get("/healthz").status == 200  # the stalled one is accepted by now
        px.proc.send_signal(signal.SIGTERM)
        assert wait_exit(px, 10) == 0
        assert closed_by_peer(s, 5)
    finally:
        s.close()
