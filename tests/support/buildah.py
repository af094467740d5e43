"""Debian's buildah for the tests that need a real minimal Debian root: whether
it can run here (else the caller skips), and a thin runner."""
import os
import shutil
import subprocess

STORAGE = ["--storage-driver", os.environ.get("SY_BUILDAH_STORAGE", "vfs")]
# What docker/build-with-buildah.sh makes with `debootstrap --variant=minbase bookworm`.
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"


def tool(name):
    return shutil.which(name) or next(
        (p for p in ("/usr/sbin/" + name, "/sbin/" + name) if os.access(p, os.X_OK)), None)


def why_buildah_cannot_run(extra_tools=()):
    """None when buildah can build and run images here, else why not."""
    if os.geteuid() != 0:
        return "needs root (buildah's chroot isolation and debootstrap)"
    missing = [t for t in ("buildah", "debootstrap") + tuple(extra_tools) if not tool(t)]
    if missing:
        return ("%s not found (scripts/setup.sh --tests installs them: buildah, debootstrap, "
                "iproute2, curl, util-linux)" % ", ".join(missing))
    try:
        r = subprocess.run([tool("buildah")] + STORAGE + ["info"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`buildah info` did not answer within 60 s"
    if r.returncode != 0:
        return "`buildah info` fails here: %s" % r.stderr.decode(errors="replace")[-500:]
    return None


def buildah(*args, timeout=120, check=True):
    r = subprocess.run([tool("buildah")] + STORAGE + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("buildah %s failed (rc %d):\n%s" % (
            " ".join(map(str, args)), r.returncode, r.stderr.decode(errors="replace")[-3000:]))
    return r


def descendants(pid):
    """pids below pid, deepest last."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        rp = st.rindex(")")
        children.setdefault(int(st[rp + 2:].split()[1]), []).append((int(d), st[st.index("(") + 1:rp]))
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child[0])
    return out
