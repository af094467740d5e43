#!/bin/sh
# Build the Switchyard libFuzzer targets and run each for a bounded time.
#
#   tests/fuzz/run.sh [BUILD_DIR]          default BUILD_DIR: /tmp/switchyard-fuzz
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 30)
#   FUZZ_TARGETS   subset to run (default "request response config path")
#   CC_FUZZ        compiler (default clang; needs libclang-rt-14-dev on Debian 12)
#   FUZZ_JOBS      parallel compile jobs (default 2)
#
# Steps: compile src/{base,http,router,config,config_values,upstream,tls,log,termination,flow,uri,sock,evset}.c and llhttp with
# -fsanitize=fuzzer-no-link,address,undefined; link one binary per target;
# replay every file under tests/fuzz/regressions/<target>/ (a fixed bug must stay
# fixed); then fuzz from tests/fuzz/corpus/<target>/ into BUILD_DIR/corpus/<target>/
# with -max_total_time. Crashes land in BUILD_DIR/artifacts/<target>/.
# Exit status: 0 when every replay and every run ended without a finding, else 1.
set -eu

SRC=$(cd "$(dirname "$0")/../.." && pwd)
FUZZ="$SRC/tests/fuzz"
OUT=${1:-/tmp/switchyard-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-30}
TARGETS=${FUZZ_TARGETS:-"request response config path"}
CC=${CC_FUZZ:-clang}
JOBS=${FUZZ_JOBS:-2}
LLHTTP_SRC=${LLHTTP_SRC:-/usr/share/llhttp}
LLHTTP_INC=${LLHTTP_INC:-/usr/share/include/llhttp}

command -v "$CC" >/dev/null 2>&1 || { echo "run.sh: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }
mkdir -p "$OUT/obj" "$OUT/bin"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-g -O1 -std=c11 -D_GNU_SOURCE $SAN -fsanitize=fuzzer-no-link -I$SRC/include -I$LLHTTP_INC"
# llhttp as the proxy builds it (CMakeLists.txt: LLHTTP_STRICT_MODE=1).
CFLAGS="$CFLAGS -DLLHTTP_STRICT_MODE=1"
PKGS="yaml-0.1 libssl libcrypto libuv"
PKG_CFLAGS=$(pkg-config --cflags $PKGS)
PKG_LIBS=$(pkg-config --libs $PKGS)

# --- build (objects are rebuilt when their source is newer)
compile() { # src obj extra-flags
  if [ ! -f "$2" ] || [ "$1" -nt "$2" ] || [ "$FUZZ/fuzz_common.h" -nt "$2" ] ||
     [ "$SRC/include/switchyard/http.h" -nt "$2" ] || [ "$SRC/include/switchyard/base.h" -nt "$2" ] ||
     [ "$SRC/include/switchyard/flow.h" -nt "$2" ] || [ "$0" -nt "$2" ]; then
    echo "  CC $1"
    # shellcheck disable=SC2086
    $CC $CFLAGS $PKG_CFLAGS $3 -c "$1" -o "$2"
  fi
}
echo "== building into $OUT"
rm -f "$OUT/obj/FAILED"
n=0
job() { # run a compile in the background, at most $JOBS at once
  ( compile "$@" || touch "$OUT/obj/FAILED" ) &
  n=$((n + 1))
  if [ $((n % JOBS)) -eq 0 ]; then wait; fi
}
for f in llhttp api http; do
  job "$LLHTTP_SRC/$f.c" "$OUT/obj/llhttp_$f.o" "-w"
done
for f in base http router config config_values upstream tls log termination flow uri sock evset; do
  job "$SRC/src/$f.c" "$OUT/obj/sy_$f.o" "-Wall -Wextra -Wno-unused-parameter"
done
for t in request response config path; do
  job "$FUZZ/fuzz_$t.c" "$OUT/obj/fuzz_$t.o" "-Wall -Wextra -DSY_FUZZ_DEFAULT_CONFIG_DIR=\"$SRC/config\""
done
wait
if [ -e "$OUT/obj/FAILED" ]; then echo "run.sh: build failed" >&2; exit 2; fi
LIBOBJ="$OUT/obj/llhttp_llhttp.o $OUT/obj/llhttp_api.o $OUT/obj/llhttp_http.o $OUT/obj/sy_base.o $OUT/obj/sy_http.o $OUT/obj/sy_router.o $OUT/obj/sy_config.o $OUT/obj/sy_config_values.o $OUT/obj/sy_upstream.o $OUT/obj/sy_tls.o $OUT/obj/sy_log.o $OUT/obj/sy_termination.o $OUT/obj/sy_flow.o $OUT/obj/sy_uri.o $OUT/obj/sy_sock.o $OUT/obj/sy_evset.o"
for t in request response config path; do
  # shellcheck disable=SC2086
  $CC -fsanitize=fuzzer $SAN "$OUT/obj/fuzz_$t.o" $LIBOBJ $PKG_LIBS -ldl -lpthread -lm -o "$OUT/bin/fuzz_$t"
done
# shellcheck disable=SC2086
$CC $(echo "$CFLAGS" | sed 's/-fsanitize=fuzzer-no-link//') "$FUZZ/probe.c" $LIBOBJ \
  $PKG_LIBS -ldl -lpthread -lm -o "$OUT/bin/probe"
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

# --- replay regressions, then fuzz
status=0
for t in $TARGETS; do
  bin="$OUT/bin/fuzz_$t"
  case $t in
    config) dict="$FUZZ/config.dict"; maxlen=4096 ;;
    path) dict="$FUZZ/path.dict"; maxlen=512 ;;
    *) dict="$FUZZ/http.dict"; maxlen=4096 ;;
  esac
  reg="$FUZZ/regressions/$t"
  if [ -d "$reg" ] && [ -n "$(ls -A "$reg" 2>/dev/null | grep -v '^README' || true)" ]; then
    echo "== $t: replaying regressions"
    for f in "$reg"/*; do
      case $(basename "$f") in README*) continue ;; esac
      if ! "$bin" -runs=1 "$f" >"$OUT/replay-$t-$(basename "$f").log" 2>&1; then
        echo "REGRESSION FAILS: $f (log: $OUT/replay-$t-$(basename "$f").log)"
        grep -E 'FUZZ INVARIANT|ERROR: |runtime error' "$OUT/replay-$t-$(basename "$f").log" | head -n 3 | sed 's/^/    /'
        status=1
      fi
    done
  fi
  echo "== $t: fuzzing for ${SECONDS_EACH}s"
  mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
  set +e
  "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len="$maxlen" \
    -dict="$dict" -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t/" \
    "$OUT/corpus/$t" "$FUZZ/corpus/$t" >"$OUT/fuzz-$t.log" 2>&1
  rc=$?
  set -e
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)|cov:' "$OUT/fuzz-$t.log" | tail -n 3
  if [ $rc -ne 0 ]; then
    echo "FINDING in $t (exit $rc): see $OUT/fuzz-$t.log and $OUT/artifacts/$t/"
    grep -E 'FUZZ INVARIANT|ERROR: (AddressSanitizer|libFuzzer)|runtime error' "$OUT/fuzz-$t.log" | head -n 5 | sed 's/^/    /'
    status=1
  fi
done
exit $status
