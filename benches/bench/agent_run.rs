//! Running `agent run --json` on a job file in a scratch directory, measured
//! by `measure` (wall time and `wait4`'s peak RSS), and finding the event
//! log it wrote.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::agent_binary;
use crate::events::{summarize_log, LogSummary};
use crate::measure::{measure, Measured};
use crate::report::{indent, read_tail, Failure};
use crate::scratch::Scratch;

/// One finished `agent run` whose job passed, with its scratch directory
/// (removed when this is dropped).
pub struct AgentRun {
    pub measured: Measured,
    pub log: PathBuf,
    pub scratch: Scratch,
}

impl AgentRun {
    pub fn log_bytes(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Reads the event log and checks that the job passed; `on_output` sees
    /// every `cmd_output` with the directive of the step it belongs to.
    pub fn summarize(&self, on_output: impl FnMut(&str, &str)) -> Result<LogSummary, Failure> {
        let summary = summarize_log(&self.log, on_output).map_err(|e| self.failed(e))?;
        match summary.result.as_deref() {
            Some("passed") => Ok(summary),
            Some(other) => Err(self.failed(Failure::new(format!(
                "job_finished has result {other:?}, expected \"passed\""
            )))),
            None => Err(self.failed(Failure::new(
                "the last event is not job_finished".to_string(),
            ))),
        }
    }

    /// Turns a finding about this run into a failure that names the event
    /// log and keeps the run's files for inspection.
    pub fn failed(&self, failure: Failure) -> Failure {
        Failure::new(format!(
            "event log {}: {failure} {}",
            self.log.display(),
            self.scratch.keep()
        ))
    }
}

/// Runs `agent run --json` on `job` in a fresh scratch directory and checks
/// that it exited 0. The caller checks the event log.
pub fn run_agent(label: &str, job: &Value) -> Result<AgentRun, Failure> {
    let scratch = Scratch::new(label)?;
    let home = scratch.path().join("home");
    let data_dir = scratch.path().join("data");
    for dir in [&home, &data_dir] {
        fs::create_dir_all(dir).map_err(|e| Failure::io("create scratch directory", e))?;
    }
    let job_path = scratch.path().join("job.json");
    let job_text = serde_json::to_vec(job).expect("a JSON value serializes");
    fs::write(&job_path, job_text).map_err(|e| Failure::io("write job file", e))?;
    let stderr_path = scratch.path().join("agent.stderr");
    let stderr = File::create(&stderr_path).map_err(|e| Failure::io("create stderr file", e))?;

    let mut cmd = Command::new(agent_binary());
    cmd.arg("run")
        .arg("--json")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg(&job_path)
        .current_dir(&home)
        .env("HOME", &home)
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            scratch.path().join("agent_log"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    let measured = measure(cmd, true)?;
    if !measured.exit.is_success() {
        let stderr_tail = match read_tail(&stderr_path, 2000) {
            Ok(tail) if !tail.trim().is_empty() => tail,
            _ => "(empty)".to_owned(),
        };
        return Err(Failure::new(format!(
            "agent run {} {}; stderr tail:\n{}",
            measured.exit,
            scratch.keep(),
            indent(stderr_tail.trim_end())
        )));
    }
    let log =
        find_event_log(&data_dir).map_err(|e| Failure::new(format!("{e} {}", scratch.keep())))?;
    Ok(AgentRun {
        measured,
        log,
        scratch,
    })
}

/// Finds the job's event log under the data directory: a file whose first
/// line is a `job_started` event. The file name is the engine's business.
fn find_event_log(data_dir: &Path) -> Result<PathBuf, Failure> {
    let mut files = Vec::new();
    collect_files(data_dir, &mut files).map_err(|e| Failure::io("list data directory", e))?;
    let mut logs: Vec<(u64, PathBuf)> = files
        .iter()
        .filter(|path| first_event(path).as_deref() == Some("job_started"))
        .map(|path| {
            (
                fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                path.clone(),
            )
        })
        .collect();
    // Should there be several (say, a copy), the largest is the full log.
    logs.sort();
    match logs.pop() {
        Some((_, path)) => Ok(path),
        None => Err(Failure::new(format!(
            "no event log (a file starting with job_started) under {}; files: {files:?}",
            data_dir.display(),
        ))),
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            collect_files(&entry.path(), files)?;
        } else if file_type.is_file() {
            files.push(entry.path());
        }
    }
    Ok(())
}

/// The `event` of a file's first line, if that line is a JSON event.
fn first_event(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut line = Vec::new();
    BufReader::new(file.take(64 * 1024))
        .read_until(b'\n', &mut line)
        .ok()?;
    let value: Value = serde_json::from_slice(&line).ok()?;
    value.get("event")?.as_str().map(str::to_owned)
}
