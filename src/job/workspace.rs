//! Per-job directories under the data dir: `jobs/<id>.<nonce>/` holds the
//! event log (kept after the job) and `work/` (env file, command file; removed
//! at teardown). Both are private to the agent's user, and the nonce makes
//! the names unpredictable, so two jobs or agents never collide.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::process::session::random_hex;

pub struct JobDir {
    pub root: PathBuf,
    pub work: PathBuf,
    /// The value of `AGENT_JOB_MARK` for the job's processes.
    pub mark: String,
}

impl JobDir {
    pub fn create(data_dir: &Path, job_id: &str) -> Result<JobDir, Error> {
        let jobs = data_dir.join("jobs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&jobs)
            .map_err(|e| Error::io("cannot create the data directory", &jobs, e))?;
        let nonce = random_hex(6);
        let root = jobs.join(format!("{}.{nonce}", sanitize(job_id)));
        let work = root.join("work");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&work)
            .map_err(|e| Error::io("cannot create the job directory", &work, e))?;
        Ok(JobDir {
            root,
            work,
            mark: format!("{job_id}.{nonce}"),
        })
    }

    /// Removes the working files (secrets included); the log stays.
    pub fn remove_work(&self) {
        if let Err(e) = fs::remove_dir_all(&self.work) {
            log::warn!("cannot remove {}: {e}", self.work.display());
        }
    }
}

/// A job id as a file name: safe characters kept, the rest replaced, bounded.
fn sanitize(job_id: &str) -> String {
    let s: String = job_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "job".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_safe_names() {
        assert_eq!(sanitize("../../etc"), "______etc");
        assert_eq!(sanitize(""), "job");
        assert_eq!(sanitize("a-b_c9"), "a-b_c9");
    }
}
