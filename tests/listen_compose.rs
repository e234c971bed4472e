//! Compose jobs in listen mode (`agent start`): the same docker-compose
//! executor as `agent serve`, with the agent's `files` mounted and its
//! `env-vars` exported. Gated like every Docker test: skipped without
//! Docker, a failure under `AGENT_REQUIRE_DOCKER=1`.

use std::fs;

use crate::support::control_plane::{ControlPlane, Shape};
use crate::support::docker::{self, wait_for_compose_job, ComposeJob, Container, ProjectWatch};
use crate::support::docker::{BASH_IMAGE, COMPOSE_JOB_TIMEOUT};
use crate::support::listen_agent::{assert_pushed_log_complete, ListenAgent, START_TIMEOUT};
use crate::support::server::{unix_now, TestAgent};
use crate::support::{assert_no_job_processes, wait_until, Job, JOB_TIMEOUT};

#[test]
fn a_compose_job_pushes_the_log_serve_writes_with_the_agents_files_mounted() {
    compose_job_pushes_the_log_serve_writes(Shape::Full, "listen-compose");
}

/// The same against a control plane that answers as the reference agent's
/// own test hub.
#[test]
fn a_compose_job_runs_for_the_reference_hub() {
    compose_job_pushes_the_log_serve_writes(Shape::ReferenceHub, "listen-compose-hub");
}

fn compose_job_pushes_the_log_serve_writes(shape: Shape, name: &str) {
    if !docker::ready() {
        return;
    }
    let shared = tempfile::tempdir().expect("a directory to mount");
    fs::write(shared.path().join("note"), "from the host\n").expect("write the note");
    let files = format!("{}:/mounted", shared.path().display());
    let job = ComposeJob::new(name, Container::new("main", BASH_IMAGE))
        .env("IN_JOB", "job value")
        .command("echo \"$IN_JOB\"")
        .command("cat /mounted/note")
        .command("uname -s");
    let watch = ProjectWatch::new(&job.project_prefix());

    let serve_events = {
        let agent = TestAgent::builder().arg("--files").arg(&files).start();
        agent.submit_ok(&job.to_value());
        wait_for_compose_job(&agent, job.job_id())
    };
    watch.assert_gone();

    let since = unix_now();
    let cp = ControlPlane::start_shaped(shape);
    let agent = ListenAgent::builder().arg("--files").arg(&files).start(&cp);
    agent.track(job.job_id());
    cp.schedule(&job.to_value());
    assert_eq!(
        cp.wait_for_result(job.job_id(), COMPOSE_JOB_TIMEOUT),
        "passed"
    );
    assert_pushed_log_complete(&cp, &agent, job.job_id(), since);
    assert_eq!(
        job.normalize(&cp.lines(job.job_id())),
        job.normalize(&serve_events)
    );
    assert_no_job_processes(job.job_id());
    watch.assert_gone();
}

#[test]
fn fail_on_missing_files_fails_a_compose_job_before_it_starts() {
    // Decided before any container starts: no Docker needed.
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder()
        .arg("--files")
        .arg("/no/such/host/file:/mounted/file")
        .arg("--fail-on-missing-files")
        .start(&cp);
    let job =
        ComposeJob::new("listen-missing", Container::new("main", BASH_IMAGE)).command("echo never");
    agent.track(job.job_id());
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(job.job_id(), JOB_TIMEOUT), "failed");
    // The reference's log exactly: `job_started`, `job_finished` `failed`;
    // which file is missing is said in the agent log.
    let events: Vec<(String, String)> = cp
        .lines(job.job_id())
        .iter()
        .map(|v| {
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (text("event"), text("result"))
        })
        .collect();
    assert_eq!(
        events,
        [
            ("job_started".to_owned(), String::new()),
            ("job_finished".to_owned(), "failed".to_owned())
        ]
    );
    wait_until(
        "the missing file named in the agent log",
        START_TIMEOUT,
        || agent.stderr_text().contains("/no/such/host/file"),
    );
    // A shell job does not mount files: the same agent runs it.
    let shell = Job::new("listen-missing-shell").command("echo shell runs");
    agent.track(&shell.job_id);
    cp.schedule(&shell.to_value());
    assert_eq!(cp.wait_for_result(&shell.job_id, JOB_TIMEOUT), "passed");
}
