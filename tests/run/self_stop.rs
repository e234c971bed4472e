//! Exit status 130: the job stops itself and SEMAPHORE_JOB_RESULT decides.

use super::*;

/// Runs a job whose second command ends with status 130 and checks the
/// self-stop path of §5.2 step 8.
fn check_self_stop(directive: &str, message: &str, result: &str) -> Outcome {
    let out = Job::new("self-stop")
        .command("echo before")
        .command(directive)
        .command("echo never")
        .always("echo never-always")
        .on_pass("echo never-pass")
        .on_fail("echo never-fail")
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("echo before", "before\n", 0),
                step(directive, "", 130),
                step(RESULT_STEP, message, 0),
            ],
            result
        ),
        "directive {directive:?}"
    );
    let check = out.step(RESULT_STEP);
    assert_eq!(check.outputs.len(), 1);
    assert_eq!(check.started_at, check.finished_at);
    out
}

#[test]
fn exit_130_with_job_result_unset_stops_the_job() {
    check_self_stop(
        "return 130",
        "SEMAPHORE_JOB_RESULT is set to '' - stopping job and marking it as stopped",
        "stopped",
    );
}

#[test]
fn exit_130_with_job_result_passed_passes_the_job() {
    check_self_stop(
        "export SEMAPHORE_JOB_RESULT=passed; return 130",
        "SEMAPHORE_JOB_RESULT=passed - stopping job and marking it as passed",
        "passed",
    );
}

#[test]
fn exit_130_with_job_result_failed_fails_the_job() {
    check_self_stop(
        "export SEMAPHORE_JOB_RESULT=failed; return 130",
        "SEMAPHORE_JOB_RESULT=failed - stopping job and marking it as failed",
        "failed",
    );
}

#[test]
fn exit_130_with_another_job_result_stops_the_job() {
    check_self_stop(
        "SEMAPHORE_JOB_RESULT=maybe; return 130",
        "SEMAPHORE_JOB_RESULT is set to 'maybe' - stopping job and marking it as stopped",
        "stopped",
    );
}

#[test]
fn a_command_killed_by_sigint_takes_the_self_stop_path() {
    let directive = "export SEMAPHORE_JOB_RESULT=passed; sh -c 'kill -INT $$'";
    let job = Job::new("sigint-child")
        .command(directive)
        .always("echo never");
    let out = Sandbox::new().run_within(&job, Duration::from_secs(15));
    // Whatever bash prints for the interrupted child is not part of the test.
    let output = out.step(directive).output();
    assert_eq!(
        with_output(out.normalized(), directive, ""),
        with_output(
            log_of(
                vec![
                    env_export(&[]),
                    no_files(),
                    step(directive, "", 130),
                    step(
                        RESULT_STEP,
                        "SEMAPHORE_JOB_RESULT=passed - stopping job and marking it as passed",
                        0
                    ),
                ],
                "passed"
            ),
            directive,
            ""
        ),
        "output of the interrupted command: {output:?}"
    );
}
