//! An `agent start` killed with SIGKILL mid-job or mid-push, then started
//! again on the same data dir and HOME (docs/listen.md, "When the agent
//! crashes"): nothing of the job is left on the host, the control plane
//! gets every line it had not accepted, once, ending in `job_finished`, and
//! hears the job's result once, before the agent asks for new work.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::control_plane::ControlPlane;
use crate::support::listen_agent::{
    assert_pushed_log_complete, event_log_file, outputs, ListenAgent, START_TIMEOUT,
};
use crate::support::server::unix_now;
use crate::support::{
    b64, background_processes, job_processes, wait_for_background_processes, wait_until, Job,
    JOB_TIMEOUT,
};

const SECRET: &str = "listen-crash-secret-0451";
const JOB_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJobKeyOfTheListenCrashTestxxxxxxxxxxxx listen-crash";
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The job's directory in the agent's data dir.
fn job_dir(agent: &ListenAgent, job_id: &str) -> PathBuf {
    let jobs = agent.root().join("data/jobs");
    fs::read_dir(&jobs)
        .expect("the jobs directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{job_id}.")))
        })
        .unwrap_or_else(|| panic!("no directory of {job_id} in {}", jobs.display()))
}

/// Kills the agent and the job's subreaper with it (as a kill of all the
/// agent's own processes would), so that the job's processes are left for
/// the next agent to find: the agent is frozen first, so that it cannot
/// notice.
fn crash_with_subreaper(agent: &mut ListenAgent, job_id: &str) {
    agent.signal(libc::SIGSTOP);
    let parent_of = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(") ")?;
                rest.split_whitespace().nth(1)?.parse::<i32>().ok()
            })
    };
    let subreapers: Vec<i32> = job_processes(job_id)
        .into_iter()
        .filter(|p| p.marked && parent_of(p.pid) == Some(agent.pid()))
        .map(|p| p.pid)
        .collect();
    assert_eq!(subreapers.len(), 1, "one subreaper: {subreapers:?}");
    for pid in subreapers {
        // SAFETY: kill(2) on a child of the stopped agent, which cannot
        // reap it: the pid is still that process's.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    agent.crash();
}

/// The lines the agent has recorded as accepted.
fn recorded_pushed(dir: &Path) -> usize {
    fs::read_to_string(dir.join("pushed"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The states the agent reported for `job_id` from sync `from` on.
fn reports_of(cp: &ControlPlane, from: usize, job_id: &str) -> Vec<String> {
    cp.syncs()[from..]
        .iter()
        .filter(|s| s.request["job_id"] == job_id || s.request["state"] == "waiting-for-jobs")
        .map(|s| {
            format!(
                "{} {}",
                s.request["state"].as_str().unwrap_or_default(),
                s.request["job_result"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Every `finished-job` of the job comes first, exactly once, and only then
/// does the agent wait for jobs.
fn assert_reported_once_first(cp: &ControlPlane, from: usize, job_id: &str, result: &str) {
    wait_until("the agent to wait for jobs again", START_TIMEOUT, || {
        reports_of(cp, from, job_id)
            .iter()
            .any(|r| r.starts_with("waiting-for-jobs"))
    });
    let reports = reports_of(cp, from, job_id);
    assert_eq!(
        reports[..2],
        [
            format!("finished-job {result}"),
            "waiting-for-jobs ".to_owned()
        ],
        "{reports:?}"
    );
    let finished = reports
        .iter()
        .filter(|r| r.starts_with("finished-job"))
        .count();
    assert_eq!(finished, 1, "{reports:?}");
    assert_eq!(cp.result(job_id).as_deref(), Some(result));
}

#[test]
fn a_listen_agent_killed_mid_job_cleans_up_and_tells_the_control_plane_once() {
    let cp = ControlPlane::start();
    let mut agent = ListenAgent::builder().start(&cp);
    let job = Job::new("listen-crash");
    let background = background_processes(&job.job_id);
    let job = job
        .env("SECA", SECRET)
        .command(&background)
        .command("echo ready; sleep 1000");
    let mut request = job.to_value();
    request["ssh_public_keys"] = json!([b64(JOB_KEY)]);
    for var in request["env_vars"].as_array_mut().expect("env_vars") {
        var["secret"] = json!(true);
    }
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&request);
    cp.wait_for_line(&job.job_id, "the ready line", JOB_TIMEOUT, |v| {
        v["output"] == "ready\n"
    });
    wait_for_background_processes(&job.job_id);
    let dir = job_dir(&agent, &job.job_id);
    let pushed = cp.lines(&job.job_id).len();
    wait_until("the push recorded", START_TIMEOUT, || {
        recorded_pushed(&dir) == pushed
    });
    let jump_point = PathBuf::from(format!("/tmp/ssh_jump_point-{}", job.job_id));
    let keys = agent.home().join(".ssh/authorized_keys");
    assert!(jump_point.exists());
    assert!(fs::read_to_string(&keys).unwrap().contains(JOB_KEY));
    for file in ["env", "cache.sock", "setup.sh"] {
        assert!(dir.join("work").join(file).exists(), "no work/{file}");
    }

    crash_with_subreaper(&mut agent, &job.job_id);
    assert!(!job_processes(&job.job_id).is_empty());
    let from = cp.syncs().len();
    agent.restart(&cp);
    wait_until("the job's processes to be killed", CLEANUP_TIMEOUT, || {
        job_processes(&job.job_id).is_empty()
    });
    assert_reported_once_first(&cp, from, &job.job_id, "failed");
    // Every line once, the lines pushed before the crash not again, and the
    // log ends as any failed job's, with no line of the agent's.
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    let events: Vec<Value> = cp.lines(&job.job_id);
    let tail: Vec<(&Value, &Value)> = events[events.len() - 2..]
        .iter()
        .map(|e| (&e["event"], &e["exit_code"]))
        .collect();
    assert_eq!(
        tail,
        [
            (&json!("cmd_finished"), &json!(1)),
            (&json!("job_finished"), &Value::Null)
        ]
    );
    assert_eq!(events.last().unwrap()["result"], "failed");
    assert!(!outputs(&cp, &job.job_id).contains("restarted"));
    // Nothing of the job is left on the host.
    assert!(!dir.join("work").exists(), "the work dir is left");
    assert!(!jump_point.exists(), "the jump point is left");
    assert!(!fs::read_to_string(&keys)
        .unwrap_or_default()
        .contains(JOB_KEY));
    assert!(
        agent
            .stderr_text()
            .contains("was cut short by an earlier agent"),
        "{}",
        agent.stderr_text()
    );

    // The next job runs, and knows nothing of the secret.
    let next = Job::new("listen-after-crash").command("echo \"[$SECA]\"");
    agent.track(&next.job_id);
    cp.schedule(&next.to_value());
    assert_eq!(cp.wait_for_result(&next.job_id, JOB_TIMEOUT), "passed");
    assert!(outputs(&cp, &next.job_id).contains("[]\n"));
}

#[test]
fn a_listen_agent_killed_mid_push_pushes_the_rest_and_reports_the_result_after_a_restart() {
    let cp = ControlPlane::start();
    let mut agent = ListenAgent::builder().start(&cp);
    let job = Job::new("listen-crash-push")
        .command("echo first")
        .command("sleep 0.5; echo second");
    agent.track(&job.job_id);
    let since = unix_now();
    cp.schedule(&job.to_value());
    cp.wait_for_line(&job.job_id, "the first line", JOB_TIMEOUT, |v| {
        v["output"] == "first\n"
    });
    // The control plane goes away: the job ends, its last lines and its
    // result stay with the agent, which is then killed.
    cp.set_down(true);
    let dir = job_dir(&agent, &job.job_id);
    wait_until("the job to end on the agent", JOB_TIMEOUT, || {
        event_log_file(&agent, &job.job_id).contains("\"job_finished\"")
    });
    agent.crash();
    assert!(cp.result(&job.job_id).is_none());
    let accepted = cp.lines(&job.job_id).len();
    assert!(accepted > 0 && recorded_pushed(&dir) == accepted);

    cp.set_down(false);
    let from = cp.syncs().len();
    agent.restart(&cp);
    assert_reported_once_first(&cp, from, &job.job_id, "passed");
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    assert!(outputs(&cp, &job.job_id).contains("second\n"));
    assert_eq!(cp.lines(&job.job_id).last().unwrap()["result"], "passed");
}
