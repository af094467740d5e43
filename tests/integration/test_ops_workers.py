"""workers: 2 — one SO_REUSEPORT socket per worker, every connection served,
/metrics sums both workers."""
import os
import platform
import re
import threading

import pytest

from support.http import response_bytes, get
from support.ops import AdminPort, listening_sockets, wait_until
from support.tunnel import upgrader, upgrade_request  # noqa: F401


def test_two_workers_serve_everything_and_metrics_sum(proxy, backend):
    be = backend(response=response_bytes(200, body=b"w"))
    adm = AdminPort()
    px = proxy(upstreams={"web": [be.address]}, admin=adm.config, workers=2)
    # the port accepts once the first worker listens; the second may be a moment later
    wait_until(lambda: listening_sockets(px.port) == 2, 5, "one listening socket per worker")
    # The harness's start-up probe is exactly one connection; under valgrind it
    # may still sit in a worker's accept queue when the port already listens,
    # so wait for it to be accepted and closed, not merely for none open.
    m0 = adm.wait_metric(lambda m: m.get("switchyard_connections_accepted_total") == 1
                         and m.get("switchyard_connections_open") == 0, 20, "the probe to close")
    assert m0.one("switchyard_workers") == 2
    acc0 = m0.get("switchyard_connections_accepted_total")
    nconn, per = 200, 3
    errors = []
    lock = threading.Lock()

    def run(k):
        try:
            for i in range(k, nconn, 8):
                with px.connect() as c:
                    for j in range(per):
                        r = c.request(get("/w/%d/%d" % (i, j)))
                        if r.status != 200 or r.body != b"w":
                            raise AssertionError("conn %d req %d: %r" % (i, j, r.head))
        except BaseException as e:
            with lock:
                errors.append(repr(e))
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "clients still running"
    assert not errors, errors[:5]
    m = adm.wait_metric(lambda m: m.get("switchyard_connections_open") == 0, 5, "all closed")
    assert m.get("switchyard_requests_total") == nconn * per, m.text
    assert m.one("switchyard_requests_total", route="#0", class_="2xx") == nconn * per, m.text
    assert m.get("switchyard_connections_accepted_total") == acc0 + nconn, m.text
    assert m.one("switchyard_workers") == 2
    st = adm.status()
    assert st["requests"] == nconn * per and st["connections_open"] == 0, st
    assert len(be.requests) == nconn * per


def test_two_workers_tunnel_metrics_sum(proxy, upgrader):
    up = upgrader()
    adm = AdminPort()
    px = proxy(upstreams={"ws": [up.address]}, admin=adm.config, workers=2)
    clients, ends = [], []
    try:
        for i in range(20):
            c = px.connect()
            clients.append(c)
            c.send(upgrade_request("/ws/%d" % i))
        for c in clients:
            assert c.response().status == 101
        for _ in clients:
            ends.append(up.take())
        m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 20, 5, "20 tunnels open")
        assert m.one("switchyard_tunnels_open", route="#0", protocol="websocket") == 20, m.text
        assert m.one("switchyard_upstream_active_connections", upstream="ws", server=up.address) == 20
        assert adm.status()["tunnels_open"] == 20
    finally:
        for c in clients:
            c.close()
        for e in ends:
            e.close()
    m = adm.wait_metric(lambda m: m.get("switchyard_tunnels_open") == 0, 5, "tunnels closed")
    assert m.one("switchyard_tunnels_total", route="#0", protocol="websocket") == 20, m.text


def _thread_cpus(pid):
    """{tid: (allowed CPUs, utime + stime ticks)} of the proxy's threads."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                allowed = next(l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list"))
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (allowed, int(fields[11]) + int(fields[12]))
        except (FileNotFoundError, StopIteration):
            pass  # a thread that just ended
    return out


def _kernel_at_least(major, minor):
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def test_worker_cpu_affinity_pins_workers_and_keeps_connections_on_their_cpu(proxy, backend):
    """worker_cpu_affinity: auto — worker i runs on the i-th CPU of the mask,
    and (kernel 6.2+, SO_INCOMING_CPU) a connection made from a CPU is served
    by the worker on that CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    be = backend(response=response_bytes(200, body=b"w"))
    px = proxy(upstreams={"web": [be.address]}, workers=2, worker_cpu_affinity="auto")
    wait_until(lambda: listening_sockets(px.port) == 2, 5, "one listening socket per worker")
    pinned = lambda: {t: a for t, (a, _) in _thread_cpus(px.pid).items() if a in (str(cpus[0]), str(cpus[1]))}
    wait_until(lambda: len(pinned()) == 2, 5, "two worker threads pinned")
    workers = pinned()
    assert sorted(workers.values()) == sorted([str(cpus[0]), str(cpus[1])]), _thread_cpus(px.pid)
    if not _kernel_at_least(6, 2):
        return  # older kernels spread by the reuseport hash: pinning only

    result = {}

    def client(cpu):
        # The calling thread only: the SYN is sent, and its softirq runs, on `cpu`.
        os.sched_setaffinity(0, {cpu})
        before = _thread_cpus(px.pid)
        with px.connect() as c:
            for i in range(3000):  # bounded: one keep-alive connection, enough to show in the ticks
                r = c.request(get("/w/%d" % i))
                assert r.status == 200
        after = _thread_cpus(px.pid)
        result[cpu] = {workers[t]: after[t][1] - before[t][1] for t in workers}

    for cpu in cpus[:2]:
        t = threading.Thread(target=client, args=(cpu,), daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "client still running"
        ticks = result[cpu]
        mine, other = ticks[str(cpu)], sum(v for k, v in ticks.items() if k != str(cpu))
        assert mine > 2 * other + 2, (cpu, ticks)
