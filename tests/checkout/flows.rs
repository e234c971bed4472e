//! `checkout` without the cache: the branch, tag and pull-request flows,
//! the missing-variables block, metrics, and what the function leaves in
//! the caller's shell.

use super::*;

/// `git rev-parse HEAD` and the branch, after a case.
const HEAD: &str = "git rev-parse HEAD; echo \"branch=$(git branch --show-current)\"";

#[test]
fn branch_flows_print_what_the_toolbox_prints() {
    let repo = Repo::make();
    let agent = agent();
    let tip7 = &repo.tip[..7];
    let tip_on_main = lines(&[
        "Performing shallow clone with depth: 50",
        "Cloning into 'project'...",
        &format!("HEAD is now at {tip7} c60"),
        "exit 0 in ~/project",
        &repo.tip,
        "branch=main",
    ]);
    let missing_branch = [
        "Cloning into 'project'...",
        "warning: Could not find remote branch nope to clone.",
        "fatal: Remote branch nope not found in upstream origin",
    ];
    let refs_tags = [
        "Cloning into 'project'...",
        "warning: Could not find remote branch refs/tags/v1.0 to clone.",
        "fatal: Remote branch refs/tags/v1.0 not found in upstream origin",
    ];
    let tag7 = &repo.tagged[..7];
    let mut cases = Vec::new();
    // Every SEMAPHORE_GIT_REF_TYPE but `tag` and `pull-request` is a branch.
    for ref_type in ["", "push", "branch", "anything"] {
        cases.push((
            case(&[("SEMAPHORE_GIT_REF_TYPE", ref_type)], "", HEAD),
            tip_on_main.clone(),
        ));
    }
    cases.extend([
        (
            case(
                &[
                    ("SEMAPHORE_GIT_BRANCH", "feature"),
                    ("SEMAPHORE_GIT_SHA", &repo.feature),
                ],
                "",
                HEAD,
            ),
            lines(&[
                "Performing shallow clone with depth: 50",
                "Cloning into 'project'...",
                &format!("HEAD is now at {} feature", &repo.feature[..7]),
                "exit 0 in ~/project",
                &repo.feature,
                "branch=feature",
            ]),
        ),
        // A commit of another branch is not on this one.
        (
            case(&[("SEMAPHORE_GIT_SHA", &repo.feature)], "", ""),
            lines(&[
                "Performing shallow clone with depth: 50",
                "Cloning into 'project'...",
                &format!("SHA: {} not found performing full clone", repo.feature),
                &format!("Revision: {} not found .... Exiting", repo.feature),
                "exit 1 in ~/project",
            ]),
        ),
        (
            case(&[("SEMAPHORE_GIT_SHA", "1234567")], "", ""),
            lines(&[
                "Performing shallow clone with depth: 50",
                "Cloning into 'project'...",
                "SHA: 1234567 not found performing full clone",
                "Revision: 1234567 not found .... Exiting",
                "exit 1 in ~/project",
            ]),
        ),
        // A branch that does not exist: three clones, then a full one.
        (
            case(&[("SEMAPHORE_GIT_BRANCH", "nope")], "", ""),
            lines(
                &[
                    strs(&[String::from("Performing shallow clone with depth: 50")]),
                    strs(&retried(&missing_branch, 3, 128)),
                    vec![
                        "Branch not found performing full clone",
                        "Cloning into 'project'...",
                        "error: pathspec 'nope' did not match any file(s) known to git",
                        "Branch: nope not found .... Exiting",
                        "exit 1 in ~/project",
                    ],
                ]
                .concat(),
            ),
        ),
        // A tag named as the branch is cloned as `git clone -b` takes it...
        (
            case(
                &[
                    ("SEMAPHORE_GIT_BRANCH", "v1.0"),
                    ("SEMAPHORE_GIT_SHA", &repo.tagged),
                ],
                "",
                HEAD,
            ),
            lines(&[
                "Performing shallow clone with depth: 50",
                "Cloning into 'project'...",
                &format!("HEAD is now at {tag7} c57"),
                "exit 0 in ~/project",
                &repo.tagged,
                "branch=",
            ]),
        ),
        // ...and `refs/tags/v1.0`, which it does not take, by a full clone.
        (
            case(
                &[
                    ("SEMAPHORE_GIT_BRANCH", "refs/tags/v1.0"),
                    ("SEMAPHORE_GIT_SHA", &repo.tagged),
                ],
                "",
                HEAD,
            ),
            lines(
                &[
                    vec!["Performing shallow clone with depth: 50"],
                    strs(&retried(&refs_tags, 3, 128)),
                    vec![
                        "Branch not found performing full clone",
                        "Cloning into 'project'...",
                        &format!("HEAD is now at {tag7} c57"),
                        &format!("HEAD is now at {tag7} c57"),
                        "exit 0 in ~/project",
                        &repo.tagged,
                        "branch=",
                    ],
                ]
                .concat(),
            ),
        ),
    ]);
    run_cases(&agent, job("checkout-branches", &repo), &cases);
}

#[test]
fn a_sha_deeper_than_the_depth_is_fetched_without_the_whole_history() {
    let repo = Repo::make();
    let agent = agent();
    let deeper = &repo.deep;
    let beyond_50 = git(&repo.bare, &["rev-parse", "main~55"]);
    let short = &deeper[..7];
    let after =
        "git rev-parse HEAD; git rev-parse --is-shallow-repository; git rev-list --count HEAD";
    run_cases(
        &agent,
        job("checkout-deep", &repo).env("SEMAPHORE_GIT_DEPTH", "3"),
        &[
            // The full SHA is fetched by itself, with 3 commits of history,
            // and the branch back to it (which proves it is on the branch).
            // The toolbox fetches the whole history instead, whose git
            // lines (the tag it brings) are then printed too.
            (
                case(&[("SEMAPHORE_GIT_SHA", deeper)], "", after),
                lines(&[
                    "Performing shallow clone with depth: 3",
                    "Cloning into 'project'...",
                    &format!("SHA: {deeper} not found performing full clone"),
                    &format!("HEAD is now at {short} c50"),
                    "exit 0 in ~/project",
                    deeper,
                    "true",
                    "3",
                ]),
            ),
            // Deeper than the default depth of 50 (of 60 commits).
            (
                case(
                    &[
                        ("SEMAPHORE_GIT_DEPTH", ""),
                        ("SEMAPHORE_GIT_SHA", &beyond_50),
                    ],
                    "",
                    "git rev-parse HEAD",
                ),
                lines(&[
                    "Performing shallow clone with depth: 50",
                    "Cloning into 'project'...",
                    &format!("SHA: {beyond_50} not found performing full clone"),
                    &format!("HEAD is now at {} c05", &beyond_50[..7]),
                    "exit 0 in ~/project",
                    &beyond_50,
                ]),
            ),
            // An abbreviated SHA cannot be fetched by itself: the whole
            // history, as the toolbox.
            (
                case(&[("SEMAPHORE_GIT_SHA", short)], "", after),
                lines(&[
                    "Performing shallow clone with depth: 3",
                    "Cloning into 'project'...",
                    &format!("SHA: {short} not found performing full clone"),
                    &format!("From {}", repo.url().trim_end_matches(".git")),
                    " * [new tag]         v1.0       -> v1.0",
                    &format!("HEAD is now at {short} c50"),
                    "exit 0 in ~/project",
                    deeper,
                    "false",
                    "50",
                ]),
            ),
            // A commit that is not on the branch, fetched by itself, is
            // still refused, after the whole history of the branch.
            (
                case(&[("SEMAPHORE_GIT_SHA", &repo.pr_head)], "", ""),
                lines(&[
                    "Performing shallow clone with depth: 3",
                    "Cloning into 'project'...",
                    &format!("SHA: {} not found performing full clone", repo.pr_head),
                    &format!("From {}", repo.url().trim_end_matches(".git")),
                    " * [new tag]         v1.0       -> v1.0",
                    &format!("Revision: {} not found .... Exiting", repo.pr_head),
                    "exit 1 in ~/project",
                ]),
            ),
        ],
    );
}

#[test]
fn tags_and_pull_requests_print_what_the_toolbox_prints() {
    let repo = Repo::make();
    let agent = agent();
    let missing_tag = [
        "Cloning into 'project'...",
        "warning: Could not find remote branch v9 to clone.",
        "fatal: Remote branch v9 not found in upstream origin",
    ];
    const PR: (&str, &str) = ("SEMAPHORE_GIT_REF_TYPE", "pull-request");
    const TAG: (&str, &str) = ("SEMAPHORE_GIT_REF_TYPE", "tag");
    let cases = [
        (
            case(
                &[
                    TAG,
                    ("SEMAPHORE_GIT_TAG_NAME", "v1.0"),
                    ("SEMAPHORE_GIT_SHA", &repo.tagged),
                ],
                "",
                "git rev-parse HEAD",
            ),
            lines(&[
                "Cloning into 'project'...",
                &format!("HEAD is now at {} Release v1.0", repo.tagged),
                "exit 0 in ~/project",
                &repo.tagged,
            ]),
        ),
        (
            case(&[TAG, ("SEMAPHORE_GIT_TAG_NAME", "v9")], "", ""),
            lines(
                &[
                    strs(&retried(&missing_tag, 3, 128)),
                    vec!["Release v9 not found .... Exiting", "exit 1 in ~"],
                ]
                .concat(),
            ),
        ),
        (
            case(
                &[
                    PR,
                    ("SEMAPHORE_GIT_REF", "refs/pull/7/merge"),
                    ("SEMAPHORE_GIT_SHA", &repo.pr_merge),
                ],
                "",
                "git rev-parse HEAD",
            ),
            lines(&[
                "Cloning into 'project'...",
                &format!("HEAD is now at {}", repo.pr_merge),
                "exit 0 in ~/project",
                &repo.pr_merge,
            ]),
        ),
        // With no SEMAPHORE_GIT_REF, the PR number names refs/pull/N/head.
        (
            case(
                &[
                    PR,
                    ("SEMAPHORE_GIT_REF", ""),
                    ("SEMAPHORE_GIT_PR_NUMBER", "7"),
                    ("SEMAPHORE_GIT_SHA", &repo.pr_head),
                ],
                "",
                "git rev-parse HEAD",
            ),
            lines(&[
                "Cloning into 'project'...",
                &format!("HEAD is now at {}", repo.pr_head),
                "exit 0 in ~/project",
                &repo.pr_head,
            ]),
        ),
        // What is checked out is the ref's commit; the message names the
        // SHA, as the toolbox's does.
        (
            case(
                &[PR, ("SEMAPHORE_GIT_REF", "refs/pull/7/head")],
                "",
                "git rev-parse HEAD",
            ),
            lines(&[
                "Cloning into 'project'...",
                &format!("HEAD is now at {}", repo.tip),
                "exit 0 in ~/project",
                &repo.pr_head,
            ]),
        ),
        // A ref that does not exist: two fetches of three attempts, their
        // git errors discarded.
        (
            case(&[PR, ("SEMAPHORE_GIT_REF", "refs/pull/8/merge")], "", ""),
            lines(
                &[
                    vec!["Cloning into 'project'..."],
                    strs(&retried(&[], 3, 128)),
                    strs(&retried(&[], 3, 128)),
                    vec![
                        &format!("Revision: {} not found .... Exiting", repo.tip),
                        "exit 1 in ~/project",
                    ],
                ]
                .concat(),
            ),
        ),
    ];
    run_cases(&agent, job("checkout-tags-prs", &repo), &cases);
}

#[test]
fn missing_variables_are_listed_as_the_toolbox_does() {
    let repo = Repo::make();
    let agent = agent();
    let url = repo.url();
    run_cases(
        &agent,
        job("checkout-missing", &repo).env("SEMAPHORE_GIT_DIR", "src"),
        &[
            (
                case(&[("SEMAPHORE_GIT_SHA", "")], "", ""),
                lines(&[
                    "[CHECKOUT ERROR] Some of these variables are unset:",
                    &format!("SEMAPHORE_GIT_URL={url}"),
                    "SEMAPHORE_GIT_DIR=src",
                    "SEMAPHORE_GIT_BRANCH=main",
                    "SEMAPHORE_GIT_SHA=",
                    "exit 1 in ~",
                ]),
            ),
            (
                case(
                    &[("SEMAPHORE_GIT_BRANCH", ""), ("SEMAPHORE_GIT_DIR", "")],
                    "--use-cache",
                    "",
                ),
                lines(&[
                    "[CHECKOUT ERROR] Some of these variables are unset:",
                    &format!("SEMAPHORE_GIT_URL={url}"),
                    "SEMAPHORE_GIT_DIR=",
                    "SEMAPHORE_GIT_BRANCH=",
                    &format!("SEMAPHORE_GIT_SHA={}", repo.tip),
                    "exit 1 in ~",
                ]),
            ),
            // SEMAPHORE_GIT_DIR, required by the toolbox, defaults to the
            // repository's name.
            (
                case(&[("SEMAPHORE_GIT_DIR", "")], "", ""),
                lines(&[
                    "Performing shallow clone with depth: 50",
                    "Cloning into 'project'...",
                    &format!("HEAD is now at {} c60", &repo.tip[..7]),
                    "exit 0 in ~/project",
                ]),
            ),
            (
                case(&[], "", ""),
                lines(&[
                    "Performing shallow clone with depth: 50",
                    "Cloning into 'src'...",
                    &format!("HEAD is now at {} c60", &repo.tip[..7]),
                    "exit 0 in ~/src",
                ]),
            ),
        ],
    );
}

#[test]
fn metrics_are_the_toolbox_line_in_its_file() {
    let repo = Repo::make();
    let agent = agent();
    // The file is the toolbox's fixed path, which other runs may write
    // too: this test reads only its own lines, by provider.
    let provider = format!("agent-test-{}", std::process::id());
    let _guard = crate::support::metrics_file::MetricsFile::take();
    let metrics = crate::support::metrics_file::PATH;
    let mine = format!("grep -F 'provider={provider},' {metrics} || true");
    let on = ("SEMAPHORE_TOOLBOX_METRICS_ENABLED", "true");
    let job = job("checkout-metrics", &repo)
        .env("SEMAPHORE_GIT_PROVIDER", &provider)
        .command(&case(&[on, ("SEMAPHORE_GIT_REF_TYPE", "push")], "", ""))
        .command(&case(
            &[
                on,
                ("SEMAPHORE_GIT_REF_TYPE", "tag"),
                ("SEMAPHORE_GIT_TAG_NAME", "v9"),
            ],
            "",
            "",
        ))
        // No line for a successful tag or pull request, nor when off.
        .command(&case(
            &[
                on,
                ("SEMAPHORE_GIT_REF_TYPE", "tag"),
                ("SEMAPHORE_GIT_TAG_NAME", "v1.0"),
            ],
            "",
            "",
        ))
        .command(&case(
            &[
                on,
                ("SEMAPHORE_GIT_REF_TYPE", "pull-request"),
                ("SEMAPHORE_GIT_REF", "refs/pull/7/head"),
            ],
            "",
            "",
        ))
        .command(&case(
            &[("SEMAPHORE_TOOLBOX_METRICS_ENABLED", "false")],
            "",
            "",
        ))
        .command(&case(&[], "", ""))
        .command(&mine);
    let ran = run(&agent, &job);
    let written = ran.ok(&mine);
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 2, "{written}\n{}", ran.render());
    let size = lines[0]
        .strip_prefix(&format!(
            "libcheckout,provider={provider},reftype=push,status=success size="
        ))
        .unwrap_or_else(|| panic!("{written}"));
    assert!(size.parse::<u64>().unwrap() > 0, "{written}");
    assert_eq!(
        lines[1],
        format!("libcheckout,provider={provider},reftype=tag,status=fail size=0")
    );
}

#[test]
fn the_function_leaves_nothing_behind_and_survives_set_eu() {
    let repo = Repo::make();
    let agent = agent();
    let strict = "(set -euo pipefail; cd ~; checkout >/dev/null 2>&1; echo \"in ${PWD/#$HOME/\\~}\"; \
                  declare -F | grep checkout; \
                  for v in url sha dir depth ref_type status; do if [[ -v $v ]]; then echo \"$v is set\"; fi; done)";
    let failing = "(set -eu; cd ~; export SEMAPHORE_GIT_SHA=1234567; \
                   if checkout >/dev/null 2>&1; then echo passed; else echo \"failed $?\"; fi; declare -F | grep checkout)";
    let ran = run(
        &agent,
        &job("checkout-hygiene", &repo)
            .command(strict)
            .command(failing),
    );
    // Only `checkout` is left defined, and none of its variables.
    assert_eq!(ran.ok(strict), "in ~/project\ndeclare -f checkout\n");
    assert_eq!(ran.ok(failing), "failed 1\ndeclare -f checkout\n");
}
