#!/usr/bin/env bash
# User-space instructions per unit of work, counted by callgrind (bench/PROFILE.md).
#
#   bash bench/callgrind.sh              switchyard: plain HTTP request, upgrade handshake,
#                                        32-byte round trip over a tunnel
#   bash bench/callgrind.sh --anchors    the same for nginx and HAProxy too
#
# Options: --warmup S (default 3)  --window S (measured, default 10)
#          --switchyard BIN (instead of building build-release/)  --out DIR (raw files;
#          default a fresh /tmp/sy-callgrind.XXXX)
#
# Each proxy runs under `valgrind --tool=callgrind` with one worker, on loopback with
# the backend and load generator of bench/run.sh and the configs of its switchyard,
# nginx and haproxy targets (nginx with `master_process off`, see write_config),
# proxy on CPU 1, load and backend on CPU 0 (the round trip all on CPU 0), a fresh
# proxy per scenario. After the warm-up the counters are zeroed (vgdb zero, what
# callgrind_control -z sends), after the window dumped (vgdb dump, callgrind_control
# -d); the instructions of the whole process are divided by the operations completed
# in between. Both happen with the load generator stopped (SIGSTOP) and the proxy
# quiet, and the operations are counted by the backend (SIGUSR1 prints its counters),
# so the count is exact whatever the generator's clock or the machine's load do. The
# generators are closed-loop with fixed concurrency, so the tails of the operations
# in flight at the zero (counted) and at the dump (not counted) balance.
# Output: a Markdown table on stdout, per-run details on stderr and in OUT/results.txt.
# Exit status: non-zero when a measurement failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

ANCHORS=0
WARMUP=3
WINDOW=10
SY_BIN=""
OUT=""
while (($#)); do
  case "$1" in
    --anchors) ANCHORS=1 ;;
    --warmup) WARMUP=$2; shift ;;
    --window) WINDOW=$2; shift ;;
    --switchyard) SY_BIN=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "callgrind.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $OUT ]] || OUT=$(mktemp -d /tmp/sy-callgrind.XXXXXX)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { printf '[callgrind %s] %s\n' "$(date +%T)" "$*" >&2; }

for c in valgrind vgdb wrk gcc taskset python3; do
  command -v "$c" >/dev/null || { echo "callgrind.sh: $c is missing (apt-get install valgrind wrk)" >&2; exit 1; }
done
if ((ANCHORS)); then
  for c in nginx haproxy; do
    command -v "$c" >/dev/null || { echo "callgrind.sh: $c is missing" >&2; exit 1; }
  done
fi

# ---- processes we start: every one is stopped on exit ---------------------------------
BACKEND_PID=""
PROXY_PID=""
LOAD_PID=""
running() {  # pid: exists and is not a zombie waiting to be reaped
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [[ -n $st && $st != Z ]]
}
stop_pid() {  # TERM, again every 2 s (nginx under valgrind has missed one), KILL after 10 s
  [[ -n $1 ]] || return 0
  local k
  for ((k = 0; k < 100; k++)); do
    running "$1" || break
    if ((k % 20 == 0)); then
      kill "$1" 2>/dev/null || true
      kill -CONT "$1" 2>/dev/null || true  # a stopped generator only acts on the TERM then
    fi
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop_pid "$LOAD_PID"
  stop_pid "$PROXY_PID"
  stop_pid "$BACKEND_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build ---------------------------------------------------------------------------------
if [[ -z $SY_BIN ]]; then
  log "building switchyard (Release) in $ROOT/build-release"
  cmake -S "$ROOT" -B "$ROOT/build-release" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_TESTING=OFF >"$OUT/build.log" 2>&1
  if ! cmake --build "$ROOT/build-release" -j2 --target switchyard >>"$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log" >&2
    echo "callgrind.sh: switchyard does not build (see $OUT/build.log)" >&2
    exit 1
  fi
  SY_BIN=$ROOT/build-release/switchyard
fi
SY_VERSION=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$ROOT" status --porcelain -- src include 2>/dev/null) ]] && SY_VERSION+="+changes"
[[ $SY_BIN != "$ROOT/build-release/switchyard" ]] && SY_VERSION="$(basename "$SY_BIN")"
build_bench_tools "$OUT"

pick_cpus
ulimit -n "$(ulimit -Hn | sed 's/unlimited/65536/')" 2>/dev/null || true
FDS=$(ulimit -n)
((FDS > 20000)) && FDS=20000

# Two free loopback ports (backend, proxy), held together while chosen.
read -r BPORT PPORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')

COUNTS=$OUT/backend.counts
: >"$COUNTS"
start_backend BACKEND_PID "$OUT/sy_bench_backend" "$BPORT" "$LOAD_CPU" "$COUNTS" "$OUT/backend.err" ||
  { echo "callgrind.sh: backend did not start" >&2; exit 1; }

# The backend's cumulative count of one kind of operation (http, upgrades, echoed).
backend_count() {
  local before k line
  before=$(wc -l <"$COUNTS")
  kill -USR1 "$BACKEND_PID"
  for ((k = 0; k < 500; k++)); do
    (($(wc -l <"$COUNTS") > before)) && break
    sleep 0.002
  done
  line=$(tail -1 "$COUNTS")
  (($(wc -l <"$COUNTS") > before)) || { echo "callgrind.sh: backend did not report" >&2; exit 1; }
  sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$line"
}

# Stops the load generator and waits until the backend's count of KIND has not moved
# for 0.2 s (the operations in flight have gone through the proxy, which then only
# waits), at most 20 s; prints that count. The caller resumes the generator.
quiesce() {  # kind
  local k prev cur
  kill -STOP "$LOAD_PID"
  prev=$(backend_count "$1")
  for ((k = 0; k < 100; k++)); do
    sleep 0.2
    cur=$(backend_count "$1")
    [[ -n $cur ]] || return 1
    if [[ $cur == "$prev" ]]; then echo "$cur"; return 0; fi
    prev=$cur
  done
  return 1
}

# ---- configs: the switchyard, nginx and haproxy targets of bench/run.sh ------------------
write_config() {  # target -> path of its config
  local d=$OUT/conf
  mkdir -p "$d"
  case $1 in
    switchyard)
      cat >"$d/switchyard.yaml" <<EOF
workers: 1
access_log: off
listeners:
  - address: 127.0.0.1:$PPORT
upstreams:
  bench:
    servers: [{address: 127.0.0.1:$BPORT}]
routes:
  - match: {path_prefix: /}
    upstream: bench
EOF
      echo "$d/switchyard.yaml" ;;
    nginx)
      mkdir -p "$d/nginx"
      # As run.sh's nginx target, but one process: valgrind's gdbserver does not
      # follow the fork into a worker (vgdb finds no FIFO for it), and without
      # a master the single process runs the worker's event loop.
      cat >"$d/nginx/nginx.conf" <<EOF
master_process off;
worker_processes 1;
worker_rlimit_nofile $FDS;
daemon off;
pid $d/nginx/nginx.pid;
error_log $d/nginx/error.log warn;
events { worker_connections $((FDS - 100)); }
http {
  access_log off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream bench { server 127.0.0.1:$BPORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PPORT backlog=4096;
    location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
EOF
      echo "$d/nginx/nginx.conf" ;;
    haproxy)
      cat >"$d/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $(((FDS - 600) / 2 - 300))
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$PPORT
  default_backend be
backend be
  server s1 127.0.0.1:$BPORT
EOF
      echo "$d/haproxy.cfg" ;;
  esac
}

# ---- one measurement ------------------------------------------------------------------------
declare -A RESULT=()
measure() {  # target scenario
  local t=$1 s=$2 conf cpu=$PROXY_CPU cg=$OUT/cg/$1-$2 vpid k
  conf=$(write_config "$t")
  [[ $s == rtt ]] && cpu=$LOAD_CPU  # the round trip runs all on one core, as in run.sh
  mkdir -p "$cg"
  local -a vg=(taskset -c "$cpu" valgrind --tool=callgrind --callgrind-out-file="$cg/out.%p")
  case $t in
    switchyard) "${vg[@]}" "$SY_BIN" -c "$conf" >"$cg/proxy.out" 2>"$cg/proxy.err" & ;;
    nginx) "${vg[@]}" nginx -p "$OUT/conf/nginx/" -c "$conf" -e "$OUT/conf/nginx/error.log" \
             >"$cg/proxy.out" 2>"$cg/proxy.err" & ;;
    haproxy) "${vg[@]}" haproxy -db -f "$conf" >"$cg/proxy.out" 2>"$cg/proxy.err" & ;;
  esac
  PROXY_PID=$!
  if ! wait_port "$PPORT" "$PROXY_PID" 60; then
    log "$t did not start: $(tail -3 "$cg/proxy.err" | tr '\n' ' ')"
    return 1
  fi
  vpid=$PROXY_PID

  local kind div=1 total=$((${WARMUP%.*} + ${WINDOW%.*} + 30))
  case $s in
    http) kind=http
      taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${total}s" "http://127.0.0.1:$PPORT/" \
        >"$cg/load.out" 2>"$cg/load.err" & ;;
    handshake) kind=upgrades
      taskset -c "$LOAD_CPU" "$OUT/sy_load" --mode handshake --port "$PPORT" --conns 50 \
        --warmup 0 --duration "$total" >"$cg/load.out" 2>"$cg/load.err" & ;;
    rtt) kind=echoed div=32
      taskset -c "$LOAD_CPU" "$OUT/sy_load" --mode rtt --port "$PPORT" --conns 1 --size 32 \
        --warmup 0 --duration "$total" >"$cg/load.out" 2>"$cg/load.err" & ;;
  esac
  LOAD_PID=$!
  sleep "$WARMUP"  # the warm-up: pools, caches and heaps reach their steady state
  local z d
  z=$(quiesce "$kind") || { log "$t $s: the proxy did not go quiet"; return 1; }
  vgdb --pid="$vpid" zero >"$cg/zero.log" 2>&1 || { log "$t $s: zero failed"; return 1; }
  kill -CONT "$LOAD_PID"
  sleep "$WINDOW"
  d=$(quiesce "$kind") || { log "$t $s: the proxy did not go quiet"; return 1; }
  vgdb --pid="$vpid" dump >"$cg/dump.log" 2>&1 || { log "$t $s: dump failed"; return 1; }
  kill -CONT "$LOAD_PID"
  kill -0 "$LOAD_PID" 2>/dev/null || { log "$t $s: the load generator ended early: $(tail -2 "$cg/load.err")"; return 1; }
  stop_pid "$LOAD_PID"; LOAD_PID=""
  stop_pid "$PROXY_PID"; PROXY_PID=""

  # The dump is out.PID.1 (the file without a part number is the exit dump).
  local f ir ops
  f=$cg/out.$vpid.1
  [[ -s $f ]] || { log "$t $s: no dump in $cg"; return 1; }
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
  ops=$(awk -v a="$z" -v b="$d" -v div="$div" 'BEGIN { printf "%.1f", (b - a) / div }')
  if [[ -z $ir ]] || awk -v o="$ops" 'BEGIN { exit !(o < 100) }'; then
    log "$t $s: too little measured (instructions ${ir:-?}, operations $ops)"
    return 1
  fi
  RESULT[$t,$s]=$(awk -v i="$ir" -v o="$ops" 'BEGIN { printf "%.0f", i / o }')
  printf '%s %s instructions=%s operations=%s (backend %s..%s) per_op=%s\n' \
    "$t" "$s" "$ir" "$ops" "$z" "$d" "${RESULT[$t,$s]}" \
    | tee -a "$OUT/results.txt" >&2
}

TARGETS="switchyard"
((ANCHORS)) && TARGETS+=" nginx haproxy"
SCENARIOS=${SCENARIOS:-"http handshake rtt"}
failed=0
for t in $TARGETS; do
  for s in $SCENARIOS; do
    log "$t $s: warm-up ${WARMUP}s, window ${WINDOW}s"
    measure "$t" "$s" || { failed=1; stop_pid "$LOAD_PID"; LOAD_PID=""; stop_pid "$PROXY_PID"; PROXY_PID=""; }
  done
done

commas() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta' <<<"$1"; }
declare -A LABEL=([http]="plain HTTP request (wrk, 50 connections)"
                  [handshake]="upgrade handshake (50 concurrent)"
                  [rtt]="32-byte round trip over a tunnel")
declare -A NAME=([switchyard]="switchyard $SY_VERSION"
                 [nginx]="nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
                 [haproxy]="HAProxy $(haproxy -v 2>/dev/null | head -1 | awk '{print $3}')")
{
  printf '| unit of work (instructions per operation) |'
  for t in $TARGETS; do printf ' %s |' "${NAME[$t]}"; done
  printf '\n|---|'
  for t in $TARGETS; do printf -- '---|'; done
  printf '\n'
  for s in $SCENARIOS; do
    printf '| %s |' "${LABEL[$s]}"
    for t in $TARGETS; do
      printf ' %s |' "$(commas "${RESULT[$t,$s]:-failed}")"
    done
    printf '\n'
  done
} | tee "$OUT/table.md"
log "raw: $OUT"
exit "$failed"
