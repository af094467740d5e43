"""Every configuration the project ships or shows loads with `switchyard -t`,
without DNS (the container and Kubernetes files name upstreams like demo:9000
that do not resolve here): config/*.yaml, docker/switchyard.yaml, the
ConfigMap's embedded file in deploy/kubernetes.yaml, and the complete YAML
examples (those with `listeners:`) of README.md and docs/*.md.

The Kubernetes example is also checked for what a cluster would trip over: the
probes hit admin paths that answer 200 when the ConfigMap's file actually runs
(addresses moved to loopback), ports line up between the file, the containers
and the Services, the upstream is a headless Service, the CPU limit is what
`workers` follows, and the grace period covers preStop plus the drain. Its
walk-through, docs/KUBERNETES.md, shows the file's manifests as they are (its
one variant, the NLB Service, keeps the selector and ports), and the PROXY
protocol line it tells you to uncomment loads."""
import math
import re
import subprocess

import pytest
import yaml

from conftest import SOURCE_DIR, switchyard_bin
from support.http import get, response_bytes
from support.ops import AdminPort

K8S = SOURCE_DIR / "deploy" / "kubernetes.yaml"
K8S_PAGE = SOURCE_DIR / "docs" / "KUBERNETES.md"
DOCKER_CONFIG = SOURCE_DIR / "docker" / "switchyard.yaml"
DOCKERFILE = SOURCE_DIR / "docker" / "Dockerfile"


def check(path):
    p = subprocess.run([switchyard_bin(), "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    return p.returncode, p.stderr.decode("utf-8", "replace")


def assert_checks(path, label=None):
    rc, err = check(path)
    assert rc == 0, "%s does not pass switchyard -t (rc %d):\n%s" % (label or path, rc, err)
    assert "configuration ok" in err, err


def manifests():
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def one(kind, name=None):
    found = [d for d in manifests()
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, "%s %s: %d in %s" % (kind, name or "", len(found), K8S)
    return found[0]


def embedded_config():
    cm = one("ConfigMap")
    assert list(cm["data"]) == ["switchyard.yaml"], list(cm["data"])
    return cm["data"]["switchyard.yaml"]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def cpus(quantity):
    q = str(quantity)
    return math.ceil(int(q[:-1]) / 1000) if q.endswith("m") else math.ceil(float(q))


# ------------------------------------------------------------------ -t on every file

def test_config_directory():
    files = sorted((SOURCE_DIR / "config").glob("*.yaml"))
    assert len(files) >= 2, files
    for f in files:
        assert_checks(f)


def test_docker_config_without_dns():
    # "demo" is compose's service name: it resolves in the container, not here.
    assert re.search(r"address: demo:\d+", DOCKER_CONFIG.read_text())
    assert_checks(DOCKER_CONFIG)


def test_kubernetes_configmap_without_dns(tmp_path):
    f = tmp_path / "switchyard.yaml"
    f.write_text(embedded_config())
    assert_checks(f, "the ConfigMap in %s" % K8S)


def doc_examples():
    """(label, text) of every ```yaml block of README.md and docs/*.md that is
    a whole configuration (has a top-level listeners key)."""
    out = []
    for md in [SOURCE_DIR / "README.md"] + sorted((SOURCE_DIR / "docs").glob("*.md")):
        text = md.read_text()
        for m in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            if re.search(r"^listeners:", m.group(1), re.M):
                line = text.count("\n", 0, m.start()) + 2
                out.append(("%s:%d" % (md.name, line), m.group(1)))
    return out


def test_documentation_examples(tmp_path):
    examples = doc_examples()
    assert len(examples) >= 5, [label for label, _ in examples]
    # Certificates named as tls/NAME.pem / tls/NAME.key: the demo pair stands in.
    tls = tmp_path / "tls"
    tls.mkdir()
    demo = SOURCE_DIR / "config" / "tls"
    for label, text in examples:
        for name in set(re.findall(r"tls/([\w.-]+\.(?:pem|key))", text)):
            target = tls / name
            if not target.exists():
                target.symlink_to(demo / ("demo.key" if name.endswith(".key") else "demo.pem"))
    for i, (label, text) in enumerate(examples):
        f = tmp_path / ("example%d.yaml" % i)
        f.write_text(text)
        assert_checks(f, label)


def test_the_check_asks_no_dns(tmp_path):
    # .invalid never resolves (RFC 6761): -t passes without asking (the name
    # is looked up by the running proxy, test_dns_discovery.py).
    f = tmp_path / "c.yaml"
    f.write_text("listeners: [{address: 127.0.0.1:1}]\n"
                 "resolver: {nameservers: [\"127.0.0.1:1\"]}\n"
                 "upstreams: {u: {servers: [{address: backend.invalid:9000}]}}\n"
                 "routes: [{upstream: u}]\n")
    assert_checks(f)


# ------------------------------------------------------------------ the Kubernetes example

def test_kubernetes_example_fits_together():
    cfg = yaml.safe_load(embedded_config())
    dep = one("Deployment", "switchyard")
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}

    # The ConfigMap is what the container reads.
    (mount,) = [m for m in ctr["volumeMounts"] if m["name"] == "config"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert vol["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert ctr["args"] == ["-c", mount["mountPath"] + "/switchyard.yaml"], ctr["args"]

    # Ports: listener = containerPort "http" = the Service's target; admin = probes' port.
    assert ports["http"] == port_of(cfg["listeners"][0]["address"])
    assert ports["admin"] == port_of(cfg["admin"]["address"])
    svc = one("Service", "switchyard")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert ctr[probe]["httpGet"] == {"path": path, "port": "admin"}, ctr[probe]

    # workers follows the CPU limit (auto reads cgroup cpu.max; a number must match it).
    limit = ctr["resources"]["limits"].get("cpu")
    assert limit is not None, "no CPU limit: workers: auto would count the node's CPUs"
    workers = cfg.get("workers", "auto")
    if workers != "auto":
        assert int(workers) == cpus(limit), (workers, limit)
    assert cpus(ctr["resources"]["requests"]["cpu"]) <= cpus(limit)

    # The upstream is a headless Service on the port the demo container serves.
    (server,) = cfg["upstreams"]["demo"]["servers"]
    host, port = server["address"].rsplit(":", 1)
    demo_svc = one("Service", host.split(".")[0])
    assert demo_svc["spec"].get("clusterIP") == "None", demo_svc["spec"]
    (demo_port,) = demo_svc["spec"]["ports"]
    assert demo_port["port"] == int(port)
    demo_ctr = one("Deployment", "demo")["spec"]["template"]["spec"]["containers"][0]
    demo_ports = {p["name"]: p["containerPort"] for p in demo_ctr["ports"]}
    assert demo_ports[demo_port["targetPort"]] == int(port)
    assert demo_ctr["args"] == ["-l", "0.0.0.0:%s" % port]

    # Stopping: preStop sleep + drain fit in the grace period.
    sleep = int(ctr["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = cfg["timeouts"]["drain"]
    assert drain.endswith("s") and drain[:-1].isdigit(), drain
    assert pod["terminationGracePeriodSeconds"] > sleep + int(drain[:-1])

    # The PROXY-protocol variant for an NLB is shown commented out: as shipped the
    # Service is a ClusterIP one, whose clients send no PROXY header.
    text = K8S.read_text()
    assert "aws-load-balancer-proxy-protocol" in text
    assert not re.search(r"^\s*proxy_protocol:", embedded_config(), re.M)
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["spec"]


def test_kubernetes_configmap_with_proxy_protocol(tmp_path):
    """The line the manifest and docs/KUBERNETES.md say to uncomment for the
    NLB loads and turns the PROXY protocol on for the public listener
    (test_container.py runs it behind HAProxy's send-proxy-v2)."""
    text, n = re.subn(r"^(\s*)#\s*(proxy_protocol:\s*v2)\s*$", r"\1\2", embedded_config(),
                      flags=re.M)
    assert n == 1, "no commented-out proxy_protocol line in the ConfigMap"
    assert yaml.safe_load(text)["listeners"][0]["proxy_protocol"] == "v2"
    f = tmp_path / "pp.yaml"
    f.write_text(text)
    assert_checks(f, "the ConfigMap with proxy_protocol uncommented")


def page_manifests():
    """(line, document) of each Kubernetes object in docs/KUBERNETES.md's yaml blocks."""
    text = K8S_PAGE.read_text()
    out = []
    for m in re.finditer(r"```yaml\n(.*?)```", text, re.S):
        if re.search(r"^apiVersion:", m.group(1), re.M):
            line = text.count("\n", 0, m.start()) + 2
            out += [(line, d) for d in yaml.safe_load_all(m.group(1)) if d]
    return out


def test_kubernetes_page_shows_the_shipped_manifests():
    shipped = {(d["kind"], d["metadata"]["name"]): d for d in manifests()}
    shown = set()
    variants = 0
    for line, d in page_manifests():
        key = (d["kind"], d["metadata"]["name"])
        assert key in shipped, "KUBERNETES.md:%d: %s %s is not in %s" % (line, *key, K8S)
        want = shipped[key]
        if d["kind"] == "Service" and d["spec"].get("type") == "LoadBalancer":
            # The NLB variant: the file's Service with a type and annotations.
            variants += 1
            ann = d["metadata"].get("annotations", {})
            assert ann.get("service.beta.kubernetes.io/aws-load-balancer-proxy-protocol") == "*"
            d = {**d, "metadata": {k: v for k, v in d["metadata"].items() if k != "annotations"},
                 "spec": {k: v for k, v in d["spec"].items() if k != "type"}}
        else:
            shown.add(key)
        assert d == want, "KUBERNETES.md:%d: %s %s differs from %s" % (line, *key, K8S)
    assert variants == 1, variants
    assert shown == set(shipped), "not shown in KUBERNETES.md: %s" % sorted(set(shipped) - shown)


def test_kubernetes_probes_answer_on_the_configmaps_file(proxy, backend):
    """The ConfigMap's file, run with its addresses moved to loopback: the
    probed admin paths answer 200 and requests reach the upstream."""
    cfg = yaml.safe_load(embedded_config())
    dep = one("Deployment", "switchyard")
    (ctr,) = dep["spec"]["template"]["spec"]["containers"]
    be = backend(response=response_bytes(200, body=b"demo"))
    adm = AdminPort()
    cfg["admin"] = adm.config
    for up in cfg["upstreams"].values():
        for s in up["servers"]:
            s["address"] = be.address
    cfg["workers"] = 1
    listeners = cfg.pop("listeners")
    px = proxy(listeners=lambda port: [dict(listeners[0], address="127.0.0.1:%d" % port)],
               **cfg)
    for probe in ("readinessProbe", "livenessProbe"):
        r = adm.get(ctr[probe]["httpGet"]["path"])
        assert r.status == 200, (probe, r.status, r.text)
    assert px.request(get("/")).body == b"demo"


def test_docker_files_agree():
    cfg = yaml.safe_load(DOCKER_CONFIG.read_text())
    dockerfile = DOCKERFILE.read_text()
    assert "EXPOSE %d" % port_of(cfg["listeners"][0]["address"]) in dockerfile
    # The HEALTHCHECK's default admin port is the baked file's admin port.
    m = re.search(r"SWITCHYARD_ADMIN_PORT:-(\d+)", dockerfile)
    assert m and int(m.group(1)) == port_of(cfg["admin"]["address"]), m
    assert "COPY docker/switchyard.yaml /etc/switchyard/switchyard.yaml" in dockerfile


@pytest.mark.parametrize("key", ["timeouts", "listeners", "upstreams", "routes"])
def test_the_loader_refuses_a_duplicated_key_in_the_configmap(tmp_path, key):
    """What crash-looped the pod: a top-level key given twice. -t says so."""
    text = embedded_config()
    block = re.search(r"^%s:.*?(?=^\S|\Z)" % key, text, re.S | re.M)
    assert block, key
    f = tmp_path / "dup.yaml"
    f.write_text(text + "\n" + block.group(0))
    rc, err = check(f)
    assert rc == 1 and ('duplicate key "%s" at top level' % key) in err, err
