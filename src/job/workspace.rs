//! Per-job directories under the data dir: `jobs/<id>.<nonce>/` holds the
//! event log (kept after the job) and `work/` (env file, command file; removed
//! at teardown). Both are private to the agent's user, and the nonce makes
//! the names unpredictable, so two jobs or agents never collide.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::util::{id_slug, random_hex};

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
        let root = jobs.join(format!("{}.{nonce}", id_slug(job_id, 64)));
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
