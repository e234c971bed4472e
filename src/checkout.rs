//! `checkout`, the toolbox's `libcheckout` as one bash function defined in
//! every job's session and its SSH jump point (it must `cd`, so it cannot be
//! a program). Its output and exit status are libcheckout's, line for line,
//! git's own lines included: the branch flow (shallow clone of
//! `SEMAPHORE_GIT_BRANCH`, else a full clone), tags, pull requests, the
//! optimized flow (partial clone, cone-mode sparse checkout), `--use-cache`
//! (the `git-cache-` keys shared with toolbox-driven jobs), the toolbox's
//! retries and its metric line.
//!
//! Where the toolbox is unsafe or wasteful it does better without printing
//! anything else: values of `SEMAPHORE_GIT_*` never reach git or the shell
//! as an option or as code (a SHA is hex, names pass `git check-ref-format`,
//! the directory stays below the current one; a refused value is one
//! `checkout: ...` line on stderr and status 1, before anything is removed),
//! commands run as argv (the toolbox's `retry` evaluates a joined string), a
//! SHA deeper than the depth is fetched by itself before the whole history,
//! a restored cache of another repository is not used, and
//! `CACHE_FAIL_ON_ERROR` is set for the `cache` calls only.
//!
//! Its helpers are defined inside it, so that `declare -f checkout` or
//! `export -f checkout` carries everything, and removed before it returns.
//! It needs `git` (and `cache` for `--use-cache`). This module is the
//! function's text; it knows nothing of sessions.

/// The definition, sourced into the session before the job's commands.
pub const FUNCTION: &str = r#"checkout() {
  # The helpers are defined here, not beside checkout, so that the one
  # function carries everything (`declare -f checkout`, `export -f
  # checkout`); they are removed again before checkout returns. They share
  # checkout's locals through bash's dynamic scope.

  # Runs a command (argv, never a joined string) up to 3 times, no delay,
  # printing the toolbox's `retry` lines.
  __checkout_retry() {
    local attempt status=0
    for attempt in 1 2 3; do
      "$@" && return 0
      status=$?
      if [ "$attempt" -lt 3 ]; then
        echo "[$attempt/3] Execution Failed with exit status $status. Retrying."
      else
        echo "[$attempt/3] Execution Failed with exit status $status. No more retries."
      fi
    done
    return "$status"
  }

  # Every clone: `git clone ARGS` retried as the toolbox's `retry` does,
  # or with SEMAPHORE_GIT_CLONE_SLOW_RETRY=true watched for slowness and
  # tried against other GitHub addresses.
  __checkout_clone() {
    if [ "$slow_retry" = true ]; then
      __checkout_resilient_clone "$@"
    else
      __checkout_retry git clone "$@"
    fi
  }

  # Runs a clone in the background and measures the checkout directory
  # every 5 s; a clone slower than the threshold for the slow timeout is
  # killed. Status: 0 cloned, 1 killed as slow, 2 failed.
  __checkout_watched() {
    local pid size previous=0 slow=0 speed second
    "$@" &
    pid=$!
    while :; do
      # The toolbox sleeps 5 s; this ends the wait when the clone does.
      for ((second = 0; second < 5; second++)); do
        kill -0 "$pid" 2>/dev/null || break 2
        sleep 1
      done
      kill -0 "$pid" 2>/dev/null || break
      size="$(du -sk -- "$dir" 2>/dev/null)"
      size="${size%%[!0-9]*}"
      if [ "${size:-0}" -gt 0 ]; then
        speed=$(((size - previous) * 1024 / 5))
        previous=$size
        if [ "$speed" -lt "$slow_threshold" ]; then
          slow=$((slow + 5))
          if [ "$slow" -ge "$slow_timeout" ]; then
            echo "[checkout] Slow clone detected ($speed bytes/sec for ${slow}s)"
            kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            return 1
          fi
        else
          slow=0
        fi
      fi
    done
    wait "$pid" && return 0
    return 2
  }

  # The toolbox's slow-clone mode: a few watched attempts, then the same
  # clone through other addresses of github.com (found with DNS queries
  # made as from other regions), by curl's resolve list for https and an
  # ssh ProxyCommand otherwise.
  __checkout_resilient_clone() {
    local attempt status host port rest current region answer ip ips=() tried=0
    for ((attempt = 1; attempt <= clone_attempts; attempt++)); do
      __checkout_watched git clone "$@"
      status=$?
      [ "$status" -eq 0 ] && return 0
      if [ "$attempt" -lt "$clone_attempts" ]; then
        if [ "$status" -eq 1 ]; then
          echo "[checkout] Slow clone detected, retrying... (attempt $attempt/$clone_attempts)"
        else
          echo "[checkout] Clone failed, retrying... (attempt $attempt/$clone_attempts)"
        fi
        rm -rf -- "$dir"
        sleep 2
      fi
    done
    echo "[checkout] Clone failed after $clone_attempts attempts, trying alternative endpoints..."
    case "$url" in
      https://*)
        host="${url#https://}"
        host="${host%%/*}"
        port=443 ;;
      ssh://*)
        rest="${url#ssh://}"
        rest="${rest#*@}"
        if [[ $rest =~ ^[^/]+:[0-9]+ ]]; then
          host="${rest%%:*}"
          port="${rest#*:}"
          port="${port%%/*}"
        else
          host="${rest%%/*}"
          port=22
        fi ;;
      *)
        rest="${url#*@}"
        host="${rest%%:*}"
        port=22 ;;
    esac
    if [ "$host" != github.com ]; then
      echo "[checkout] Alternative endpoint fallback only supported for github.com (got: $host)"
      return 1
    fi
    # The port goes into an ssh ProxyCommand, which a shell runs.
    if ! [[ $port =~ ^[0-9]+$ ]]; then
      __checkout_refuse "SEMAPHORE_GIT_URL has no usable port for an alternative endpoint: '$port'"
      return
    fi
    current="$(dig +short "$host")"
    current="${current%%$'\n'*}"
    local -a regions
    IFS=, read -r -a regions <<<"$alt_regions"
    for region in ${regions[@]+"${regions[@]}"}; do
      answer="$(curl -sf "https://dns.google/resolve?name=$host&type=A&edns_client_subnet=$region")"
      # Only an IPv4 address is used: it goes into a command too.
      if [[ $answer =~ \"data\":\"([^\"]*)\" ]] && ip="${BASH_REMATCH[1]}" &&
        [[ $ip =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] && [ "$ip" != "$current" ]; then
        ips+=("$ip")
      fi
    done
    if [ ${#ips[@]} -eq 0 ]; then
      echo "[checkout] No alternative endpoints found"
      return 1
    fi
    mapfile -t ips < <(printf '%s\n' "${ips[@]}" | sort -u)
    for ip in "${ips[@]}"; do
      tried=$((tried + 1))
      [ "$tried" -gt "$alt_attempts" ] && break
      echo "[checkout] Switching to alternative GitHub endpoint ($ip)"
      rm -rf -- "$dir"
      if [[ $url == https://* ]]; then
        __checkout_watched git -c "http.curloptResolve=$host:$port:$ip" clone "$@" && return 0
      else
        GIT_SSH_COMMAND="${GIT_SSH_COMMAND:-ssh} -o ProxyCommand='nc $ip $port'" \
          __checkout_watched git clone "$@" && return 0
      fi
      echo "[checkout] Alternative endpoint ($ip) also slow, trying next..."
    done
    echo "[checkout] All clone attempts failed"
    return 1
  }

  # Appends the toolbox's metric line when metrics are on. $1: a size in
  # KiB; none means the size of the current directory.
  __checkout_metric() {
    [ "${SEMAPHORE_TOOLBOX_METRICS_ENABLED:-}" = true ] || return 0
    local size="${1-}" status=fail
    if [ $# -eq 0 ]; then
      size="$(du -s . 2>/dev/null)"
      size="${size%%[!0-9]*}"
    fi
    [ "${size:-0}" -gt 0 ] && status=success
    echo "libcheckout,provider=${SEMAPHORE_GIT_PROVIDER:-},reftype=${SEMAPHORE_GIT_REF_TYPE:-},status=$status size=$size" >>/tmp/toolbox_metrics
  }

  # Prints why a value is refused; checkout then returns 1.
  __checkout_refuse() {
    echo "checkout: $1" >&2
    return 1
  }

  # Whether $1 is a path checkout may clone into and remove: relative,
  # not the current directory, no `..` component, no leading `-`.
  __checkout_safe_dir() {
    local path="/$1/"
    case "$1" in '' | /* | -*) return 1 ;; esac
    case "$path" in */../*) return 1 ;; esac
    while [[ $path == *//* || $path == */./* ]]; do
      path="${path//\/\//\/}"
      path="${path//\/.\//\/}"
    done
    [ "$path" != / ]
  }

  # Whether $1 (a branch, tag or ref name, after $2) is a ref git accepts
  # and cannot be read as an option.
  __checkout_safe_ref() {
    case "$1" in -*) return 1 ;; esac
    git check-ref-format --allow-onelevel "$2$1" 2>/dev/null
  }

  __checkout_enter() {
    CDPATH='' cd -- "$1"
  }

  # The toolbox's revision check: the SHA is known here (the commits
  # between HEAD and it are listed).
  __checkout_revision() {
    if ! git rev-list "HEAD..$sha" 2>/dev/null; then
      echo "Revision: $sha not found .... Exiting"
      return 1
    fi
  }

  # After a shallow clone that does not have the SHA: fetch the SHA itself
  # and the branch's history back to it, and keep that if the SHA is on the
  # branch. Otherwise the toolbox's whole-history fetch. Either way what
  # the SHA has to be on is the cloned branch.
  __checkout_deepen() {
    local by_sha='' since head
    if [[ $sha =~ ^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})$ ]] &&
      [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ] &&
      git fetch -q --no-tags ${fetch_opts[@]+"${fetch_opts[@]}"} --depth "$depth" origin "$sha" >/dev/null 2>&1; then
      by_sha=1
      # The branch's history back to the oldest commit fetched with the
      # SHA (a later date would cut the SHA's own history). HEAD's commit
      # is asked for by name: a plain `git fetch` would want only the SHA.
      since="$(git log --format=%ct "$sha" 2>/dev/null | sort -n | head -n 1)"
      if [ -n "$since" ] && head="$(git rev-parse HEAD)" &&
        git fetch -q ${fetch_opts[@]+"${fetch_opts[@]}"} --shallow-since="@$since" origin "$head" >/dev/null 2>&1 &&
        git merge-base --is-ancestor "$sha" HEAD 2>/dev/null; then
        return 0
      fi
    fi
    __checkout_retry git fetch ${fetch_opts[@]+"${fetch_opts[@]}"} --unshallow
    # A SHA fetched by itself is here whatever branch it is on: the
    # toolbox's check, which asks only that, would pass.
    if [ -n "$by_sha" ] && ! git merge-base --is-ancestor "$sha" HEAD 2>/dev/null; then
      echo "Revision: $sha not found .... Exiting"
      return 1
    fi
    __checkout_revision
  }

  __checkout_sparse() {
    [ -n "$sparse" ] || return 0
    local paths=()
    read -r -d '' -a paths <<<"$sparse"
    echo "Configuring sparse-checkout for paths: $sparse"
    git sparse-checkout init --cone
    git sparse-checkout set "${paths[@]}"
  }

  # A branch (or a tag named as the branch): shallow clone of it, else a
  # full clone and a checkout of the name.
  __checkout_branch() {
    if __checkout_clone ${clone_opts[@]+"${clone_opts[@]}"} --depth "$depth" -b "$branch" -- "$url" "$dir"; then
      __checkout_enter "$dir" || return 1
      __checkout_sparse
      if ! git reset --hard "$sha" 2>/dev/null; then
        echo "SHA: $sha not found performing full clone"
        __checkout_deepen || return 1
        git reset --hard "$sha" 2>/dev/null
      fi
    else
      echo "Branch not found performing full clone"
      __checkout_clone ${clone_opts[@]+"${clone_opts[@]}"} -- "$url" "$dir"
      __checkout_enter "$dir" || return 1
      __checkout_sparse
      if ! git checkout -f "$branch"; then
        echo "Branch: $branch not found .... Exiting"
        return 1
      fi
      __checkout_revision || return 1
      git reset --hard "$sha" 2>/dev/null
    fi
    __checkout_metric
  }

  # A pull request: its ref fetched into FETCH_HEAD and checked out. $1 is
  # `optimized` in the optimized flow (a failed clone fails, a metric).
  __checkout_pull_request() {
    if ! __checkout_clone ${clone_opts[@]+"${clone_opts[@]}"} --depth "$depth" -- "$url" "$dir" &&
      [ "$1" = optimized ]; then
      echo "Revision: $sha not found .... Exiting"
      return 1
    fi
    __checkout_enter "$dir" || return 1
    __checkout_sparse
    if __checkout_retry git fetch ${fetch_opts[@]+"${fetch_opts[@]}"} --depth "$depth" origin "+$ref:" 2>/dev/null ||
      __checkout_retry git fetch ${fetch_opts[@]+"${fetch_opts[@]}"} origin "+$ref:" 2>/dev/null; then
      git checkout -qf FETCH_HEAD
      echo "HEAD is now at $sha"
      if [ "$1" = optimized ]; then __checkout_metric; fi
      return 0
    fi
    echo "Revision: $sha not found .... Exiting"
    return 1
  }

  __checkout_tag() {
    if ! __checkout_clone ${clone_opts[@]+"${clone_opts[@]}"} --depth "$depth" -b "$tag" -- "$url" "$dir"; then
      echo "Release $tag not found .... Exiting"
      return 1
    fi
    __checkout_enter "$dir" || return 1
    __checkout_sparse
    git checkout -qf "$tag"
    echo "HEAD is now at $sha Release $tag"
    if [ "$1" = optimized ]; then __checkout_metric; fi
    return 0
  }

  __checkout_by_ref_type() {
    case "$ref_type" in
      pull-request) __checkout_pull_request "$1" ;;
      tag) __checkout_tag "$1" ;;
      *)
        if [ "$1" != optimized ]; then echo "Performing shallow clone with depth: $depth"; fi
        __checkout_branch ;;
    esac
  }

  __checkout_optimized() {
    case "$(git sparse-checkout -h 2>&1)" in
      *"is not a git command"*)
        echo "Optimized checkout requested, but this git does not support 'sparse-checkout'; falling back to a standard checkout."
        sparse=''
        __checkout_by_ref_type ''
        return ;;
    esac
    if [ -n "$filter" ]; then
      clone_opts=("--filter=$filter")
      fetch_opts=("--filter=$filter")
    fi
    clone_opts+=(--no-checkout)
    echo "Performing optimized clone (filter: '${filter:-none}', sparse-paths: '${sparse:-none}', depth: $depth)"
    __checkout_by_ref_type optimized
  }

  # What the cache flow does once the repository is there.
  __checkout_switch_revision() {
    case "$ref_type" in
      pull-request)
        if ! __checkout_retry git fetch origin "+$ref:" 2>/dev/null; then
          echo "Reference: $ref not found .... Exiting"
          return 1
        fi ;;
      tag)
        if ! git checkout -qf "$tag"; then
          echo "Release $tag not found .... Exiting"
          return 1
        fi
        __checkout_metric
        echo "HEAD is now at $sha Release $tag"
        return 0 ;;
      *)
        if [ -n "$(git show-ref "$ref")" ]; then
          git checkout "$branch"
        else
          git checkout -b "$branch" -t "origin/$branch"
        fi ;;
    esac
    __checkout_revision || return 1
    git reset --hard "$sha" 2>/dev/null
    __checkout_metric
  }

  # The keys of `cache list` that hold git caches, in its order.
  __checkout_cache_keys() {
    local line
    CACHE_FAIL_ON_ERROR=true cache list 2>&1 | while IFS= read -r line; do
      case "$line" in *git-cache-*) read -r line _ <<<"$line" && echo "$line" ;; esac
    done
  }

  # Stores the checkout directory (from $1, the directory it is in) under
  # a new key, after deleting all but the newest $keep git caches when $2
  # is `refresh`.
  __checkout_cache_put() {
    local base="$1" keys=() key
    if [ "${2:-}" = refresh ]; then
      mapfile -t keys < <(__checkout_cache_keys)
      for key in ${keys[@]+"${keys[@]:$keep}"}; do
        CACHE_FAIL_ON_ERROR=true cache delete "$key"
      done
    fi
    (CDPATH='' builtin cd -- "$base" &&
      CACHE_FAIL_ON_ERROR=true cache store "git-cache-${SEMAPHORE_JOB_ID:-}-$(date +%s)" "$dir")
  }

  __checkout_cache_store() {
    local base="$1" newest stamp fields=() diff
    newest="$(__checkout_cache_keys | head -n 1)"
    IFS=- read -r -a fields <<<"$newest"
    stamp="${fields[7]:-}"
    if [[ $stamp =~ ^[0-9]+$ ]]; then
      diff=$(($(date +%s) - 10#$stamp))
      echo "diff: $diff"
      if ((diff > age)); then
        echo "Git cache outdated, refreshing..."
        __checkout_cache_put "$base" refresh
      else
        echo "Git cache up-to-data."
      fi
    else
      echo "No git cache... caching"
      __checkout_cache_put "$base"
    fi
    return 0
  }

  # `checkout --use-cache`: the newest `git-cache-` key of the cache (any
  # job's) restored, fetched into and checked out; stored again when there
  # was none or it is older than SEMAPHORE_GIT_CACHE_AGE.
  __checkout_cached() {
    local start="$PWD"
    if ! CACHE_FAIL_ON_ERROR=true cache restore git-cache-; then
      echo "Failed to restore from the cache"
      rm -rf -- "$dir"
    fi
    # The restore writes where the store read, relative to the current
    # directory (the toolbox looks under $HOME, the same place when it
    # runs from $HOME). A restored repository of another URL is no cache
    # of this one: the toolbox would fetch from that other repository.
    if [ -d "$dir" ] &&
      [ "$(git config --file "$dir/.git/config" --get remote.origin.url 2>/dev/null)" = "$url" ]; then
      echo "Restored cache"
      __checkout_enter "$dir" || return 1
      git remote prune origin
      __checkout_retry git fetch --tags origin
    else
      rm -rf -- "$dir"
      __checkout_clone -- "$url" "$dir"
      __checkout_enter "$dir" || return 1
    fi
    __checkout_switch_revision || return 1
    __checkout_cache_store "$start"
  }

  __checkout_main() {
    local IFS=$' \t\n'
    local url="${SEMAPHORE_GIT_URL:-}" branch="${SEMAPHORE_GIT_BRANCH:-}" sha="${SEMAPHORE_GIT_SHA:-}"
    if [ -z "$branch" ] || [ -z "$url" ] || [ -z "$sha" ]; then
      printf '%s\n' "[CHECKOUT ERROR] Some of these variables are unset:" \
        "SEMAPHORE_GIT_URL=$url" "SEMAPHORE_GIT_DIR=${SEMAPHORE_GIT_DIR:-}" \
        "SEMAPHORE_GIT_BRANCH=$branch" "SEMAPHORE_GIT_SHA=$sha"
      return 1
    fi
    local use_cache='' ref_type="${SEMAPHORE_GIT_REF_TYPE:-}" dir="${SEMAPHORE_GIT_DIR:-}"
    local depth="${SEMAPHORE_GIT_DEPTH:-50}" ref="${SEMAPHORE_GIT_REF:-}" tag="${SEMAPHORE_GIT_TAG_NAME:-}"
    local filter="${SEMAPHORE_GIT_PARTIAL_CLONE_FILTER:-}" sparse="${SEMAPHORE_GIT_SPARSE_CHECKOUT_PATHS:-}"
    local age="${SEMAPHORE_GIT_CACHE_AGE:-259200}" keep="${SEMAPHORE_GIT_CACHE_KEEP:-0}"
    local slow_retry="${SEMAPHORE_GIT_CLONE_SLOW_RETRY:-false}" clone_attempts="${SEMAPHORE_GIT_CLONE_RETRY_COUNT:-2}"
    local alt_attempts="${SEMAPHORE_GIT_CLONE_ALT_IP_RETRIES:-3}" slow_threshold="${SEMAPHORE_GIT_CLONE_SLOW_THRESHOLD:-20000}"
    local slow_timeout="${SEMAPHORE_GIT_CLONE_SLOW_TIMEOUT:-15}"
    local alt_regions="${SEMAPHORE_GIT_CLONE_ALT_REGIONS:-74.0.0.0/8,177.0.0.0/8,110.0.0.0/8}"
    local clone_opts=() fetch_opts=() paths=() path number
    if [ "${1:-}" = --use-cache ]; then use_cache=1; fi
    if ! command -v git >/dev/null 2>&1; then
      __checkout_refuse "git is not installed"
      return
    fi
    if ! [[ $sha =~ ^[0-9a-fA-F]{4,64}$ ]]; then
      __checkout_refuse "SEMAPHORE_GIT_SHA must be a commit's SHA in hex, not '$sha'"
      return
    fi
    if [ -n "$dir" ]; then
      if ! __checkout_safe_dir "$dir"; then
        __checkout_refuse "SEMAPHORE_GIT_DIR must be a relative path below the current directory (not '.', '..' or absolute, no '..' in it, not starting with '-'), not '$dir'"
        return
      fi
    else
      dir="${url%"${url##*[!/]}"}"
      dir="${dir##*/}"
      dir="${dir##*:}"
      dir="${dir%.git}"
      if ! __checkout_safe_dir "$dir"; then
        __checkout_refuse "SEMAPHORE_GIT_URL does not end in a usable directory name ('$dir'); set SEMAPHORE_GIT_DIR"
        return
      fi
    fi
    case "$ref_type" in
      pull-request)
        if [ -z "$ref" ] && [ -n "${SEMAPHORE_GIT_PR_NUMBER:-}" ]; then
          if ! [[ $SEMAPHORE_GIT_PR_NUMBER =~ ^[0-9]+$ ]]; then
            __checkout_refuse "SEMAPHORE_GIT_PR_NUMBER must be a number, not '$SEMAPHORE_GIT_PR_NUMBER'"
            return
          fi
          ref="refs/pull/$SEMAPHORE_GIT_PR_NUMBER/head"
        fi
        if [ -n "$ref" ] && ! __checkout_safe_ref "$ref" ''; then
          __checkout_refuse "SEMAPHORE_GIT_REF is not a valid ref name: '$ref'"
          return
        fi ;;
      tag)
        if [ -n "$tag" ] && ! __checkout_safe_ref "$tag" refs/tags/; then
          __checkout_refuse "SEMAPHORE_GIT_TAG_NAME is not a valid tag name: '$tag'"
          return
        fi ;;
      *)
        if ! __checkout_safe_ref "$branch" refs/heads/; then
          __checkout_refuse "SEMAPHORE_GIT_BRANCH is not a valid branch or tag name: '$branch'"
          return
        fi
        if [ -n "$use_cache" ] && [ -n "$ref" ] && ! __checkout_safe_ref "$ref" ''; then
          __checkout_refuse "SEMAPHORE_GIT_REF is not a valid ref name: '$ref'"
          return
        fi ;;
    esac
    if [ "$slow_retry" = true ]; then
      for number in SEMAPHORE_GIT_CLONE_RETRY_COUNT:"$clone_attempts" SEMAPHORE_GIT_CLONE_ALT_IP_RETRIES:"$alt_attempts" \
        SEMAPHORE_GIT_CLONE_SLOW_THRESHOLD:"$slow_threshold" SEMAPHORE_GIT_CLONE_SLOW_TIMEOUT:"$slow_timeout"; do
        if ! [[ ${number#*:} =~ ^[0-9]+$ ]]; then
          __checkout_refuse "${number%%:*} must be a number, not '${number#*:}'"
          return
        fi
      done
    fi
    if [ -n "$use_cache" ]; then
      if ! [[ $age =~ ^-?[0-9]+$ ]]; then
        __checkout_refuse "SEMAPHORE_GIT_CACHE_AGE must be a number of seconds, not '$age'"
        return
      fi
      if ! [[ $keep =~ ^[0-9]+$ ]]; then
        __checkout_refuse "SEMAPHORE_GIT_CACHE_KEEP must be a number of keys, not '$keep'"
        return
      fi
    else
      if ! [[ $depth =~ ^[1-9][0-9]*$ ]]; then
        __checkout_refuse "SEMAPHORE_GIT_DEPTH must be a positive number, not '$depth'"
        return
      fi
      read -r -d '' -a paths <<<"$sparse"
      for path in ${paths[@]+"${paths[@]}"}; do
        case "$path" in -*)
          __checkout_refuse "SEMAPHORE_GIT_SPARSE_CHECKOUT_PATHS has a path starting with '-': '$path'"
          return ;;
        esac
      done
    fi

    rm -rf -- "$dir"
    if [ -n "$use_cache" ]; then
      echo "[Experimental stability] Using cached Git repository."
      __checkout_cached
      return
    fi
    local status=0
    if [ -n "$filter$sparse" ]; then
      __checkout_optimized || status=$?
    else
      __checkout_by_ref_type '' || status=$?
    fi
    if [ "$status" -ne 0 ]; then __checkout_metric 0; fi
    return "$status"
  }

  local __checkout_status=0
  __checkout_main "$@" || __checkout_status=$?
  unset -f __checkout_retry __checkout_metric __checkout_refuse __checkout_safe_dir \
    __checkout_safe_ref __checkout_enter __checkout_revision __checkout_deepen \
    __checkout_sparse __checkout_branch __checkout_pull_request __checkout_tag \
    __checkout_by_ref_type __checkout_optimized __checkout_switch_revision \
    __checkout_cache_keys __checkout_cache_put __checkout_cache_store __checkout_cached \
    __checkout_clone __checkout_watched __checkout_resilient_clone __checkout_main
  return "$__checkout_status"
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn bash(script: &str) -> std::process::Output {
        std::process::Command::new("bash")
            .args(["--norc", "--noprofile", "-c", script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    }

    #[test]
    fn the_function_is_valid_bash() {
        let out = bash(&format!("set -n\n{FUNCTION}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn sourcing_it_defines_checkout_alone() {
        let out = bash(&format!("{FUNCTION}\ndeclare -F"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "declare -f checkout\n"
        );
    }
}
