//! Executors: where a job's session runs. The shell executor runs bash on
//! this host; the compose executor runs it in the main container of a
//! docker compose project. `Executor` is chosen once, from the validated
//! request, and each step that differs between the two is one `match` here;
//! the lifecycle (`job::lifecycle`) names no executor: it asks `Executor`,
//! and `ExecutorKind` for what it needs to know before one exists (whether
//! the job runs in a container). The SSH jump point leads into either.
//!
//! # Adding an executor
//!
//! A new variant of `job::request::ExecutorKind` (with its name in the
//! request's decoding), and the compiler points at every place that must
//! handle it, since each asks the kind by `match`, never by `==`:
//! - here, `Executor`: its variant (holding what it must clean up when
//!   dropped), `start` (prepare and start the session: a `Session` on a
//!   terminal, below a subreaper), `inject_files`, `env_exported`;
//! - `ExecutorKind::in_container` and `mounts_host_files`;
//! - `job::workspace::RecordedExecutor`, what `job.json` keeps of it, and
//!   `job::recovery::clean_host`, which removes what a job of that kind
//!   left after a crash;
//! - `job::spec::AgentOptions::job_user_for`: whether `--job-user` applies;
//! - the jump point's `Target`, when its session is not on this host.

pub mod compose;
pub mod jumppoint;
pub mod shell;

use std::path::Path;

use crate::executor::compose::ProjectGuard;
use crate::executor::jumppoint::JumpPoint;
use crate::job::request::ExecutorKind;
use crate::job::spec::JobSpec;
use crate::job::steps::{Started, Steps};
use crate::process::reaper::Subreaper;
use crate::process::session::Session;
use crate::util::shell_quote;

/// The executor of one job. Dropping it cleans up what it started outside
/// the session (the compose project); drop it after the session.
pub enum Executor {
    /// With the job's Docker gate, when it runs as its own user.
    Shell(Option<shell::ShellGate>),
    /// The compose project, once it exists, and the subreapers of its host
    /// setup commands, which hold what those left running until the job
    /// ends.
    Compose(Option<ProjectGuard>, Vec<Subreaper>),
}

impl Executor {
    pub fn new(kind: ExecutorKind) -> Executor {
        match kind {
            ExecutorKind::Shell => Executor::Shell(None),
            ExecutorKind::DockerCompose => Executor::Compose(None, Vec::new()),
        }
    }

    /// Prepare and start (§5.2 steps 2 and 3): on success the session is
    /// ready for the job's commands.
    pub(crate) fn start(&mut self, steps: &mut Steps<'_, '_>, jump_point: &JumpPoint) -> Started {
        match self {
            Executor::Shell(gate) => shell::start_session(steps, gate, jump_point),
            Executor::Compose(project, host_setup) => {
                compose::prepare_and_start(steps, project, host_setup, jump_point)
            }
        }
    }

    /// §5.2 step 5. Returns whether every file was injected.
    pub(crate) fn inject_files(&self, steps: &mut Steps<'_, '_>, session: &mut Session) -> bool {
        match self {
            Executor::Shell(_) => shell::inject_files(steps),
            Executor::Compose(..) => compose::inject_files(steps, session),
        }
    }

    /// What the setup script (docs/protocol.md §8) sets for the jump
    /// point's shell, which does not inherit the session's environment: a
    /// shell job's own user's `TMPDIR` and its gate's `DOCKER_HOST`. A
    /// container's jump point starts in the container, which has them.
    pub(crate) fn setup_env(&self, spec: &JobSpec<'_>) -> Vec<(String, String)> {
        match self {
            Executor::Shell(gate) => shell::session_env(spec, gate.as_ref()),
            Executor::Compose(..) => Vec::new(),
        }
    }

    /// After the env vars are exported: in a container, login shells (the
    /// jump point) read them, then the setup script (`cache`, `checkout`),
    /// through the container user's profile (docs/protocol.md §8).
    pub(crate) fn env_exported(&self, session: &mut Session, env_file: &Path, setup_file: &Path) {
        match self {
            Executor::Shell(_) => {}
            Executor::Compose(..) => {
                let env = shell_quote(&env_file.to_string_lossy());
                let setup = shell_quote(&setup_file.to_string_lossy());
                let line = shell_quote(&format!(
                    "[ -r {env} ] && . {env}; [ -r {setup} ] && . {setup}"
                ));
                session.run_silent(&format!("printf '%s\\n' {line} >> ~/.bash_profile"));
            }
        }
    }
}
