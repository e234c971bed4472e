//! Integration tests of the `checkout` function every job's session has: a
//! bare repository made here (a main branch 60 commits long, a feature
//! branch, a tag and a pull-request ref on no branch), served over
//! `file://` and over ssh to a real sshd on loopback. Jobs run under
//! `agent serve` with the toolbox's `SEMAPHORE_GIT_*` variables.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::cache::{run, Ran};
use crate::support::server::TestAgent;
use crate::support::sshd::{self, Sshd};
use crate::support::Job;

/// A bare repository and the commits the tests check out.
struct Repo {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    /// main's tip and the commit 55 below it (beyond the default depth).
    main_tip: String,
    main_deep: String,
    feature_tip: String,
    tag_commit: String,
    pr_commit: String,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Repo {
    fn make() -> Repo {
        let dir = tempfile::Builder::new()
            .prefix("agent-checkout-it-")
            .tempdir()
            .expect("a temporary directory");
        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        // 60 commits in one fast-import stream.
        let mut stream = String::new();
        for i in 1..=60 {
            stream.push_str(&format!(
                "commit refs/heads/main\nmark :{i}\ncommitter t <t@example.com> {} +0000\ndata 3\nc{i:02}\nM 644 inline file.txt\ndata {}\n{i}\n\n",
                1_700_000_000 + i,
                format!("{i}\n").len()
            ));
        }
        let mut child = Command::new("git")
            .args(["fast-import", "--quiet"])
            .current_dir(&work)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("git fast-import");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stream.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        git(&work, &["checkout", "-q", "main"]);
        let main_tip = git(&work, &["rev-parse", "HEAD"]);
        let main_deep = git(&work, &["rev-parse", "HEAD~55"]);
        git(&work, &["tag", "v1.0", "HEAD~3"]);
        let tag_commit = git(&work, &["rev-parse", "HEAD~3"]);
        git(&work, &["checkout", "-q", "-b", "feature"]);
        fs::write(work.join("feature.txt"), "f\n").unwrap();
        git(&work, &["add", "feature.txt"]);
        git(&work, &["commit", "-q", "-m", "feature"]);
        let feature_tip = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["checkout", "-q", "--detach", "main"]);
        fs::write(work.join("pr.txt"), "pr\n").unwrap();
        git(&work, &["add", "pr.txt"]);
        git(&work, &["commit", "-q", "-m", "pull request"]);
        let pr_commit = git(&work, &["rev-parse", "HEAD"]);
        let bare = dir.path().join("project.git");
        git(dir.path(), &["init", "-q", "--bare", "project.git"]);
        git(
            &work,
            &[
                "push",
                "-q",
                bare.to_str().unwrap(),
                "main",
                "feature",
                "v1.0",
                &format!("{pr_commit}:refs/pull/7/head"),
            ],
        );
        Repo {
            _dir: dir,
            bare,
            main_tip,
            main_deep,
            feature_tip,
            tag_commit,
            pr_commit,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }
}

/// What a checkout leaves: the directory, HEAD, the branch, shallowness.
const SHOW: &str = "pwd && git rev-parse HEAD && echo \"branch=$(git branch --show-current)\" && git rev-parse --is-shallow-repository";

fn job(name: &str, url: &str, sha: &str) -> Job {
    Job::new(name)
        .env("SEMAPHORE_GIT_URL", url)
        .env("SEMAPHORE_GIT_SHA", sha)
}

fn checked_out(ran: &Ran, agent: &TestAgent, dir: &str, sha: &str, branch: &str) {
    ran.assert_passed();
    let out = ran.ok(SHOW);
    let expected = format!(
        "{}\n{sha}\nbranch={branch}\ntrue\n",
        agent.home().join(dir).display()
    );
    assert_eq!(out, expected, "{}", ran.render());
}

#[test]
fn a_branch_is_cloned_shallowly_at_its_sha() {
    let repo = Repo::make();
    let agent = TestAgent::start_default();
    let ran = run(
        &agent,
        &job("checkout-branch", &repo.url(), &repo.feature_tip)
            .env("SEMAPHORE_GIT_BRANCH", "feature")
            .command("checkout")
            .command(SHOW)
            .command("git rev-list --count HEAD"),
    );
    checked_out(&ran, &agent, "project", &repo.feature_tip, "feature");
    assert_eq!(ran.ok("git rev-list --count HEAD"), "50\n");
}

#[test]
fn a_tag_is_checked_out() {
    let repo = Repo::make();
    let agent = TestAgent::start_default();
    let ran = run(
        &agent,
        &job("checkout-tag", &repo.url(), &repo.tag_commit)
            .env("SEMAPHORE_GIT_REF_TYPE", "tag")
            .env("SEMAPHORE_GIT_TAG_NAME", "v1.0")
            .env("SEMAPHORE_GIT_DIR", "tagged")
            .command("checkout")
            .command(SHOW)
            .command("git describe --tags"),
    );
    checked_out(&ran, &agent, "tagged", &repo.tag_commit, "");
    assert_eq!(ran.ok("git describe --tags"), "v1.0\n");
}

#[test]
fn a_pull_request_ref_is_checked_out() {
    let repo = Repo::make();
    let agent = TestAgent::start_default();
    let ran = run(
        &agent,
        &job("checkout-pr", &repo.url(), &repo.pr_commit)
            .env("SEMAPHORE_GIT_REF_TYPE", "pull-request")
            .env("SEMAPHORE_GIT_PR_NUMBER", "7")
            .command("checkout")
            .command(SHOW),
    );
    checked_out(&ran, &agent, "project", &repo.pr_commit, "");
}

#[test]
fn a_sha_deeper_than_the_depth_is_fetched() {
    let repo = Repo::make();
    let agent = TestAgent::start_default();
    let ran = run(
        &agent,
        &job("checkout-deep", &repo.url(), &repo.main_deep)
            .env("SEMAPHORE_GIT_BRANCH", "main")
            .command("checkout")
            .command("git rev-parse HEAD && cat file.txt"),
    );
    ran.assert_passed();
    assert!(ran.ok("checkout").contains(&format!(
        "checkout: {} is deeper than 50 commits; fetching it\n",
        repo.main_deep
    )));
    assert_eq!(
        ran.ok("git rev-parse HEAD && cat file.txt"),
        format!("{}\n5\n", repo.main_deep)
    );
}

#[test]
fn a_missing_variable_or_sha_fails_with_a_clear_message() {
    let repo = Repo::make();
    let agent = TestAgent::start_default();
    let ran = run(
        &agent,
        &Job::new("checkout-missing")
            .env("SEMAPHORE_GIT_URL", repo.url())
            .env("SEMAPHORE_GIT_BRANCH", "main")
            .command("checkout || echo \"exit $? in $PWD\""),
    );
    ran.assert_passed();
    assert_eq!(
        ran.ok("checkout || echo \"exit $? in $PWD\""),
        format!(
            "checkout: SEMAPHORE_GIT_SHA is not set\nexit 1 in {}\n",
            agent.home().display()
        )
    );
    let missing = "0123456789012345678901234567890123456789";
    let ran = run(
        &agent,
        &job("checkout-nosha", &repo.url(), missing)
            .env("SEMAPHORE_GIT_BRANCH", "main")
            .command("checkout"),
    );
    assert_eq!(ran.result(), "failed");
    let out = ran.cmd("checkout").output;
    assert!(
        out.ends_with(&format!(
            "checkout: commit {missing} is not in branch 'main' of {}\n",
            repo.url()
        )),
        "{out}"
    );
}

#[test]
fn use_cache_keeps_the_git_directory_in_the_cache() {
    let repo = Repo::make();
    let agent = TestAgent::start_default();
    let first = run(
        &agent,
        &job("checkout-cache-1", &repo.url(), &repo.main_tip)
            .env("SEMAPHORE_GIT_BRANCH", "main")
            .command("checkout --use-cache")
            .command("git rev-parse HEAD"),
    );
    first.assert_passed();
    let out = first.ok("checkout --use-cache");
    assert!(out.starts_with("MISS: 'checkout-project@'.\n"), "{out}");
    assert!(
        out.contains("Uploading '.git' with cache key 'checkout-project@"),
        "{out}"
    );
    let second = run(
        &agent,
        &job("checkout-cache-2", &repo.url(), &repo.feature_tip)
            .env("SEMAPHORE_GIT_BRANCH", "feature")
            .env("SEMAPHORE_GIT_DIR", "again")
            .command("checkout --use-cache")
            .command("git rev-parse HEAD"),
    );
    second.assert_passed();
    let out = second.ok("checkout --use-cache");
    assert!(out.starts_with("MISS: 'checkout-again@'.\n"), "{out}");
    let third = run(
        &agent,
        &job("checkout-cache-3", &repo.url(), &repo.feature_tip)
            .env("SEMAPHORE_GIT_BRANCH", "feature")
            .env("SEMAPHORE_GIT_DIR", "third")
            .command("rm -rf ~/project")
            .command("SEMAPHORE_GIT_DIR=project checkout --use-cache")
            .command("git rev-parse HEAD"),
    );
    third.assert_passed();
    let out = third.ok("SEMAPHORE_GIT_DIR=project checkout --use-cache");
    assert!(
        out.starts_with("HIT: 'checkout-project@', using key 'checkout-project@")
            && out.contains("\nRestored: .git/.\n"),
        "{out}"
    );
    // A fresh cache is not stored again.
    assert!(!out.contains("Uploading"), "{out}");
    assert_eq!(
        third.ok("git rev-parse HEAD"),
        format!("{}\n", repo.feature_tip)
    );
}

/// The stored `.git` of one job, by key.
fn checkout_keys(ran: &Ran) -> Vec<String> {
    ran.ok("cache list")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| k.starts_with("checkout-project@"))
        .map(String::from)
        .collect()
}

#[test]
fn use_cache_refreshes_a_git_directory_older_than_the_cache_age() {
    let repo = Repo::make();
    let agent = TestAgent::start_default();
    let first = run(
        &agent,
        &job("checkout-age-1", &repo.url(), &repo.main_tip)
            .env("SEMAPHORE_GIT_BRANCH", "main")
            .command("checkout --use-cache")
            .command("cache list"),
    );
    first.assert_passed();
    let stored = checkout_keys(&first);
    assert_eq!(stored.len(), 1, "{stored:?}");
    // Keys name the second they were stored in: the next store must be in
    // a later second to make a new key (bounded: the loop ends within 1 s).
    let stored_at = stored[0].rsplit('@').next().unwrap();
    let wait_past = format!("until [ \"$EPOCHSECONDS\" -gt {stored_at} ]; do sleep 0.05; done");

    // An age of 0 s makes any stored copy old: the fetched .git (which now
    // has the feature branch too) is stored under a new key, and the old
    // key goes.
    let second = run(
        &agent,
        &job("checkout-age-2", &repo.url(), &repo.feature_tip)
            .env("SEMAPHORE_GIT_BRANCH", "feature")
            .env("SEMAPHORE_GIT_CACHE_AGE", "0")
            .command(&wait_past)
            .command("rm -rf ~/project")
            .command("checkout --use-cache")
            .command("cache list"),
    );
    second.assert_passed();
    let out = second.ok("checkout --use-cache");
    assert!(
        out.contains("s old (SEMAPHORE_GIT_CACHE_AGE=0); refreshing it"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Key '{}' is deleted.", stored[0])),
        "{out}"
    );
    let now = checkout_keys(&second);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, stored);

    // The refreshed copy has the feature branch's commit.
    let third = run(
        &agent,
        &job("checkout-age-3", &repo.url(), &repo.feature_tip)
            .env("SEMAPHORE_GIT_BRANCH", "feature")
            .command("rm -rf ~/project")
            .command("checkout --use-cache")
            .command("git rev-parse HEAD"),
    );
    third.assert_passed();
    let out = third.ok("checkout --use-cache");
    assert!(
        out.starts_with(&format!(
            "HIT: 'checkout-project@', using key '{}'.",
            now[0]
        )),
        "{out}"
    );
    assert!(!out.contains("Uploading"), "{out}");
}

#[test]
fn a_repository_is_checked_out_over_ssh() {
    if !sshd::available() {
        return;
    }
    let repo = Repo::make();
    let agent = TestAgent::start_default();
    let keys = agent.root().join("authorized_keys");
    fs::write(&keys, "").unwrap();
    let sshd = Sshd::start(&keys);
    let key = sshd.new_key("git");
    fs::write(&keys, format!("{}\n", key.public_line)).unwrap();
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        sshd.user(),
        sshd.port(),
        repo.bare.display()
    );
    let ssh = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
        key.path.display()
    );
    let ran = run(
        &agent,
        &job("checkout-ssh", &url, &repo.feature_tip)
            .env("SEMAPHORE_GIT_BRANCH", "feature")
            .env("GIT_SSH_COMMAND", ssh)
            .command("checkout")
            .command(SHOW),
    );
    checked_out(&ran, &agent, "project", &repo.feature_tip, "feature");
}
