//! Compose jobs that check out a repository and run its tests: with git
//! itself, and with the session's `checkout` inside main.

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

/// The commit a bundle's `main` names (its header lists the refs).
fn bundle_main(bundle: &[u8]) -> String {
    String::from_utf8_lossy(bundle)
        .lines()
        .find_map(|line| line.strip_suffix(" refs/heads/main").map(str::to_owned))
        .expect("main in the bundle's header")
}

/// `checkout` is in main's session too: from a bare repository made there
/// (the bundle's history), with the toolbox's variables, it leaves the
/// shell in the checkout, where the tests run.
#[test]
fn checkout_runs_in_main() {
    if !docker::ready() {
        return;
    }
    let bundle = repository_bundle("1.0");
    let sha = bundle_main(&bundle);
    let export = format!(
        "export SEMAPHORE_GIT_URL=file://$PWD/app.git SEMAPHORE_GIT_BRANCH=main SEMAPHORE_GIT_SHA={sha}"
    );
    let run_checkout =
        "out=$PWD/checkout.out; checkout >$out 2>&1; s=$?; cat $out; echo \"exit $s in ${PWD##*/}\"";
    let job = ComposeJob::new("git-checkout", Container::new("main", GIT_IMAGE))
        .file("repo.bundle", bundle, "0644")
        .command("git clone -q --bare repo.bundle app.git")
        .command(&export)
        .command(run_checkout)
        .command("./test.sh");
    let ran = job.run();
    assert_log(
        &job,
        &ran.events,
        started_log(
            &[],
            files_step(&[("repo.bundle", "0644")]),
            vec![
                step("git clone -q --bare repo.bundle app.git", "", 0),
                step(&export, "", 0),
                step(
                    run_checkout,
                    &format!(
                        "Performing shallow clone with depth: 50\nCloning into 'app'...\n\
                         HEAD is now at {} Set the version\nexit 0 in app\n",
                        &sha[..7]
                    ),
                    0,
                ),
                step(
                    "./test.sh",
                    "test_checkout ... ok\ntest_version ... ok\n2 tests passed\n",
                    0,
                ),
                result_export(0),
            ],
            "passed",
        ),
    );
}
