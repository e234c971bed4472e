//! A stopped job says what stopped it, where a person looks and without a
//! line in its log (the log is the reference's): `agent run` names the
//! signal or the time limit on stderr with `--json`, and in its readable
//! display (docs/protocol.md §5.4, §13.3); the API's stop request is
//! checked with the API's stop tests.

use crate::support::{Job, Sandbox, JOB_TIMEOUT};

#[test]
fn ctrl_c_in_agent_run_is_named_but_not_in_the_log() {
    for (signal, remark) in [
        (
            libc::SIGINT,
            "agent: The job was stopped by SIGINT (Ctrl-C).\n",
        ),
        (libc::SIGTERM, "agent: The job was stopped by SIGTERM.\n"),
    ] {
        let sandbox = Sandbox::new();
        let job = Job::new("named-signal").command("echo ready; sleep 1000");
        let mut running = sandbox.spawn(&job);
        running.wait_for_output("ready\n", JOB_TIMEOUT);
        running.signal(signal);
        let out = running.finish(JOB_TIMEOUT);
        assert_eq!(out.result(), "stopped");
        assert_eq!(out.step("echo ready; sleep 1000").output(), "ready\n");
        assert!(out.stderr.contains(remark), "stderr:\n{}", out.stderr);
    }
}

#[test]
fn the_time_limit_is_named_in_plain_english_but_not_in_the_log() {
    let sandbox = Sandbox::new();
    let job_id = "time-limit-1";
    let text = format!(
        r#"{{"job_id": "{job_id}", "execution_time_limit_seconds": 1,
            "commands": [{{"directive": "sleep 1000"}}]}}"#
    );
    let out = sandbox.run_text("limit.json", &text, job_id);
    assert_eq!(out.result(), "stopped");
    assert_eq!(out.step("sleep 1000").output(), "");
    let remark = "agent: The job exceeded its execution time limit of 1 second and was stopped.\n";
    assert!(out.stderr.contains(remark), "stderr:\n{}", out.stderr);
}
