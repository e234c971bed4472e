//! The log an earlier agent left (docs/protocol.md §7.3): what it says
//! about its job, read cheaply when it ended with `job_finished`, and the
//! repair of one a crash cut short (a line cut in two dropped, the offset
//! index rebuilt, the open step found, lines held back past the log's
//! limit removed), so that it can be ended properly.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::job::eventlog::{EventLog, JobResult};
use crate::job::logfiles::{LogFiles, Published};

/// What an existing log says about its job.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogSummary {
    /// The timestamp of `job_started`.
    pub started_at: Option<u64>,
    /// The result and timestamp of `job_finished`.
    pub finished: Option<(JobResult, u64)>,
}

impl JobResult {
    pub(crate) fn from_wire(text: &str) -> Option<JobResult> {
        match text {
            "passed" => Some(JobResult::Passed),
            "failed" => Some(JobResult::Failed),
            "stopped" => Some(JobResult::Stopped),
            _ => None,
        }
    }
}

/// The fields of a line that recovery needs.
#[derive(serde::Deserialize)]
struct LineHead {
    event: String,
    #[serde(default)]
    timestamp: u64,
    #[serde(default)]
    directive: Option<String>,
    #[serde(default)]
    result: Option<String>,
}

fn starts_step_or_job(line: &[u8]) -> bool {
    !line.starts_with(b"{\"event\":\"cmd_output\"")
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("events.jsonl"), dir.join("events.idx"))
}

impl LogFiles {
    /// The files of a finished job's log left by an earlier agent, read
    /// without scanning them: `None` when the last line is not
    /// `job_finished` (then `EventLog::reopen` repairs it).
    pub fn finished_in(dir: &Path) -> io::Result<Option<(LogFiles, LogSummary)>> {
        let (log_path, index_path) = paths(dir);
        let log = File::open(&log_path)?;
        let len = log.metadata()?.len();
        let index_len = std::fs::metadata(&index_path)?.len();
        let mut tail = vec![0u8; len.min(4096) as usize];
        let from = len - tail.len() as u64;
        std::os::unix::fs::FileExt::read_exact_at(&log, &mut tail, from)?;
        let Some(body) = tail.strip_suffix(b"\n") else {
            return Ok(None);
        };
        let last = &body[body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)..];
        let Ok(head) = serde_json::from_slice::<LineHead>(last) else {
            return Ok(None);
        };
        let Some(result) = head.result.as_deref().and_then(JobResult::from_wire) else {
            return Ok(None);
        };
        if head.event != "job_finished" {
            return Ok(None);
        }
        let mut first = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(io::Read::take(log, 4096)),
            &mut first,
        )?;
        let started_at = serde_json::from_str::<LineHead>(&first)
            .ok()
            .filter(|h| h.event == "job_started")
            .map(|h| h.timestamp);
        let published = Published {
            disk_events: index_len / 8,
            disk_bytes: len,
            finished: true,
            ..Published::default()
        };
        Ok(Some((
            LogFiles::new(log_path, index_path, published),
            LogSummary {
                started_at,
                finished: Some((result, head.timestamp)),
            },
        )))
    }
}

impl EventLog {
    /// Opens for writing the log of a job an earlier agent did not finish
    /// (§7.3): a line cut short is dropped, the index is rebuilt from the
    /// lines, and the open step is found, so the log can be ended properly.
    /// Lines held back past half the log's limit (§6.7) are lost with the
    /// crash: their files are removed.
    pub fn reopen(dir: &Path) -> io::Result<(EventLog, LogSummary)> {
        use io::BufRead;
        crate::job::logtrim::remove_leftovers(dir);
        let (log_path, index_path) = paths(dir);
        let mut log = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&log_path)?;
        let index = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&index_path)?;
        let mut offsets = io::BufWriter::new(index);
        let mut summary = LogSummary::default();
        let mut open_step = None;
        let (mut events, mut bytes) = (0u64, 0u64);
        {
            let mut reader = io::BufReader::new(&log);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line)?;
                if n == 0 || !line.ends_with(b"\n") {
                    break;
                }
                offsets.write_all(&bytes.to_le_bytes())?;
                bytes += n as u64;
                events += 1;
                if !starts_step_or_job(&line) {
                    continue;
                }
                let Ok(head) = serde_json::from_slice::<LineHead>(&line) else {
                    continue;
                };
                match head.event.as_str() {
                    "job_started" => summary.started_at = Some(head.timestamp),
                    "cmd_started" => {
                        open_step = Some((head.directive.unwrap_or_default(), head.timestamp))
                    }
                    "cmd_finished" => open_step = None,
                    "job_finished" => {
                        summary.finished = head
                            .result
                            .as_deref()
                            .and_then(JobResult::from_wire)
                            .map(|r| (r, head.timestamp))
                    }
                    _ => {}
                }
            }
        }
        let index = offsets.into_inner().map_err(|e| e.into_error())?;
        log.set_len(bytes)?;
        log.seek(SeekFrom::Start(bytes))?;
        let published = Published {
            disk_events: events,
            disk_bytes: bytes,
            finished: summary.finished.is_some(),
            ..Published::default()
        };
        let files = LogFiles::new(log_path, index_path, published);
        Ok((EventLog::with_files(log, index, files, open_step), summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::eventlog::{events_of, Event};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("agent-reopen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_log_cut_short_is_reopened_and_ended() {
        let dir = temp_dir("reopen");
        {
            let mut log = EventLog::create(&dir).unwrap();
            log.write(&Event::JobStarted { timestamp: 1 });
            log.write(&Event::CmdStarted {
                timestamp: 2,
                directive: "make",
            });
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("events.jsonl"))
            .unwrap();
        f.write_all(b"{\"event\":\"cmd_out").unwrap();
        assert!(LogFiles::finished_in(&dir).unwrap().is_none());
        let (mut log, summary) = EventLog::reopen(&dir).unwrap();
        assert_eq!(summary.started_at, Some(1));
        assert!(summary.finished.is_none());
        log.close_after_failure("restarted\n");
        drop(log);
        let (files, summary) = LogFiles::finished_in(&dir).unwrap().unwrap();
        assert_eq!(summary.finished.map(|f| f.0), Some(JobResult::Failed));
        // The cut line goes; the open step fails; nothing else is added.
        let events = events_of(&files, 0);
        assert_eq!(events.len(), 4);
        assert_eq!(events[2]["event"], "cmd_finished");
        assert_eq!(events[2]["directive"], "make");
        assert_eq!(events[2]["started_at"], 2);
        assert_eq!(events[2]["exit_code"], 1);
        assert_eq!(events_of(&files, 3)[0]["event"], "job_finished");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
