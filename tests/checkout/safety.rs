//! Values of `SEMAPHORE_GIT_*` that would reach git or the shell as an
//! option or as code, or make checkout remove or write outside its
//! directory, are refused with one line before anything is removed or
//! created; shell metacharacters in a valid name are data.

use super::*;

/// The command of one case, run from `~/w/sub` (which holds `keep`):
/// checkout's output, its status, then what is in `~/w` and `~/w/sub`,
/// and whether `~/pwned` exists.
fn hostile(vars: &[(&str, &str)], args: &str) -> String {
    let exports: String = vars
        .iter()
        .map(|(name, value)| format!(" && export {name}={}", quote(value)))
        .collect();
    format!(
        "(mkdir -p ~/w/sub && touch ~/w/sub/keep && cd ~/w/sub{exports} && checkout {args} >~/checkout.out 2>&1; s=$?; \
         cat ~/checkout.out; echo \"exit $s in ${{PWD/#$HOME/\\~}}\"; echo left: $(ls -A ~/w) / $(ls -A ~/w/sub); \
         if [ -e ~/pwned ]; then echo PWNED; fi)"
    )
}

/// What a refused case prints.
fn refusal(line: &str) -> String {
    lines(&[line, "exit 1 in ~/w/sub", "left: sub / keep"])
}

#[test]
fn hostile_values_are_refused_before_anything_happens() {
    let repo = Repo::make();
    let agent = agent();
    let pwned = agent.home().join("pwned").display().to_string();
    let upload_pack = format!("--upload-pack=touch {pwned};git-upload-pack");
    let dir_rule = "must be a relative path below the current directory (not '.', '..' or absolute, no '..' in it, not starting with '-')";
    let mut cases = vec![
        // The case: the SHA reached `git fetch` as an option.
        (
            hostile(&[("SEMAPHORE_GIT_SHA", &upload_pack)], ""),
            refusal(&format!(
                "checkout: SEMAPHORE_GIT_SHA must be a commit's SHA in hex, not '{upload_pack}'"
            )),
        ),
        (
            hostile(&[("SEMAPHORE_GIT_SHA", "HEAD~1")], ""),
            refusal("checkout: SEMAPHORE_GIT_SHA must be a commit's SHA in hex, not 'HEAD~1'"),
        ),
        // A URL ending in `/..` named the parent as the directory.
        (
            hostile(&[("SEMAPHORE_GIT_URL", &format!("{}/..", repo.url()))], ""),
            refusal("checkout: SEMAPHORE_GIT_URL does not end in a usable directory name ('..'); set SEMAPHORE_GIT_DIR"),
        ),
    ];
    for dir in [".", "..", "./", "../w", "a/..", "a/../b", "/tmp/x", "-rf"] {
        cases.push((
            hostile(&[("SEMAPHORE_GIT_DIR", dir)], ""),
            refusal(&format!(
                "checkout: SEMAPHORE_GIT_DIR {dir_rule}, not '{dir}'"
            )),
        ));
    }
    for branch in [
        upload_pack.as_str(),
        "-b",
        "a..b",
        "main:refs/heads/x",
        "a b",
    ] {
        cases.push((
            hostile(&[("SEMAPHORE_GIT_BRANCH", branch)], ""),
            refusal(&format!(
                "checkout: SEMAPHORE_GIT_BRANCH is not a valid branch or tag name: '{branch}'"
            )),
        ));
    }
    let pr = ("SEMAPHORE_GIT_REF_TYPE", "pull-request");
    for reference in [
        upload_pack.as_str(),
        "refs/pull/7/../../heads/main",
        "refs/pull/7/head:refs/heads/main",
    ] {
        cases.push((
            hostile(&[pr, ("SEMAPHORE_GIT_REF", reference)], ""),
            refusal(&format!(
                "checkout: SEMAPHORE_GIT_REF is not a valid ref name: '{reference}'"
            )),
        ));
    }
    cases.extend([
        (
            hostile(
                &[
                    pr,
                    ("SEMAPHORE_GIT_REF", ""),
                    ("SEMAPHORE_GIT_PR_NUMBER", "7/../../heads/main"),
                ],
                "",
            ),
            refusal("checkout: SEMAPHORE_GIT_PR_NUMBER must be a number, not '7/../../heads/main'"),
        ),
        (
            hostile(
                &[
                    ("SEMAPHORE_GIT_REF_TYPE", "tag"),
                    ("SEMAPHORE_GIT_TAG_NAME", &upload_pack),
                ],
                "",
            ),
            refusal(&format!(
                "checkout: SEMAPHORE_GIT_TAG_NAME is not a valid tag name: '{upload_pack}'"
            )),
        ),
        (
            hostile(&[("SEMAPHORE_GIT_DEPTH", &upload_pack)], ""),
            refusal(&format!(
                "checkout: SEMAPHORE_GIT_DEPTH must be a positive number, not '{upload_pack}'"
            )),
        ),
        (
            hostile(&[("SEMAPHORE_GIT_SPARSE_CHECKOUT_PATHS", "lib --stdin")], ""),
            refusal("checkout: SEMAPHORE_GIT_SPARSE_CHECKOUT_PATHS has a path starting with '-': '--stdin'"),
        ),
    ]);
    // Arithmetic on these would run the command substitution.
    let code = format!("a[$(touch {pwned})]");
    for name in ["SEMAPHORE_GIT_CACHE_AGE", "SEMAPHORE_GIT_CACHE_KEEP"] {
        let what = if name.ends_with("AGE") {
            "a number of seconds"
        } else {
            "a number of keys"
        };
        cases.push((
            hostile(&[(name, &code)], "--use-cache"),
            refusal(&format!("checkout: {name} must be {what}, not '{code}'")),
        ));
    }
    for name in [
        "SEMAPHORE_GIT_CLONE_RETRY_COUNT",
        "SEMAPHORE_GIT_CLONE_SLOW_TIMEOUT",
    ] {
        cases.push((
            hostile(
                &[("SEMAPHORE_GIT_CLONE_SLOW_RETRY", "true"), (name, &code)],
                "",
            ),
            refusal(&format!("checkout: {name} must be a number, not '{code}'")),
        ));
    }
    run_cases(&agent, job("checkout-hostile", &repo), &cases);
}

#[test]
fn shell_metacharacters_in_names_are_data() {
    let repo = Repo::make();
    let agent = agent();
    let pwned = agent.home().join("pwned").display().to_string();
    // Valid ref names that the toolbox's `retry` would run as code.
    let branch = format!("x;touch${{IFS}}{pwned}");
    let reference = format!("refs/pull/7/head;touch${{IFS}}{pwned}");
    let missing = [
        "Cloning into 'project'...".to_owned(),
        format!("warning: Could not find remote branch {branch} to clone."),
        format!("fatal: Remote branch {branch} not found in upstream origin"),
    ];
    run_cases(
        &agent,
        job("checkout-metacharacters", &repo),
        &[
            (
                hostile(&[("SEMAPHORE_GIT_BRANCH", &branch)], ""),
                lines(
                    &[
                        vec!["Performing shallow clone with depth: 50"],
                        strs(&retried(&strs(&missing), 3, 128)),
                        vec![
                            "Branch not found performing full clone",
                            "Cloning into 'project'...",
                            &format!(
                                "error: pathspec '{branch}' did not match any file(s) known to git"
                            ),
                            &format!("Branch: {branch} not found .... Exiting"),
                            "exit 1 in ~/w/sub/project",
                            "left: sub / keep project",
                        ],
                    ]
                    .concat(),
                ),
            ),
            (
                hostile(
                    &[
                        ("SEMAPHORE_GIT_REF_TYPE", "pull-request"),
                        ("SEMAPHORE_GIT_REF", &reference),
                    ],
                    "",
                ),
                lines(
                    &[
                        vec!["Cloning into 'project'..."],
                        strs(&retried(&[], 3, 128)),
                        strs(&retried(&[], 3, 128)),
                        vec![
                            &format!("Revision: {} not found .... Exiting", repo.tip),
                            "exit 1 in ~/w/sub/project",
                            "left: sub / keep project",
                        ],
                    ]
                    .concat(),
                ),
            ),
        ],
    );
}
