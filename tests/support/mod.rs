//! Test support for the integration tests of `agent run`.
//!
//! It builds job requests (docs/protocol.md §3.1), runs the real `agent` binary on them
//! inside a throw-away HOME, and checks what every run must satisfy whatever
//! the job: the event-log invariants of docs/protocol.md §6.1, stdout equal to the log
//! file named on stderr, an exit code that matches the result, and no process
//! of the job left behind. It knows the wire format and the command line, and
//! nothing of the engine's insides: jobs are found on the host only through
//! the `AGENT_JOB_MARK` environment variable and tokens in command lines.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The directive of the env export step and of the result export (§5.1).
pub const ENV_STEP: &str = "Exporting environment variables";
/// The directive of the file injection step (§5.1).
pub const FILES_STEP: &str = "Injecting Files";
/// The directive of the self-stop step (§5.2 step 8).
pub const RESULT_STEP: &str = "Checking job result";

/// What `GET /jobs/{id}` says of a job stopped through the API (§5.4): a
/// remark, never a line of the log.
pub const API_STOP_REMARK: &str = "The job was stopped by a stop request to the API.";

/// How long an ordinary job may take before the test gives up on it. Jobs take
/// well under a second; the margin is for a loaded machine.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// How long processes of a finished job may take to disappear.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stdout and stderr may stay open after the agent has exited.
const PIPE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Standard base64 (RFC 4648 §4), as the job request carries values.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    STANDARD.encode(bytes)
}

/// Base64 broken into 76-character lines with CRLF, as MIME writes it; the
/// protocol says CR and LF inside base64 text are ignored.
pub fn b64_wrapped(bytes: impl AsRef<[u8]>) -> String {
    let text = b64(bytes);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(76)
        .map(|chunk| std::str::from_utf8(chunk).expect("base64 is ASCII"))
        .collect();
    lines.join("\r\n") + "\r\n"
}

/// A job id nobody else uses, so that processes and logs of concurrent tests
/// (and of earlier runs) cannot be mistaken for this one's.
fn unique_job_id(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{name}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The token that long-running test processes of a job carry in their command
/// line (`bash -c 'sleep 1000; : <token>'`), a second way to find them.
pub fn token_for(job_id: &str) -> String {
    format!("leftover-probe-{job_id}")
}

fn command_value(directive: &str, alias: Option<&str>) -> Value {
    match alias {
        Some(alias) => json!({ "directive": directive, "alias": alias }),
        None => json!({ "directive": directive }),
    }
}

/// A job request under construction. Values and file contents given as bytes
/// are base64-encoded here; the `_b64` variants take the wire text as is.
#[derive(Clone, Debug)]
pub struct Job {
    pub job_id: String,
    commands: Vec<Value>,
    epilogue_always: Vec<Value>,
    epilogue_on_pass: Vec<Value>,
    epilogue_on_fail: Vec<Value>,
    env_vars: Vec<Value>,
    files: Vec<Value>,
}

impl Job {
    pub fn new(name: &str) -> Job {
        Job {
            job_id: unique_job_id(name),
            commands: Vec::new(),
            epilogue_always: Vec::new(),
            epilogue_on_pass: Vec::new(),
            epilogue_on_fail: Vec::new(),
            env_vars: Vec::new(),
            files: Vec::new(),
        }
    }

    pub fn command(mut self, directive: &str) -> Job {
        self.commands.push(command_value(directive, None));
        self
    }

    pub fn aliased_command(mut self, alias: &str, directive: &str) -> Job {
        self.commands.push(command_value(directive, Some(alias)));
        self
    }

    pub fn always(mut self, directive: &str) -> Job {
        self.epilogue_always.push(command_value(directive, None));
        self
    }

    pub fn on_pass(mut self, directive: &str) -> Job {
        self.epilogue_on_pass.push(command_value(directive, None));
        self
    }

    pub fn on_fail(mut self, directive: &str) -> Job {
        self.epilogue_on_fail.push(command_value(directive, None));
        self
    }

    pub fn env(self, name: &str, value: impl AsRef<[u8]>) -> Job {
        let value = b64(value);
        self.env_b64(name, &value)
    }

    pub fn env_b64(mut self, name: &str, value: &str) -> Job {
        self.env_vars.push(json!({ "name": name, "value": value }));
        self
    }

    /// An env var with `secret: true` (docs/protocol.md §13.3).
    pub fn secret_env(mut self, name: &str, value: impl AsRef<[u8]>) -> Job {
        self.env_vars
            .push(json!({ "name": name, "value": b64(value), "secret": true }));
        self
    }

    pub fn file(self, path: &str, content: impl AsRef<[u8]>, mode: &str) -> Job {
        let content = b64(content);
        self.file_b64(path, &content, mode)
    }

    pub fn file_b64(mut self, path: &str, content: &str, mode: &str) -> Job {
        self.files
            .push(json!({ "path": path, "content": content, "mode": mode }));
        self
    }

    /// The JSON job request (docs/protocol.md §3.1).
    pub fn to_value(&self) -> Value {
        json!({
            "job_id": self.job_id,
            "executor": "shell",
            "env_vars": self.env_vars,
            "files": self.files,
            "commands": self.commands,
            "epilogue_always_commands": self.epilogue_always,
            "epilogue_on_pass_commands": self.epilogue_on_pass,
            "epilogue_on_fail_commands": self.epilogue_on_fail,
            "callbacks": { "finished": "", "teardown_finished": "", "token": "" },
        })
    }

    /// Runs the job in a fresh sandbox and checks the run (see `Outcome`).
    pub fn run(&self) -> Outcome {
        Sandbox::new().run(self)
    }
}

/// The job request of `job` with these callbacks.
pub fn with_callbacks(job: &Job, finished: &str, teardown_finished: &str, token: &str) -> Value {
    let mut value = job.to_value();
    value["callbacks"] = json!({
        "finished": finished,
        "teardown_finished": teardown_finished,
        "token": token,
    });
    value
}

/// A temporary directory holding the job's HOME, the agent's data directory,
/// TMPDIR and the job files. Removed on drop.
pub struct Sandbox {
    dir: tempfile::TempDir,
    /// `--stop-grace-period` of `agent run`, when not the default.
    stop_grace_period: Option<u64>,
}

impl Default for Sandbox {
    fn default() -> Sandbox {
        Sandbox::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("agent-it-")
            .tempdir()
            .expect("create a temporary directory");
        for sub in ["home", "data", "tmp"] {
            fs::create_dir(dir.path().join(sub)).expect("create sandbox directories");
        }
        Sandbox {
            dir,
            stop_grace_period: None,
        }
    }

    /// Runs the agent with this `--stop-grace-period`.
    pub fn with_stop_grace_period(mut self, seconds: u64) -> Sandbox {
        self.stop_grace_period = Some(seconds);
        self
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The job's HOME: the session starts there and `~` means it.
    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// Runs `job` as a JSON job file and checks the run.
    pub fn run(&self, job: &Job) -> Outcome {
        self.spawn(job).finish(JOB_TIMEOUT)
    }

    /// Runs `job` and fails the test if it takes longer than `timeout`.
    pub fn run_within(&self, job: &Job, timeout: Duration) -> Outcome {
        self.spawn(job).finish(timeout)
    }

    /// Starts `job` as a JSON job file; the test reads events as they come.
    pub fn spawn(&self, job: &Job) -> Running {
        let text = serde_json::to_string_pretty(&job.to_value()).expect("serialise the job");
        self.spawn_text("job.json", &text, &job.job_id)
    }

    /// Runs a hand-written job file (JSON or YAML) whose job id is `job_id`.
    pub fn run_text(&self, file_name: &str, text: &str, job_id: &str) -> Outcome {
        self.spawn_text(file_name, text, job_id).finish(JOB_TIMEOUT)
    }

    pub fn spawn_text(&self, file_name: &str, text: &str, job_id: &str) -> Running {
        let job_file = self.root().join(file_name);
        fs::write(&job_file, text).expect("write the job file");
        let started = Instant::now();
        let started_secs = unix_now();
        let mut command = self.agent_command();
        command
            .arg("run")
            .arg("--json")
            .arg("--data-dir")
            .arg(self.data_dir());
        if let Some(seconds) = self.stop_grace_period {
            command.arg("--stop-grace-period").arg(seconds.to_string());
        }
        let mut child = command
            .arg(&job_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent binary");
        let (lines_tx, lines_rx) = mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        thread::spawn(move || loop {
            let mut line = Vec::new();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if lines_tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let (stderr_tx, stderr_rx) = mpsc::channel();
        let mut stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes);
            let _ = stderr_tx.send(bytes);
        });
        Running {
            child,
            job_id: job_id.to_owned(),
            data_dir: self.data_dir(),
            started,
            started_secs,
            lines_rx,
            stderr_rx,
            lines: Vec::new(),
            events: Vec::new(),
            finished: false,
        }
    }

    /// The agent binary with this sandbox's environment. The working directory
    /// is deliberately not HOME, so relative paths must be resolved by the
    /// agent against HOME.
    pub fn agent_command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agent"));
        command
            .env("HOME", self.home())
            .env("TMPDIR", self.root().join("tmp"))
            .current_dir(self.root());
        command
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A running `agent run --json`. Its stdout lines are read on a thread; the
/// test waits for events with bounded waits, may signal the agent, and ends
/// with `finish`, which checks the run like `Sandbox::run` does.
pub struct Running {
    child: Child,
    job_id: String,
    data_dir: PathBuf,
    started: Instant,
    started_secs: i64,
    lines_rx: Receiver<Vec<u8>>,
    stderr_rx: Receiver<Vec<u8>>,
    lines: Vec<Vec<u8>>,
    events: Vec<Value>,
    finished: bool,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own unreaped child; the child is
        // not waited for before `finish`, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    fn take_line(&mut self, line: Vec<u8>) {
        let event = parse_line(&line, self.lines.len());
        self.lines.push(line);
        self.events.push(event);
    }

    /// Waits until an event satisfying `predicate` has been printed (events
    /// printed before the call count) and returns it.
    pub fn wait_for_event(
        &mut self,
        what: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            while checked < self.events.len() {
                if predicate(&self.events[checked]) {
                    return self.events[checked].clone();
                }
                checked += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines_rx.recv_timeout(left) {
                Ok(line) => self.take_line(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no event for {what} within {timeout:?}; events so far:\n{}",
                        render_events(&self.events)
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the agent closed stdout before {what}; events:\n{}",
                        render_events(&self.events)
                    )
                }
            }
        }
    }

    /// Waits until the output of the running step (the concatenated
    /// `cmd_output` events since its `cmd_started`) contains `needle`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) {
        let mut current = String::new();
        self.wait_for_event(&format!("output {needle:?}"), timeout, |event| {
            match event["event"].as_str() {
                Some("cmd_started") => current.clear(),
                Some("cmd_output") => current.push_str(event["output"].as_str().unwrap_or("")),
                _ => {}
            }
            current.contains(needle)
        });
    }

    /// Waits for the agent to exit (at most `timeout` from its start), then
    /// checks the run and returns what it printed.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        let deadline = self.started + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the agent") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.finished = true;
                kill_job_processes(&self.job_id);
                // Drain what was printed so the failure shows it.
                while let Ok(line) = self.lines_rx.try_recv() {
                    self.lines.push(line);
                }
                panic!(
                    "job {} did not finish within {timeout:?}; stdout so far:\n{}",
                    self.job_id,
                    render_lines(&self.lines)
                );
            }
            thread::sleep(POLL_INTERVAL);
        };
        self.finished = true;
        let ended_secs = unix_now();
        let pipe_deadline = Instant::now() + PIPE_CLOSE_TIMEOUT;
        loop {
            let left = pipe_deadline.saturating_duration_since(Instant::now());
            match self.lines_rx.recv_timeout(left) {
                Ok(line) => self.take_line(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    kill_job_processes(&self.job_id);
                    panic!(
                        "the agent exited but its stdout stayed open for {PIPE_CLOSE_TIMEOUT:?}: \
                         a process of job {} still holds it",
                        self.job_id
                    );
                }
            }
        }
        let left = pipe_deadline.saturating_duration_since(Instant::now());
        let stderr = match self.stderr_rx.recv_timeout(left) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => {
                kill_job_processes(&self.job_id);
                panic!("the agent exited but its stderr stayed open");
            }
        };
        let outcome = Outcome {
            job_id: self.job_id.clone(),
            lines: std::mem::take(&mut self.lines),
            events: std::mem::take(&mut self.events),
            status,
            stderr,
        };
        outcome.check(&self.data_dir, self.started_secs, ended_secs);
        outcome
    }
}

impl Drop for Running {
    /// A test that panicked while its job ran must not leave the agent or the
    /// job's processes behind for the rest of the suite.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
            kill_job_processes(&self.job_id);
        }
    }
}

fn parse_line(line: &[u8], index: usize) -> Value {
    let text = std::str::from_utf8(line)
        .unwrap_or_else(|err| panic!("stdout line {index} is not UTF-8: {err}"));
    let body = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("stdout line {index} does not end with a newline: {text:?}"));
    let value: Value = serde_json::from_str(body)
        .unwrap_or_else(|err| panic!("stdout line {index} is not JSON ({err}): {body:?}"));
    assert!(
        value.is_object(),
        "stdout line {index} is not a JSON object: {body:?}"
    );
    assert!(
        is_compact(body),
        "stdout line {index} is not compact JSON: {body:?}"
    );
    value
}

/// True when the JSON text has no whitespace outside strings.
fn is_compact(text: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_whitespace() {
            return false;
        }
    }
    true
}

fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        let head: String = text.chars().take(max_chars).collect();
        format!("{head}... ({} bytes)", text.len())
    }
}

/// The first lines of a log, each clipped, for failure messages that must
/// stay readable even for a 50 MB log.
fn render_lines(lines: &[Vec<u8>]) -> String {
    let mut text = String::new();
    for line in lines.iter().take(60) {
        text.push_str(&clip(String::from_utf8_lossy(line).trim_end(), 300));
        text.push('\n');
    }
    if lines.len() > 60 {
        text.push_str(&format!("... {} lines in all\n", lines.len()));
    }
    text
}

fn render_events(events: &[Value]) -> String {
    let lines: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
    render_lines(&lines)
}

/// One event with what tests compare: no timestamps, outputs merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    JobStarted,
    CmdStarted(String),
    Output(String),
    CmdFinished(String, i64),
    JobFinished(String),
}

/// Drops timestamps and merges consecutive `cmd_output` events, since chunk
/// boundaries carry no meaning (§6.2).
pub fn normalize(events: &[Value]) -> Vec<Ev> {
    let mut normalized: Vec<Ev> = Vec::new();
    for event in events {
        let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        let ev = match event["event"].as_str().unwrap_or_default() {
            "job_started" => Ev::JobStarted,
            "cmd_started" => Ev::CmdStarted(text("directive")),
            "cmd_output" => {
                if let Some(Ev::Output(previous)) = normalized.last_mut() {
                    previous.push_str(&text("output"));
                    continue;
                }
                Ev::Output(text("output"))
            }
            "cmd_finished" => Ev::CmdFinished(
                text("directive"),
                event["exit_code"].as_i64().unwrap_or(i64::MIN),
            ),
            "job_finished" => Ev::JobFinished(text("result")),
            other => panic!("unknown event {other:?}"),
        };
        normalized.push(ev);
    }
    normalized
}

/// The expected events of one step; an empty output means no `cmd_output`.
pub fn step(directive: &str, output: &str, exit_code: i64) -> Vec<Ev> {
    let mut events = vec![Ev::CmdStarted(directive.to_owned())];
    if !output.is_empty() {
        events.push(Ev::Output(output.to_owned()));
    }
    events.push(Ev::CmdFinished(directive.to_owned(), exit_code));
    events
}

/// The env export step exporting `names` (already de-duplicated and sorted).
pub fn env_export(names: &[&str]) -> Vec<Ev> {
    let output: String = names.iter().map(|n| format!("Exporting {n}\n")).collect();
    step(ENV_STEP, &output, 0)
}

/// An `Injecting Files` step with no files.
pub fn no_files() -> Vec<Ev> {
    step(FILES_STEP, "", 0)
}

/// The result export of §5.2 step 9; its exit code is 1 when the session died.
pub fn result_export(exit_code: i64) -> Vec<Ev> {
    step(ENV_STEP, "Exporting SEMAPHORE_JOB_RESULT\n", exit_code)
}

/// A whole expected log: `job_started`, the steps, `job_finished`.
pub fn log_of(steps: Vec<Vec<Ev>>, result: &str) -> Vec<Ev> {
    let mut events = vec![Ev::JobStarted];
    events.extend(steps.into_iter().flatten());
    events.push(Ev::JobFinished(result.to_owned()));
    events
}

/// A step of a log as it was written, outputs unmerged.
#[derive(Clone, Debug)]
pub struct Step {
    pub directive: String,
    pub outputs: Vec<String>,
    pub exit_code: i64,
    pub started_at: i64,
    pub finished_at: i64,
}

impl Step {
    pub fn output(&self) -> String {
        self.outputs.concat()
    }
}

/// What one run of `agent run --json` printed, already checked.
pub struct Outcome {
    pub job_id: String,
    pub lines: Vec<Vec<u8>>,
    pub events: Vec<Value>,
    pub status: ExitStatus,
    pub stderr: String,
}

impl Outcome {
    pub fn normalized(&self) -> Vec<Ev> {
        normalize(&self.events)
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn result(&self) -> String {
        self.events
            .last()
            .map(|e| e["result"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }

    /// The steps in log order, with their outputs as separate events.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut current: Option<Step> = None;
        for event in &self.events {
            match event["event"].as_str().unwrap_or_default() {
                "cmd_started" => {
                    current = Some(Step {
                        directive: event["directive"].as_str().unwrap_or_default().to_owned(),
                        outputs: Vec::new(),
                        exit_code: 0,
                        started_at: 0,
                        finished_at: 0,
                    })
                }
                "cmd_output" => {
                    if let Some(step) = current.as_mut() {
                        step.outputs
                            .push(event["output"].as_str().unwrap_or_default().to_owned());
                    }
                }
                "cmd_finished" => {
                    if let Some(mut step) = current.take() {
                        step.exit_code = event["exit_code"].as_i64().unwrap_or(i64::MIN);
                        step.started_at = event["started_at"].as_i64().unwrap_or(i64::MIN);
                        step.finished_at = event["finished_at"].as_i64().unwrap_or(i64::MIN);
                        steps.push(step);
                    }
                }
                _ => {}
            }
        }
        steps
    }

    /// The first step with this directive.
    pub fn step(&self, directive: &str) -> Step {
        self.steps()
            .into_iter()
            .find(|step| step.directive == directive)
            .unwrap_or_else(|| panic!("no step {directive:?} in the log:\n{}", self.render()))
    }

    pub fn render(&self) -> String {
        render_lines(&self.lines)
    }

    /// The checks every run must pass, whatever the job.
    fn check(&self, data_dir: &Path, started_secs: i64, ended_secs: i64) {
        if let Err(problem) = check_invariants(&self.events, started_secs, ended_secs + 1) {
            panic!(
                "event log of job {} breaks §6.1: {problem}\nlog:\n{}",
                self.job_id,
                self.render()
            );
        }
        self.check_log_file(data_dir);
        let expected_code = match self.result().as_str() {
            "passed" => 0,
            "failed" => 1,
            "stopped" => 3,
            other => panic!("unexpected result {other:?}"),
        };
        assert_eq!(
            self.exit_code(),
            Some(expected_code),
            "exit status {:?} does not match result {:?}; stderr:\n{}",
            self.status,
            self.result(),
            self.stderr
        );
        assert_no_job_processes(&self.job_id);
    }

    /// The log file named on stderr holds exactly the lines printed on stdout.
    fn check_log_file(&self, data_dir: &Path) {
        let prefix = "agent: event log: ";
        let path = self
            .stderr
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line on stderr:\n{}", self.stderr));
        let path = PathBuf::from(path);
        assert!(
            path.starts_with(data_dir),
            "the event log {} is not inside --data-dir {}",
            path.display(),
            data_dir.display()
        );
        let on_disk = fs::read(&path)
            .unwrap_or_else(|err| panic!("read the event log {}: {err}", path.display()));
        let printed = self.lines.concat();
        if on_disk != printed {
            let disk_lines: Vec<Vec<u8>> = on_disk
                .split_inclusive(|b| *b == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            let first_difference = disk_lines
                .iter()
                .zip(&self.lines)
                .position(|(a, b)| a != b)
                .unwrap_or(disk_lines.len().min(self.lines.len()));
            panic!(
                "the event log file differs from stdout: {} lines on disk, {} printed, \
                 first difference at line {first_difference}\ndisk:\n{}stdout:\n{}",
                disk_lines.len(),
                self.lines.len(),
                render_lines(&disk_lines[first_difference.min(disk_lines.len())..]),
                render_lines(&self.lines[first_difference.min(self.lines.len())..]),
            );
        }
    }
}

/// Polls until `condition` holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

pub mod cache;
pub mod callback;
pub mod client;
pub mod control_plane;
pub mod crawl;
pub mod docker;
pub mod garage;
pub mod imds;
pub mod invariants;
pub mod listen_agent;
pub mod metrics_file;
pub mod net;
pub mod procs;
pub mod registry;
pub mod server;
pub mod sftp;
pub mod skip;
pub mod sshd;
pub mod toolbox;

pub use invariants::*;
pub use procs::*;
