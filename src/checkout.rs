//! `checkout`, a bash function defined in every job's session (it must
//! `cd`, so it cannot be a program). It follows the toolbox's environment
//! contract: `SEMAPHORE_GIT_URL`, `SEMAPHORE_GIT_SHA`, `SEMAPHORE_GIT_DIR`
//! (default: the repository's name), `SEMAPHORE_GIT_DEPTH` (default 50),
//! `SEMAPHORE_GIT_REF_TYPE` (`branch`, the default, with
//! `SEMAPHORE_GIT_BRANCH`; `tag` with `SEMAPHORE_GIT_TAG_NAME`;
//! `pull-request` with `SEMAPHORE_GIT_REF` or `SEMAPHORE_GIT_PR_NUMBER`).
//!
//! It fetches the ref shallowly, fetches the SHA itself (or the whole
//! history of the ref) when the shallow fetch does not reach it, checks out
//! exactly the SHA and leaves the session in the checkout directory. With
//! `--use-cache` the `.git` directory comes from the job cache first (key
//! `checkout-DIR@UNIXTIME`, the newest that matches `checkout-DIR@`), and is
//! stored there when it was not, or again, under a new time, once the
//! stored one is `SEMAPHORE_GIT_CACHE_AGE` seconds old (default 259200,
//! three days, as the toolbox); the older key is then deleted. A directory
//! that has a `.git` already leaves the cache alone. It needs only
//! `git` (and, for `--use-cache`, the agent's `cache`).
//!
//! This module is the function's text; it knows nothing of sessions.

/// The definition, sourced into the session before the job's commands.
pub const FUNCTION: &str = r#"checkout() {
  local use_cache='' start="$PWD"
  case "${1:-}" in
    '') ;;
    --use-cache) use_cache=1 ;;
    *) echo "checkout: unknown option '$1' (usage: checkout [--use-cache])" >&2; return 2 ;;
  esac
  local need
  for need in SEMAPHORE_GIT_URL SEMAPHORE_GIT_SHA; do
    if [ -z "${!need:-}" ]; then
      echo "checkout: $need is not set" >&2; return 1
    fi
  done
  local url="$SEMAPHORE_GIT_URL" sha="$SEMAPHORE_GIT_SHA"
  local ref_type="${SEMAPHORE_GIT_REF_TYPE:-branch}" src dst what
  case "$ref_type" in
    branch)
      if [ -z "${SEMAPHORE_GIT_BRANCH:-}" ]; then
        echo "checkout: SEMAPHORE_GIT_BRANCH is not set" >&2; return 1
      fi
      src="refs/heads/$SEMAPHORE_GIT_BRANCH"; dst="refs/remotes/origin/$SEMAPHORE_GIT_BRANCH"
      what="branch '$SEMAPHORE_GIT_BRANCH'" ;;
    tag)
      if [ -z "${SEMAPHORE_GIT_TAG_NAME:-}" ]; then
        echo "checkout: SEMAPHORE_GIT_TAG_NAME is not set" >&2; return 1
      fi
      src="refs/tags/$SEMAPHORE_GIT_TAG_NAME"; dst="$src"
      what="tag '$SEMAPHORE_GIT_TAG_NAME'" ;;
    pull-request)
      if [ -n "${SEMAPHORE_GIT_REF:-}" ]; then
        src="$SEMAPHORE_GIT_REF"
      elif [ -n "${SEMAPHORE_GIT_PR_NUMBER:-}" ]; then
        src="refs/pull/$SEMAPHORE_GIT_PR_NUMBER/head"
      else
        echo "checkout: SEMAPHORE_GIT_REF or SEMAPHORE_GIT_PR_NUMBER is not set" >&2; return 1
      fi
      dst="refs/remotes/origin/pull-request"; what="pull request ref '$src'" ;;
    *)
      echo "checkout: unknown SEMAPHORE_GIT_REF_TYPE '$ref_type' (branch, tag or pull-request)" >&2
      return 1 ;;
  esac
  local name="${url%/}"; name="${name##*/}"; name="${name##*:}"; name="${name%.git}"
  local dir="${SEMAPHORE_GIT_DIR:-$name}" depth="${SEMAPHORE_GIT_DEPTH:-50}"
  if [ -z "$dir" ]; then
    echo "checkout: cannot tell the directory from '$url'; set SEMAPHORE_GIT_DIR" >&2; return 1
  fi
  if ! command -v git >/dev/null 2>&1; then
    echo "checkout: git is not installed" >&2; return 1
  fi
  mkdir -p -- "$dir" && cd -- "$dir" || { echo "checkout: cannot enter '$dir'" >&2; return 1; }
  local key="checkout-${dir//[^A-Za-z0-9_-]/-}@" cached='' cached_at='' out
  if [ -n "$use_cache" ] && [ -d .git ]; then
    echo "checkout: $PWD has a .git already; the cache is left alone"
    use_cache=''
  fi
  if [ -n "$use_cache" ]; then
    out="$(cache restore "$key")"; printf '%s\n' "$out"
    if [[ "$out" =~ HIT:\ \'[^\']*\',\ using\ key\ \'(checkout-[^\']*@([0-9]+))\'\. ]] && [ -d .git ]; then
      cached="${BASH_REMATCH[1]}"; cached_at="${BASH_REMATCH[2]}"
    fi
  fi
  if [ ! -d .git ]; then
    git -c init.defaultBranch=checkout init -q . || { cd -- "$start"; return 1; }
  fi
  git remote remove origin >/dev/null 2>&1
  git remote add origin "$url" || { cd -- "$start"; return 1; }
  echo "checkout: fetching $what of $url into $PWD (depth $depth)"
  if ! git fetch -q --no-tags --depth="$depth" origin "+$src:$dst"; then
    echo "checkout: cannot fetch $what from $url" >&2; cd -- "$start"; return 1
  fi
  if ! git cat-file -e "$sha^{commit}" 2>/dev/null; then
    echo "checkout: $sha is deeper than $depth commits; fetching it"
    git fetch -q --no-tags --depth="$depth" origin "$sha" 2>/dev/null ||
      git fetch -q --no-tags --unshallow origin "+$src:$dst" 2>/dev/null ||
      git fetch -q --no-tags origin "+$src:$dst" 2>/dev/null
  fi
  if ! git cat-file -e "$sha^{commit}" 2>/dev/null; then
    echo "checkout: commit $sha is not in $what of $url" >&2; cd -- "$start"; return 1
  fi
  if [ "$ref_type" = branch ]; then
    git checkout -q -f -B "$SEMAPHORE_GIT_BRANCH" "$sha"
  else
    git checkout -q -f --detach "$sha"
  fi || { echo "checkout: cannot check out $sha" >&2; cd -- "$start"; return 1; }
  if [ "$ref_type" = tag ]; then
    git fetch -q --no-tags --depth="$depth" origin "+$src:$src" 2>/dev/null
  fi
  echo "checkout: HEAD is $(git rev-parse HEAD) in $PWD"
  if [ -n "$use_cache" ]; then
    local now="${EPOCHSECONDS:-$(date +%s)}" max_age="${SEMAPHORE_GIT_CACHE_AGE:-259200}"
    if [ -z "$cached" ]; then
      cache store "$key$now" .git
    elif [ $((now - cached_at)) -ge "$max_age" ]; then
      echo "checkout: the cached .git is $((now - cached_at))s old (SEMAPHORE_GIT_CACHE_AGE=$max_age); refreshing it"
      cache store "$key$now" .git
      if [ "$key$now" != "$cached" ] && cache has_key "$key$now" >/dev/null; then
        cache delete "$cached"
      fi
    fi
  fi
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_is_valid_bash() {
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg("-c")
            .arg(FUNCTION)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
