#!/usr/bin/env bash
# Switchyard's benchmark suite: one command.
#
#   bash bench/run.sh            full run (3 rounds), writes docs/BENCHMARKS.md
#   bash bench/run.sh --smoke    every scenario ~1 s, 1 round (CI); report in the work dir
#
# Options: --rounds R  --duration S (per measured run)  --warmup S  --idle-tunnels N
#          --targets "direct switchyard ..."  --scenarios "http handshake ..."
#          --out DIR (raw results; default a fresh /tmp/sy-bench.XXXX)
#          --report PATH (default docs/BENCHMARKS.md; with --smoke, OUT/BENCHMARKS.md)
#          --switchyard BIN (use this binary instead of building one)
#
# What it does: installs nginx, haproxy and wrk if missing (apt-get), builds the
# proxy (Release) and the two bench programs, starts the backend and every proxy,
# each one-worker proxy pinned to CPU 1 and the load generator and backend to
# CPU 0, then runs every scenario against every target, the targets interleaved and
# rotated each round (A B C D, B C D A, ...). Each result is one JSON line in OUT/results.jsonl;
# bench/report.py turns them into the report (medians, ratios, CPU per unit of work).
# TLS: the tls-* scenarios (tls-sink tls-source tls-echo tls-handshake tls-idle) run against the
# *-tls targets only (client TLS -> proxy -> plaintext backend, i.e. wss -> ws; the
# certificate, ECDSA P-256, is made with openssl at run time), the other scenarios
# against the other targets only. The tls-*-paced scenarios run the same tunnels at a fixed
# offered rate (sy_load --rate: PACE_SINK_MB, PACE_SOURCE_MB, PACE_ECHO_MB), about half
# of the slowest anchor's saturated TLS rate, so every proxy carries the same load
# below its saturation and CPU per GB compares the cost of equal work.
#
# Two workers: the *-2w targets (switchyard workers: 2, nginx worker_processes 2,
# HAProxy nbthread 2) run the http, handshake, sink and echo scenarios only, as
# users run a proxy on a small machine: proxy, load generator and a backend of
# their own all allowed on CPUs 0 and 1 (nothing pinned to one of them), with more
# load (wrk -t2 -c100; 100 concurrent handshakes; 16 tunnels; sy_load in two
# processes as wrk runs two threads, so connections come from both CPUs). Their CPU figures
# sum every thread of the proxy (nginx: both worker processes).
# Exit status: non-zero when a scenario produced no result for some target.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

SMOKE=0
ROUNDS=3
DURATION=4
WARMUP=1
IDLE_TUNNELS=9000
HOLD=1      # idle: seconds between the last tunnel opened and the RSS reading
PAUSE=0.3   # between runs
TARGETS="direct switchyard nginx nginx-buf64k haproxy haproxy-splice switchyard-tls nginx-tls haproxy-tls"
TARGETS+=" switchyard-2w switchyard-pin-2w nginx-2w haproxy-2w"
SCENARIOS="http handshake sink source echo rtt idle tls-sink tls-source tls-echo tls-handshake tls-idle"
SCENARIOS+=" tls-sink-paced tls-source-paced tls-echo-paced"
# The paced TLS rows' offered rates (MB/s over the 8 tunnels): about half of what
# nginx-tls, the slowest anchor, carried saturated in the full run of 14ff16b (0.84 /
# 0.53 / 0.28 GB/s); echo counts the bytes that came back.
PACE_SINK_MB=400
PACE_SOURCE_MB=250
PACE_ECHO_MB=125
# The two-worker rows: their scenarios, and the load that keeps two workers busy
# (per worker about what one worker gets in its own rows).
SCENARIOS_2W="http handshake sink echo"
W2_HTTP_THREADS=2
W2_HTTP_CONNS=100
W2_HS_CONNS=100
W2_LOAD_PROCS=2  # sy_load --procs: connections made on both CPUs, as wrk -t2 makes them
W2_TUNNELS=16
OUT=""
REPORT=""
SY_BIN=""
BASE_PORT=${SY_BENCH_PORT:-19100}

while (($#)); do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --idle-tunnels) IDLE_TUNNELS=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --report) REPORT=$2; shift ;;
    --switchyard) SY_BIN=$2; shift ;;
    -h|--help) sed -n '2,/^# Exit status/p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if ((SMOKE)); then
  ROUNDS=1; DURATION=1; WARMUP=0.2; HOLD=0.3; PAUSE=0.05
  [[ $IDLE_TUNNELS == 9000 ]] && IDLE_TUNNELS=1000
fi
[[ -n $OUT ]] || OUT=$(mktemp -d /tmp/sy-bench.XXXXXX)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ -z $REPORT ]]; then
  if ((SMOKE)); then REPORT=$OUT/BENCHMARKS.md; else REPORT=$ROOT/docs/BENCHMARKS.md; fi
fi
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---- processes we start: every one is stopped on exit --------------------------------
declare -A PID=()     # target -> pid to kill (nginx: the master)
declare -A WPID=()    # target -> pids to measure, space-separated (nginx: the workers)
declare -A PORT=()
BACKEND_PID=""
BACKEND2_PID=""       # the two-worker rows' backend
cleanup() {
  local p
  for p in "${PID[@]}" $BACKEND_PID $BACKEND2_PID; do
    [[ -n $p ]] && kill "$p" 2>/dev/null || true
  done
  for p in "${PID[@]}" $BACKEND_PID $BACKEND2_PID; do
    [[ -n $p ]] && wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- install and build -----------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v gcc >/dev/null || need+=(gcc)
command -v taskset >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
[[ -e /usr/include/openssl/ssl.h ]] || need+=(libssl-dev)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts the packaged services on install; they are not ours to measure.
for svc in nginx haproxy; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    log "note: the system's $svc service is running (it idles; ours use other ports)"
  fi
done

BUILD=${SY_BENCH_BUILD:-/tmp/sy-bench-build}
mkdir -p "$BUILD"
if [[ -z $SY_BIN ]]; then
  if ! command -v cmake >/dev/null || ! pkg-config --exists libuv yaml-0.1 2>/dev/null; then
    bash "$ROOT/scripts/setup.sh"
  fi
  log "building switchyard (Release) in $BUILD/sy"
  # Release (-O3), as the container image builds it.
  cmake -S "$ROOT" -B "$BUILD/sy" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_TESTING=OFF >"$OUT/build.log" 2>&1
  if ! cmake --build "$BUILD/sy" -j"$(nproc)" --target switchyard >>"$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log" >&2
    echo "run.sh: switchyard does not build (see $OUT/build.log)" >&2
    exit 1
  fi
  SY_BIN=$BUILD/sy/switchyard
fi
# What is measured, noted now (the tree may move during a long run).
SY_VERSION="${SY_BENCH_LABEL:-}$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -n $(git -C "$ROOT" status --porcelain -- src include 2>/dev/null) ]] && SY_VERSION+=" + uncommitted changes"
[[ $SY_BIN != "$BUILD/sy/switchyard" ]] && SY_VERSION="binary $SY_BIN (tree at $SY_VERSION)"
build_bench_tools "$BUILD"
LOAD=$BUILD/sy_load

# ---- limits ------------------------------------------------------------------------------
# Each idle tunnel is 2 fds in the proxy and 1 in the generator and the backend.
hard=$(ulimit -Hn)
want=20000
[[ $hard != unlimited ]] && ((hard < want)) && want=$hard
ulimit -n "$want"
if ((IDLE_TUNNELS * 2 + 100 > want)); then
  echo "run.sh: --idle-tunnels $IDLE_TUNNELS needs $((IDLE_TUNNELS * 2 + 100)) fds, limit is $want" >&2
  exit 2
fi
MAXCONN=$(( (want - 600) / 2 - 300 ))  # HAProxy: 2 fds per connection + pipes + spare
MAXPIPES=250
NCPU=$(nproc)
pick_cpus
PIN_PROXY="taskset -c $PROXY_CPU"
PIN_LOAD="taskset -c $LOAD_CPU"
# Two-worker rows: everything may run on either of the two CPUs.
if ((NCPU >= 2)); then CPUS_2W="$LOAD_CPU,$PROXY_CPU"; else CPUS_2W=0; fi
PIN_2W="taskset -c $CPUS_2W"

# ---- backend and targets --------------------------------------------------------------------
BPORT=$BASE_PORT
i=1
for t in direct switchyard nginx nginx-buf64k haproxy haproxy-splice switchyard-tls nginx-tls haproxy-tls \
         switchyard-2w switchyard-pin-2w nginx-2w haproxy-2w; do
  PORT[$t]=$((BASE_PORT + i)); i=$((i + 1))
done
PORT[direct]=$BPORT
BPORT2=$((BASE_PORT + i))
is_tls() { [[ $1 == *-tls ]]; }
is_2w() { [[ $1 == *-2w ]]; }
# The targets a scenario runs against: tls-* scenarios the *-tls targets; the *-2w
# targets the SCENARIOS_2W; the other scenarios the remaining targets.
targets_for() {  # scenario -> words
  local t out=()
  for t in $TARGETS; do
    if [[ $1 == tls-* ]]; then
      is_tls "$t" && out+=("$t")
    elif is_2w "$t"; then
      [[ " $SCENARIOS_2W " == *" $1 "* ]] && out+=("$t")
    else
      is_tls "$t" || out+=("$t")
    fi
  done
  echo "${out[*]:-}"
}
TLS_NAME=bench.switchyard.test
TLS_DIR=$OUT/tls
TLS_ARGS=(--tls-ca "$TLS_DIR/cert.pem" --tls-sni "$TLS_NAME")

start_backend BACKEND_PID "$BUILD/sy_bench_backend" "$BPORT" "$LOAD_CPU" /dev/null "$OUT/backend.err" ||
  { echo "run.sh: backend did not start" >&2; exit 1; }
# The two-worker rows get a backend of their own, free to use both CPUs, so the
# one-worker rows' backend stays on the load's CPU.
if [[ " $TARGETS " == *-2w\ * ]]; then
  start_backend BACKEND2_PID "$BUILD/sy_bench_backend" "$BPORT2" "$CPUS_2W" /dev/null \
    "$OUT/backend2.err" || { echo "run.sh: backend (2w) did not start" >&2; exit 1; }
fi

write_configs() {
  local d=$OUT/conf
  mkdir -p "$d" "$TLS_DIR"
  # One self-signed ECDSA P-256 certificate for every TLS target (same key, same OpenSSL).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" -subj "/CN=$TLS_NAME" \
    -addext "subjectAltName=DNS:$TLS_NAME" 2>"$TLS_DIR/openssl.err"
  cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem"
  cat >"$d/switchyard-tls.yaml" <<EOF
workers: 1
access_log: off
listeners:
  - address: 127.0.0.1:${PORT[switchyard-tls]}
    tls:
      certificates:
        - {cert: $TLS_DIR/cert.pem, key: $TLS_DIR/key.pem}
upstreams:
  bench:
    servers: [{address: 127.0.0.1:$BPORT}]
routes:
  - match: {path_prefix: /}
    upstream: bench
EOF
  local v nw bp
  for v in switchyard switchyard-2w switchyard-pin-2w; do
    nw=1 bp=$BPORT pin=off
    is_2w "$v" && nw=2 bp=$BPORT2
    [[ $v == switchyard-pin-2w ]] && pin=auto
    cat >"$d/$v.yaml" <<EOF
workers: $nw
worker_cpu_affinity: $pin
access_log: off
listeners:
  - address: 127.0.0.1:${PORT[$v]}
upstreams:
  bench:
    servers: [{address: 127.0.0.1:$bp}]
routes:
  - match: {path_prefix: /}
    upstream: bench
EOF
  done
  local buf ssl
  for v in nginx nginx-buf64k nginx-tls nginx-2w; do
    buf="" ssl="" nw=1 bp=$BPORT
    is_2w "$v" && nw=2 bp=$BPORT2
    [[ $v == nginx-buf64k ]] && buf="proxy_buffer_size 64k; proxy_buffers 8 16k; proxy_busy_buffers_size 64k;"
    # nginx 1.22 leaves TLSv1.3 out of its default ssl_protocols; the others negotiate it.
    [[ $v == nginx-tls ]] && ssl="ssl;
    ssl_certificate $TLS_DIR/cert.pem;
    ssl_certificate_key $TLS_DIR/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3"
    mkdir -p "$d/$v"
    cat >"$d/$v/nginx.conf" <<EOF
# The documented WebSocket proxy setup (proxy_http_version 1.1, Upgrade and
# Connection from a map), $nw worker(s). For plain requests the map sends no
# Connection header so that the upstream keepalive pool is used, as the nginx
# keepalive docs say; upgrades get "Connection: upgrade".
worker_processes $nw;
worker_rlimit_nofile $want;
daemon off;
pid $d/$v/nginx.pid;
error_log $d/$v/error.log warn;
events { worker_connections $((want - 100)); }
http {
  access_log off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream bench { server 127.0.0.1:$bp; keepalive 64; }
  server {
    listen 127.0.0.1:${PORT[$v]} backlog=4096 $ssl;
    location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      $buf
    }
  }
}
EOF
  done
  for v in haproxy haproxy-splice haproxy-tls haproxy-2w; do
    local splice="" pipes="" bindssl=""
    nw=1 bp=$BPORT
    is_2w "$v" && nw=2 bp=$BPORT2
    [[ $v == haproxy-tls ]] && bindssl=" ssl crt $TLS_DIR/haproxy.pem"
    if [[ $v == haproxy-splice ]]; then
      splice=$'  option splice-request\n  option splice-response'
      pipes="  maxpipes $MAXPIPES"
    fi
    cat >"$d/$v.cfg" <<EOF
global
  nbthread $nw
  maxconn $MAXCONN
$pipes
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  timeout http-keep-alive 60s
$splice
frontend fe
  bind 127.0.0.1:${PORT[$v]}$bindssl
  default_backend be
backend be
  server s1 127.0.0.1:$bp
EOF
  done
}

start_target() {  # target
  local t=$1 d=$OUT/conf p w k pin=$PIN_PROXY nw=1
  is_2w "$t" && pin=$PIN_2W nw=2
  case $t in
    direct) PID[$t]=""; WPID[$t]=$BACKEND_PID; return 0 ;;
    switchyard|switchyard-tls|switchyard-2w|switchyard-pin-2w)  # workers are threads: one process to measure
      $pin "$SY_BIN" -c "$d/$t.yaml" >>"$OUT/$t.out" 2>>"$OUT/$t.err" &
      p=$!; PID[$t]=$p; w=$p ;;
    nginx|nginx-buf64k|nginx-tls|nginx-2w)  # workers are processes: measure all of them
      $pin nginx -p "$d/$t/" -c "$d/$t/nginx.conf" -e "$d/$t/error.log" >>"$OUT/$t.out" 2>>"$OUT/$t.err" &
      p=$!; PID[$t]=$p; w=""
      for ((k = 0; k < 100; k++)); do
        w=$(pgrep -P "$p" nginx | head -"$nw" | tr '\n' ' ' || true)
        w=${w% }
        (($(wc -w <<<"$w") >= nw)) && break
        sleep 0.05
      done ;;
    haproxy|haproxy-splice|haproxy-tls|haproxy-2w)  # nbthread: threads of one process
      $pin haproxy -db -f "$d/$t.cfg" >>"$OUT/$t.out" 2>>"$OUT/$t.err" &
      p=$!; PID[$t]=$p; w=$p ;;
  esac
  PID[$t]=$p
  WPID[$t]=${w:-$p}
  if ! wait_port "${PORT[$t]}" "$p"; then
    log "$t did not start: $(tail -3 "$OUT/$t.err" | tr '\n' ' ')"
    return 1
  fi
}

stop_target() {
  local t=$1 p=${PID[$1]:-}
  [[ -z $p ]] && return 0
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  PID[$t]=""
}

exit_status() {  # how a dead target ended (wait works: it is our child)
  local p=${PID[$1]:-} rc=0
  [[ -z $p ]] && { echo "never started"; return; }
  if kill -0 "$p" 2>/dev/null; then echo "master alive, worker ${WPID[$1]} gone"; return; fi
  wait "$p" 2>/dev/null || rc=$?
  if ((rc > 128)); then echo "killed by signal $((rc - 128))"; else echo "exit status $rc"; fi
}

alive() {
  [[ $1 == direct ]] && return 0
  [[ -n ${PID[$1]:-} ]] && kill -0 "${PID[$1]}" 2>/dev/null || return 1
  local w
  for w in ${WPID[$1]:-}; do kill -0 "$w" 2>/dev/null || return 1; done
}

for t in $TARGETS; do
  [[ $t == direct ]] && continue
  if port_accepts "${PORT[$t]}"; then
    echo "run.sh: port ${PORT[$t]} (for $t) is already in use; set SY_BENCH_PORT to another base" >&2
    exit 1
  fi
done
write_configs
log "checking configs"
"$SY_BIN" -t -c "$OUT/conf/switchyard.yaml" >&2
"$SY_BIN" -t -c "$OUT/conf/switchyard-tls.yaml" >&2
"$SY_BIN" -t -c "$OUT/conf/switchyard-2w.yaml" >&2
haproxy -c -q -f "$OUT/conf/haproxy-splice.cfg" >&2 || true
for t in $TARGETS; do start_target "$t" || true; done

cpu_busy() {  # cpu -> "busy total" jiffies of that CPU from /proc/stat
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
cpu_ticks() {  # pids... -> their utime+stime ticks, summed
  local p n=0
  for p in "$@"; do n=$((n + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$n"
}
CLK_TCK=$(getconf CLK_TCK)
pace_mb() {  # sink|source|echo -> the paced rows' offered MB/s
  case $1 in sink) echo "$PACE_SINK_MB" ;; source) echo "$PACE_SOURCE_MB" ;; echo) echo "$PACE_ECHO_MB" ;; esac
}

# Runs one scenario against one target; appends one JSON line to RESULTS.
run_one() {
  local s=$1 t=$2 r=$3 port=${PORT[$2]} pid=${WPID[$2]:-} line rc=0 note=""
  if [[ $t != direct ]] && ! alive "$t"; then
    note="restarted: the previous process had exited ($(exit_status "$t"); $(tail -2 "$OUT/$t.err" | tr '\n"\\' '   '))"
    log "$t is not running: $note"
    stop_target "$t"; start_target "$t" || true; pid=${WPID[$t]:-}
  fi
  if [[ $s == *idle && $t != direct ]]; then  # memory is measured on a fresh process
    stop_target "$t"; start_target "$t" || true; pid=${WPID[$t]:-}
  fi
  [[ $t == direct ]] && pid=""
  # Every figure assumes the backend on the load's CPU (two-worker rows: on both); a
  # run that found it elsewhere (an earlier version moved it with the rtt scenario's
  # proxy) would not be what the report says.
  local bcpus bpid=$BACKEND_PID bwant=$LOAD_CPU
  is_2w "$t" && bpid=$BACKEND2_PID bwant=$CPUS_2W
  bcpus=$(taskset -p -c "$bpid" 2>/dev/null | awk '{print $NF}')
  if [[ $bcpus != "$bwant" ]]; then
    log "backend found on CPU(s) $bcpus, not $bwant"; exit 1
  fi
  # The load: one worker's rows on the load's CPU; two workers' rows on both CPUs
  # and more of it, about what one worker gets per worker.
  local pin=$PIN_LOAD wthreads=1 wconns=50 hsconns=50 tunnels=8
  local -a procs=()
  if is_2w "$t"; then
    pin=$PIN_2W wthreads=$W2_HTTP_THREADS wconns=$W2_HTTP_CONNS
    hsconns=$W2_HS_CONNS tunnels=$W2_TUNNELS procs=(--procs "$W2_LOAD_PROCS")
  fi
  local pids=${pid// /,}  # sy_load --pid takes a comma-separated list
  local err=$OUT/run.err
  # How busy the load's CPU was (client and backend, and their softirqs): when the
  # proxy is below 100% of its core, this is the side that set the pace.
  local lb0 lb1
  lb0=$(cpu_busy "$LOAD_CPU")
  case $s in
    http)
      local c0 c1 wout
      c0=$( [[ -n $pid ]] && cpu_ticks $pid || echo 0)
      wout=$(timeout $((${DURATION%.*} + 30)) $pin wrk -t"$wthreads" -c"$wconns" -d"${DURATION}s" \
               --latency "http://127.0.0.1:$port/" 2>"$err") || rc=$?
      c1=$( [[ -n $pid ]] && cpu_ticks $pid || echo 0)
      printf '%s\n' "$wout" >>"$OUT/wrk.log"
      line=$(printf '%s\n' "$wout" | awk -v c0="$c0" -v c1="$c1" -v tck="$CLK_TCK" -v haspid="${pid:+1}" \
               -v conns="$wconns" -v threads="$wthreads" -v dur="$DURATION" '
        function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000;
                         if (v ~ /s$/) return v * 1e6; return v }
        /Requests\/sec:/ { rps = $2 }
        /requests in/ { req = $1 }
        /^ +50%/ { p50 = us($2) } /^ +90%/ { p90 = us($2) } /^ +99%/ { p99 = us($2) }
        /Non-2xx/ { bad = $NF }
        /Socket errors/ { serr = $0; gsub(/"/, "", serr) }
        END {
          ok = (rps > 0 && bad == 0) ? "true" : "false"
          printf "{\"mode\":\"http\",\"conns\":%d,\"threads\":%d,\"ok\":%s,\"ops\":%d,\"ops_per_s\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"non_2xx\":%d", conns, threads, ok, req, rps, p50, p90, p99, bad
          if (haspid) { cpu = (c1 - c0) / tck; printf ",\"cpu_s\":%.3f,\"cpu_util\":%.3f", cpu, cpu / dur; if (req > 0) printf ",\"cpu_us_per_op\":%.3f", cpu * 1e6 / req }
          if (serr != "") printf ",\"first_error\":\"%s\"", serr
          printf "}"
        }') ;;
    handshake|tls-handshake)
      local -a tls=()
      [[ $s == tls-* ]] && tls=("${TLS_ARGS[@]}")
      line=$(timeout 60 $pin "$LOAD" --mode handshake --port "$port" --conns "$hsconns" "${tls[@]}" "${procs[@]}" \
               --duration "$DURATION" --warmup "$WARMUP" ${pids:+--pid $pids} 2>"$err") || rc=$? ;;
    sink|source|echo|tls-sink|tls-source|tls-echo|tls-*-paced)
      local -a tls=() pace=()
      local m=${s#tls-}
      m=${m%-paced}
      [[ $s == tls-* ]] && tls=("${TLS_ARGS[@]}")
      case $s in
        *-paced) pace=(--rate "$(pace_mb "$m")") ;;
      esac
      line=$(timeout 60 $pin "$LOAD" --mode "$m" --port "$port" --conns "$tunnels" --size 65536 \
               "${tls[@]}" "${pace[@]}" "${procs[@]}" --duration "$DURATION" --warmup "$WARMUP" \
               ${pids:+--pid $pids} 2>"$err") || rc=$? ;;
    rtt)
      # Latency is measured with everything on one core (the issue's method):
      # the proxy joins the load generator and the backend for this run, so
      # every hop is a context switch, not a cross-CPU wakeup.
      # (direct has no proxy: its WPID is the backend, which stays where it is.)
      local p moved=""
      [[ $t != direct ]] && moved="${PID[$t]:-} ${WPID[$t]:-}"
      for p in $moved; do taskset -a -p -c "$LOAD_CPU" "$p" >/dev/null; done
      line=$(timeout 60 $PIN_LOAD "$LOAD" --mode rtt --port "$port" --conns 1 --size 32 \
               --duration "$DURATION" --warmup "$WARMUP" ${pid:+--pid $pid} 2>"$err") || rc=$?
      for p in $moved; do taskset -a -p -c "$PROXY_CPU" "$p" >/dev/null || true; done ;;
    idle|tls-idle)
      if [[ $t == direct ]]; then return 0; fi
      local -a tls=()
      [[ $s == tls-* ]] && tls=("${TLS_ARGS[@]}")
      line=$(timeout 120 $PIN_LOAD "$LOAD" --mode idle --port "$port" --conns "$IDLE_TUNNELS" "${tls[@]}" \
               --hold "$HOLD" --duration 20 ${pid:+--pid $pid} 2>"$err") || rc=$? ;;
  esac
  [[ $line == \{* ]] || line="{\"mode\":\"$s\",\"ok\":false,\"first_error\":\"no output (exit $rc): $(tail -1 "$err" 2>/dev/null | tr -d '"\\')\"}"
  lb1=$(cpu_busy "$LOAD_CPU")
  local lbusy
  lbusy=$(awk -v a="$lb0" -v b="$lb1" 'BEGIN { split(a, x, " "); split(b, y, " ");
    d = y[2] - x[2]; printf "%.3f", (d > 0 ? (y[1] - x[1]) / d : 0) }')
  [[ $line == \{* ]] && line="{\"load_cpu_busy\":$lbusy,${line#\{}"
  local died=false
  if [[ $t != direct ]] && ! alive "$t"; then died=true; log "$t DIED during $s"; fi
  line="{\"scenario\":\"$s\",\"target\":\"$t\",\"round\":$r,\"load1\":$(cut -d' ' -f1 /proc/loadavg),\"exit\":$rc,\"target_died\":$died,\"note\":\"$note\",${line#\{}"
  printf '%s\n' "$line" >>"$RESULTS"
  log "$s $t r$r: $(printf '%s' "$line" | cut -c1-230)"
  sleep "$PAUSE"
}

# ---- the runs: per scenario, targets interleaved and rotated each round ----------------------
T0=$(date +%s)
for s in $SCENARIOS; do
  read -r -a TLIST <<<"$(targets_for "$s")"
  nt=${#TLIST[@]}
  ((nt)) || { log "$s: no target for it in --targets, skipped"; continue; }
  for ((r = 1; r <= ROUNDS; r++)); do
    for ((j = 0; j < nt; j++)); do
      t=${TLIST[$(((j + r - 1) % nt))]}
      run_one "$s" "$t" "$r"
    done
  done
done
log "runs done in $(($(date +%s) - T0)) s"

# ---- machine facts and the report ---------------------------------------------------------------
{
  printf '{"nproc":%s,' "$NCPU"
  printf '"kernel":"%s",' "$(uname -r)"
  printf '"cpu":"%s",' "$(lscpu 2>/dev/null | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}')"
  printf '"mem":"%s",' "$(free -h | awk '/Mem:/ {print $2}')"
  printf '"nginx":"%s",' "$(nginx -v 2>&1 | sed 's/.*nginx\///')"
  printf '"haproxy":"%s",' "$(haproxy -v | head -1 | awk '{print $3}')"
  printf '"wrk":"%s",' "$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  printf '"switchyard":"%s",' "$SY_VERSION"
  printf '"date":"%s","rounds":%s,"duration_s":%s,"warmup_s":%s,"idle_tunnels":%s,"smoke":%s,' \
    "$(date -u +%FT%TZ)" "$ROUNDS" "$DURATION" "$WARMUP" "$IDLE_TUNNELS" "$SMOKE"
  printf '"fd_limit":%s,"haproxy_maxconn":%s,"haproxy_maxpipes":%s,' "$want" "$MAXCONN" "$MAXPIPES"
  printf '"tcp_rmem":"%s","tcp_wmem":"%s","pipe_max_size":%s,"page_size":%s,"nr_open":%s,' \
    "$(tr "\t" " " </proc/sys/net/ipv4/tcp_rmem)" "$(tr "\t" " " </proc/sys/net/ipv4/tcp_wmem)" \
    "$(cat /proc/sys/fs/pipe-max-size)" "$(getconf PAGESIZE)" "$(cat /proc/sys/fs/nr_open)"
  printf '"loadavg_end":"%s",' "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf '"w2_scenarios":"%s","w2_cpus":"%s","w2_http_threads":%s,"w2_http_conns":%s,' \
    "$SCENARIOS_2W" "$CPUS_2W" "$W2_HTTP_THREADS" "$W2_HTTP_CONNS"
  printf '"w2_handshake_conns":%s,"w2_tunnels":%s,"w2_load_procs":%s,' "$W2_HS_CONNS" "$W2_TUNNELS" "$W2_LOAD_PROCS"
  printf '"pace_mb":{"sink":%s,"source":%s,"echo":%s},' "$PACE_SINK_MB" "$PACE_SOURCE_MB" "$PACE_ECHO_MB"
  printf '"targets":"%s","scenarios":"%s"}\n' "$TARGETS" "$SCENARIOS"
} >"$OUT/meta.json"
cp "$OUT/conf/switchyard.yaml" "$OUT/conf/nginx/nginx.conf" "$OUT/conf/haproxy-splice.cfg" "$OUT/" 2>/dev/null || true
cp "$OUT/conf/switchyard-tls.yaml" "$OUT/conf/haproxy-tls.cfg" "$OUT/" 2>/dev/null || true
cp "$OUT/conf/nginx-tls/nginx.conf" "$OUT/nginx-tls.conf" 2>/dev/null || true
cp "$OUT/conf/switchyard-2w.yaml" "$OUT/conf/haproxy-2w.cfg" "$OUT/" 2>/dev/null || true
cp "$OUT/conf/nginx-2w/nginx.conf" "$OUT/nginx-2w.conf" 2>/dev/null || true

grep -E '^(TCP|sock_inode_cache|filp|dentry|eventpoll_epi) ' /proc/slabinfo >"$OUT/slab.txt" 2>/dev/null || true
python3 "$HERE/report.py" --results "$RESULTS" --meta "$OUT/meta.json" --slab "$OUT/slab.txt" \
  --notes "$HERE/PROFILE.md" --out "$REPORT" || { echo "run.sh: report failed" >&2; exit 1; }
log "report: $REPORT   raw: $RESULTS"

# Every scenario must have produced a result for every target.
missing=0
for s in $SCENARIOS; do
  for t in $(targets_for "$s"); do
    [[ $s == idle && $t == direct ]] && continue
    if ! grep -q "\"scenario\":\"$s\",\"target\":\"$t\",.*\"ok\":true" "$RESULTS"; then
      log "NO RESULT: $s against $t"
      missing=$((missing + 1))
    fi
  done
done
((missing == 0)) || { log "$missing scenario/target pairs produced no result"; exit 1; }
