"""The command line (--help, --version, long options, exit codes) and the
diagnostics settings (log_level, log_format) of a running proxy."""
import json
import subprocess

import pytest

from conftest import switchyard_bin
from support.backend import free_port
from support.ops import reload

LONG_OPTIONS = ["--config", "--check", "--version", "--help"]


def run(*args, timeout=10):
    p = subprocess.run([switchyard_bin()] + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def good_file(tmp_path, extra=""):
    f = tmp_path / "good.yaml"
    f.write_text("listeners:\n  - address: 127.0.0.1:%d\n%s" % (free_port(), extra))
    return f


@pytest.mark.parametrize("opt", ["-h", "--help"])
def test_help(opt):
    rc, out, err = run(opt)
    assert rc == 0, (rc, out, err)
    assert err == "", err
    assert out.startswith("usage: switchyard"), out
    for o in LONG_OPTIONS + ["-c", "-t", "-v", "-h"]:
        assert o in out, "%s missing from the help:\n%s" % (o, out)
    assert "exit codes" in out, out


@pytest.mark.parametrize("opt", ["-v", "--version"])
def test_version(opt):
    rc, out, err = run(opt)
    assert rc == 0, (rc, out, err)
    lines = out.splitlines()
    assert lines[0].startswith("switchyard ") and lines[0].split()[1][0].isdigit(), out
    assert "libuv" in out and "OpenSSL" in out, out


@pytest.mark.parametrize("form", [["-t", "-c"], ["--check", "--config"], ["--check", "--config="]])
def test_check_long_and_short_forms(tmp_path, form):
    good = good_file(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners: []\n")
    for path, want in ((good, 0), (bad, 1)):
        args = form[:-1] + ([form[-1] + str(path)] if form[-1].endswith("=") else [form[-1], str(path)])
        rc, out, err = run(*args)
        assert rc == want, "%r -> rc %d, stderr %s" % (args, rc, err)
        if want == 0:
            assert "configuration ok" in err, err
        else:
            assert err.startswith(str(path) + ":1:12: "), err


@pytest.mark.parametrize("args", [["--bogus"], ["-x"], ["-c"], ["--config"], ["stray"],
                                  ["-t", "-c", "a.yaml", "extra"], ["--version=1"]])
def test_usage_errors_exit_2(args):
    rc, out, err = run(*args)
    assert rc == 2, (args, rc, out, err)
    assert out == "", out
    assert "usage: switchyard" in err, err


def test_missing_file_exits_1(tmp_path):
    rc, out, err = run("--config", str(tmp_path / "absent.yaml"))
    assert rc == 1, (rc, err)
    assert "absent.yaml" in err, err


def stderr_lines(px):
    return [ln for ln in px.stderr().splitlines() if ln.strip()]


def test_log_level_and_json_format_follow_reloads(proxy, tmp_path):
    """log_level: error hides the start-up info line; log_format: json makes
    every diagnostic a JSON object; a reload applies new settings before its
    own verdict is logged."""
    px = proxy(log_level="error", log_format="json")
    cfg = dict(px.config)
    # a refused reload is an error: logged, as JSON
    verdict = reload(px, text="listeners: []\n")
    assert "reload refused" in verdict, verdict
    lines = stderr_lines(px)
    assert lines, "nothing on stderr"
    entries = []
    for ln in lines:
        try:
            entries.append(json.loads(ln))
        except ValueError:
            raise AssertionError("diagnostic is not JSON: %r" % ln) from None
    assert [e["level"] for e in entries] == ["error"], entries  # no info line at start
    assert entries[0]["msg"].startswith("reload refused, running configuration kept: "), entries
    assert entries[0]["time"].endswith("Z"), entries
    # back to text at debug level: the reload's own info verdict shows
    verdict = reload(px, dict(cfg, log_level="debug", log_format="text"))
    assert verdict.startswith("reloaded"), verdict
    assert stderr_lines(px)[-1].startswith("switchyard: info: reloaded "), stderr_lines(px)
