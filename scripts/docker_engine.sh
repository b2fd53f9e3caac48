#!/usr/bin/env bash
# Start / stop a private Docker engine for building and testing the CrossCT image.
#
#   scripts/docker_engine.sh start     # installs docker.io if needed, starts dockerd, prints export DOCKER_HOST=...
#   scripts/docker_engine.sh stop      # stops the dockerd this script started (by its PID), nothing else
#   scripts/docker_engine.sh status    # exit 0 when the private engine answers
#   eval "$(scripts/docker_engine.sh env)"
#
# The engine is separate from any system Docker: its own data-root, exec-root, socket and pidfile, no
# bridge network and no iptables rules (containers are run with --network none), overlay2 storage.
# Idempotent: "start" reuses an engine that already answers on the socket; "stop" only signals the PID in
# its own pidfile. Settings via environment: CROSSCT_DOCKER_ROOT, CROSSCT_DOCKER_SOCK, CROSSCT_DOCKER_RUN.
set -euo pipefail

ROOT=${CROSSCT_DOCKER_ROOT:-/var/lib/crossct-docker}
RUN=${CROSSCT_DOCKER_RUN:-/run/crossct-docker}
SOCK=${CROSSCT_DOCKER_SOCK:-/run/crossct-docker.sock}
PIDFILE=$RUN.pid
LOG=${CROSSCT_DOCKER_LOG:-/var/log/crossct-dockerd.log}
export DOCKER_HOST=unix://$SOCK

log() { echo "docker_engine: $*" >&2; }

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_engine() {
    if command -v dockerd >/dev/null && command -v docker >/dev/null; then return; fi
    [ "$(id -u)" = 0 ] || { log "dockerd is not installed and we are not root (apt-get install docker.io)"; exit 2; }
    log "installing docker.io (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
}

start() {
    if answers; then log "engine already running on $SOCK"; return 0; fi
    install_engine
    [ "$(id -u)" = 0 ] || { log "starting dockerd needs root"; exit 2; }
    mkdir -p "$ROOT" "$RUN" "$(dirname "$LOG")"
    if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        log "dockerd (pid $(cat "$PIDFILE")) exists but does not answer yet; waiting"
    else
        rm -f "$PIDFILE" "$SOCK"
        # setsid: the daemon outlives this script and is not hit by the caller's Ctrl-C.
        setsid dockerd \
            --data-root "$ROOT" --exec-root "$RUN" --pidfile "$PIDFILE" \
            --host "unix://$SOCK" --storage-driver overlay2 \
            --bridge=none --iptables=false --ip-masq=false \
            >>"$LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 120); do
        if answers; then log "dockerd $(docker version --format '{{.Server.Version}}') up on $SOCK (pid $(cat "$PIDFILE"), log $LOG)"; return 0; fi
        sleep 0.5
    done
    log "dockerd did not come up within 60 s; last lines of $LOG:"; tail -n 20 "$LOG" >&2; exit 1
}

stop() {
    if [ ! -s "$PIDFILE" ]; then log "no pidfile $PIDFILE: nothing to stop"; return 0; fi
    local pid; pid=$(cat "$PIDFILE")
    if ! kill -0 "$pid" 2>/dev/null; then log "dockerd pid $pid already gone"; rm -f "$PIDFILE"; return 0; fi
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { log "dockerd (pid $pid) stopped"; return 0; }; sleep 0.5; done
    log "dockerd (pid $pid) still running after 30 s"; exit 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) answers ;;
    env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
