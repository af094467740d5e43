"""Once the first listener of the configuration accepts, every listener does:
a worker opens them in reverse order, so a TCP check on the first one (a
start-up probe, a load balancer's health check) never lets a client through to
a listener that is not there yet."""
import socket
import subprocess
import time

import pytest

from conftest import switchyard_bin, to_yaml
from support.backend import free_port

LISTENERS = 100


def distinct_ports(n):
    ports = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def start(tmp_path, attempt):
    ports = distinct_ports(LISTENERS)
    cfg = {"listeners": [{"address": "127.0.0.1:%d" % p} for p in ports],
           "upstreams": {"web": {"servers": [{"address": "127.0.0.1:9"}]}},
           "routes": [{"match": {"path_prefix": "/"}, "upstream": "web"}]}
    conf = tmp_path / ("order%d.yaml" % attempt)
    conf.write_text(to_yaml(cfg))
    err = open(tmp_path / ("order%d.stderr" % attempt), "w+b")
    proc = subprocess.Popen([switchyard_bin(), "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=err)
    return proc, ports, err


def test_every_listener_accepts_once_the_first_does(tmp_path):
    for attempt in range(3):  # another program may take one of 100 free ports first
        proc, ports, err = start(tmp_path, attempt)
        try:
            # No pause between attempts: the check has to land as early as a
            # real one can, inside the time the worker spends opening listeners.
            deadline = time.monotonic() + 10
            first = None
            while first is None:
                try:
                    first = socket.create_connection(("127.0.0.1", ports[0]), timeout=1)
                except ConnectionRefusedError:
                    if proc.poll() is not None:
                        break
                    assert time.monotonic() < deadline, "the first listener never accepted"
            if first is None:
                err.seek(0)
                text = err.read().decode(errors="replace")
                if "in use" in text.lower():
                    continue
                pytest.fail("switchyard exited at start:\n" + text)
            refused = []
            for p in reversed(ports[1:]):  # the last opened last, were the order plain
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=1).close()
                except ConnectionRefusedError:
                    refused.append(p)
            first.close()
            assert refused == [], "%d of %d listeners refused after the first accepted" % (
                len(refused), len(ports) - 1)
            return
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(10)
            err.close()
    pytest.fail("three attempts found a port in use")
