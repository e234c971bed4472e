//! Listen mode against a control plane that misbehaves: it refuses or
//! cannot be reached at registration, cannot give a job, expires the log
//! token (401), refuses further lines (422), goes down for 30 s in the
//! middle of a job, answers slower than the agent waits, or stops answering
//! syncs altogether. Whatever happens, waits are bounded and no line of a
//! job's log is lost or doubled.

use std::fs;
use std::time::{Duration, Instant};

use crate::support::control_plane::ControlPlane;
use crate::support::listen_agent::{
    assert_pushed_log_complete, expected_lines, printed_lines, printing_job, read_reason,
    shutdown_hook, ListenAgent, START_TIMEOUT,
};
use crate::support::server::unix_now;
use crate::support::{wait_until, JOB_TIMEOUT};

#[test]
fn a_certificate_nobody_vouches_for_is_refused() {
    let cp = ControlPlane::builder().tls().start();
    // The system's roots do not hold the test's self-signed certificate.
    let mut agent = ListenAgent::builder()
        .env("SSL_CERT_FILE", "")
        .env("AGENT_LISTEN_REGISTER_ATTEMPTS", "2")
        .env("AGENT_LISTEN_REGISTER_DELAY_MS", "100")
        .start_untrusted(&cp);
    let status = agent.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(2), "{}", agent.stderr_text());
    assert!(
        agent.stderr_text().contains("cannot register with"),
        "{}",
        agent.stderr_text()
    );
    assert!(cp.registrations().is_empty());
}

#[test]
fn a_refused_registration_exits_with_the_answer() {
    let cp = ControlPlane::start();
    let mut agent = ListenAgent::builder()
        .no_endpoint_flags()
        .arg("--endpoint")
        .arg(&cp.endpoint())
        .arg("--no-https")
        .arg("--token")
        .arg("not-the-token")
        .env("AGENT_LISTEN_REGISTER_ATTEMPTS", "2")
        .env("AGENT_LISTEN_REGISTER_DELAY_MS", "100")
        .start(&cp);
    let status = agent.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(2));
    let stderr = agent.stderr_text();
    assert!(
        stderr.contains("POST /register answered 401: {\"message\":\"bad registration token\"}"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_endpoint_at_start_ends_in_a_bounded_clear_failure() {
    let cp = ControlPlane::start();
    cp.set_down(true);
    let started = Instant::now();
    let mut agent = ListenAgent::builder()
        .env("AGENT_LISTEN_REGISTER_ATTEMPTS", "3")
        .env("AGENT_LISTEN_REGISTER_DELAY_MS", "200")
        .start(&cp);
    let status = agent.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(2));
    let stderr = agent.stderr_text();
    assert!(
        stderr.contains(&format!(
            "cannot register with {} (3 attempts)",
            cp.endpoint()
        )),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn a_job_the_control_plane_cannot_give_fails_after_bounded_retries() {
    let cp = ControlPlane::start();
    let _agent = ListenAgent::builder()
        .env("AGENT_LISTEN_GET_JOB_ATTEMPTS", "2")
        .env("AGENT_LISTEN_GET_JOB_DELAY_MS", "100")
        .start(&cp);
    cp.schedule_raw("no-such-job", None);
    assert_eq!(cp.wait_for_result("no-such-job", JOB_TIMEOUT), "failed");
}

#[test]
fn a_401_on_the_log_route_refreshes_the_token_and_loses_no_line() {
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder().start(&cp);
    let job = printing_job("listen-401", 40, "0.05");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    cp.wait_for_line(&job.job_id, "a first output", JOB_TIMEOUT, |v| {
        v["event"] == "cmd_output"
    });
    cp.expire_log_token();
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    assert_eq!(printed_lines(&cp, &job.job_id), expected_lines(40));
    assert!(cp.refreshes() >= 1);
    // The refused lines were pushed again, from the same line.
    let pushes = cp.pushes();
    let refused = pushes
        .iter()
        .position(|p| p.status == 401)
        .expect("a push answered 401");
    let retry = &pushes[refused + 1];
    assert_eq!(
        (retry.start_from, retry.status),
        (pushes[refused].start_from, 200)
    );
}

/// A stand-in `artifact` CLI on PATH that keeps the file it is given;
/// returns the PATH to use and where the file lands.
fn artifact_cli(dir: &tempfile::TempDir) -> (String, std::path::PathBuf) {
    let record = dir.path().join("uploaded");
    let cli = dir.path().join("artifact");
    fs::write(
        &cli,
        format!(
            "#!/usr/bin/env bash\ncp \"${{@: -1}}\" '{}'\n",
            record.display()
        ),
    )
    .expect("write the stand-in CLI");
    fs::set_permissions(&cli, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make it executable");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, record)
}

#[test]
fn a_422_stops_the_push_the_job_still_finishes_and_the_log_is_uploaded() {
    let cp = ControlPlane::start();
    cp.refuse_lines_after(5);
    let dir = tempfile::tempdir().expect("a temp dir");
    let (path, uploaded) = artifact_cli(&dir);
    let agent = ListenAgent::builder()
        .env("PATH", &path)
        .arg("--upload-job-logs")
        .arg("when-trimmed")
        .start(&cp);
    let job = printing_job("listen-422", 30, "0.02")
        .env("SEMAPHORE_ARTIFACT_TOKEN", "tok-123")
        .env("SEMAPHORE_ORGANIZATION_URL", "https://org.example");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    let pushes = cp.pushes();
    let refused: Vec<_> = pushes.iter().filter(|p| p.status == 422).collect();
    assert_eq!(refused.len(), 1, "pushes after the 422: {pushes:#?}");
    assert_eq!(pushes.last().map(|p| p.status), Some(422));
    assert!(cp.lines(&job.job_id).len() <= 5);
    let text = fs::read_to_string(&uploaded).expect("the log was uploaded");
    assert!(text.contains("line 30\n"), "{text}");
}

#[test]
fn a_control_plane_down_for_30_seconds_mid_job_gets_the_whole_log_afterwards() {
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder().start(&cp);
    // About 40 s of output, one line every 0.5 s.
    let job = printing_job("listen-down", 80, "0.5");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    cp.wait_for_line(&job.job_id, "line 2", JOB_TIMEOUT, |v| {
        v["output"].as_str().is_some_and(|o| o.contains("line 2\n"))
    });
    cp.set_down(true);
    std::thread::sleep(Duration::from_secs(30));
    cp.set_down(false);
    assert_eq!(
        cp.wait_for_result(&job.job_id, Duration::from_secs(90)),
        "passed"
    );
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    assert_eq!(printed_lines(&cp, &job.job_id), expected_lines(80));
}

#[test]
fn a_slow_control_plane_times_out_and_nothing_piles_up() {
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder()
        .env("AGENT_LISTEN_REQUEST_TIMEOUT_MS", "500")
        .start(&cp);
    let job = printing_job("listen-slow", 60, "0.05");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    cp.wait_for_line(&job.job_id, "a first output", JOB_TIMEOUT, |v| {
        v["event"] == "cmd_output"
    });
    // Every answer now takes 2 s; the agent gives up on each after 0.5 s.
    cp.set_delay(Some(Duration::from_secs(2)));
    let slow_since = Instant::now();
    wait_until("a few timed-out requests", Duration::from_secs(20), || {
        slow_since.elapsed() > Duration::from_secs(4)
    });
    cp.set_delay(None);
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    assert_eq!(printed_lines(&cp, &job.job_id), expected_lines(60));
    assert_eq!(cp.max_in_flight("log"), 1, "log pushes overlapped");
    assert_eq!(cp.max_in_flight("sync"), 1, "syncs overlapped");
}

#[test]
fn without_a_sync_for_too_long_the_agent_gives_up_and_exits_1() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let (hook, record) = shutdown_hook(&dir);
    let mut agent = ListenAgent::builder()
        .env("AGENT_LISTEN_SYNC_GIVE_UP_MS", "2000")
        .arg("--shutdown-hook-path")
        .arg(&hook)
        .start(&cp);
    cp.wait_for_sync("a first sync", START_TIMEOUT, |_| true);
    cp.set_down(true);
    let status = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", agent.stderr_text());
    assert_eq!(read_reason(&record), "UNABLE_TO_SYNC");
    assert!(agent.stderr_text().contains("no successful sync"));
}
