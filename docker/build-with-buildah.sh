#!/usr/bin/env bash
# Builds docker/Dockerfile with Debian's buildah, without a Docker engine and
# without pulling from any container registry:
#
#   1. a local docker.io/library/debian:bookworm-slim is made once from
#      `debootstrap --variant=minbase bookworm` (Debian's mirror), and reused
#      afterwards (SY_REBUILD_BASE=1 makes it again);
#   2. `buildah bud` builds the Dockerfile against it (--pull=never).
#
#   bash docker/build-with-buildah.sh [TAG]        # default TAG: switchyard:test
#   bash docker/build-with-buildah.sh --base-only  # step 1 only (the minimal Debian
#                                                  # root the README test starts from)
#
# Needs root and the Debian packages buildah and debootstrap. Safe to run
# concurrently (one build at a time, under a lock) and again (idempotent).
#
# Environment:
#   SY_BUILDAH_STORAGE  storage driver (default vfs: works on any file system,
#                       inside containers too, no kernel overlay needed)
#   SY_DEBIAN_MIRROR    default http://deb.debian.org/debian
#   SY_REBUILD_BASE     1 = make the base image again
#
# Running the result (chroot isolation, host network; no engine needed):
#   S="--storage-driver vfs"
#   ctr=$(buildah $S from switchyard:test)
#   buildah $S run --isolation chroot --network host "$ctr" -- sy-demo -l 127.0.0.1:9000 &
#   buildah $S run --isolation chroot --network host -v "$PWD/my.yaml:/etc/switchyard/switchyard.yaml:ro" \
#       "$ctr" -- switchyard -c /etc/switchyard/switchyard.yaml
#   buildah $S rm "$ctr"
# `buildah run` applies the image's USER (10001), ENV and WORKDIR. Stop a run
# by sending SIGTERM to the program itself: buildah answers a signal of its
# own by SIGKILLing its child (no graceful stop) and can leave grandchildren.
set -euo pipefail

BASE_ONLY=0
if [[ ${1:-} == --base-only ]]; then
  BASE_ONLY=1
  shift
fi
TAG=${1:-switchyard:test}
BASE=docker.io/library/debian:bookworm-slim
SUITE=bookworm
MIRROR=${SY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
REPO=$(cd "$(dirname "$0")/.." && pwd)
S=(--storage-driver "${SY_BUILDAH_STORAGE:-vfs}")

say() { printf 'build-with-buildah: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

[[ $(id -u) -eq 0 ]] || die "needs root (buildah's chroot isolation and debootstrap)"
for tool in buildah debootstrap flock; do
  command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y buildah debootstrap"
done

# One build at a time on this machine: the base image is made once, and two
# concurrent bud runs on vfs would only compete for disk and CPU.
LOCK=/var/tmp/switchyard-buildah.lock
exec 9>"$LOCK"
if ! flock -n 9; then
  say "another build holds $LOCK; waiting"
  flock 9
fi

work_ctr=""
rootfs=""
cleanup() {
  [[ -n $work_ctr ]] && buildah "${S[@]}" rm "$work_ctr" >/dev/null 2>&1 || true
  [[ -n $rootfs && -d $rootfs ]] && rm -rf --one-file-system "$rootfs" || true
}
trap cleanup EXIT

# ------------------------------------------------------------------ base image
make_base() {
  rootfs=$(mktemp -d /var/tmp/switchyard-rootfs.XXXXXX)
  say "debootstrap --variant=minbase $SUITE $rootfs $MIRROR (about 30 s)"
  local t0=$SECONDS
  if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1; then
    tail -20 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    die "debootstrap failed"
  fi
  rm -f "$rootfs.log"
  say "debootstrap took $((SECONDS - t0)) s"

  # Make it look like the official slim image: the same apt sources (with
  # updates and security), docs/man/locales left out by dpkg, no caches, no
  # files that belong to the host that built it.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# as in Debian's official -slim images
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,linda,locale}/* \
         "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
         "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/* \
         "$rootfs"/debootstrap
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"

  work_ctr=$(buildah "${S[@]}" from scratch)
  buildah "${S[@]}" copy --quiet "$work_ctr" "$rootfs" / >/dev/null
  buildah "${S[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash --os linux --arch "$(dpkg --print-architecture)" \
    --label "org.opencontainers.image.description=debootstrap --variant=minbase $SUITE (local stand-in for $BASE)" \
    "$work_ctr"
  buildah "${S[@]}" commit --quiet --rm --format docker "$work_ctr" "$BASE" >/dev/null
  work_ctr=""
  rm -rf --one-file-system "$rootfs"
  rootfs=""
  say "base image $BASE committed"
}

if [[ ${SY_REBUILD_BASE:-0} == 1 ]] || ! buildah "${S[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  make_base
else
  say "reusing base image $BASE (SY_REBUILD_BASE=1 to make it again)"
fi
if ((BASE_ONLY)); then
  echo "$BASE"
  exit 0
fi

# ------------------------------------------------------------------ the image
# --format docker keeps HEALTHCHECK (the OCI image config has no such field);
# --isolation chroot needs no user namespaces or runc; --network host lets the
# RUN steps reach Debian's mirror for apt-get. --layers=false: with vfs every
# cached layer is a full copy of its root file system (~540 MB for the build
# stage, ~6 GB after two builds), and committing them made builds slower
# (90-120 s) than re-running apt-get in the build stage (~45 s).
old_id=$(buildah "${S[@]}" images --quiet --no-trunc "$TAG" 2>/dev/null | head -n1 || true)
say "buildah bud -f docker/Dockerfile -t $TAG"
t0=$SECONDS
buildah "${S[@]}" bud --isolation chroot --network host --pull=never --format docker \
  --layers=false --ignorefile "$REPO/docker/Dockerfile.dockerignore" \
  -f "$REPO/docker/Dockerfile" -t "$TAG" "$REPO" >&2
say "bud took $((SECONDS - t0)) s"

# A rebuild leaves the previous image untagged; with vfs each is a full copy.
# Remove it, and any other untagged image no container uses any more (one a
# container still held during an earlier build).
new_id=$(buildah "${S[@]}" images --quiet --no-trunc "$TAG" | head -n1)
if [[ -n $old_id && $old_id != "$new_id" ]]; then
  buildah "${S[@]}" rmi "$old_id" >/dev/null 2>&1 || true
fi
buildah "${S[@]}" rmi --prune >/dev/null 2>&1 || true
echo "$TAG"
