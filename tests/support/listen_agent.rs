//! `ListenAgent` runs the real `agent start` binary against the test
//! control plane (`control_plane.rs`) in a throw-away HOME and data
//! directory; dropping it kills the agent and any process of the jobs it
//! was given. It also holds the checks every pushed log must pass.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::control_plane::{ControlPlane, REGISTRATION_TOKEN};
use super::server::unix_now;
use super::Job;
use super::{check_invariants, job_processes};

const POLL: Duration = Duration::from_millis(20);

/// How `agent start` is run.
#[derive(Clone)]
pub struct ListenAgentBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    config_file: Option<String>,
    flags: bool,
}

impl ListenAgentBuilder {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Writes this text as the config file and passes `--config-file`,
    /// instead of `--endpoint`/`--token`/`--no-https`.
    pub fn config_file(mut self, text: &str) -> Self {
        self.config_file = Some(text.to_owned());
        self.flags = false;
        self
    }

    /// Neither the endpoint flags nor a config file.
    pub fn no_endpoint_flags(mut self) -> Self {
        self.flags = false;
        self
    }

    pub fn start(self, cp: &ControlPlane) -> ListenAgent {
        ListenAgent::start(self, cp, true)
    }

    /// Starts without telling the agent to trust the control plane's
    /// certificate.
    pub fn start_untrusted(self, cp: &ControlPlane) -> ListenAgent {
        ListenAgent::start(self, cp, false)
    }
}

/// A running `agent start` of one test.
pub struct ListenAgent {
    child: Option<Child>,
    pid: i32,
    dir: tempfile::TempDir,
    job_ids: Arc<Mutex<Vec<String>>>,
    status: Option<ExitStatus>,
    /// How it was started, to start it again (`restart`).
    options: ListenAgentBuilder,
    trust: bool,
}

impl ListenAgent {
    pub fn builder() -> ListenAgentBuilder {
        ListenAgentBuilder {
            args: Vec::new(),
            env: Vec::new(),
            config_file: None,
            flags: true,
        }
    }

    fn start(options: ListenAgentBuilder, cp: &ControlPlane, trust: bool) -> ListenAgent {
        let dir = tempfile::Builder::new()
            .prefix("agent-listen-it-")
            .tempdir()
            .expect("create a temporary directory");
        for sub in ["home", "data", "tmp"] {
            fs::create_dir(dir.path().join(sub)).expect("create the agent's directories");
        }
        let child = ListenAgent::spawn(&options, dir.path(), cp, trust);
        ListenAgent {
            pid: child.id() as i32,
            child: Some(child),
            dir,
            job_ids: Arc::new(Mutex::new(Vec::new())),
            status: None,
            options,
            trust,
        }
    }

    /// Kills the agent with SIGKILL, as a crash would, leaving its jobs'
    /// processes and files.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }

    /// Starts the agent again, as it was started, on the same directories.
    pub fn restart(&mut self, cp: &ControlPlane) {
        assert!(self.child.is_none(), "the agent still runs");
        let child = ListenAgent::spawn(&self.options, self.dir.path(), cp, self.trust);
        self.pid = child.id() as i32;
        self.child = Some(child);
        self.status = None;
    }

    fn spawn(options: &ListenAgentBuilder, dir: &Path, cp: &ControlPlane, trust: bool) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agent"));
        command.arg("start");
        if options.flags {
            // The environment, not `--token`: README, "Listen mode".
            command
                .args(["--endpoint", &cp.endpoint()])
                .env("SEMAPHORE_AGENT_TOKEN", REGISTRATION_TOKEN);
            if !cp.is_tls() {
                command.arg("--no-https");
            }
        } else {
            command.env_remove("SEMAPHORE_AGENT_TOKEN");
        }
        if let Some(text) = &options.config_file {
            let path = dir.join("agent.yml");
            fs::write(&path, text).expect("write the config file");
            command.arg("--config-file").arg(&path);
        }
        if let Some(pem) = cp.cert_pem().filter(|_| trust) {
            let path = dir.join("ca.pem");
            fs::write(&path, pem).expect("write the CA file");
            command.env("SSL_CERT_FILE", &path);
        }
        command
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(&options.args)
            .env("HOME", dir.join("home"))
            .env("TMPDIR", dir.join("tmp"))
            .env("SEMAPHORE_AGENT_LOG_FILE_PATH", dir.join("agent_log"))
            .env_remove("SEMAPHORE_AGENT_NAME")
            .env_remove("SEMAPHORE_AGENT_LOG_LEVEL")
            .env_remove("AGENT_DATA_DIR")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(append(&dir.join("stdout.txt")))
            .stderr(append(&dir.join("stderr.txt")));
        command.spawn().expect("start the agent binary")
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The agent's stderr (its log) so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default()
    }

    /// Remembers a job id so that drop kills its processes if the test fails.
    pub fn track(&self, job_id: &str) {
        self.job_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job_id.to_owned());
    }

    pub fn signal(&self, signal: libc::c_int) {
        assert!(self.status.is_none(), "the agent has exited");
        // SAFETY: kill(2) on our own child, not reaped yet (status is None).
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid);
    }

    /// Waits for the agent to exit; fails the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("a child");
        loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                self.status = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the agent did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for ListenAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for id in self
            .job_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for process in job_processes(id) {
                // SAFETY: kill(2) has no memory-safety preconditions; the
                // pid was just seen carrying this job's mark or token.
                unsafe {
                    libc::kill(process.pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// A file opened for appending (a restarted agent adds to its output).
fn append(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The agent's own event log file of a job, as written on disk.
pub fn event_log_file(agent: &ListenAgent, job_id: &str) -> String {
    let jobs = agent.root().join("data/jobs");
    let dir = fs::read_dir(&jobs)
        .unwrap_or_else(|e| panic!("read {}: {e}", jobs.display()))
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{job_id}."))
        })
        .unwrap_or_else(|| panic!("no directory of job {job_id} in {}", jobs.display()));
    fs::read_to_string(dir.path().join("events.jsonl")).expect("read the event log")
}

/// The accepted lines of a job, as the text of a log file.
pub fn pushed_text(cp: &ControlPlane, job_id: &str) -> String {
    cp.timed_lines(job_id)
        .into_iter()
        .map(|(line, _)| line + "\n")
        .collect()
}

/// Checks what every pushed log must satisfy: the event-log invariants, and
/// exactly the lines of the agent's file, in order, each once.
pub fn assert_pushed_log_complete(
    cp: &ControlPlane,
    agent: &ListenAgent,
    job_id: &str,
    since: i64,
) {
    let pushed = cp.lines(job_id);
    if let Err(problem) = check_invariants(&pushed, since, unix_now() + 1) {
        panic!("the pushed log of {job_id} breaks the invariants: {problem}\n{pushed:#?}");
    }
    assert_eq!(
        pushed_text(cp, job_id),
        event_log_file(agent, job_id),
        "the pushed lines differ from the agent's event log file"
    );
    assert!(
        cp.gaps().is_empty(),
        "pushes skipped lines: {:?}",
        cp.gaps()
    );
    assert!(
        cp.overlaps().is_empty(),
        "pushes repeated accepted lines: {:?}",
        cp.overlaps()
    );
}

/// The distinct states the agent reported, in order.
pub fn reported_states(cp: &ControlPlane) -> Vec<String> {
    let mut states: Vec<String> = Vec::new();
    for sync in cp.syncs() {
        let state = sync.request["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if states.last() != Some(&state) {
            states.push(state);
        }
    }
    states
}

/// How long an agent may take to register and sync for the first time.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A shutdown hook that records the reason it was given; returns the hook's
/// path and where the reason lands.
pub fn shutdown_hook(agent_dir: &tempfile::TempDir) -> (String, std::path::PathBuf) {
    let record = agent_dir.path().join("reason");
    let hook = agent_dir.path().join("shutdown-hook.sh");
    fs::write(
        &hook,
        format!(
            "printf '%s' \"$SEMAPHORE_AGENT_SHUTDOWN_REASON\" > '{}'\n",
            record.display()
        ),
    )
    .expect("write the hook");
    (hook.display().to_string(), record)
}

pub fn read_reason(record: &std::path::Path) -> String {
    fs::read_to_string(record).unwrap_or_else(|e| panic!("the shutdown hook did not run: {e}"))
}

/// A job that prints `n` numbered lines, `pause` apart.
pub fn printing_job(name: &str, n: usize, pause: &str) -> Job {
    Job::new(name).command(&format!(
        "for i in $(seq 1 {n}); do echo line $i; sleep {pause}; done"
    ))
}

/// The numbered lines of `printing_job` in a pushed log, in order.
pub fn printed_lines(cp: &ControlPlane, job_id: &str) -> Vec<String> {
    let text: String = cp
        .lines(job_id)
        .iter()
        .filter(|v| v["event"] == "cmd_output")
        .map(|v| v["output"].as_str().unwrap_or_default().to_owned())
        .collect();
    text.lines()
        .filter(|l| l.starts_with("line "))
        .map(str::to_owned)
        .collect()
}

pub fn expected_lines(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("line {i}")).collect()
}

pub fn outputs(cp: &ControlPlane, job_id: &str) -> String {
    cp.lines(job_id)
        .iter()
        .filter_map(|v| v["output"].as_str().map(str::to_owned))
        .collect()
}
