# shellcheck shell=bash
# Shared helpers for the scripts in tests/docker/. Sourced, not run.

# Messages go to stderr so that stdout stays machine-readable.
log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Seconds since the epoch with a fraction, for timings.
now() { date +%s.%N; }
# Elapsed seconds since $1 (a `now` value), one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Sets `missing` to those of the packages given that are not installed.
missing_pkgs() {
    local pkg
    missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
}

# Installs the Debian packages given as arguments that are not installed yet.
# Tries without `apt-get update` first (CI has just run it), then once more
# after an update. The apt output is shown only if it fails.
ensure_pkgs() {
    local missing lock rc=0 out policy=/usr/sbin/policy-rc.d made_policy=
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
    missing_pkgs "$@"
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "packages missing and not root: ${missing[*]}"
    # Tests running in parallel may get here together: one installs at a
    # time (the others then find nothing missing), and dpkg's own lock is
    # waited for rather than failed on.
    exec {lock}>/var/lock/agent-test-apt.lock
    flock "$lock"
    missing_pkgs "$@"
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Keep a package's own daemon (docker-registry.service) from starting
        # where the init system honours policy-rc.d.
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
        fi
        out=$(mktemp)
        "${apt[@]}" install --no-install-recommends "${missing[@]}" >"$out" 2>&1 ||
            { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "${missing[@]}"; } >>"$out" 2>&1 ||
            rc=$?
        [[ -z $made_policy ]] || rm -f "$policy"
        ((rc == 0)) || cat "$out" >&2
        rm -f "$out"
    fi
    exec {lock}>&-
    ((rc == 0)) || die "could not install ${missing[*]}"
}
