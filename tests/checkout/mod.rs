//! Integration tests of the `checkout` function every job's session has,
//! run by real jobs under `agent serve` against a bare repository made here
//! and served over `file://` (and over ssh, to a real sshd or a stand-in
//! that refuses the first connections). The expected lines are those the
//! toolbox's `libcheckout` prints for the same repository and variables,
//! git's own lines included.
//!
//! Each case runs in a subshell of one job command that prints what
//! `checkout` printed (stdout and stderr to a file, so git sees no terminal
//! and prints no progress), its exit status and the directory it left the
//! shell in.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::cache::{run, Ran};
use crate::support::server::TestAgent;
use crate::support::sshd::{self, Sshd};
use crate::support::Job;

mod cached;
mod flows;
mod optimized;
mod safety;
mod slow;

/// A bare repository and the commits the tests check out.
struct Repo {
    dir: tempfile::TempDir,
    bare: PathBuf,
    /// main: 60 commits `c01`..`c60`, each changing `file.txt`,
    /// `lib/a.txt` and `test/b.txt`.
    tip: String,
    /// main~10 (`c50`), beyond a depth of 3.
    deep: String,
    /// `feature`: one commit on main.
    feature: String,
    /// The commit of the tag `v1.0` (main~3, `c57`).
    tagged: String,
    /// `refs/pull/7/head` (a commit on main that no branch has) and
    /// `refs/pull/7/merge` (main merged with it).
    pr_head: String,
    pr_merge: String,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(["-c", "init.defaultBranch=main"])
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
        // 60 commits in one fast-import stream, a second apart.
        let mut stream = String::new();
        for i in 1..=60 {
            let body = format!("{i}\n");
            stream.push_str(&format!(
                "commit refs/heads/main\ncommitter t <t@example.com> {} +0000\ndata 3\nc{i:02}\n",
                1_700_000_000 + i
            ));
            for path in ["file.txt", "lib/a.txt", "test/b.txt"] {
                stream.push_str(&format!(
                    "M 644 inline {path}\ndata {}\n{body}\n",
                    body.len()
                ));
            }
            stream.push('\n');
        }
        let mut child = Command::new("git")
            .args(["fast-import", "--quiet"])
            .current_dir(&work)
            .env("GIT_CONFIG_NOSYSTEM", "1")
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
        let tip = git(&work, &["rev-parse", "HEAD"]);
        let deep = git(&work, &["rev-parse", "HEAD~10"]);
        git(&work, &["tag", "v1.0", "HEAD~3"]);
        let tagged = git(&work, &["rev-parse", "HEAD~3"]);
        git(&work, &["checkout", "-q", "-b", "feature"]);
        fs::write(work.join("feature.txt"), "f\n").unwrap();
        git(&work, &["add", "feature.txt"]);
        git(&work, &["commit", "-q", "-m", "feature"]);
        let feature = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["checkout", "-q", "--detach", "main"]);
        fs::write(work.join("pr.txt"), "pr\n").unwrap();
        git(&work, &["add", "pr.txt"]);
        git(&work, &["commit", "-q", "-m", "pull request"]);
        let pr_head = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["checkout", "-q", "--detach", "main"]);
        git(
            &work,
            &["merge", "-q", "--no-ff", "-m", "Merge 7", &pr_head],
        );
        let pr_merge = git(&work, &["rev-parse", "HEAD"]);
        let bare = dir.path().join("project.git");
        git(dir.path(), &["init", "-q", "--bare", "project.git"]);
        // Partial clones need the server to accept filters.
        git(&bare, &["config", "uploadpack.allowFilter", "true"]);
        git(
            &work,
            &[
                "push",
                "-q",
                bare.to_str().unwrap(),
                "main",
                "feature",
                "v1.0",
                &format!("{pr_head}:refs/pull/7/head"),
                &format!("{pr_merge}:refs/pull/7/merge"),
            ],
        );
        Repo {
            dir,
            bare,
            tip,
            deep,
            feature,
            tagged,
            pr_head,
            pr_merge,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// A directory next to the repository, for the tests' helper programs.
    fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// An agent whose jobs' git prints no detached-HEAD advice (a text that
/// changes between git versions; the toolbox's lines are the same either
/// way).
fn agent() -> TestAgent {
    let agent = TestAgent::start_default();
    fs::write(
        agent.home().join(".gitconfig"),
        "[advice]\n\tdetachedHead = false\n",
    )
    .expect("write the jobs' .gitconfig");
    agent
}

/// A job with the variables of a push to main at its tip.
fn job(name: &str, repo: &Repo) -> Job {
    Job::new(name)
        .env("SEMAPHORE_GIT_URL", repo.url())
        .env("SEMAPHORE_GIT_BRANCH", "main")
        .env("SEMAPHORE_GIT_SHA", &repo.tip)
        .env("SEMAPHORE_GIT_REF", "refs/heads/main")
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The command of one case: `checkout ARGS` from HOME with `vars`
/// exported (an empty value unsets), then `after` in the directory it
/// left. It prints checkout's output, `exit N in DIR` (DIR with `~` for
/// HOME), then what `after` prints.
fn case(vars: &[(&str, &str)], args: &str, after: &str) -> String {
    case_in("~", vars, args, "cat", after)
}

/// `case` from the directory `cwd`, checkout's output printed by `show`
/// (a command that reads its file).
fn case_in(cwd: &str, vars: &[(&str, &str)], args: &str, show: &str, after: &str) -> String {
    let mut setup = format!("mkdir -p {cwd} && cd {cwd}");
    for (name, value) in vars {
        if value.is_empty() {
            setup.push_str(&format!(" && unset {name}"));
        } else {
            setup.push_str(&format!(" && export {name}={}", quote(value)));
        }
    }
    let after = if after.is_empty() {
        String::new()
    } else {
        format!("; {after}")
    };
    format!(
        "({setup} && checkout {args} >~/checkout.out 2>&1; s=$?; {show} ~/checkout.out; echo \"exit $s in ${{PWD/#$HOME/\\~}}\"{after})"
    )
}

/// Expected output: these lines, each ending in a newline.
fn lines(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Runs `cases` (command, expected output) as the commands of one job and
/// compares each command's output.
fn run_cases(agent: &TestAgent, job: Job, cases: &[(String, String)]) -> Ran {
    let job = cases
        .iter()
        .fold(job, |job, (command, _)| job.command(command));
    let ran = run(agent, &job);
    for (command, expected) in cases {
        let got = ran.cmd(command);
        assert_eq!(
            got.output,
            *expected,
            "case {command}\nexit {}; the job:\n{}",
            got.exit_code,
            ran.render()
        );
    }
    ran
}

/// The lines of the toolbox's `retry` for a command that failed `n` times
/// with `status` (then succeeded, if `n` < 3), each after `attempt`'s
/// output.
fn retried(attempt: &[&str], n: usize, status: u8) -> Vec<String> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.extend(attempt.iter().map(|l| l.to_string()));
        out.push(if i < 3 {
            format!("[{i}/3] Execution Failed with exit status {status}. Retrying.")
        } else {
            format!("[{i}/3] Execution Failed with exit status {status}. No more retries.")
        });
    }
    out
}

fn strs(lines: &[String]) -> Vec<&str> {
    lines.iter().map(String::as_str).collect()
}

fn executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// An ssh (for `GIT_SSH_COMMAND`, with `GIT_SSH_VARIANT=simple`) that
/// counts its connections in the file `$FLAKY_COUNT`, logs its arguments
/// to `$FLAKY_COUNT.args`, refuses those whose numbers are in
/// `$FLAKY_FAIL`, stalls (until git goes) on those in `$FLAKY_STALL`, and
/// otherwise runs git's command here, as a server would.
fn flaky_ssh(repo: &Repo) -> PathBuf {
    let ssh = repo.scratch().join("flaky-ssh");
    executable(
        &ssh,
        "#!/bin/sh\n\
         n=$(($(cat \"$FLAKY_COUNT\" 2>/dev/null || echo 0) + 1)); echo $n >\"$FLAKY_COUNT\"\n\
         echo \"$*\" >>\"$FLAKY_COUNT.args\"\n\
         case \" ${FLAKY_STALL:-} \" in *\" $n \"*) cat >/dev/null; exit 255 ;; esac\n\
         case \" ${FLAKY_FAIL:-} \" in *\" $n \"*)\n\
         \x20 echo 'ssh: connect to host git.test port 22: Connection refused' >&2; exit 255 ;;\n\
         esac\n\
         for command; do :; done\n\
         exec sh -c \"$command\"\n",
    );
    ssh
}

/// What git prints for a clone whose ssh connection `flaky_ssh` refused.
const REFUSED: [&str; 6] = [
    "Cloning into 'project'...",
    "ssh: connect to host git.test port 22: Connection refused",
    "fatal: Could not read from remote repository.",
    "",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
];

#[test]
fn a_repository_is_checked_out_over_ssh() {
    if !sshd::available() {
        return;
    }
    let repo = Repo::make();
    let agent = agent();
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
    let short = &repo.feature[..7];
    run_cases(
        &agent,
        job("checkout-ssh", &repo)
            .env("SEMAPHORE_GIT_URL", &url)
            .env("GIT_SSH_COMMAND", ssh),
        &[(
            case(
                &[
                    ("SEMAPHORE_GIT_BRANCH", "feature"),
                    ("SEMAPHORE_GIT_SHA", &repo.feature),
                ],
                "",
                "git rev-parse HEAD",
            ),
            lines(&[
                "Performing shallow clone with depth: 50",
                "Cloning into 'project'...",
                &format!("HEAD is now at {short} feature"),
                "exit 0 in ~/project",
                &repo.feature,
            ]),
        )],
    );
}
