//! The session's terminal in a compose job whose image has no `stty`
//! (docs/protocol.md §4, README "How a job runs"): the agent's own binary,
//! mounted in main, turns its echo off; without that binary the echo stays
//! on. Either way the log holds exactly what the commands print, never the
//! agent's instructions. The image is bash alone, plus busybox off PATH
//! for the test's own look at the terminal (`busybox stty -a`).

use crate::support::assert_no_job_processes;
use crate::support::cache::{probe_image, run_value, static_agent, PROBE_BUSYBOX};
use crate::support::docker::{self, ComposeJob, Container, ProjectWatch, COMPOSE_JOB_TIMEOUT};
use crate::support::server::{poll_until, TestAgent, EVENT_TIMEOUT};

const NO_STTY: &str = "command -v stty || echo no-stty";
const HAS_CACHE: &str = "command -v cache >/dev/null && echo cache || echo no-cache";
const HI: &str = "echo hi";

/// Prints `echo` or `-echo`: the echo flag of the session's terminal.
fn echo_flag() -> String {
    format!(
        "b={PROBE_BUSYBOX}; $b stty -a </dev/tty | $b tr ' ' '\\n' | $b grep -x -e echo -e -echo"
    )
}

/// Runs the probe job `name` on `agent`, checks its log and that nothing of
/// it is left; returns whether main had `cache` (the agent's binary) and
/// the echo flag.
fn run_probe(agent: &TestAgent, name: &str) -> (bool, String) {
    let flag = echo_flag();
    let job = ComposeJob::new(name, Container::new("main", probe_image()))
        .command(NO_STTY)
        .command(HAS_CACHE)
        .command(HI)
        .command(&flag);
    let project = ProjectWatch::new(&job.project_prefix());
    let ran = run_value(agent, &job.to_value(), COMPOSE_JOB_TIMEOUT);
    ran.assert_passed();
    assert_eq!(ran.ok(NO_STTY), "no-stty\n", "{}", ran.render());
    // Exactly the command's output: no echoed instruction.
    assert_eq!(ran.ok(HI), "hi\n", "{}", ran.render());
    let has_cache = match ran.ok(HAS_CACHE).as_str() {
        "cache\n" => true,
        "no-cache\n" => false,
        other => panic!("{HAS_CACHE:?} printed {other:?}"),
    };
    let echo = ran.ok(&flag);
    poll_until(
        &format!("the teardown of job {}", job.job_id()),
        EVENT_TIMEOUT,
        || agent.job_state(job.job_id()) == "finished",
    );
    project.assert_gone();
    assert_no_job_processes(job.job_id());
    (has_cache, echo)
}

#[test]
fn without_stty_the_agent_s_binary_turns_echo_off() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::builder()
        .arg("--cache-static-binary")
        .arg(static_agent().to_str().expect("a UTF-8 path"))
        .start();
    let (has_cache, echo) = run_probe(&agent, "echo-nostty");
    assert!(has_cache, "the agent's binary is not mounted in main");
    assert_eq!(echo, "-echo\n");
}

/// An agent with no static binary to mount (the dynamically linked test
/// build, without `--cache-static-binary`): the terminal keeps echoing, and
/// the log is still exactly the commands' output. (A statically linked
/// test build mounts itself; then echo is off as above.)
#[test]
fn without_stty_or_the_agent_s_binary_the_log_is_still_clean() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::builder().start();
    let (has_cache, echo) = run_probe(&agent, "echo-nostty-nobin");
    let expected = if has_cache { "-echo\n" } else { "echo\n" };
    assert_eq!(echo, expected, "main has cache: {has_cache}");
}
