//! A job whose event log cannot be written (docs/protocol.md §6.8): the
//! data dir's job directories on a real 2 MiB tmpfs that the job's output
//! fills. The job ends `failed` with a line saying why, its commands stop,
//! its epilogues are attempted, the API's result matches the log, and the
//! next job, once there is room, starts clean. A job whose disk fills while
//! its log, past half its limit, holds lines back fails the same way. A disk
//! full at start is said in the agent log and on `/status`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support::server::{unix_now, TestAgent, EVENT_TIMEOUT};
use crate::support::{check_invariants, skip, Job};

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `path`.
    /// Needs root, and a root that may mount (not the root of an
    /// unprivileged container): without either the test is skipped, loudly
    /// and counted (`support::skip`), except under `AGENT_REQUIRE_DOCKER=1`
    /// (CI), where that fails it.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip::skip("mounting a tmpfs needs root");
            return None;
        }
        fs::create_dir_all(path).expect("create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .expect("run mount");
        if !output.status.success() {
            // Root without CAP_SYS_ADMIN in its user namespace (an
            // unprivileged container) gets EPERM here: the machine cannot
            // run this test, which is not the agent's fault.
            // mount's first line ends with the reason, after the path.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let first = stderr.lines().next().unwrap_or_default();
            let why = first.rsplit(": ").next().unwrap_or(first).trim();
            skip::skip(&format!("root may not mount a tmpfs here (mount: {why})"));
            return None;
        }
        Some(Tmpfs {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the agent may still hold a file open while it exits.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn outputs(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["output"].as_str()).collect()
}

fn directives(events: &[Value], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == kind)
        .filter_map(|e| e["directive"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_full_disk_fails_the_job_loudly_and_the_next_one_starts_clean() {
    let agent = TestAgent::builder().archivator_timeout(5).start();
    let jobs = agent.root().join("data/jobs");
    let Some(tmpfs) = Tmpfs::mount(&jobs, "2m") else {
        return;
    };
    // Half of the room is taken, so the test can give it back later.
    let filler = tmpfs.path.join("filler");
    fs::write(&filler, vec![b'f'; 1024 * 1024]).expect("write the filler");

    let flood = "yes | head -c 50000000";
    let job = Job::new("disk-full")
        .command(flood)
        .command("echo never-runs")
        .always("echo epilogue");
    agent.submit_ok(&job.to_value());
    agent.wait_for_event(&job.job_id, EVENT_TIMEOUT, |e| e["event"] == "job_finished");
    let events = agent.poll_log(&job.job_id);
    if let Err(problem) = check_invariants(&events, agent.started_secs, unix_now() + 1) {
        panic!("the log breaks §6.1: {problem}\n{events:#?}");
    }
    let last = events.last().expect("events");
    assert_eq!(last["result"], "failed");
    assert_eq!(agent.job_state(&job.job_id), "finished");
    let info = agent.get(&format!("/jobs/{}", job.job_id)).json();
    assert_eq!(
        info["result"], last["result"],
        "the API and the log disagree"
    );

    let text = outputs(&events);
    assert!(
        text.contains("could not write the log of this job") && text.contains("No space left"),
        "no line says why the job failed: {:?}",
        &text[text.len().saturating_sub(400)..]
    );
    let started = directives(&events, "cmd_started");
    assert!(started.iter().any(|d| d == flood));
    assert!(
        !started.iter().any(|d| d == "echo never-runs"),
        "{started:?}"
    );
    assert!(
        started.iter().any(|d| d == "echo epilogue"),
        "the epilogue was not attempted: {started:?}"
    );
    let flood_end = events
        .iter()
        .find(|e| e["event"] == "cmd_finished" && e["directive"] == flood)
        .expect("the flood's cmd_finished");
    assert_ne!(flood_end["exit_code"], json!(0));

    // The teardown ends once the archivator has read the log.
    let read = agent.client().archivator_read(&job.job_id);
    assert_eq!(read.status, 200);
    fs::remove_file(&filler).expect("give the room back");
    let next = Job::new("after-disk-full").command("echo clean");
    crate::support::wait_until("the first job's teardown", EVENT_TIMEOUT, || {
        agent.submit(&next.to_value()).message() == "ok"
    });
    let events = agent.wait_for_job_finished(&next.job_id);
    assert_eq!(events.last().expect("events")["result"], "passed");
    assert!(outputs(&events).contains("clean\n"));
    assert!(!outputs(&events).contains("could not write"));
    // The tmpfs goes first (a lazy unmount, while the agent still runs):
    // the agent's directory, which holds its mount point, is then empty
    // and goes with the agent.
    drop(tmpfs);
    drop(agent);
}

/// Fills the file system of `dir` with a file there, up to the last byte.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).expect("create the filler");
    let block = vec![b'f'; 4096];
    while file.write_all(&block).is_ok() {}
    // What is left is smaller than a block.
    while file.write_all(b"f").is_ok() {}
    let _ = file.sync_all();
    path
}

#[test]
fn a_full_data_disk_is_reported_at_start_and_on_status() {
    let root = tempfile::Builder::new()
        .prefix("agent-serve-it-")
        .tempdir()
        .expect("a temporary directory");
    let jobs = root.path().join("data/jobs");
    let Some(tmpfs) = Tmpfs::mount(&jobs, "2m") else {
        return;
    };
    let filler = fill(&tmpfs.path);
    let agent = TestAgent::builder().root(root.path()).start();

    let disk = agent.get("/status").json()["data_disk"].clone();
    assert_eq!(disk["full"], true, "{disk}");
    assert!(
        disk["free_bytes"].as_u64().is_some_and(|n| n < 4096),
        "{disk}"
    );
    let log = fs::read_to_string(agent.agent_log_path()).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("data disk") && l.contains("is full")),
        "the agent log does not say the disk is full:\n{log}"
    );

    // /status measures each time: with room again, the disk is not full.
    fs::remove_file(&filler).expect("give the room back");
    let disk = agent.get("/status").json()["data_disk"].clone();
    assert_eq!(disk["full"], false, "{disk}");
    assert!(
        disk["free_bytes"].as_u64().is_some_and(|n| n > 1 << 20),
        "{disk}"
    );
    drop(agent);
    drop(tmpfs);
}

#[test]
fn a_disk_that_fills_while_a_long_log_is_held_back_fails_the_job_with_a_whole_log() {
    let agent = TestAgent::builder()
        .archivator_timeout(5)
        .arg("--max-job-log-bytes")
        .arg("1048576")
        .start();
    let jobs = agent.root().join("data/jobs");
    let Some(tmpfs) = Tmpfs::mount(&jobs, "2m") else {
        return;
    };
    // Room for the head of the log (half of 1 MiB) and a little more: the
    // lines held back after it do not fit.
    fs::write(tmpfs.path.join("filler"), vec![b'f'; 1300 * 1024]).expect("write the filler");

    let flood = "yes | head -c 20000000";
    let job = Job::new("held-disk-full")
        .command(flood)
        .always("echo epilogue");
    agent.submit_ok(&job.to_value());
    let events = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(events.last().expect("events")["result"], "failed");
    let info = agent.get(&format!("/jobs/{}", job.job_id)).json();
    assert_eq!(info["result"], "failed");
    let text = outputs(&events);
    assert!(
        text.contains("could not write the log of this job"),
        "no line says why the job failed: {:?}",
        &text[text.len().saturating_sub(400)..]
    );
    let started = directives(&events, "cmd_started");
    assert!(started.iter().any(|d| d == flood), "{started:?}");
    assert_eq!(started, directives(&events, "cmd_finished"));
    // It was holding lines back that failed first.
    let log = fs::read_to_string(agent.agent_log_path()).unwrap_or_default();
    assert!(
        log.contains("cannot hold back lines of the event log"),
        "{log}"
    );
    // Nothing held back is left in the job's directory.
    let dir = fs::read_dir(&tmpfs.path)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("the job's directory");
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("events.held")),
        "{names:?}"
    );
    drop(tmpfs);
    drop(agent);
}

/// A job whose environment cannot be read (after a full disk, the command
/// file that sources it could not be written; here the job's shell breaks
/// `source` itself) fails at "Exporting environment variables" with a
/// remark that says why, and the log stays as the reference writes it.
#[test]
fn a_job_whose_environment_cannot_be_read_is_told_why() {
    let agent = TestAgent::start_default();
    fs::write(
        agent.home().join(".bash_profile"),
        "source() { echo 'no room to read it' >&2; return 3; }\n",
    )
    .expect("write the profile");
    let job = Job::new("env-unreadable")
        .env("SOME_VAR", "value")
        .command("echo never-runs");
    agent.submit_ok(&job.to_value());
    let events = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(events.last().expect("events")["result"], "failed");
    assert!(!outputs(&events).contains("never-runs"));
    let export_end = events
        .iter()
        .find(|e| {
            e["event"] == "cmd_finished" && e["directive"] == "Exporting environment variables"
        })
        .expect("the export step's end");
    assert_eq!(export_end["exit_code"], json!(3));
    let info = agent.get(&format!("/jobs/{}", job.job_id)).json();
    let remarks = info["remarks"].to_string();
    assert!(
        remarks.contains("could not read the job's environment (exit status 3)")
            && remarks.contains("no room to read it"),
        "no remark says why: {info}"
    );
}
