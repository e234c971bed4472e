//! The README's listen-mode recipe: the example control plane
//! (examples/control_plane.py, Python 3 standard library) hands the real
//! `agent start` one job from a file, the agent runs it and pushes its log,
//! which the control plane prints; both exit when the job is done.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::server::unix_now;
use crate::support::{check_invariants, job_processes, skip};

/// Registration, a few syncs a second apart, a short shell job, the push.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Children killed on the way out, whatever happens; a job's processes too.
struct Processes {
    children: Vec<Child>,
    job_id: String,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for process in job_processes(&self.job_id) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid
            // was just seen carrying this job's mark.
            unsafe { libc::kill(process.pid, libc::SIGKILL) };
        }
    }
}

fn wait_exit(child: &mut Child, what: &str, deadline: Instant) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit within {RUN_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one run through the example control plane left.
struct Run {
    plane_status: ExitStatus,
    agent_status: ExitStatus,
    /// The control plane's stdout: the pushed event log.
    events: Vec<Value>,
    /// The control plane's stderr: what it did.
    said: String,
    agent_log: String,
    started: i64,
}

/// Runs `job_file` through the example control plane and `agent start`
/// as the README shows; `None` after a recorded skip.
fn run_through_example(job_file: &Path, job_id: &str) -> Option<Run> {
    if Command::new("python3").arg("--version").output().is_err() {
        skip::skip("python3 is not installed (Debian: apt-get install python3)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("agent-example-cp-it-")
        .tempdir()
        .unwrap();
    for sub in ["home", "tmp"] {
        fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = unix_now();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut processes = Processes {
        children: Vec::new(),
        job_id: job_id.to_owned(),
    };
    let mut plane = Command::new("python3")
        .arg(root.join("examples/control_plane.py"))
        .arg(job_file)
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.path().join("events.jsonl")).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example control plane");
    let stderr = plane.stderr.take().unwrap();
    processes.children.push(plane);
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(RUN_TIMEOUT)
        .expect("the control plane says where it listens");
    let endpoint = first
        .strip_prefix("control plane: listening on http://")
        .unwrap_or_else(|| panic!("first line: {first}"))
        .to_owned();

    // As in the README, with this test's own HOME, data and log.
    let agent_log = dir.path().join("agent.log");
    let agent = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["start", "--endpoint", &endpoint, "--no-https", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("SEMAPHORE_AGENT_TOKEN", "local-token")
        .env("HOME", dir.path().join("home"))
        .env("TMPDIR", dir.path().join("tmp"))
        .env("SEMAPHORE_AGENT_LOG_FILE_PATH", &agent_log)
        .env_remove("SEMAPHORE_AGENT_NAME")
        .env_remove("SEMAPHORE_AGENT_LOG_LEVEL")
        .env_remove("AGENT_DATA_DIR")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent start");
    processes.children.push(agent);

    let agent_status = wait_exit(&mut processes.children[1], "agent start", deadline);
    let plane_status = wait_exit(&mut processes.children[0], "the control plane", deadline);
    let _ = reader.join();
    let said: String = rx.try_iter().map(|l| l + "\n").collect();
    let events = fs::read_to_string(dir.path().join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    Some(Run {
        plane_status,
        agent_status,
        events,
        said,
        agent_log: fs::read_to_string(&agent_log).unwrap_or_default(),
        started,
    })
}

#[test]
fn the_example_control_plane_runs_hello_json_through_agent_start() {
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello.json");
    let Some(run) = run_through_example(&job, "hello") else {
        return;
    };
    let context = format!(
        "control plane:\n{}\nagent log:\n{}",
        run.said, run.agent_log
    );
    assert!(
        run.agent_status.success(),
        "{}\n{context}",
        run.agent_status
    );
    assert!(
        run.plane_status.success(),
        "{}\n{context}",
        run.plane_status
    );
    assert!(run.said.contains("job hello finished: passed"), "{context}");
    assert!(run.said.contains("the agent disconnected"), "{context}");
    // The whole log, in order, as the agent wrote it.
    if let Err(problem) = check_invariants(&run.events, run.started, unix_now() + 1) {
        panic!("the printed log breaks §6.1: {problem}\n{:#?}", run.events);
    }
    assert_eq!(run.events.last().unwrap()["result"], "passed");
    let output: String = run
        .events
        .iter()
        .filter_map(|e| e["output"].as_str())
        .collect();
    for text in [
        "Hello World\n",
        "hi there\n",
        "step 3\n",
        "the job passed\n",
    ] {
        assert!(output.contains(text), "{text:?} missing from {output:?}");
    }
}

#[test]
fn a_misspelt_key_of_a_listen_job_is_named_in_the_agent_log() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.json");
    fs::write(
        &job,
        r#"{"job_id": "misspelt", "comands": [{"directive": "echo never"}],
            "commands": [{"directive": "echo ran", "alais": "x"}]}"#,
    )
    .unwrap();
    let Some(run) = run_through_example(&job, "misspelt") else {
        return;
    };
    // Accepted and run, as the reference runs it.
    assert!(run.plane_status.success(), "{}", run.said);
    let named: Vec<&str> = run
        .agent_log
        .lines()
        .filter(|l| l.contains("keys this agent does not know"))
        .collect();
    assert_eq!(named.len(), 1, "{}", run.agent_log);
    assert!(
        named[0].ends_with(
            "job misspelt: keys this agent does not know are ignored: comands, commands.0.alais"
        ),
        "{}",
        named[0]
    );
}
