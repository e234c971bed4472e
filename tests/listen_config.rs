//! The configuration of listen mode: a config file and the flags that win
//! over it, the errors that stop the agent before it talks to anyone, and
//! `agent start` with only `serve`'s flags, which is still `serve`.

use crate::support::control_plane::ControlPlane;
use crate::support::listen_agent::{outputs, ListenAgent, START_TIMEOUT};
use crate::support::{Job, JOB_TIMEOUT};

#[test]
fn a_config_file_configures_the_agent_and_flags_win_over_it() {
    let cp = ControlPlane::start();
    let config = format!(
        "endpoint: {}\ntoken: wrong-token\nno-https: true\nenv-vars:\n  - FROM_AGENT=configured value\n",
        cp.endpoint()
    );
    let agent = ListenAgent::builder()
        .config_file(&config)
        .arg("--token")
        .arg(crate::support::control_plane::REGISTRATION_TOKEN)
        .start(&cp);
    let job = Job::new("listen-config").command("echo \"$FROM_AGENT\"");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    let output = outputs(&cp, &job.job_id);
    assert!(output.contains("Exporting FROM_AGENT\n"), "{output}");
    assert!(output.contains("configured value\n"), "{output}");
}

#[test]
fn an_unknown_key_in_the_config_file_is_an_error_that_names_it() {
    let cp = ControlPlane::start();
    let config = format!(
        "endpoint: {}\ntoken: t\nno-https: true\nkubernetes-pod-spec: x\n",
        cp.endpoint()
    );
    let mut agent = ListenAgent::builder().config_file(&config).start(&cp);
    let status = agent.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(2));
    assert!(
        agent.stderr_text().contains("kubernetes-pod-spec"),
        "{}",
        agent.stderr_text()
    );
    assert!(cp.registrations().is_empty());
}

#[test]
fn a_missing_token_is_an_error() {
    let cp = ControlPlane::start();
    let mut agent = ListenAgent::builder()
        .no_endpoint_flags()
        .arg("--endpoint")
        .arg(&cp.endpoint())
        .start(&cp);
    let status = agent.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(2));
    assert!(
        agent.stderr_text().contains("no token"),
        "{}",
        agent.stderr_text()
    );
}

#[test]
fn start_with_only_serve_flags_is_serve() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["start", "--statsd-host", "127.0.0.1", "--statsd-port", "9"])
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args([
            "--auth-token-secret",
            "a-secret-of-thirty-two-bytes-at-least",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("HOME", dir.path())
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            dir.path().join("agent_log"),
        )
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the agent");
    // The first stdout line says where it listens; it is read on a thread
    // so that the wait is bounded.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let first = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.contains(" listening on https://127.0.0.1:"),
        "{first:?}"
    );
}
