"""TLS helpers for tests/integration/test_tls_*.py (stdlib + the `openssl` command).

    pki = make_pki(tmp_dir)        # a CA and certificates, made with `openssl`
    pki.a.cert, pki.a.key, pki.ca, pki.der(pki.a.cert) ...

    t = TLSConn(sock, client_ctx(pki.ca), server_hostname="a.example.test")
    t.handshake()
    r = Reader(t)                  # support.http.Reader works over a TLSConn
    t.sendall(b"..."); t.close_notify(); t.fin(); t.wait_end()

`TLSConn` drives an ssl.SSLObject over memory BIOs on a plain socket, so a test
decides exactly when a close_notify and when a TCP FIN go out (half-close over
TLS), and sees which of the two the peer sent. It has `recv`, `sendall`,
`settimeout`, `fileno` and `shutdown`, enough for support.http.Reader and
support.tunnel.End.

`TLSBackend` is a scriptable TLS server on 127.0.0.1 built on
support.backend.Backend: it records every handshake (SNI, ALPN, version, the
client certificate) and runs an app per connection: `http_app` (JSON answer
describing the request and the TLS session; WebSocket echo on an upgrade) or
`handover_app` (answers the first request, then hands the connection to the test).
"""
import json
import os
import queue
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .http import Reader, read_request, deadline_in, HTTPTimeout, ProtocolError, response_bytes
from .tunnel import End, ws_accept

OPENSSL = "openssl"
DAYS = "3"


# ------------------------------------------------------------------ certificates

def _run(argv, cwd):
    p = subprocess.run(argv, cwd=str(cwd), stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30)
    if p.returncode != 0:
        raise AssertionError("%s failed (rc %d): %s" % (" ".join(argv), p.returncode,
                                                        p.stderr.decode(errors="replace")))
    return p.stdout


class Pair:
    def __init__(self, cert, key, names):
        self.cert = str(cert)
        self.key = str(key)
        self.names = names

    def entry(self):
        return {"cert": self.cert, "key": self.key}


_REQ_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_self]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = @alt_self
[alt_self]
IP.1 = 127.0.0.1
DNS.1 = selfsigned.example.test
"""


class PKI:
    """Files made by make_pki; every attribute below is a path (str) or a Pair."""

    def __init__(self, d):
        self.dir = Path(d)
        self._serial = 1

    def _key(self, name):
        k = self.dir / (name + ".key")
        _run([OPENSSL, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", str(k)], self.dir)
        return k

    def _ca(self, name, cn):
        k = self._key(name)
        c = self.dir / (name + ".pem")
        _run([OPENSSL, "req", "-x509", "-new", "-config", str(self.cnf), "-extensions", "v3_ca",
              "-key", str(k), "-subj", "/CN=" + cn, "-days", DAYS, "-out", str(c)], self.dir)
        return Pair(c, k, [])

    def leaf(self, name, cn, dns=(), ips=(), client=False, ca=None):
        """A certificate signed by `ca` (default: the test CA)."""
        ca = ca or self.ca_pair
        k = self._key(name)
        csr = self.dir / (name + ".csr")
        c = self.dir / (name + ".pem")
        ext = self.dir / (name + ".ext")
        lines = ["[v3]", "basicConstraints = critical,CA:FALSE",
                 "keyUsage = critical,digitalSignature",
                 "extendedKeyUsage = %s" % ("clientAuth" if client else "serverAuth"),
                 "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid"]
        alt = ["DNS:" + n for n in dns] + ["IP:" + i for i in ips]
        if alt:
            lines.append("subjectAltName = " + ",".join(alt))
        ext.write_text("\n".join(lines) + "\n")
        _run([OPENSSL, "req", "-new", "-config", str(self.cnf), "-key", str(k),
              "-subj", "/CN=" + cn, "-out", str(csr)], self.dir)
        self._serial += 1
        _run([OPENSSL, "x509", "-req", "-in", str(csr), "-CA", ca.cert, "-CAkey", ca.key,
              "-set_serial", str(self._serial), "-days", DAYS, "-extfile", str(ext),
              "-extensions", "v3", "-out", str(c)], self.dir)
        return Pair(c, k, list(dns))

    def der(self, cert_path):
        """DER bytes of the (first) certificate in a PEM file."""
        return ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text())


def make_pki(d):
    """Everything the TLS tests need, in directory d:

    ca / ca_key        test CA;  other_ca: an unrelated CA
    a                  a.example.test (+ IP 127.0.0.1 so clients may dial the IP)
    b                  b.example.test
    wild               *.wild.example.test
    exact_wild         exact.wild.example.test (an exact name under the wildcard)
    cn_only            CN=cn-only.example.test, no SAN at all
    san_over_cn        CN=cn-ignored.example.test, SAN DNS:san.example.test
    backend_ip         backend.example.test + IP 127.0.0.1 (upstream servers)
    backend_name       backend.example.test only (no IP SAN)
    backend_other_ca   backend.example.test + IP 127.0.0.1, signed by other_ca
    selfsigned         self-signed, IP 127.0.0.1
    client             a client certificate (CN=switchyard-proxy) for mTLS
    mismatch_key       a key that belongs to no certificate
    garbage            a file that is not PEM at all
    """
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    p = PKI(d)
    p.cnf = d / "req.cnf"
    p.cnf.write_text(_REQ_CNF)
    p.ca_pair = p._ca("ca", "Switchyard Test CA")
    p.ca = p.ca_pair.cert
    p.ca_key = p.ca_pair.key
    p.other_ca_pair = p._ca("other-ca", "Some Other CA")
    p.other_ca = p.other_ca_pair.cert
    p.a = p.leaf("a", "a.example.test", dns=["a.example.test"], ips=["127.0.0.1"])
    p.b = p.leaf("b", "b.example.test", dns=["b.example.test"])
    p.wild = p.leaf("wild", "*.wild.example.test", dns=["*.wild.example.test"])
    p.exact_wild = p.leaf("exact-wild", "exact.wild.example.test", dns=["exact.wild.example.test"])
    p.cn_only = p.leaf("cn-only", "cn-only.example.test")
    p.san_over_cn = p.leaf("san-over-cn", "cn-ignored.example.test", dns=["san.example.test"])
    p.backend_ip = p.leaf("backend-ip", "backend.example.test", dns=["backend.example.test"],
                          ips=["127.0.0.1"])
    p.backend_name = p.leaf("backend-name", "backend.example.test", dns=["backend.example.test"])
    p.backend_other_ca = p.leaf("backend-other", "backend.example.test",
                                dns=["backend.example.test"], ips=["127.0.0.1"],
                                ca=p.other_ca_pair)
    sk = p._key("selfsigned")
    sc = d / "selfsigned.pem"
    _run([OPENSSL, "req", "-x509", "-new", "-config", str(p.cnf), "-extensions", "v3_self",
          "-key", str(sk), "-subj", "/CN=selfsigned.example.test", "-days", DAYS,
          "-out", str(sc)], d)
    p.selfsigned = Pair(sc, sk, ["selfsigned.example.test"])
    p.client = p.leaf("client", "switchyard-proxy", client=True)
    p.mismatch_key = str(p._key("mismatch"))
    p.garbage = str(d / "garbage.pem")
    Path(p.garbage).write_text("-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n"
                               "-----END CERTIFICATE-----\n")
    return p


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Module-wide PKI (import into a test module: `from support.tls import pki`)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------ contexts

def client_ctx(ca=None, alpn=None, min_version=None, max_version=None, cert=None,
               check_hostname=True, seclevel0=False):
    """A client context; ca None = no verification."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.check_hostname = check_hostname
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if seclevel0:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def server_ctx(pair, client_ca=None, alpn=None):
    """A server context for `pair`; client_ca requires a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    if client_ca:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)

    def on_sni(obj, name, c):
        obj._sy_sni = name  # noqa: SLF001 (the SSLObject of this connection)
        obj._sy_sni_seen = True
    ctx.sni_callback = on_sni
    return ctx


# ------------------------------------------------------------------ TLS over a socket

class TLSConn:
    """TLS over a socket through memory BIOs. Thread-safe for one reader and
    one writer. `ended` says how the peer's side ended: "close_notify" (the
    peer's close_notify arrived), "eof" (TCP FIN without close_notify),
    "reset", or None while open."""

    def __init__(self, sock, ctx, server_side=False, server_hostname=None, name="tls"):
        self.raw = sock
        self.name = name
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                server_hostname=server_hostname)
        self.lock = threading.RLock()       # the SSL object and the BIOs
        self.send_lock = threading.Lock()   # ciphertext leaves in the order it was made
        self.timeout = 10.0
        self.tcp_eof = False
        self.ended = None
        self.sent_close_notify = False
        self.ciphertext_in = 0

    # socket-like surface ------------------------------------------------
    def fileno(self):
        return self.raw.fileno()

    def settimeout(self, t):
        self.timeout = t

    def gettimeout(self):
        return self.timeout

    def _flush(self, timeout=10.0):
        with self.send_lock:
            with self.lock:
                data = self.outgoing.read()
            if data:
                self.raw.settimeout(timeout)
                self.raw.sendall(data)

    def _fill(self, end):
        """One recv of ciphertext; False at TCP EOF."""
        left = end - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.raw.settimeout(left)
        try:
            chunk = self.raw.recv(256 * 1024)
        except (ConnectionResetError, ConnectionAbortedError):
            self.ended = self.ended or "reset"
            raise
        with self.lock:
            if not chunk:
                self.tcp_eof = True
                self.incoming.write_eof()
                return False
            self.ciphertext_in += len(chunk)
            self.incoming.write(chunk)
        return True

    def handshake(self, timeout=10.0):
        end = deadline_in(timeout)
        for _ in range(10000):
            try:
                with self.lock:
                    self.obj.do_handshake()
                self._flush()
                return self
            except ssl.SSLWantReadError:
                self._flush()
            except ssl.SSLError:
                try:
                    self._flush(timeout=2.0)  # the alert, so the peer knows why
                except OSError:
                    pass
                raise
            if self.tcp_eof:
                raise ssl.SSLEOFError("%s: peer closed the connection during the handshake"
                                      % self.name)
            self._fill(end)
        raise AssertionError("handshake did not finish")

    def recv(self, size=65536):
        """Plaintext; b"" once the peer's side ended (see `ended`).
        socket.timeout after self.timeout seconds without plaintext."""
        end = time.monotonic() + (self.timeout if self.timeout is not None else 600.0)
        for _ in range(10 ** 7):
            with self.lock:
                try:
                    data = self.obj.read(size)
                    if data:
                        return data
                    self.ended = self.ended or "close_notify"
                    return b""
                except ssl.SSLWantReadError:
                    pending = self.outgoing.pending
                except ssl.SSLZeroReturnError:
                    self.ended = self.ended or "close_notify"
                    return b""
                except ssl.SSLEOFError:
                    self.ended = self.ended or "eof"
                    return b""
            if pending:
                self._flush()
            if self.tcp_eof:
                self.ended = self.ended or "eof"
                return b""
            self._fill(end)
        raise AssertionError("recv loop bound")

    def sendall(self, data):
        with self.send_lock:
            with self.lock:
                view = memoryview(data)
                while view:
                    n = self.obj.write(view)
                    view = view[n:]
                out = self.outgoing.read()
            self.raw.settimeout(self.timeout if self.timeout is not None else 600.0)
            self.raw.sendall(out)

    send = sendall

    def close_notify(self):
        """Send our close_notify (the TCP connection stays open both ways)."""
        with self.send_lock:
            with self.lock:
                try:
                    self.obj.unwrap()
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
                self.sent_close_notify = True
                out = self.outgoing.read()
            if out:
                self.raw.settimeout(10.0)
                self.raw.sendall(out)

    def fin(self):
        """TCP FIN (SHUT_WR), with or without a close_notify before it."""
        self.raw.shutdown(socket.SHUT_WR)

    def shutdown(self, how):
        """support.tunnel.End.shutdown_write: close_notify, then FIN."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not self.sent_close_notify:
            self.close_notify()
        self.raw.shutdown(how)

    def wait_tcp_eof(self, timeout=5.0):
        """After the peer's close_notify: the TCP end that follows it.
        Returns "eof", "reset" or the unexpected bytes."""
        self.raw.settimeout(timeout)
        try:
            data = self.raw.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            return "reset"
        except socket.timeout:
            return "open"
        return "eof" if not data else data

    def close(self):
        try:
            self.raw.close()
        except OSError:
            pass

    # introspection ------------------------------------------------------
    def version(self):
        return self.obj.version()

    def alpn(self):
        return self.obj.selected_alpn_protocol()

    def peer_der(self):
        return self.obj.getpeercert(binary_form=True)


class TLSEnd(End):
    """support.tunnel.End over a TLSConn (`wait_end` also reports which end the
    peer sent: close_notify or a bare FIN)."""

    def __init__(self, tconn, reader=None, name="tls-end"):
        super().__init__(tconn, reader if reader is not None else Reader(tconn), name)
        self.tls = tconn

    def wait_end(self, timeout=5.0):
        try:
            data = self.reader.read_to_eof(deadline_in(timeout))
        except HTTPTimeout as e:
            raise HTTPTimeout("%s: still open after %.1fs: %s" % (self.name, timeout, e)) from None
        return (self.tls.ended or ("reset" if self.reader.reset else "eof")), data

    def quiet(self, seconds):
        """Plaintext (or an end) arriving within `seconds`."""
        if self.reader.buf:
            out = bytes(self.reader.buf)
            self.reader.buf.clear()
            return out
        self.tls.settimeout(seconds)
        try:
            data = self.tls.recv(65536)
        except socket.timeout:
            return b""
        finally:
            self.tls.settimeout(10.0)
        if not data:
            self.reader.eof = True
            return ("<%s>" % self.tls.ended).encode()
        return data

    def abort(self):
        self.tls.raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.tls.raw.close()

    def close(self):
        self.tls.close()


def tls_connect(port, ctx, server_hostname=None, timeout=10.0, name="client"):
    """A TLSConn to 127.0.0.1:port with the handshake done."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = TLSConn(s, ctx, server_hostname=server_hostname, name=name)
    try:
        t.handshake(timeout)
    except BaseException:
        s.close()
        raise
    return t


def read_response_over(tconn_or_reader, method="GET", timeout=10.0):
    from .http import read_response
    r = tconn_or_reader if isinstance(tconn_or_reader, Reader) else Reader(tconn_or_reader)
    resp = read_response(r, deadline_in(timeout), method=method)
    if resp is None:
        raise AssertionError("the connection ended (%s) instead of a response"
                             % getattr(r.sock, "ended", "EOF"))
    return resp


# ------------------------------------------------------------------ WebSocket frames

def ws_frame(opcode, payload=b"", mask=True, fin=True):
    """One frame; clients mask (RFC 6455 5.3), servers do not."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _unmask(payload, key)


def _unmask(data, key):
    if not data:
        return b""
    k = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")


def read_ws_frame(reader, deadline):
    """(fin, opcode, payload unmasked) or None at a clean end."""
    if not reader.buf and reader._fill(deadline) == 0:
        return None
    h = reader.read_exact(2, deadline)
    b0, b1 = h[0], h[1]
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", reader.read_exact(2, deadline))[0]
    elif n == 127:
        n = struct.unpack("!Q", reader.read_exact(8, deadline))[0]
    key = reader.read_exact(4, deadline) if b1 & 0x80 else None
    data = reader.read_exact(n, deadline) if n else b""
    if key:
        data = _unmask(data, key)
    return bool(b0 & 0x80), b0 & 0x0F, data


def ws_client_request(path="/ws", host="ws.test", key="dGhlIHNhbXBsZSBub25jZQ==", extra=()):
    out = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (path, host, key))
    for h in extra:
        out += h + "\r\n"
    return (out + "\r\n").encode()


def ws_echo_loop(t, reader, max_frames=100000, idle=30.0):
    """A small RFC 6455 echo server on an open connection: data frames are echoed
    with their opcode (fragmented messages are reassembled), pings answered,
    a close frame echoed (code and reason), then close_notify + FIN."""
    message = bytearray()
    message_op = None
    for _ in range(max_frames):
        try:
            fr = read_ws_frame(reader, deadline_in(idle))
        except (ProtocolError, HTTPTimeout):
            return "ended"
        if fr is None:
            return "eof"
        fin, op, data = fr
        if op == 0x9:
            t.sendall(ws_frame(0xA, data, mask=False))
        elif op == 0xA:
            continue
        elif op == 0x8:
            t.sendall(ws_frame(0x8, data, mask=False))
            t.shutdown(socket.SHUT_WR)
            try:
                reader.read_to_eof(deadline_in(5))
            except (HTTPTimeout, OSError):
                pass
            return "closed"
        else:
            if op != 0x0:
                message_op = op
                message = bytearray()
            message += data
            if fin:
                t.sendall(ws_frame(message_op, bytes(message), mask=False))
                message = bytearray()
    return "frames"


# ------------------------------------------------------------------ TLS backend

class TLSBackend:
    """A TLS server on 127.0.0.1 (support.backend.Backend underneath).

    handshakes: one dict per connection: sni, alpn, version, peer (the client
    certificate's subject as {field: value}, or None) or error.
    requests: (info, Request) for every request an app read."""

    def __init__(self, backend_factory, ctx, app=None, name="tls-backend"):
        self.ctx = ctx
        self.app = app or http_app
        self.cond = threading.Condition()
        self.handshakes = []
        self.requests = []
        self.handed = queue.Queue()
        self.released = threading.Event()
        self.backend = backend_factory(handler=self._handler, name=name)
        self.address = self.backend.address
        self.port = self.backend.port

    def _record(self, lst, item):
        with self.cond:
            lst.append(item)
            self.cond.notify_all()

    def _handler(self, conn):
        t = TLSConn(conn.sock, self.ctx, server_side=True, name="%s#%d" % (self.backend.name,
                                                                            conn.index))
        info = {"index": conn.index}
        try:
            t.handshake(10.0)
        except (ssl.SSLError, OSError) as e:
            info["error"] = "%s: %s" % (type(e).__name__, e)
            self._record(self.handshakes, info)
            return
        peer = t.obj.getpeercert()
        info.update(sni=getattr(t.obj, "_sy_sni", None), alpn=t.alpn(), version=t.version(),
                    peer=({k: v for rdn in peer["subject"] for (k, v) in rdn} if peer else None))
        self._record(self.handshakes, info)
        reader = Reader(t, record=conn.raw)
        self.app(self, t, reader, info)

    def wait_for(self, pred, timeout=10.0, what="condition"):
        end = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: timed out waiting for %s (handshakes=%r, "
                                         "requests=%d, errors=%r)"
                                         % (self.backend.name, what, self.handshakes,
                                            len(self.requests), self.backend.errors))
                self.cond.wait(min(left, 0.1))

    def wait_handshakes(self, n, timeout=10.0):
        self.wait_for(lambda: len(self.handshakes) >= n, timeout, "%d handshakes" % n)
        return self.handshakes[:n]

    def wait_requests(self, n, timeout=10.0):
        self.wait_for(lambda: len(self.requests) >= n, timeout, "%d requests" % n)
        return self.requests[:n]

    def take(self, timeout=10.0):
        """The next connection handover_app handed over, as a TLSEnd
        (.request, .info)."""
        try:
            return self.handed.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("%s: nothing handed over within %.0fs (handshakes=%r, errors=%r)"
                                 % (self.backend.name, timeout, self.handshakes,
                                    self.backend.errors)) from None

    def release(self):
        self.released.set()


def describe(info, req):
    """The JSON body http_app answers with."""
    return json.dumps({"method": req.method, "target": req.target,
                       "headers": [[k, v] for k, v in req.fields],
                       "sni": info.get("sni"), "alpn": info.get("alpn"),
                       "version": info.get("version"), "peer": info.get("peer"),
                       "conn": info["index"]}).encode()


def http_app(be, t, reader, info):
    """Keep-alive HTTP server: 200 + JSON (describe()) for each request; a
    WebSocket upgrade gets a 101 with the right accept and an echo loop."""
    for _ in range(10000):
        req = read_request(reader, deadline_in(30.0))
        if req is None:
            return
        be._record(be.requests, (info, req))
        if "websocket" in req.tokens("upgrade"):
            key = req.value("sec-websocket-key")
            t.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                       % ws_accept(key)).encode())
            ws_echo_loop(t, reader)
            return
        t.sendall(response_bytes(200, headers=["Content-Type: application/json"],
                                 body=describe(info, req)))


def handover_app(answer):
    """App factory: answer the first request with `answer` (bytes or
    callable(req)), then hand the connection to the test (TLSBackend.take)."""
    def app(be, t, reader, info):
        req = read_request(reader, deadline_in(15.0))
        if req is None:
            return
        be._record(be.requests, (info, req))
        data = answer(req) if callable(answer) else answer
        if data:
            t.sendall(data)
        end = TLSEnd(t, reader, name="tls-backend#%d" % info["index"])
        end.request = req
        end.info = info
        be.handed.put(end)
        end_by = time.monotonic() + 600
        while not be.released.wait(0.2):  # the test owns the socket now
            if be.backend._stop or time.monotonic() > end_by:
                break
    return app


@pytest.fixture
def tls_backend(backend):
    """Factory: tls_backend(ctx, app=http_app) -> TLSBackend."""
    made = []

    def factory(ctx, app=None, name="tls-backend"):
        b = TLSBackend(backend, ctx, app, name)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.release()


# ------------------------------------------------------------------ openssl s_client

def s_client(port, *args, timeout=15.0):
    """Runs `openssl s_client -connect 127.0.0.1:PORT ARGS` with stdin closed;
    returns (rc, stdout + stderr text)."""
    argv = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port] + list(args)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


# ------------------------------------------------------------------ proxy with TLS listeners

def _foreign_listeners(pid, port):
    """Listening sockets on 127.0.0.1:port (or any address) not owned by pid."""
    ours = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                ours.add(link[8:-1])
    except OSError:
        return []
    found = []
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state == "0A" and int(local.split(":")[1], 16) == port and inode not in ours:
                    found.append(inode)
    except OSError:
        return []
    return found


def _port_accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def tls_proxy(tmp_path):
    """Like conftest's `proxy`, but for listeners the test describes:

        px = tls_proxy([{"tls": {...}}, {"offer_tls_upgrade": "optional", ...}],
                       upstreams={"web": [addr]}, routes=[...], **top_level)

    Each listener dict gets "address": 127.0.0.1:<free port>; px.port is the
    first listener's port, px.ports all of them. Uses conftest.Proxy, so logs,
    wait_log and the teardown report work the same way."""
    from conftest import Proxy  # the harness's process wrapper
    started = []

    def factory(listeners, upstreams=None, routes=None, **extra):
        ups = {}
        for name, spec in (upstreams or {}).items():
            ups[name] = spec if isinstance(spec, dict) else {"servers": [{"address": a}
                                                                         for a in spec]}
        if routes is None and len(ups) == 1:
            routes = [{"match": {"path_prefix": "/"}, "upstream": next(iter(ups))}]
        last = None
        for attempt in range(3):
            ports = []
            ls = []
            for spec in listeners:
                port = free_port()
                ports.append(port)
                item = {"address": "127.0.0.1:%d" % port}
                item.update(spec)
                ls.append(item)
            cfg = {"listeners": ls}
            if ups:
                cfg["upstreams"] = ups
            cfg["routes"] = routes or []
            cfg.update(extra)
            p = Proxy(cfg, tmp_path, "tlsproxy%d" % len(started))
            p.port = ports[0]
            p.ports = ports
            started.append(p)
            if p.start():
                for q in ports[1:]:
                    end = time.monotonic() + 10
                    while not _port_accepts(q):
                        assert time.monotonic() < end, "listener %d never accepted" % q
                        time.sleep(0.02)  # poll interval of a bounded condition wait
                foreign = [q for q in ports if _foreign_listeners(p.pid, q)]
                if not foreign:
                    return p
                # SO_REUSEPORT: another process of this user listens on the same
                # port and the kernel would share our clients with it. Retry.
                p.stop()
                last = p
                continue
            p.stop()
            last = p
            if "in use" not in p.stderr().lower():
                break
        pytest.fail("switchyard exited at start (rc=%s)\nconfig:\n%s\nstderr:\n%s"
                    % (last.proc.returncode, last.config_path.read_text(), last.stderr()))

    yield factory

    import sys
    problems = []
    for p in started:
        if p.proc is None:
            continue
        rc_before = p.proc.poll() if not p.stopped else None
        rc = p.stop()
        sys.stdout.write("\n--- %s (pid %d) exit %s; config %s\n" % (p.name, p.pid, rc,
                                                                      p.config_path))
        sys.stdout.write("--- stdout:\n%s\n--- stderr:\n%s\n" % (p.stdout()[-20000:],
                                                                 p.stderr()[-20000:]))
        if rc_before is not None and rc_before < 0:
            problems.append("%s died from signal %d during the test" % (p.name, -rc_before))
    if problems:
        pytest.fail("; ".join(problems))


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()
