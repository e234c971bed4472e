//! Mistakes in a job file of `agent run` (docs/protocol.md §3.4): a
//! misspelt key is named on stderr, an empty file and a bad file mode are
//! refused with exit code 2 before anything runs.

use std::fs;

use crate::support::docker::{run_bounded, CmdOutput};
use crate::support::{b64, Sandbox, JOB_TIMEOUT};

/// Runs `agent run --json` on `text` written to `name`, bounded.
fn run_file(sandbox: &Sandbox, name: &str, text: &str) -> CmdOutput {
    let path = sandbox.root().join(name);
    fs::write(&path, text).expect("write the job file");
    let mut command = sandbox.agent_command();
    command
        .arg("run")
        .arg("--json")
        .arg("--data-dir")
        .arg(sandbox.data_dir())
        .arg(&path);
    run_bounded(command, b"", JOB_TIMEOUT)
}

#[test]
fn an_unknown_key_is_named_and_the_job_still_runs() {
    let sandbox = Sandbox::new();
    let job_id = "unknown-key";
    let text = format!(
        "job_id: {job_id}\ncommands:\n  - directive: echo hi\n    alais: Say hi\ncolour: red\n"
    );
    let out = sandbox.run_text("job.yaml", &text, job_id);
    assert_eq!(out.result(), "passed");
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("unknown key"))
        .collect();
    let path = sandbox.root().join("job.yaml");
    assert_eq!(
        warnings,
        [
            format!(
                "agent: warning: {}: unknown key 'commands.0.alais' is ignored",
                path.display()
            ),
            format!(
                "agent: warning: {}: unknown key 'colour' is ignored",
                path.display()
            ),
        ],
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn a_known_job_file_gets_no_warning() {
    let sandbox = Sandbox::new();
    let text = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.yaml"))
        .expect("read examples/hello.yaml");
    let out = run_file(&sandbox, "hello.yaml", &text);
    let stderr = &out.stderr;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn an_empty_job_file_is_refused_with_exit_2() {
    let sandbox = Sandbox::new();
    for (name, text) in [
        ("empty.yaml", ""),
        ("blank.yaml", "\n  \n"),
        ("comments.yaml", "# a job, some day\n"),
        ("null.json", "null\n"),
    ] {
        let out = run_file(&sandbox, name, text);
        let stderr = &out.stderr;
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: something ran");
        let path = sandbox.root().join(name);
        assert_eq!(
            *stderr,
            format!(
                "agent: {}: invalid job request: it is empty (see examples/hello.yaml for one that runs)\n",
                path.display()
            ),
            "{name}"
        );
    }
}

#[test]
fn every_file_mode_is_checked_before_anything_runs() {
    let sandbox = Sandbox::new();
    let marker = sandbox.root().join("ran");
    let text = format!(
        r#"{{"job_id": "modes",
            "files": [{{"path": "good.txt", "content": "{c}", "mode": "0644"}},
                      {{"path": "bad.txt", "content": "{c}", "mode": "999"}}],
            "commands": [{{"directive": "touch '{m}'"}}]}}"#,
        c = b64("x"),
        m = marker.display()
    );
    let out = run_file(&sandbox, "modes.json", &text);
    let stderr = &out.stderr;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "events were written: {out:?}");
    assert!(
        stderr.contains("file bad.txt has mode '999'"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(!marker.exists(), "a command ran");
    assert!(
        !sandbox.home().join("good.txt").exists(),
        "a file was written"
    );
}

#[test]
fn a_failed_env_step_leaves_no_warning_about_the_env_file() {
    let sandbox = Sandbox::new();
    let text = r#"{"job_id": "bad-env",
        "env_vars": [{"name": "NOT VALID", "value": "eA=="}],
        "commands": [{"directive": "echo never"}]}"#;
    let out = sandbox.run_text("bad-env.json", text, "bad-env");
    assert_eq!(out.result(), "failed");
    assert!(
        !out.stderr.contains("WARN"),
        "stderr has a warning: {}",
        out.stderr
    );
}
