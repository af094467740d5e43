"""The container image, built and run for real.

docker/build-with-buildah.sh builds docker/Dockerfile with Debian's buildah (no
Docker engine; the debian:bookworm-slim base is made locally with debootstrap the
first time and reused after). Then the image's own sy-demo and switchyard run
with `buildah run --isolation chroot --network host` on free loopback ports, the
proxy with a config written here and mounted over /etc/switchyard/switchyard.yaml:
a WebSocket (raw client: handshake, one masked text frame echoed, close) and
POST /echo go through, the image's HEALTHCHECK command passes while the proxy
runs and fails once it stopped, and SIGTERM stops the proxy cleanly.

The slowest integration test: about 70 s on a machine that never built the
image (debootstrap ~30 s + build ~40 s), 45-60 s after that (the base image is
reused; the build stage re-installs its packages every time, which with vfs
storage is faster than caching layers).

The Kubernetes example runs in the same image: the switchyard.yaml of the
ConfigMap in deploy/kubernetes.yaml, started as its Deployment starts it (the
ConfigMap and the admin-token Secret mounted where the Deployment mounts them,
a pod's DNS search path), against "demo pods" (backends on 127.0.0.2 and
127.0.0.3) whose headless Service name dnsmasq answers. The probes' paths, the
routes, the token and the following of DNS are checked, twice: clients straight
at the listener (the shipped ClusterIP Service), and through HAProxy's
send-proxy-v2 with the ConfigMap's commented `proxy_protocol: v2` turned on (the
NLB variant). About 7 s each once the image is built (4 s of it `buildah from`).

Skipped when SY_SKIP_CONTAINER=1 (ctest: `ctest -E integration.test_container`
works too), and when buildah
cannot run here: not root, buildah or debootstrap not installed
(apt-get install buildah debootstrap), or `buildah info` failing. The
Kubernetes test also skips without dnsmasq (dnsmasq-base), its NLB variant
without haproxy; scripts/setup.sh --tests installs both.
"""
import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from support.backend import Backend
from support.buildah import STORAGE, buildah, descendants, tool, why_buildah_cannot_run
from support.dns import Dnsmasq, dnsmasq_bin
from support.haproxy import haproxy, connect_from  # noqa: F401 (haproxy: fixture)
from support.http import Reader, read_response, deadline_in, response_bytes
from support.interop import (Children, SOURCE_DIR, free_port, port_accepts,  # noqa: F401
                             wait_until)
from support.tunnel import switching, ws_accept, upgrade_request

if os.environ.get("SY_SKIP_CONTAINER") == "1":
    pytest.skip("container test excluded by SY_SKIP_CONTAINER=1", allow_module_level=True)

BUILD_SCRIPT = SOURCE_DIR / "docker" / "build-with-buildah.sh"
IMAGE = os.environ.get("SY_CONTAINER_TAG", "switchyard:test")
BUILD_TIMEOUT = 540  # below ctest's 600 s per integration file
CONFIG_IN_IMAGE = "/etc/switchyard/switchyard.yaml"

_reason = why_buildah_cannot_run()
if _reason:
    pytest.skip("container test skipped: " + _reason, allow_module_level=True)

BUILDAH = tool("buildah")


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """Builds the image once for this module; returns its config (docker format)."""
    log = tmp_path_factory.mktemp("container") / "build.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        try:
            r = subprocess.run(["bash", str(BUILD_SCRIPT), IMAGE], stdin=subprocess.DEVNULL,
                               stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT,
                               start_new_session=True)
        except subprocess.TimeoutExpired:
            pytest.fail("%s did not finish within %d s; log %s:\n%s" % (
                BUILD_SCRIPT, BUILD_TIMEOUT, log, log.read_text(errors="replace")[-5000:]))
    took = time.monotonic() - t0
    text = log.read_text(errors="replace")
    if r.returncode != 0:
        pytest.fail("image build failed (rc %d) after %.0f s; log %s:\n%s"
                    % (r.returncode, took, log, text[-8000:]))
    sys.stdout.write("\n--- image %s built in %.0f s (%s)\n" % (
        IMAGE, took, "base image made with debootstrap" if "debootstrap took" in text
        else "base image reused"))
    info = json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)
    return info["Docker"]["config"]


@pytest.fixture
def container(image):
    """A fresh working container of the image; removed at teardown."""
    name = "sy-pytest-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
    buildah("from", "--pull=never", "--name", name, "--add-host", "demo:127.0.0.1", IMAGE)
    yield name
    buildah("rm", name, check=False)


@pytest.fixture
def children():
    c = Children()
    yield c
    c.stop_all()


def run_in(children, ctr, argv, name, volumes=(), env=()):
    """`buildah run` in the container, as a child in its own process group."""
    cmd = [BUILDAH] + STORAGE + ["run", "--isolation", "chroot", "--network", "host"]
    for v in volumes:
        cmd += ["-v", v]
    for e in env:
        cmd += ["--env", e]
    return children.start(cmd + [ctr, "--"] + list(argv), name)


def run_once(ctr, argv, volumes=(), env=(), timeout=60):
    cmd = ["run", "--isolation", "chroot", "--network", "host"]
    for v in volumes:
        cmd += ["-v", v]
    for e in env:
        cmd += ["--env", e]
    return buildah(*(cmd + [ctr, "--"] + list(argv)), timeout=timeout, check=False)


def descendant(pid, comm):
    """pid of the process named comm below pid (the program under buildah's
    chroot runtime), or None."""
    return next((p for p, name in descendants(pid) if name == comm), None)


def uid_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid in /proc/%d/status" % pid)


def start_listening(children, ctr, argv, name, port, volumes=(), comm=None):
    c = run_in(children, ctr, argv, name, volumes=volumes)
    wait_until(lambda: port_accepts(port) or c.proc.poll() is not None, 60,
               "%s (from the image) to accept on port %d" % (name, port))
    assert c.proc.poll() is None, "%s exited (rc %s)\nstdout:\n%s\nstderr:\n%s" % (
        name, c.proc.returncode, c.stdout()[-3000:], c.stderr()[-3000:])
    pid = wait_until(lambda: descendant(c.pid, comm or argv[0]), 10,
                     "the %s process under buildah run" % name)
    return c, pid


# ------------------------------------------------------------------ WebSocket

def ws_frame(opcode, payload, mask=None):
    """A client frame: FIN set, masked as RFC 6455 5.3 requires."""
    mask = mask or os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(reader, timeout=10.0):
    """(fin, opcode, payload) of one server frame (unmasked)."""
    end = deadline_in(timeout)
    b0, b1 = reader.read_exact(2, end)
    assert not b1 & 0x80, "server frame is masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", reader.read_exact(2, end))[0]
    elif n == 127:
        n = struct.unpack("!Q", reader.read_exact(8, end))[0]
    return bool(b0 & 0x80), b0 & 0x0F, reader.read_exact(n, end)


# ------------------------------------------------------------------ tests

def test_image_metadata_and_baked_config(image, container):
    assert image["User"] == "10001:10001", image.get("User")
    assert "8080/tcp" in (image.get("ExposedPorts") or {}), image.get("ExposedPorts")
    assert image["Entrypoint"] == ["switchyard"]
    assert image["Cmd"] == ["-c", CONFIG_IN_IMAGE]
    assert image.get("StopSignal") == "SIGTERM"
    hc = image.get("Healthcheck") or {}
    assert hc.get("Test", [""])[0] == "CMD", "HEALTHCHECK lost (image not in docker format?): %r" % hc
    # The baked config (compose's: 0.0.0.0:8080 -> demo:9000) checks in the image
    # (-t resolves nothing; the container maps demo -> 127.0.0.1 all the same).
    r = run_once(container, ["switchyard", "-t", "-c", CONFIG_IN_IMAGE])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    r = run_once(container, ["switchyard", "-v"])
    assert r.returncode == 0 and r.stdout.startswith(b"switchyard "), r
    # Runtime stage: the runtime libraries, not the build tools.
    r = run_once(container, ["bash", "-c", "command -v cc gcc cmake curl || true"])
    assert r.stdout.strip() == b"", "build tools in the runtime image: %r" % r.stdout


def test_websocket_and_http_through_the_image(image, container, children, tmp_path):
    demo_port = free_port()
    demo, demo_pid = start_listening(children, container,
                                     ["sy-demo", "-l", "127.0.0.1:%d" % demo_port],
                                     "sy-demo", demo_port)

    port = free_port()
    admin_port = free_port()
    cfg = tmp_path / "switchyard.yaml"
    cfg.write_text("""\
listeners:
  - name: public
    address: 127.0.0.1:%d
admin:
  address: 127.0.0.1:%d
upstreams:
  demo:
    servers:
      - address: 127.0.0.1:%d
routes:
  - name: ws
    match: { path_prefix: /ws, upgrade: [websocket] }
    upstream: demo
    websocket: { check_accept: true }
  - name: default
    upstream: demo
access_log: stdout
""" % (port, admin_port, demo_port))
    cfg.chmod(0o644)
    mount = "%s:%s:ro" % (cfg, CONFIG_IN_IMAGE)
    px, px_pid = start_listening(children, container, ["switchyard", "-c", CONFIG_IN_IMAGE],
                                 "switchyard", port, volumes=[mount])
    # The image's USER, not root.
    assert uid_of(px_pid) == 10001 and uid_of(demo_pid) == 10001

    # WebSocket: handshake, one masked text frame echoed, close handshake.
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(upgrade_request("/ws/echo", host="container.test", key=key))
        rd = Reader(s)
        resp = read_response(rd, deadline_in(10))
        assert resp.status == 101, resp.head
        assert resp.value("sec-websocket-accept") == ws_accept(key), resp.head
        assert resp.tokens("upgrade") == ["websocket"], resp.head
        msg = "hello through the container \u2713".encode()
        s.sendall(ws_frame(0x1, msg))
        fin, op, data = read_frame(rd)
        assert (fin, op, data) == (True, 0x1, msg)
        s.sendall(ws_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        fin, op, data = read_frame(rd)
        assert op == 0x8 and struct.unpack("!H", data[:2])[0] == 1000, (op, data)
        assert rd.wait_eof(deadline_in(10)) == b""

    # Plain HTTP: POST /echo shows what the backend received.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        body = b"hello"
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: container.test\r\nContent-Length: 5\r\n"
                  b"Connection: close\r\n\r\n" + body)
        resp = read_response(Reader(s), deadline_in(10), method="POST")
        assert resp.status == 200, resp.head
        seen = json.loads(resp.body)
        assert seen["method"] == "POST" and seen["path"] == "/echo", seen
        assert seen["body_length"] == 5, seen
        assert "Via: 1.1 switchyard" in seen["headers"], seen

    px.wait_output(lambda t: t.count('"type":"request"') >= 2, 10, "two access log lines")

    # The image's HEALTHCHECK command, as an engine would run it.
    hc = image["Healthcheck"]["Test"]
    env = ["SWITCHYARD_ADMIN_PORT=%d" % admin_port]
    r = run_once(container, hc[1:], volumes=[mount], env=env)
    assert r.returncode == 0, "HEALTHCHECK failed while the proxy runs: %r" % (r,)

    # STOPSIGNAL: SIGTERM to the program stops it cleanly.
    os.kill(px_pid, signal.SIGTERM)
    rc = px.wait(15)
    assert rc == 0, "switchyard in the container exited %s on SIGTERM\nstderr:\n%s" % (rc, px.stderr())
    assert "signal 15" in px.stderr(), px.stderr()
    wait_until(lambda: not port_accepts(port), 5, "the listener to close")
    r = run_once(container, hc[1:], volumes=[mount], env=env)
    assert r.returncode != 0, "HEALTHCHECK passed with the proxy stopped"

    os.kill(demo_pid, signal.SIGTERM)
    assert demo.wait(15) == 0, demo.stderr()


# ------------------------------------------------------------------ the Kubernetes example

K8S = SOURCE_DIR / "deploy" / "kubernetes.yaml"
# What the kubelet writes into a pod's /etc/resolv.conf (dnsPolicy: ClusterFirst)
# in namespace "default": the ConfigMap's short upstream name is looked up
# through this search path, as in a cluster.
POD_DNS_SEARCH = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
POD_DNS_OPTIONS = ["ndots:5"]
# The demo pods behind the headless Service: one from the start, the second
# added to DNS during the test (its backend listens from the start and must
# get nothing until then).
PODS = ["127.0.0.2", "127.0.0.3"]
CLIENT = "127.0.0.5"  # the client's source address, which X-Forwarded-For must show


def k8s_object(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, "%s %s: %d in %s" % (kind, name, len(found), K8S)
    return found[0]


def mounted_file(docs, pod, ctr, path):
    """(text, mode, source) of the file the kubelet would put at `path` in the
    container: the volumeMount whose mountPath holds it, its ConfigMap or
    Secret volume, the key named by the rest of the path."""
    (mount,) = [m for m in ctr["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    if "configMap" in vol:
        src = k8s_object(docs, "ConfigMap", vol["configMap"]["name"])
        return src["data"][key], vol["configMap"].get("defaultMode", 0o644), "ConfigMap"
    src = k8s_object(docs, "Secret", vol["secret"]["secretName"])
    text = (src.get("stringData") or {}).get(key)
    if text is None:
        text = base64.b64decode(src["data"][key]).decode()
    return text, vol["secret"].get("defaultMode", 0o644), "Secret"


def named_port(ctr, port):
    """A probe's or Service's port: a number, or the name of a containerPort."""
    if isinstance(port, int):
        return port
    (n,) = [p["containerPort"] for p in ctr["ports"] if p["name"] == port]
    return n


def host_port(address):
    host, port = address.rsplit(":", 1)
    return host, int(port)


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(duration))
    assert m, duration
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def pod_handler(addr):
    """A demo pod at addr: a request gets 200 with the pod's address as body;
    a WebSocket upgrade gets a 101 (X-Pod: addr) and then every frame back,
    until a close frame, answered with a close."""
    def handler(conn):
        for _ in range(1000):
            req = conn.read_request(timeout=30)
            if req is None:
                return
            if "websocket" not in req.tokens("upgrade"):
                conn.send(response_bytes(200, body=addr.encode()))
                continue
            conn.send(switching(accept_for=req.value("sec-websocket-key"),
                                headers=["X-Pod: " + addr]))
            for _ in range(1000):
                end = deadline_in(30)
                b0, b1 = conn.reader.read_exact(2, end)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", conn.reader.read_exact(2, end))[0]
                elif n == 127:
                    n = struct.unpack("!Q", conn.reader.read_exact(8, end))[0]
                assert n < 126, "pod_handler echoes short frames only"
                mask = conn.reader.read_exact(4, end) if b1 & 0x80 else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(conn.reader.read_exact(n, end)))
                conn.send(bytes([b0, n]) + data)  # a server frame: unmasked
                if b0 & 0x0F == 0x8:
                    return
            return
    return handler


def pod_backends(port):
    """Backends on PODS with one port (port, or any free one when it is taken)."""
    for _ in range(20):
        made = []
        try:
            for addr in PODS:
                made.append(Backend(handler=pod_handler(addr), name="pod-" + addr, host=addr,
                                    port=port))
                port = made[0].port
            return made
        except OSError:
            for b in made:
                b.close()
            port = 0
    raise AssertionError("no port free on all of %s" % PODS)


def http_get(port, path, headers=(), source=None):
    """(status, body) of GET path on a new connection (from CLIENT when source)."""
    if source:
        s = connect_from(CLIENT, port)
    else:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    with s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: switchyard.test\r\n%sConnection: close\r\n\r\n"
                   % (path, "".join(h + "\r\n" for h in headers))).encode())
        r = read_response(Reader(s), deadline_in(10))
        return r.status, r.body


def admin_answers(port, path):
    try:
        return http_get(port, path)[0]
    except OSError:
        return None


def pods_answering(port, want, tries=8):
    """True when `tries` requests are all answered 200 by the pods in `want`
    and every one of them answered at least once."""
    seen = set()
    for _ in range(tries):
        status, body = http_get(port, "/", source=CLIENT)
        if status != 200 or body.decode() not in want:
            return False
        seen.add(body.decode())
    return seen == set(want)


@pytest.fixture
def pod_container(image):
    """A working container whose /etc/resolv.conf has a pod's search path."""
    name = "sy-pytest-pod-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
    args = ["from", "--pull=never", "--name", name]
    for d in POD_DNS_SEARCH:
        args += ["--dns-search", d]
    for o in POD_DNS_OPTIONS:
        args += ["--dns-option", o]
    buildah(*(args + [IMAGE]))
    yield name
    buildah("rm", name, check=False)


@pytest.fixture
def cluster_dns(tmp_path):
    if not dnsmasq_bin():
        pytest.skip("dnsmasq not installed (dnsmasq-base)")
    d = Dnsmasq(tmp_path, domains=["cluster.local"])
    yield d
    d.stop()


@pytest.mark.parametrize("front", ["service", "nlb"])
def test_kubernetes_configmap_in_the_image(image, pod_container, children, cluster_dns, request,
                                           tmp_path, front):
    """The ConfigMap's switchyard.yaml, run by the image as the Deployment runs
    it, against demo pods found by DNS. front "service": clients connect to
    the listener directly (the shipped ClusterIP Service). front "nlb": the
    listener with the ConfigMap's commented-out PROXY protocol line turned on,
    behind HAProxy with send-proxy-v2 as the AWS NLB the manifest describes."""
    t_start = time.monotonic()
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    dep = k8s_object(docs, "Deployment", "switchyard")
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert "command" not in ctr and image["Entrypoint"] == ["switchyard"]
    argv = image["Entrypoint"] + ctr["args"]
    config_path = ctr["args"][ctr["args"].index("-c") + 1]
    text, config_mode, _ = mounted_file(docs, pod, ctr, config_path)
    cfg = yaml.safe_load(text)

    # Where the kubelet and the Services connect: the probes' admin port and
    # the Service's target port must be the ports the file listens on.
    ready, live = ctr["readinessProbe"]["httpGet"], ctr["livenessProbe"]["httpGet"]
    assert named_port(ctr, ready["port"]) == host_port(cfg["admin"]["address"])[1], (ready, cfg["admin"])
    assert named_port(ctr, live["port"]) == host_port(cfg["admin"]["address"])[1], (live, cfg["admin"])
    svc = k8s_object(docs, "Service", "switchyard")
    (svc_port,) = svc["spec"]["ports"]
    (listener,) = cfg["listeners"]
    assert named_port(ctr, svc_port["targetPort"]) == host_port(listener["address"])[1]

    # What has to differ outside a cluster, and nothing else:
    # - the pod IP's 0.0.0.0:8080 / 0.0.0.0:9901 become free loopback ports
    #   (host network: the container's ports are the machine's);
    # - resolver.nameservers: the cluster DNS (the pod's /etc/resolv.conf
    #   nameserver) is this test's dnsmasq, on a port resolv.conf cannot name.
    #   The search path and ndots stay the pod's (pod_container);
    # - the demo pods' port stays the shipped one unless it is taken here;
    # - "nlb": the listener's proxy_protocol line the ConfigMap shows commented.
    port, admin_port = free_port(), free_port()
    listener["address"] = "127.0.0.1:%d" % port
    cfg["admin"]["address"] = "127.0.0.1:%d" % admin_port
    cfg["resolver"] = dict(cfg.get("resolver") or {}, nameservers=[cluster_dns.nameserver])
    (server,) = cfg["upstreams"]["demo"]["servers"]
    name, demo_port = host_port(server["address"])
    pods = pod_backends(demo_port)
    request.addfinalizer(lambda: [b.close() for b in pods])
    server["address"] = "%s:%d" % (name, pods[0].port)
    if front == "nlb":
        m = re.search(r"^\s*#\s*proxy_protocol:\s*(\S+)\s*$", text, re.M)
        assert m, "the ConfigMap does not show the proxy_protocol line for an NLB"
        assert m.group(1) == "v2", "an NLB sends PROXY v2 headers only, not %s" % m.group(1)
        assert "aws-load-balancer-proxy-protocol" in K8S.read_text()
        listener["proxy_protocol"] = m.group(1)
        client_port = free_port()
        request.getfixturevalue("haproxy")(
            "frontend nlb\n  mode tcp\n  bind 127.0.0.1:%d\n  default_backend pods\n"
            "backend pods\n  mode tcp\n  server switchyard 127.0.0.1:%d send-proxy-v2\n"
            % (client_port, port), [("127.0.0.1", client_port)])
    else:
        client_port = port

    # The mounted volumes, with the modes and group the kubelet gives them.
    config_dir = tmp_path / "configmap"
    config_dir.mkdir(mode=0o755)
    (config_dir / os.path.basename(config_path)).write_text(yaml.safe_dump(cfg))
    (config_dir / os.path.basename(config_path)).chmod(config_mode)
    token_path = cfg["admin"]["token_file"]
    token, token_mode, src = mounted_file(docs, pod, ctr, token_path)
    assert src == "Secret", token_path
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o755)
    (secret_dir / os.path.basename(token_path)).write_text(token)
    os.chown(secret_dir / os.path.basename(token_path), 0, pod["securityContext"]["fsGroup"])
    (secret_dir / os.path.basename(token_path)).chmod(token_mode)
    volumes = ["%s:%s:ro" % (config_dir, os.path.dirname(config_path)),
               "%s:%s:ro" % (secret_dir, os.path.dirname(token_path))]

    # DNS: the headless Service's name in the pod's namespace -> the first pod.
    fqdn = name if "." in name else "%s.%s" % (name, POD_DNS_SEARCH[0])
    cluster_dns.set_hosts({fqdn: PODS[:1]})

    px = run_in(children, pod_container, argv, "switchyard", volumes=volumes)
    t_run = time.monotonic()
    wait_until(lambda: admin_answers(admin_port, ready["path"]) == 200 or px.proc.poll() is not None,
               60, "%s on the admin port to answer 200" % ready["path"])
    assert px.proc.poll() is None, "switchyard exited (rc %s)\nstdout:\n%s\nstderr:\n%s" % (
        px.proc.returncode, px.stdout()[-3000:], px.stderr()[-3000:])
    t_ready = time.monotonic()
    px_pid = wait_until(lambda: descendant(px.pid, "switchyard"), 10, "switchyard under buildah run")
    assert uid_of(px_pid) == pod["securityContext"]["runAsUser"]

    # /readyz waited for the name's first answer, so the pod is there already;
    # the wait only bounds the check.
    min_ttl = seconds((cfg.get("resolver") or {}).get("min_ttl", "1s"))
    wait_until(lambda: pods_answering(client_port, PODS[:1]), min_ttl + 10,
               "requests answered by the pod %s found by DNS" % PODS[0])
    assert pods[0].requests[0].values("X-Forwarded-For") == [CLIENT], pods[0].requests[0].head

    # WebSocket through the "ws" route: handshake checked (check_accept), an echo, close.
    key = base64.b64encode(os.urandom(16)).decode()
    with connect_from(CLIENT, client_port) as s:
        s.sendall(upgrade_request("/ws/echo", host="switchyard.test", key=key))
        rd = Reader(s)
        resp = read_response(rd, deadline_in(10))
        assert resp.status == 101, resp.head
        assert resp.value("sec-websocket-accept") == ws_accept(key), resp.head
        assert resp.value("x-pod") == PODS[0], resp.head
        msg = "through the ConfigMap's route \u2713".encode()
        s.sendall(ws_frame(0x1, msg))
        assert read_frame(rd) == (True, 0x1, msg)
        s.sendall(ws_frame(0x8, struct.pack("!H", 1000)))
        fin, op, data = read_frame(rd)
        assert op == 0x8 and struct.unpack("!H", data[:2])[0] == 1000, (op, data)
        assert rd.wait_eof(deadline_in(10)) == b""
    upgrade = [r for r in pods[0].requests if r.target == "/ws/echo"]
    assert len(upgrade) == 1 and upgrade[0].values("X-Forwarded-For") == [CLIENT], upgrade
    px.wait_output(lambda t: '"type":"tunnel"' in t and '"client_ip":"%s"' % CLIENT in t, 10,
                   "the tunnel's access log line with the client's address")

    # Liveness, and the admin token from the Secret: /metrics needs it, the probes do not.
    assert http_get(admin_port, live["path"])[0] == 200
    assert http_get(admin_port, "/metrics")[0] == 401
    status, body = http_get(admin_port, "/metrics", ["Authorization: Bearer " + token.strip()])
    assert status == 200 and b"switchyard_" in body, (status, body[:300])
    assert not pods[1].conns, "the pod not in DNS got connections"

    # A second demo pod becomes ready: its address joins the name's records.
    cluster_dns.set_hosts({fqdn: PODS})
    t_dns = time.monotonic()
    follow = min_ttl + 1.0 + 3.0  # dnsmasq's TTL (1 s) + slack for a loaded machine
    wait_until(lambda: pods_answering(client_port, PODS), follow,
               "requests answered by both pods within %.1f s of the DNS change" % follow)
    took = time.monotonic() - t_dns

    # SIGTERM, as the kubelet sends after preStop: a clean exit.
    os.kill(px_pid, signal.SIGTERM)
    rc = px.wait(seconds(cfg["timeouts"]["drain"]) + 15)
    assert rc == 0, "rc %s\nstderr:\n%s" % (rc, px.stderr()[-3000:])
    sys.stdout.write("\n--- %s: ready %.1f s after `buildah run`, second pod in use %.1f s "
                     "after the DNS change, %.1f s in all\n"
                     % (front, t_ready - t_run, took, time.monotonic() - t_start))
