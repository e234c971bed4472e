//! The log pusher of one job: a thread that reads the job's event log from
//! its file (through the line index, so it never rescans) and POSTs the new
//! lines to the job's log URL, in order, at most 2000 per request and one
//! request at a time. 200 moves it on; 401 refreshes the token and pushes
//! the same lines again; 422 means the control plane takes no more lines,
//! so it stops. Other failures are retried with a growing pause.
//!
//! While the job runs it pushes soon after lines appear (woken by the event
//! log's observer) but not more often than once per `interval`; once the job
//! has finished it pushes the rest back to back until every line is
//! accepted or the flush deadline passes. It knows nothing of the job or of
//! the sync loop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};

use super::client::{describe, Client, Pushed};
use crate::job::eventlog::LogFiles;

/// Most lines in one request.
pub const MAX_LINES: usize = 2000;
/// Most bytes in one request (at least one line is always sent).
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Pauses after failed pushes: the first, doubling up to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A waiting pusher looks at the log at least this often, in case a wake-up
/// was coalesced away.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Where a job's log goes.
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub url: String,
    pub token: String,
}

/// How the push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushReport {
    /// Lines the control plane accepted.
    pub accepted: u64,
    /// Lines in the log.
    pub total: u64,
    /// The control plane refused further lines (422).
    pub refused: bool,
}

/// Wakes the pusher when lines were written; cheap, never blocks.
#[derive(Clone)]
pub struct Waker(Sender<()>);

impl Waker {
    pub fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

pub struct Pusher {
    wake: Sender<()>,
    close: Sender<Instant>,
    thread: JoinHandle<PushReport>,
}

impl Pusher {
    /// Pushes the log from line `from` on; when `progress` is given, each
    /// accepted batch is recorded there (for an agent restarted after a
    /// crash, `recover.rs`).
    pub fn start(
        client: Client,
        files: Arc<LogFiles>,
        target: PushTarget,
        interval: Duration,
        job_id: &str,
        from: u64,
        progress: Option<PathBuf>,
    ) -> Pusher {
        let (wake, wake_rx) = bounded(1);
        let (close, close_rx) = bounded(1);
        let job_id = job_id.to_string();
        let thread = std::thread::Builder::new()
            .name("log-push".into())
            .spawn(move || {
                Push {
                    client,
                    files,
                    target,
                    interval,
                    job_id,
                    wake: wake_rx,
                    close: close_rx,
                    flush_deadline: None,
                    progress,
                }
                .run(from)
            })
            .expect("cannot start the log push thread");
        Pusher {
            wake,
            close,
            thread,
        }
    }

    pub fn waker(&self) -> Waker {
        Waker(self.wake.clone())
    }

    /// The log is complete: pushes what is left, for at most `timeout`.
    pub fn finish(self, timeout: Duration) -> PushReport {
        let _ = self.close.send(Instant::now() + timeout);
        self.thread.join().unwrap_or(PushReport {
            accepted: 0,
            total: 0,
            refused: false,
        })
    }
}

struct Push {
    client: Client,
    files: Arc<LogFiles>,
    target: PushTarget,
    interval: Duration,
    job_id: String,
    wake: Receiver<()>,
    close: Receiver<Instant>,
    /// Set once the log is complete.
    flush_deadline: Option<Instant>,
    /// Where each accepted batch is recorded.
    progress: Option<PathBuf>,
}

impl Push {
    fn run(mut self, from: u64) -> PushReport {
        log::info!(
            "job {}: pushing its log to {} from line {from}",
            self.job_id,
            self.target.url
        );
        let mut next: u64 = from;
        let mut failures: u32 = 0;
        let mut last_push: Option<Instant> = None;
        loop {
            if self.flush_deadline.is_none() {
                if let Ok(deadline) = self.close.try_recv() {
                    self.flush_deadline = Some(deadline);
                }
            }
            let total = self.files.progress().events;
            if next >= total {
                if self.flush_deadline.is_some() {
                    log::info!("job {}: all {total} log lines pushed", self.job_id);
                    return self.report(next, false);
                }
                self.wait(IDLE_CHECK, true);
                continue;
            }
            if let Some(deadline) = self.flush_deadline {
                if Instant::now() >= deadline {
                    log::error!(
                        "job {}: gave up pushing its log: {} of {total} lines accepted when the flush time ran out",
                        self.job_id,
                        next
                    );
                    return self.report(next, false);
                }
            } else if let Some(at) = last_push {
                // A running job's lines go out at most once per interval.
                let pause = self.interval.saturating_sub(at.elapsed());
                if !pause.is_zero() {
                    self.wait(pause, false);
                    continue;
                }
            }
            let (body, n_lines) = match read_batch(&self.files, next) {
                Ok(batch) => batch,
                Err(e) => {
                    log::error!(
                        "job {}: cannot read its event log to push it: {e}",
                        self.job_id
                    );
                    return self.report(next, false);
                }
            };
            last_push = Some(Instant::now());
            let outcome = self
                .client
                .push_log(&self.target.url, &self.target.token, next, &body);
            let retry_at_once = match outcome {
                Ok(Pushed::Accepted) => {
                    if failures > 0 {
                        log::info!(
                            "job {}: log push works again after {failures} failure(s)",
                            self.job_id
                        );
                    }
                    failures = 0;
                    next += n_lines;
                    if let Some(path) = &self.progress {
                        record_pushed(path, next, false);
                    }
                    continue;
                }
                Ok(Pushed::Refused) => {
                    log::warn!(
                        "job {}: the control plane takes no more log lines (422 at line {next}); pushing stops",
                        self.job_id
                    );
                    if let Some(path) = &self.progress {
                        record_pushed(path, next, true);
                    }
                    return self.report(next, true);
                }
                Ok(Pushed::Unauthorized) => {
                    log::info!(
                        "job {}: the log token was refused (401); refreshing it",
                        self.job_id
                    );
                    failures += 1;
                    match self.client.refresh() {
                        Ok(token) => {
                            self.target.token = token;
                            failures == 1
                        }
                        Err(e) => {
                            log::warn!(
                                "job {}: cannot refresh the log token: {}",
                                self.job_id,
                                describe(&e)
                            );
                            false
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    log::warn!(
                        "job {}: log push of lines {next}..{} failed: {} (failure {failures})",
                        self.job_id,
                        next + n_lines,
                        describe(&e)
                    );
                    false
                }
            };
            if !retry_at_once {
                self.wait(backoff(failures), false);
            }
        }
    }

    /// Sleeps up to `timeout`; a wake-up ends it when `wakeable`, the end of
    /// the job always does, and so does the flush deadline.
    fn wait(&mut self, timeout: Duration, wakeable: bool) {
        let mut timeout = timeout;
        if let Some(deadline) = self.flush_deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        let (never_woken, never_closed) = (crossbeam_channel::never(), crossbeam_channel::never());
        let wake = if wakeable { &self.wake } else { &never_woken };
        let close = if self.flush_deadline.is_none() {
            &self.close
        } else {
            &never_closed
        };
        select! {
            recv(wake) -> _ => {}
            recv(close) -> deadline => {
                // A dropped `Pusher` means: flush now, for no longer.
                self.flush_deadline = Some(deadline.unwrap_or_else(|_| Instant::now()));
            }
            default(timeout) => {}
        }
    }

    fn report(&self, accepted: u64, refused: bool) -> PushReport {
        PushReport {
            accepted,
            total: self.files.progress().events,
            refused,
        }
    }
}

/// Records in `path` (the job directory's `pushed`, read by `recover.rs`
/// after a crash) that `accepted` lines are in, and whether the control plane
/// refuses more. Written to a temporary file and renamed, so that a crash
/// leaves the old count or the new one.
pub(super) fn record_pushed(path: &Path, accepted: u64, refused: bool) {
    let text = if refused {
        format!("{accepted} refused\n")
    } else {
        format!("{accepted}\n")
    };
    let tmp = path.with_extension("new");
    let written = crate::util::write_private(&tmp, text.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        log::warn!("cannot record the log push in {}: {e}", path.display());
    }
}

fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Lines `start..` of the log, at most `MAX_LINES` and about `MAX_BYTES`;
/// returns them and how many there are.
fn read_batch(files: &LogFiles, start: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut reader = BufReader::new(files.read_from(start)?);
    let mut body = Vec::new();
    let mut n_lines = 0;
    while n_lines < MAX_LINES as u64 && (n_lines == 0 || body.len() < MAX_BYTES) {
        let before = body.len();
        let read = reader.read_until(b'\n', &mut body)?;
        if read == 0 {
            break;
        }
        if !body.ends_with(b"\n") {
            // Only complete lines are readable; this cannot happen.
            body.truncate(before);
            break;
        }
        if n_lines > 0 && body.len() > MAX_BYTES {
            body.truncate(before);
            break;
        }
        n_lines += 1;
    }
    Ok((body, n_lines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::eventlog::{Event, EventLog};

    #[test]
    fn batches_hold_at_most_2000_whole_lines() {
        let dir = std::env::temp_dir().join(format!("agent-push-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = EventLog::create(&dir).unwrap();
        for i in 0..2500 {
            log.write(&Event::CmdOutput {
                timestamp: i,
                output: "x\n",
            });
        }
        let files = log.files();
        let (body, n) = read_batch(&files, 0).unwrap();
        assert_eq!(n, 2000);
        assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 2000);
        let (body, n) = read_batch(&files, 2000).unwrap();
        assert_eq!(n, 500);
        assert!(body.starts_with(b"{\"event\":\"cmd_output\",\"timestamp\":2000,"));
        let (body, n) = read_batch(&files, 2500).unwrap();
        assert_eq!((body.len(), n), (0, 0));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
