//! A compose job that checks out a repository and runs its tests.

use super::*;

/// `git` on the host, with no user or system configuration.
fn git(dir: &Path, args: &[&str]) {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Agent Test", "-c", "user.email=agent@test"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    run_bounded(command, b"", Duration::from_secs(60)).ok(&format!("git {args:?}"));
}

/// A repository with a test script and two commits, as a git bundle. The
/// script fails when the second commit sets the version to `broken`.
fn repository_bundle(version: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a repository directory");
    let repo = dir.path().join("repo");
    fs::create_dir(&repo).expect("create the repository");
    git(&repo, &["init", "-q", "-b", "main"]);
    let script = "#!/usr/bin/env bash\n\
                  echo \"test_checkout ... ok\"\n\
                  if [ \"$(cat VERSION)\" = broken ]; then\n\
                  \x20 echo \"test_version ... FAILED\"; echo \"1 of 2 tests failed\"; exit 1\n\
                  fi\n\
                  echo \"test_version ... ok\"; echo \"2 tests passed\"\n";
    fs::write(repo.join("test.sh"), script).expect("write test.sh");
    fs::set_permissions(repo.join("test.sh"), fs::Permissions::from_mode(0o755))
        .expect("chmod test.sh");
    git(&repo, &["add", "test.sh"]);
    git(&repo, &["commit", "-q", "-m", "Add the test script"]);
    fs::write(repo.join("VERSION"), version).expect("write VERSION");
    git(&repo, &["add", "VERSION"]);
    git(&repo, &["commit", "-q", "-m", "Set the version"]);
    let bundle = dir.path().join("repo.bundle");
    git(
        &repo,
        &[
            "bundle",
            "create",
            "-q",
            &bundle.to_string_lossy(),
            "HEAD",
            "main",
        ],
    );
    fs::read(&bundle).expect("read the bundle")
}

/// The job checks the repository out and runs its tests. The repository
/// reaches main as a git bundle injected with `files`: containers on the
/// compose network cannot reach a `git daemon` on the host's 127.0.0.1, and
/// a bundle carries the same history a clone would, with no server.
fn checkout_job(name: &str, version: &str) -> ComposeJob {
    ComposeJob::new(name, Container::new("main", GIT_IMAGE))
        .file("repo.bundle", repository_bundle(version), "0644")
        .command("git clone -q repo.bundle app")
        .command("cd app")
        .command("git --no-pager log --format=%s")
        .command("./test.sh")
        .on_pass("echo \"result: $SEMAPHORE_JOB_RESULT\"")
        .on_fail("echo \"result: $SEMAPHORE_JOB_RESULT\"")
}

fn expected_checkout_log(test_output: &str, status: i64, result: &str) -> Vec<Ev> {
    started_log(
        &[],
        files_step(&[("repo.bundle", "0644")]),
        vec![
            step("git clone -q repo.bundle app", "", 0),
            step("cd app", "", 0),
            step(
                "git --no-pager log --format=%s",
                "Set the version\nAdd the test script\n",
                0,
            ),
            step("./test.sh", test_output, status),
            result_export(0),
            step(
                "echo \"result: $SEMAPHORE_JOB_RESULT\"",
                &format!("result: {result}\n"),
                0,
            ),
        ],
        result,
    )
}

#[test]
fn checkout_and_tests_decide_the_result() {
    if !docker::ready() {
        return;
    }
    let passing = checkout_job("git-pass", "1.0");
    let failing = checkout_job("git-fail", "broken");
    let (passed, failed) = thread::scope(|s| {
        let passed = s.spawn(|| passing.run());
        let failed = s.spawn(|| failing.run());
        (
            passed.join().expect("the passing job"),
            failed.join().expect("the failing job"),
        )
    });
    assert_log(
        &passing,
        &passed.events,
        expected_checkout_log(
            "test_checkout ... ok\ntest_version ... ok\n2 tests passed\n",
            0,
            "passed",
        ),
    );
    assert_log(
        &failing,
        &failed.events,
        expected_checkout_log(
            "test_checkout ... ok\ntest_version ... FAILED\n1 of 2 tests failed\n",
            1,
            "failed",
        ),
    );
}
