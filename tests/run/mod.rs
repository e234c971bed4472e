//! Integration tests of `agent run`: real jobs in a real bash session on the
//! host, checked against the wire contract of docs/protocol.md §§3–6. Every run is
//! also checked by the support module for the §6.1 invariants, stdout equal to
//! the event log file, an exit code matching the result, and no process of
//! the job left behind.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::callback::CallbackServer;
use crate::support::{
    b64, b64_wrapped, background_processes, env_export, escapee, fields_of, log_of, no_files,
    result_export, step, wait_for_background_processes, wait_for_escapee, with_callbacks, Ev, Job,
    Outcome, Running, Sandbox, ENV_STEP, FILES_STEP, JOB_TIMEOUT, RESULT_STEP,
};

mod job_files;
mod output;
mod self_stop;
mod signals;

/// How long a test waits for an event of a job that is running normally.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("stat {}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// What `od -An -v -tx1` prints for `bytes`: 16 bytes a line, each as ` xx`.
fn od_dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| line.iter().map(|b| format!(" {b:02x}")).collect::<String>() + "\n")
        .collect()
}

/// A command printing the value of `name` as a child process sees it, in hex,
/// so that the comparison does not depend on the terminal.
fn dump_env_command(name: &str) -> String {
    format!("sh -c 'printf %s \"${name}\"' | od -An -v -tx1")
}

/// Replaces the merged output of the first step named `directive`, so that a
/// whole-sequence comparison can follow a check made on that output alone.
fn with_output(mut events: Vec<Ev>, directive: &str, output: &str) -> Vec<Ev> {
    let start = events
        .iter()
        .position(|ev| *ev == Ev::CmdStarted(directive.to_owned()))
        .unwrap_or_else(|| panic!("no step {directive:?}"));
    match events.get_mut(start + 1) {
        Some(Ev::Output(text)) => *text = output.to_owned(),
        _ => events.insert(start + 1, Ev::Output(output.to_owned())),
    }
    events
}

/// A bash loop that waits (at most 20 s) for `path` to exist, so a test can
/// hold a command open without a sleep of fixed length; the loop fails the
/// command if the file never comes.
fn wait_for_file_command(path: &Path) -> String {
    let path = path.display();
    format!("for i in $(seq 1 400); do [ -e '{path}' ] && break; sleep 0.05; done; [ -e '{path}' ]")
}

fn protocol_line(event: &serde_json::Value) -> String {
    let fields = fields_of(event["event"].as_str().unwrap_or_default()).expect("a known event");
    let body: Vec<String> = fields
        .iter()
        .map(|key| format!("{}:{}", serde_json::json!(key), event[*key]))
        .collect();
    format!("{{{}}}\n", body.join(","))
}

#[test]
fn hello_world_is_logged_like_the_protocol_example() {
    let out = Job::new("hello").command("echo Hello World").run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echo Hello World", "Hello World\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
    // A short burst is one event, and so is each line the agent writes.
    assert_eq!(out.step("echo Hello World").outputs, ["Hello World\n"]);
    let result_export = &out.steps()[3];
    assert_eq!(result_export.directive, ENV_STEP);
    assert_eq!(result_export.outputs, ["Exporting SEMAPHORE_JOB_RESULT\n"]);
    // Each line is compact JSON with the fields in the order of §6.1.
    for (line, event) in out.lines.iter().zip(&out.events) {
        assert_eq!(String::from_utf8_lossy(line), protocol_line(event));
    }
}

#[test]
fn a_job_without_commands_passes() {
    let out = Job::new("empty")
        .always("echo \"always $SEMAPHORE_JOB_RESULT\"")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                result_export(0),
                step(
                    "echo \"always $SEMAPHORE_JOB_RESULT\"",
                    "always passed\n",
                    0
                ),
            ],
            "passed"
        )
    );
}

#[test]
fn env_values_arrive_byte_exact_and_exported() {
    let long: Vec<u8> = (0..300).map(|i| b'a' + (i % 26) as u8).collect();
    let values: Vec<(&str, Vec<u8>)> = vec![
        ("QUOTES", br#"it's "double" and 'single' ""''"#.to_vec()),
        (
            "DOLLARS",
            b"$HOME ${PATH} $(echo no) $((1+1)) $1 $@ $".to_vec(),
        ),
        ("BACKTICKS", b"`echo no` and `id`".to_vec()),
        ("BACKSLASHES", br"a\b\\c\nd\'e\".to_vec()),
        ("NEWLINES", b"line1\nline2\n\nline4\n\n".to_vec()),
        ("BANGS", b"!! !$ !-1 a!b".to_vec()),
        ("PERCENT", b"%s %d %% %".to_vec()),
        ("SPACES", b"  leading,  inner and trailing  ".to_vec()),
        ("UNICODE", "héllo 日本 🎉".as_bytes().to_vec()),
        ("EMPTY", Vec::new()),
        ("LONG", long.clone()),
    ];
    let mut job = Job::new("env-values");
    for (name, value) in &values {
        job = job.env(name, value);
    }
    // CR and LF inside base64 text are ignored (§3.1).
    job = job.env_b64("WRAPPED", &b64_wrapped(&long));
    let mut sorted: Vec<(&str, Vec<u8>)> = values.clone();
    sorted.push(("WRAPPED", long));
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (name, _) in &sorted {
        job = job.command(&dump_env_command(name));
    }
    let out = job.run();

    let names: Vec<&str> = sorted.iter().map(|(name, _)| *name).collect();
    let mut expected = vec![env_export(&names), no_files()];
    for (name, value) in &sorted {
        expected.push(step(&dump_env_command(name), &od_dump(value), 0));
    }
    expected.push(result_export(0));
    assert_eq!(out.normalized(), log_of(expected, "passed"));
    let export_lines: Vec<String> = names.iter().map(|n| format!("Exporting {n}\n")).collect();
    assert_eq!(out.step(ENV_STEP).outputs, export_lines);
}

#[test]
fn env_vars_reach_the_jobs_jump_point_but_no_other_login_shell() {
    // A login shell with an empty environment, as an SSH session has, sees
    // nothing of the job (no startup file names it); through the job's own
    // jump point it sees the job's variables (§5.2 step 4, §8).
    let printf = r#"printf "[%s]\n" "$GREETING""#;
    let login = format!("env -i HOME=\"$HOME\" PATH=\"$PATH\" bash --login -c '{printf}'");
    let job = Job::new("env-login");
    let jump = format!(
        "env -i HOME=\"$HOME\" PATH=\"$PATH\" bash /tmp/ssh_jump_point-{} bash -c '{printf}'",
        job.job_id
    );
    let out = job
        .env("GREETING", "it's \"quoted\" $HOME")
        .command(&login)
        .command(&jump)
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&["GREETING"]),
                no_files(),
                step(&login, "[]\n", 0),
                step(&jump, "[it's \"quoted\" $HOME]\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn duplicate_env_names_are_deduplicated_last_wins_and_sorted() {
    let out = Job::new("env-dups")
        .env("B", "first")
        .env("a", "4")
        .env("A", "2")
        .env("_Z", "5")
        .env("B", "3")
        .env("Z", "6")
        .command("echo \"$A $B $Z $_Z $a\"")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&["A", "B", "Z", "_Z", "a"]),
                no_files(),
                step("echo \"$A $B $Z $_Z $a\"", "2 3 6 5 4\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
    assert_eq!(
        out.step(ENV_STEP).outputs,
        [
            "Exporting A\n",
            "Exporting B\n",
            "Exporting Z\n",
            "Exporting _Z\n",
            "Exporting a\n"
        ]
    );
}

/// The steps after a failed setup step: result export and the `failed`
/// epilogues, with files and commands skipped (§5.2 step 4 -> step 9).
fn failed_setup_job(name: &str) -> Job {
    Job::new(name)
        .command("echo never")
        .always("echo \"always $SEMAPHORE_JOB_RESULT\"")
        .on_pass("echo on-pass")
        .on_fail("echo on-fail")
}

fn failed_setup_tail() -> Vec<Vec<Ev>> {
    vec![
        result_export(0),
        step(
            "echo \"always $SEMAPHORE_JOB_RESULT\"",
            "always failed\n",
            0,
        ),
        step("echo on-fail", "on-fail\n", 0),
    ]
}

#[test]
fn an_undecodable_env_value_fails_the_export_step() {
    let out = failed_setup_job("env-undecodable")
        .env("GOOD", "fine")
        .env_b64("BROKEN", "%%% not base64 %%%")
        .file("never.txt", "x", "0644")
        .run();
    let mut expected = vec![step(
        ENV_STEP,
        "Failed to decode the value of environment variable 'BROKEN': not valid base64\n",
        1,
    )];
    expected.extend(failed_setup_tail());
    assert_eq!(out.normalized(), log_of(expected, "failed"));
    assert_eq!(out.step(ENV_STEP).outputs.len(), 1);
}

#[test]
fn an_env_name_that_is_not_a_shell_identifier_is_rejected() {
    let bad_names = ["BAD-NAME", "1ABC", "WITH SPACE", "A=B", ""];
    // The jobs run at once; each is checked on its own.
    let sandboxes: Vec<Sandbox> = bad_names.iter().map(|_| Sandbox::new()).collect();
    let running: Vec<Running> = bad_names
        .iter()
        .zip(&sandboxes)
        .map(|(bad, sandbox)| {
            let job = failed_setup_job("env-bad-name")
                .env("AAA", "1")
                .env(bad, "x")
                .env("ZZZ", "2");
            sandbox.spawn(&job)
        })
        .collect();
    for (bad, running) in bad_names.iter().zip(running) {
        let out = running.finish(JOB_TIMEOUT);
        let message = format!(
            "Invalid environment variable name '{bad}': a name must match [A-Za-z_][A-Za-z0-9_]*\n"
        );
        let mut expected = vec![step(ENV_STEP, &message, 1)];
        expected.extend(failed_setup_tail());
        assert_eq!(out.normalized(), log_of(expected, "failed"), "name {bad:?}");
        assert_eq!(out.step(ENV_STEP).outputs, [message]);
    }
}

#[test]
fn files_are_injected_at_resolved_paths_with_exact_modes() {
    let sandbox = Sandbox::new();
    let home = sandbox.home();
    let absolute = sandbox.root().join("abs/new/dir/a.txt");
    let binary: Vec<u8> = (0..=255u8).rev().cycle().take(1000).collect();
    let wrapped: Vec<u8> = (0..500u32).flat_map(|i| i.to_le_bytes()).collect();
    // An existing longer file must be replaced, not partly overwritten.
    fs::create_dir_all(home.join("rel")).unwrap();
    fs::write(
        home.join("rel/existing.txt"),
        "an older and much longer content\n",
    )
    .unwrap();
    let out = sandbox.run(
        &Job::new("files")
            .file(&absolute.display().to_string(), "absolute\n", "0600")
            .file(
                "~/tilde/sub/script.sh",
                "#!/bin/sh\necho script ran\n",
                "755",
            )
            .file("rel/nested/deep/c.bin", &binary, "0644")
            .file("rel/existing.txt", "new\n", "0640")
            .file_b64("~/wrapped.bin", &b64_wrapped(&wrapped), "0400")
            .command("~/tilde/sub/script.sh")
            .command("cat rel/existing.txt"),
    );
    let home = home.display();
    let injected = [
        format!("Injecting {} with file mode 0600\n", absolute.display()),
        format!("Injecting {home}/tilde/sub/script.sh with file mode 755\n"),
        format!("Injecting {home}/rel/nested/deep/c.bin with file mode 0644\n"),
        format!("Injecting {home}/rel/existing.txt with file mode 0640\n"),
        format!("Injecting {home}/wrapped.bin with file mode 0400\n"),
    ];
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                step(FILES_STEP, &injected.concat(), 0),
                step("~/tilde/sub/script.sh", "script ran\n", 0),
                step("cat rel/existing.txt", "new\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
    assert_eq!(out.step(FILES_STEP).outputs, injected);

    let home = sandbox.home();
    let expected_files: [(&Path, &[u8], u32); 5] = [
        (&absolute, b"absolute\n", 0o600),
        (
            &home.join("tilde/sub/script.sh"),
            b"#!/bin/sh\necho script ran\n",
            0o755,
        ),
        (&home.join("rel/nested/deep/c.bin"), &binary, 0o644),
        (&home.join("rel/existing.txt"), b"new\n", 0o640),
        (&home.join("wrapped.bin"), &wrapped, 0o400),
    ];
    for (path, content, mode) in expected_files {
        assert_eq!(fs::read(path).unwrap(), content, "{}", path.display());
        assert_eq!(mode_of(path), mode, "mode of {}", path.display());
    }
}

#[test]
fn a_bad_file_mode_fails_injection_and_leaves_no_file() {
    // `agent run` refuses such a file before anything runs (tests/job_file.rs);
    // the API accepts it, and the injection step fails.
    let agent = crate::support::server::TestAgent::start_default();
    let home = agent.home();
    for mode in ["abc", "0789"] {
        // Every file is checked before the first is written: only the bad
        // one is named, and nothing is written.
        let job = failed_setup_job("bad-mode")
            .file("good.txt", "good\n", "0644")
            .file("bad.txt", "bad\n", mode)
            .file("after.txt", "after\n", "0644");
        agent.submit_ok(&job.to_value());
        let events = agent.wait_for_job_finished(&job.job_id);
        let outputs = [
            format!(
                "Injecting {}/bad.txt with file mode {mode}\n",
                home.display()
            ),
            format!("bad file permission '{mode}'\n"),
        ];
        let mut expected = vec![env_export(&[]), step(FILES_STEP, &outputs.concat(), 1)];
        expected.extend(failed_setup_tail());
        assert_eq!(
            crate::support::normalize(&events),
            log_of(expected, "failed"),
            "mode {mode}"
        );
        assert!(!home.join("good.txt").exists(), "good.txt written");
        assert!(!home.join("bad.txt").exists(), "bad.txt left behind");
        assert!(!home.join("after.txt").exists(), "after.txt written");
    }
}

#[test]
fn undecodable_file_content_fails_injection() {
    let sandbox = Sandbox::new();
    let home = sandbox.home();
    let out = sandbox.run(
        &failed_setup_job("bad-content")
            .file("ok.txt", "ok\n", "0644")
            .file_b64("broken.txt", "!!! not base64 !!!", "0644")
            .file("after.txt", "after\n", "0644"),
    );
    let outputs = [
        format!(
            "Injecting {}/broken.txt with file mode 0644\n",
            home.display()
        ),
        "Failed to decode the content of the file.\n".to_owned(),
    ];
    let mut expected = vec![env_export(&[]), step(FILES_STEP, &outputs.concat(), 1)];
    expected.extend(failed_setup_tail());
    assert_eq!(out.normalized(), log_of(expected, "failed"));
    assert_eq!(out.step(FILES_STEP).outputs, outputs);
    assert!(!home.join("ok.txt").exists());
    assert!(!home.join("broken.txt").exists());
    assert!(!home.join("after.txt").exists());
}

#[test]
fn a_failing_command_stops_the_commands() {
    let out = Job::new("failing")
        .command("echo one")
        .command("false")
        .command("echo never")
        .on_pass("echo on-pass")
        .on_fail("echo \"on-fail $SEMAPHORE_JOB_RESULT\"")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echo one", "one\n", 0),
                step("false", "", 1),
                result_export(0),
                step(
                    "echo \"on-fail $SEMAPHORE_JOB_RESULT\"",
                    "on-fail failed\n",
                    0
                ),
            ],
            "failed"
        )
    );
}

#[test]
fn an_unknown_command_exits_127_with_bash_message() {
    let out = Job::new("unknown")
        .command("echhhho hi")
        .command("echo never")
        .run();
    let output = out.step("echhhho hi").output();
    assert!(
        output.contains("echhhho: command not found") && output.ends_with('\n'),
        "output {output:?}"
    );
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echhhho hi", &output, 127),
                result_export(0),
            ],
            "failed"
        )
    );
}

#[test]
fn epilogues_on_pass() {
    let out = Job::new("epi-pass")
        .command("echo main")
        .always("echo \"always $SEMAPHORE_JOB_RESULT\"")
        .on_pass("echo \"pass $SEMAPHORE_JOB_RESULT\"")
        .on_fail("echo never")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echo main", "main\n", 0),
                result_export(0),
                step(
                    "echo \"always $SEMAPHORE_JOB_RESULT\"",
                    "always passed\n",
                    0
                ),
                step("echo \"pass $SEMAPHORE_JOB_RESULT\"", "pass passed\n", 0),
            ],
            "passed"
        )
    );
}

#[test]
fn epilogues_on_fail() {
    let out = Job::new("epi-fail")
        .command("false")
        .always("echo \"always $SEMAPHORE_JOB_RESULT\"")
        .on_pass("echo never")
        .on_fail("echo \"fail $SEMAPHORE_JOB_RESULT\"")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("false", "", 1),
                result_export(0),
                step(
                    "echo \"always $SEMAPHORE_JOB_RESULT\"",
                    "always failed\n",
                    0
                ),
                step("echo \"fail $SEMAPHORE_JOB_RESULT\"", "fail failed\n", 0),
            ],
            "failed"
        )
    );
}

#[test]
fn failing_epilogues_stop_their_list_only_and_keep_the_result() {
    let passed = Job::new("epi-failing-pass")
        .command("echo main")
        .always("echo a1")
        .always("false")
        .always("echo a3")
        .on_pass("echo p1")
        .on_pass("(exit 2)")
        .on_pass("echo p3")
        .on_fail("echo never")
        .run();
    assert_eq!(
        passed.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echo main", "main\n", 0),
                result_export(0),
                step("echo a1", "a1\n", 0),
                step("false", "", 1),
                step("echo p1", "p1\n", 0),
                step("(exit 2)", "", 2),
            ],
            "passed"
        )
    );

    let failed = Job::new("epi-failing-fail")
        .command("false")
        .always("(exit 3)")
        .on_fail("(exit 4)")
        .on_fail("echo never")
        .run();
    assert_eq!(
        failed.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("false", "", 1),
                result_export(0),
                step("(exit 3)", "", 3),
                step("(exit 4)", "", 4),
            ],
            "failed"
        )
    );
}

#[test]
fn set_e_failure_ends_the_session() {
    let out = Job::new("set-e")
        .command("set -e")
        .command("false")
        .command("echo never")
        .always("echo always")
        .on_fail("echo f1")
        .on_fail("echo f2")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("set -e", "", 0),
                step("false", "", 1),
                result_export(1),
                step("echo always", "", 1),
                step("echo f1", "", 1),
            ],
            "failed"
        )
    );
}

#[test]
fn set_e_with_pipefail_ends_the_session_on_a_failed_pipeline() {
    let out = Job::new("set-e-pipefail")
        .command("set -e -o pipefail")
        .command("true | false | true")
        .command("echo never")
        .always("echo always")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("set -e -o pipefail", "", 0),
                step("true | false | true", "", 1),
                result_export(1),
                step("echo always", "", 1),
            ],
            "failed"
        )
    );
}

#[test]
fn pipefail_alone_fails_the_command_but_keeps_the_session() {
    let out = Job::new("pipefail")
        .command("set -o pipefail")
        .command("false | true")
        .always("echo \"alive $SEMAPHORE_JOB_RESULT\"")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("set -o pipefail", "", 0),
                step("false | true", "", 1),
                result_export(0),
                step("echo \"alive $SEMAPHORE_JOB_RESULT\"", "alive failed\n", 0),
            ],
            "failed"
        )
    );
}

#[test]
fn exit_7_reports_the_real_status_and_later_steps_fail() {
    let out = Job::new("exit-7")
        .command("echo before")
        .command("exit 7")
        .command("echo never")
        .always("echo a")
        .on_fail("echo f")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echo before", "before\n", 0),
                step("exit 7", "", 7),
                result_export(1),
                step("echo a", "", 1),
                step("echo f", "", 1),
            ],
            "failed"
        )
    );
}

#[test]
fn return_n_ends_the_command_with_status_n() {
    let out = Job::new("return-3")
        .command("return 3; echo never")
        .always("echo \"alive $SEMAPHORE_JOB_RESULT\"")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("return 3; echo never", "", 3),
                result_export(0),
                step("echo \"alive $SEMAPHORE_JOB_RESULT\"", "alive failed\n", 0),
            ],
            "failed"
        )
    );
}

#[test]
fn cwd_variables_functions_aliases_and_options_persist() {
    let sandbox = Sandbox::new();
    let home = sandbox.home().display().to_string();
    let check = "echo \"$LOCAL $EXPORTED\"; sh -c 'echo \"${LOCAL:-unset} $EXPORTED\"'; \
                 greet world; shopt -q nullglob && echo nullglob-on";
    let out = sandbox.run(
        &Job::new("persist")
            .command("pwd")
            .command("mkdir -p work/dir && cd work/dir")
            .command("pwd")
            .command("LOCAL=unexported; export EXPORTED=exported")
            .command("greet() { echo \"hello $1\"; }")
            .command("alias shout='echo LOUD'")
            .command("shopt -s nullglob")
            .command(check)
            .command("shout")
            .on_pass("greet epilogue; pwd"),
    );
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("pwd", &format!("{home}\n"), 0),
                step("mkdir -p work/dir && cd work/dir", "", 0),
                step("pwd", &format!("{home}/work/dir\n"), 0),
                step("LOCAL=unexported; export EXPORTED=exported", "", 0),
                step("greet() { echo \"hello $1\"; }", "", 0),
                step("alias shout='echo LOUD'", "", 0),
                step("shopt -s nullglob", "", 0),
                step(
                    check,
                    "unexported exported\nunset exported\nhello world\nnullglob-on\n",
                    0
                ),
                step("shout", "LOUD\n", 0),
                result_export(0),
                step(
                    "greet epilogue; pwd",
                    &format!("hello epilogue\n{home}/work/dir\n"),
                    0
                ),
            ],
            "passed"
        )
    );
}

#[test]
fn status_is_zero_at_the_start_of_every_command() {
    let out = Job::new("status-zero")
        .command("echo \"status=$?\"")
        .always("echo \"status=$?\"; (exit 5)")
        .on_pass("echo \"status=$?\"")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echo \"status=$?\"", "status=0\n", 0),
                result_export(0),
                step("echo \"status=$?\"; (exit 5)", "status=0\n", 5),
                step("echo \"status=$?\"", "status=0\n", 0),
            ],
            "passed"
        )
    );
}

#[test]
fn commands_run_on_a_terminal_with_stderr_merged_in_order() {
    let tty = "if [ -t 1 ] && [ -t 2 ]; then echo terminal; else echo no-terminal; fi";
    let merged = "echo out1; echo err1 >&2; echo out2; echo err2 >&2";
    let out = Job::new("tty").command(tty).command(merged).run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(tty, "terminal\n", 0),
                step(merged, "out1\nerr1\nout2\nerr2\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn multi_line_directives_run_as_one_command() {
    let sandbox = Sandbox::new();
    let home = sandbox.home().display().to_string();
    let block = "if [ -d \"$HOME\" ]; then\n  for i in 1 2 3; do\n    echo \"i=$i\"\n  done\nfi\n\
                 echo one \\\n  two\n# a comment line\n";
    let heredoc =
        "cat <<'EOF'\nliteral $HOME `x` \\n\nsecond line\nEOF\ncat <<EOF\nhome=$HOME\nEOF";
    let out = sandbox.run(&Job::new("multi-line").command(block).command(heredoc));
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(block, "i=1\ni=2\ni=3\none two\n", 0),
                step(
                    heredoc,
                    &format!("literal $HOME `x` \\n\nsecond line\nhome={home}\n"),
                    0
                ),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn an_alias_replaces_the_directive_and_shows_the_command() {
    let out = Job::new("alias")
        .aliased_command("Build it", "echo built")
        .aliased_command("Fail it", "false")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("Build it", "Running: echo built\nbuilt\n", 0),
                step("Fail it", "Running: false\n", 1),
                result_export(0),
            ],
            "failed"
        )
    );
    assert_eq!(out.step("Build it").outputs[0], "Running: echo built\n");
}
