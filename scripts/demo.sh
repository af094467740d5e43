#!/usr/bin/env bash
# Starts the demo backend and the proxy on the shipped config, in the foreground.
# Ctrl-C stops both.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
"$BUILD/sy-demo" -l 127.0.0.1:9000 &
DEMO=$!
trap 'kill $DEMO 2>/dev/null; wait $DEMO 2>/dev/null' EXIT
echo "demo backend on 127.0.0.1:9000; proxy on http://127.0.0.1:8080/ (open it in a browser)"
echo "try: curl -s http://127.0.0.1:8080/echo -d hello"
echo "status page: http://127.0.0.1:9901/status (metrics: http://127.0.0.1:9901/metrics)"
"$BUILD/switchyard" -c config/switchyard.yaml
