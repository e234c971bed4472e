//! Signals to agent run during a job, and background processes at its end.

use super::*;

#[test]
fn sigint_during_a_command_stops_the_job_and_kills_everything() {
    let sandbox = Sandbox::new();
    let job = Job::new("stop-sigint");
    let directive = format!(
        "{}echo ready\nsleep 1000",
        background_processes(&job.job_id)
    );
    let job = job
        .command(&directive)
        .command("echo never")
        .always("echo never-always")
        .on_fail("echo never-fail");
    let mut running = sandbox.spawn(&job);
    running.wait_for_output("ready\n", EVENT_TIMEOUT);
    wait_for_background_processes(&job.job_id);
    running.signal(libc::SIGINT);
    let out = running.finish(JOB_TIMEOUT);
    let output = out.step(&directive).output();
    assert!(output.starts_with("ready\n"), "output {output:?}");
    assert_eq!(
        with_output(out.normalized(), &directive, "ready\n"),
        log_of(
            vec![env_export(&[]), no_files(), step(&directive, "ready\n", 1),],
            "stopped"
        )
    );
}

#[test]
fn sigterm_during_an_epilogue_stops_the_job_and_kills_everything() {
    let sandbox = Sandbox::new();
    let job = Job::new("stop-sigterm");
    let start = format!("{}echo started", background_processes(&job.job_id));
    let epilogue = "echo ready; sleep 1000";
    let job = job
        .command(&start)
        .always(epilogue)
        .always("echo never")
        .on_pass("echo never-pass");
    let mut running = sandbox.spawn(&job);
    running.wait_for_output("ready\n", EVENT_TIMEOUT);
    wait_for_background_processes(&job.job_id);
    running.signal(libc::SIGTERM);
    let out = running.finish(JOB_TIMEOUT);
    let output = out.step(epilogue).output();
    assert!(output.starts_with("ready\n"), "output {output:?}");
    assert_eq!(
        with_output(out.normalized(), epilogue, "ready\n"),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                // Starting background jobs prints no job-control notice.
                step(&start, "started\n", 0),
                result_export(0),
                step(epilogue, "ready\n", 1),
            ],
            "stopped"
        )
    );
}

#[test]
fn background_processes_are_killed_when_the_job_ends() {
    let sandbox = Sandbox::new();
    let release = sandbox.root().join("release");
    let job = Job::new("bg-end");
    let start = format!("{}echo ready", background_processes(&job.job_id));
    let hold = wait_for_file_command(&release);
    let job = job.command(&start).command(&hold);
    let mut running = sandbox.spawn(&job);
    running.wait_for_output("ready\n", EVENT_TIMEOUT);
    wait_for_background_processes(&job.job_id);
    fs::write(&release, "").unwrap();
    // `finish` fails the test if any of them outlives the agent.
    let out = running.finish(JOB_TIMEOUT);
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(&start, "ready\n", 0),
                step(&hold, "", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

/// A process that drops the mark, leaves the session and holds no terminal
/// is still the job's: it dies when the job ends.
#[test]
fn a_process_that_left_its_job_every_way_dies_when_the_job_ends() {
    let sandbox = Sandbox::new();
    let release = sandbox.root().join("release");
    let job = Job::new("escapee-end");
    let start = format!("{}echo ready", escapee(&job.job_id, false));
    let hold = wait_for_file_command(&release);
    let job = job.command(&start).command(&hold);
    let mut running = sandbox.spawn(&job);
    running.wait_for_output("ready\n", EVENT_TIMEOUT);
    wait_for_escapee(&job.job_id);
    fs::write(&release, "").unwrap();
    // `finish` fails the test if the escaped process outlives the agent.
    let out = running.finish(JOB_TIMEOUT);
    assert_eq!(out.result(), "passed", "{}", out.render());
}
