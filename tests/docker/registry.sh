#!/usr/bin/env bash
# A private Docker registry for tests: Debian's docker-registry (distribution
# 2.8) run in the background, plain HTTP on 127.0.0.1 (the engine allows
# 127.0.0.0/8 without TLS), htpasswd auth, everything kept in one directory.
#
# Usage: registry.sh start  <dir> [port]
#        registry.sh stop   <dir>
#        registry.sh status <dir>
#        registry.sh install        (only the packages, as `start` would)
#
# The port is the argument, else $REGISTRY_PORT, else 5000. `start` writes
# config.yml, htpasswd, registry.log, registry.pid and storage/ into <dir>,
# waits until the registry answers (at most $REGISTRY_START_TIMEOUT seconds,
# default 30) and prints, one per line on stdout:
#   REGISTRY_PID=<pid>  REGISTRY_ADDR=127.0.0.1:<port>
#   REGISTRY_USER=agent  REGISTRY_PASSWORD=s3cret  REGISTRY_DIR=<dir>
# The registry stays in the caller's process group and keeps no descriptor of
# the caller open, so `Command::output()` returns as soon as it is up.
# `stop` ends it (TERM, then KILL after 10 s); `status` exits 0 if it runs and
# answers, 1 if not.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
. "$here/lib.sh"

USER_NAME=agent
PASSWORD=s3cret
BIN=/usr/bin/docker-registry

usage() { die "usage: ${0##*/} start|stop|status <dir> [port] | install"; }
cmd=${1:-}
if [[ $cmd == install ]]; then
    ensure_pkgs docker-registry apache2-utils
    exit 0
fi
(($# >= 2)) || usage
[[ $cmd != start ]] || mkdir -p "$2"
[[ -d $2 ]] || die "no directory $2"
dir=$(cd "$2" && pwd)
pidfile=$dir/registry.pid

# The status line of GET /v2/ on 127.0.0.1:$1, empty if nothing answers.
# Without auth a working registry says 401.
# shellcheck disable=SC2016
probe() {
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        IFS= read -r line <&3 && printf "%s\n" "${line%$'\''\r'\''}"' _ "$1" 2>/dev/null || true
}

# The pid of the registry serving $dir, if it runs.
running_pid() {
    local pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    # The pid must still be this directory's registry, not a reused pid.
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$BIN" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "serve $dir/config.yml" || return 1
    printf '%s\n' "$pid"
}

print_info() {
    printf 'REGISTRY_PID=%s\nREGISTRY_ADDR=127.0.0.1:%s\nREGISTRY_USER=%s\nREGISTRY_PASSWORD=%s\nREGISTRY_DIR=%s\n' \
        "$1" "$2" "$USER_NAME" "$PASSWORD" "$dir"
}

start() {
    local port=${1:-${REGISTRY_PORT:-5000}} limit=${REGISTRY_START_TIMEOUT:-30} pid deadline status
    if [[ ! $port =~ ^[0-9]+$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
        die "bad port: $port"
    fi
    if pid=$(running_pid); then
        die "a registry already runs for $dir (pid $pid, port $(<"$dir/port"))"
    fi
    [[ -z $(probe "$port") ]] || die "something already answers on 127.0.0.1:$port"
    ensure_pkgs docker-registry apache2-utils

    mkdir -p "$dir/storage"
    # bcrypt is the only hash the registry accepts.
    htpasswd -Bbc "$dir/htpasswd" "$USER_NAME" "$PASSWORD" 2>/dev/null
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  secret: $(head -c 18 /dev/urandom | base64)
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: agent-test
    path: $dir/htpasswd
EOF
    printf '%s\n' "$port" >"$dir/port"
    rm -f "$pidfile"
    # The shell writes its own pid and then becomes the registry, so the pid
    # file names the registry process itself. It closes every descriptor
    # above 2 first: the registry must not keep a pipe of the caller open.
    # shellcheck disable=SC2016
    bash -c '
        for fd in /proc/$$/fd/*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-"
        done
        echo $$ >"$1"
        exec "$2" serve "$3"' _ "$pidfile" "$BIN" "$dir/config.yml" \
        </dev/null >>"$dir/registry.log" 2>&1 &
    deadline=$((SECONDS + limit))
    while :; do
        if ! kill -0 $! 2>/dev/null; then
            tail -n 20 "$dir/registry.log" >&2
            die "the registry exited while starting (log: $dir/registry.log)"
        fi
        status=$(probe "$port")
        if [[ $status == "HTTP/1."?" 401"* ]] && pid=$(running_pid); then
            break
        fi
        if ((SECONDS >= deadline)); then
            kill $! 2>/dev/null || true
            tail -n 20 "$dir/registry.log" >&2
            die "the registry did not answer on 127.0.0.1:$port within $limit s"
        fi
        sleep 0.1
    done
    log "registry up on 127.0.0.1:$port (pid $pid), user $USER_NAME password $PASSWORD"
    print_info "$pid" "$port"
}

stop() {
    local pid i
    if ! pid=$(running_pid); then
        log "no registry runs for $dir"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        log "killed registry $pid"
    else
        log "stopped registry $pid"
    fi
    rm -f "$pidfile"
}

status() {
    local pid port
    if ! pid=$(running_pid); then
        log "no registry runs for $dir"
        return 1
    fi
    port=$(<"$dir/port")
    if [[ $(probe "$port") != "HTTP/1."?" 401"* ]]; then
        log "registry $pid runs but does not answer on 127.0.0.1:$port"
        return 1
    fi
    print_info "$pid" "$port"
}

case $cmd in
start) start "${3:-}" ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
