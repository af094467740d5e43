"""admin.token / admin.token_file: everything but the probes needs the token
(Bearer, or Basic with the token as password); 401 names both schemes; a
reload rotates the token."""
import base64

import pytest

from support.ops import AdminPort, reload

TOKEN = "s3cr3t-t0ken-0123456789"
PROTECTED = ["/metrics", "/status", "/", "/status.json", "/nope"]


def basic(user, password):
    return "Authorization: Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def challenges(r):
    head = r.head.decode("latin-1")
    return [ln.split(":", 1)[1].strip() for ln in head.split("\r\n")
            if ln.lower().startswith("www-authenticate:")]


def test_token_required_except_probes(proxy, backend):
    adm = AdminPort(token=TOKEN)
    proxy(upstreams={"web": [backend().address]}, admin=adm.config)
    for path in ("/healthz", "/readyz"):
        r = adm.get(path, headers=[])
        assert r.status == 200, (path, r.head)
    for path in PROTECTED:
        r = adm.get(path, headers=[])
        assert r.status == 401, (path, r.head)
        ch = challenges(r)
        assert any(c.startswith("Bearer ") for c in ch) and any(c.startswith("Basic ") for c in ch), ch
        assert b"switchyard_" not in r.body and b"<table" not in r.body, r.body
    r = adm.get("/metrics", method="HEAD", headers=[])
    assert r.status == 401, r.head
    wrong = [TOKEN[:-1], TOKEN + "x", TOKEN[:-1] + "X", "", TOKEN.upper(), "Bearer"]
    for w in wrong:
        r = adm.get("/metrics", headers=["Authorization: Bearer %s" % w])
        assert r.status == 401, (w, r.head)
    for h in (["Authorization: Bearer %s" % TOKEN], ["authorization: bearer  %s " % TOKEN],
              [basic("admin", TOKEN)], [basic("", TOKEN)], [basic("u", TOKEN)]):
        r = adm.get("/metrics", headers=h)
        assert r.status == 200 and b"switchyard_" in r.body, (h, r.head)
    for h in ([basic("admin", TOKEN[:-1])], [basic(TOKEN, "")], ["Authorization: Basic !!!!"],
              ["Authorization: Basic " + base64.b64encode(TOKEN.encode()).decode()],
              ["Authorization: Token %s" % TOKEN], ["X-Authorization: Bearer %s" % TOKEN]):
        r = adm.get("/metrics", headers=h)
        assert r.status == 401, (h, r.head)
    # the page and what it polls, with the token
    assert adm.get("/status").status == 200
    assert adm.get("/status.json").status == 200
    assert adm.get("/nope").status == 404


def test_token_file_rotates_on_reload(proxy, backend, tmp_path):
    tf = tmp_path / "admin-token"
    tf.write_text(TOKEN + "\n")
    adm = AdminPort()
    px = proxy(upstreams={"web": [backend().address]},
               admin=dict(adm.config, token_file=str(tf)))
    assert adm.get("/metrics", headers=["Authorization: Bearer " + TOKEN]).status == 200
    assert adm.get("/metrics", headers=[]).status == 401
    new = "rotated-token-abcdefghijkl"
    tf.write_text(new + "\n")
    assert reload(px).startswith("reloaded"), px.stderr()
    assert adm.get("/metrics", headers=["Authorization: Bearer " + TOKEN]).status == 401
    assert adm.get("/metrics", headers=["Authorization: Bearer " + new]).status == 200
    # an unreadable or too short token file is a refused reload: the old token stays
    tf.write_text("short\n")
    assert "reload refused" in reload(px)
    assert adm.get("/metrics", headers=["Authorization: Bearer " + new]).status == 200


def test_without_token_everything_is_open(proxy, backend):
    adm = AdminPort()
    proxy(upstreams={"web": [backend().address]}, admin=adm.config)
    for path in ("/healthz", "/metrics", "/status.json"):
        assert adm.get(path, headers=[]).status == 200, path
