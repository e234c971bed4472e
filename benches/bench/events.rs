//! Reading the agent's event logs as the benchmarks need them: a whole log
//! file summarized line by line (steps, result, size), and `LineTracker`,
//! which follows a log read through the API in pieces without keeping it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use crate::report::Failure;

/// One command step as the event log tells it.
pub struct Step {
    pub directive: String,
    pub exit_code: Option<i64>,
}

/// What the benchmarks need to know from an event log.
pub struct LogSummary {
    pub steps: Vec<Step>,
    /// The `result` of `job_finished`, if that is the last event.
    pub result: Option<String>,
    /// Events (lines) in the log.
    pub events: u64,
    /// Size of the log.
    pub bytes: u64,
}

/// Reads an event log line by line (it may be hundreds of megabytes).
pub fn summarize_log(
    path: &Path,
    mut on_output: impl FnMut(&str, &str),
) -> Result<LogSummary, Failure> {
    let file = File::open(path).map_err(|e| Failure::io("open event log", e))?;
    let mut steps: Vec<Step> = Vec::new();
    let mut in_step = false;
    let mut result = None;
    let (mut events, mut bytes) = (0u64, 0u64);
    for (index, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let line = line.map_err(|e| Failure::io("read event log", e))?;
        bytes += line.len() as u64 + 1;
        if line.is_empty() {
            continue;
        }
        events += 1;
        let event: Value = serde_json::from_str(&line).map_err(|e| {
            Failure::new(format!(
                "event log {} line {}: not JSON ({e})",
                path.display(),
                index + 1
            ))
        })?;
        let field = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or("");
        result = None;
        match field("event") {
            "cmd_started" => {
                steps.push(Step {
                    directive: field("directive").to_owned(),
                    exit_code: None,
                });
                in_step = true;
            }
            "cmd_output" => {
                let directive = match steps.last() {
                    Some(step) if in_step => step.directive.as_str(),
                    _ => "",
                };
                on_output(directive, field("output"));
            }
            "cmd_finished" => {
                if let Some(step) = steps.last_mut().filter(|_| in_step) {
                    step.exit_code = event.get("exit_code").and_then(Value::as_i64);
                }
                in_step = false;
            }
            "job_finished" => result = Some(field("result").to_owned()),
            _ => {}
        }
    }
    Ok(LogSummary {
        steps,
        result,
        events,
        bytes,
    })
}

/// Steps with this directive that exited 0.
pub fn count_ok_steps(summary: &LogSummary, directive: &str) -> usize {
    summary
        .steps
        .iter()
        .filter(|step| step.directive == directive && step.exit_code == Some(0))
        .count()
}

/// Counts the lines of a log read in pieces and keeps the start of the last
/// complete one, without keeping the log.
#[derive(Default)]
pub struct LineTracker {
    pub lines: u64,
    /// The start of the line being read.
    pub current: Vec<u8>,
    /// The start of the last complete line.
    pub last: Vec<u8>,
}

impl LineTracker {
    /// Bytes kept of a line: enough for its `event` field.
    const KEEP: usize = 64;

    pub fn feed(&mut self, bytes: &[u8]) {
        let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            Self::keep(&mut self.current, bytes);
            return;
        };
        let before = &bytes[..end];
        match before.iter().rposition(|&b| b == b'\n') {
            Some(start) => {
                self.last.clear();
                Self::keep(&mut self.last, &before[start + 1..]);
            }
            None => {
                Self::keep(&mut self.current, before);
                self.last = std::mem::take(&mut self.current);
            }
        }
        self.current.clear();
        Self::keep(&mut self.current, &bytes[end + 1..]);
        self.lines += newlines as u64;
    }

    pub fn keep(line: &mut Vec<u8>, bytes: &[u8]) {
        let room = Self::KEEP.saturating_sub(line.len());
        line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    pub fn job_finished(&self) -> bool {
        self.last.starts_with(br#"{"event":"job_finished""#)
    }
}
