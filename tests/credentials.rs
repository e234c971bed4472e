//! The agent's credentials are not the job's: the registration token of
//! listen mode and the JWT secret of serve mode, whether given on the
//! command line or in the environment, can be read neither in
//! `/proc/PID/cmdline` nor in `/proc/PID/environ` of the agent, by a test or
//! by a job, and no job inherits them. (A job runs as the agent's user, so
//! this hides them from what a job can read without tracing the agent;
//! README, "What a job can read".)

use std::fs;

use crate::support::control_plane::{ControlPlane, REGISTRATION_TOKEN};
use crate::support::listen_agent::{outputs, ListenAgent};
use crate::support::server::TestAgent;
use crate::support::{Job, JOB_TIMEOUT};

/// A job that prints what it can read of the agent (the parent of its
/// subreaper, which is the parent of its bash), of its subreaper, and its
/// own environment.
fn prying_job(name: &str) -> Job {
    let agent = "$(awk '{print $4}' /proc/$PPID/stat)";
    Job::new(name)
        .command(&format!("tr '\\0' ' ' < /proc/{agent}/cmdline; echo"))
        .command(&format!("tr '\\0' '\\n' < /proc/{agent}/environ"))
        .command("tr '\\0' ' ' < /proc/$PPID/cmdline; echo")
        .command("tr '\\0' '\\n' < /proc/$PPID/environ")
        .command("env")
}

/// The agent's `/proc` files, as a test (the same user) reads them.
fn proc_text(pid: i32) -> String {
    ["cmdline", "environ"]
        .iter()
        .map(|f| {
            let bytes = fs::read(format!("/proc/{pid}/{f}")).expect("read /proc");
            String::from_utf8_lossy(&bytes).replace('\0', " ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_registration_token_on_the_command_line_is_hidden_and_the_user_warned() {
    let cp = ControlPlane::start();
    let agent = ListenAgent::builder()
        .arg("--token")
        .arg(REGISTRATION_TOKEN)
        .start(&cp);
    let job = prying_job("token-flag");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    // Registered with it: the control plane checks the token.
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    let seen = outputs(&cp, &job.job_id);
    assert!(seen.contains("--token x"), "the job saw:\n{seen}");
    assert!(!seen.contains(REGISTRATION_TOKEN), "the job saw:\n{seen}");
    assert!(!proc_text(agent.pid()).contains(REGISTRATION_TOKEN));
    assert!(
        agent
            .stderr_text()
            .contains("warning: --token on the command line can be read by every process"),
        "{}",
        agent.stderr_text()
    );
}

#[test]
fn a_registration_token_in_the_environment_or_a_file_stays_out_of_jobs() {
    let cp = ControlPlane::start();
    // The builder gives the token in SEMAPHORE_AGENT_TOKEN.
    let agent = ListenAgent::builder().start(&cp);
    let job = prying_job("token-env");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    let seen = outputs(&cp, &job.job_id);
    assert!(!seen.contains(REGISTRATION_TOKEN), "the job saw:\n{seen}");
    assert!(!seen.contains("SEMAPHORE_AGENT_TOKEN=r"), "{seen}");
    assert!(!proc_text(agent.pid()).contains(REGISTRATION_TOKEN));
    assert!(!agent.stderr_text().contains("warning: --token"));
    drop(agent);

    let dir = tempfile::tempdir().expect("a temp dir");
    let token_file = dir.path().join("token");
    fs::write(&token_file, format!("{REGISTRATION_TOKEN}\n")).expect("write the token");
    let config = format!(
        "endpoint: {}\nno-https: true\ntoken-file: {}\n",
        cp.endpoint(),
        token_file.display()
    );
    let agent = ListenAgent::builder().config_file(&config).start(&cp);
    let job = prying_job("token-file");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(cp.wait_for_result(&job.job_id, JOB_TIMEOUT), "passed");
    assert!(!outputs(&cp, &job.job_id).contains(REGISTRATION_TOKEN));
}

#[test]
fn the_jwt_secret_is_in_no_jobs_reach_given_on_the_command_line_or_in_the_environment() {
    const SECRET: &str = "jwt-secret-for-the-credentials-test";
    for on_command_line in [false, true] {
        let builder = TestAgent::builder().secret(SECRET);
        let agent = if on_command_line {
            builder.arg("--auth-token-secret").arg(SECRET).start()
        } else {
            builder.start()
        };
        let job = prying_job(if on_command_line {
            "secret-flag"
        } else {
            "secret-env"
        });
        agent.submit_ok(&job.to_value());
        let events = agent.wait_for_job_finished(&job.job_id);
        let seen: String = events.iter().filter_map(|e| e["output"].as_str()).collect();
        assert!(seen.contains("serve"), "the job saw:\n{seen}");
        assert!(!seen.contains(SECRET), "the job saw:\n{seen}");
        assert!(!proc_text(agent.pid()).contains(SECRET));
        // The agent still checks tokens signed with it.
        assert_eq!(agent.get("/status").status, 200);
        let warned = agent
            .stderr_text()
            .contains("warning: --auth-token-secret on the command line");
        assert_eq!(warned, on_command_line, "{}", agent.stderr_text());
    }
}
