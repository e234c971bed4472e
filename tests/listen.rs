//! Integration tests of listen mode (`agent start`): the real binary
//! registers with the test control plane of `support::control_plane` over
//! loopback, syncs, fetches its jobs and pushes their logs. This module
//! covers a job's life: running, stopping, shutting down, the
//! disconnect options, signals and hooks; `listen_faults` covers a control
//! plane that misbehaves, `listen_config` the configuration. The tests of a
//! job's life run twice: against the control plane as docs/listen.md
//! describes it, and against one that answers exactly as the reference
//! agent's own test hub (`Shape::ReferenceHub`).

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::control_plane::{ControlPlane, Shape};
use crate::support::listen_agent::{
    assert_pushed_log_complete, outputs, read_reason, reported_states, shutdown_hook, ListenAgent,
    START_TIMEOUT,
};
use crate::support::server::{unix_now, TestAgent};
use crate::support::{assert_no_job_processes, normalize, wait_until, Job, JOB_TIMEOUT};

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

/// A test that runs against each shape of the control plane: `name::full`
/// and `name::reference_hub` call `body(shape)`.
macro_rules! in_both_shapes {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn full() {
                super::$body(super::Shape::Full)
            }
            #[test]
            fn reference_hub() {
                super::$body(super::Shape::ReferenceHub)
            }
        }
    };
}

in_both_shapes!(
    a_shell_job_runs_and_its_pushed_log_is_the_log_serve_writes,
    shell_job_pushes_the_log_serve_writes
);

fn shell_job_pushes_the_log_serve_writes(shape: Shape) {
    let job = the_job();
    let serve_events = {
        let agent = TestAgent::start_default();
        agent.submit_ok(&job.to_value());
        home_as_tilde(&agent.wait_for_job_finished(&job.job_id), &agent.home())
    };
    let since = unix_now();
    let cp = ControlPlane::start_shaped(shape);
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
    // `starting-job` lasts only while the request is fetched; the hub's
    // syncs are 3 to 6 s apart, so a short job may never report running.
    let expected: &[&str] = match shape {
        Shape::Full => &[
            "waiting-for-jobs",
            "running-job",
            "finished-job",
            "waiting-for-jobs",
        ],
        Shape::ReferenceHub => &["waiting-for-jobs", "finished-job", "waiting-for-jobs"],
    };
    let mut rest = states.iter().map(String::as_str);
    for state in expected {
        assert!(
            rest.any(|s| s == *state),
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

/// The reference agent's own e2e suite starts its agent with this
/// configuration against its hub. The agent registers although the hub
/// answers no `token` (and says so in its log), runs and pushes a job, and
/// leaves on the hub's shutdown without running a hook: an empty path means
/// none.
#[test]
fn the_reference_hub_drives_the_agent_with_the_reference_e2e_configuration() {
    let cp = ControlPlane::start_shaped(Shape::ReferenceHub);
    let config = format!(
        "endpoint: {}\ntoken: 321h1l2jkh1jk42341\nno-https: true\nshutdown-hook-path: ''\n\
         disconnect-after-job: false\nenv-vars: []\nfiles: []\nfail-on-missing-files: false\n",
        cp.endpoint()
    );
    let mut agent = ListenAgent::builder().config_file(&config).start(&cp);
    let job = Job::new("listen-hub").command("echo 'here'");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    cp.request_shutdown("ignored by the hub");
    let status = agent.wait_exit(JOB_TIMEOUT);
    let log = agent.stderr_text();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(cp.disconnects(), 1);
    assert!(
        log.contains("POST /register: the answer has no `token`"),
        "no warning about the missing token:\n{log}"
    );
    assert!(!log.contains("shutdown hook"), "a hook ran:\n{log}");
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

in_both_shapes!(
    stop_job_stops_the_running_command_and_reports_stopped,
    stop_job_stops_the_running_command
);

fn stop_job_stops_the_running_command(shape: Shape) {
    let cp = ControlPlane::start_shaped(shape);
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

in_both_shapes!(
    shutdown_while_waiting_disconnects_and_runs_the_hook,
    shutdown_while_waiting
);

fn shutdown_while_waiting(shape: Shape) {
    let cp = ControlPlane::start_shaped(shape);
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
    // The hub gives no reason: the reference agent's hook reads UNKNOWN.
    let reason = match shape {
        Shape::Full => "REQUESTED",
        Shape::ReferenceHub => "UNKNOWN",
    };
    assert_eq!(read_reason(&record), reason);
}

in_both_shapes!(
    shutdown_while_a_job_runs_stops_it_and_pushes_its_log_first,
    shutdown_while_a_job_runs
);

fn shutdown_while_a_job_runs(shape: Shape) {
    let cp = ControlPlane::start_shaped(shape);
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
    let started = Instant::now();
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

/// A log URL the agent could never push to (not http or https) fails the
/// job at once, with the reason in the agent log, instead of a job that
/// runs and a log push that is retried until the flush time is up.
#[test]
fn a_job_whose_log_url_cannot_be_pushed_to_fails_at_once() {
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder().start(&cp);
    let job = Job::new("listen-file-url").command("touch never-ran");
    let mut request = job.to_value();
    request["logger"] = serde_json::json!({
        "method": "push", "url": "file:///tmp/listen-file-url", "token": "t"
    });
    cp.schedule_raw(&job.job_id, Some(request));
    let asked = Instant::now();
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "failed");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    wait_until("the reason in the agent log", START_TIMEOUT, || {
        agent
            .stderr_text()
            .contains("invalid logger.url \"file:///tmp/listen-file-url\": not a valid URL")
    });
    assert!(!agent.home().join("never-ran").exists());
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
    let signalled = Instant::now();
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

#[test]
fn the_grace_period_ends_on_time_even_while_a_sync_waits_for_its_answer() {
    let cp = ControlPlane::start();
    let mut agent = ListenAgent::builder()
        .arg("--interruption-grace-period")
        .arg("2")
        .start(&cp);
    let (job, directive) = endless_job("listen-grace-slow");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    wait_for_cmd_started(&cp, &job.job_id, &directive);
    crate::support::wait_for_background_processes(&job.job_id);
    agent.signal(libc::SIGTERM);
    cp.wait_for_sync("interrupted_at", START_TIMEOUT, |s| {
        s["interrupted_at"].as_u64().unwrap_or(0) != 0
    });
    // From now on every answer takes 10 s: the next sync hangs through the
    // end of the grace period.
    cp.set_delay(Some(Duration::from_secs(10)));
    let signalled = Instant::now();
    wait_until(
        "the job's processes to be gone",
        Duration::from_secs(10),
        || crate::support::job_processes(&job.job_id).is_empty(),
    );
    // Stopped at about 2 s, not when that sync returns.
    assert!(signalled.elapsed() < Duration::from_secs(7));
    cp.set_delay(None);
    let status = agent.wait_exit(JOB_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert_eq!(cp.result(&job.job_id).as_deref(), Some("stopped"));
}
