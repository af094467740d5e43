"""The README's first command, run as a new user would on a minimal Debian 12.

The root is a fresh working container of the debootstrap --variant=minbase
bookworm image that docker/build-with-buildah.sh makes for the container test
(made once with `--base-only`, then reused). It has no make; a copy of the
sources (what `git ls-files` lists, as a clone has) goes to /root/switchyard.

1. `bash scripts/setup.sh` with the host's network (apt-get reaches Debian's
   mirror): make must be there afterwards.
2. The README's first command, exactly as the README writes it, in a network
   namespace of its own (only a loopback): the demo's fixed ports 8080 and 9000
   cannot collide with anything on this machine, and nothing in it may need the
   network any more. The test reaches the demo from inside that namespace
   (nsenter + curl): POST /echo through the proxy must come back from the demo
   backend with the proxy's Via, and GET / must serve the demo page. Then the
   proxy gets SIGINT, as from Ctrl-C: it exits, the demo script stops the
   backend, and the command exits 0.

Downloaded packages are kept between runs in SY_BUILD_DIR/readme-demo-cache
(apt's archives and lists are mounted there; the slim image's rule that deletes
them is removed) and dpkg skips its fsyncs in the throw-away root. A warm run
still installs every package (the system is fresh every time) and builds the
two programs: 2-4 minutes on a busy 2-core machine. A cold one downloads
~200 MB too, and makes the base image first (debootstrap) if the container
test has not.

Skipped when SY_SKIP_CONTAINER=1 or when buildah cannot run here (not root,
buildah, debootstrap, unshare, nsenter, ip or curl missing).
"""
import os
import re
import signal
import subprocess
import tarfile
import time
import uuid

import pytest

from support.buildah import (BASE_IMAGE, STORAGE, buildah, descendants, tool,
                             why_buildah_cannot_run)
from support.interop import BUILD_DIR, SOURCE_DIR, Children, wait_until

if os.environ.get("SY_SKIP_CONTAINER") == "1":
    pytest.skip("README demo test excluded by SY_SKIP_CONTAINER=1", allow_module_level=True)
_reason = why_buildah_cannot_run(extra_tools=("unshare", "nsenter", "ip", "curl"))
if _reason:
    pytest.skip("README demo test skipped: " + _reason, allow_module_level=True)

BUILD_SCRIPT = SOURCE_DIR / "docker" / "build-with-buildah.sh"
CACHE = BUILD_DIR / "readme-demo-cache"
SRC_IN_ROOT = "/root/switchyard"
# ctest gives a file 600 s; the steps share what is left of it.
BUDGET = 570
T0 = time.monotonic()


def left(cap):
    remaining = BUDGET - (time.monotonic() - T0)
    if remaining < 10:
        pytest.fail("out of time (%.0f s budget)" % BUDGET)
    return min(cap, remaining)


def readme_first_command():
    """The first command of README.md's "Two commands" section, without its comment."""
    text = (SOURCE_DIR / "README.md").read_text()
    section = text.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    line = next(ln for ln in block.splitlines() if ln.strip())
    return line.split(" #", 1)[0].strip()


def source_tar(path):
    """The sources as a fresh clone has them (tracked and not-ignored files)."""
    r = subprocess.run(["git", "-C", str(SOURCE_DIR), "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], capture_output=True, timeout=60)
    assert r.returncode == 0, "git ls-files failed: %s" % r.stderr.decode(errors="replace")
    names = [n for n in r.stdout.decode().split("\0") if n]
    assert "README.md" in names and "scripts/setup.sh" in names, names[:20]
    with tarfile.open(path, "w") as tar:
        for n in names:
            if os.path.lexists(SOURCE_DIR / n):  # deleted but not yet committed: skip
                tar.add(str(SOURCE_DIR / n), arcname=n, recursive=False)
    return len(names)


def in_netns(pid, argv, timeout=10):
    return subprocess.run([tool("nsenter"), "--net=/proc/%d/ns/net" % pid, "--"] + argv,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


@pytest.fixture
def fresh_root(tmp_path):
    """A new working container of the minimal Debian image, sources inside."""
    r = subprocess.run(["bash", str(BUILD_SCRIPT), "--base-only"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=left(400), start_new_session=True)
    assert r.returncode == 0, "base image: %s" % r.stderr.decode(errors="replace")[-3000:]
    name = "sy-readme-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
    buildah("from", "--pull=never", "--name", name, BASE_IMAGE)
    try:
        tar = tmp_path / "src.tar"
        source_tar(tar)
        buildah("add", name, tar, SRC_IN_ROOT)
        # Downloads survive the root (see the module doc); everything else is fresh.
        for d in ("archives/partial", "lists/partial"):
            (CACHE / d).mkdir(parents=True, exist_ok=True)
        # dpkg's fsyncs are most of the install time on vfs, and the root is
        # thrown away after the test anyway.
        buildah("run", "--isolation", "chroot", name, "--", "sh", "-c",
                "rm -f /etc/apt/apt.conf.d/docker-clean && "
                "echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/sy-test-unsafe-io")
        yield name
    finally:
        buildah("rm", name, check=False)


def run_argv(ctr, network_host=True):
    argv = [tool("buildah")] + STORAGE + ["run", "--isolation", "chroot"]
    if network_host:
        argv += ["--network", "host"]
    return argv + ["-v", "%s:/var/cache/apt/archives" % (CACHE / "archives"),
                   "-v", "%s:/var/lib/apt/lists" % (CACHE / "lists"), ctr, "--"]


def test_readme_first_command_in_a_fresh_debian_root(fresh_root):
    command = readme_first_command()
    assert "make demo" in command, "the README's first command changed: %r" % command

    # A minimal root: no make, as a new user finds it.
    r = buildah("run", "--isolation", "chroot", fresh_root, "--", "bash", "-c",
                "command -v make || echo absent")
    assert r.stdout.strip() == b"absent", r.stdout

    # 1. The setup script, with the network.
    t = time.monotonic()
    r = subprocess.run(run_argv(fresh_root) + ["bash", "-c", "cd %s && bash scripts/setup.sh"
                                               % SRC_IN_ROOT],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=left(360),
                       start_new_session=True)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0, "scripts/setup.sh failed (rc %d):\n%s" % (r.returncode, out[-5000:])
    assert "setup: all packages present" in out, out[-3000:]
    print("\n--- setup.sh in the fresh root: %.0f s" % (time.monotonic() - t))
    r = buildah("run", "--isolation", "chroot", fresh_root, "--", "bash", "-c", "command -v make")
    assert r.stdout.strip().endswith(b"/make"), r

    # 2. The README's command as written, in a network namespace of its own.
    children = Children()
    t = time.monotonic()
    inner = " ".join(run_argv(fresh_root)) + " bash -c 'cd %s && %s'" % (SRC_IN_ROOT, command)
    demo = children.start([tool("unshare"), "--net", "--", "sh", "-c",
                           "%s link set lo up && exec %s" % (tool("ip"), inner)], "readme-demo")
    below = []
    try:
        def echo_answers():
            if demo.proc.poll() is not None:
                return "exited"
            r = in_netns(demo.pid, [tool("curl"), "-s", "-m", "5", "http://127.0.0.1:8080/echo",
                                    "-d", "hello"])
            return r.stdout if b'"body_length": 5' in r.stdout else None

        body = wait_until(echo_answers, left(300), "the demo to answer on 127.0.0.1:8080",
                          interval=1.0)
        assert body != "exited", "the README command exited (rc %s)\nstdout:\n%s\nstderr:\n%s" % (
            demo.proc.returncode, demo.stdout()[-4000:], demo.stderr()[-4000:])
        print("--- README command answering after %.0f s" % (time.monotonic() - t))
        assert b'"method": "POST"' in body and b'"path": "/echo"' in body, body
        assert b"Via: 1.1 switchyard" in body, body  # through the proxy, not the backend alone
        page = in_netns(demo.pid, [tool("curl"), "-s", "-m", "5", "-o", "/dev/null", "-w",
                                   "%{http_code} %{content_type}", "http://127.0.0.1:8080/"])
        assert page.stdout.startswith(b"200 text/html"), page
        # It ran in a network namespace of its own, not on this machine's ports.
        assert os.readlink("/proc/%d/ns/net" % demo.pid) != os.readlink("/proc/self/ns/net")

        # Stop as Ctrl-C would: the proxy gets SIGINT, the script stops the backend.
        below = descendants(demo.pid)
        proxies = [p for p, comm in below if comm == "switchyard"]
        assert len(proxies) == 1, below
        os.kill(proxies[0], signal.SIGINT)
        rc = demo.wait(30)
        assert rc == 0, "the README command exited %s after SIGINT to the proxy\n%s" % (
            rc, demo.stderr()[-3000:])
        err = demo.stderr()
        assert "signal 2: draining" in err and "switchyard: info: stopped" in err, err[-2000:]
        assert "sy-demo: SIGTERM" in err, err[-2000:]
        wait_until(lambda: not [p for p, comm in below if alive_as(p, comm)], 10,
                   "every process of the demo to end", interval=0.1)
    finally:
        if demo.proc.poll() is None:
            below = descendants(demo.pid)
        children.stop_all()
        # buildah answers SIGTERM by SIGKILLing its runtime; what ran below it
        # (make, the compiler, the demo) is ended here, by pid.
        for p, comm in reversed(below):
            if alive_as(p, comm):
                os.kill(p, signal.SIGKILL)


def alive_as(pid, comm):
    """pid is still the live process named comm (not a zombie, not reused)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    rp = st.rindex(")")
    return st[st.index("(") + 1:rp] == comm and st[rp + 2:].split()[0] not in ("Z", "X")
