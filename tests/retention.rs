//! A small disk stays small (docs/protocol.md §6.7, §13.2): a job's log
//! past `--max-job-log-bytes` keeps its start and its end and says how much
//! it left out, paging with `start_from` goes across the gap, and finished
//! jobs' directories beyond `--keep-jobs` or `--max-data-bytes` go, oldest
//! first, in serve and in listen mode.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::control_plane::ControlPlane;
use crate::support::listen_agent::{assert_pushed_log_complete, pushed_text, ListenAgent};
use crate::support::server::{poll_until, unix_now, TestAgent, EVENT_TIMEOUT};
use crate::support::Job;

/// The bytes of the files below `path`, as the agent counts them.
fn dir_size(path: &Path) -> u64 {
    fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The job directories of a data dir.
fn job_dirs(data_dir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(data_dir.join("jobs"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn is_trim_line(event: &Value) -> bool {
    event["output"]
        .as_str()
        .is_some_and(|o| o.starts_with("\n[agent] ") && o.contains(" left out here"))
}

/// The number of bytes a trim line says were left out.
fn left_out_bytes(trim: &str) -> u64 {
    let (_, after) = trim.split_once(" of output (").expect("a byte count");
    after
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {trim:?}"))
}

#[test]
fn a_job_printing_a_gibibyte_keeps_the_start_and_end_of_a_ten_mebibyte_log() {
    const LIMIT: u64 = 10 << 20;
    const PRINTED: u64 = 1 << 30;
    let agent = TestAgent::builder()
        .arg("--max-job-log-bytes")
        .arg(&LIMIT.to_string())
        .start();
    let flood = format!("echo FIRST; yes | head -c {PRINTED}; echo LAST");
    let job = Job::new("gibibyte").command(&flood).command("echo after");
    agent.submit_ok(&job.to_value());

    // Poll as a control plane does while the job runs, and watch the job's
    // directory: it never takes much more than the limit.
    let job_dir = || {
        job_dirs(&agent.root().join("data"))
            .into_iter()
            .next()
            .expect("the job's directory")
    };
    let mut largest = 0;
    poll_until("the job to finish", Duration::from_secs(300), || {
        largest = largest.max(dir_size(&job_dir()));
        agent
            .poll_log(&job.job_id)
            .last()
            .is_some_and(|e| e["event"] == "job_finished")
    });
    let polled = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(polled.last().unwrap()["result"], "passed");
    assert!(
        largest <= LIMIT + (1 << 20),
        "the job's directory took {largest} bytes while the job ran"
    );

    // The log on disk: at most the limit plus the trim line.
    let whole = agent.client().log(&job.job_id, None);
    assert_eq!(whole.status, 200);
    let log_size = fs::metadata(job_dir().join("events.jsonl")).unwrap().len();
    assert_eq!(log_size, whole.body.len() as u64);
    let events: Vec<Value> = whole
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let trims: Vec<usize> = (0..events.len())
        .filter(|&i| is_trim_line(&events[i]))
        .collect();
    assert_eq!(trims.len(), 1, "one trim line");
    let at = trims[0];
    let trim_line_bytes = serde_json::to_string(&events[at]).unwrap().len() as u64 + 1;
    assert!(
        log_size <= LIMIT + trim_line_bytes,
        "the log is {log_size} bytes"
    );

    // Paging across the gap: what the poller got while the job ran and after
    // is the log, line for line, and any start_from around the trim line
    // gives the rest of it.
    assert_eq!(polled, events);
    for from in [at - 1, at, at + 1] {
        let page = agent.client().log(&job.job_id, Some(&from.to_string()));
        let page: Vec<Value> = page
            .body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(page, events[from..], "start_from={from}");
    }

    // Head and tail are there, the trim line is in the flood's step, and it
    // says how much went: with what is kept, that is everything printed.
    let step_start = events
        .iter()
        .position(|e| e["event"] == "cmd_started" && e["directive"] == flood.as_str())
        .unwrap();
    let step_end = events
        .iter()
        .position(|e| e["event"] == "cmd_finished" && e["directive"] == flood.as_str())
        .unwrap();
    assert!(step_start < at && at < step_end);
    assert_eq!(events[step_end]["exit_code"], 0);
    let kept: String = events[step_start..step_end]
        .iter()
        .filter(|e| !is_trim_line(e))
        .filter_map(|e| e["output"].as_str())
        .collect();
    assert!(kept.starts_with("FIRST\ny\ny\n"), "{:?}", &kept[..20]);
    assert!(kept.ends_with("y\ny\nLAST\n"));
    let trim = events[at]["output"].as_str().unwrap();
    assert_eq!(
        left_out_bytes(trim) + kept.len() as u64,
        PRINTED + "FIRST\nLAST\n".len() as u64,
        "{trim}"
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "cmd_started" && e["directive"] == "echo after"));
    // Nothing held back is left beside the log; GET /jobs/{id} says why the
    // log is short.
    let names: Vec<String> = fs::read_dir(job_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("events.held")),
        "{names:?}"
    );
    let info = agent.get(&format!("/jobs/{}", job.job_id)).json();
    assert!(
        info["remarks"][0]
            .as_str()
            .is_some_and(|r| r.contains("max-job-log-bytes")),
        "{info}"
    );
}

/// Submits `n` jobs running `command`, as fast as the agent takes them, and
/// waits until every one has torn down.
fn run_jobs(agent: &TestAgent, name: &str, n: usize, command: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let job = Job::new(&format!("{name}-{i:03}")).command(command);
        poll_until("room for the next job", EVENT_TIMEOUT, || {
            let reply = agent.submit(&job.to_value());
            match reply.status {
                200 => true,
                422 if reply.message().contains("capacity") => false,
                _ => panic!("POST /jobs: {}", reply.text()),
            }
        });
        ids.push(job.job_id);
    }
    poll_until("every job to tear down", Duration::from_secs(120), || {
        let status = agent.get("/status").json();
        status["state"] == "waiting-for-job" && status["jobs"]["tearing_down"] == 0
    });
    ids
}

#[test]
fn two_hundred_finished_jobs_leave_the_fifty_newest_directories() {
    let agent = TestAgent::builder()
        .jobs(8)
        .queue_size(16)
        .arg("--keep-jobs")
        .arg("50")
        .start();
    let ids = run_jobs(&agent, "keep", 200, "true");
    let data = agent.root().join("data");
    assert_eq!(job_dirs(&data).len(), 50);
    let listed: Vec<String> = agent
        .get("/jobs")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids[150..], "the newest 50 stay, in order");
    // A pruned job is unknown, as any other id.
    let gone = agent.get(&format!("/jobs/{}", ids[0]));
    assert_eq!(gone.status, 403, "{}", gone.text());
    assert_eq!(agent.client().log(&ids[149], None).status, 403);
    assert_eq!(agent.client().log(&ids[150], None).status, 200);
}

#[test]
fn finished_jobs_beyond_max_data_bytes_go_oldest_first() {
    const MAX: u64 = 1_000_000;
    let agent = TestAgent::builder()
        .jobs(4)
        .queue_size(8)
        .arg("--max-data-bytes")
        .arg(&MAX.to_string())
        .start();
    // About 100 kB of log each.
    let ids = run_jobs(&agent, "bytes", 30, "head -c 100000 /dev/zero | tr '\\0' x");
    let data = agent.root().join("data");
    let total_of = |dirs: &[std::path::PathBuf]| -> u64 { dirs.iter().map(|d| dir_size(d)).sum() };
    // The last job's directory is pruned after its teardown, which may
    // still run when its `job_finished` is read.
    crate::support::wait_until(
        "the directories to fit in --max-data-bytes",
        std::time::Duration::from_secs(15),
        || total_of(&job_dirs(&data)) <= MAX,
    );
    let dirs = job_dirs(&data);
    let total = total_of(&dirs);
    assert!(total <= MAX, "{total} bytes in {} directories", dirs.len());
    // No more went than needed: one more job's directory would not fit.
    let one = total / dirs.len() as u64;
    assert!(
        total + one > MAX,
        "{total} bytes in {} directories",
        dirs.len()
    );
    let listed: Vec<Value> = agent.get("/jobs").json().as_array().unwrap().clone();
    assert_eq!(listed.len(), dirs.len());
    assert_eq!(
        listed.last().unwrap()["job_id"],
        ids.last().unwrap().as_str()
    );
    assert_eq!(listed[0]["job_id"], ids[ids.len() - dirs.len()].as_str());
}

#[test]
fn listen_mode_keeps_the_newest_job_directories_given_by_its_config_file() {
    let cp = ControlPlane::builder().next_sync_after(50).start();
    let config = format!(
        "endpoint: {}\ntoken: {}\nno-https: true\nkeep-jobs: 2\n",
        cp.endpoint(),
        crate::support::control_plane::REGISTRATION_TOKEN
    );
    let agent = ListenAgent::builder().config_file(&config).start(&cp);
    let mut ids = Vec::new();
    for i in 0..4 {
        let job = Job::new(&format!("listen-keep-{i}")).command("echo hi");
        agent.track(&job.job_id);
        cp.schedule(&job.to_value());
        assert_eq!(cp.wait_for_result(&job.job_id, EVENT_TIMEOUT), "passed");
        ids.push(job.job_id);
    }
    let data = agent.root().join("data");
    poll_until("the older directories to go", EVENT_TIMEOUT, || {
        job_dirs(&data).len() == 2
    });
    let mut kept: Vec<String> = job_dirs(&data)
        .iter()
        .map(|d| {
            let record: Value =
                serde_json::from_slice(&fs::read(d.join("job.json")).unwrap()).unwrap();
            record["job_id"].as_str().unwrap().to_owned()
        })
        .collect();
    kept.sort();
    assert_eq!(kept, ids[2..]);
}

#[test]
fn listen_mode_pushes_a_trimmed_log_whole_across_its_gap() {
    const LIMIT: u64 = 1 << 20;
    let cp = ControlPlane::builder().next_sync_after(50).start();
    let agent = ListenAgent::builder()
        .arg("--max-job-log-bytes")
        .arg(&LIMIT.to_string())
        .start(&cp);
    let since = unix_now();
    let job = Job::new("listen-trim")
        .command("echo FIRST; yes | head -c 30000000; echo LAST")
        .command("echo after");
    agent.track(&job.job_id);
    cp.schedule(&job.to_value());
    assert_eq!(
        cp.wait_for_result(&job.job_id, Duration::from_secs(120)),
        "passed"
    );
    // Every line pushed once, in order, as the agent's file has them: the
    // lines held back went out after those pushed before, numbered on.
    assert_pushed_log_complete(&cp, &agent, &job.job_id, since);
    let pushed = cp.lines(&job.job_id);
    let trims: Vec<&Value> = pushed.iter().filter(|e| is_trim_line(e)).collect();
    assert_eq!(trims.len(), 1);
    let trim_line_bytes = serde_json::to_string(trims[0]).unwrap().len() as u64 + 1;
    let pushed_bytes = pushed_text(&cp, &job.job_id).len() as u64;
    assert!(
        pushed_bytes <= LIMIT + trim_line_bytes,
        "{pushed_bytes} bytes pushed"
    );
    let outputs: String = pushed.iter().filter_map(|e| e["output"].as_str()).collect();
    assert!(outputs.starts_with("FIRST\n"));
    assert!(outputs.contains("y\nLAST\nafter\n"));
}
