//! What a job runs with besides its request: the agent's options for every
//! job and the per-job places (work dir, home, process mark, stop signal).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::job::account::{JobAccount, JobUser};
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
    /// `--docker-socket`: what compose jobs get as the Docker socket.
    pub docker_socket: crate::dockergate::DockerSocket,
    /// `--files host:dest,...` for compose jobs' main container.
    pub host_files: Option<String>,
    pub metrics: Option<Arc<Metrics>>,
    /// The cache every job's `cache` command uses.
    pub cache: Option<Arc<crate::cache::host::AgentCache>>,
    /// `--job-user`: who shell jobs run as, when not the agent's user.
    pub job_user: Option<Arc<JobUser>>,
}

impl AgentOptions {
    /// The `--job-user` setting for a job on this executor: shell jobs
    /// only (a compose job runs as its images say, in its containers).
    pub fn job_user_for(&self, executor: ExecutorKind) -> Option<&JobUser> {
        match executor {
            ExecutorKind::Shell => self.job_user.as_deref(),
            ExecutorKind::DockerCompose => None,
        }
    }
}

/// Everything a job needs besides its request.
pub struct JobSpec<'a> {
    pub request: &'a JobRequest,
    /// Where the job runs, as validated from the request.
    pub executor: ExecutorKind,
    /// Private directory for the job's working files (env file, commands).
    pub work_dir: &'a Path,
    /// The home of the user the job runs as: the session starts there, `~`
    /// in file paths.
    pub home: &'a Path,
    /// The job's own user under `--job-user` (shell jobs only).
    pub account: Option<&'a JobAccount>,
    pub mark: &'a str,
    pub stop: StopSignal,
    pub grace: Duration,
    pub options: &'a AgentOptions,
}

impl JobSpec<'_> {
    /// Gives a file the agent wrote for the job (in the job's directory,
    /// which only the agent can change) to the job's user, if it has one.
    pub fn hand_over(&self, path: &Path) -> std::io::Result<()> {
        match self.account {
            Some(a) => std::os::unix::fs::lchown(path, Some(a.creds.uid), Some(a.creds.gid)),
            None => Ok(()),
        }
    }

    /// The job's env file (`export` lines), which its session and its jump
    /// point source (docs/protocol.md §8).
    pub fn env_file(&self) -> PathBuf {
        self.work_dir.join("env")
    }

    /// The job's setup script (`cache`, `checkout`), sourced after the env
    /// file by the session and the jump point.
    pub fn setup_file(&self) -> PathBuf {
        self.work_dir.join(crate::cache::host::SETUP_FILE)
    }
}
