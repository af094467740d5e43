"""Scriptable test backends on 127.0.0.1 (or ::1, host="::1").

    be = Backend(response=response_bytes(200, body=b"hi"))   # canned answer
    be = Backend(handler=my_handler)    # my_handler(conn) gets a BackendConn
    ... be.address ("127.0.0.1:PORT"), be.wait_requests(1), be.requests[0].head
    be.close()

Every accepted connection is a BackendConn that records the exact bytes it
received (conn.raw), the requests parsed from it (conn.requests) and whether the
peer closed it (conn.eof). Handlers run in their own thread each.
"""
import socket
import threading
import time

from .http import Reader, read_request, deadline_in, HTTPTimeout, ProtocolError

MAX_LIFETIME = 600.0  # no backend thread outlives this, whatever happens


class BackendConn:
    def __init__(self, backend, sock, peer, index):
        self.backend = backend
        self.sock = sock
        self.peer = peer
        self.index = index
        self.raw = bytearray()
        self.reader = Reader(sock, record=self.raw,
                             record_limit=backend.record_limit)
        self.requests = []
        self.closed = False
        self.error = None

    @property
    def eof(self):
        return self.reader.eof

    def read_request(self, timeout=10.0, sink=None):
        """Next request on this connection, or None on EOF. With sink, the body
        goes to sink(piece) instead of req.body."""
        req = read_request(self.reader, deadline_in(timeout), sink=sink)
        if req is not None:
            with self.backend.cond:
                self.requests.append(req)
                self.backend.requests.append(req)
                self.backend.cond.notify_all()
        return req

    def send(self, data):
        self.sock.sendall(data)

    def wait_eof(self, timeout=10.0):
        """Read until the peer closes; True if it did within timeout."""
        try:
            self.reader.read_to_eof(deadline_in(timeout))
            return True
        except HTTPTimeout:
            return False

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


def serve_canned(response, keep_alive=True, request_timeout=30.0):
    """Handler factory: answer each request with `response` (bytes, or a
    callable(req) -> bytes). Stops at EOF, or after the first answer when
    keep_alive is false or the answer says Connection: close."""
    def handler(conn):
        for _ in range(10000):
            req = conn.read_request(timeout=request_timeout)
            if req is None:
                return
            data = response(req) if callable(response) else response
            conn.send(data)
            head = data.split(b"\r\n\r\n", 1)[0].lower()
            if not keep_alive or b"\r\nconnection: close" in head:
                return
    return handler


def echo_handler(conn):
    """200 whose body is the request target; keeps the connection alive."""
    from .http import response_bytes
    for _ in range(10000):
        req = conn.read_request(timeout=30.0)
        if req is None:
            return
        conn.send(response_bytes(200, body=req.target.encode()))


def blackhole_handler(conn):
    """Accept, read everything, never answer (until the peer or the test closes)."""
    conn.wait_eof(timeout=MAX_LIFETIME)


class Backend:
    def __init__(self, handler=None, response=None, keep_alive=True,
                 record_limit=16 * 1024 * 1024, name="backend", host="127.0.0.1", port=0):
        if handler is None:
            if response is None:
                handler = echo_handler
            else:
                handler = serve_canned(response, keep_alive=keep_alive)
        self.handler = handler
        self.name = name
        self.record_limit = record_limit
        self.cond = threading.Condition()
        self.conns = []
        self.requests = []
        self.errors = []
        self._stop = False
        self._threads = []
        self.lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                   socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))  # host/port: several backends behind one DNS name
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.address = ("[%s]:%d" if ":" in host else "%s:%d") % (host, self.port)
        self._born = time.monotonic()
        t = threading.Thread(target=self._accept_loop, name="%s-accept" % name, daemon=True)
        t.start()
        self._accept_thread = t

    # -------------------------------------------------------------- threads
    def _accept_loop(self):
        self.lsock.settimeout(0.1)
        while not self._stop and time.monotonic() - self._born < MAX_LIFETIME:
            try:
                s, peer = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                conn = BackendConn(self, s, peer, len(self.conns))
                self.conns.append(conn)
                self.cond.notify_all()
            t = threading.Thread(target=self._run, args=(conn,),
                                 name="%s-conn%d" % (self.name, conn.index), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn):
        try:
            self.handler(conn)
        except (OSError, HTTPTimeout, ProtocolError) as e:
            if not self._stop:
                conn.error = e
                with self.cond:
                    self.errors.append((conn.index, repr(e)))
        except Exception as e:  # a bug in a test handler: keep it visible
            conn.error = e
            with self.cond:
                self.errors.append((conn.index, repr(e)))
        finally:
            conn.close()
            with self.cond:
                self.cond.notify_all()

    # -------------------------------------------------------------- waiting
    def wait_for(self, predicate, timeout=10.0, what="condition"):
        end = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: timed out waiting for %s (conns=%d, requests=%d, errors=%r)"
                                         % (self.name, what, len(self.conns), len(self.requests), self.errors))
                self.cond.wait(min(left, 0.1))

    def wait_requests(self, n, timeout=10.0):
        self.wait_for(lambda: len(self.requests) >= n, timeout, "%d requests" % n)
        return self.requests[:n]

    def wait_connections(self, n, timeout=10.0):
        self.wait_for(lambda: len(self.conns) >= n, timeout, "%d connections" % n)
        return self.conns[:n]

    def wait_closed(self, n, timeout=10.0):
        """Wait until the first n connections have been closed (handler done)."""
        self.wait_for(lambda: len(self.conns) >= n and all(c.closed for c in self.conns[:n]),
                      timeout, "%d closed connections" % n)

    # -------------------------------------------------------------- teardown
    def close(self):
        self._stop = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.cond:
            conns = list(self.conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._accept_thread.join(timeout=2)
        for t in self._threads:
            t.join(timeout=2)
        for c in conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def blackhole():
    """A server that accepts and never answers (for response timeouts)."""
    return Backend(handler=blackhole_handler, name="blackhole")


class RefusingAddress:
    """A loopback port with nothing listening: bound (so no one else gets it)
    but not listening, so a connect() is refused (RST) immediately."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port

    def close(self):
        self.sock.close()


_handed_out = set()


def free_port():
    """A loopback port that was free a moment ago (bind to 0, close), and not one
    this process handed out before: the kernel may give a closed port again at
    once, and a test that asked for two (a listener and the admin address) got
    the same one twice."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no loopback port left that was not handed out before")
