//! Job files in YAML and JSON, the version command, and callbacks sent by agent run.

use super::*;

#[test]
fn a_yaml_job_with_the_file_and_id_keys() {
    let sandbox = Sandbox::new();
    let job_id = Job::new("yaml-file").job_id;
    let yaml = format!(
        r#"id: {job_id}
env_vars:
  - name: GREETING
    value: {greeting}
file:
  - path: yaml/greeting.txt
    content: {content}
    mode: "0600"
commands:
  - directive: echo "$GREETING"
  - directive: |
      cat yaml/greeting.txt
      echo done
epilogue_always_commands:
  - directive: echo "result $SEMAPHORE_JOB_RESULT"
"#,
        greeting = b64("hello from yaml"),
        content = b64("file from yaml\n"),
    );
    let out = sandbox.run_text("job.yaml", &yaml, &job_id);
    let path = sandbox.home().join("yaml/greeting.txt");
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&["GREETING"]),
                step(
                    FILES_STEP,
                    &format!("Injecting {} with file mode 0600\n", path.display()),
                    0
                ),
                step("echo \"$GREETING\"", "hello from yaml\n", 0),
                step(
                    "cat yaml/greeting.txt\necho done\n",
                    "file from yaml\ndone\n",
                    0
                ),
                result_export(0),
                step(
                    "echo \"result $SEMAPHORE_JOB_RESULT\"",
                    "result passed\n",
                    0
                ),
            ],
            "passed"
        )
    );
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn a_yaml_job_with_the_files_and_job_id_keys() {
    let sandbox = Sandbox::new();
    let job_id = Job::new("yaml-files").job_id;
    let yaml = format!(
        "job_id: {job_id}\nfiles:\n  - path: ~/plural.txt\n    content: {}\n    mode: \"644\"\n\
         commands:\n  - directive: cat ~/plural.txt\n",
        b64("plural\n")
    );
    let out = sandbox.run_text("job.yml", &yaml, &job_id);
    let path = sandbox.home().join("plural.txt");
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                step(
                    FILES_STEP,
                    &format!("Injecting {} with file mode 644\n", path.display()),
                    0
                ),
                step("cat ~/plural.txt", "plural\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
    assert_eq!(mode_of(&path), 0o644);
}

#[test]
fn a_json_job_with_the_id_and_file_keys() {
    let sandbox = Sandbox::new();
    let job = Job::new("json-id")
        .file("singular.txt", "singular\n", "0644")
        .command("cat singular.txt");
    let mut request = job.to_value();
    let object = request.as_object_mut().unwrap();
    let job_id = object.remove("job_id").unwrap();
    object.insert("id".into(), job_id);
    let files = object.remove("files").unwrap();
    object.insert("file".into(), files);
    let out = sandbox.run_text("job.json", &request.to_string(), &job.job_id);
    let path = sandbox.home().join("singular.txt");
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                step(
                    FILES_STEP,
                    &format!("Injecting {} with file mode 0644\n", path.display()),
                    0
                ),
                step("cat singular.txt", "singular\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn a_job_file_that_cannot_be_run_exits_2() {
    let sandbox = Sandbox::new();
    let cases: [(&str, Option<&str>); 5] = [
        ("syntax.yaml", Some("commands: [ {directive: \"echo\"\n")),
        ("syntax.json", Some("{\"job_id\": \"x\", \"commands\": [")),
        (
            "wrong-type.json",
            Some("{\"job_id\": \"x\", \"commands\": 5}"),
        ),
        (
            "executor.json",
            Some("{\"job_id\": \"x\", \"executor\": \"kubernetes\", \"commands\": []}"),
        ),
        ("missing.json", None),
    ];
    for (name, text) in cases {
        let path = sandbox.root().join(name);
        if let Some(text) = text {
            fs::write(&path, text).unwrap();
        }
        let output = sandbox
            .agent_command()
            .arg("run")
            .arg("--json")
            .arg("--data-dir")
            .arg(sandbox.data_dir())
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}: {output:?}");
        assert!(
            output.stdout.is_empty(),
            "{name}: events printed: {output:?}"
        );
        assert!(
            !output.stderr.is_empty(),
            "{name}: no explanation on stderr"
        );
    }
    let usage = sandbox.agent_command().arg("run").output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "no job file: {usage:?}");
}

#[test]
fn background_jobs_print_no_job_control_notices() {
    let out = Job::new("no-notices")
        .command("sleep 0.1 & sleep 0.3; echo first")
        .command("true & sleep 0.2; echo second")
        .run();
    assert_eq!(out.result(), "passed");
    assert_eq!(
        out.step("sleep 0.1 & sleep 0.3; echo first").output(),
        "first\n"
    );
    assert_eq!(
        out.step("true & sleep 0.2; echo second").output(),
        "second\n"
    );
}

#[test]
fn version_prints_the_crate_version_and_the_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("version")
        .output()
        .expect("run agent version");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let line = text.trim_end();
    let prefix = concat!("agent ", env!("CARGO_PKG_VERSION"));
    assert!(
        line.starts_with(prefix),
        "{line:?} should start with the name and the crate version"
    );
    // Built from a git checkout (as the tests always are), the commit follows.
    let in_checkout = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if in_checkout {
        let commit = line
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(" ("))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no commit in {line:?}"));
        assert!(
            commit.len() >= 12 && commit[..12].bytes().all(|b| b.is_ascii_hexdigit()),
            "{commit:?} is not a commit"
        );
    }
}

/// The job file's text with callback URLs and a token.
fn job_text_with_callbacks(job: &Job, finished: &str, teardown_finished: &str) -> String {
    serde_json::to_string_pretty(&with_callbacks(
        job,
        finished,
        teardown_finished,
        "run-token",
    ))
    .expect("serialise the job")
}

#[test]
fn callbacks_in_the_job_file_are_sent_when_the_job_ends() {
    let sandbox = Sandbox::new();
    let server = CallbackServer::start();
    let job = Job::new("run-callbacks").command("false");
    let text = job_text_with_callbacks(&job, &server.url("/finished"), &server.url("/teardown"));
    let out = sandbox.run_text("job.json", &text, &job.job_id);
    assert_eq!(out.exit_code(), Some(1), "stderr: {}", out.stderr);
    assert_eq!(out.result(), "failed");
    // `agent run` has sent both before it exits: nothing to wait for.
    let requests = server.requests();
    let seen: Vec<(&str, &str, String, Option<&str>)> = requests
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.path.as_str(),
                r.body_text(),
                r.header("authorization"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "POST",
                "/finished",
                r#"{"result": "failed"}"#.to_owned(),
                Some("Bearer run-token")
            ),
            (
                "POST",
                "/teardown",
                "{}".to_owned(),
                Some("Bearer run-token")
            ),
        ]
    );
}

#[test]
fn a_signal_while_callbacks_are_retried_ends_agent_run_at_once() {
    let sandbox = Sandbox::new();
    // Every attempt is answered 500, so `agent run` would retry for a minute.
    let server = CallbackServer::builder().fail_first(usize::MAX).start();
    let job = Job::new("run-callbacks-signal").command("echo hi");
    let text = job_text_with_callbacks(&job, &server.url("/finished"), &server.url("/teardown"));
    let running = sandbox.spawn_text("job.json", &text, &job.job_id);
    server.wait_for(1, EVENT_TIMEOUT);
    let signalled = Instant::now();
    running.signal(libc::SIGINT);
    let out = running.finish(JOB_TIMEOUT);
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "agent run took {took:?} to end after SIGINT"
    );
    // The job had passed; the exit code still says so.
    assert_eq!(out.exit_code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.result(), "passed");
    assert!(
        out.stderr
            .contains("signal 2 received, giving up the callbacks"),
        "stderr: {}",
        out.stderr
    );
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.iter().all(|p| p == "/finished"),
        "the teardown callback is not tried once the callbacks are given up: {paths:?}"
    );
}
