//! Jobs kept apart (docs/protocol.md §8, §13.3): a job's env vars reach
//! that job and its own jump point only, never another job's session nor a
//! login shell of the agent's user; and a secret stays masked where a
//! command spells it out (directives and `agent run`'s live header).

use std::fs;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::docker::{
    self, run_bounded, wait_for_compose_job, ComposeJob, Container, ProjectWatch,
};
use crate::support::server::TestAgent;
use crate::support::{Job, Sandbox};

const SECRET: &str = "alpha-secret-0451";

/// The request of `job` with its env var `name` marked secret.
fn with_secret(mut value: Value, name: &str) -> Value {
    for var in value["env_vars"].as_array_mut().expect("env_vars") {
        if var["name"] == name {
            var["secret"] = json!(true);
        }
    }
    value
}

/// A command that holds the job until the test creates `file` in HOME
/// (at most 60 s), so two jobs surely overlap.
fn hold_until(file: &str) -> String {
    format!(
        "for i in $(seq 1 1200); do [ -e ~/{file} ] && break; sleep 0.05; done; [ -e ~/{file} ]"
    )
}

/// Everything the job printed, joined.
fn output_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["event"] == "cmd_output")
        .filter_map(|e| e["output"].as_str())
        .collect()
}

/// What a second job and a login shell of the agent's user see of the
/// first job's secret while the first job runs: nothing.
fn assert_second_job_sees_nothing(agent: &TestAgent, first: &str) {
    let second = Job::new("iso-second")
        .command("echo \"session:[$SECA]\"")
        .command("bash --login -c 'echo \"login:[$SECA]\"'");
    agent.submit_ok(&second.to_value());
    let events = agent.wait_for_job_finished(&second.job_id);
    let output = output_of(&events);
    assert!(
        output.contains("session:[]\n") && output.contains("login:[]\n"),
        "the second job saw something of {first}'s env: {output:?}"
    );
    assert!(!output.contains(SECRET));
    // No startup file of the agent's user names the first job's env.
    for name in [".bash_profile", ".profile", ".bashrc"] {
        let text = fs::read_to_string(agent.home().join(name)).unwrap_or_default();
        assert!(
            !text.contains("/work/env"),
            "~/{name} sources a job's env file: {text}"
        );
    }
    let login = Command::new("bash")
        .args(["--login", "-c", "printf '%s' \"$SECA\""])
        .env("HOME", agent.home())
        .env_remove("SECA")
        .output()
        .expect("run a login shell");
    assert_eq!(String::from_utf8_lossy(&login.stdout), "");
}

/// The jump point script of `job_id` run on this host with a command.
fn through_jump_point(job_id: &str, command: &str) -> String {
    let mut jump = Command::new("bash");
    jump.arg(format!("/tmp/ssh_jump_point-{job_id}"))
        .args(["bash", "-c", command]);
    run_bounded(jump, b"", Duration::from_secs(60)).stdout
}

/// Two shell jobs at once: the second, its login shells and the agent
/// user's login shells see nothing of the first's env vars, while the
/// first job's own jump point has them.
#[test]
fn a_shell_jobs_env_reaches_only_that_job_and_its_jump_point() {
    let agent = TestAgent::builder().jobs(2).start();
    let first = Job::new("iso-shell")
        .env("SECA", SECRET)
        .command(&hold_until("release-shell"));
    agent.submit_ok(&with_secret(first.to_value(), "SECA"));
    agent.wait_for_cmd_started(&first.job_id, &hold_until("release-shell"));

    assert_eq!(
        through_jump_point(&first.job_id, "printf '%s' \"$SECA\""),
        SECRET
    );
    assert_second_job_sees_nothing(&agent, &first.job_id);

    fs::write(agent.home().join("release-shell"), "").expect("release the first job");
    let events = agent.wait_for_job_finished(&first.job_id);
    assert_eq!(events.last().expect("events")["result"], "passed");
    assert!(!std::path::Path::new(&format!("/tmp/ssh_jump_point-{}", first.job_id)).exists());
}

/// A compose job with a secret beside a shell job: the shell job and
/// login shells on the host see nothing of it; the secret is in the
/// compose job's container and its jump point.
#[test]
fn a_compose_jobs_env_reaches_only_its_container() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::builder().jobs(2).stop_grace_period(2).start();
    let job = ComposeJob::new("iso-compose", Container::new("main", docker::BASH_IMAGE))
        .env("SECA", SECRET)
        .command("echo \"in-main:${#SECA}\"")
        .command("sleep 60");
    let project = ProjectWatch::new(&job.project_prefix());
    agent.submit_ok(&with_secret(job.to_value(), "SECA"));
    agent.wait_for_event(job.job_id(), docker::COMPOSE_JOB_TIMEOUT, |e| {
        e["event"] == "cmd_output"
            && e["output"]
                .as_str()
                .is_some_and(|o| o.contains(&format!("in-main:{}", SECRET.len())))
    });

    assert_second_job_sees_nothing(&agent, job.job_id());
    let through = through_jump_point(job.job_id(), "printf '<%s>' \"$SECA\"");
    assert!(
        through.ends_with(&format!("<{SECRET}>")),
        "the compose job's jump point printed {through:?}"
    );

    let stop = agent.post(&format!("/jobs/{}/stop", job.job_id()), b"");
    assert_eq!(stop.status, 200, "{}", stop.text());
    let events = wait_for_compose_job(&agent, job.job_id());
    assert_eq!(events.last().expect("events")["result"], "stopped");
    project.assert_gone();
}

/// A secret spelled out in a command is masked in `cmd_started`,
/// `cmd_finished` and the `Running:` line of an aliased command, in the
/// API's log and in `agent run`'s live header.
#[test]
fn secrets_are_masked_in_directives() {
    let agent = TestAgent::start_default();
    let job = Job::new("mask-directive")
        .env("SECA", SECRET)
        .command(&format!("echo {SECRET} >/dev/null"))
        .aliased_command("aliased", &format!("true {SECRET}"));
    agent.submit_ok(&with_secret(job.to_value(), "SECA"));
    let events = agent.wait_for_job_finished(&job.job_id);
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    assert!(!text.contains(SECRET), "the secret is in the log:\n{text}");
    let directives: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "cmd_started" || e["event"] == "cmd_finished")
        .filter_map(|e| e["directive"].as_str())
        .filter(|d| d.contains("[MASKED]"))
        .collect();
    assert_eq!(
        directives,
        ["echo [MASKED] >/dev/null", "echo [MASKED] >/dev/null"]
    );
    assert!(output_of(&events).contains("Running: true [MASKED]\n"));

    // `agent run` without --json: the header of each command.
    let sandbox = Sandbox::new();
    let file = sandbox.root().join("job.json");
    fs::write(&file, with_secret(job.to_value(), "SECA").to_string()).expect("write the job");
    let mut command = sandbox.agent_command();
    command.arg("run").arg(&file);
    let out = run_bounded(command, b"", Duration::from_secs(60)).ok("agent run");
    assert!(
        out.stdout.contains("$ echo [MASKED] >/dev/null") && !out.stdout.contains(SECRET),
        "agent run showed:\n{}",
        out.stdout
    );
}
