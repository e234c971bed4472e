//! Requests the agent could never carry out as asked: refused at
//! `POST /jobs` when that can be known there (callback URLs, §7.1), else
//! failed in their step before anything is done (every file checked
//! before the first is written, §5.2 step 5; a NUL in an env value,
//! §5.2 step 4).

use serde_json::{json, Value};

use crate::support::docker::{self, ComposeJob, Container};
use crate::support::server::TestAgent;
use crate::support::{with_callbacks, Job, Sandbox, ENV_STEP, FILES_STEP};

#[test]
fn callback_urls_that_cannot_be_called_are_refused() {
    let agent = TestAgent::start_default();
    let job = Job::new("bad-callback").command("true");
    for (field, url) in [
        ("finished", "file:///etc/passwd"),
        ("finished", "ht tp://x"),
        ("teardown_finished", "http://[::1"),
        ("teardown_finished", "/relative/path"),
    ] {
        let mut value = job.to_value();
        value["callbacks"] = json!({ field: url });
        let reply = agent.submit(&value);
        assert_eq!(reply.status, 422, "{url}: {}", reply.text());
        assert!(
            reply
                .message()
                .starts_with(&format!("invalid callbacks.{field} ")),
            "{url}: {}",
            reply.message()
        );
    }
    // Nothing of them was accepted: the id is still free.
    let value = with_callbacks(&job, "http://127.0.0.1:9/f", "", "");
    agent.submit_ok(&value);
    agent.wait_for_job_finished(&job.job_id);
}

/// The output and the exit code of step `directive` in an event log.
fn step_of(events: &[Value], directive: &str) -> (String, i64) {
    let start = events
        .iter()
        .position(|e| e["event"] == "cmd_started" && e["directive"] == directive)
        .unwrap_or_else(|| panic!("no step {directive} in {events:#?}"));
    let mut output = String::new();
    for event in &events[start + 1..] {
        match event["event"].as_str() {
            Some("cmd_output") => output.push_str(event["output"].as_str().unwrap_or("")),
            Some("cmd_finished") => return (output, event["exit_code"].as_i64().unwrap_or(-1)),
            _ => {}
        }
    }
    panic!("step {directive} never finished: {events:#?}")
}

// `agent run` refuses a job file with a bad mode before anything runs
// (tests/job_file.rs); through the API the file step fails.

#[test]
fn a_bad_second_file_leaves_the_first_unwritten() {
    let agent = TestAgent::start_default();
    let job = Job::new("bad-second-file")
        .file("first.txt", "one", "0644")
        .file("second.txt", "two", "9z")
        .command("echo never-runs");
    agent.submit_ok(&job.to_value());
    let events = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(events.last().unwrap()["result"], "failed");
    let second = agent.home().join("second.txt");
    assert_eq!(
        step_of(&events, FILES_STEP),
        (
            format!(
                "Injecting {} with file mode 9z\nbad file permission '9z'\n",
                second.display()
            ),
            1
        )
    );
    assert!(!agent.home().join("first.txt").exists());
    assert!(!second.exists());
}

#[test]
fn a_bad_second_file_fails_a_compose_job_before_the_first_is_copied() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::start_default();
    let job = ComposeJob::new(
        "bad-file-compose",
        Container::new("main", docker::BASH_IMAGE),
    )
    .file("/tmp/first.txt", "one", "0644")
    .file("/tmp/second.txt", "two", "0x9")
    .command("echo never-runs");
    let watch = docker::ProjectWatch::new(&job.project_prefix());
    agent.submit_ok(&job.to_value());
    let events = docker::wait_for_compose_job(&agent, job.job_id());
    assert_eq!(events.last().unwrap()["result"], "failed");
    assert_eq!(
        step_of(&events, FILES_STEP),
        (
            "Injecting /tmp/second.txt with file mode 0x9\nFailed to set file mode to 0x9\n"
                .to_string(),
            1
        )
    );
    watch.assert_gone();
}

#[test]
fn a_nul_in_an_env_value_fails_the_export_step() {
    let sandbox = Sandbox::new();
    let job = Job::new("nul-env")
        .env("NULV", b"before\0after")
        .command("echo never-runs");
    let outcome = sandbox.run(&job);
    assert_eq!(outcome.result(), "failed");
    let step = outcome.step(ENV_STEP);
    assert_eq!(
        (step.output(), step.exit_code),
        (
            "The value of environment variable 'NULV' contains a NUL byte, which no shell variable can hold\n"
                .to_string(),
            1
        )
    );
    assert!(!outcome.render().contains("never-runs\n"));
}

/// A misspelt key is accepted, as the reference accepts it (a newer control
/// plane may send fields this agent does not know), and the job runs what
/// it can; but the agent log names every such key, with its path, on one
/// line for the job, so a job that ran nothing can be told why.
#[test]
fn unknown_keys_are_accepted_and_named_in_the_agent_log() {
    let agent = TestAgent::start_default();
    let job_id = "misspelt-keys";
    let body = json!({
        "job_id": job_id,
        "comands": [{ "directive": "echo never runs" }],
        "commands": [{ "directive": "echo ran", "alais": "x" }],
        "epilogue_always_commands": [],
    });
    agent.submit_ok(&body);
    let events = agent.wait_for_job_finished(job_id);
    assert_eq!(events.last().expect("events")["result"], "passed");
    // The same job as YAML, under another id: the streamed JSON and the
    // YAML paths both report.
    let yaml = b"job_id: misspelt-yaml\ncomands:\n  - directive: echo never runs\n";
    let reply = agent.submit_text("misspelt-yaml", Some("application/yaml"), yaml);
    assert_eq!((reply.status, reply.message().as_str()), (200, "ok"));
    agent.wait_for_job_finished("misspelt-yaml");

    let log = std::fs::read_to_string(agent.agent_log_path()).expect("the agent log");
    let named: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keys this agent does not know"))
        .collect();
    assert_eq!(named.len(), 2, "one line per job:\n{log}");
    assert!(
        named[0].ends_with(&format!(
            "job {job_id}: keys this agent does not know are ignored: comands, commands.0.alais"
        )),
        "{}",
        named[0]
    );
    assert!(
        named[1].ends_with("job misspelt-yaml: keys this agent does not know are ignored: comands"),
        "{}",
        named[1]
    );
    assert!(
        named
            .iter()
            .all(|l| l.contains("WARN") || l.contains("warn")),
        "{named:?}"
    );
}
