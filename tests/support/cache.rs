//! Helpers of the cache and checkout tests: run a job on a `TestAgent` and
//! read what each of its commands printed and returned.

use serde_json::Value;

use std::time::Duration;

use super::check_invariants;
use super::server::{poll_until, unix_now, TestAgent, EVENT_TIMEOUT};
use super::Job;

/// One command of a finished job: directive, output, exit code.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub directive: String,
    pub output: String,
    pub exit_code: i64,
}

/// A finished job's log, by command.
#[derive(Debug)]
pub struct Ran {
    pub job_id: String,
    pub events: Vec<Value>,
}

impl Ran {
    pub fn commands(&self) -> Vec<Cmd> {
        let mut out: Vec<Cmd> = Vec::new();
        for e in &self.events {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            match e["event"].as_str().unwrap_or_default() {
                "cmd_started" => out.push(Cmd {
                    directive: text("directive"),
                    output: String::new(),
                    exit_code: i64::MIN,
                }),
                "cmd_output" => {
                    if let Some(c) = out.last_mut() {
                        c.output.push_str(&text("output"));
                    }
                }
                "cmd_finished" => {
                    if let Some(c) = out.last_mut() {
                        c.exit_code = e["exit_code"].as_i64().unwrap_or(i64::MIN);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The command whose directive is `directive` (the first one).
    pub fn cmd(&self, directive: &str) -> Cmd {
        self.commands()
            .into_iter()
            .find(|c| c.directive == directive)
            .unwrap_or_else(|| panic!("no command {directive:?} in:\n{}", self.render()))
    }

    /// The output of `directive`, which must have exited 0.
    pub fn ok(&self, directive: &str) -> String {
        let c = self.cmd(directive);
        assert_eq!(
            c.exit_code,
            0,
            "{directive:?} exited {} in job {}:\n{}",
            c.exit_code,
            self.job_id,
            self.render()
        );
        c.output
    }

    pub fn result(&self) -> String {
        self.events
            .last()
            .and_then(|e| e["result"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// The log for failure messages: directive, exit code, output.
    pub fn render(&self) -> String {
        self.commands()
            .iter()
            .map(|c| format!("$ {}  [exit {}]\n{}", c.directive, c.exit_code, c.output))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn assert_passed(&self) {
        assert_eq!(
            self.result(),
            "passed",
            "job {}:\n{}",
            self.job_id,
            self.render()
        );
    }
}

/// Submits `job` to `agent`, waits until it has finished and, the log
/// read as an archivator would, until it is torn down, so that the agent
/// takes the next job.
pub fn run(agent: &TestAgent, job: &Job) -> Ran {
    run_value(agent, &job.to_value(), EVENT_TIMEOUT)
}

/// `run` for a job request given as JSON, with its own timeout.
pub fn run_value(agent: &TestAgent, job: &Value, timeout: Duration) -> Ran {
    let job_id = job["job_id"].as_str().expect("a job id").to_owned();
    // The previous job may still be tearing down.
    poll_until("the agent to take the job", timeout, || {
        let reply = agent.submit(job);
        match reply.status {
            200 => true,
            422 if reply.message() == "another job is already running" => false,
            other => panic!("POST /jobs of {job_id} answered {other}: {}", reply.text()),
        }
    });
    agent.wait_for_event(&job_id, timeout, |e| e["event"] == "job_finished");
    let events = agent.poll_log(&job_id);
    if let Err(problem) = check_invariants(&events, agent.started_secs, unix_now() + 1) {
        panic!("the log of job {job_id} breaks §6.1: {problem}\n{events:#?}");
    }
    assert_eq!(agent.client().archivator_read(&job_id).status, 200);
    Ran { events, job_id }
}
