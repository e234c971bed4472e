//! A stop ends every process of a job (docs/protocol.md §5.4), also a
//! process that ignores SIGTERM, SIGHUP and SIGINT: SIGKILL reaches it after
//! the stop grace period, even when it dropped the job's mark and left the
//! job's session. Checked for the shell and the compose executor,
//! stopped by a signal to `agent run` and through the API of `agent serve`.

use std::fs;
use std::time::{Duration, Instant};

use crate::support::docker::{
    self, ComposeJob, Container, ProjectWatch, BASH_IMAGE, COMPOSE_JOB_TIMEOUT,
};
use crate::support::server::TestAgent;
use crate::support::{
    assert_no_job_processes, escapee, job_processes, token_for, wait_for_escapee, wait_until, Job,
    JobProcess, Sandbox, JOB_TIMEOUT,
};

/// The stop grace period the tests run with.
const GRACE_SECS: u64 = 1;
/// How long a test waits for the job to be where it is stopped.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the stopped job may take past the grace period to be gone.
const STOP_MARGIN: Duration = Duration::from_secs(20);
/// The signals the stubborn processes ignore: TERM, HUP and INT, as bits of
/// the `SigIgn` mask in /proc/<pid>/status (bit n - 1 for signal n).
const IGNORED_MASK: u64 =
    (1 << (libc::SIGTERM - 1)) | (1 << (libc::SIGHUP - 1)) | (1 << (libc::SIGINT - 1));

/// A shell snippet that starts, in the background, a bash that ignores
/// TERM, HUP and INT, and a `sleep` under it that inherits that. The bash's
/// command line carries the job's token, so the host's /proc finds it also
/// inside a container.
fn stubborn_processes(job_id: &str) -> String {
    format!(
        "bash -c 'trap \"\" TERM HUP INT; sleep 987; : {}' &\n",
        token_for(job_id)
    )
}

/// Whether `process` ignores TERM, HUP and INT.
fn ignores_polite_signals(process: &JobProcess) -> bool {
    fs::read_to_string(format!("/proc/{}/status", process.pid))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & IGNORED_MASK == IGNORED_MASK)
}

/// Waits until the stubborn bash runs and ignores the polite signals, so
/// that only SIGKILL can end it.
fn wait_for_stubborn_processes(job_id: &str, timeout: Duration) {
    let token = token_for(job_id);
    wait_until("a process that ignores TERM, HUP and INT", timeout, || {
        job_processes(job_id)
            .iter()
            .any(|p| p.cmdline.contains(&token) && ignores_polite_signals(p))
    });
}

/// Fails unless the job's processes are gone within the grace period and
/// the margin, counted from `stopped_at`.
fn assert_gone_after_grace(job_id: &str, stopped_at: Instant) {
    let limit = Duration::from_secs(GRACE_SECS) + STOP_MARGIN;
    let left = limit.saturating_sub(stopped_at.elapsed());
    wait_until("the job's processes to be killed", left, || {
        job_processes(job_id).is_empty()
    });
    assert_no_job_processes(job_id);
}

#[test]
fn agent_run_stop_kills_processes_that_ignore_term_hup_and_int() {
    let sandbox = Sandbox::new().with_stop_grace_period(GRACE_SECS);
    let job = Job::new("stubborn-run");
    let directive = format!("{}echo ready; sleep 1000", stubborn_processes(&job.job_id));
    let mut running = sandbox.spawn(&job.clone().command(&directive));
    running.wait_for_output("ready\n", EVENT_TIMEOUT);
    wait_for_stubborn_processes(&job.job_id, EVENT_TIMEOUT);
    let stopped_at = Instant::now();
    running.signal(libc::SIGTERM);
    // `finish` also fails the test if a process of the job is left.
    let out = running.finish(JOB_TIMEOUT);
    assert_eq!(out.result(), "stopped", "{}", out.render());
    assert_gone_after_grace(&job.job_id, stopped_at);
}

#[test]
fn api_stop_kills_processes_that_ignore_term_hup_and_int() {
    let agent = TestAgent::builder().stop_grace_period(GRACE_SECS).start();
    let job = Job::new("stubborn-serve");
    let directive = format!("{}echo ready; sleep 1000", stubborn_processes(&job.job_id));
    let job = job.command(&directive);
    agent.submit_ok(&job.to_value());
    agent.wait_for_event(&job.job_id, EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"].as_str().unwrap_or("").contains("ready")
    });
    wait_for_stubborn_processes(&job.job_id, EVENT_TIMEOUT);
    let stopped_at = Instant::now();
    let reply = agent.post(&format!("/jobs/{}/stop", job.job_id), b"");
    assert_eq!(reply.status, 200, "stop: {}", reply.text());
    let events = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(
        events.last().map(|e| e["result"].clone()),
        Some("stopped".into())
    );
    assert_gone_after_grace(&job.job_id, stopped_at);
}

/// A process that ignores TERM, HUP and INT, dropped the job's mark, left
/// its session and holds no terminal: nothing on it says which job it is.
#[test]
fn agent_run_stop_kills_a_stubborn_process_that_left_its_job_every_way() {
    let sandbox = Sandbox::new().with_stop_grace_period(GRACE_SECS);
    let job = Job::new("stubborn-escapee-run");
    let directive = format!("{}echo ready; sleep 1000", escapee(&job.job_id, true));
    let mut running = sandbox.spawn(&job.clone().command(&directive));
    running.wait_for_output("ready\n", EVENT_TIMEOUT);
    wait_for_escapee(&job.job_id);
    wait_for_stubborn_processes(&job.job_id, EVENT_TIMEOUT);
    let stopped_at = Instant::now();
    running.signal(libc::SIGTERM);
    let out = running.finish(JOB_TIMEOUT);
    assert_eq!(out.result(), "stopped", "{}", out.render());
    assert_gone_after_grace(&job.job_id, stopped_at);
}

#[test]
fn api_stop_kills_a_stubborn_process_that_left_its_job_every_way() {
    let agent = TestAgent::builder().stop_grace_period(GRACE_SECS).start();
    let job = Job::new("stubborn-escapee-serve");
    let directive = format!("{}echo ready; sleep 1000", escapee(&job.job_id, true));
    let job = job.command(&directive);
    agent.submit_ok(&job.to_value());
    agent.wait_for_event(&job.job_id, EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"].as_str().unwrap_or("").contains("ready")
    });
    wait_for_escapee(&job.job_id);
    wait_for_stubborn_processes(&job.job_id, EVENT_TIMEOUT);
    let stopped_at = Instant::now();
    let reply = agent.post(&format!("/jobs/{}/stop", job.job_id), b"");
    assert_eq!(reply.status, 200, "stop: {}", reply.text());
    let events = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(
        events.last().map(|e| e["result"].clone()),
        Some("stopped".into())
    );
    assert_gone_after_grace(&job.job_id, stopped_at);
}

/// A compose job whose main container runs the stubborn processes.
fn stubborn_compose_job(name: &str) -> (ComposeJob, String) {
    let job = ComposeJob::new(name, Container::new("main", BASH_IMAGE));
    let directive = format!("{}echo ready; sleep 1000", stubborn_processes(job.job_id()));
    (job.command(&directive), directive)
}

#[test]
fn agent_run_stop_kills_processes_that_ignore_term_hup_and_int_in_a_compose_job() {
    if !docker::ready() {
        return;
    }
    let sandbox = Sandbox::new().with_stop_grace_period(GRACE_SECS);
    let (job, _) = stubborn_compose_job("stubborn-run");
    let watch = ProjectWatch::new(&job.project_prefix());
    let text = serde_json::to_string_pretty(&job.to_value()).expect("serialise the job");
    let mut running = sandbox.spawn_text("job.json", &text, job.job_id());
    running.wait_for_output("ready\n", COMPOSE_JOB_TIMEOUT);
    wait_for_stubborn_processes(job.job_id(), EVENT_TIMEOUT);
    let stopped_at = Instant::now();
    running.signal(libc::SIGTERM);
    let out = running.finish(COMPOSE_JOB_TIMEOUT);
    assert_eq!(out.result(), "stopped", "{}", out.render());
    assert_gone_after_grace(job.job_id(), stopped_at);
    watch.assert_gone();
}

#[test]
fn api_stop_kills_processes_that_ignore_term_hup_and_int_in_a_compose_job() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::builder().stop_grace_period(GRACE_SECS).start();
    let (job, _) = stubborn_compose_job("stubborn-serve");
    let watch = ProjectWatch::new(&job.project_prefix());
    agent.submit_ok(&job.to_value());
    agent.wait_for_event(job.job_id(), COMPOSE_JOB_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"].as_str().unwrap_or("").contains("ready")
    });
    wait_for_stubborn_processes(job.job_id(), EVENT_TIMEOUT);
    let stopped_at = Instant::now();
    let reply = agent.post(&format!("/jobs/{}/stop", job.job_id()), b"");
    assert_eq!(reply.status, 200, "stop: {}", reply.text());
    let events = docker::wait_for_compose_job(&agent, job.job_id());
    assert_eq!(
        events.last().map(|e| e["result"].clone()),
        Some("stopped".into())
    );
    assert_gone_after_grace(job.job_id(), stopped_at);
    watch.assert_gone();
}
