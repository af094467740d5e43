"""The docs say what the code does: every YAML example in README.md and docs/
loads with `switchyard -t` (a block preceded by the line `<!-- fragment -->`
is a piece of a file and is skipped, and there are few of those; a block with
top-level `apiVersion:` and `kind:` is a Kubernetes manifest: it must parse,
and the Switchyard files its ConfigMaps carry must load),
config/examples.yaml names every key the loader knows, every metric name
the code can emit is in docs/OPERATIONS.md, and no doc names a metric the code
does not have, and DESIGN.md's module table is the include order."""
import re
import shutil
import subprocess

import yaml

from conftest import SOURCE_DIR, switchyard_bin

FRAGMENT = "<!-- fragment -->"
MAX_FRAGMENTS = 3
# Files the examples name, relative to the example: the demo pair stands in.
TLS_FILES = {"site.pem": "demo.pem", "site.key": "demo.key", "other.pem": "demo.pem",
             "other.key": "demo.key", "ca.pem": "demo.pem", "demo.pem": "demo.pem",
             "demo.key": "demo.key"}


def doc_files():
    return [SOURCE_DIR / "README.md"] + sorted((SOURCE_DIR / "docs").glob("*.md"))


def yaml_blocks(path):
    """(line, text, is_fragment) for each ```yaml block of a Markdown file."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```yaml":
            start = i
            prev = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), "%s:%d: unterminated yaml block" % (path.name, start + 1)
            out.append((start + 1, "\n".join(body) + "\n", prev == FRAGMENT))
        i += 1
    return out


def is_manifest(text):
    """A Kubernetes manifest rather than a Switchyard file (which has neither key)."""
    return bool(re.search(r"^apiVersion:", text, re.M) and re.search(r"^kind:", text, re.M))


def manifest_configs(where, text):
    """(label, Switchyard file) for each `*.yaml` entry of the ConfigMaps in a
    manifest block; AssertionError when the block is not a valid manifest."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise AssertionError("%s: not valid YAML: %s" % (where, e)) from None
    out = []
    for i, d in enumerate(docs):
        assert isinstance(d, dict) and d.get("apiVersion") and d.get("kind"), \
            "%s: document %d is not a Kubernetes object" % (where, i)
        assert (d.get("metadata") or {}).get("name"), "%s: document %d has no name" % (where, i)
        if d["kind"] == "ConfigMap":
            for key, value in (d.get("data") or {}).items():
                if key.endswith(".yaml"):
                    out.append(("%s (ConfigMap %s, %s)" % (where, d["metadata"]["name"], key),
                                value))
    return out


def test_yaml_examples_load(tmp_path):
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, src in TLS_FILES.items():
        shutil.copy(SOURCE_DIR / "config" / "tls" / src, tls / name)
    checked, manifests, fragments, failures = 0, 0, [], []
    for doc in doc_files():
        for line, text, fragment in yaml_blocks(doc):
            where = "%s:%d" % (doc.relative_to(SOURCE_DIR), line)
            if fragment:
                fragments.append(where)
                continue
            files = [(where, text)]
            if is_manifest(text):
                manifests += 1
                files = manifest_configs(where, text)
            for n, (label, body) in enumerate(files):
                f = tmp_path / ("%s-%d-%d.yaml" % (doc.stem, line, n))
                f.write_text(body)
                p = subprocess.run([switchyard_bin(), "-t", "-c", str(f)],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
                checked += 1
                if p.returncode != 0 or b"configuration ok" not in p.stderr:
                    failures.append("%s: rc=%d %s" % (label, p.returncode,
                                                      p.stderr.decode("utf-8", "replace").strip()))
    assert not failures, "YAML examples that do not load:\n" + "\n".join(failures)
    assert checked >= 14, "only %d whole examples found: is the block syntax still ```yaml?" % checked
    assert manifests >= 5, "only %d Kubernetes manifests (docs/KUBERNETES.md has more)" % manifests
    assert len(fragments) <= MAX_FRAGMENTS, "too many fragments: %s" % fragments


def loader_keys():
    """Every key name in src/config.c's key tables ({"name", h_handler, ...};
    the shared handlers of config_values.c are cv_h_...)."""
    src = (SOURCE_DIR / "src" / "config.c").read_text()
    keys = set(re.findall(r'\{\s*"([a-z_]+)"\s*,\s*(?:cv_)?h_', src))
    assert len(keys) > 40, "key tables not found in src/config.c (%d keys)" % len(keys)
    return keys


def test_examples_yaml_names_every_key():
    text = (SOURCE_DIR / "config" / "examples.yaml").read_text()
    # "# or: key: ..." shows the alternative to an exclusive key (token / token_file)
    text = re.sub(r"#\s*or:\s*", "", text)
    live = "\n".join(re.sub(r"(^|\s)#.*", "", ln) for ln in text.splitlines())
    used = set(re.findall(r"([a-z_]+)\s*:", live))
    missing = sorted(loader_keys() - used)
    assert not missing, "config/examples.yaml does not show: %s" % ", ".join(missing)


def emitted_metrics():
    """Every switchyard_* name in a string literal of src/."""
    names = set()
    for f in (SOURCE_DIR / "src").rglob("*.c"):
        for literal in re.findall(r'"(?:[^"\\\n]|\\.)*"', f.read_text()):
            names |= set(re.findall(r"\bswitchyard_[a-z_]+", literal))
    assert len(names) > 15, names
    return names


def test_every_metric_documented():
    names = emitted_metrics()
    ops = (SOURCE_DIR / "docs" / "OPERATIONS.md").read_text()
    documented = set(re.findall(r"^\| `(switchyard_[a-z_]+)` \|", ops, re.M))
    # a histogram's series (_bucket, _sum, _count) are documented under the family
    names = {re.sub(r"_(bucket|sum|count)$", "", n)
             if re.sub(r"_(bucket|sum|count)$", "", n) in documented else n for n in names}
    missing = sorted(names - documented)
    assert not missing, "metrics missing from the table in docs/OPERATIONS.md: %s" % missing
    unknown = sorted(documented - names)
    assert not unknown, "docs/OPERATIONS.md lists metrics the code never emits: %s" % unknown


def test_docs_name_only_metrics_that_exist():
    names = emitted_metrics()
    unknown = []
    for doc in doc_files():
        for name in sorted(set(re.findall(r"\bswitchyard_[a-z_]+", doc.read_text()))):
            if name not in names and re.sub(r"_(bucket|sum|count)$", "", name) not in names:
                unknown.append("%s: %s" % (doc.relative_to(SOURCE_DIR), name))
    assert not unknown, "metrics the code never emits:\n" + "\n".join(unknown)


def module_includes():
    """{module: modules it includes}, from include/switchyard/*.h and src/:
    a module is a header's name; config_values.c is config's, src/conn/ is conn."""
    deps = {}
    files = [(f.stem, f) for f in (SOURCE_DIR / "include" / "switchyard").glob("*.h")]
    files += [("config" if f.stem == "config_values" else f.stem, f)
              for f in (SOURCE_DIR / "src").glob("*.c")]
    files += [("conn", f) for f in (SOURCE_DIR / "src" / "conn").iterdir()]
    for mod, f in files:
        for m in re.findall(r'#include "switchyard/([a-z_]+)\.h"', f.read_text()):
            if m != mod:
                deps.setdefault(mod, set()).add(m)
    return deps


def test_design_module_table_is_the_include_order():
    """docs/DESIGN.md lists every module bottom-up and says a module includes
    only modules above it: no circle, and a newcomer can read upwards."""
    design = (SOURCE_DIR / "docs" / "DESIGN.md").read_text()
    table = design.split("## Modules", 1)[1].split("\n## ", 1)[0]
    order = re.findall(r"^\| `([a-z_]+)`(?: \(`src/conn/`\))? \|", table, re.M)
    assert len(order) > 20 and len(set(order)) == len(order), order
    deps = module_includes()
    modules = set(deps) | {m for ds in deps.values() for m in ds}
    assert not modules - set(order), "modules missing from DESIGN.md's table: %s" % \
        sorted(modules - set(order))
    below = sorted("%s includes %s" % (m, d) for m, ds in deps.items() for d in ds
                   if m in order and order.index(d) > order.index(m))
    assert not below, "modules that include one listed below them in DESIGN.md: %s" % below
