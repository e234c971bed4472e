//! Crash recovery of listen mode: what `agent start` does at start with the
//! jobs an earlier agent left in the data dir, to the promise of serve mode
//! (docs/protocol.md §7.3, docs/listen.md "When the agent crashes").
//!
//! Serve's recovery cleans up: every process of a job cut short is killed,
//! its compose project, keys and jump point scripts removed, its working
//! files (env file, cache socket, setup script) deleted, its log ended with
//! `job_finished` `failed`. Listen mode then owes the control plane two
//! things for each job it has not told: the log lines not yet accepted
//! (the pusher records how many were, in `pushed`), and the result (the
//! sync loop records that the control plane has it, in `reported`). They
//! are paid after registering and before the agent asks for work: the rest
//! of the log is pushed, then one `finished-job` sync per job.
//!
//! This module knows the two files and the order; the pushing and syncing
//! are the pusher's and the sync loop's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::client::Client;
use super::push::{PushTarget, Pusher};
use crate::job::eventlog::{JobResult, LogFiles};
use crate::job::recovery;
use crate::job::workspace::JobDir;

/// In a job's directory: how many log lines the control plane accepted,
/// and `refused` when it took no more (422).
const PUSHED: &str = "pushed";
/// In a job's directory: the control plane has the job's result.
const REPORTED: &str = "reported";

/// Where the pusher records its progress.
pub fn pushed_file(root: &Path) -> PathBuf {
    root.join(PUSHED)
}

/// The count recorded in `pushed` (0 when none), and whether the control
/// plane refused more lines.
fn read_pushed(root: &Path) -> (u64, bool) {
    let text = std::fs::read_to_string(root.join(PUSHED)).unwrap_or_default();
    let mut words = text.split_whitespace();
    let accepted = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (accepted, words.next() == Some("refused"))
}

/// Records that the control plane has the job's result.
pub fn mark_reported(root: &Path) {
    if let Err(e) = crate::util::write_private(&root.join(REPORTED), b"") {
        log::warn!(
            "cannot record that job in {} was reported: {e}",
            root.display()
        );
    }
}

/// A job of an earlier agent the control plane has not heard the end of.
pub struct Owed {
    pub job_id: String,
    pub result: JobResult,
    files: Arc<LogFiles>,
    target: PushTarget,
    /// Held until the result is reported, so no other agent takes it.
    dir: JobDir,
}

impl Owed {
    pub fn root(&self) -> &Path {
        &self.dir.root
    }
}

/// Cleans up after the jobs an earlier agent left (serve's recovery) and
/// returns, oldest first, those of listen mode whose result the control
/// plane was not told.
pub fn recover_earlier(data_dir: &Path, home: &Path, grace: Duration) -> Vec<Owed> {
    recovery::recover_earlier(data_dir, home, grace)
        .into_iter()
        .filter_map(|earlier| {
            let push = earlier.record.push.clone()?;
            if earlier.dir.root.join(REPORTED).exists() {
                return None;
            }
            log::warn!(
                "job {} of an earlier agent ended {} without the control plane being told; telling it",
                earlier.record.job_id,
                earlier.result.as_str()
            );
            Some(Owed {
                job_id: earlier.record.job_id.clone(),
                result: earlier.result,
                files: earlier.files,
                target: PushTarget {
                    url: push.url,
                    token: push.token,
                },
                dir: earlier.dir,
            })
        })
        .collect()
}

/// Pushes the lines of `owed`'s log the control plane has not accepted,
/// for at most `timeout` (a control plane that refused more gets none).
pub fn push_rest(owed: &Owed, client: &Client, interval: Duration, timeout: Duration) {
    let (accepted, refused) = read_pushed(owed.root());
    if refused {
        return;
    }
    let pusher = Pusher::start(
        client.clone(),
        Arc::clone(&owed.files),
        owed.target.clone(),
        interval,
        &owed.job_id,
        accepted,
        Some(pushed_file(owed.root())),
    );
    let report = pusher.finish(timeout);
    log::info!(
        "job {}: {} of its {} log lines are with the control plane",
        owed.job_id,
        report.accepted,
        report.total
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_count_survives_as_written() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_pushed(dir.path()), (0, false));
        super::super::push::record_pushed(&pushed_file(dir.path()), 42, false);
        assert_eq!(read_pushed(dir.path()), (42, false));
        super::super::push::record_pushed(&pushed_file(dir.path()), 43, true);
        assert_eq!(read_pushed(dir.path()), (43, true));
        std::fs::write(pushed_file(dir.path()), "nonsense").unwrap();
        assert_eq!(read_pushed(dir.path()), (0, false));
    }
}
