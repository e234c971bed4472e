//! The shell executor: the job's bash runs on this host as the agent's
//! user (or the job's own under `--job-user`), and files are written
//! straight to their paths, as that user (§5.2 steps 3 and 5).

use crate::dockergate::{self, DockerGate, DockerSocket, JobFacts};
use crate::executor::jumppoint::{JumpPoint, Target};
use crate::job::account::JOB_TMP;
use crate::job::files::{first_bad, inject_file, resolve_path};
use crate::job::spec::JobSpec;
use crate::job::steps::{Started, Steps, STEP_INJECT_FILES};
use crate::process::session::{Session, SessionSpec};
use crate::process::sys::ActingAs;
use crate::process::terminal::StdinTerminal;

/// A shell job's Docker gate (docs/protocol.md §9.3), when it runs as its
/// own user (`--job-user`) with `--docker-socket gate`: `DOCKER_HOST` points
/// at it, since that user cannot use the engine's socket. Dropping it
/// closes the gate and removes what the job created through it.
pub struct ShellGate(DockerGate);

impl Drop for ShellGate {
    fn drop(&mut self) {
        self.0.close();
        dockergate::remove_objects(self.0.mark());
    }
}

/// The gate of a job that runs as its own user, in that user's own
/// directory; None when the job has no gate.
fn start_gate(spec: &JobSpec<'_>) -> Result<Option<ShellGate>, String> {
    let Some(account) = spec.account else {
        return Ok(None);
    };
    if spec.options.docker_socket != DockerSocket::Gate {
        return Ok(None);
    }
    let facts = JobFacts {
        mark: spec.mark.to_string(),
        project: None,
        job_dir: None,
        kvm: false,
    };
    let socket = spec.work_dir.join(JOB_TMP).join(dockergate::SOCKET_NAME);
    let gate = DockerGate::start(&socket, facts).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&socket, Some(account.creds.uid), Some(account.creds.gid))
        .map_err(|e| format!("cannot give {} to the job's user: {e}", socket.display()))?;
    Ok(Some(ShellGate(gate)))
}

/// What the session's environment holds beyond the agent's: the job's
/// user's (`HOME`, `TMPDIR`, ...), and `DOCKER_HOST` when the job has a
/// gate. The jump point's shell gets the same through the setup script.
pub(crate) fn session_env(spec: &JobSpec<'_>, gate: Option<&ShellGate>) -> Vec<(String, String)> {
    let mut env = spec
        .account
        .map(|a| a.env(spec.work_dir))
        .unwrap_or_default();
    if let Some(gate) = gate {
        env.push((
            "DOCKER_HOST".into(),
            format!("unix://{}", gate.0.socket().display()),
        ));
    }
    env
}

/// Starts `bash --login` in the job's work dir and points the jump point at it.
pub(crate) fn start_session(
    steps: &mut Steps<'_, '_>,
    gate: &mut Option<ShellGate>,
    jump_point: &JumpPoint,
) -> Started {
    let spec = steps.spec;
    match start_gate(spec) {
        Ok(started) => *gate = started,
        Err(e) => {
            steps.remark(&format!("The job's Docker gate could not start: {e}"));
            return Started::Failed;
        }
    }
    let env = session_env(spec, gate.as_ref());
    let session = StdinTerminal::open()
        .map_err(|e| crate::error::Error::Spawn {
            program: "a pseudo-terminal".into(),
            source: e,
        })
        .and_then(|stdin| {
            let stdin_path = stdin.path().to_string_lossy().into_owned();
            Session::start(SessionSpec {
                argv: vec!["bash".into(), "--login".into(), "--noediting".into()],
                env,
                work_dir: spec.work_dir,
                mark: spec.mark,
                stop: &spec.stop.rx,
                grace: spec.grace,
                stdin,
                stdin_path,
                // The agent turned echo off itself: the terminal is its own.
                echo_off_program: None,
                creds: spec.account.map(|a| a.creds.clone()),
            })
        });
    match session {
        Ok(Some(s)) => {
            let target = Target::Shell {
                session_pid: s.pid(),
            };
            if let Err(e) = jump_point.write_script(
                &spec.request.job_id,
                &target,
                &spec.env_file(),
                &spec.setup_file(),
            ) {
                log::error!("job {}: {e}", spec.request.job_id);
            }
            Started::Ready(Box::new(s))
        }
        Ok(None) => Started::Stopped,
        Err(e) => {
            steps.remark(&format!("The shell session could not be started: {e}"));
            Started::Failed
        }
    }
}

/// Writes the request's files on this host. Returns whether it succeeded.
pub(crate) fn inject_files(steps: &mut Steps<'_, '_>) -> bool {
    let spec = steps.spec;
    let started_at = steps.started(STEP_INJECT_FILES);
    let files = &spec.request.files;
    if let Some((i, message)) = first_bad(files.iter().map(|f| (&*f.content, &*f.mode))) {
        let path = resolve_path(&files[i].path, spec.home);
        steps.output(&format!(
            "Injecting {} with file mode {}\n",
            path.display(),
            files[i].mode
        ));
        steps.output(&message);
        steps.finished(STEP_INJECT_FILES, 1, started_at);
        return false;
    }
    for file in files {
        let path = resolve_path(&file.path, spec.home);
        steps.output(&format!(
            "Injecting {} with file mode {}\n",
            path.display(),
            file.mode
        ));
        // The job's own user writes its files (`--job-user`): a path it
        // controls leads nowhere it could not write itself. Only around
        // the file: the log is written as the agent.
        let written = match spec.account.map(|a| ActingAs::enter(&a.creds)).transpose() {
            Ok(_acting) => inject_file(&path, &file.content, &file.mode),
            Err(e) => Err(format!("Cannot write the file as the job's user: {e}\n")),
        };
        if let Err(message) = written {
            steps.output(&message);
            steps.finished(STEP_INJECT_FILES, 1, started_at);
            return false;
        }
    }
    steps.finished(STEP_INJECT_FILES, 0, started_at);
    true
}
