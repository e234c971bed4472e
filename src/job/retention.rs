//! What keeps a data dir small over months (docs/protocol.md §6.7, §13.2):
//! the limits (`DiskLimits`: the size of one job's log, how many finished
//! job directories stay and how many bytes they may take together), which
//! finished directories go (oldest first, by count, then by size), and how
//! much room the data disk has left.
//!
//! It decides and measures. The owners of the directories remove them: the
//! runner pool in serve mode (which lists them through the API), and in
//! listen mode the job thread, through `prune_unheld`, which removes only
//! directories no living agent holds.

use std::fs;
use std::path::Path;

use crate::job::account::AccountRecord;
use crate::job::workspace::JobDir;

/// `--max-job-log-bytes` when not given.
pub const DEFAULT_MAX_JOB_LOG_BYTES: u64 = 100 << 20;
/// The smallest log limit: a single output event takes up to 64 KiB of
/// output (§6.2), and a log must keep many of them at both ends.
pub const MIN_JOB_LOG_BYTES: u64 = 1 << 20;
/// `--max-data-bytes` when not given.
pub const DEFAULT_MAX_DATA_BYTES: u64 = 1 << 30;
/// `keep-jobs` of listen mode when not given (`agent serve` keeps 100,
/// §13.2: its default is in `cli`).
pub const DEFAULT_KEEP_JOBS_LISTEN: usize = 10;
/// Less room than this on the data disk, and it counts as full: a job's
/// log would fail almost at once (§6.8).
pub const FULL_BELOW_BYTES: u64 = 1 << 20;

/// How much of the disk the jobs may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// The most one job's event log may take; `None`: no limit.
    pub max_job_log_bytes: Option<u64>,
    /// Finished job directories kept, the newest.
    pub keep_jobs: usize,
    /// The most the finished job directories may take together; `None`:
    /// no limit.
    pub max_data_bytes: Option<u64>,
}

impl DiskLimits {
    /// The limits from the values of the flags (or config keys), 0 meaning
    /// no limit for the two sizes. `Err` names the problem with the log
    /// limit, the one value that can be wrong.
    pub fn new(
        max_job_log_bytes: u64,
        keep_jobs: usize,
        max_data_bytes: u64,
    ) -> Result<DiskLimits, &'static str> {
        if max_job_log_bytes != 0 && max_job_log_bytes < MIN_JOB_LOG_BYTES {
            return Err("is below 1 MiB (1048576); 0 means no limit");
        }
        Ok(DiskLimits {
            max_job_log_bytes: (max_job_log_bytes != 0).then_some(max_job_log_bytes),
            keep_jobs,
            max_data_bytes: (max_data_bytes != 0).then_some(max_data_bytes),
        })
    }

    /// Of finished job directories of these sizes, oldest first: how many
    /// of the oldest go. First those beyond `keep_jobs`, then as many more
    /// as the rest needs to fit in `max_data_bytes`, but never the newest
    /// for its size alone: a log just finished stays readable (it takes
    /// at most `max_job_log_bytes`).
    pub fn how_many_go(&self, sizes_oldest_first: &[u64]) -> usize {
        let len = sizes_oldest_first.len();
        let mut n = len.saturating_sub(self.keep_jobs);
        if let Some(max) = self.max_data_bytes {
            let mut total: u64 = sizes_oldest_first[n..].iter().sum();
            while total > max && n + 1 < len {
                total -= sizes_oldest_first[n];
                n += 1;
            }
        }
        n
    }
}

/// The bytes of the files below `path` (their lengths; links not followed).
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Removes the oldest finished job directories of `data_dir` beyond the
/// limits. Only directories that no living agent holds count and go (a
/// running job's is locked by its agent); oldest means accepted first.
pub fn prune_unheld(data_dir: &Path, limits: &DiskLimits) {
    let Ok(entries) = fs::read_dir(data_dir.join("jobs")) else {
        return;
    };
    // Taking a directory over proves that no agent is using it; its lock is
    // held until it is removed or let go.
    let mut finished: Vec<(u64, JobDir, u64, Option<AccountRecord>)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| JobDir::claim(&e.path()))
        .map(|(dir, record)| {
            let size = dir_size(&dir.root);
            (record.accepted_at, dir, size, record.account)
        })
        .collect();
    finished.sort_by(|a, b| (a.0, &a.1.root).cmp(&(b.0, &b.1.root)));
    let sizes: Vec<u64> = finished.iter().map(|f| f.2).collect();
    let n = limits.how_many_go(&sizes);
    for (_, dir, _, account) in finished.into_iter().take(n) {
        remove_job_dir(&dir.root);
        // A user made for the job whose removal failed at its end.
        if let Some(account) = &account {
            crate::job::account::remove_recorded(account);
        }
    }
}

/// Removes one finished job's directory.
pub fn remove_job_dir(root: &Path) {
    if let Err(e) = fs::remove_dir_all(root) {
        log::warn!("cannot remove {}: {e}", root.display());
    }
}

/// The room left where job logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes the agent's user may still write.
    pub free_bytes: u64,
    /// Less than `FULL_BELOW_BYTES` is left.
    pub full: bool,
}

/// The room on the disk of `<data_dir>/jobs` (of `data_dir` while that
/// does not exist); `None` when it cannot be measured.
pub fn data_disk(data_dir: &Path) -> Option<DiskSpace> {
    let jobs = data_dir.join("jobs");
    let path = if jobs.is_dir() { jobs } else { data_dir.into() };
    let free_bytes = crate::process::sys::available_bytes(&path).ok()?;
    Some(DiskSpace {
        free_bytes,
        full: free_bytes < FULL_BELOW_BYTES,
    })
}

/// Says in the agent log when the data disk is full, or has less room
/// than one job's log may take (at start).
pub fn warn_if_short(data_dir: &Path, limits: &DiskLimits) {
    let Some(space) = data_disk(data_dir) else {
        return;
    };
    if space.full {
        log::warn!(
            "the data disk of {} is full ({} free): job logs cannot be written, so jobs will fail until there is room",
            data_dir.display(),
            crate::util::bytes(space.free_bytes)
        );
    } else if let Some(max) = limits
        .max_job_log_bytes
        .filter(|max| space.free_bytes < *max)
    {
        log::warn!(
            "the data disk of {} has {} free, less than one job's log may take ({}, max-job-log-bytes)",
            data_dir.display(),
            crate::util::bytes(space.free_bytes),
            crate::util::bytes(max)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limit_is_checked() {
        assert!(DiskLimits::new(1000, 1, 0).is_err());
        let limits = DiskLimits::new(0, 1, 0).unwrap();
        assert_eq!(limits.max_job_log_bytes, None);
        assert_eq!(limits.max_data_bytes, None);
        let limits = DiskLimits::new(MIN_JOB_LOG_BYTES, 1, 5).unwrap();
        assert_eq!(limits.max_job_log_bytes, Some(MIN_JOB_LOG_BYTES));
        assert_eq!(limits.max_data_bytes, Some(5));
    }

    #[test]
    fn the_oldest_go_by_count_then_by_size() {
        let limits = |keep, max| DiskLimits::new(0, keep, max).unwrap();
        assert_eq!(limits(3, 0).how_many_go(&[1, 1, 1, 1, 1]), 2);
        assert_eq!(limits(10, 0).how_many_go(&[1, 1]), 0);
        assert_eq!(limits(0, 0).how_many_go(&[1, 1]), 2);
        assert_eq!(limits(10, 10).how_many_go(&[5, 4, 3, 2, 1]), 1);
        assert_eq!(limits(10, 9).how_many_go(&[5, 4, 3, 2, 1]), 2);
        assert_eq!(limits(2, 100).how_many_go(&[5, 4, 3, 2, 1]), 3);
        assert_eq!(limits(10, 1).how_many_go(&[5, 4, 3, 2, 2]), 4);
        assert_eq!(limits(10, 1).how_many_go(&[5]), 0);
        assert_eq!(limits(0, 1).how_many_go(&[5]), 1);
        assert_eq!(limits(10, 15).how_many_go(&[5, 4, 3, 2, 1]), 0);
    }

    #[test]
    fn sizes_are_summed_below_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()), 123);
    }
}
