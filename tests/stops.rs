//! A stopped job says what stopped it: the last line of the command that
//! was running names the signal or the time limit (docs/protocol.md §5.4,
//! §13.3); the API's stop request is checked with the API's stop tests.

use crate::support::{Job, Sandbox, JOB_TIMEOUT};

#[test]
fn ctrl_c_in_agent_run_is_named_in_the_log() {
    for (signal, line) in [
        (libc::SIGINT, "The job was stopped by SIGINT (Ctrl-C).\n"),
        (libc::SIGTERM, "The job was stopped by SIGTERM.\n"),
    ] {
        let sandbox = Sandbox::new();
        let job = Job::new("named-signal").command("echo ready; sleep 1000");
        let mut running = sandbox.spawn(&job);
        running.wait_for_output("ready\n", JOB_TIMEOUT);
        running.signal(signal);
        let out = running.finish(JOB_TIMEOUT);
        assert_eq!(out.result(), "stopped");
        assert_eq!(
            out.step("echo ready; sleep 1000").output(),
            format!("ready\n{line}")
        );
    }
}

#[test]
fn the_time_limit_is_named_in_the_log_in_plain_english() {
    let sandbox = Sandbox::new();
    let job_id = "time-limit-1";
    let text = format!(
        r#"{{"job_id": "{job_id}", "execution_time_limit_seconds": 1,
            "commands": [{{"directive": "sleep 1000"}}]}}"#
    );
    let out = sandbox.run_text("limit.json", &text, job_id);
    assert_eq!(out.result(), "stopped");
    assert_eq!(
        out.step("sleep 1000").output(),
        "The job exceeded its execution time limit of 1 second and was stopped.\n"
    );
}
