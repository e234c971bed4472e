#!/usr/bin/env bash
# `make install` and `make uninstall` (README, "Run it as a service").
#
#   dist/install.sh install     the binary, the two systemd units, and in
#                               /etc/agent the environment file, the listen
#                               configuration, the token file and a JWT
#                               secret, each only if it is not there yet
#   dist/install.sh uninstall   removes what the install recorded, and
#                               only that
#
# Settings come from the environment (the Makefile passes them): BIN (the
# binary to copy), PREFIX (/usr/local), DESTDIR (a staging root, for
# packages), UNITDIR ($PREFIX/lib/systemd/system), AGENT_USER (a system
# user to create and run the units as; none: root).
#
# Every file and directory the install creates is recorded, with the
# file's SHA-256, in $PREFIX/share/agent/install-manifest. Uninstall
# removes a file only while it is the one installed (an edited
# configuration, a token written in, is kept and named), and a directory
# only when the install created it and it is empty. A user the install
# created is kept: its home may hold what jobs left, and removing an
# account is the administrator's decision (uninstall says how).
set -euo pipefail

action=${1:-}
dest=${DESTDIR:-}
prefix=${PREFIX:-/usr/local}
unitdir=${UNITDIR:-$prefix/lib/systemd/system}
user=${AGENT_USER:-}
etc=/etc/agent
manifest=$prefix/share/agent/install-manifest
here=$(cd "$(dirname "$0")" && pwd)
units=(agent-serve.service agent-start.service)

say() { printf '%s\n' "$*"; }
fail() {
    printf 'dist/install.sh: %s\n' "$*" >&2
    exit 1
}

# The records of this run (`kind<TAB>path[<TAB>sha256]`), in order: an
# earlier install's records first, so that a second install keeps knowing
# what the first one created.
records=()
recorded() {
    local kind=$1 path=$2 r
    for r in "${records[@]}"; do
        [[ $r == "$kind"$'\t'"$path" || $r == "$kind"$'\t'"$path"$'\t'* ]] && return 0
    done
    return 1
}
forget() {
    local kind=$1 path=$2 r kept=()
    for r in "${records[@]}"; do
        [[ $r == "$kind"$'\t'"$path" || $r == "$kind"$'\t'"$path"$'\t'* ]] || kept+=("$r")
    done
    records=("${kept[@]}")
}

# A directory and its missing parents, 0755; the ones made are recorded.
make_dir() {
    local dir=$1
    [[ -d $dest$dir ]] && return 0
    make_dir "$(dirname "$dir")"
    mkdir -m 0755 "$dest$dir"
    recorded dir "$dir" || records+=("dir"$'\t'"$dir")
}

# Installs the file SOURCE at PATH with MODE, and records it. A file made
# 0600 is never readable by others, not even while it is written.
put() {
    local source=$1 path=$2 mode=$3
    make_dir "$(dirname "$path")"
    (umask 077 && install -m "$mode" "$source" "$dest$path")
    forget file "$path"
    records+=("file"$'\t'"$path"$'\t'"$(sha256sum <"$dest$path" | cut -d' ' -f1)")
    say "installed $dest$path ($mode)"
}

# As put, but a file that exists is left as it is (a configuration).
put_new() {
    local source=$1 path=$2 mode=$3
    if [[ -e $dest$path ]]; then
        say "kept $dest$path (it exists; not overwritten)"
        return 0
    fi
    put "$source" "$path" "$mode"
}

# Whether systemd runs this machine (and DESTDIR is not a staging root).
systemd_here() { [[ -z $dest && -d /run/systemd/system ]]; }

install_all() {
    local bin=${BIN:-}
    [[ -n $bin && -x $bin ]] || fail "BIN=$bin is not an executable file (make install builds it)"
    if [[ -n $user && ! $user =~ ^[a-z_][a-z0-9_-]*$ ]]; then
        fail "AGENT_USER=$user is not a user name"
    fi
    if [[ -f $dest$manifest ]]; then
        mapfile -t records <"$dest$manifest"
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT

    put "$bin" "$prefix/bin/agent" 0755
    # The units name the binary where it is installed, and the user.
    local unit
    for unit in "${units[@]}"; do
        sed -e "s|/usr/local/bin/agent|$prefix/bin/agent|" "$here/$unit" >"$tmp/$unit"
        if [[ -n $user ]]; then
            sed -i -e "s|^User=root\$|User=$user|" "$tmp/$unit"
        fi
        put "$tmp/$unit" "$unitdir/$unit" 0644
    done
    # Secrets, and files that may hold one, are 0600 and root's: the units
    # hand them to the agent with LoadCredential=.
    put_new "$here/agent.env" "$etc/agent.env" 0600
    put_new "$here/config.yaml" "$etc/config.yaml" 0600
    : >"$tmp/token"
    put_new "$tmp/token" "$etc/token" 0600
    # The JWT secret of `agent serve`, as `make serve` makes one.
    (umask 077 && head -c 32 /dev/urandom | base64 >"$tmp/secret")
    put_new "$tmp/secret" "$etc/auth-token-secret" 0600

    if [[ -n $user ]]; then
        if [[ -n $dest ]]; then
            say "user $user: not created under DESTDIR; the units run as $user, so the package that installs them creates it"
        elif getent passwd "$user" >/dev/null; then
            say "user $user: exists, used as it is"
        else
            # A home in /home: jobs work in HOME (checkouts, caches,
            # ~/.ssh for SSH into a job, which also needs a login shell).
            # In the docker group when there is one: compose jobs need the
            # engine (that group is as good as root on this host).
            local groups=()
            if getent group docker >/dev/null; then
                groups=(--groups docker)
            fi
            useradd --system --create-home --home-dir "/home/$user" --shell /bin/bash \
                "${groups[@]}" "$user"
            recorded user "$user" || records+=("user"$'\t'"$user")
            say "user $user: created (home /home/$user${groups:+, in group docker})"
        fi
    fi

    make_dir "$(dirname "$manifest")"
    # Sorted: installing twice writes the same record.
    printf '%s\n' "${records[@]}" | sort >"$dest$manifest"
    chmod 0644 "$dest$manifest"
    say "recorded in $dest$manifest (make uninstall reads it)"
    if systemd_here; then
        systemctl daemon-reload
    fi
}

uninstall_all() {
    [[ -f $dest$manifest ]] || fail "$dest$manifest is missing: nothing recorded, nothing removed"
    mapfile -t records <"$dest$manifest"
    local r kind path sum unit dirs=()
    if systemd_here; then
        for unit in "${units[@]}"; do
            if recorded file "$unitdir/$unit"; then
                systemctl disable --now "$unit" 2>/dev/null || true
            fi
        done
    fi
    for r in "${records[@]}"; do
        IFS=$'\t' read -r kind path sum <<<"$r"
        case $kind in
        file)
            if [[ ! -e $dest$path ]]; then
                continue
            elif [[ $(sha256sum <"$dest$path" | cut -d' ' -f1) == "$sum" ]]; then
                rm -f "$dest$path"
                say "removed $dest$path"
            else
                say "kept $dest$path: changed since make install"
            fi
            ;;
        dir) dirs+=("$path") ;;
        user) say "kept user $path (make install created it): userdel $path removes it, its home /home/$path is yours to remove" ;;
        *) fail "$dest$manifest: a line it cannot read: $r" ;;
        esac
    done
    rm -f "$dest$manifest"
    # Children before parents: in reverse order of their names.
    while IFS= read -r path; do
        [[ -n $path && -d $dest$path ]] || continue
        if rmdir "$dest$path" 2>/dev/null; then
            say "removed $dest$path/"
        else
            say "kept $dest$path/: not empty"
        fi
    done < <(printf '%s\n' "${dirs[@]}" | sort -r)
    if systemd_here; then
        systemctl daemon-reload
    fi
}

case $action in
install) install_all ;;
uninstall) uninstall_all ;;
*) fail "usage: dist/install.sh install|uninstall" ;;
esac
