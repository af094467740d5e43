#!/usr/bin/env python3
"""Turns bench/run.sh's raw results into docs/BENCHMARKS.md (python3 stdlib only).

    python3 bench/report.py --results OUT/results.jsonl --meta OUT/meta.json \
        [--slab OUT/slab.txt] [--notes bench/PROFILE.md] --out docs/BENCHMARKS.md

Several runs can go into one report: repeat --results and --meta (same order), e.g.
a full run and a TLS-only run. Machine facts come from the first meta; when a
scenario/target pair appears in more than one results file, the last file's rows
are used for it (a rerun replaces).

Every number in a table is the median over the rounds whose run produced a result
(ok); the spread column gives the lowest and highest of those rounds. Ratios are
of medians. Runs that failed are listed under "Problems seen in this run".
"""
import argparse
import json
import os
import statistics
import sys

TARGETS = ["direct", "switchyard", "nginx", "nginx-buf64k", "haproxy", "haproxy-splice",
           "switchyard-tls", "nginx-tls", "haproxy-tls", "switchyard-2w", "switchyard-pin-2w", "nginx-2w",
           "haproxy-2w"]
# TLS target -> the plaintext target it is compared with
TLS_PAIRS = [("switchyard-tls", "switchyard"), ("nginx-tls", "nginx"), ("haproxy-tls", "haproxy")]
ANCHORS = ["nginx", "nginx-buf64k", "haproxy", "haproxy-splice"]
# The two-worker rows: reported in their own section, never in the one-worker tables.
W2 = ["switchyard-2w", "switchyard-pin-2w", "nginx-2w", "haproxy-2w"]
W2_ANCHORS = ["nginx-2w", "haproxy-2w"]
W2_TARGET = 1.1  # switchyard-2w ÷ the best two-worker anchor, per scenario
TARGET_DESC = {
    "direct": "client → backend, no proxy",
    "switchyard": "workers: 1",
    "nginx": "1 worker, documented WebSocket config",
    "nginx-buf64k": "same + proxy_buffer_size 64k",
    "haproxy": "nbthread 1, mode http",
    "haproxy-splice": "same + option splice-request/-response, maxpipes",
    "switchyard-tls": "workers: 1, listener with `tls: {certificates: [...]}` (OpenSSL through "
                      "a BIO of its own), plaintext to the backend (tls-* scenarios only)",
    "nginx-tls": "1 worker, `listen … ssl`, same WebSocket proxy config (tls-* scenarios only)",
    "haproxy-tls": "nbthread 1, mode http, `bind … ssl crt` (tls-* scenarios only)",
    "switchyard-2w": "workers: 2 (two event-loop threads in one process, one SO_REUSEPORT "
                     "listening socket each), see *Two workers*",
    "switchyard-pin-2w": "switchyard-2w + `worker_cpu_affinity: auto` (worker i pinned to "
                         "CPU i, its listeners' SO_INCOMING_CPU set to it), see *Two workers*",
    "nginx-2w": "worker_processes 2, otherwise *nginx*'s config (documented WebSocket "
                "setup, access_log off), see *Two workers*",
    "haproxy-2w": "nbthread 2, otherwise *haproxy*'s config (mode http, timeout tunnel, "
                  "no logging), see *Two workers*",
}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append({"ok": False, "first_error": "unparsable line: " + line[:120]})
    return rows


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=None):
    if v is None:
        return "—"
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 1000 else 1 if a >= 100 else 2 if a >= 1 else 3
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


class Table:
    def __init__(self, rows, scenario, targets):
        self.rows = [r for r in rows
                     if r.get("scenario") == scenario and r.get("target") in targets]
        self.targets = [t for t in targets if any(r.get("target") == t for r in self.rows)]

    def ok(self, t):
        return [r for r in self.rows if r.get("target") == t and r.get("ok")]

    def runs(self, t):
        return [r for r in self.rows if r.get("target") == t]

    def m(self, t, key, scale=1.0):
        v = med([r.get(key) for r in self.ok(t)])
        return None if v is None else v * scale

    def spread(self, t, key, scale=1.0, digits=None):
        vals = [r.get(key) for r in self.ok(t) if r.get(key) is not None]
        if len(vals) < 2:
            return ""
        return f"{fmt(min(vals) * scale, digits)}–{fmt(max(vals) * scale, digits)}"


def section_table(out, tb, cols, primary, higher_better=True, ref="direct", me="switchyard"):
    """cols: list of (header, key, scale, digits). primary: key for the ratio columns.
    ref: the reference target (× ref column; None: no such column); me: the proxy
    compared with the others."""
    hdr = ["target", "runs ok"]
    for h, _, _, _ in cols:
        hdr.append(h)
    if ref:
        hdr.append(f"× {ref}")
    hdr.append(f"{me} ÷ this")
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "---|" * len(hdr))
    d = tb.m(ref, primary[0], primary[1]) if ref else None
    s = tb.m(me, primary[0], primary[1])
    for t in tb.targets:
        runs = tb.runs(t)
        okn = len(tb.ok(t))
        cells = [f"**{t}**" if t == me else t, f"{okn}/{len(runs)}"]
        for h, key, scale, digits in cols:
            v = tb.m(t, key, scale)
            sp = tb.spread(t, key, scale, digits) if key == primary[0] else ""
            cells.append(fmt(v, digits) + (f" ({sp})" if sp else ""))
        v = tb.m(t, primary[0], primary[1])
        if ref:
            cells.append("1.00×" if t == ref and v else ratio(v, d) if t != ref else "—")
        cells.append("—" if t == me else ratio(s, v))
        out.append("| " + " | ".join(cells) + " |")
    out.append("")


def idle_table(out, idle, me):
    """RSS per idle tunnel, after one ping each, kernel slab: one row per target."""
    w = out.append
    hdr = ["target", "runs ok", "RSS bytes/tunnel (idle)", "RSS bytes/tunnel after 1 ping each",
           "open time s", "kernel slab Δ per tunnel (all 4 sockets)", "pings answered",
           f"{me} ÷ this"]
    w("| " + " | ".join(hdr) + " |")
    w("|" + "---|" * len(hdr))
    sy = idle.m(me, "rss_bytes_per_tunnel")
    for t in idle.targets:
        okr = idle.ok(t)
        after = med([(r["rss_kb_after_ping"] - r["rss_kb_before"]) * 1024 / r["tunnels"]
                     for r in okr if r.get("tunnels")])
        slab = med([r["slab_kb_delta"] * 1024 / r["tunnels"] for r in okr if r.get("tunnels")])
        pings = med([r.get("pings_ok") for r in okr])
        v = idle.m(t, "rss_bytes_per_tunnel")
        sp = idle.spread(t, "rss_bytes_per_tunnel", 1, 0)
        w("| " + " | ".join([
            f"**{t}**" if t == me else t, f"{len(okr)}/{len(idle.runs(t))}",
            fmt(v, 0) + (f" ({sp})" if sp else ""), fmt(after, 0),
            fmt(idle.m(t, "open_s"), 2), fmt(slab, 0), fmt(pings, 0),
            "—" if t == me else ratio(sy, v)]) + " |")
    w("")


def tls_section(out, rows, targets, meta):
    w = out.append
    scen = [("sink", "client → backend (sink)"), ("source", "backend → client (source)"),
            ("echo", "both ways (echo)")]
    if not any(Table(rows, "tls-" + s, targets).rows or Table(rows, f"tls-{s}-paced", targets).rows
               for s, _ in scen + [("handshake", ""), ("idle", "")]):
        return
    tl = [r for r in rows if str(r.get("scenario", "")).startswith("tls-") and r.get("ok")]
    vers = sorted({" ".join(x for x in (r.get("tls_version"), r.get("tls_cipher"),
                                        r.get("tls_group")) if x)
                   for r in tl if r.get("tls_version")})
    w("## Tunnels over TLS")
    w("")
    w("The same tunnels with TLS between the client and the proxy, plaintext from the proxy "
      "to the backend (a `wss://` front for a `ws://` backend): `sy_load --tls` (OpenSSL, "
      "non-blocking, SNI, the chain and name verified) → proxy terminating TLS → "
      "`sy_bench_backend`. Same pinning (proxy on CPU 1; client and backend on CPU 0), same "
      "8 tunnels and 64 KiB writes, same rounds. One self-signed ECDSA P-256 certificate "
      "made with `openssl req` at run time serves all three proxies, which use the same "
      "system OpenSSL. Negotiated: " + (", ".join(f"`{v}`" for v in vers) or "—") + ". "
      "There is no *direct* row: the bench backend speaks no TLS. Note that the client on "
      "CPU 0 now also encrypts/decrypts every byte, so CPU 0 saturates sooner than in the "
      "plaintext runs; the proxy's CPU use column says which side was the bottleneck.")
    w("")
    tloads = [r.get("load1") for r in rows if str(r.get("scenario", "")).startswith("tls-")
              and isinstance(r.get("load1"), (int, float))]
    if tloads:
        w(f"1-minute load average at the end of the TLS runs: median "
          f"{statistics.median(tloads):.2f}, range {min(tloads):.2f}–{max(tloads):.2f} on "
          f"{meta.get('nproc')} CPUs (the runs themselves keep up to two busy); rates are "
          "noisy and the CPU-s per GB / µs per handshake columns (work per unit, measured on "
          "the proxy process alone) are the steadier comparison.")
        w("")
    w("### TLS next to plaintext (same proxy, same scenario)")
    w("")
    w("Plaintext figures are the tables above (switchyard splices plaintext tunnels; nginx "
      "copies through user space; `haproxy` is the non-splice variant — a TLS tunnel cannot "
      "be spliced).")
    w("")
    hdr = ["direction", "proxy", "plaintext GB/s", "TLS GB/s", "TLS ÷ plaintext",
           "plaintext proxy CPU-s/GB", "TLS proxy CPU-s/GB", "TLS CPU/GB ÷ plaintext",
           "TLS proxy CPU use"]
    w("| " + " | ".join(hdr) + " |")
    w("|" + "---|" * len(hdr))
    cost = {}
    for s, title in scen:
        pt, tt = Table(rows, s, targets), Table(rows, "tls-" + s, targets)
        if not tt.rows:
            continue
        for tls_t, plain_t in TLS_PAIRS:
            if tls_t not in tt.targets:
                continue
            g0, g1 = pt.m(plain_t, "gbytes_per_s"), tt.m(tls_t, "gbytes_per_s")
            c0, c1 = pt.m(plain_t, "cpu_s_per_gb"), tt.m(tls_t, "cpu_s_per_gb")
            u1 = tt.m(tls_t, "cpu_util", 100)
            cost[(s, plain_t)] = (c0, c1, g0, g1)
            name = f"**{plain_t}**" if plain_t == "switchyard" else plain_t
            w("| " + " | ".join([title, name, fmt(g0, 3), fmt(g1, 3), ratio(g1, g0), fmt(c0, 3),
                                 fmt(c1, 3), ratio(c1, c0), fmt(u1, 0) + "%" if u1 is not None
                                 else "—"]) + " |")
    w("")
    notes = []
    for s, _ in scen:
        c = cost.get((s, "switchyard"))
        if not c or c[0] is None or c[1] is None:
            continue
        c0, c1, g0, g1 = c
        notes.append(f"{s}: {fmt(c0, 3)} CPU-s/GB spliced vs {fmt(c1, 3)} over TLS "
                     f"({ratio(c1, c0)}; +{fmt(c1 - c0, 3)} CPU-s per GB)")
    if notes:
        w("**CPU cost per GB, TLS vs splice (switchyard):** " + "; ".join(notes) + ". A spliced "
          "tunnel never copies the payload into user space; a TLS tunnel reads every byte into "
          "user space, runs it through the cipher and writes it back "
          "to the kernel (where the time goes: see the TLS profile notes at the end). "
          "Put the other way, one proxy core at 100% would carry about "
          + ", ".join(f"{fmt(1 / cost[(s, 'switchyard')][1], 2)} GB/s ({s})" for s, _ in scen
                      if cost.get((s, "switchyard")) and cost[(s, "switchyard")][1])
          + " of TLS tunnel traffic (echo: GB that came back, the proxy moves twice that).")
        w("")
        others = []
        for s, _ in scen:
            sy = cost.get((s, "switchyard"))
            if not sy or sy[1] is None:
                continue
            for p in ("nginx", "haproxy"):
                o = cost.get((s, p))
                if o and o[1]:
                    others.append(f"{s} {p} {ratio(sy[1], o[1])}")
        if others:
            w("switchyard-tls CPU-s per GB ÷ the other proxy's over TLS (below 1: switchyard "
              "spends less CPU per byte): " + ", ".join(others) + ".")
            w("")
    for s, title in scen:
        tb = Table(rows, "tls-" + s, targets)
        if not tb.rows:
            continue
        w(f"### TLS tunnel throughput, {title}")
        w("")
        section_table(out, tb, [("GB/s", "gbytes_per_s", 1, 3), ("Gbit/s", "gbit_per_s", 1, 1),
                                ("proxy CPU-s per GB", "cpu_s_per_gb", 1, 3),
                                ("proxy CPU use", "cpu_util", 100, 0)], ("gbytes_per_s", 1),
                      ref=None, me="switchyard-tls")
    paced_section(out, rows, targets, meta, scen)
    tb = Table(rows, "tls-handshake", targets)
    if tb.rows:
        w("### TLS + upgrade handshakes (50 concurrent)")
        w("")
        w("Each connection does a full TLS handshake (no session resumption; ECDSA P-256 "
          "certificate), sends the upgrade request, reads the 101 and closes. Latency is connect → "
          "complete 101 head.")
        w("")
        section_table(out, tb, [("handshakes/s", "ops_per_s", 1, 0), ("p50 µs", "p50_us", 1, 0),
                                ("p99 µs", "p99_us", 1, 0),
                                ("proxy CPU µs/handshake", "cpu_us_per_op", 1, 1)],
                      ("ops_per_s", 1), ref=None, me="switchyard-tls")
    tb = Table(rows, "tls-idle", targets)
    if tb.rows:
        n = meta.get("idle_tunnels")
        w(f"### Idle TLS tunnels: memory per tunnel ({n:,} tunnels)")
        w("")
        w("As the plaintext idle table below, over TLS: each tunnel is a TLS handshake and "
          "an upgrade, then it idles; one 32-byte ping each, then RSS again. A TLS tunnel "
          "cannot be spliced: each proxy keeps its TLS state per connection, and switchyard "
          "the connection itself (a relay), where a plain tunnel is a spliced tunnel's slot.")
        w("")
        idle_table(out, tb, "switchyard-tls")


def paced_section(out, rows, targets, meta, scen):
    """The tls-*-paced rows: every proxy at the same offered rate, below saturation."""
    w = out.append
    tabs = [(s, title, Table(rows, f"tls-{s}-paced", targets)) for s, title in scen]
    if not any(tb.rows for _, _, tb in tabs):
        return
    pace = meta.get("pace_mb") or {}
    w("### TLS tunnels at a fixed offered rate")
    w("")
    w("The saturated tables above compare proxies each pushed as far as the client lets it, "
      "which is not the same amount of work: a proxy below 100% of its core batches "
      "differently from one at 100%. Here `sy_load --rate` offers the same rate to every "
      "proxy (" + ", ".join(f"{s} {pace.get(s, '?')} MB/s" for s, _ in scen) + ", about half "
      "of the slowest anchor's saturated TLS rate; echo counts the bytes that came back), "
      "so CPU per GB is the cost of equal work. Each tunnel is paced by a token bucket of "
      "its own (an equal share of the rate), so the proxy sees small bursts on every "
      "tunnel; CPU per GB at a fixed rate depends on that pattern (how many bytes a wakeup "
      "finds), so compare rows of one table, not these figures with the saturated ones. "
      "A rate reached below 97% of the offered one is marked: that proxy was saturated "
      "and its row is not comparable.")
    w("")
    for s, title, tb in tabs:
        if not tb.rows:
            continue
        offered = pace.get(s)
        w(f"#### {title} at {offered if offered is not None else '?'} MB/s")
        w("")
        section_table(out, tb, [("GB/s reached", "gbytes_per_s", 1, 3),
                                ("proxy CPU-s per GB", "cpu_s_per_gb", 1, 3),
                                ("proxy CPU use", "cpu_util", 100, 0)], ("cpu_s_per_gb", 1),
                      ref=None, me="switchyard-tls")
        if offered:
            short = [t for t in tb.targets
                     if (tb.m(t, "gbytes_per_s") or 0) < 0.97 * offered / 1000]
            if short:
                w("Offered rate not reached by: " + ", ".join(short) + ".")
                w("")


def two_workers_section(out, rows, targets, meta):
    """The *-2w rows: throughput, switchyard ÷ the best anchor against the target,
    CPU per unit of work; then one detailed table per scenario."""
    w = out.append
    w2 = [t for t in targets if t in W2]
    # scenario, what the throughput is, its column, key, digits, CPU column, key, digits
    scen = [
        ("http", "keep-alive requests/s", "requests/s", "ops_per_s", 0,
         "proxy CPU µs/request", "cpu_us_per_op", 1),
        ("handshake", "upgrade handshakes/s", "handshakes/s", "ops_per_s", 0,
         "proxy CPU µs/handshake", "cpu_us_per_op", 1),
        ("sink", "client → backend, GB/s", "GB/s", "gbytes_per_s", 3,
         "proxy CPU-s per GB", "cpu_s_per_gb", 3),
        ("source", "backend → client, GB/s", "GB/s", "gbytes_per_s", 3,
         "proxy CPU-s per GB", "cpu_s_per_gb", 3),
        ("echo", "both ways, GB/s that came back", "GB/s", "gbytes_per_s", 3,
         "proxy CPU-s per GB", "cpu_s_per_gb", 3),
    ]
    scen = [x for x in scen if Table(rows, x[0], w2).rows]
    if not w2 or not scen:
        return
    w("## Two workers")
    w("")
    w("The proxies as users run them on a two-core machine: two workers each, nothing "
      "pinned to one core, the client and the backend on the same two CPUs (how: *Machine "
      "and method*). **switchyard-2w** is `workers: 2` (two event-loop threads in one "
      "process); **switchyard-pin-2w** the same with `worker_cpu_affinity: auto` (each "
      "worker pinned to its CPU, connections kept on the CPU whose softirq took their "
      "SYN: SO_INCOMING_CPU, Linux 6.2+); **nginx-2w** the documented WebSocket config with `worker_processes 2`; "
      "**haproxy-2w** *haproxy*'s config with `nbthread 2`; access logs off in all three. "
      "Since the three programs share both CPUs, a proxy that spends less CPU per unit of "
      "work leaves more for the client and the backend.")
    w("")
    w(f"**Target: switchyard ≥ {W2_TARGET:.1f}× the best of nginx (2 workers) and HAProxy "
      "(nbthread 2)**, per scenario, on throughput (medians).")
    w("")
    hdr = (["scenario"] + w2 + ["switchyard-2w ÷ best anchor",
                                "proxy CPU per unit (" + " / ".join(w2) + ")",
                                f"≥ {W2_TARGET:.1f}×"])
    if "switchyard-pin-2w" in w2:
        hdr.insert(-1, "switchyard-pin-2w ÷ best anchor")
    w("| " + " | ".join(hdr) + " |")
    w("|" + "---|" * len(hdr))
    met, judged = [], []
    for s, title, _, key, dig, _, ckey, cdig in scen:
        tb = Table(rows, s, w2)
        sy = tb.m("switchyard-2w", key)
        anchors = [(tb.m(a, key), a) for a in W2_ANCHORS]
        anchors = [(v, a) for v, a in anchors if v is not None]
        best = max(anchors) if anchors else None
        verdict = "—"
        if sy is not None and best is not None and best[0] > 0:
            ok = sy / best[0] >= W2_TARGET
            verdict = "**met**" if ok else "not met"
            judged.append(s)
            if ok:
                met.append(s)
        cells = [f"{s} ({title})"]
        for t in w2:
            v = tb.m(t, key)
            sp = tb.spread(t, key, 1, dig)
            cells.append(fmt(v, dig) + (f" ({sp})" if sp else ""))
        cells.append(f"{ratio(sy, best[0] if best else None)}"
                     + (f" (vs {best[1]})" if best else ""))
        cells.append(" / ".join(fmt(tb.m(t, ckey), cdig) for t in w2) + " "
                     + ("µs" if ckey == "cpu_us_per_op" else "CPU-s/GB"))
        if "switchyard-pin-2w" in w2:
            cells.append(ratio(tb.m("switchyard-pin-2w", key), best[0] if best else None))
        cells.append(verdict)
        w("| " + " | ".join(cells) + " |")
    w("")
    if judged:
        w(f"Target met in {len(met)} of {len(judged)} scenarios"
          + (f" ({', '.join(met)})" if met else "") + ". "
          + ("(Smoke run: one short round on a shared machine; the verdicts mean nothing.) "
             if meta.get("smoke") else "")
          + "Proxy CPU per unit of work is the steadier comparison: the throughputs depend "
          "on how the kernel shares the two CPUs among proxy, client and backend, and on "
          "anything else running on the machine (see the load average above).")
        w("")
    for s, title, head, key, dig, chead, ckey, cdig in scen:
        tb = Table(rows, s, w2)
        w(f"### Two workers: {s} ({title})")
        w("")
        if key == "ops_per_s":
            cols = [(head, key, 1, dig), ("p50 µs", "p50_us", 1, 0), ("p99 µs", "p99_us", 1, 0),
                    (chead, ckey, 1, cdig)]
        else:
            cols = [(head, key, 1, dig), ("Gbit/s", "gbit_per_s", 1, 1), (chead, ckey, 1, cdig)]
        cols.append(("proxy CPU use", "cpu_util", 100, 0))
        section_table(out, tb, cols, (key, 1), ref=None, me="switchyard-2w")
    w("(proxy CPU use in % of one CPU, all the proxy's threads or processes together: up to "
      "200% on the two CPUs, which it shares with the client and the backend.)")
    w("")


def problems(rows):
    bad = []
    for r in rows:
        issues = []
        if not r.get("ok"):
            issues.append("no result")
        if r.get("target_died"):
            issues.append("proxy process died during the run")
        if r.get("note"):
            issues.append(r["note"])
        for k in ("errors", "bad_bytes_events", "stalled_tunnels", "stuck", "non_2xx"):
            if r.get(k):
                issues.append(f"{k}={r[k]}")
        if r.get("first_error"):
            issues.append("first error: " + r["first_error"])
        if issues:
            bad.append((r.get("scenario"), r.get("target"), r.get("round"), "; ".join(issues)))
    return bad


def read_slab(path):
    sizes = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) >= 4 and p[3].isdigit():
                    sizes[p[0]] = int(p[3])
    return sizes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True, action="append",
                    help="results.jsonl; repeat to merge runs (a later file replaces the "
                         "scenario/target pairs it has)")
    ap.add_argument("--meta", required=True, action="append",
                    help="meta.json of each --results, same order; the first gives the machine")
    ap.add_argument("--slab")
    ap.add_argument("--notes", help="markdown appended verbatim (profile notes)")
    ap.add_argument("--conf", help="directory with the configs used (listed for reference)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    metas = [json.load(open(m)) for m in a.meta]
    meta = dict(metas[0])
    rows, owner = [], {}
    per_file = [load(r) for r in a.results]
    for i, rr in enumerate(per_file):  # the last file holding a pair wins
        for r in rr:
            owner[(r.get("scenario"), r.get("target"))] = i
    for i, rr in enumerate(per_file):
        rows += [r for r in rr if owner.get((r.get("scenario"), r.get("target"))) == i]
    targets = []
    for m in metas:
        for t in m.get("targets", " ".join(TARGETS)).split():
            if t not in targets:
                targets.append(t)
    targets.sort(key=lambda t: TARGETS.index(t) if t in TARGETS else len(TARGETS))
    out = []
    w = out.append

    w("# Benchmarks")
    w("")
    if meta.get("smoke"):
        w("> **Smoke run** (1 round, ~1 s per scenario): numbers are only a sign of life.")
        w("")
    w("Switchyard against no proxy (*direct*) and the two proxies people would otherwise "
      "put in front of WebSocket backends, nginx and HAProxy from Debian, on the same machine "
      "in one run. Generated by `bench/report.py` from the raw results of `bench/run.sh`; "
      "do not edit by hand (profile notes come from `bench/PROFILE.md`).")
    w("")
    w("## Machine and method")
    w("")
    if len(metas) > 1:
        w(f"This report merges {len(metas)} runs on the same machine (same method):")
        w("")
        for i, m in enumerate(metas):
            ts = sorted({r.get("scenario") for r in rows if owner.get((r.get("scenario"),
                                                                        r.get("target"))) == i})
            w(f"- run {i + 1}: {m.get('date')}, switchyard {m.get('switchyard')}, "
              f"{m.get('rounds')} round(s) × {m.get('duration_s')} s; scenarios "
              f"{', '.join(x for x in ts if x)}.")
        w("")
    w(f"- {meta.get('nproc')} CPUs ({meta.get('cpu') or 'unknown model'}), {meta.get('mem')} RAM, "
      f"Linux {meta.get('kernel')}; date {meta.get('date')}.")
    w(f"- switchyard {meta.get('switchyard')} (Release build), nginx {meta.get('nginx')}, "
      f"HAProxy {meta.get('haproxy')}, wrk {meta.get('wrk')}.")
    has_w2 = any(t in W2 for t in targets)
    w(f"- Each proxy runs pinned to CPU 1 (`taskset -c 1`) with one worker/thread; the load "
      f"generator (`bench/sy_load.c`, or wrk) and the backend (`bench/sy_bench_backend.c`), "
      f"both single-threaded epoll programs, share CPU 0. *direct* therefore has one CPU for "
      f"everything while a proxied run has two: direct is the reference for what the "
      f"client/backend pair can do, not an upper bound on a proxied run."
      + (" The two-worker rows (*-2w) are run differently (next point)." if has_w2 else ""))
    if has_w2:
        w(f"- Two-worker rows (*switchyard-2w*, *nginx-2w*, *haproxy-2w*; scenarios "
          f"{', '.join(meta.get('w2_scenarios', 'http handshake sink echo').split())}): the "
          f"proxy with two workers, the load generator and a backend of their own (a second "
          f"`sy_bench_backend`) are all started with `taskset -c {meta.get('w2_cpus', '0,1')}`, "
          f"so each may run on either CPU and the kernel shares both among them. More load "
          f"than in the one-worker rows, about the same per worker: http "
          f"`wrk -t{meta.get('w2_http_threads', 2)} -c{meta.get('w2_http_conns', 100)}`; "
          f"handshake {meta.get('w2_handshake_conns', 100)} concurrent; sink/echo "
          f"{meta.get('w2_tunnels', 16)} tunnels of 64 KiB writes; "
          + (f"`sy_load` runs as {meta['w2_load_procs']} processes sharing those connections "
             f"(`--procs`), as wrk runs {meta.get('w2_http_threads', 2)} threads, so that "
             f"connections are made on both CPUs; the backend is one thread. "
             if meta.get('w2_load_procs', 1) > 1 else
             "`sy_load` and the backend are one thread each. ")
          + f"Proxy CPU sums every thread of the process (switchyard, "
          f"HAProxy: `/proc/PID/stat` of a process counts all its threads) or both worker "
          f"processes (nginx). They run in the same rounds as the other targets of a "
          f"scenario, interleaved and rotated with them.")
    w(f"- {meta.get('rounds')} round(s); in each round the targets run one after the other "
      f"and the order rotates every round (A B C D, B C D A, …). Measured window "
      f"{meta.get('duration_s')} s after {meta.get('warmup_s')} s of warm-up. The tables show "
      f"medians over the rounds (min–max in brackets).")
    w("- Access logs are off in every proxy (switchyard `access_log: off`, nginx "
      "`access_log off`, HAProxy without `log` lines) so that no row pays for writing "
      "lines the others do not write; each anchor otherwise runs the configuration its "
      "documentation gives for WebSocket proxying (below).")
    w("- Proxy CPU time = utime+stime of the proxy process (nginx: its worker; two-worker "
      "rows: the whole process with all its threads, nginx both workers) from "
      "`/proc/PID/stat` at both ends of the measured window, divided by the work done in it.")
    w(f"- fd limit {meta.get('fd_limit')} (hard limit of this machine); HAProxy maxconn "
      f"{meta.get('haproxy_maxconn')}, maxpipes {meta.get('haproxy_maxpipes')} (splice variant). "
      f"tcp_rmem `{meta.get('tcp_rmem')}`, tcp_wmem `{meta.get('tcp_wmem')}`.")
    loads = [r.get("load1") for r in rows if isinstance(r.get("load1"), (int, float))]
    if loads:
        w(f"- 1-minute load average at the end of each run: median {statistics.median(loads):.2f}, "
          f"range {min(loads):.2f}–{max(loads):.2f} on {meta.get('nproc')} CPUs. The runs keep up "
          "to two processes busy (proxy and load), so up to ~2 is the bench itself; above "
          "that other work shared the machine and the numbers are noisier than the medians "
          "suggest.")
    w("")
    w("Targets:")
    w("")
    for t in targets:
        w(f"- **{t}**: {TARGET_DESC.get(t, '')}")
    w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("bash bench/run.sh            # installs nginx/haproxy/wrk if missing, builds, runs all, writes this file")
    w("bash bench/run.sh --smoke    # every scenario ~1 s, 1 round (CI); exits non-zero if one gives no result")
    w("```")
    w("")
    w("TLS only (the `tls-*` scenarios run against the `*-tls` targets):")
    w("")
    w("```sh")
    w("bash bench/run.sh --scenarios 'tls-sink tls-source tls-echo tls-handshake tls-idle "
      "tls-sink-paced tls-source-paced tls-echo-paced' "
      "--targets 'switchyard-tls nginx-tls haproxy-tls'")
    w("```")
    w("")
    w("Two workers only (the `*-2w` targets run the http, handshake, sink and echo "
      "scenarios):")
    w("")
    w("```sh")
    w("bash bench/run.sh --scenarios 'http handshake sink echo' "
      "--targets 'switchyard-2w nginx-2w haproxy-2w'")
    w("```")
    w("")
    w("Options: `--rounds R --duration S --warmup S --idle-tunnels N --targets '…' "
      "--scenarios '…' --out DIR --report PATH --switchyard BIN`. Raw results: one JSON line "
      "per run in `OUT/results.jsonl`, the exact configs in `OUT/conf/`.")
    w("")

    # ---- scenarios -----------------------------------------------------------------
    w2_targets = targets
    targets = [t for t in targets if t not in W2]
    tb = Table(rows, "http", targets)
    if tb.rows:
        w("## Plain HTTP keep-alive (wrk, 50 connections, 13-byte body)")
        w("")
        w("`wrk -t1 -c50 --latency http://…/` against a backend answering `GET /` with a "
          "small 200 and keep-alive.")
        w("")
        section_table(out, tb, [("requests/s", "ops_per_s", 1, 0), ("p50 µs", "p50_us", 1, 0),
                                ("p99 µs", "p99_us", 1, 0),
                                ("proxy CPU µs/request", "cpu_us_per_op", 1, 1)], ("ops_per_s", 1))
    tb = Table(rows, "handshake", targets)
    if tb.rows:
        w("## Upgrade handshakes (50 concurrent)")
        w("")
        w("Each connection sends a WebSocket upgrade request, reads the 101, closes; 50 at "
          "a time, as fast as they go. Latency is connect → complete 101 head.")
        w("")
        section_table(out, tb, [("handshakes/s", "ops_per_s", 1, 0), ("p50 µs", "p50_us", 1, 0),
                                ("p99 µs", "p99_us", 1, 0),
                                ("proxy CPU µs/handshake", "cpu_us_per_op", 1, 1)],
                      ("ops_per_s", 1))
    for s, title, what in [
        ("sink", "Tunnel throughput, client → backend (sink)",
         "8 tunnels; the client writes 64 KiB chunks, the backend discards."),
        ("source", "Tunnel throughput, backend → client (source)",
         "8 tunnels; the backend writes 64 KiB chunks, the client reads and checks every byte."),
        ("echo", "Tunnel throughput, both ways (echo)",
         "8 tunnels; the client writes 64 KiB chunks and reads them back (at most 4 MiB in "
         "flight per tunnel), checking every byte. GB/s counts bytes that came back; the "
         "proxy moves twice that."),
    ]:
        tb = Table(rows, s, targets)
        if not tb.rows:
            continue
        w(f"## {title}")
        w("")
        w(what)
        w("")
        section_table(out, tb, [("GB/s", "gbytes_per_s", 1, 3), ("Gbit/s", "gbit_per_s", 1, 1),
                                ("proxy CPU-s per GB", "cpu_s_per_gb", 1, 3),
                                ("proxy CPU use", "cpu_util", 100, 0),
                                ("CPU 0 busy", "load_cpu_busy", 100, 0)], ("gbytes_per_s", 1))
        w("(proxy CPU use in % of one CPU; a proxy at ~100% is the bottleneck, below that "
          "CPU 0 — the client and backend, whose busy % over the run is the last column — is.)")
        w("")
    two_workers_section(out, rows, w2_targets, meta)
    tls_section(out, rows, targets, meta)
    tb = Table(rows, "rtt", targets)
    if tb.rows:
        w("## Round-trip latency, 32-byte echo over one tunnel")
        w("")
        w("One tunnel, one 32-byte message in flight: send, wait for the echo, repeat. "
          "All on one core, as issue 5 asks: for this scenario the proxy is moved "
          "(`taskset -a -p`) onto CPU 0 with the client and the backend, so every hop is "
          "a context switch rather than a cross-CPU wakeup.")
        w("")
        section_table(out, tb, [("p50 µs", "p50_us", 1, 1), ("p90 µs", "p90_us", 1, 1),
                                ("p99 µs", "p99_us", 1, 1), ("round trips/s", "ops_per_s", 1, 0),
                                ("proxy CPU µs/round trip", "cpu_us_per_op", 1, 1)],
                      ("p50_us", 1))
        w("(here the ratios are of p50 latency: lower is better, so *switchyard ÷ this* "
          "below 1 means switchyard is faster.)")
        w("")
    idle = Table(rows, "idle", targets)
    if idle.rows:
        n = meta.get("idle_tunnels")
        w(f"## Idle tunnels: memory per tunnel ({n:,} tunnels)")
        w("")
        w(f"{n:,} WebSocket tunnels are opened (source addresses spread over 127.0.0.2–251 "
          "with bind() before connect()), left idle for a moment, and the proxy's VmRSS is "
          "read (fresh proxy process per run; the delta is against its RSS before the first "
          "connection). Then one 32-byte ping is echoed on every tunnel to prove they all "
          "still work, and RSS is read again. Each tunnel is 2 fds in the proxy.")
        w("")
        idle_table(out, idle, "switchyard")

    # ---- the million ---------------------------------------------------------------
    slab = read_slab(a.slab)
    if idle.rows:
        w("## What 1,000,000 tunnels would cost")
        w("")
        per_sock_objs = [("TCP", "struct tcp_sock"), ("sock_inode_cache", "socket inode"),
                         ("filp", "struct file"), ("dentry", "dentry"),
                         ("eventpoll_epi", "epoll item")]
        known = [(name, desc, slab.get(name)) for name, desc in per_sock_objs]
        kern_sock = sum(s for _, _, s in known if s) if all(s for _, _, s in known) else 3700
        # measured: slab delta per socket in the idle run (4 sockets per proxied tunnel)
        meas = []
        for t in ANCHORS + ["switchyard"]:
            for r in idle.ok(t):
                if r.get("tunnels"):
                    meas.append(r["slab_kb_delta"] * 1024 / r["tunnels"] / 4)
        meas_sock = med(meas)
        w("A tunnel costs the proxy user-space memory (measured above) plus, in the kernel, "
          "two TCP sockets with their fds. An idle socket holds no data, so its receive and "
          "send queues cost nothing; what stays is the socket itself:")
        w("")
        w("| kernel object per socket | bytes (this kernel's `/proc/slabinfo`) |")
        w("|---|---|")
        for name, desc, s in known:
            w(f"| {desc} (`{name}`) | {fmt(s, 0) if s else 'n/a'} |")
        w(f"| **sum** | **{fmt(kern_sock, 0)}** |")
        w("")
        if meas_sock:
            w(f"Cross-check: the machine-wide slab growth during the idle runs was "
              f"{fmt(meas_sock, 0)} bytes per socket (4 sockets per proxied tunnel: client, "
              "the proxy's two, backend; includes the generator's and backend's epoll items "
              "and slab rounding). The estimate below uses the larger of the two.")
            w("")
        ks = max(kern_sock, meas_sock or 0)
        w("Assumptions: 1,000,000 tunnels on one proxy process; all idle except a fraction "
          "*a* that have bytes in flight; kernel memory per socket as above, ×2 per tunnel; "
          "pipes only while a direction has data in flight (switchyard's pool and HAProxy's "
          "pipes both work that way; nginx copies through user-space buffers instead), each "
          "pipe holding at most its capacity (switchyard 256 KiB, HAProxy 64 KiB) plus ~1 KiB "
          "of pipe_inode_info/pipe_buffer — an upper bound: a pipe is only that full while "
          "the destination is slower than the source; an "
          "active direction also has up to a socket buffer of queued data, which tcp_rmem/"
          "tcp_wmem and autotuning bound, not the proxy.")
        w("")
        hdr = ["proxy", "user RSS/tunnel", "user total", "kernel sockets (2 × "
               f"{fmt(ks, 0)} B)", "idle total", "+1% active (2 full pipes each)"]
        w("| " + " | ".join(hdr) + " |")
        w("|" + "---|" * len(hdr))
        for t in idle.targets:
            u = idle.m(t, "rss_bytes_per_tunnel")
            if u is None:
                continue
            user = u * 1e6
            kern = 2 * ks * 1e6
            if t.startswith("nginx"):
                # nginx copies: proxy_buffer_size per direction of an active tunnel
                bufsz = 64 * 1024 if t == "nginx-buf64k" else 4 * 1024
                pipes = 0.01 * 1e6 * 2 * bufsz
                extra = f" (user buffers 2 × {bufsz // 1024} KiB)"
            else:
                kib = 257 if t.startswith("switchyard") else 65
                pipes = 0.01 * 1e6 * 2 * kib * 1024
                extra = f" (2 × {kib} KiB)"
            w("| " + " | ".join([t, fmt(u, 0) + " B", f"{user / 2**30:.2f} GiB",
                                 f"{kern / 2**30:.2f} GiB", f"{(user + kern) / 2**30:.2f} GiB",
                                 f"+{pipes / 2**30:.2f} GiB{extra}"]) + " |")
        w("")
        w("What has to change on the machine (2 fds per tunnel, so 2,000,000 fds in one "
          "process plus listeners and spares):")
        w("")
        w(f"- `fs.nr_open` (here {meta.get('nr_open'):,}) caps RLIMIT_NOFILE: raise it, e.g. "
          "`sysctl -w fs.nr_open=2100000`, then `ulimit -n 2100000` (or `LimitNOFILE=` in "
          "the unit) for the proxy; `fs.file-max` must be above the machine-wide total.")
        w("- Outgoing connections from the proxy to one backend address come from one source "
          "address and the ephemeral range (`net.ipv4.ip_local_port_range`, ~28k ports by "
          "default): 1M upstream connections need ≥36 (source address, backend address:port) "
          "pairs, e.g. several backend ports/addresses or source addresses.")
        w("- Listen backlog (`net.core.somaxconn`) and SYN backlog matter only for the rate "
          "of new tunnels; `net.ipv4.tcp_mem` must allow the queued bytes of the active ones.")
        w("")

    # ---- problems ------------------------------------------------------------------
    w("## Problems seen in this run")
    w("")
    bad = problems(rows)
    if not bad:
        w("None: every run produced a result, no proxy died, no wrong or missing bytes, no "
          "stalled tunnel or handshake.")
    else:
        w("| scenario | target | round | what |")
        w("|---|---|---|---|")
        for s, t, r, what in bad:
            w(f"| {s} | {t} | {r} | {what.replace('|', '/')} |")
    w("")
    if a.notes and os.path.exists(a.notes):
        w(open(a.notes).read().rstrip())
        w("")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
