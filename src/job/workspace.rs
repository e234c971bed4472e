//! Per-job directories under the data dir: `jobs/<id>.<nonce>/` holds the
//! event log and `job.json` (kept after the job) and `work/` (env file,
//! command file; removed at teardown). Both are private to the agent's
//! user, and the nonce makes the names unpredictable, so two jobs or agents
//! never collide.
//!
//! `job.json` records, at accept time, what a later agent needs to clean up
//! after a crash and to tell the control plane (docs/protocol.md §7.3): the
//! job id, the callbacks, the compose main container. The process that runs
//! the job holds an exclusive lock on it for as long as it knows the job,
//! so a directory whose lock can be taken belongs to no living agent.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::job::account::{AccountRecord, JobAccount, JobUser};
use crate::job::eventlog::now_secs;
use crate::job::request::{Callbacks, ExecutorKind, JobRequest};
use crate::process::sys;
use crate::util::{id_slug, random_hex};

const RECORD: &str = "job.json";

/// The executor of a job as its record keeps it, with what cleaning up
/// after it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordedExecutor {
    Shell,
    /// With the main container's service name.
    DockerCompose {
        main: String,
    },
}

impl RecordedExecutor {
    pub fn kind(&self) -> ExecutorKind {
        match self {
            RecordedExecutor::Shell => ExecutorKind::Shell,
            RecordedExecutor::DockerCompose { .. } => ExecutorKind::DockerCompose,
        }
    }
}

/// What is recorded about a job when it is accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub accepted_at: u64,
    /// Absent in the records of earlier versions, which kept only
    /// `compose_main` (`executor()` reads both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    executor: Option<RecordedExecutor>,
    /// Earlier versions' record of a compose job's main container: read,
    /// never written.
    #[serde(default, skip_serializing)]
    compose_main: Option<String>,
    #[serde(default)]
    pub callbacks: Callbacks,
    /// Where a listen-mode job's log is pushed, so that an agent restarted
    /// after a crash can push what the control plane has not received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<LogPush>,
    /// The user the job runs as under `--job-user`, written before a user
    /// made for the job exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountRecord>,
}

/// A listen-mode job's log URL and its token (the record is 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPush {
    pub url: String,
    pub token: String,
}

impl JobRecord {
    /// A record of a job whose directory has none (`recovery`): a shell
    /// job, as far as anyone can tell.
    pub fn unrecorded(job_id: String, accepted_at: u64) -> JobRecord {
        JobRecord {
            job_id,
            accepted_at,
            executor: Some(RecordedExecutor::Shell),
            compose_main: None,
            callbacks: Callbacks::default(),
            push: None,
            account: None,
        }
    }

    /// The job's executor, also from an earlier version's record.
    pub fn executor(&self) -> RecordedExecutor {
        match (&self.executor, &self.compose_main) {
            (Some(executor), _) => executor.clone(),
            (None, Some(main)) => RecordedExecutor::DockerCompose { main: main.clone() },
            (None, None) => RecordedExecutor::Shell,
        }
    }

    pub fn new(request: &JobRequest, executor: ExecutorKind) -> JobRecord {
        JobRecord {
            job_id: request.job_id.clone(),
            accepted_at: now_secs(),
            executor: Some(match executor {
                ExecutorKind::Shell => RecordedExecutor::Shell,
                ExecutorKind::DockerCompose => RecordedExecutor::DockerCompose {
                    main: request
                        .compose
                        .containers
                        .first()
                        .map(|c| c.name.clone())
                        .unwrap_or_default(),
                },
            }),
            compose_main: None,
            callbacks: request.callbacks.clone(),
            push: None,
            account: None,
        }
    }
}

pub struct JobDir {
    pub root: PathBuf,
    pub work: PathBuf,
    /// The value of `AGENT_JOB_MARK` for the job's processes.
    pub mark: String,
    /// The user the job runs as under `--job-user`.
    pub account: Option<JobAccount>,
    /// `job.json`, locked while this process knows the job.
    _lock: File,
}

impl JobDir {
    /// Makes the job's directory; with `job_user`, also the job's user,
    /// who can then reach (not list) the directory and its working files.
    pub fn create(
        data_dir: &Path,
        record: &JobRecord,
        job_user: Option<&JobUser>,
    ) -> Result<JobDir, Error> {
        let jobs = data_dir.join("jobs");
        // Searchable, not readable, by the jobs' users: each reaches its
        // own working files by their path, and nothing else of the agent's.
        let mode = if job_user.is_some() { 0o711 } else { 0o700 };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&jobs)
            .map_err(|e| Error::io("cannot create the data directory", &jobs, e))?;
        if job_user.is_some() {
            for dir in [data_dir, jobs.as_path()] {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).map_err(|e| {
                    Error::io("cannot open the data directory to the jobs' users", dir, e)
                })?;
            }
        }
        let nonce = random_hex(6);
        let root = jobs.join(format!("{}.{nonce}", id_slug(&record.job_id, 64)));
        fs::DirBuilder::new()
            .mode(mode)
            .create(&root)
            .map_err(|e| Error::io("cannot create the job directory", &root, e))?;
        let mut record = record.clone();
        record.account = job_user.map(|user| user.record_for(&nonce));
        let record = &record;
        let path = root.join(RECORD);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|f| {
                // A new file: nobody else can hold its lock yet.
                sys::try_lock_exclusive(&f)?;
                serde_json::to_writer(&f, record)?;
                Ok(f)
            })
            .map_err(|e| Error::io("cannot write", &path, e))?;
        let work = root.join("work");
        fs::DirBuilder::new()
            .mode(mode)
            .create(&work)
            .map_err(|e| Error::io("cannot create the job directory", &work, e))?;
        let mut dir = JobDir {
            root,
            work,
            mark: format!("{}.{nonce}", record.job_id),
            account: None,
            _lock: lock,
        };
        if let (Some(user), Some(named)) = (job_user, &record.account) {
            // On failure the directory stays, with its record, to be
            // cleaned as any other.
            let account = user.make(named)?;
            if let Err(e) = account.make_own_dir(&dir.work) {
                account.remove();
                return Err(Error::io(
                    "cannot make the job user's directory in",
                    &dir.work,
                    e,
                ));
            }
            dir.account = Some(account);
        }
        Ok(dir)
    }

    /// Takes over a directory no living agent holds; `None` when one does
    /// (or when it has no record, or an unreadable one).
    pub fn claim(root: &Path) -> Option<(JobDir, JobRecord)> {
        let path = root.join(RECORD);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ok()?;
        if !sys::try_lock_exclusive(&file).unwrap_or(false) {
            return None;
        }
        let record: JobRecord = match serde_json::from_reader(&file) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot read {}: {e}", path.display());
                return None;
            }
        };
        let name = root.file_name()?.to_str()?;
        let nonce = name.rsplit_once('.')?.1;
        let dir = JobDir {
            root: root.to_path_buf(),
            work: root.join("work"),
            mark: format!("{}.{nonce}", record.job_id),
            account: None,
            _lock: file,
        };
        Some((dir, record))
    }

    /// The random part of the directory's name (and of the mark).
    pub fn nonce(&self) -> &str {
        self.mark.rsplit('.').next().unwrap_or("0")
    }

    /// Removes the working files (secrets included) and a user made for
    /// the job, with what it left; the log stays.
    pub fn remove_work(&self) {
        match fs::remove_dir_all(&self.work) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {}: {e}", self.work.display()),
        }
        if let Some(account) = &self.account {
            account.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_locked_while_its_job_is_known() {
        let data = std::env::temp_dir().join(format!("agent-workspace-{}", std::process::id()));
        let request = JobRequest::from_json(br#"{"job_id":"a.b c"}"#).unwrap();
        let record = JobRecord::new(&request, ExecutorKind::Shell);
        let dir = JobDir::create(&data, &record, None).unwrap();
        assert!(dir.mark.starts_with("a.b c."));
        assert!(JobDir::claim(&dir.root).is_none());
        let root = dir.root.clone();
        let mark = dir.mark.clone();
        drop(dir);
        let (dir, record) = JobDir::claim(&root).unwrap();
        assert_eq!(
            (dir.mark.as_str(), record.job_id.as_str()),
            (mark.as_str(), "a.b c")
        );
        fs::remove_dir_all(data).unwrap();
    }

    #[test]
    fn a_record_keeps_its_executor_and_an_earlier_versions_record_is_read() {
        let request = JobRequest::from_json(
            br#"{"job_id":"c","executor":"dockercompose","compose":{"containers":[{"name":"main","image":"x"}]}}"#,
        )
        .unwrap();
        let record = JobRecord::new(&request, ExecutorKind::DockerCompose);
        let text = serde_json::to_string(&record).unwrap();
        assert!(!text.contains("compose_main"), "{text}");
        let back: JobRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.executor(),
            RecordedExecutor::DockerCompose {
                main: "main".into()
            }
        );
        let earlier: JobRecord =
            serde_json::from_str(r#"{"job_id":"c","accepted_at":1,"compose_main":"db"}"#).unwrap();
        assert_eq!(
            earlier.executor(),
            RecordedExecutor::DockerCompose { main: "db".into() }
        );
        let shell: JobRecord = serde_json::from_str(r#"{"job_id":"s","accepted_at":1}"#).unwrap();
        assert_eq!(shell.executor(), RecordedExecutor::Shell);
    }
}
