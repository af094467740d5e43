"""A real DNS server for the tests: dnsmasq (Debian dnsmasq-base) on a loopback
port, answering only from a hosts file the test rewrites.

    dns = Dnsmasq(tmp_path)              # started; dns.nameserver = "127.0.0.1:PORT"
    dns.set_hosts({"chat.dns.test": ["127.0.0.2", "127.0.0.3"]})   # + SIGHUP
    dns.query_a("chat.dns.test")         # what it answers now (rcode, [addresses])
    dns.stop()

Names under dns.test are local (--local): a name missing from the file is
NXDOMAIN, not a forward to some upstream. Records have a TTL of 1 s
(--local-ttl). Dnsmasq(tmp_path, domains=["cluster.local"]) makes other
domains local instead (a cluster's names, with a pod's search path asking
for several that do not exist).
"""
import os
import signal
import socket
import struct
import subprocess
import time

from . import procs
from .interop import find_tool

DOMAIN = "dns.test"


def dnsmasq_bin():
    """Path of dnsmasq, or None (the caller skips)."""
    try:
        return find_tool("dnsmasq", "dnsmasq-base")
    except BaseException:  # find_tool skips the test when missing
        return None


def _free_udp_tcp_port():
    """A port free for both UDP and TCP on 127.0.0.1 a moment ago."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise AssertionError("no free UDP+TCP port")


def query(port, name, qtype=1, timeout=2.0):
    """One UDP query: (rcode, [address text]) for A (1) or AAAA (28)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        s.sendto(struct.pack(">HHHHHH", 0x5959, 0x0100, 1, 0, 0, 0) + qname +
                 struct.pack(">HH", qtype, 1), ("127.0.0.1", port))
        data, _ = s.recvfrom(65535)
    finally:
        s.close()
    rcode = struct.unpack(">H", data[2:4])[0] & 15
    ancount = struct.unpack(">H", data[6:8])[0]
    pos = 12 + len(qname) + 4
    out = []
    for _ in range(ancount):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        rdata = data[pos + 10:pos + 10 + rdlen]
        if rtype == 1:
            out.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            out.append(socket.inet_ntop(socket.AF_INET6, rdata))
        pos += 10 + rdlen
    return rcode, out


class Dnsmasq:
    def __init__(self, workdir, hosts=None, domains=(DOMAIN,)):
        self.domains = list(domains)
        self.bin = dnsmasq_bin()
        self.hosts_path = os.path.join(str(workdir), "dns-hosts")
        self.log_path = os.path.join(str(workdir), "dnsmasq.log")
        self._write(hosts or {})
        self.proc = None
        self.start()

    def start(self):
        last = ""
        for _ in range(3):
            self.port = _free_udp_tcp_port()
            self.nameserver = "127.0.0.1:%d" % self.port
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [self.bin, "--no-daemon", "--conf-file=/dev/null", "--user=root",
                 "--port=%d" % self.port, "--listen-address=127.0.0.1", "--bind-interfaces",
                 "--no-resolv", "--no-hosts", "--addn-hosts=%s" % self.hosts_path,
                 "--local-ttl=1", "--pid-file=", "--log-facility=-"] +
                ["--local=/%s/" % d for d in self.domains],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
            end = time.monotonic() + 5
            while time.monotonic() < end and self.proc.poll() is None:
                try:
                    query(self.port, "ready." + self.domains[0], timeout=0.2)
                    return
                except OSError:
                    time.sleep(0.02)  # poll interval of a bounded condition wait
            self.stop()
            last = self.log()
        raise AssertionError("dnsmasq did not start:\n%s" % last)

    def _write(self, hosts):
        tmp = self.hosts_path + ".tmp"
        with open(tmp, "w") as f:
            for name, addrs in hosts.items():
                for a in addrs:
                    f.write("%s %s\n" % (a, name))
        os.replace(tmp, self.hosts_path)

    def set_hosts(self, hosts, name=None):
        """Rewrites the hosts file and makes dnsmasq read it (SIGHUP); returns
        once dnsmasq answers `name` (default: the first name, or nothing) with
        the new A records."""
        self._write(hosts)
        self.proc.send_signal(signal.SIGHUP)
        name = name or next(iter(hosts), None)
        want = sorted(a for a in hosts.get(name, []) if ":" not in a) if name else None
        end = time.monotonic() + 5
        while name:
            _rcode, got = query(self.port, name)
            # A large answer comes truncated over UDP: its first records do.
            if sorted(got) == want or (len(want) > 20 and got and set(got) <= set(want)):
                return
            if time.monotonic() > end:
                raise AssertionError("dnsmasq still answers %r for %s, want %r" % (got, name, want))
            time.sleep(0.02)  # poll interval of a bounded condition wait

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-5000:]
        except OSError:
            return ""

    def stop(self):
        procs.stop(self.proc)
        if self.proc:
            self._log.close()
