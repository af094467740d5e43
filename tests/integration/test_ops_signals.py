"""Signals and `workers: auto` as containers meet them: SIGUSR2 reloads like
SIGHUP (HAProxy's meaning) and never ends the process, also not during a drain;
`workers: auto` follows the CPU affinity mask."""
import copy
import os
import re
import signal

import pytest

from support.http import response_bytes, get
from support.ops import AdminPort, wait_until, wait_exit, write_config
from support.tunnel import upgrader, upgrade_request, open_tunnel  # noqa: F401


def stderr_has(px, pattern, n=1):
    return len(re.findall(pattern, px.stderr())) >= n


def test_sigusr2_reloads_and_does_not_kill(proxy, backend):
    old = backend(response=response_bytes(200, body=b"old"), name="old")
    new = backend(response=response_bytes(200, body=b"new"), name="new")
    adm = AdminPort()
    px = proxy(upstreams={"web": [old.address]}, admin=adm.config)
    assert px.request(get("/x")).body == b"old"

    # The same file: a reload, generation 1, nothing else changes.
    px.proc.send_signal(signal.SIGUSR2)
    wait_until(lambda: stderr_has(px, r"reloaded .* \(generation 1\)") or px.proc.poll() is not None,
               10, "the SIGUSR2 reload")
    assert px.proc.poll() is None, "SIGUSR2 ended the process (rc %s)" % px.proc.returncode
    assert "SIGUSR2: reloading the configuration" in px.stderr(), px.stderr()
    assert adm.metrics().one("switchyard_config_generation") == 1
    assert px.request(get("/x")).body == b"old"

    # A changed file is picked up: it really is a reload.
    cfg = copy.deepcopy(px.config)
    cfg["upstreams"]["web"] = {"servers": [{"address": new.address}]}
    write_config(px, cfg)
    px.proc.send_signal(signal.SIGUSR2)
    wait_until(lambda: stderr_has(px, r"reloaded .* \(generation 2\)") or px.proc.poll() is not None,
               10, "the second SIGUSR2 reload")
    assert px.proc.poll() is None
    assert px.request(get("/y")).body == b"new"
    m = adm.metrics()
    assert m.one("switchyard_reloads_total", result="ok") == 2, m.text
    assert m.one("switchyard_config_generation") == 2, m.text


def test_sigusr2_during_drain_is_logged_and_ignored(proxy, upgrader):
    up = upgrader()
    adm = AdminPort()
    px = proxy(upstreams={"ws": [up.address]}, admin=adm.config, timeouts={"drain": "30s"})
    c, cl, tbe, _ = open_tunnel(px, up, upgrade_request("/ws/held"))
    try:
        px.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: adm.get("/readyz").status == 503, 5, "the drain to start")
        px.proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: "SIGUSR2: shutting down, not reloading" in px.stderr(), 5,
                   "the SIGUSR2 log line")
        assert px.proc.poll() is None, "SIGUSR2 ended a draining process"
        assert "reloaded" not in px.stderr(), px.stderr()
        # The tunnel the drain is waiting for still carries data.
        cl.send(b"still here")
        tbe.expect(b"still here")
    finally:
        c.close()
        tbe.close()
    # Its end lets the drain finish: a clean exit, not a signal.
    assert wait_exit(px, 10) == 0, px.stderr()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity")
def test_workers_auto_follows_the_affinity_mask(proxy, backend):
    be = backend(response=response_bytes(200, body=b"ok"))
    adm = AdminPort()
    mask = os.sched_getaffinity(0)
    # The proxy inherits the mask of the thread that starts it: one CPU.
    os.sched_setaffinity(0, {min(mask)})
    try:
        px = proxy(upstreams={"web": [be.address]}, admin=adm.config, workers="auto")
    finally:
        os.sched_setaffinity(0, mask)
    assert px.request(get("/")).status == 200
    assert adm.metrics().one("switchyard_workers") == 1
    line = re.search(r"workers: auto = (\d+) \((.*)\)", px.stderr())
    assert line and line.group(1) == "1", px.stderr()
    assert line.group(2).startswith("1 CPU in the affinity mask"), line.group(0)


def test_workers_auto_without_a_mask_uses_the_cpus_it_has(proxy, backend):
    be = backend(response=response_bytes(200, body=b"ok"))
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, admin=adm.config)
    line = re.search(r"workers: auto = (\d+) \((\d+) CPUs? in the affinity mask", px.stderr())
    assert line, px.stderr()
    n, affinity = int(line.group(1)), int(line.group(2))
    assert affinity == len(os.sched_getaffinity(0))
    # A cgroup CPU limit (when the host has one) may only lower it.
    assert 1 <= n <= affinity
    assert adm.metrics().one("switchyard_workers") == n
