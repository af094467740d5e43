"""The descriptor budget, with RLIMIT_NOFILE 256: tunnels whose readers stall
hold pipes, but the proxy never runs out of descriptors. A switch never fails
after its 101 (the hand-off takes the connection's own sockets, no new
descriptor; a 503 before any 101 is fine, a 101-then-drop is not); connections over the
budget wait in the kernel's backlog (no reset from the accept path); the log
stays small; and everything is served once the tunnels end."""
import socket
import time

from support.http import HTTPTimeout, Reader, deadline_in, read_response
from support.ops import AdminPort
from support.tunnel import upgrade_request, upgrader  # noqa: F401 (fixture)

NOFILE = 256
CHUNK = b"x" * 65536


def stall(c):
    """The client pushes until its send buffer is full: the backend never
    reads, so the proxy's side of that direction fills up too (a pipe, or
    pending bytes when no pipe may be had)."""
    c.sock.setblocking(False)
    for _ in range(200):  # at most 12.5 MiB per tunnel, bounded in count
        try:
            c.sock.send(CHUNK)
        except BlockingIOError:
            break
    c.sock.setblocking(True)


def test_low_descriptor_limit_with_stalled_readers(proxy, upgrader):
    up = upgrader()
    adm = AdminPort()
    px = proxy(upstreams={"ws": [up.address]}, proc_nofile=NOFILE, workers=1, admin=adm.config)
    m = adm.metrics()
    budget = int(m.one("switchyard_fd_budget"))
    assert 0 < budget < NOFILE, m.text

    # Fill the budget with stalled tunnels: each takes 2 descriptors, and its
    # stalled direction a pipe (2 more) while pipes are to be had.
    tunnels = []
    refused = 0
    for _ in range(budget // 2 + 8):
        c = px.connect()
        c.send(upgrade_request("/ws"))
        try:
            r = c.response(timeout=1.0)  # an EOF or reset here fails the test
        except HTTPTimeout:
            r = None  # no answer yet: waiting in the backlog
        if r is None:
            tunnels.append((c, None))
            continue
        if r.status == 503:
            refused += 1  # refused before any 101: fine, never 101-then-drop
            c.close()
            continue
        assert r.status == 101, r.head
        be = up.take(10)
        stall(c)
        tunnels.append((c, be))
    switched = [(c, be) for c, be in tunnels if be is not None]
    waiting = [c for c, be in tunnels if be is None]
    assert len(switched) >= 8, (len(switched), len(waiting), refused)
    assert waiting or refused, "the budget never ran short: the test proves nothing"

    m = adm.metrics()
    assert m.one("switchyard_fd_budget_used") <= budget, m.text
    assert px.open_fds() <= NOFILE - 8, px.open_fds()

    # Every tunnel that got its 101 still works: the upstream receives what
    # the client sent (read a little from each backend end).
    for c, be in switched[:4]:
        be.sock.settimeout(10)
        assert be.sock.recv(65536), "a switched tunnel carries nothing"

    # Waiting clients were not reset by the accept path.
    for c in waiting:
        c.sock.setblocking(False)
        try:
            data = c.sock.recv(1, socket.MSG_PEEK)
            assert data, "a waiting client was closed by the proxy"
        except BlockingIOError:
            pass  # nothing yet: still waiting, as it should
        c.sock.setblocking(True)

    # The tunnels end: the waiting clients get their answers.
    for c, be in switched:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
        be.sock.close()
    for c in waiting:
        r = read_response(Reader(c.sock), deadline_in(20))
        assert r.status in (101, 503), r.head
        c.close()
    up.release()

    # Everything back; and the log did not grow per event.
    m = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 20,
                        "connections back to 0")
    assert m.one("switchyard_fd_budget_used") <= 4, m.text  # pooled pipes at most
    assert len(px.stderr()) < 20000, len(px.stderr())
    assert not px.crashed()
