//! The latency bound of docs/protocol.md §6.2: output is in the log within
//! 100 ms of being printed, also while the command goes on without printing.

use std::time::{Duration, Instant};

use crate::support::{
    env_export, log_of, no_files, result_export, step, Job, Sandbox, JOB_TIMEOUT,
};

/// How long a test waits for the command to start.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The bound checked: the promised 100 ms plus room for a loaded machine,
/// still well below the pause that follows the output.
const LATENCY_LIMIT: Duration = Duration::from_secs(1);

#[test]
fn output_before_a_pause_reaches_the_log_during_the_pause() {
    let sandbox = Sandbox::new();
    let directive = "echo before-the-pause; sleep 3; echo after-the-pause";
    let mut running = sandbox.spawn(&Job::new("latency").command(directive));
    running.wait_for_event("the command to start", EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_started" && e["directive"] == directive
    });
    let started = Instant::now();
    running.wait_for_output("before-the-pause\n", EVENT_TIMEOUT);
    let took = started.elapsed();
    assert!(
        took < LATENCY_LIMIT,
        "the output took {took:?} to reach the log; the bound is {LATENCY_LIMIT:?}"
    );
    let out = running.finish(JOB_TIMEOUT);
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(directive, "before-the-pause\nafter-the-pause\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}
