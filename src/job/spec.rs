//! What a job runs with besides its request: the agent's options for every
//! job and the per-job places (work dir, home, process mark, stop signal).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::job::request::{ExecutorKind, JobRequest};
use crate::job::stop::StopSignal;
use crate::metrics::Metrics;

/// What the agent's configuration adds to every job.
#[derive(Default, Clone)]
pub struct AgentOptions {
    /// `--pre-job-hook-path`: runs after the files are injected.
    pub pre_job_hook: Option<PathBuf>,
    /// The pre-job hook is sourced in the job's shell (else run with bash).
    pub pre_job_hook_sourced: bool,
    /// A failing pre-job hook fails the job (else the job goes on).
    pub pre_job_hook_fails_job: bool,
    /// Runs with bash after the epilogues; its exit code changes nothing.
    pub post_job_hook: Option<PathBuf>,
    /// `--expose-kvm-device`: add /dev/kvm to compose jobs when it exists.
    pub expose_kvm: bool,
    /// `--files host:dest,...` for compose jobs' main container.
    pub host_files: Option<String>,
    pub metrics: Option<Arc<Metrics>>,
    /// The cache every job's `cache` command uses.
    pub cache: Option<Arc<crate::cache::session::AgentCache>>,
}

/// Everything a job needs besides its request.
pub struct JobSpec<'a> {
    pub request: &'a JobRequest,
    /// Where the job runs, as validated from the request.
    pub executor: ExecutorKind,
    /// Private directory for the job's working files (env file, commands).
    pub work_dir: &'a Path,
    /// The agent user's home: the session starts there, `~` in file paths.
    pub home: &'a Path,
    pub mark: &'a str,
    pub stop: StopSignal,
    pub grace: Duration,
    pub options: &'a AgentOptions,
}

impl JobSpec<'_> {
    /// The job's env file (`export` lines), which its session and its jump
    /// point source (docs/protocol.md §8).
    pub fn env_file(&self) -> PathBuf {
        self.work_dir.join("env")
    }

    /// The job's setup script (`cache`, `checkout`), sourced after the env
    /// file by the session and the jump point.
    pub fn setup_file(&self) -> PathBuf {
        self.work_dir.join(crate::cache::session::SETUP_FILE)
    }
}
