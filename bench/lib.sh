# Helpers shared by bench/run.sh and bench/callgrind.sh; sourced, not run.
# Both scripts use `set -euo pipefail`; nothing here changes shell options.

# Whether something accepts connections on 127.0.0.1:PORT.
port_accepts() {  # port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Until 127.0.0.1:PORT accepts (0), or PID is gone or SECONDS (default 10) have
# passed (1).
wait_port() {  # port [pid] [seconds]
  local k
  for ((k = 0; k < ${3:-10} * 20; k++)); do
    port_accepts "$1" && return 0
    if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
    sleep 0.05
  done
  return 1
}

# PROXY_CPU and LOAD_CPU: the proxy on CPU 1, load generator and backend on CPU 0
# (one CPU: everything on 0).
pick_cpus() {
  if (($(nproc) >= 2)); then PROXY_CPU=1; LOAD_CPU=0; else PROXY_CPU=0; LOAD_CPU=0; fi
}

# Builds the load generator and the backend into DIR/sy_load and DIR/sy_bench_backend.
build_bench_tools() {  # dir
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  gcc -O2 -Wall -Wextra -Werror -o "$1/sy_load" "$here/sy_load.c" -lssl -lcrypto
  gcc -O2 -Wall -Wextra -Werror -o "$1/sy_bench_backend" "$here/sy_bench_backend.c"
}

# Starts BIN (sy_bench_backend) on PORT, allowed on CPUS, stdout to OUT and stderr
# to ERR, and puts its pid in the variable VAR at once (the caller's cleanup stops
# it, even when it fails to start); 1 when it does not accept within 10 s.
start_backend() {  # var bin port cpus out err
  taskset -c "$4" "$2" -p "$3" >"$5" 2>"$6" &
  printf -v "$1" '%s' "$!"
  wait_port "$3" "$!" 10
}
