//! Integration tests of listen mode (`agent start`): the real binary
//! registers with the test control plane of `support::control_plane` over
//! loopback, syncs, fetches its jobs and pushes their logs. Each test reads
//! as a sentence about what the agent does; the control plane records what
//! it received and can misbehave on request.

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::support::control_plane::ControlPlane;
use crate::support::listen_agent::{assert_pushed_log_complete, reported_states, ListenAgent};
use crate::support::server::{unix_now, TestAgent};
use crate::support::{assert_no_job_processes, normalize, wait_until, Job, JOB_TIMEOUT};

/// How long an agent may take to register and sync for the first time.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The events with the agent's HOME written as `~`, since two agents have
/// two homes.
fn home_as_tilde(events: &[Value], home: &std::path::Path) -> Vec<Value> {
    let home = home.display().to_string();
    events
        .iter()
        .map(|e| serde_json::from_str(&e.to_string().replace(&home, "~")).expect("JSON"))
        .collect()
}

fn the_job() -> Job {
    Job::new("listen-shell")
        .env("GREETING", "hello")
        .file("notes/a.txt", "file content\n", "0644")
        .command("echo \"$GREETING world\"")
        .aliased_command("Show the file", "cat ~/notes/a.txt")
        .command("printf 'no newline'")
        .command("for i in 1 2 3; do echo line $i; done")
        // Long enough for a sync or two while it runs.
        .command("sleep 0.7")
        .always("echo always")
        .on_pass("echo on pass")
}

#[test]
fn a_shell_job_runs_and_its_pushed_log_is_the_log_serve_writes() {
    let job = the_job();
    let serve_events = {
        let agent = TestAgent::start_default();
        agent.submit_ok(&job.to_value());
        home_as_tilde(&agent.wait_for_job_finished(&job.job_id), &agent.home())
    };
    let since = unix_now();
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder().start(&cp);
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    assert_eq!(
        normalize(&home_as_tilde(&cp.lines(&job.job_id), &agent.home())),
        normalize(&serve_events)
    );
    assert_no_job_processes(&job.job_id);

    // The job was fetched, run and acknowledged, state by state.
    wait_until("waiting-for-jobs after the job", START_TIMEOUT, || {
        reported_states(&cp).ends_with(&["finished-job".into(), "waiting-for-jobs".into()])
    });
    let states = reported_states(&cp);
    // `starting-job` lasts only while the request is fetched.
    let expected = [
        "waiting-for-jobs",
        "running-job",
        "finished-job",
        "waiting-for-jobs",
    ];
    let mut rest = states.iter().map(String::as_str);
    for state in expected {
        assert!(
            rest.any(|s| s == state),
            "states {states:?} do not go through {expected:?}"
        );
    }
    let finished = cp.wait_for_sync("finished-job", START_TIMEOUT, |s| {
        s["state"] == "finished-job"
    });
    assert_eq!(finished["job_id"], job.job_id.as_str());
    assert_eq!(finished["job_result"], "passed");
    assert_eq!(finished["interrupted_at"], 0);

    // The registration says who the agent is.
    let registration = &cp.registrations()[0];
    assert_eq!(registration["pid"], agent.pid());
    assert_eq!(registration["single_job"], false);
    assert_eq!(registration["idle_timeout"], 0);
    assert_eq!(registration["job_id"], "");
    assert_eq!(registration["name"].as_str().map(str::len), Some(20));
    assert!(registration["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert!(registration["arch"].as_str().is_some_and(|v| !v.is_empty()));
    let user_agent = cp.register_header("User-Agent").unwrap_or_default();
    assert!(
        user_agent.starts_with("SemaphoreAgent/"),
        "User-Agent {user_agent:?}"
    );
}

/// A shutdown hook that records the reason it was given; returns the hook's
/// path and where the reason lands.
fn shutdown_hook(agent_dir: &tempfile::TempDir) -> (String, std::path::PathBuf) {
    let record = agent_dir.path().join("reason");
    let hook = agent_dir.path().join("shutdown-hook.sh");
    fs::write(
        &hook,
        format!(
            "printf '%s' \"$SEMAPHORE_AGENT_SHUTDOWN_REASON\" > '{}'\n",
            record.display()
        ),
    )
    .expect("write the hook");
    (hook.display().to_string(), record)
}

fn read_reason(record: &std::path::Path) -> String {
    fs::read_to_string(record).unwrap_or_else(|e| panic!("the shutdown hook did not run: {e}"))
}

/// A job whose main command runs until it is stopped, leaving background
/// processes of every kind behind; returns it and that command.
fn endless_job(name: &str) -> (Job, String) {
    let job = Job::new(name);
    let directive = format!(
        "{}echo started; bash -c 'sleep 1000; : {}'",
        crate::support::background_processes(&job.job_id),
        crate::support::token_for(&job.job_id)
    );
    (job.command(&directive), directive)
}

fn wait_for_cmd_started(cp: &ControlPlane, job_id: &str, directive: &str) {
    cp.wait_for_line(
        job_id,
        &format!("cmd_started {directive:?}"),
        JOB_TIMEOUT,
        |v| v["event"] == "cmd_started" && v["directive"] == directive,
    );
}

fn last_event(cp: &ControlPlane, job_id: &str) -> Value {
    cp.lines(job_id).last().cloned().unwrap_or(Value::Null)
}

#[test]
fn a_control_plane_over_https_is_trusted_through_ssl_cert_file() {
    let cp = ControlPlane::builder().tls().start();
    let agent = ListenAgent::builder().start(&cp);
    let job = Job::new("listen-tls").command("echo over tls");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
}

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
fn stop_job_stops_the_running_command_and_reports_stopped() {
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder().start(&cp);
    let (job, directive) = endless_job("listen-stop");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    wait_for_cmd_started(&cp, &job.job_id, &directive);
    crate::support::wait_for_background_processes(&job.job_id);
    cp.request_stop(&job.job_id);
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "stopped");
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    assert_eq!(last_event(&cp, &job.job_id)["result"], "stopped");
    // The stop was asked once; the next report about the job is its end
    // (`stopping-job` lasts only until the job is torn down).
    let syncs = cp.syncs();
    let asked = syncs
        .iter()
        .position(|s| s.response["action"] == "stop-job")
        .expect("a stop-job answer");
    let after: Vec<&str> = syncs[asked + 1..]
        .iter()
        .map(|s| s.request["state"].as_str().unwrap_or_default())
        .collect();
    assert!(
        matches!(after.first(), Some(&"stopping-job") | Some(&"finished-job")),
        "after stop-job: {after:?}"
    );
    assert_no_job_processes(&job.job_id);
}

#[test]
fn shutdown_while_waiting_disconnects_and_runs_the_hook() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let (hook, record) = shutdown_hook(&dir);
    let mut agent = ListenAgent::builder()
        .arg("--shutdown-hook-path")
        .arg(&hook)
        .start(&cp);
    cp.wait_for_sync("a first sync", START_TIMEOUT, |_| true);
    cp.request_shutdown("requested");
    let status = agent.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert_eq!(cp.disconnects(), 1);
    assert_eq!(read_reason(&record), "REQUESTED");
}

#[test]
fn shutdown_while_a_job_runs_stops_it_and_pushes_its_log_first() {
    let cp = ControlPlane::start();
    let mut agent = ListenAgent::builder().start(&cp);
    let (job, directive) = endless_job("listen-shutdown-job");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    wait_for_cmd_started(&cp, &job.job_id, &directive);
    crate::support::wait_for_background_processes(&job.job_id);
    cp.request_shutdown("requested");
    let status = agent.wait_exit(JOB_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    assert_eq!(last_event(&cp, &job.job_id)["result"], "stopped");
    assert_eq!(cp.disconnects(), 1);
    assert_no_job_processes(&job.job_id);
}

#[test]
fn disconnect_after_job_runs_one_job_then_exits() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let (hook, record) = shutdown_hook(&dir);
    let mut agent = ListenAgent::builder()
        .arg("--disconnect-after-job")
        .arg("--shutdown-hook-path")
        .arg(&hook)
        .start(&cp);
    let job = Job::new("listen-single").command("echo one job");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    let status = agent.wait_exit(JOB_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert_eq!(cp.result(&job.job_id).as_deref(), Some("passed"));
    assert_eq!(cp.registrations()[0]["single_job"], true);
    assert_eq!(cp.disconnects(), 1);
    assert_eq!(read_reason(&record), "JOB_FINISHED");
}

#[test]
fn the_idle_timeout_disconnects_an_agent_without_jobs() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let (hook, record) = shutdown_hook(&dir);
    let started = std::time::Instant::now();
    let mut agent = ListenAgent::builder()
        .arg("--disconnect-after-idle-timeout")
        .arg("1")
        .arg("--shutdown-hook-path")
        .arg(&hook)
        .start(&cp);
    let status = agent.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(cp.registrations()[0]["idle_timeout"], 1);
    assert_eq!(cp.disconnects(), 1);
    assert_eq!(read_reason(&record), "IDLE");
}

#[test]
fn job_id_asks_the_control_plane_for_that_job_only() {
    let cp = ControlPlane::start();
    let job = Job::new("listen-job-id").command("echo the one");
    let mut agent = ListenAgent::builder()
        .arg("--disconnect-after-job")
        .arg("--job-id")
        .arg(&job.job_id)
        .start(&cp);
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    let status = agent.wait_exit(JOB_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    let registration = &cp.registrations()[0];
    assert_eq!(registration["job_id"], job.job_id.as_str());
    assert_eq!(registration["single_job"], true);
    assert_eq!(cp.result(&job.job_id).as_deref(), Some("passed"));
}

/// A job that prints `n` numbered lines, `pause` apart.
fn printing_job(name: &str, n: usize, pause: &str) -> Job {
    Job::new(name).command(&format!(
        "for i in $(seq 1 {n}); do echo line $i; sleep {pause}; done"
    ))
}

/// The numbered lines of `printing_job` in a pushed log, in order.
fn printed_lines(cp: &ControlPlane, job_id: &str) -> Vec<String> {
    let text: String = cp
        .lines(job_id)
        .iter()
        .filter(|v| v["event"] == "cmd_output")
        .map(|v| v["output"].as_str().unwrap_or_default().to_owned())
        .collect();
    text.lines()
        .filter(|l| l.starts_with("line "))
        .map(str::to_owned)
        .collect()
}

fn expected_lines(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("line {i}")).collect()
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

#[test]
fn a_job_with_a_pull_logger_fails_with_a_clear_message() {
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder().start(&cp);
    let job = Job::new("listen-pull").command("echo never");
    let mut request = job.to_value();
    request["logger"] = serde_json::json!({ "method": "pull" });
    cp.schedule_raw(&job.job_id, Some(request));
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "failed");
    wait_until("the reason in the agent log", START_TIMEOUT, || {
        agent
            .stderr_text()
            .contains("logger method 'pull' is not available in listen mode")
    });
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
    let slow_since = std::time::Instant::now();
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
fn sigterm_during_a_job_waits_the_grace_period_then_stops_it_and_exits() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let (hook, record) = shutdown_hook(&dir);
    let mut agent = ListenAgent::builder()
        .arg("--interruption-grace-period")
        .arg("2")
        .arg("--shutdown-hook-path")
        .arg(&hook)
        .start(&cp);
    let (job, directive) = endless_job("listen-sigterm");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    wait_for_cmd_started(&cp, &job.job_id, &directive);
    crate::support::wait_for_background_processes(&job.job_id);
    let signalled = std::time::Instant::now();
    agent.signal(libc::SIGTERM);
    let interrupted = cp.wait_for_sync("interrupted_at", START_TIMEOUT, |s| {
        s["interrupted_at"].as_u64().unwrap_or(0) != 0
    });
    assert_eq!(interrupted["state"], "running-job");
    assert!(interrupted["interrupted_at"].as_i64().unwrap_or(0) >= since);
    let status = agent.wait_exit(JOB_TIMEOUT);
    assert!(signalled.elapsed() >= Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert_eq!(cp.result(&job.job_id).as_deref(), Some("stopped"));
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    assert_eq!(read_reason(&record), "INTERRUPTED");
    assert_eq!(cp.disconnects(), 1);
    assert_no_job_processes(&job.job_id);
}

#[test]
fn sigterm_while_waiting_exits_at_once() {
    // No next_sync_after: the agent syncs every 3 to 6 s, but a signal
    // makes it sync at once.
    let cp = ControlPlane::builder().next_sync_after(0).start();
    let mut agent = ListenAgent::builder()
        .arg("--interruption-grace-period")
        .arg("60")
        .start(&cp);
    cp.wait_for_sync("a first sync", START_TIMEOUT, |_| true);
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert_eq!(cp.disconnects(), 1);
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

// ---------------------------------------------------------------------------
// Configuration

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
    let output: String = cp
        .lines(&job.job_id)
        .iter()
        .filter_map(|v| v["output"].as_str().map(str::to_owned))
        .collect();
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
fn an_unreachable_endpoint_at_start_ends_in_a_bounded_clear_failure() {
    let cp = ControlPlane::start();
    cp.set_down(true);
    let started = std::time::Instant::now();
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
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        line
    });
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    if reader.is_finished() {
        first = reader.join().unwrap_or_default();
    }
    assert!(
        first.contains(" listening on https://127.0.0.1:"),
        "{first:?}"
    );
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

// ---------------------------------------------------------------------------
// Hooks

/// A hook script that prints `line`, exports `FROM_HOOK` and ends with
/// status `code`, whether sourced or run with bash.
fn hook(dir: &tempfile::TempDir, name: &str, line: &str, code: i32) -> String {
    let path = dir.path().join(name);
    // `return` ends a sourced hook; run with bash it fails, and `exit` ends it.
    let body =
        format!("echo '{line}'\nexport FROM_HOOK=set\nreturn {code} 2>/dev/null || exit {code}\n");
    fs::write(&path, body).expect("write the hook");
    path.display().to_string()
}

fn outputs(cp: &ControlPlane, job_id: &str) -> String {
    cp.lines(job_id)
        .iter()
        .filter_map(|v| v["output"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn hooks_run_around_the_job_and_a_failing_pre_job_hook_lets_it_go_on() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let agent = ListenAgent::builder()
        .arg("--pre-job-hook-path")
        .arg(&hook(&dir, "pre.sh", "pre-job hook ran", 3))
        .arg("--post-job-hook-path")
        .arg(&hook(&dir, "post.sh", "post-job hook ran", 4))
        .start(&cp);
    let job = Job::new("listen-hooks")
        .command("echo \"command ran, FROM_HOOK=${FROM_HOOK:-unset}\"")
        .always("echo epilogue ran");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    // Neither hook changes the result.
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    let text = outputs(&cp, &job.job_id);
    let order = [
        "proceed with the job even if the pre-job hook fails",
        "pre-job hook ran",
        // Run with bash, not sourced: its export stays in the hook.
        "command ran, FROM_HOOK=unset",
        "epilogue ran",
        "post-job hook ran",
    ];
    let mut at = 0;
    for part in order {
        let found = text[at..]
            .find(part)
            .unwrap_or_else(|| panic!("{part:?} is missing or out of order in:\n{text}"));
        at += found + part.len();
    }
}

#[test]
fn a_sourced_pre_job_hook_that_fails_fails_the_job_when_configured_so() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let agent = ListenAgent::builder()
        .arg("--pre-job-hook-path")
        .arg(&hook(&dir, "pre.sh", "pre-job hook ran", 0))
        .arg("--source-pre-job-hook")
        .start(&cp);
    let job = Job::new("listen-hook-source").command("echo \"FROM_HOOK=$FROM_HOOK\"");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    assert!(outputs(&cp, &job.job_id).contains("FROM_HOOK=set\n"));

    let failing = ListenAgent::builder()
        .arg("--pre-job-hook-path")
        .arg(&hook(&dir, "failing.sh", "failing hook ran", 1))
        .arg("--fail-on-pre-job-hook-error")
        .start(&cp);
    let job = Job::new("listen-hook-fail").command("echo never");
    failing.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "failed");
    let text = outputs(&cp, &job.job_id);
    assert!(
        text.contains("fail the job if the pre-job hook fails"),
        "{text}"
    );
    assert!(!text.contains("never"), "{text}");
}
