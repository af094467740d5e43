"""Reload re-reads TLS certificates: same file paths, new contents; new
handshakes present the new certificate, an established TLS connection carries on."""
import copy
import shutil
import socket
import ssl

from support.http import Reader, read_response, deadline_in, response_bytes, get
from support.ops import reload
import hashlib

from support.tls import pki, tls_proxy  # noqa: F401


def fingerprint(der):
    return hashlib.sha256(der).hexdigest()


def ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def tls_get(s, path):
    s.sendall(get(path))
    return read_response(Reader(s), deadline_in(10))


def presented(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx().wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
            r = tls_get(s, "/fp")
            assert r.status == 200, r.head
            return fingerprint(der)


def test_reload_rereads_certificates(pki, tls_proxy, backend, tmp_path):
    be = backend(response=response_bytes(200, body=b"tls"))
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    shutil.copy(pki.a.cert, cert)
    shutil.copy(pki.a.key, key)
    px = tls_proxy([{"tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}],
                   upstreams={"web": [be.address]})
    fa, fb = fingerprint(pki.der(pki.a.cert)), fingerprint(pki.der(pki.b.cert))
    assert presented(px.port) == fa
    raw = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    old = ctx().wrap_socket(raw)
    try:
        assert tls_get(old, "/before").status == 200
        shutil.copy(pki.b.cert, cert)
        shutil.copy(pki.b.key, key)
        assert "reloaded" in reload(px, copy.deepcopy(px.config))
        assert presented(px.port) == fb, "the old certificate is still presented after a reload"
        r = tls_get(old, "/after")  # the established connection carries on
        assert r.status == 200 and r.body == b"tls", r.head
        # a broken key file is refused and the running certificate stays
        open(key, "w").write("not a key\n")
        line = reload(px)
        assert "reload refused" in line, line
        assert presented(px.port) == fb
    finally:
        old.close()
