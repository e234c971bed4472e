//! The job's event log (docs/protocol.md §6.1): one compact JSON object per line,
//! written to disk as events happen, plus an index file of line offsets so a
//! reader can start at event N in O(1) (§6.3) without rescanning the log.
//!
//! Memory does not grow with the amount of output: lines go straight to the
//! file and offsets to the index file; only two counters stay in memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

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

/// Integer Unix seconds, truncated (§5.3).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How much of the log is complete: readers never see a half-written line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub events: u64,
    pub bytes: u64,
    /// `job_finished` is in the log.
    pub finished: bool,
}

/// What readers share with the writer.
#[derive(Debug)]
pub struct LogFiles {
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    progress: Mutex<Progress>,
}

impl LogFiles {
    pub fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a reader over the complete lines from event `start_from` to the
    /// current end. Costs two small reads, whatever the log's length.
    pub fn read_from(&self, start_from: u64) -> io::Result<io::Take<File>> {
        let progress = self.progress();
        let mut log = File::open(&self.log_path)?;
        if start_from >= progress.events {
            return Ok(log.take(0));
        }
        let index = File::open(&self.index_path)?;
        let mut offset = [0u8; 8];
        index.read_exact_at(&mut offset, start_from * 8)?;
        let offset = u64::from_le_bytes(offset);
        log.seek(SeekFrom::Start(offset))?;
        Ok(log.take(progress.bytes.saturating_sub(offset)))
    }
}

type Observer = Box<dyn FnMut(&Event<'_>, &[u8]) + Send>;

pub struct EventLog {
    log: File,
    index: File,
    files: Arc<LogFiles>,
    line: Vec<u8>,
    progress: Progress,
    observer: Option<Observer>,
    /// The step started and not yet finished, with its start time.
    open_step: Option<(String, u64)>,
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
                .open(p)
        };
        Ok(EventLog {
            log: open(&log_path)?,
            index: open(&index_path)?,
            files: Arc::new(LogFiles {
                log_path,
                index_path,
                progress: Mutex::new(Progress::default()),
            }),
            line: Vec::with_capacity(256),
            progress: Progress::default(),
            observer: None,
            open_step: None,
        })
    }

    /// Ends the log of a job the agent could not carry on with: the open
    /// step (or a step of its own) says why and fails, then `job_finished`.
    pub fn close_after_failure(&mut self, message: &str) {
        let now = now_secs();
        let (directive, started_at) = self
            .open_step
            .clone()
            .unwrap_or_else(|| ("Agent error".to_string(), now));
        if self.open_step.is_none() {
            self.write(&Event::CmdStarted {
                timestamp: now,
                directive: &directive,
            });
        }
        self.write(&Event::CmdOutput {
            timestamp: now,
            output: message,
        });
        self.write(&Event::CmdFinished {
            timestamp: now,
            directive: &directive,
            exit_code: 1,
            started_at,
            finished_at: now,
        });
        self.write(&Event::JobFinished {
            timestamp: now,
            result: JobResult::Failed.as_str(),
        });
    }

    pub fn files(&self) -> Arc<LogFiles> {
        Arc::clone(&self.files)
    }

    /// Called with every event and its line (without the newline) after it
    /// is on disk; `agent run` uses it to show the job live.
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    pub fn write(&mut self, event: &Event<'_>) {
        self.line.clear();
        // Serializing these plain structs cannot fail.
        let _ = serde_json::to_writer(&mut self.line, event);
        self.line.push(b'\n');
        let offset = self.progress.bytes.to_le_bytes();
        // A full disk must not kill the job; the agent log says what was lost.
        if let Err(e) = self
            .log
            .write_all(&self.line)
            .and_then(|_| self.index.write_all(&offset))
        {
            log::error!(
                "cannot write the event log {}: {e}",
                self.files.log_path.display()
            );
            return;
        }
        self.progress.bytes += self.line.len() as u64;
        self.progress.events += 1;
        self.progress.finished |= matches!(event, Event::JobFinished { .. });
        match event {
            Event::CmdStarted {
                directive,
                timestamp,
            } => self.open_step = Some((directive.to_string(), *timestamp)),
            Event::CmdFinished { .. } => self.open_step = None,
            _ => {}
        }
        *self
            .files
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.progress;
        if let Some(observer) = self.observer.as_mut() {
            observer(event, &self.line[..self.line.len() - 1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("agent-eventlog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lines_have_wire_field_order() {
        let dir = temp_dir("order");
        let mut log = EventLog::create(&dir).unwrap();
        log.write(&Event::CmdFinished {
            timestamp: 3,
            directive: "echo <a>",
            exit_code: 0,
            started_at: 1,
            finished_at: 2,
        });
        let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
        assert_eq!(
            text,
            "{\"event\":\"cmd_finished\",\"timestamp\":3,\"directive\":\"echo <a>\",\"exit_code\":0,\"started_at\":1,\"finished_at\":2}\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failure_closes_the_open_step() {
        let dir = temp_dir("failure");
        let mut log = EventLog::create(&dir).unwrap();
        log.write(&Event::CmdStarted {
            timestamp: 5,
            directive: "make",
        });
        log.close_after_failure("boom\n");
        let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
        let events: Vec<&str> = text
            .lines()
            .map(|l| &l[..l.find(",\"timestamp").unwrap()])
            .collect();
        assert_eq!(
            events,
            [
                "{\"event\":\"cmd_started\"",
                "{\"event\":\"cmd_output\"",
                "{\"event\":\"cmd_finished\"",
                "{\"event\":\"job_finished\""
            ]
        );
        assert!(text.contains("\"directive\":\"make\",\"exit_code\":1,\"started_at\":5"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn read_from_any_event() {
        let dir = temp_dir("read");
        let mut log = EventLog::create(&dir).unwrap();
        for i in 0..10 {
            log.write(&Event::CmdOutput {
                timestamp: i,
                output: &format!("line {i}\n"),
            });
        }
        let files = log.files();
        let mut all = String::new();
        files
            .read_from(0)
            .unwrap()
            .read_to_string(&mut all)
            .unwrap();
        assert_eq!(all.lines().count(), 10);
        let mut tail = String::new();
        files
            .read_from(8)
            .unwrap()
            .read_to_string(&mut tail)
            .unwrap();
        assert_eq!(tail.lines().count(), 2);
        assert!(tail.starts_with("{\"event\":\"cmd_output\",\"timestamp\":8,"));
        let mut none = String::new();
        files
            .read_from(99)
            .unwrap()
            .read_to_string(&mut none)
            .unwrap();
        assert!(none.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
