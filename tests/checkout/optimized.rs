//! Partial clones and sparse checkouts (`SEMAPHORE_GIT_PARTIAL_CLONE_FILTER`,
//! `SEMAPHORE_GIT_SPARSE_CHECKOUT_PATHS`), the fallback for a git without
//! `sparse-checkout`, and the retries of the network steps.

use super::*;

/// What an optimized checkout leaves: sparse paths, partial-clone config,
/// the top of the work tree.
const LEFT: &str = "git rev-parse HEAD; echo \"sparse: $(git sparse-checkout list 2>/dev/null | tr '\\n' ' ')\"; \
                    echo \"promisor: $(git config remote.origin.promisor) $(git config remote.origin.partialclonefilter)\"; \
                    echo top: *";

#[test]
fn partial_and_sparse_clones_print_what_the_toolbox_prints() {
    let repo = Repo::make();
    let agent = agent();
    let tip7 = &repo.tip[..7];
    let filter = ("SEMAPHORE_GIT_PARTIAL_CLONE_FILTER", "blob:none");
    let lib = ("SEMAPHORE_GIT_SPARSE_CHECKOUT_PATHS", "lib");
    run_cases(
        &agent,
        job("checkout-optimized", &repo),
        &[
            (
                case(&[filter, lib], "", LEFT),
                lines(&[
                    "Performing optimized clone (filter: 'blob:none', sparse-paths: 'lib', depth: 50)",
                    "Cloning into 'project'...",
                    "Configuring sparse-checkout for paths: lib",
                    &format!("HEAD is now at {tip7} c60"),
                    "exit 0 in ~/project",
                    &repo.tip,
                    "sparse: lib ",
                    "promisor: true blob:none",
                    "top: file.txt lib",
                ]),
            ),
            // A filter alone: the whole tree, its blobs fetched on demand.
            (
                case(&[filter], "", LEFT),
                lines(&[
                    "Performing optimized clone (filter: 'blob:none', sparse-paths: 'none', depth: 50)",
                    "Cloning into 'project'...",
                    &format!("HEAD is now at {tip7} c60"),
                    "exit 0 in ~/project",
                    &repo.tip,
                    "sparse: ",
                    "promisor: true blob:none",
                    "top: file.txt lib test",
                ]),
            ),
            // Sparse paths alone (two, as a list), on a branch git must
            // clone whole first.
            (
                case(
                    &[
                        ("SEMAPHORE_GIT_SPARSE_CHECKOUT_PATHS", "lib  test"),
                        ("SEMAPHORE_GIT_BRANCH", "nope"),
                    ],
                    "",
                    "",
                ),
                lines(
                    &[
                        vec!["Performing optimized clone (filter: 'none', sparse-paths: 'lib  test', depth: 50)"],
                        strs(&retried(
                            &[
                                "Cloning into 'project'...",
                                "warning: Could not find remote branch nope to clone.",
                                "fatal: Remote branch nope not found in upstream origin",
                            ],
                            3,
                            128,
                        )),
                        vec![
                            "Branch not found performing full clone",
                            "Cloning into 'project'...",
                            "Configuring sparse-checkout for paths: lib  test",
                            "error: pathspec 'nope' did not match any file(s) known to git",
                            "Branch: nope not found .... Exiting",
                            "exit 1 in ~/project",
                        ],
                    ]
                    .concat(),
                ),
            ),
            (
                case(
                    &[
                        filter,
                        lib,
                        ("SEMAPHORE_GIT_REF_TYPE", "tag"),
                        ("SEMAPHORE_GIT_TAG_NAME", "v1.0"),
                        ("SEMAPHORE_GIT_SHA", &repo.tagged),
                    ],
                    "",
                    LEFT,
                ),
                lines(&[
                    "Performing optimized clone (filter: 'blob:none', sparse-paths: 'lib', depth: 50)",
                    "Cloning into 'project'...",
                    "Configuring sparse-checkout for paths: lib",
                    &format!("HEAD is now at {} Release v1.0", repo.tagged),
                    "exit 0 in ~/project",
                    &repo.tagged,
                    "sparse: lib ",
                    "promisor: true blob:none",
                    "top: file.txt lib",
                ]),
            ),
            (
                case(
                    &[
                        lib,
                        ("SEMAPHORE_GIT_REF_TYPE", "pull-request"),
                        ("SEMAPHORE_GIT_REF", "refs/pull/7/merge"),
                        ("SEMAPHORE_GIT_SHA", &repo.pr_merge),
                    ],
                    "",
                    LEFT,
                ),
                lines(&[
                    "Performing optimized clone (filter: 'none', sparse-paths: 'lib', depth: 50)",
                    "Cloning into 'project'...",
                    "Configuring sparse-checkout for paths: lib",
                    &format!("HEAD is now at {}", repo.pr_merge),
                    "exit 0 in ~/project",
                    &repo.pr_merge,
                    "sparse: lib ",
                    "promisor:  ",
                    "top: file.txt lib pr.txt",
                ]),
            ),
        ],
    );
}

#[test]
fn a_git_without_sparse_checkout_gets_a_standard_checkout() {
    let repo = Repo::make();
    let agent = agent();
    // git before 2.25, as the toolbox detects it: by git's own message.
    let real_git = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let old = repo.scratch().join("old-git");
    fs::create_dir(&old).unwrap();
    executable(
        &old.join("git"),
        &format!(
            "#!/bin/sh\nif [ \"$1\" = sparse-checkout ]; then\n  echo \"git: 'sparse-checkout' is not a git command. See 'git --help'.\" >&2\n  exit 1\nfi\nexec {} \"$@\"\n",
            real_git.trim()
        ),
    );
    let path = format!("{}:{}", old.display(), std::env::var("PATH").unwrap());
    run_cases(
        &agent,
        job("checkout-old-git", &repo),
        &[(
            case(
                &[
                    ("PATH", &path),
                    ("SEMAPHORE_GIT_PARTIAL_CLONE_FILTER", "blob:none"),
                    ("SEMAPHORE_GIT_SPARSE_CHECKOUT_PATHS", "lib"),
                ],
                "",
                LEFT,
            ),
            lines(&[
                "Optimized checkout requested, but this git does not support 'sparse-checkout'; falling back to a standard checkout.",
                "Performing shallow clone with depth: 50",
                "Cloning into 'project'...",
                &format!("HEAD is now at {} c60", &repo.tip[..7]),
                "exit 0 in ~/project",
                &repo.tip,
                "sparse: ",
                "promisor:  ",
                "top: file.txt lib test",
            ]),
        )],
    );
}

#[test]
fn network_steps_are_retried_as_the_toolbox_retries_them() {
    let repo = Repo::make();
    let agent = agent();
    let ssh = flaky_ssh(&repo);
    let count = |name: &str| repo.scratch().join(name).display().to_string();
    let (clone_count, fetch_count) = (count("clone.count"), count("fetch.count"));
    run_cases(
        &agent,
        job("checkout-retries", &repo)
            .env(
                "SEMAPHORE_GIT_URL",
                format!("ssh://git.test{}", repo.bare.display()),
            )
            .env("GIT_SSH_COMMAND", ssh.display().to_string())
            .env("GIT_SSH_VARIANT", "simple"),
        &[
            // The clone fails twice, then works.
            (
                case(
                    &[("FLAKY_FAIL", "1 2"), ("FLAKY_COUNT", &clone_count)],
                    "",
                    "",
                ),
                lines(
                    &[
                        vec!["Performing shallow clone with depth: 50"],
                        strs(&retried(&REFUSED, 2, 128)),
                        vec![
                            "Cloning into 'project'...",
                            &format!("HEAD is now at {} c60", &repo.tip[..7]),
                            "exit 0 in ~/project",
                        ],
                    ]
                    .concat(),
                ),
            ),
            // The pull request's fetch fails twice (its git errors are
            // discarded), then works.
            (
                case(
                    &[
                        ("FLAKY_FAIL", "2 3"),
                        ("FLAKY_COUNT", &fetch_count),
                        ("SEMAPHORE_GIT_REF_TYPE", "pull-request"),
                        ("SEMAPHORE_GIT_REF", "refs/pull/7/head"),
                        ("SEMAPHORE_GIT_SHA", &repo.pr_head),
                    ],
                    "",
                    "git rev-parse HEAD",
                ),
                lines(
                    &[
                        vec!["Cloning into 'project'..."],
                        strs(&retried(&[], 2, 128)),
                        vec![
                            &format!("HEAD is now at {}", repo.pr_head),
                            "exit 0 in ~/project",
                            &repo.pr_head,
                        ],
                    ]
                    .concat(),
                ),
            ),
        ],
    );
}
