#!/usr/bin/env bash
# Make the local base image for offline builds: Debian bookworm (Python 3.11) from debootstrap, imported
# into Docker. Cached twice: skipped when the image exists; the root-fs tarball is kept in
# ${CROSSCT_CACHE:-~/.cache/crossct} so a fresh engine only needs "docker import" (no network).
#
#   scripts/docker_base.sh [IMAGE_TAG]      # default crossct-base:bookworm-py311; prints the tag
#
# Needs root and debootstrap (apt-get install debootstrap) the first time only; DOCKER_HOST as set by
# scripts/docker_engine.sh. Settings: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

TAG=${1:-crossct-base:bookworm-py311}
CACHE=${CROSSCT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crossct}
TARBALL=$CACHE/rootfs-bookworm-py311.tar.gz
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { echo "docker_base: $*" >&2; }

if docker image inspect "$TAG" >/dev/null 2>&1; then log "$TAG exists"; echo "$TAG"; exit 0; fi

if [ ! -s "$TARBALL" ]; then
    [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 2; }
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    mkdir -p "$CACHE"
    ROOTFS=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$ROOTFS"' EXIT
    log "debootstrap bookworm (minbase + python3, python3-venv) from $MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # What an image never needs: package lists and caches, documentation, man pages, translations.
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
           "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
           "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/*
    tar --numeric-owner -C "$ROOTFS" -czf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
    log "root fs cached in $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap bookworm minbase + python3 (crossct scripts/docker_base.sh)" \
    "$TARBALL" "$TAG" >/dev/null
log "imported $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$TAG"
