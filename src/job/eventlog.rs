//! The job's event log (docs/protocol.md §6.1): one compact JSON object per line,
//! written to disk as events happen, plus an index file of line offsets so a
//! reader can start at event N in O(1) (§6.3) without rescanning the log.
//!
//! Memory does not grow with the amount of output: lines go straight to the
//! file and offsets to the index file; only two counters stay in memory.
//! When a write fails (a full disk), the job's output is dropped from then
//! on, and only its steps, a line saying why and `job_finished` are kept in
//! memory until they can be written (§6.8); readers see them all the same.
//!
//! Directives are masked here (§13.3), so every reader of an event, the
//! live display of `agent run` included, sees the masked text.
//!
//! With a limit (`limit_to`, §6.7), the first half of it is written as
//! usual; the rest is held back (`logtrim`) and written when the job ends,
//! with a line saying how much output was left out if the log would have
//! outgrown its limit.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::job::json_text::push_json_string;
pub use crate::job::logfiles::LogFiles;
use crate::job::logfiles::Published;
use crate::job::logtrim::{Held, LeftOut, Piece};
use crate::process::output::mask;

/// The result of a job, as `job_finished` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    Passed,
    Failed,
    Stopped,
}

impl JobResult {
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Passed => "passed",
            JobResult::Failed => "failed",
            JobResult::Stopped => "stopped",
        }
    }
}

/// One event of the log. Field order is the wire order of §6.1.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    JobStarted {
        timestamp: u64,
    },
    CmdStarted {
        timestamp: u64,
        directive: &'a str,
    },
    CmdOutput {
        timestamp: u64,
        output: &'a str,
    },
    CmdFinished {
        timestamp: u64,
        directive: &'a str,
        exit_code: i32,
        started_at: u64,
        finished_at: u64,
    },
    JobFinished {
        timestamp: u64,
        result: &'static str,
    },
}

impl<'a> Event<'a> {
    /// The same event with another directive (for a step's events).
    fn with_directive<'b>(&self, new: &'b str) -> Event<'b>
    where
        'a: 'b,
    {
        match *self {
            Event::CmdStarted { timestamp, .. } => Event::CmdStarted {
                timestamp,
                directive: new,
            },
            Event::CmdFinished {
                timestamp,
                exit_code,
                started_at,
                finished_at,
                ..
            } => Event::CmdFinished {
                timestamp,
                directive: new,
                exit_code,
                started_at,
                finished_at,
            },
            ref other => other.clone(),
        }
    }

    fn directive(&self) -> Option<&'a str> {
        match *self {
            Event::CmdStarted { directive, .. } | Event::CmdFinished { directive, .. } => {
                Some(directive)
            }
            _ => None,
        }
    }
}

/// Appends the event's JSON line (without the newline). Output, which may
/// be most of a log, skips serde for a faster string escape that writes
/// the same bytes.
fn encode(line: &mut Vec<u8>, event: &Event<'_>) {
    match event {
        Event::CmdOutput { timestamp, output } => {
            line.extend_from_slice(b"{\"event\":\"cmd_output\",\"timestamp\":");
            line.extend_from_slice(timestamp.to_string().as_bytes());
            line.extend_from_slice(b",\"output\":");
            push_json_string(line, output);
            line.push(b'}');
        }
        // Serializing these plain structs cannot fail.
        _ => {
            let _ = serde_json::to_writer(line, event);
        }
    }
}

/// What a line is, as far as a write failure (§6.8) is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Output,
    StepStarted,
    StepFinished,
    JobFinished,
    Other,
}

impl Kind {
    fn of(event: &Event<'_>) -> Kind {
        match event {
            Event::CmdOutput { .. } => Kind::Output,
            Event::CmdStarted { .. } => Kind::StepStarted,
            Event::CmdFinished { .. } => Kind::StepFinished,
            Event::JobFinished { .. } => Kind::JobFinished,
            Event::JobStarted { .. } => Kind::Other,
        }
    }

    /// The kind of a line this log wrote (the `event` field comes first).
    fn of_line(line: &[u8]) -> Kind {
        let Some(rest) = line.strip_prefix(b"{\"event\":\"") else {
            return Kind::Other;
        };
        if rest.starts_with(b"cmd_output\"") {
            Kind::Output
        } else if rest.starts_with(b"cmd_started\"") {
            Kind::StepStarted
        } else if rest.starts_with(b"cmd_finished\"") {
            Kind::StepFinished
        } else if rest.starts_with(b"job_finished\"") {
            Kind::JobFinished
        } else {
            Kind::Other
        }
    }
}

/// The line that says how much output a trimmed log left out (§6.7).
fn trim_text(left_out: &LeftOut, limit: u64) -> String {
    format!(
        "\n[agent] {} of output ({} bytes, {} events) left out here: the log of a job is limited to {} (max-job-log-bytes), of which it keeps the start and the end.\n",
        crate::util::bytes(left_out.output_bytes),
        left_out.output_bytes,
        left_out.events,
        crate::util::bytes(limit),
    )
}

/// Integer Unix seconds, truncated (§5.3).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The step that says why the log could not be written, when no step of
/// the job is open to say it (§6.8).
pub const STEP_AGENT_ERROR: &str = "Agent error";

/// Remarks kept per job (`EventLog::remark`).
const MAX_REMARKS: usize = 16;

type Observer = Box<dyn FnMut(&Event<'_>, &[u8]) + Send>;
type RemarkObserver = Box<dyn FnMut(&str) + Send>;

/// Why the log could not be written, and what is still owed to the reader.
struct Broken {
    /// The line that says why (§6.8).
    reason: String,
    /// The reason is not in the log yet: it goes into the next step.
    reason_owed: bool,
}

pub struct EventLog {
    log: File,
    index: File,
    files: Arc<LogFiles>,
    line: Vec<u8>,
    /// Complete lines on disk, and their bytes.
    disk_events: u64,
    disk_bytes: u64,
    observer: Option<Observer>,
    /// The step started and not yet finished, with its start time.
    open_step: Option<(String, u64)>,
    /// Masked in directives (`cmd_started`, `cmd_finished`), longest first.
    secrets: Arc<Vec<Vec<u8>>>,
    /// Set by the first failed write: the job's output is no longer kept.
    broken: Option<Broken>,
    /// Told once, when the first write fails.
    on_broken: Option<Box<dyn FnMut() + Send>>,
    /// Told of every remark.
    on_remark: Option<RemarkObserver>,
    /// The most bytes the log may take (`limit_to`); lines past half of it
    /// are held back.
    limit: Option<u64>,
    /// Where holding back starts: half the limit (`u64::MAX`: never).
    head_limit: u64,
    held: Option<Held>,
    /// Set while held-back lines are being written: each of them is part
    /// of a step or the job's end, whatever `open_step` says by now.
    releasing: bool,
}

impl EventLog {
    /// Creates `events.jsonl` and `events.idx` in `dir`.
    pub fn create(dir: &Path) -> io::Result<EventLog> {
        let log_path = dir.join("events.jsonl");
        let index_path = dir.join("events.idx");
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
        };
        Ok(EventLog::with_files(
            open(&log_path)?,
            open(&index_path)?,
            LogFiles::new(log_path, index_path, Published::default()),
            None,
        ))
    }

    pub(crate) fn with_files(
        log: File,
        index: File,
        files: LogFiles,
        open_step: Option<(String, u64)>,
    ) -> EventLog {
        let (disk_events, disk_bytes) = {
            let p = files.lock();
            (p.disk_events, p.disk_bytes)
        };
        EventLog {
            log,
            index,
            files: Arc::new(files),
            line: Vec::with_capacity(256),
            disk_events,
            disk_bytes,
            observer: None,
            open_step,
            secrets: Arc::default(),
            broken: None,
            on_broken: None,
            on_remark: None,
            limit: None,
            head_limit: u64::MAX,
            held: None,
            releasing: false,
        }
    }

    /// Bounds the log to `max_bytes` (§6.7): past half of it, lines are
    /// held back until the job ends; should the log outgrow the limit, the
    /// oldest held-back output is left out, and a line says how much.
    pub fn limit_to(&mut self, max_bytes: u64) {
        self.limit = Some(max_bytes);
        self.head_limit = max_bytes / 2;
    }

    /// Ends the log of a job the agent could not carry on with, as the
    /// reference ends such a job: the open step (if any) fails, then
    /// `job_finished` `failed`. Nothing is added to the log; the reason is
    /// a remark (see `remark`).
    pub fn close_after_failure(&mut self, reason: &str) {
        self.remark(reason);
        let now = now_secs();
        if let Some((directive, started_at)) = self.open_step.clone() {
            self.write(&Event::CmdFinished {
                timestamp: now,
                directive: &directive,
                exit_code: 1,
                started_at,
                finished_at: now,
            });
        }
        self.write(&Event::JobFinished {
            timestamp: now,
            result: JobResult::Failed.as_str(),
        });
    }

    /// Records what the agent knows of the job that its log must not say
    /// (the log is exactly the reference's, docs/protocol.md §6.1): why it
    /// was stopped, why it could not start. Remarks are shown by `GET
    /// /jobs/{id}` and by `agent run`; the caller puts them in the agent
    /// log. At most `MAX_REMARKS` are kept.
    pub fn remark(&mut self, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        {
            let mut p = self.files.lock();
            if p.remarks.len() >= MAX_REMARKS {
                return;
            }
            p.remarks.push(text.to_string());
        }
        if let Some(observer) = self.on_remark.as_mut() {
            observer(text);
        }
    }

    /// Called with every remark, as it is made (`agent run`'s display).
    pub fn on_remark(&mut self, observer: RemarkObserver) {
        self.on_remark = Some(observer);
    }

    pub fn files(&self) -> Arc<LogFiles> {
        Arc::clone(&self.files)
    }

    /// Called with every event and its line (without the newline) once it
    /// is in the log; `agent run` uses it to show the job live.
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Values to mask in directives from now on (§13.3).
    pub fn set_secrets(&mut self, secrets: Arc<Vec<Vec<u8>>>) {
        self.secrets = secrets;
    }

    /// `text` with every secret value replaced by `[MASKED]`.
    pub fn masked(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&mask(text.as_bytes(), &self.secrets)).into_owned()
    }

    /// Called once, from the writing thread, when a write first fails.
    pub fn on_broken(&mut self, callback: Box<dyn FnMut() + Send>) {
        self.on_broken = Some(callback);
    }

    /// Whether a write has failed: the job must end `failed` (§6.8).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    pub fn write(&mut self, event: &Event<'_>) {
        let masked = event
            .directive()
            .filter(|_| !self.secrets.is_empty())
            .map(|d| self.masked(d));
        let with_masked;
        let event = match &masked {
            Some(directive) => {
                with_masked = event.with_directive(directive);
                &with_masked
            }
            None => event,
        };
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        encode(&mut line, event);
        line.push(b'\n');
        let past_head = self.disk_bytes + line.len() as u64 > self.head_limit;
        if self.broken.is_none() && (self.held.is_some() || past_head) {
            self.hold(event, &line);
        } else {
            self.put(Kind::of(event), &line, Some(event));
        }
        self.line = line;
    }

    /// Writes one line: to disk, or (once a write failed) as §6.8 says.
    /// `event` is `None` for a held-back line, whose bookkeeping was done
    /// when it was held back.
    fn put(&mut self, kind: Kind, line: &[u8], event: Option<&Event<'_>>) {
        if self.broken.is_some() {
            self.write_while_broken(kind, line, event);
            return;
        }
        match self.append(line) {
            Ok(()) => {
                if let Some(event) = event {
                    self.accepted(event, line);
                }
            }
            Err(e) => self.break_at(kind, line, event, e),
        }
    }

    /// Holds a line back (past half the limit); `job_finished` writes all
    /// that is kept. Should holding back fail (a full disk), what is held
    /// is written at once and the line goes the usual way.
    fn hold(&mut self, event: &Event<'_>, line: &[u8]) {
        let limit = self.limit.unwrap_or(u64::MAX);
        let dir = self
            .files
            .log_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let held = self.held.get_or_insert_with(|| Held::new(&dir, limit));
        let output = match event {
            Event::CmdOutput { timestamp, output } => Some((output.len() as u64, *timestamp)),
            _ => None,
        };
        match held.hold(line, output, self.disk_bytes) {
            Ok(()) => {
                if matches!(event, Event::JobFinished { .. }) {
                    self.release();
                }
                self.accepted(event, line);
            }
            Err(e) => {
                log::warn!(
                    "cannot hold back lines of the event log {}: {e}",
                    self.files.log_path.display()
                );
                self.release();
                self.put(Kind::of(event), line, Some(event));
            }
        }
    }

    /// Writes what was held back: the gap's steps, the trim line (if output
    /// was left out) and the tail.
    fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let left_out = held.left_out();
        let limit = self.limit.unwrap_or(u64::MAX);
        self.releasing = true;
        held.release(&mut |piece| match piece {
            Piece::Line(line) => self.put(Kind::of_line(line), line, None),
            Piece::Trim(left_out) => {
                let text = trim_text(&left_out, limit);
                let trim = Event::CmdOutput {
                    timestamp: left_out.timestamp,
                    output: &text,
                };
                let mut line = Vec::with_capacity(text.len() + 64);
                encode(&mut line, &trim);
                line.push(b'\n');
                self.put(Kind::Output, &line, Some(&trim));
            }
        });
        self.releasing = false;
        if let Some(left_out) = left_out {
            log::info!(
                "the event log {} reached its limit of {limit} bytes: {} bytes of output left out",
                self.files.log_path.display(),
                left_out.output_bytes
            );
            self.remark(&format!(
                "The log of this job reached its limit of {} (max-job-log-bytes): {} of output ({} bytes) were left out between its start and its end.",
                crate::util::bytes(limit),
                crate::util::bytes(left_out.output_bytes),
                left_out.output_bytes
            ));
        }
    }

    /// Appends one line and its index entry; on failure both files are
    /// cut back to their last complete line.
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let offset = self.disk_bytes.to_le_bytes();
        let written = self
            .log
            .write_all(line)
            .and_then(|_| self.index.write_all(&offset));
        if let Err(e) = written {
            let _ = self.log.set_len(self.disk_bytes);
            let _ = self.log.seek(SeekFrom::Start(self.disk_bytes));
            let _ = self.index.set_len(self.disk_events * 8);
            let _ = self.index.seek(SeekFrom::Start(self.disk_events * 8));
            return Err(e);
        }
        self.disk_bytes += line.len() as u64;
        self.disk_events += 1;
        let mut p = self.files.lock();
        p.disk_events = self.disk_events;
        p.disk_bytes = self.disk_bytes;
        Ok(())
    }

    /// Bookkeeping once `event` is in the log, on disk or in memory.
    fn accepted(&mut self, event: &Event<'_>, line: &[u8]) {
        match event {
            Event::CmdStarted {
                directive,
                timestamp,
            } => self.open_step = Some((directive.to_string(), *timestamp)),
            Event::CmdFinished { .. } => self.open_step = None,
            Event::JobFinished { .. } => self.files.lock().finished = true,
            _ => {}
        }
        if let Some(observer) = self.observer.as_mut() {
            observer(event, &line[..line.len() - 1]);
        }
    }

    /// The first failed write (§6.8): from now on output is dropped, and
    /// the steps, a line saying why and `job_finished` are kept in memory
    /// until they can be written.
    fn break_at(&mut self, kind: Kind, line: &[u8], event: Option<&Event<'_>>, error: io::Error) {
        log::error!(
            "cannot write the event log {}: {error}; the job ends as failed",
            self.files.log_path.display()
        );
        self.broken = Some(Broken {
            reason: format!(
                "\nThe agent could not write the log of this job ({error}): the job ends as failed, its commands are stopped and their further output is not kept.\n"
            ),
            reason_owed: true,
        });
        if let Some(mut callback) = self.on_broken.take() {
            callback();
        }
        match kind {
            Kind::Output => {
                if self.open_step.is_some() || self.releasing {
                    self.owe_reason_now();
                }
            }
            Kind::StepFinished => {
                self.owe_reason_now();
                self.keep(line.to_vec(), event);
            }
            _ => self.write_while_broken(kind, line, event),
        }
        self.flush_tail();
    }

    fn write_while_broken(&mut self, kind: Kind, line: &[u8], event: Option<&Event<'_>>) {
        let owed = self.broken.as_ref().is_some_and(|b| b.reason_owed);
        match kind {
            Kind::Output => return,
            Kind::JobFinished if owed => {
                let now = now_secs();
                let started = Event::CmdStarted {
                    timestamp: now,
                    directive: STEP_AGENT_ERROR,
                };
                self.keep_event(&started);
                self.owe_reason_now();
                self.keep_event(&Event::CmdFinished {
                    timestamp: now,
                    directive: STEP_AGENT_ERROR,
                    exit_code: 1,
                    started_at: now,
                    finished_at: now,
                });
                self.keep(line.to_vec(), event);
            }
            Kind::StepStarted if owed => {
                self.keep(line.to_vec(), event);
                self.owe_reason_now();
            }
            _ => self.keep(line.to_vec(), event),
        }
        self.flush_tail();
    }

    /// Puts the reason into the open step.
    fn owe_reason_now(&mut self) {
        let Some(reason) = self.broken.as_mut().map(|b| {
            b.reason_owed = false;
            b.reason.clone()
        }) else {
            return;
        };
        self.keep_event(&Event::CmdOutput {
            timestamp: now_secs(),
            output: &reason,
        });
    }

    fn keep_event(&mut self, event: &Event<'_>) {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        self.keep(line, Some(event));
    }

    /// Keeps a line in memory after those on disk.
    fn keep(&mut self, line: Vec<u8>, event: Option<&Event<'_>>) {
        {
            let mut p = self.files.lock();
            p.tail.extend_from_slice(&line);
            let end = p.tail.len();
            p.tail_ends.push(end);
        }
        if let Some(event) = event {
            self.accepted(event, &line);
        }
    }

    /// Moves the lines kept in memory to disk, as far as space allows.
    fn flush_tail(&mut self) {
        loop {
            let line = {
                let p = self.files.lock();
                match p.tail_ends.first() {
                    Some(&end) => p.tail[..end].to_vec(),
                    None => return,
                }
            };
            if self.append(&line).is_err() {
                return;
            }
            let mut p = self.files.lock();
            p.tail.drain(..line.len());
            p.tail_ends.remove(0);
            for end in p.tail_ends.iter_mut() {
                *end -= line.len();
            }
        }
    }
}

impl Drop for EventLog {
    /// What is held back goes into the log (a job that ends without
    /// `job_finished`); then a last attempt to put what is kept in memory
    /// on disk.
    fn drop(&mut self) {
        self.release();
        if self.broken.is_some() {
            self.flush_tail();
        }
    }
}

/// The events of a log from index `from`, parsed (for unit tests).
#[cfg(test)]
pub(crate) fn events_of(files: &LogFiles, from: u64) -> Vec<serde_json::Value> {
    use std::io::Read;
    let mut text = String::new();
    files
        .read_from(from)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[cfg(test)]
mod tests;
