//! An agent killed with SIGKILL in the middle of a job, and the next agent
//! on the same data dir and HOME (docs/protocol.md §7.3): the job's
//! processes die with the agent, also those that left the job every way;
//! when the job's subreaper was killed too, the next agent ends what carries
//! the mark or stayed in the job's session; nothing else of the job is left
//! on the host, its log ends `failed` (the reason is a remark, not a line),
//! its callbacks arrive, and later jobs know nothing of it. Listen mode's
//! crashes are in `listen_crash.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::callback::CallbackServer;
use crate::support::docker::{self, ComposeJob, Container, ProjectWatch};
use crate::support::server::{unix_now, TestAgent, EVENT_TIMEOUT};
use crate::support::{
    b64, background_processes, check_invariants, escapee, job_processes, token_for,
    wait_for_background_processes, wait_for_escapee, wait_until, with_callbacks, Job,
};

const SECRET: &str = "crash-secret-0451";
const OTHER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOfTheUserxxxxxxxxxxxxxxxxxxxxx user@host";
const JOB_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJobKeyOfTheCrashTestxxxxxxxxxxxxxxxxxx crash-test";
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The request: the job's env var `SECA` secret, `JOB_KEY` for its jump
/// point, callbacks to `server`.
fn request(job: &Job, server: &CallbackServer) -> Value {
    let mut value = with_callbacks(
        job,
        &server.url("/finished"),
        &server.url("/teardown"),
        "cb-token",
    );
    value["ssh_public_keys"] = json!([b64(JOB_KEY)]);
    for var in value["env_vars"].as_array_mut().expect("env_vars") {
        if var["name"] == "SECA" {
            var["secret"] = json!(true);
        }
    }
    value
}

/// The env files of every job under the data dir.
fn env_files(root: &Path) -> Vec<PathBuf> {
    let Ok(jobs) = fs::read_dir(root.join("data/jobs")) else {
        return Vec::new();
    };
    jobs.flatten()
        .map(|d| d.path().join("work/env"))
        .filter(|p| p.exists())
        .collect()
}

fn jump_point(job_id: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/ssh_jump_point-{job_id}"))
}

/// Kills the agent as a crash would, and waits until it is gone.
fn crash(agent: &TestAgent) {
    agent.signal(libc::SIGKILL);
    wait_until("the agent to die", CLEANUP_TIMEOUT, || !agent.is_running());
}

/// The pids of the agent's own children that carry the job's mark: the
/// job's subreaper, which started its session.
fn marked_children(agent: &TestAgent, job_id: &str) -> Vec<i32> {
    job_processes(job_id)
        .into_iter()
        .filter(|p| p.marked)
        .filter(|p| {
            let stat = fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<i32>().ok());
            ppid == Some(agent.pid())
        })
        .map(|p| p.pid)
        .collect()
}

/// Kills the agent and, with it, the job's subreaper (as a kill of all the
/// agent's own processes would), so that the job's processes are left
/// behind: the agent is frozen first, so that it cannot notice.
fn crash_with_subreaper(agent: &TestAgent, job_id: &str) {
    agent.signal(libc::SIGSTOP);
    let children = marked_children(agent, job_id);
    assert_eq!(children.len(), 1, "one subreaper: {children:?}");
    for pid in children {
        // SAFETY: kill(2) on a child of the stopped agent, which cannot reap
        // it: the pid is still that process's.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    crash(agent);
}

/// The job's log through the second agent's API, checked against §6.1.
fn log_after_restart(first: &TestAgent, second: &TestAgent, job_id: &str) -> Vec<Value> {
    let events = second.poll_log(job_id);
    if let Err(problem) = check_invariants(&events, first.started_secs, unix_now() + 1) {
        panic!("the log of {job_id} breaks §6.1: {problem}\n{events:#?}");
    }
    events
}

#[test]
fn a_restarted_agent_cleans_up_after_a_job_cut_short() {
    let server = CallbackServer::start();
    let first = TestAgent::builder().stop_grace_period(2).start();
    let home = first.home();
    fs::create_dir_all(home.join(".ssh")).expect("create ~/.ssh");
    fs::write(home.join(".ssh/authorized_keys"), format!("{OTHER_KEY}\n"))
        .expect("seed authorized_keys");

    let job = Job::new("crash");
    // Plain and `setsid` background processes, found by the job's mark, and
    // one without the mark in the job's session, which survives the hangup
    // of the job's terminal when the agent dies.
    let background = format!(
        "{}env -u AGENT_JOB_MARK bash -c 'trap \"\" HUP; exec -a {}-in-session sleep 1000' &\n",
        background_processes(&job.job_id),
        token_for(&job.job_id)
    );
    let job = job
        .env("SECA", SECRET)
        .command(&background)
        .command("echo ready; sleep 1000");
    first.submit_ok(&request(&job, &server));
    first.wait_for_event(&job.job_id, EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"] == "ready\n"
    });
    wait_for_background_processes(&job.job_id);
    let keys = fs::read_to_string(home.join(".ssh/authorized_keys")).expect("read the keys");
    assert!(
        keys.contains(JOB_KEY),
        "the job's key was not added: {keys}"
    );
    assert!(jump_point(&job.job_id).exists());
    assert_eq!(env_files(first.root()).len(), 1);

    crash_with_subreaper(&first, &job.job_id);
    thread::sleep(Duration::from_millis(500));
    let left = job_processes(&job.job_id);
    assert!(
        left.iter()
            .any(|p| !p.marked && p.cmdline.ends_with("-in-session 1000")),
        "the crash should have left the job's processes: {left:#?}"
    );

    let second = TestAgent::builder().root(first.root()).start();
    wait_until("the job's processes to be killed", CLEANUP_TIMEOUT, || {
        job_processes(&job.job_id).is_empty()
    });
    assert_eq!(
        fs::read_to_string(home.join(".ssh/authorized_keys")).expect("read the keys"),
        format!("{OTHER_KEY}\n")
    );
    assert!(!jump_point(&job.job_id).exists());
    let latest = fs::read_to_string("/tmp/ssh_jump_point").unwrap_or_default();
    assert!(
        !latest.contains(&job.job_id),
        "/tmp/ssh_jump_point is still the job's"
    );
    assert_eq!(env_files(first.root()), Vec::<PathBuf>::new());
    let profile = fs::read_to_string(home.join(".bash_profile")).unwrap_or_default();
    assert!(!profile.contains("/work/env"), "~/.bash_profile: {profile}");

    // Its log ends like that of any failed job: the open step fails, then
    // `job_finished`, and no line of the agent's; the reason is a remark.
    let events = log_after_restart(&first, &second, &job.job_id);
    let last = events.last().expect("events");
    assert_eq!(
        (&last["event"], &last["result"]),
        (&json!("job_finished"), &json!("failed"))
    );
    let closing = &events[events.len() - 3..events.len() - 1];
    assert_eq!(
        (&closing[0]["event"], &closing[0]["output"]),
        (&json!("cmd_output"), &json!("ready\n"))
    );
    assert_eq!(
        (&closing[1]["directive"], &closing[1]["exit_code"]),
        (&json!("echo ready; sleep 1000"), &json!(1))
    );
    let info = second.get(&format!("/jobs/{}", job.job_id)).json();
    assert_eq!(
        (&info["state"], &info["result"]),
        (&json!("finished"), &json!("failed"))
    );
    assert!(
        info["remarks"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("The agent was restarted while this job was running")),
        "{info}"
    );

    // Its callbacks arrive, finished before teardown_finished.
    let finished = server.wait_for_path("/finished", 1, EVENT_TIMEOUT);
    assert_eq!(finished[0].body_text(), "{\"result\": \"failed\"}");
    assert_eq!(finished[0].header("Authorization"), Some("Bearer cb-token"));
    let teardown = server.wait_for_path("/teardown", 1, EVENT_TIMEOUT);
    assert!(finished[0].at <= teardown[0].at);

    // A new job runs and cannot see the secret.
    let next = Job::new("after-crash")
        .command("echo \"[$SECA]\"")
        .command("bash --login -c 'echo \"[$SECA]\"'");
    second.submit_ok(&next.to_value());
    let events = second.wait_for_job_finished(&next.job_id);
    let output: String = events.iter().filter_map(|e| e["output"].as_str()).collect();
    assert!(
        output.contains("[]\n[]\n") && !output.contains(SECRET),
        "{output:?}"
    );
    assert_eq!(events.last().expect("events")["result"], "passed");
}

/// The job's subreaper outlives the agent and ends every process of the
/// job, also one that dropped the mark and left the session, which no
/// later agent could find.
#[test]
fn the_processes_of_a_job_die_with_a_crashed_agent() {
    let agent = TestAgent::builder().stop_grace_period(1).start();
    let job = Job::new("crash-escapee");
    let directive = format!(
        "{}{}echo ready; sleep 1000",
        background_processes(&job.job_id),
        escapee(&job.job_id, true)
    );
    let job = job.command(&directive);
    agent.submit_ok(&job.to_value());
    agent.wait_for_event(&job.job_id, EVENT_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"] == "ready\n"
    });
    wait_for_background_processes(&job.job_id);
    wait_for_escapee(&job.job_id);
    crash(&agent);
    wait_until("the job's processes to be killed", CLEANUP_TIMEOUT, || {
        job_processes(&job.job_id).is_empty()
    });
    // What is on the host besides processes (its jump point script) is
    // the next agent's to remove.
    assert!(jump_point(&job.job_id).exists());
    let second = TestAgent::builder().root(agent.root()).start();
    wait_until(
        "the job's jump point to be removed",
        CLEANUP_TIMEOUT,
        || !jump_point(&job.job_id).exists(),
    );
    drop(second);
}

#[test]
fn a_restarted_agent_removes_the_compose_project_and_gate_objects_of_a_job_cut_short() {
    if !docker::ready() {
        return;
    }
    let server = CallbackServer::start();
    let first = TestAgent::builder().stop_grace_period(2).start();
    // Main makes a container, a network and a volume through its Docker
    // gate, which a crash leaves behind.
    let tag = docker::unique_tag("crash-gate");
    let job = ComposeJob::new("crash-compose", Container::new("main", docker::DIND_IMAGE))
        .service(Container::new("db", docker::BASH_IMAGE).command("sleep 1000"))
        .command(&format!(
            "docker run -d --name left-{tag} {} sleep 1000 >/dev/null && docker network create net-{tag} >/dev/null && docker volume create vol-{tag} >/dev/null && echo ready; sleep 1000",
            docker::BASH_IMAGE
        ));
    let project = ProjectWatch::new(&job.project_prefix());
    let mut value = job.to_value();
    value["callbacks"] = json!({ "finished": server.url("/finished") });
    first.submit_ok(&value);
    first.wait_for_event(job.job_id(), docker::COMPOSE_JOB_TIMEOUT, |e| {
        e["event"] == "cmd_output" && e["output"] == "ready\n"
    });
    assert_eq!(project.containers().len(), 2, "main and db run");

    crash(&first);
    // Its container, network and volume, and main and db, which carry the
    // gate's label too.
    assert_eq!(
        docker::gate_objects_of(job.job_id()).len(),
        5,
        "what the job made through its gate is there after the crash"
    );
    let second = TestAgent::builder().root(first.root()).start();
    project.assert_gone();
    let left = docker::gate_objects_of(job.job_id());
    assert!(left.is_empty(), "the restarted agent left {left:#?}");
    wait_until("the job's processes to be killed", CLEANUP_TIMEOUT, || {
        job_processes(job.job_id()).is_empty()
    });
    let events = log_after_restart(&first, &second, job.job_id());
    assert_eq!(events.last().expect("events")["result"], "failed");
    let finished = server.wait_for_path("/finished", 1, EVENT_TIMEOUT);
    assert_eq!(finished[0].body_text(), "{\"result\": \"failed\"}");
}

/// What an earlier agent leaves for a finished job (docs/protocol.md §1,
/// §7.3): `job.json`, a log ending in `job_finished` and its offset index.
fn write_finished_job(jobs: &Path, job_id: &str, accepted_at: u64) -> PathBuf {
    let dir = jobs.join(format!("{job_id}.00000000{accepted_at:04x}"));
    fs::create_dir_all(&dir).expect("create a job dir");
    let record = json!({ "job_id": job_id, "accepted_at": accepted_at });
    fs::write(dir.join("job.json"), record.to_string()).expect("write job.json");
    let started = format!("{{\"event\":\"job_started\",\"timestamp\":{accepted_at}}}\n");
    let finished = format!(
        "{{\"event\":\"job_finished\",\"timestamp\":{accepted_at},\"result\":\"passed\"}}\n"
    );
    fs::write(dir.join("events.jsonl"), format!("{started}{finished}")).expect("write the log");
    let mut index = 0u64.to_le_bytes().to_vec();
    index.extend_from_slice(&(started.len() as u64).to_le_bytes());
    fs::write(dir.join("events.idx"), index).expect("write the index");
    dir
}

/// The job directories of earlier runs are kept like those of a running
/// agent: the last 100 finished jobs, listed and readable; older ones,
/// those of an agent that wrote no `job.json` among them, are deleted.
#[test]
fn a_restarted_agent_prunes_the_jobs_of_earlier_runs() {
    let root = tempfile::Builder::new()
        .prefix("agent-prune-it-")
        .tempdir()
        .expect("a temporary directory");
    let jobs = root.path().join("data/jobs");
    let now = unix_now() as u64;
    let dirs: Vec<PathBuf> = (0..102)
        .map(|i| write_finished_job(&jobs, &format!("old-{i}"), now - 1000 + i))
        .collect();
    // An older agent's directory: no job.json, a log two hours old.
    let unrecorded = write_finished_job(&jobs, "unrecorded", now - 7200);
    fs::remove_file(unrecorded.join("job.json")).expect("remove its record");
    let touched = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(unrecorded.join("events.jsonl"))
        .status()
        .expect("run touch");
    assert!(touched.success());

    let agent = TestAgent::builder().root(root.path()).start();
    let listed = agent.get("/jobs").json();
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    let expected: Vec<String> = (2..102).map(|i| format!("old-{i}")).collect();
    assert_eq!(ids, expected);
    assert!(!dirs[0].exists() && !dirs[1].exists() && !unrecorded.exists());
    assert!(dirs[2].exists());
    let info = agent.get("/jobs/old-101").json();
    assert_eq!(
        (&info["state"], &info["result"]),
        (&json!("finished"), &json!("passed"))
    );
    let log = agent.client().log("old-101", Some("1"));
    assert!(
        log.text().starts_with("{\"event\":\"job_finished\""),
        "{}",
        log.text()
    );
}
