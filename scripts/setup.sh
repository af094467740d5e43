#!/usr/bin/env bash
# Installs, from Debian's packages, whatever the build, the demo and the tests need
# and is not there yet. Idempotent: a second run installs nothing.
set -euo pipefail

# make is in build-essential, named anyway: the README's first command needs it
# on a minimal system (debootstrap minbase, debian:bookworm-slim) that has none.
PACKAGES=(
  make build-essential cmake pkg-config
  libuv1-dev libssl-dev libyaml-dev libc-ares-dev check node-llhttp
  python3 python3-pytest curl openssl
)
if [[ "${1:-}" == "--tests" ]]; then
  PACKAGES+=(valgrind nghttp2-client nghttp2-proxy chromium buildah debootstrap
             clang libclang-rt-14-dev nginx haproxy wrk python3-yaml iproute2 prometheus
             dnsmasq-base)
  # A NodeSource nodejs bundles npm and conflicts with Debian's npm package.
  command -v node >/dev/null || PACKAGES+=(nodejs)
  command -v npm >/dev/null || PACKAGES+=(npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
      echo "setup: installing these needs root: run this script as root, or install sudo" >&2
      exit 1
    fi
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ "${1:-}" == "--tests" && -f tests/interop/package-lock.json && ! -d tests/interop/node_modules/ws ]]; then
  echo "setup: npm ci (tests/interop)"
  npm ci --prefix tests/interop --no-audit --no-fund >/dev/null
fi
echo "setup: all packages present"
