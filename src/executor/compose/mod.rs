//! The docker-compose executor's steps in the job lifecycle (docs/protocol.md §9.1,
//! §9.2, §9.5): prepare (host setup commands, compose detection, the compose
//! file), image pull credentials, the pull, the session in main, and file
//! injection inside the container. Every failure is explained in the job
//! log; the project guard removes the compose project on every way out.

pub mod file;
pub mod login;
pub mod project;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use self::file::FileOptions;
use self::project::Project;
use crate::dockergate::{self, DockerGate, DockerSocket, JobFacts};
use crate::executor::jumppoint::{JumpPoint, Target};
use crate::job::files::{inject_file, resolve_path};
use crate::job::request::{decode_b64, parse_mode};
use crate::job::steps::{Started, Steps, STEP_INJECT_FILES};
use crate::process::hostcmd::{run_held, run_lines, HostOutcome};
use crate::process::reaper::Subreaper;
use crate::process::session::{Outcome, Session, SessionSpec};
use crate::process::terminal::StdinTerminal;
use crate::util::{shell_quote, write_private};

pub const STEP_CREDENTIALS: &str = "Setting up image pull credentials";
pub const STEP_PULL: &str = "Pulling docker images...";
pub const STEP_START: &str = "Starting the docker image...";
/// The most of a failed host setup command's output its remark keeps.
const HOST_OUTPUT_IN_REMARK: usize = 4096;

/// The end of `text`, at most `max` bytes, cut at a character boundary.
fn tail_of(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs `compose down` when the job is done with the project, however it
/// ended, and closes the job's Docker gate and removes what the job
/// created through it.
pub struct ProjectGuard {
    pub project: Project,
    grace: std::time::Duration,
    gate: Option<Box<DockerGate>>,
}

impl Drop for ProjectGuard {
    fn drop(&mut self) {
        let Some(mut gate) = self.gate.take() else {
            self.project.cleanup(self.grace);
            return;
        };
        // The gate takes no more requests; what the job made through it
        // goes before the project, since a container of the job's on the
        // project's network would keep `compose down` from removing that
        // network. A network of the job's that main was connected to goes
        // once main has.
        gate.close();
        let complete = dockergate::remove_objects(gate.mark());
        self.project.cleanup(self.grace);
        if !complete {
            dockergate::remove_objects(gate.mark());
        }
    }
}

/// Prepare and start (§9.1, §9.2). On success the session runs in main.
/// The steps: the host setup commands, the project and its compose file,
/// the job's Docker gate, the jump point, the logins, the pulls and the
/// other containers, then the session in main.
pub(crate) fn prepare_and_start(
    steps: &mut Steps<'_, '_>,
    guard: &mut Option<ProjectGuard>,
    host_setup: &mut Vec<Subreaper>,
    jump_point: &JumpPoint,
) -> Started {
    let spec = steps.spec;
    let request = spec.request;
    let prepared = run_host_setup(steps, host_setup)
        .and_then(|()| write_project(steps))
        .and_then(|(project, kvm)| {
            let (gate, docker_socket) = open_gate(steps, &project, kvm)?;
            *guard = Some(ProjectGuard {
                project: project.clone(),
                grace: spec.grace,
                gate,
            });
            Ok((project, docker_socket))
        });
    let (project, docker_socket) = match prepared {
        Ok(prepared) => prepared,
        Err(started) => return started,
    };
    // §9.1 step 5: the jump point waits for main, then opens bash in it.
    let target = Target::Container {
        name: project.container.clone(),
    };
    if let Err(e) = jump_point.write_script(
        &request.job_id,
        &target,
        &spec.env_file(),
        &spec.setup_file(),
    ) {
        log::error!("job {}: {e}", request.job_id);
    }
    // §9.2 step 1.
    if !request.compose.image_pull_credentials.is_empty() {
        match credentials(steps, &project) {
            Some(true) => {}
            Some(false) => return Started::Failed,
            None => return Started::Stopped,
        }
    }
    if let Err(started) = pull_and_start_others(steps, &project) {
        return started;
    }
    start_main_session(steps, &project, docker_socket.as_deref())
}

/// §9.1 step 2: host setup commands; their output goes to the agent log
/// only, and a failure ends the job before any step, as in the reference:
/// the reason is a remark. Each runs below a subreaper of its own, which
/// holds what it leaves running until the job ends.
fn run_host_setup(
    steps: &mut Steps<'_, '_>,
    host_setup: &mut Vec<Subreaper>,
) -> Result<(), Started> {
    let spec = steps.spec;
    for command in &spec.request.compose.host_setup_commands {
        let argv = ["bash", "-c", &command.directive].map(String::from);
        let mut lines = String::new();
        let (outcome, held) = run_held(&argv, spec.mark, &spec.stop.rx, spec.grace, &mut |line| {
            log::info!("host setup: {}", line.trim_end());
            lines.push_str(&ended(line));
        });
        host_setup.extend(held);
        let status = match outcome {
            HostOutcome::Exited(0) => continue,
            HostOutcome::Exited(status) => status,
            HostOutcome::Stopped => return Err(Started::Stopped),
            HostOutcome::SpawnFailed(e) => {
                lines.push_str(&format!("cannot run bash: {e}\n"));
                1
            }
        };
        steps.remark(&format!(
            "The host setup command `{}` failed with exit status {status}; the job did not start. Its output:\n{}",
            command.directive,
            tail_of(&lines, HOST_OUTPUT_IN_REMARK)
        ));
        return Err(Started::Failed);
    }
    Ok(())
}

/// §9.1 steps 3 and 4: the compose tool, the project, its compose file and
/// the job's DOCKER_CONFIG. With the project, whether `/dev/kvm` is given.
fn write_project(steps: &mut Steps<'_, '_>) -> Result<(Project, bool), Started> {
    let spec = steps.spec;
    let request = spec.request;
    let Some(tool) = project::detect() else {
        steps.remark(
            "Neither `docker compose` (v2) nor `docker-compose` (v1) works on this host; install one of them.",
        );
        return Err(Started::Failed);
    };
    let main = &request.compose.containers[0];
    let nonce = spec.mark.rsplit('.').next().unwrap_or("0");
    let name = project::project_name(&request.job_id, nonce);
    let project = Project {
        tool,
        container: format!("{name}-{}", main.name),
        name,
        file: spec.work_dir.join("docker-compose.yml"),
        main: main.name.clone(),
        work_dir: spec.work_dir.to_path_buf(),
        docker_config: spec.work_dir.join("docker-config"),
    };
    let mut opts = FileOptions {
        kvm: spec.options.expose_kvm && Path::new("/dev/kvm").exists(),
        volumes: file::host_volumes(spec.options.host_files.as_deref()),
        labels: match spec.options.docker_socket {
            DockerSocket::Gate => vec![(dockergate::JOB_LABEL.to_string(), spec.mark.to_string())],
            DockerSocket::Host | DockerSocket::None => Vec::new(),
        },
    };
    opts.volumes.extend(crate::cache::host::container_volume(
        spec.options.cache.as_deref(),
    ));
    let written = file::compose_file(&request.compose.containers, &opts)
        .and_then(|v| serde_json::to_vec_pretty(&v).map_err(|e| e.to_string()))
        .and_then(|bytes| write_private(&project.file, &bytes).map_err(|e| e.to_string()))
        .and_then(|_| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&project.docker_config)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        steps.remark(&format!(
            "The docker compose file could not be written: {e}"
        ));
        return Err(Started::Failed);
    }
    Ok((project, opts.kvm))
}

/// The socket main gets at `/var/run/docker.sock` (§9.3): the job's own
/// gate, the engine's, or none. The gate's socket must exist before main
/// mounts it (the engine would make a directory of a missing path).
fn open_gate(
    steps: &mut Steps<'_, '_>,
    project: &Project,
    kvm: bool,
) -> Result<(Option<Box<DockerGate>>, Option<PathBuf>), Started> {
    let spec = steps.spec;
    match spec.options.docker_socket {
        DockerSocket::Gate => {
            let facts = JobFacts {
                mark: spec.mark.to_string(),
                project: Some(project.name.clone()),
                job_dir: Some(spec.work_dir.to_path_buf()),
                kvm,
            };
            match DockerGate::start(&spec.work_dir.join(dockergate::SOCKET_NAME), facts) {
                Ok(gate) => {
                    let socket = gate.socket().to_path_buf();
                    Ok((Some(Box::new(gate)), Some(socket)))
                }
                Err(e) => {
                    steps.remark(&format!("The job's Docker gate could not start: {e}"));
                    Err(Started::Failed)
                }
            }
        }
        DockerSocket::Host => Ok((None, Some(PathBuf::from(project::DOCKER_SOCKET)))),
        DockerSocket::None => Ok((None, None)),
    }
}

/// §9.2 step 2: main's image when it is missing, then the other
/// containers are pulled as needed and started; output goes to the log
/// line by line as it comes.
fn pull_and_start_others(steps: &mut Steps<'_, '_>, project: &Project) -> Result<(), Started> {
    let spec = steps.spec;
    let containers = &spec.request.compose.containers;
    let main = &containers[0];
    let started_at = steps.started(STEP_PULL);
    let pull_started = Instant::now();
    let others: Vec<String> = containers[1..].iter().map(|c| c.name.clone()).collect();
    let mut commands = Vec::new();
    if !project::image_present(&main.image, &project.docker_config) {
        commands.push(project.pull_main_argv());
    }
    if !others.is_empty() {
        commands.push(project.up_services_argv(&others));
    }
    let mut status = 0;
    for argv in commands {
        let outcome = run_lines(
            project.command(&argv),
            spec.mark,
            &spec.stop.rx,
            spec.grace,
            &mut |line| steps.output(&ended(line)),
        );
        status = match outcome {
            HostOutcome::Exited(s) => s,
            HostOutcome::Stopped => {
                steps.finished(STEP_PULL, 1, started_at);
                return Err(Started::Stopped);
            }
            HostOutcome::SpawnFailed(e) => {
                steps.output(&format!("cannot run {}: {e}\n", argv[0]));
                127
            }
        };
        if status != 0 {
            break;
        }
    }
    if let Some(metrics) = &spec.options.metrics {
        metrics.compose_pull(&main.image, status == 0, pull_started.elapsed());
    }
    if status != 0 {
        steps.output(&format!(
            "Pulling the images or starting the containers failed (exit status {status}).\n"
        ));
        steps.finished(STEP_PULL, 1, started_at);
        return Err(Started::Failed);
    }
    steps.finished(STEP_PULL, 0, started_at);
    Ok(())
}

/// §9.2 step 3: the session in main; any death before readiness is a
/// failure.
fn start_main_session(
    steps: &mut Steps<'_, '_>,
    project: &Project,
    docker_socket: Option<&Path>,
) -> Started {
    let spec = steps.spec;
    let started_at = steps.started(STEP_START);
    steps.output("Starting a new bash session.\n");
    let session = StdinTerminal::open()
        .map_err(|e| crate::error::Error::Spawn {
            program: "a pseudo-terminal".into(),
            source: e,
        })
        .and_then(|stdin| {
            Session::start(SessionSpec {
                argv: project.session_argv(stdin.path(), docker_socket),
                env: vec![(
                    "DOCKER_CONFIG".into(),
                    project.docker_config.to_string_lossy().into_owned(),
                )],
                work_dir: spec.work_dir,
                mark: spec.mark,
                stop: &spec.stop.rx,
                grace: spec.grace,
                stdin,
                stdin_path: project::STDIN_TERMINAL.into(),
                echo_off_program: crate::cache::host::container_program(
                    spec.options.cache.as_deref(),
                ),
                creds: None,
            })
        });
    let session = match session {
        Ok(Some(s)) => s,
        Ok(None) => {
            steps.finished(STEP_START, 1, started_at);
            return Started::Stopped;
        }
        Err(e) => {
            steps.output("Failed to start the docker image\n");
            steps.output(&format!("{e}\n"));
            steps.finished(STEP_START, 1, started_at);
            return Started::Failed;
        }
    };
    give_work_dir_to_container_user(project, spec.work_dir, &session);
    steps.finished(STEP_START, 0, started_at);
    Started::Ready(Box::new(session))
}

/// A host command's line as it was printed (§6.2: byte-exact, `\r\n`
/// kept), with a newline added only to a last line that had none, so what
/// the agent writes next starts a line of its own.
fn ended(line: &str) -> String {
    if line.ends_with('\n') {
        line.to_string()
    } else {
        format!("{line}\n")
    }
}

/// The container's user must read the env and command files in the
/// read-only mount, and open the stdin terminal; they stay private to that
/// user (and root).
fn give_work_dir_to_container_user(project: &Project, work_dir: &Path, session: &Session) {
    // Asked from the host: the session itself cannot source anything from
    // the work dir before it belongs to the container's user.
    let out = Command::new("docker")
        .args([
            "exec",
            &project.container,
            "bash",
            "-c",
            "printf '%s %s' \"$(id -u)\" \"$(id -g)\"",
        ])
        .env("DOCKER_CONFIG", &project.docker_config)
        .stdin(std::process::Stdio::null())
        .output();
    let ids = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let Some((uid, gid)) = ids.as_deref().and_then(|s| {
        let (u, g) = s.trim().split_once(' ')?;
        Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?))
    }) else {
        log::warn!("cannot read the ids of the user of {}", project.container);
        return;
    };
    if uid == 0 {
        return;
    }
    if let Err(e) = session.stdin().give_to(uid, gid) {
        log::warn!("cannot give the stdin terminal to uid {uid}: {e}");
    }
    let mut paths = vec![work_dir.to_path_buf()];
    if let Ok(dir) = fs::read_dir(work_dir) {
        paths.extend(dir.filter_map(|e| e.ok().map(|e| e.path())));
    }
    for p in paths {
        if let Err(e) = std::os::unix::fs::chown(&p, Some(uid), Some(gid)) {
            log::warn!("cannot give {} to uid {uid}: {e}", p.display());
        }
    }
}

/// §9.2 step 1. Some(true) when every login worked; None on a stop. The
/// step stops at the first failure, so a later success cannot hide it.
fn credentials(steps: &mut Steps<'_, '_>, project: &Project) -> Option<bool> {
    let spec = steps.spec;
    let started_at = steps.started(STEP_CREDENTIALS);
    for entry in &spec.request.compose.image_pull_credentials {
        let login = match login::login_for(entry) {
            Ok(l) => l,
            Err(line) => {
                steps.output(&format!("{line}\n"));
                steps.finished(STEP_CREDENTIALS, 1, started_at);
                return Some(false);
            }
        };
        steps.output(&format!("Setting up credentials for {}\n", login.what));
        for file in &login.files {
            let path = resolve_path(&file.path, spec.home);
            if let Err(message) = inject_file(&path, &file.content, &file.mode) {
                steps.output(&message);
                steps.finished(STEP_CREDENTIALS, 1, started_at);
                return Some(false);
            }
        }
        steps.output(&format!("{}\n", login.script));
        let cmd = login::login_command(&login, &project.docker_config, spec.home);
        let mut lines = Vec::new();
        let outcome = run_lines(cmd, spec.mark, &spec.stop.rx, spec.grace, &mut |line| {
            lines.push(ended(line))
        });
        for line in &lines {
            steps.output(line);
        }
        match outcome {
            HostOutcome::Exited(0) => {}
            HostOutcome::Exited(_) | HostOutcome::SpawnFailed(_) => {
                steps.output(&format!("Login for {} failed.\n", login.what));
                steps.finished(STEP_CREDENTIALS, 1, started_at);
                return Some(false);
            }
            HostOutcome::Stopped => {
                steps.finished(STEP_CREDENTIALS, 1, started_at);
                return None;
            }
        }
    }
    steps.finished(STEP_CREDENTIALS, 0, started_at);
    Some(true)
}

/// §5.2 step 5 for compose (§9.5): staged on the host, copied in place by
/// the container's bash. Paths are shown exactly as given.
pub(crate) fn inject_files(steps: &mut Steps<'_, '_>, session: &mut Session) -> bool {
    let spec = steps.spec;
    let started_at = steps.started(STEP_INJECT_FILES);
    let stage_dir = spec.work_dir.join("files");
    let fail = |steps: &mut Steps<'_, '_>, line: String, status: i32| {
        steps.output(&line);
        steps.finished(STEP_INJECT_FILES, status, started_at);
        false
    };
    // Every mode and content is checked before the first file is written.
    let bad = spec.request.files.iter().find_map(|file| {
        let line = if parse_mode(&file.mode).is_none() {
            format!("Failed to set file mode to {}\n", file.mode)
        } else if decode_b64(&file.content).is_err() {
            "Failed to decode the content of the file.\n".to_string()
        } else {
            return None;
        };
        Some((file, line))
    });
    if let Some((file, line)) = bad {
        steps.output(&format!(
            "Injecting {} with file mode {}\n",
            file.path, file.mode
        ));
        return fail(steps, line, 1);
    }
    for (i, file) in spec.request.files.iter().enumerate() {
        steps.output(&format!(
            "Injecting {} with file mode {}\n",
            file.path, file.mode
        ));
        let content = decode_b64(&file.content).unwrap_or_default();
        let staged: PathBuf = stage_dir.join(i.to_string());
        let staged_ok = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&stage_dir)
            .and_then(|_| own_like_parent(&stage_dir))
            .and_then(|_| write_private(&staged, &content));
        if let Err(e) = staged_ok {
            return fail(steps, format!("Failed to stage the file: {e}\n"), 1);
        }
        let dest = file::container_path(&file.path);
        let staged_q = shell_quote(&staged.to_string_lossy());
        let checks = [
            (
                format!("mkdir -p \"$(dirname -- {dest})\""),
                format!("Failed to create destination path {}\n", file.path),
            ),
            (
                format!("cp {staged_q} {dest}"),
                format!(
                    "Failed to move to destination path {} {}\n",
                    staged.display(),
                    file.path
                ),
            ),
            (
                format!("chmod {} {dest}", file.mode),
                format!("Failed to set file mode to {}\n", file.mode),
            ),
        ];
        for (command, message) in checks {
            match session.run_silent(&command) {
                Outcome::Finished(0) => {}
                other => return fail(steps, message, other.exit_code()),
            }
        }
    }
    steps.finished(STEP_INJECT_FILES, 0, started_at);
    true
}

/// Gives a directory the owner of its parent (the container user's, after
/// the work dir was handed over).
fn own_like_parent(dir: &Path) -> std::io::Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    let meta = fs::metadata(parent)?;
    let mine = fs::metadata(dir)?;
    if meta.uid() != mine.uid() {
        std::os::unix::fs::chown(dir, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}
