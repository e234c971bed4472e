#!/usr/bin/env bash
# Builds the local images the Docker tests run jobs in. Nothing is pulled: the
# images are made from this host's files and its Debian mirror.
#
#   agent-test/bash:1    FROM scratch: busybox-static (/bin/busybox and a link
#                        in /bin for every applet), bash-static as /bin/bash,
#                        users root and runner (1000), /tmp 1777.
#   agent-test/nobash:1  the same without bash, for the "no bash" failure.
#   agent-test/git:1     debootstrap minbase bookworm + git, ca-certificates.
#   agent-test/dind:1    git:1 plus the host's docker CLI, for jobs that talk
#                        to the host engine through /var/run/docker.sock.
#   agent-test/compose:1 dind:1 plus Debian's docker-compose (v1), for jobs
#                        that run `docker-compose up` through their gate.
#
# Usage: images.sh [--rebuild] [--check] [bash|nobash|git|dind|compose]...
#   With no names, all five. An image whose tag exists with the current recipe
#   (label org.agent-test.recipe) is kept; --rebuild builds it again. Every
#   image built is smoke-tested; --check also tests the ones kept.
#
# The debootstrap result is cached as a tarball in $AGENT_TEST_CACHE
# (default /var/cache/agent-test), so rebuilding git:1 (even with --rebuild)
# does not bootstrap again; delete the tarball to bootstrap afresh. The
# bootstrap runs there too, so that folder must allow device files (not a
# nodev mount).
# $AGENT_TEST_MIRROR overrides the mirror read from /etc/apt.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
. "$here/lib.sh"

SUITE=bookworm
CACHE=${AGENT_TEST_CACHE:-/var/cache/agent-test}
PATH_IN_IMAGE=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Bump an image's recipe when what goes into it changes; the next run then
# rebuilds it even though the tag exists.
declare -A RECIPE=([bash]=1 [nobash]=1 [git]=1 [dind]=1 [compose]=1)
declare -A TAG=(
    [bash]=agent-test/bash:1
    [nobash]=agent-test/nobash:1
    [git]=agent-test/git:1
    [dind]=agent-test/dind:1
    [compose]=agent-test/compose:1
)
ROOTFS_TAR=$CACHE/$SUITE-minbase-git.r${RECIPE[git]}.tar

rebuild='' check='' wanted=()
for arg in "$@"; do
    case $arg in
    --rebuild) rebuild=1 ;;
    --check) check=1 ;;
    bash | nobash | git | dind | compose) wanted+=("$arg") ;;
    -h | --help)
        sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $arg (try --help)" ;;
    esac
done
((${#wanted[@]})) || wanted=(bash nobash git dind compose)

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "docker engine not reachable"

# The legacy builder: this CLI has no buildx, and scratch images need nothing
# else. Set explicitly so the CLI does not look for BuildKit.
export DOCKER_BUILDKIT=0

mkdir -p "$CACHE"
# One build at a time, whoever starts it (tests may call this in parallel).
exec 9>"$CACHE/images.lock"
flock 9

work=$(mktemp -d "$CACHE/work.XXXXXX")
cleanup() {
    local m
    # debootstrap mounts proc and sys in the target; never leave them behind.
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
        while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DOCKER_CLI=$(readlink -f "$(command -v docker)")
# The CLI Debian ships is a dynamically linked Go binary (it needs libc), so
# dind goes on the glibc root filesystem of git:1; a static one would do on
# bash:1.
if ldd "$DOCKER_CLI" 2>&1 | grep -qE 'not a dynamic executable|statically linked'; then
    DIND_BASE=bash
else
    DIND_BASE=git
fi

# What an image is made from, as its label org.agent-test.recipe records it:
# the recipe number, and for dind also the base image and the CLI it copies.
recipe_id() {
    local name=$1 base
    case $name in
    dind)
        base=$(docker image inspect -f '{{.Id}}' "${TAG[$DIND_BASE]}" 2>/dev/null) || base=none
        base=${base#sha256:}
        printf '%s-%s-%s\n' "${RECIPE[dind]}" "${base:0:16}" "$(sha256sum <"$DOCKER_CLI" | cut -c1-16)"
        ;;
    compose)
        base=$(docker image inspect -f '{{.Id}}' "${TAG[dind]}" 2>/dev/null) || base=none
        base=${base#sha256:}
        printf '%s-%s\n' "${RECIPE[compose]}" "${base:0:16}"
        ;;
    *) printf '%s\n' "${RECIPE[$name]}" ;;
    esac
}

# True if the tag exists and was built from the current recipe.
is_current() {
    local name=$1 have
    have=$(docker image inspect -f '{{index .Config.Labels "org.agent-test.recipe"}}' \
        "${TAG[$name]}" 2>/dev/null) || return 1
    [[ $have == "$(recipe_id "$name")" ]]
}

# docker build, quiet unless it fails (the CLI warns that the legacy builder
# is deprecated on every build).
docker_build() {
    local tag=$1 ctx=$2
    if ! docker build -t "$tag" "$ctx" >"$work/build.log" 2>&1; then
        cat "$work/build.log" >&2
        die "docker build of $tag failed"
    fi
}

image_size() {
    docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.1f MB", $1 / 1e6 }'
}

# --- agent-test/bash:1 and agent-test/nobash:1 -------------------------------

# Writes the build context of the busybox images into $1; $2 is "bash" to add
# bash-static.
busybox_context() {
    local ctx=$1 with_bash=$2 root=$1/rootfs applet shell=/bin/sh
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp} "$ctx/home/runner"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"
    chmod 0755 "$ctx/home/runner"
    cp /bin/busybox "$root/bin/busybox"
    # What `busybox --install -s /bin` would do, done here so the build needs
    # no RUN step.
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    # For `#!/usr/bin/env bash` and friends.
    ln -s /bin/busybox "$root/usr/bin/env"
    if [[ $with_bash == bash ]]; then
        rm -f "$root/bin/bash"
        cp /bin/bash-static "$root/bin/bash"
        shell=/bin/bash
    fi
    cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:$shell
runner:x:1000:1000:runner:/home/runner:$shell
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<EOF
root:x:0:
runner:x:1000:
nogroup:x:65534:
EOF
    cat >"$root/etc/shadow" <<EOF
root:*:19000:0:99999:7:::
runner:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
    chmod 0640 "$root/etc/shadow"
    # The legacy builder keeps modes from the context; ownership comes from
    # --chown (default root).
    cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=1000:1000 home/runner /home/runner
ENV PATH=$PATH_IN_IMAGE
LABEL org.agent-test.recipe="$3"
CMD ["${shell##*/}"]
EOF
}

build_busybox_image() {
    local name=$1 ctx=$work/$1
    busybox_context "$ctx" "$name" "${RECIPE[$name]}"
    docker_build "${TAG[$name]}" "$ctx"
}
build_bash_image() { build_busybox_image bash; }
build_nobash_image() { build_busybox_image nobash; }

# --- agent-test/git:1 --------------------------------------------------------

# The first bookworm "deb" mirror in /etc/apt (deb822 .sources, then
# one-line .list files).
debian_mirror() {
    if [[ -n ${AGENT_TEST_MIRROR:-} ]]; then
        printf '%s\n' "$AGENT_TEST_MIRROR"
        return
    fi
    local files=() f uri
    for f in /etc/apt/sources.list.d/*.sources; do [[ -e $f ]] && files+=("$f"); done
    if ((${#files[@]})); then
        uri=$(awk -v suite="$SUITE" '
            function flush() {
                if (!done && uris != "" && enabled != "no" &&
                    (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, " "); print u[1]; done = 1
                }
                types = suites = uris = enabled = ""
            }
            FNR == 1 { flush() }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            {
                key = tolower($1); $1 = ""; sub(/^[ \t]+/, "")
                if (key == "types:") types = $0
                else if (key == "suites:") suites = $0
                else if (key == "uris:") uris = $0
                else if (key == "enabled:") enabled = tolower($0)
            }
            END { flush() }' "${files[@]}")
    fi
    if [[ -z ${uri:-} ]]; then
        files=()
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [[ -e $f ]] && files+=("$f"); done
        ((${#files[@]})) && uri=$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) while ($i !~ /\]$/) i++
                if ($i ~ /^\[/ || $i ~ /\]$/) i++
                if ($(i + 1) == suite) { print $i; exit }
            }' "${files[@]}")
    fi
    [[ -n ${uri:-} ]] || die "no '$SUITE' mirror found in /etc/apt; set AGENT_TEST_MIRROR"
    printf '%s\n' "$uri"
}

# Bootstraps the root filesystem and stores it as $ROOTFS_TAR.
make_rootfs_tar() {
    local mirror root=$work/rootfs t0
    mirror=$(debian_mirror)
    ensure_pkgs debootstrap
    log "debootstrap $SUITE (minbase, git) from $mirror"
    t0=$(now)
    # debootstrap creates device files in the root filesystem, which a
    # filesystem mounted nodev (or a container without mknod) refuses.
    if findmnt -no OPTIONS --target "$CACHE" 2>/dev/null | tr , '\n' | grep -qx nodev; then
        die "$CACHE is on a filesystem mounted nodev, where debootstrap cannot create device files;" \
            "set AGENT_TEST_CACHE to a folder on another filesystem (e.g. AGENT_TEST_CACHE=/var/tmp/agent-test)"
    fi
    if ! debootstrap --variant=minbase --include=git,ca-certificates \
        "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2
        [[ ! -f $root/debootstrap/debootstrap.log ]] || tail -n 30 "$root/debootstrap/debootstrap.log" >&2
        if grep -qiE 'mknod|device|Operation not permitted' "$work/debootstrap.log" \
            "$root/debootstrap/debootstrap.log" 2>/dev/null; then
            die "debootstrap failed: it cannot create device files under $CACHE;" \
                "set AGENT_TEST_CACHE to a folder on a filesystem that allows them (not nodev)," \
                "or run where mknod is permitted"
        fi
        die "debootstrap failed"
    fi
    log "debootstrap took $(since "$t0") s"
    # The same non-root user as in the busybox images.
    chroot "$root" useradd --create-home --uid 1000 --user-group --shell /bin/bash runner
    # What a test container does not need: package lists, caches, docs,
    # translations, device nodes (the engine provides /dev).
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/var/log/apt/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    find "$root/dev" -mindepth 1 -delete
    : >"$root/etc/hostname"
    t0=$(now)
    tar --numeric-owner --xattrs -C "$root" -cf "$ROOTFS_TAR.part" .
    mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    printf 'mirror=%s\nsuite=%s\nrecipe=%s\n' "$mirror" "$SUITE" "${RECIPE[git]}" >"$ROOTFS_TAR.info"
    log "cached $(du -h "$ROOTFS_TAR" | cut -f1) rootfs as $ROOTFS_TAR ($(since "$t0") s)"
    rm -rf --one-file-system "$root"
}

build_git_image() {
    if [[ -s $ROOTFS_TAR ]]; then
        log "using cached rootfs $ROOTFS_TAR"
    else
        make_rootfs_tar
    fi
    docker import \
        --change "ENV PATH=$PATH_IN_IMAGE" \
        --change 'CMD ["bash"]' \
        --change "LABEL org.agent-test.recipe=${RECIPE[git]}" \
        --message "debootstrap --variant=minbase --include=git,ca-certificates $SUITE" \
        - "${TAG[git]}" <"$ROOTFS_TAR" >/dev/null
}

# --- agent-test/dind:1 -------------------------------------------------------

build_dind_image() {
    local ctx=$work/dind
    is_current "$DIND_BASE" || die "dind needs ${TAG[$DIND_BASE]} first"
    mkdir -p "$ctx"
    cp "$DOCKER_CLI" "$ctx/docker"
    cat >"$ctx/Dockerfile" <<EOF
FROM ${TAG[$DIND_BASE]}
COPY docker /usr/bin/docker
ENV DOCKER_HOST=unix:///var/run/docker.sock
LABEL org.agent-test.recipe="$(recipe_id dind)"
CMD ["bash"]
EOF
    docker_build "${TAG[dind]}" "$ctx"
}

# --- agent-test/compose:1 ----------------------------------------------------

# The image's own apt sources are the mirror git:1 was bootstrapped from; the
# build's RUN step reaches it as debootstrap did.
build_compose_image() {
    local ctx=$work/compose
    is_current dind || die "compose needs ${TAG[dind]} first"
    mkdir -p "$ctx"
    cat >"$ctx/Dockerfile" <<EOF
FROM ${TAG[dind]}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --no-install-recommends docker-compose >/dev/null && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
LABEL org.agent-test.recipe="$(recipe_id compose)"
CMD ["bash"]
EOF
    docker_build "${TAG[compose]}" "$ctx"
}

# --- smoke tests -------------------------------------------------------------

# Runs a command in the image and compares its output.
expect() {
    local want=$1 got
    shift
    got=$(docker run --rm "$@" 2>&1) || die "docker run $* failed: $got"
    [[ $got == "$want" ]] || die "docker run $*: expected '$want', got '$got'"
}

# The commands are for the container's shell, hence single quotes.
# shellcheck disable=SC2016
smoke_test() {
    local name=$1 tag=${TAG[$1]} out
    case $name in
    nobash)
        expect ok "$tag" sh -c 'echo ok'
        expect 'runner /home/runner 1000' -u runner "$tag" sh -c 'echo $(whoami) $HOME $(id -u)'
        # What the failure test relies on: no bash anywhere on PATH.
        if docker run --rm "$tag" bash -c true >/dev/null 2>&1; then
            die "$tag runs bash"
        fi
        ;;
    *)
        expect "ok
smoke-host" --hostname smoke-host "$tag" bash -c 'echo ok; hostname; [ -t 1 ] || true'
        expect 'runner /home/runner 1000 writable' -u runner "$tag" \
            bash -c 'echo $(whoami) ~ $(id -u) $(touch ~/x /tmp/x && echo writable)'
        expect env-ok "$tag" bash -c 'echo "#!/usr/bin/env bash" >/tmp/s; echo "echo \${BASH_VERSION:+env-ok}" >>/tmp/s; chmod +x /tmp/s; /tmp/s'
        # With a terminal, as `docker run -it` gives it: `script` supplies
        # the outer one.
        out=$(script -qec "docker run --rm -it $tag bash -c '[ -t 0 ] && [ -t 1 ] && echo tty-ok; tty'" /dev/null </dev/null 2>&1 | tr -d '\r')
        [[ $out == *tty-ok*/dev/pts/* ]] || die "$tag with -it: got '$out'"
        ;;
    esac
    case $name in
    git)
        expect 'git version ok' "$tag" bash -c 'git --version | sed "s/ [0-9.]*$/ ok/"'
        expect ok "$tag" bash -c 'cd /tmp && git init -q r && cd r && git -c user.name=a -c user.email=a@b commit -q --allow-empty -m m && echo ok'
        ;;
    dind)
        expect ok -v /var/run/docker.sock:/var/run/docker.sock "$tag" \
            bash -c 'docker version -f "{{.Server.Version}}" >/dev/null && echo ok'
        ;;
    compose)
        expect ok "$tag" bash -c 'docker-compose version >/dev/null && echo ok'
        ;;
    esac
}

# --- main ---------------------------------------------------------------------

ensure_pkgs busybox-static bash-static debootstrap git

# compose is made from dind, and dind from its base, so those come first
# whatever the order asked, and are built too if they are missing.
if [[ " ${wanted[*]} " == *" compose "* ]] && ! is_current dind; then
    wanted+=(dind)
fi
if [[ " ${wanted[*]} " == *" dind "* ]] && ! is_current "$DIND_BASE"; then
    wanted+=("$DIND_BASE")
fi
order=()
for name in bash nobash git dind compose; do
    [[ " ${wanted[*]} " != *" $name "* ]] || order+=("$name")
done

total=$(now)
for name in "${order[@]}"; do
    tag=${TAG[$name]}
    if [[ -z $rebuild ]] && is_current "$name"; then
        log "$tag exists ($(image_size "$tag")), kept"
        [[ -z $check ]] || smoke_test "$name"
        continue
    fi
    old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null) || old_id=
    t0=$(now)
    "build_${name}_image"
    # The image the tag named before a rebuild, unless something still uses it.
    if [[ -n $old_id && $old_id != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
        docker rmi "$old_id" >/dev/null 2>&1 || true
    fi
    log "$tag built in $(since "$t0") s ($(image_size "$tag"))"
    t0=$(now)
    smoke_test "$name"
    log "$tag smoke-tested in $(since "$t0") s"
done
log "done in $(since "$total") s"
