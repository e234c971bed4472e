//! Compose jobs in listen mode (`agent start`): the same docker-compose
//! executor as `agent serve`, with the agent's `files` mounted and its
//! `env-vars` exported. Gated like every Docker test: skipped without
//! Docker, a failure under `AGENT_REQUIRE_DOCKER=1`.

use std::fs;

use crate::support::control_plane::ControlPlane;
use crate::support::docker::{self, wait_for_compose_job, ComposeJob, Container, ProjectWatch};
use crate::support::docker::{BASH_IMAGE, COMPOSE_JOB_TIMEOUT};
use crate::support::listen_agent::{assert_pushed_log_complete, ListenAgent};
use crate::support::server::{unix_now, TestAgent};
use crate::support::{assert_no_job_processes, Job, JOB_TIMEOUT};

#[test]
fn a_compose_job_pushes_the_log_serve_writes_with_the_agents_files_mounted() {
    if !docker::ready() {
        return;
    }
    let shared = tempfile::tempdir().expect("a directory to mount");
    fs::write(shared.path().join("note"), "from the host\n").expect("write the note");
    let files = format!("{}:/mounted", shared.path().display());
    let job = ComposeJob::new("listen-compose", Container::new("main", BASH_IMAGE))
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
    let cp = ControlPlane::start();
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
    let output: String = cp
        .lines(job.job_id())
        .iter()
        .filter_map(|v| v["output"].as_str().map(str::to_owned))
        .collect();
    assert!(output.contains("/no/such/host/file"), "{output}");
    assert!(!output.contains("never"), "{output}");
    // A shell job does not mount files: the same agent runs it.
    let shell = Job::new("listen-missing-shell").command("echo shell runs");
    agent.track(&shell.job_id);
    cp.schedule(&shell.to_value());
    assert_eq!(cp.wait_for_result(&shell.job_id, JOB_TIMEOUT), "passed");
}
