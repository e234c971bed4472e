//! Secret env vars (docs/protocol.md §13.3): a value sent with `secret: true`
//! never reaches the log, whichever way a job prints it, in the commands and
//! the epilogues, on the host and in a compose job's main container; a value
//! too short to mask is announced in the export step (§5.2 step 4).

use crate::support::docker::{self, ComposeJob, Container, BASH_IMAGE};
use crate::support::{log_of, no_files, result_export, step, Job, Outcome, ENV_STEP};

/// The secret value; its two halves are distinctive on their own, so a half
/// that leaks before the other arrives is caught too.
const SECRET: &str = "s3cr3t-v4lue-9f2e";
const FIRST_HALF: &str = "s3cr3t-v";
const SECOND_HALF: &str = "4lue-9f2e";
/// What each printing command below shows instead of the value.
const MASKED_LINE: &str = "token=[MASKED]\n";

/// Commands that print the secret (in `$TOKEN`) in one piece, in two
/// `printf`s, and in two `printf`s with a pause longer than the 100 ms flush
/// interval (§6.2) between them.
fn printing_commands() -> [&'static str; 3] {
    [
        r#"echo "token=$TOKEN""#,
        r#"printf 'token=%s' "${TOKEN:0:8}"; printf '%s\n' "${TOKEN:8}""#,
        r#"printf 'token=%s' "${TOKEN:0:8}"; sleep 1; printf '%s\n' "${TOKEN:8}""#,
    ]
}

/// The epilogue that prints the secret once more.
const EPILOGUE: &str = r#"printf 'token=%s\n' "$TOKEN""#;

/// Fails if any byte the agent printed holds the secret or one of its halves.
fn assert_nothing_leaked(outcome: &Outcome) {
    for (index, line) in outcome.lines.iter().enumerate() {
        let line = String::from_utf8_lossy(line);
        for needle in [SECRET, FIRST_HALF, SECOND_HALF] {
            assert!(
                !line.contains(needle),
                "line {index} of the log shows {needle:?}:\n{}",
                outcome.render()
            );
        }
    }
}

/// Each printing command and the epilogue show `[MASKED]` where the value was.
fn assert_masked(outcome: &Outcome) {
    for directive in printing_commands() {
        assert_eq!(outcome.step(directive).output(), MASKED_LINE, "{directive}");
    }
    assert_eq!(outcome.step(EPILOGUE).output(), MASKED_LINE);
    assert_nothing_leaked(outcome);
}

#[test]
fn secret_values_are_masked_in_commands_and_epilogues() {
    let mut job = Job::new("masked").secret_env("TOKEN", SECRET);
    for directive in printing_commands() {
        job = job.command(directive);
    }
    let job = job.always(EPILOGUE);
    let outcome = job.run();
    assert_masked(&outcome);
    let mut steps = vec![step(ENV_STEP, "Exporting TOKEN\n", 0), no_files()];
    for directive in printing_commands() {
        steps.push(step(directive, MASKED_LINE, 0));
    }
    steps.push(result_export(0));
    steps.push(step(EPILOGUE, MASKED_LINE, 0));
    assert_eq!(outcome.normalized(), log_of(steps, "passed"));
}

#[test]
fn a_secret_shorter_than_four_bytes_is_announced_and_left_as_is() {
    let job = Job::new("short-secret")
        .secret_env("PIN", "123")
        .secret_env("TOKEN", SECRET)
        .command(r#"echo "pin=$PIN token=$TOKEN""#);
    let outcome = job.run();
    // The warning is the agent's remark, not a line of the log.
    assert!(
        outcome.stderr.contains(
            "agent: The value of PIN is shorter than 4 bytes and is not masked in the log."
        ),
        "stderr:\n{}",
        outcome.stderr
    );
    let export = "Exporting PIN\nExporting TOKEN\n";
    assert_eq!(
        outcome.normalized(),
        log_of(
            vec![
                step(ENV_STEP, export, 0),
                no_files(),
                step(
                    r#"echo "pin=$PIN token=$TOKEN""#,
                    "pin=123 token=[MASKED]\n",
                    0
                ),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn secret_values_are_masked_in_a_compose_job() {
    if !docker::ready() {
        return;
    }
    let mut job =
        ComposeJob::new("masked", Container::new("main", BASH_IMAGE)).secret_env("TOKEN", SECRET);
    for directive in printing_commands() {
        job = job.command(directive);
    }
    let job = job.always(EPILOGUE);
    let outcome = job.run();
    assert_eq!(outcome.result(), "passed", "{}", outcome.render());
    assert_eq!(outcome.step(ENV_STEP).output(), "Exporting TOKEN\n");
    assert_masked(&outcome);
}
