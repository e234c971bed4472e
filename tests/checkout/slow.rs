//! The toolbox's slow-clone mode (`SEMAPHORE_GIT_CLONE_SLOW_RETRY=true`):
//! watched clone attempts, then other addresses of github.com. The remote
//! is `flaky_ssh`; `dig` and `curl` (the DNS queries for other addresses)
//! are stand-ins on PATH that answer as Google's DNS does.

use super::*;

const SLOW: (&str, &str) = ("SEMAPHORE_GIT_CLONE_SLOW_RETRY", "true");

/// A job whose remote is `flaky_ssh` at `url` (the bare repository's path
/// is appended).
fn flaky_job(name: &str, repo: &Repo, url: &str) -> Job {
    job(name, repo)
        .env("SEMAPHORE_GIT_URL", format!("{url}{}", repo.bare.display()))
        .env("GIT_SSH_COMMAND", flaky_ssh(repo).display().to_string())
        .env("GIT_SSH_VARIANT", "simple")
        .env(
            "FLAKY_COUNT",
            repo.scratch().join("count").display().to_string(),
        )
}

#[test]
fn a_stalled_clone_is_killed_and_tried_again() {
    let repo = Repo::make();
    let agent = agent();
    // The speed printed depends on the size of a new `.git`.
    let show = "sed -E 's/\\(-?[0-9]+ bytes\\/sec/(N bytes\\/sec/'";
    run_cases(
        &agent,
        flaky_job("checkout-slow-stall", &repo, "ssh://git.test"),
        &[(
            case_in(
                "~",
                &[
                    SLOW,
                    ("SEMAPHORE_GIT_CLONE_SLOW_TIMEOUT", "5"),
                    ("FLAKY_STALL", "1"),
                ],
                "",
                show,
                "",
            ),
            lines(&[
                "Performing shallow clone with depth: 50",
                "Cloning into 'project'...",
                "[checkout] Slow clone detected (N bytes/sec for 5s)",
                "[checkout] Slow clone detected, retrying... (attempt 1/2)",
                "Cloning into 'project'...",
                &format!("HEAD is now at {} c60", &repo.tip[..7]),
                "exit 0 in ~/project",
            ]),
        )],
    );
}

#[test]
fn github_is_tried_at_another_address_after_failed_clones() {
    let repo = Repo::make();
    let agent = agent();
    let fake = repo.scratch().join("dns");
    fs::create_dir(&fake).unwrap();
    executable(&fake.join("dig"), "#!/bin/sh\necho 192.0.2.1\n");
    // Each region gets the same other address, and one the current one.
    executable(
        &fake.join("curl"),
        "#!/bin/sh\ncase \"$*\" in *=177.0.0.0/8) ip=192.0.2.1 ;; *) ip=192.0.2.7 ;; esac\n\
         echo \"{\\\"Status\\\":0,\\\"Answer\\\":[{\\\"name\\\":\\\"github.com.\\\",\\\"type\\\":1,\\\"data\\\":\\\"$ip\\\"}]}\"\n",
    );
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let args = repo.scratch().join("count.args");
    let ran = run_cases(
        &agent,
        flaky_job("checkout-slow-github", &repo, "git@github.com:"),
        &[(
            case(
                &[SLOW, ("PATH", &path), ("FLAKY_FAIL", "1 2")],
                "",
                "echo \"GIT_SSH_COMMAND=${GIT_SSH_COMMAND##*/}\"",
            ),
            lines(
                &[
                    vec!["Performing shallow clone with depth: 50"],
                    REFUSED.to_vec(),
                    vec!["[checkout] Clone failed, retrying... (attempt 1/2)"],
                    REFUSED.to_vec(),
                    vec![
                        "[checkout] Clone failed after 2 attempts, trying alternative endpoints...",
                        "[checkout] Switching to alternative GitHub endpoint (192.0.2.7)",
                        "Cloning into 'project'...",
                        &format!("HEAD is now at {} c60", &repo.tip[..7]),
                        "exit 0 in ~/project",
                        "GIT_SSH_COMMAND=flaky-ssh",
                    ],
                ]
                .concat(),
            ),
        )],
    );
    // The third connection went through the other address.
    let logged = fs::read_to_string(&args).unwrap();
    let third = logged.lines().nth(2).unwrap_or_default();
    assert!(
        third.starts_with("-o ProxyCommand=nc 192.0.2.7 22 git@github.com "),
        "{logged}\n{}",
        ran.render()
    );
}

#[test]
fn other_hosts_get_no_other_address() {
    let repo = Repo::make();
    let agent = agent();
    // Two refused clones, no other address: the toolbox then takes its
    // full-clone path, whose clone works.
    run_cases(
        &agent,
        flaky_job("checkout-slow-other", &repo, "ssh://git.test"),
        &[(
            case(&[SLOW, ("FLAKY_FAIL", "1 2")], "", ""),
            lines(
                &[
                    vec!["Performing shallow clone with depth: 50"],
                    REFUSED.to_vec(),
                    vec!["[checkout] Clone failed, retrying... (attempt 1/2)"],
                    REFUSED.to_vec(),
                    vec![
                        "[checkout] Clone failed after 2 attempts, trying alternative endpoints...",
                        "[checkout] Alternative endpoint fallback only supported for github.com (got: git.test)",
                        "Branch not found performing full clone",
                        "Cloning into 'project'...",
                        "Already on 'main'",
                        "Your branch is up to date with 'origin/main'.",
                        &format!("HEAD is now at {} c60", &repo.tip[..7]),
                        "exit 0 in ~/project",
                    ],
                ]
                .concat(),
            ),
        )],
    );
}
