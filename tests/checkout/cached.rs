//! `checkout --use-cache` with the agent's `cache`: the toolbox's
//! `git-cache-<job id>-<unix time>` keys, what a miss stores, what a hit
//! fetches, the refresh of an outdated cache (`SEMAPHORE_GIT_CACHE_AGE`,
//! `SEMAPHORE_GIT_CACHE_KEEP`), and a restored repository of another URL,
//! which is not used.

use super::*;

/// The job ids of the tests, as Semaphore's (the toolbox reads the key's
/// time as its 8th `-`-separated field).
const JOB_A: &str = "0a0a0a0a-0000-4000-8000-00000000000a";
const JOB_B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";
const JOB_C: &str = "0c0c0c0c-0000-4000-8000-00000000000c";

/// Prints checkout's output with what changes from run to run replaced:
/// durations, sizes, the temporary file, the age, and the time in the
/// keys `jobs` store.
fn show(jobs: &[&str]) -> String {
    let keys: String = jobs
        .iter()
        .map(|id| format!("; s/(git-cache-{id})-[0-9]+/\\1-TIME/g"))
        .collect();
    format!(
        "sed -E 's/Duration: [0-9.]+[^ .]*\\./Duration: D./; s/Size: [^ ]+ bytes/Size: S bytes/; \
         s/^Unpacking .*/Unpacking .../; s/^diff: [0-9]+$/diff: N/{keys}'"
    )
}

/// A `--use-cache` case of job `id`, from `cwd`.
fn cached(id: &str, cwd: &str, vars: &[(&str, &str)], after: &str) -> String {
    case_in(cwd, vars, "--use-cache", &show(&[id]), after)
}

/// The keys `cache list` shows, in its order.
const KEYS: &str = "cache list | awk 'NR > 1 && NF { print $1 }'";

/// The cache CLI's lines for a store of `path` under `key`.
fn stored(path: &str, key: &str) -> Vec<String> {
    vec![
        format!("Compressing {path}..."),
        "Compression complete. Duration: D. Size: S bytes.".into(),
        format!("Uploading '{path}' with cache key '{key}'..."),
        "Upload complete. Duration: D.".into(),
    ]
}

/// The cache CLI's lines for a hit on `key` that restores `path`.
fn restored(key: &str, path: &str) -> Vec<String> {
    vec![
        format!("HIT: 'git-cache-', using key '{key}'."),
        format!("Downloading key '{key}'..."),
        "Download complete. Duration: D. Size: S bytes.".into(),
        "Unpacking ...".into(),
        "Unpack complete. Duration: D.".into(),
        format!("Restored: {path}/."),
    ]
}

const USING: &str = "[Experimental stability] Using cached Git repository.";

#[test]
fn a_miss_stores_the_checkout_and_a_hit_fetches_into_it() {
    let repo = Repo::make();
    let agent = agent();
    let key_a = format!("git-cache-{JOB_A}-TIME");
    let first = lines(
        &[
            vec![USING, "MISS: 'git-cache-'.", "Cloning into 'project'..."],
            vec![
                "Already on 'main'",
                "Your branch is up to date with 'origin/main'.",
                &format!("HEAD is now at {} c60", &repo.tip[..7]),
                "No git cache... caching",
            ],
            strs(&stored("project", &key_a)),
            vec!["exit 0 in ~/project", "CACHE_FAIL_ON_ERROR=unset", &key_a],
        ]
        .concat(),
    );
    run_cases(
        &agent,
        job("checkout-cache-miss", &repo).env("SEMAPHORE_JOB_ID", JOB_A),
        &[(
            cached(
                JOB_A,
                "~",
                &[],
                &format!(
                    "echo CACHE_FAIL_ON_ERROR=${{CACHE_FAIL_ON_ERROR-unset}}; {KEYS} | {}",
                    show(&[JOB_A])
                ),
            ),
            first,
        )],
    );

    // A new commit on main: the next job restores the clone and fetches it.
    let work = repo.scratch().join("work");
    fs::write(work.join("file.txt"), "61\n").unwrap();
    git(&work, &["checkout", "-q", "main"]);
    git(&work, &["commit", "-q", "-am", "c61"]);
    git(&work, &["push", "-q", repo.bare.to_str().unwrap(), "main"]);
    let new_tip = git(&work, &["rev-parse", "HEAD"]);
    let (old7, new7) = (&repo.tip[..7], &new_tip[..7]);
    let url = repo.url();
    let shown_url = url.trim_end_matches(".git");
    let hit = lines(
        &[
            vec![USING],
            strs(&restored(&key_a, "project")),
            vec![
                "Restored cache",
                &format!("From {shown_url}"),
                &format!("   {old7}..{new7}  main       -> origin/main"),
                "Already on 'main'",
                "Your branch is behind 'origin/main' by 1 commit, and can be fast-forwarded.",
                "  (use \"git pull\" to update your local branch)",
                &new_tip,
                &format!("HEAD is now at {new7} c61"),
                "diff: N",
                "Git cache up-to-data.",
                "exit 0 in ~/project",
            ],
        ]
        .concat(),
    );
    // A pull request whose ref is missing, from the cache.
    let missing = lines(
        &[
            vec![USING],
            strs(&restored(&key_a, "project")),
            vec![
                "Restored cache",
                &format!("From {shown_url}"),
                &format!("   {old7}..{new7}  main       -> origin/main"),
            ],
            strs(&retried(&[], 3, 128)),
            vec![
                "Reference: refs/pull/8/merge not found .... Exiting",
                "exit 1 in ~/project",
            ],
        ]
        .concat(),
    );
    run_cases(
        &agent,
        job("checkout-cache-hit", &repo)
            .env("SEMAPHORE_JOB_ID", JOB_B)
            .env("SEMAPHORE_GIT_SHA", &new_tip),
        &[
            (cached(JOB_A, "~", &[], ""), hit),
            (
                cached(
                    JOB_A,
                    "~",
                    &[
                        ("SEMAPHORE_GIT_REF_TYPE", "pull-request"),
                        ("SEMAPHORE_GIT_REF", "refs/pull/8/merge"),
                    ],
                    "",
                ),
                missing,
            ),
        ],
    );
}

#[test]
fn an_outdated_cache_is_replaced_keeping_the_newest_keys() {
    let repo = Repo::make();
    let agent = agent();
    // Two caches stored long ago (their keys say so), a second apart so
    // that `cache list` orders them.
    let old = format!("git-cache-{JOB_A}-1700000000");
    let older_still = format!("git-cache-{JOB_A}-1600000000");
    let setup = format!(
        "cd ~ && checkout >/dev/null 2>&1 && cd ~ && cache store {older_still} project >/dev/null && sleep 1 && cache store {old} project >/dev/null && {KEYS}"
    );
    let new = format!("git-cache-{JOB_B}-TIME");
    let tip = format!("HEAD is now at {} c60", &repo.tip[..7]);
    let refreshing = [
        "Already on 'main'",
        "Your branch is up to date with 'origin/main'.",
        &tip,
        "diff: N",
        "Git cache outdated, refreshing...",
    ];
    let job = job("checkout-cache-keep", &repo)
        .env("SEMAPHORE_JOB_ID", JOB_B)
        .command(&setup);
    run_cases(
        &agent,
        job,
        &[
            // Older than the default age: all keys but the newest
            // SEMAPHORE_GIT_CACHE_KEEP go, and the checkout is stored.
            (
                case_in(
                    "~",
                    &[("SEMAPHORE_GIT_CACHE_KEEP", "1")],
                    "--use-cache",
                    &show(&[JOB_B]),
                    &format!("{KEYS} | {}", show(&[JOB_B])),
                ),
                lines(
                    &[
                        vec![USING],
                        strs(&restored(&old, "project")),
                        vec!["Restored cache"],
                        refreshing.to_vec(),
                        vec![&format!("Key '{older_still}' is deleted.")],
                        strs(&stored("project", &new)),
                        vec!["exit 0 in ~/project", &new, &old],
                    ]
                    .concat(),
                ),
            ),
            // An age of -1 makes any cache outdated; KEEP is 0 by default.
            (
                case_in(
                    "~",
                    &[("SEMAPHORE_GIT_CACHE_AGE", "-1")],
                    "--use-cache",
                    &show(&[JOB_B]),
                    &format!("{KEYS} | {}", show(&[JOB_B])),
                ),
                lines(
                    &[
                        vec![USING],
                        strs(&restored(&new, "project")),
                        vec!["Restored cache"],
                        refreshing.to_vec(),
                        vec![
                            &format!("Key '{new}' is deleted."),
                            &format!("Key '{old}' is deleted."),
                        ],
                        strs(&stored("project", &new)),
                        vec!["exit 0 in ~/project", &new],
                    ]
                    .concat(),
                ),
            ),
        ],
    );
}

#[test]
fn a_restored_repository_of_another_url_is_not_used() {
    let repo = Repo::make();
    let agent = agent();
    // The same history under another URL: the toolbox would fetch from it.
    let other = repo.scratch().join("other.git");
    git(
        &repo.scratch(),
        &[
            "clone",
            "-q",
            "--bare",
            repo.bare.to_str().unwrap(),
            "other.git",
        ],
    );
    let other_url = format!("file://{}", other.display());
    let key = format!("git-cache-{JOB_C}-TIME");
    run_cases(
        &agent,
        job("checkout-cache-foreign", &repo).env("SEMAPHORE_JOB_ID", JOB_C),
        &[
            (
                cached(
                    JOB_C,
                    "~/w",
                    &[
                        ("SEMAPHORE_GIT_URL", &other_url),
                        ("SEMAPHORE_GIT_DIR", "project"),
                    ],
                    "",
                ),
                lines(
                    &[
                        vec![USING, "MISS: 'git-cache-'.", "Cloning into 'project'..."],
                        vec![
                            "Already on 'main'",
                            "Your branch is up to date with 'origin/main'.",
                            &format!("HEAD is now at {} c60", &repo.tip[..7]),
                            "No git cache... caching",
                        ],
                        strs(&stored("project", &key)),
                        vec!["exit 0 in ~/w/project"],
                    ]
                    .concat(),
                ),
            ),
            // The cache holds `project` of the other URL: it is restored,
            // then replaced by a clone; the cache is fresh, so it stays.
            (
                cached(JOB_C, "~/w", &[], "git config remote.origin.url"),
                lines(
                    &[
                        vec![USING],
                        strs(&restored(&key, "project")),
                        vec![
                            "Cloning into 'project'...",
                            "Already on 'main'",
                            "Your branch is up to date with 'origin/main'.",
                            &format!("HEAD is now at {} c60", &repo.tip[..7]),
                            "diff: N",
                            "Git cache up-to-data.",
                            "exit 0 in ~/w/project",
                            &repo.url(),
                        ],
                    ]
                    .concat(),
                ),
            ),
        ],
    );
}
