"""Bad certificate configurations are configuration errors: `switchyard -t`
exits 1 with FILE:LINE:COLUMN: and says what is wrong; relative paths are
taken from the configuration file's directory."""
import os
import shutil
import subprocess

import pytest

from conftest import switchyard_bin
from support.backend import free_port
from support.tls import pki  # noqa: F401 (fixture)


def check(path, cwd=None, timeout=10):
    p = subprocess.run([switchyard_bin(), "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, cwd=cwd)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def first_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    return lines[0]


def assert_error(path, rc, err, where, *fragments):
    """rc 1; the first stderr line starts with PATH:LINE:COL: for one of the
    (line, col) in `where` and contains every fragment."""
    assert rc == 1, "expected exit 1, got %d; stderr: %s\nconfig:\n%s" % (rc, err, path.read_text())
    line = first_line(err)
    prefixes = ["%s:%d:%d: " % (path, ln, col) for ln, col in where]
    assert any(line.startswith(p) for p in prefixes), (
        "expected the error to start with one of %r, got %r\nconfig:\n%s"
        % (prefixes, line, numbered(path.read_text())))
    for f in fragments:
        assert f in line, "error %r does not contain %r" % (line, f)


def numbered(text):
    return "".join("%3d| %s\n" % (i + 1, ln) for i, ln in enumerate(text.splitlines()))


LISTENER = """\
listeners:
  - address: 127.0.0.1:{p}
    tls:
      certificates:
        - cert: {cert}
          key: {key}
upstreams:
  web:
    servers: [{{address: 127.0.0.1:{u}}}]
routes:
  - match: {{path_prefix: /}}
    upstream: web
"""
# positions in LISTENER: the certificate item starts at 5:11 ("cert"),
# the cert value at 5:17, the key value at 6:16, the listener at 2:5.
ITEM = (5, 11)
CERT_VAL = (5, 17)
KEY_VAL = (6, 16)


def write(tmp_path, text, name="c.yaml", **kw):
    f = tmp_path / name
    f.write_text(text.format(p=free_port(), u=free_port(), **kw))
    return f


def listener_cfg(tmp_path, cert, key):
    return write(tmp_path, LISTENER, cert=cert, key=key)


def test_good_listener_certificate_passes(tmp_path, pki):
    f = listener_cfg(tmp_path, pki.a.cert, pki.a.key)
    rc, out, err = check(f)
    assert rc == 0, err


def test_missing_certificate_file(tmp_path, pki):
    missing = str(tmp_path / "nope" / "missing.pem")
    f = listener_cfg(tmp_path, missing, pki.a.key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, CERT_VAL], "cannot open certificate", missing,
                 "No such file or directory")


def test_missing_key_file(tmp_path, pki):
    missing = str(tmp_path / "missing.key")
    f = listener_cfg(tmp_path, pki.a.cert, missing)
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, KEY_VAL], "cannot open private key", missing)


def test_key_does_not_match_certificate(tmp_path, pki):
    f = listener_cfg(tmp_path, pki.a.cert, pki.mismatch_key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, KEY_VAL], "does not match", pki.mismatch_key, pki.a.cert)


def test_key_of_another_certificate(tmp_path, pki):
    f = listener_cfg(tmp_path, pki.a.cert, pki.b.key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, KEY_VAL], "does not match")


def test_garbage_certificate_pem(tmp_path, pki):
    f = listener_cfg(tmp_path, pki.garbage, pki.a.key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, CERT_VAL], "cannot load certificate", pki.garbage)


def test_key_file_given_as_certificate(tmp_path, pki):
    f = listener_cfg(tmp_path, pki.a.key, pki.a.key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, CERT_VAL], "cannot load certificate")


def test_garbage_key_pem(tmp_path, pki):
    f = listener_cfg(tmp_path, pki.a.cert, pki.garbage)
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, KEY_VAL], "cannot load private key", pki.garbage)


def test_unreadable_key_is_a_directory(tmp_path, pki):
    d = tmp_path / "keydir"
    d.mkdir()
    f = listener_cfg(tmp_path, pki.a.cert, str(d))
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, KEY_VAL], str(d))
    assert "private key" in first_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key_permissions(tmp_path, pki):
    k = tmp_path / "locked.key"
    shutil.copy(pki.a.key, k)
    k.chmod(0)
    f = listener_cfg(tmp_path, pki.a.cert, str(k))
    rc, out, err = check(f)
    assert_error(f, rc, err, [ITEM, KEY_VAL], "cannot open private key", "Permission denied")


def test_second_certificate_is_located(tmp_path, pki):
    text = LISTENER.replace("          key: {key}\n",
                            "          key: {key}\n        - cert: {cert2}\n          key: {key2}\n")
    f = write(tmp_path, text, cert=pki.a.cert, key=pki.a.key, cert2=pki.b.cert,
              key2=pki.mismatch_key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(7, 11), (8, 16)], "does not match")
    assert "certificates[1]" in first_line(err), first_line(err)


def test_relative_paths_from_config_directory(tmp_path, pki):
    confdir = tmp_path / "etc" / "switchyard"
    (confdir / "certs").mkdir(parents=True)
    shutil.copy(pki.a.cert, confdir / "certs" / "site.pem")
    shutil.copy(pki.a.key, confdir / "certs" / "site.key")
    shutil.copy(pki.ca, confdir / "ca.pem")
    text = LISTENER + "  - match: {{path_prefix: /up}}\n    upstream: sec\n"
    text = text.replace("upstreams:\n", "upstreams:\n  sec:\n    servers: [{{address: 127.0.0.1:{u}}}]\n"
                        "    tls: {{ca: ca.pem}}\n")
    f = write(confdir, text, cert="certs/site.pem", key="certs/site.key")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rc, out, err = check(f, cwd=str(elsewhere))
    assert rc == 0, "relative paths not taken from the config's directory: %s" % err
    # ... and a relative path that is missing is reported with the resolved name
    f2 = write(confdir, LISTENER, name="bad.yaml", cert="certs/absent.pem", key="certs/site.key")
    rc, out, err = check(f2, cwd=str(elsewhere))
    assert_error(f2, rc, err, [ITEM, CERT_VAL], "cannot open certificate",
                 str(confdir / "certs" / "absent.pem"))


def test_bad_min_version(tmp_path, pki):
    text = LISTENER.replace("      certificates:\n", "      min_version: TLS1.1\n      certificates:\n")
    f = write(tmp_path, text, cert=pki.a.cert, key=pki.a.key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(4, 20)], "TLS1.1")


def test_bad_cipher_list(tmp_path, pki):
    text = LISTENER.replace("      certificates:\n", "      ciphers: NOT-A-CIPHER\n      certificates:\n")
    f = write(tmp_path, text, cert=pki.a.cert, key=pki.a.key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(2, 5), (3, 5), (3, 9), (4, 16)], "cipher")


def test_offer_tls_upgrade_needs_certificates(tmp_path):
    f = write(tmp_path, """\
listeners:
  - address: 127.0.0.1:{p}
    offer_tls_upgrade: optional
upstreams:
  web:
    servers: [{{address: 127.0.0.1:{u}}}]
routes:
  - match: {{path_prefix: /}}
    upstream: web
""")
    rc, out, err = check(f)
    assert_error(f, rc, err, [(3, 24), (3, 5)], "offer_tls_upgrade")


def test_start_refuses_bad_certificate(tmp_path, pki):
    """Not only -t: starting with a bad certificate exits 1 with the same message."""
    f = listener_cfg(tmp_path, pki.a.cert, pki.mismatch_key)
    p = subprocess.run([switchyard_bin(), "-c", str(f)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=10)
    err = p.stderr.decode()
    assert_error(f, p.returncode, err, [ITEM, KEY_VAL], "does not match")


# ------------------------------------------------------------------ upstream TLS

UPSTREAM = """\
listeners:
  - address: 127.0.0.1:{p}
upstreams:
  web:
    servers: [{{address: 127.0.0.1:{u}}}]
    tls:
{tls}routes:
  - match: {{path_prefix: /}}
    upstream: web
"""


def upstream_cfg(tmp_path, **tls):
    body = "".join("      %s: %s\n" % (k, v) for k, v in tls.items())
    return write(tmp_path, UPSTREAM, tls=body)


def test_good_upstream_tls_passes(tmp_path, pki):
    f = upstream_cfg(tmp_path, ca=pki.ca, sni="backend.example.test", cert=pki.client.cert,
                     key=pki.client.key)
    rc, out, err = check(f)
    assert rc == 0, err


def test_missing_ca_file(tmp_path):
    missing = str(tmp_path / "no-ca.pem")
    f = upstream_cfg(tmp_path, ca=missing)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(7, 11)], "cannot open CA file", missing)


def test_garbage_ca_file(tmp_path, pki):
    f = upstream_cfg(tmp_path, ca=pki.garbage)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(7, 11)], "CA file", pki.garbage)


def test_ca_file_without_certificates(tmp_path, pki):
    f = upstream_cfg(tmp_path, ca=pki.a.key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(7, 11)], "CA file")


def test_client_certificate_key_mismatch(tmp_path, pki):
    f = upstream_cfg(tmp_path, ca=pki.ca, cert=pki.client.cert, key=pki.mismatch_key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(8, 13), (9, 12)], "does not match")


def test_client_certificate_missing(tmp_path, pki):
    missing = str(tmp_path / "client.pem")
    f = upstream_cfg(tmp_path, cert=missing, key=pki.client.key)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(7, 13)], "cannot open certificate", missing)


def test_client_cert_without_key(tmp_path, pki):
    f = upstream_cfg(tmp_path, cert=pki.client.cert)
    rc, out, err = check(f)
    assert_error(f, rc, err, [(7, 7)], "cert and key")
