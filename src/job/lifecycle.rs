//! The job lifecycle of PROTOCOL §5.2 for the shell executor: start the
//! session, export env vars, inject files, run commands until the first
//! failure, decide the result (with the exit-130 self-stop), export it, run
//! the epilogues, and write `job_finished`.
//!
//! The caller owns what comes after `job_finished` (callbacks, the
//! archivator wait) and hands in a `StopHandle` receiver; a stop may arrive
//! at any phase and always ends the job as `stopped`.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::executor::compose::{self, ProjectGuard};
use crate::executor::jumppoint::{self, JumpPoint, Target};
use crate::job::eventlog::{now_secs, Event, EventLog, JobResult};
use crate::job::request::{decode_b64, is_shell_identifier, parse_mode, Command, JobRequest};
use crate::metrics::Metrics;
use crate::process::session::{Outcome, Session, SessionSpec};
use crate::util::{shell_quote, shell_quote_bytes, write_private};

pub const STEP_EXPORT_ENV: &str = "Exporting environment variables";
pub const STEP_INJECT_FILES: &str = "Injecting Files";
pub const STEP_CHECK_RESULT: &str = "Checking job result";
pub const STEP_START_SESSION: &str = "Starting the shell session";
pub const STEP_PRE_JOB_HOOK: &str = "Running the pre-job hook configured in the agent";
pub const STEP_JUMP_POINT: &str = "Setting up the SSH jump point";

/// Where the jump point scripts go; the `sem` CLI relies on this path.
const JUMP_POINT_DIR: &str = "/tmp";

/// What the agent's configuration adds to every job.
#[derive(Default, Clone)]
pub struct AgentOptions {
    /// `--pre-job-hook-path`: sourced after the files are injected.
    pub pre_job_hook: Option<PathBuf>,
    /// `--expose-kvm-device`: add /dev/kvm to compose jobs when it exists.
    pub expose_kvm: bool,
    /// `--files host:dest,...` for compose jobs' main container.
    pub host_files: Option<String>,
    pub metrics: Option<Arc<Metrics>>,
}

/// Asks a running job to stop, from any thread. Cheap to clone.
#[derive(Clone)]
pub struct StopHandle {
    requested: Arc<AtomicBool>,
    /// Why, when the agent itself stopped the job (the time limit).
    reason: Arc<Mutex<Option<String>>>,
    tx: Sender<()>,
}

/// The job's side of a `StopHandle`.
#[derive(Clone)]
pub struct StopSignal {
    handle: StopHandle,
    pub(crate) rx: Receiver<()>,
}

pub fn stop_pair() -> (StopHandle, StopSignal) {
    // One slot: further stops coalesce with the first.
    let (tx, rx) = bounded(1);
    let handle = StopHandle {
        requested: Arc::new(AtomicBool::new(false)),
        reason: Arc::default(),
        tx,
    };
    (handle.clone(), StopSignal { handle, rx })
}

impl StopHandle {
    pub fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.tx.try_send(());
    }

    /// A stop with a line for the log of the command it interrupts.
    pub fn stop_because(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.stop();
    }
}

impl StopSignal {
    pub fn is_requested(&self) -> bool {
        self.handle.requested.load(Ordering::SeqCst)
    }

    fn reason(&self) -> Option<String> {
        self.handle
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Everything a job needs besides its request.
pub struct JobSpec<'a> {
    pub request: &'a JobRequest,
    /// Private directory for the job's working files (env file, commands).
    pub work_dir: &'a Path,
    /// The agent user's home: the session starts there, `~` in file paths.
    pub home: &'a Path,
    pub mark: &'a str,
    pub stop: StopSignal,
    pub grace: Duration,
    pub options: &'a AgentOptions,
}

/// Runs the job to `job_finished` and returns its result.
pub fn run(spec: JobSpec<'_>, log: &mut EventLog) -> JobResult {
    log.write(&Event::JobStarted {
        timestamp: now_secs(),
    });
    // §13.3: past the time limit the job is stopped like by the API.
    let (limit_done, limit_rx) = bounded::<()>(0);
    let timer = spec.request.execution_time_limit_seconds.map(|secs| {
        let handle = spec.stop.handle.clone();
        std::thread::spawn(move || {
            if limit_rx.recv_timeout(Duration::from_secs(secs))
                == Err(crossbeam_channel::RecvTimeoutError::Timeout)
            {
                handle.stop_because(format!(
                    "The job exceeded its execution time limit of {secs} seconds and was stopped.\n"
                ));
            }
        })
    });
    let result = run_steps(&spec, log);
    drop(limit_done);
    if let Some(timer) = timer {
        let _ = timer.join();
    }
    log.write(&Event::JobFinished {
        timestamp: now_secs(),
        result: result.as_str(),
    });
    result
}

fn run_steps(spec: &JobSpec<'_>, log: &mut EventLog) -> JobResult {
    let mut steps = Steps { log, spec };
    if spec.stop.is_requested() {
        return JobResult::Stopped;
    }
    let compose = spec.request.executor == "dockercompose";
    // Prepare (§5.2 step 2): the jump point's keys and profile line.
    let env_file = spec.work_dir.join("env");
    let jump_point = jumppoint::decode_keys(&spec.request.ssh_public_keys).and_then(|keys| {
        JumpPoint::install(
            spec.home,
            Path::new(JUMP_POINT_DIR),
            &spec.request.job_id,
            keys,
            (!compose).then_some(env_file.as_path()),
        )
    });
    let jump_point = match jump_point {
        Ok(jp) => jp,
        Err(e) => {
            steps.synthetic(STEP_JUMP_POINT, now_secs(), &[&format!("{e}\n")], 1);
            return JobResult::Failed;
        }
    };
    // Declared before the session, so the session (and its processes) goes
    // first and `compose down` runs after it, on every way out.
    let mut _project: Option<ProjectGuard> = None;
    let started = if compose {
        compose::start(&mut steps, &mut _project, &jump_point)
    } else {
        start_shell(&mut steps, &jump_point)
    };
    let mut session = match started {
        Started::Ready(s) => s,
        Started::Failed => return JobResult::Failed,
        Started::Stopped => return JobResult::Stopped,
    };

    // Steps 4 to 7: stop at the first failure, then go to the result export.
    let mut last_status = 0;
    let files_ok = |steps: &mut Steps<'_, '_>, session: &mut Session| {
        if compose {
            compose::inject_files(steps, session)
        } else {
            steps.inject_files()
        }
    };
    if !steps.export_env(&mut session) {
        last_status = 1;
    } else if spec.stop.is_requested() {
        return JobResult::Stopped;
    } else if !files_ok(&mut steps, &mut session) {
        last_status = 1;
    } else if let Some(status) = steps.pre_job_hook(&mut session) {
        match status {
            Step::Stopped => return JobResult::Stopped,
            Step::Done(status) => last_status = status,
        }
    }
    if last_status == 0 {
        for command in &spec.request.commands {
            match steps.command(&mut session, command) {
                Step::Stopped => return JobResult::Stopped,
                Step::Done(0) => {}
                Step::Done(status) => {
                    last_status = status;
                    break;
                }
            }
        }
    }
    if spec.stop.is_requested() {
        return JobResult::Stopped;
    }

    // Step 8: the exit-130 self-stop skips the export and the epilogues.
    if last_status == 130 {
        return steps.check_self_stop(&mut session);
    }
    let result = if last_status == 0 {
        JobResult::Passed
    } else {
        JobResult::Failed
    };

    // Step 9: export the result.
    if !steps.export_result(&mut session, result) {
        return JobResult::Stopped;
    }

    // Steps 10 and 11: each list until its first failure; a failing list
    // never changes the result nor prevents the next list.
    let second = match result {
        JobResult::Passed => &spec.request.epilogue_on_pass_commands,
        _ => &spec.request.epilogue_on_fail_commands,
    };
    for list in [&spec.request.epilogue_always_commands, second] {
        for command in list {
            match steps.command(&mut session, command) {
                Step::Stopped => return JobResult::Stopped,
                Step::Done(0) => {}
                Step::Done(_) => break,
            }
        }
    }
    if spec.stop.is_requested() {
        return JobResult::Stopped;
    }
    result
}

/// How starting the executor went.
pub(crate) enum Started {
    Ready(Box<Session>),
    Failed,
    Stopped,
}

fn start_shell(steps: &mut Steps<'_, '_>, jump_point: &JumpPoint) -> Started {
    let spec = steps.spec;
    let started_at = now_secs();
    let session = Session::start(SessionSpec {
        argv: vec!["bash".into(), "--login".into(), "--noediting".into()],
        env: Vec::new(),
        work_dir: spec.work_dir,
        mark: spec.mark,
        stop: &spec.stop.rx,
        grace: spec.grace,
    });
    match session {
        Ok(Some(s)) => {
            let target = Target::Shell {
                session_pid: s.pid(),
            };
            if let Err(e) =
                jump_point.write_script(&spec.request.job_id, &target, &spec.work_dir.join("env"))
            {
                log::error!("job {}: {e}", spec.request.job_id);
            }
            Started::Ready(Box::new(s))
        }
        Ok(None) => Started::Stopped,
        Err(e) => {
            steps.synthetic(STEP_START_SESSION, started_at, &[&format!("{e}\n")], 1);
            Started::Failed
        }
    }
}

pub(crate) enum Step {
    Done(i32),
    Stopped,
}

pub(crate) struct Steps<'a, 'b> {
    log: &'a mut EventLog,
    pub(crate) spec: &'a JobSpec<'b>,
}

impl Steps<'_, '_> {
    pub(crate) fn output(&mut self, text: &str) {
        self.log.write(&Event::CmdOutput {
            timestamp: now_secs(),
            output: text,
        });
    }

    pub(crate) fn started(&mut self, directive: &str) -> u64 {
        let now = now_secs();
        self.log.write(&Event::CmdStarted {
            timestamp: now,
            directive,
        });
        now
    }

    pub(crate) fn finished(&mut self, directive: &str, exit_code: i32, started_at: u64) {
        let now = now_secs();
        self.log.write(&Event::CmdFinished {
            timestamp: now,
            directive,
            exit_code,
            started_at,
            finished_at: now,
        });
    }

    /// A step the agent performs itself, logged like a command.
    pub(crate) fn synthetic(
        &mut self,
        directive: &str,
        started_at: u64,
        lines: &[&str],
        exit_code: i32,
    ) {
        self.log.write(&Event::CmdStarted {
            timestamp: started_at,
            directive,
        });
        for line in lines {
            self.output(line);
        }
        self.finished(directive, exit_code, started_at);
    }

    /// Step 4. Returns whether it succeeded.
    fn export_env(&mut self, session: &mut Session) -> bool {
        let started_at = self.started(STEP_EXPORT_ENV);
        let vars = match decode_env(&self.spec.request.env_vars) {
            Ok(vars) => vars,
            Err(message) => {
                self.output(&message);
                self.finished(STEP_EXPORT_ENV, 1, started_at);
                return false;
            }
        };
        let env_file = self.spec.work_dir.join("env");
        let mut contents = Vec::new();
        for (name, (value, _)) in &vars {
            contents.extend_from_slice(format!("export {name}=").as_bytes());
            shell_quote_bytes(value, &mut contents);
            contents.push(b'\n');
        }
        if let Err(e) = write_private(&env_file, &contents) {
            self.output(&format!(
                "Failed to write the environment file {}: {e}\n",
                env_file.display()
            ));
            self.finished(STEP_EXPORT_ENV, 1, started_at);
            return false;
        }
        let mut secrets = Vec::new();
        for (name, (value, secret)) in &vars {
            self.output(&format!("Exporting {name}\n"));
            if *secret && value.len() < MIN_SECRET_LEN {
                self.output(&format!(
                    "The value of {name} is shorter than {MIN_SECRET_LEN} bytes and is not masked in the log\n"
                ));
            } else if *secret {
                secrets.push(value.clone());
            }
        }
        session.set_secrets(secrets);
        let status = session
            .run_silent(&format!(
                "source {}",
                shell_quote(&env_file.to_string_lossy())
            ))
            .exit_code();
        if status == 0 && self.spec.request.executor == "dockercompose" {
            // Login shells in main (the jump point) see the job's env vars.
            let env = shell_quote(&env_file.to_string_lossy());
            let line = shell_quote(&format!("[ -r {env} ] && . {env}"));
            session.run_silent(&format!("printf '%s\\n' {line} >> ~/.bash_profile"));
        }
        self.finished(STEP_EXPORT_ENV, status, started_at);
        status == 0
    }

    /// Step 5. Returns whether it succeeded.
    fn inject_files(&mut self) -> bool {
        let started_at = self.started(STEP_INJECT_FILES);
        for file in &self.spec.request.files {
            let path = resolve_path(&file.path, self.spec.home);
            self.output(&format!(
                "Injecting {} with file mode {}\n",
                path.display(),
                file.mode
            ));
            if let Err(message) = inject_file(&path, &file.content, &file.mode) {
                self.output(&message);
                self.finished(STEP_INJECT_FILES, 1, started_at);
                return false;
            }
        }
        self.finished(STEP_INJECT_FILES, 0, started_at);
        true
    }

    /// Step 6: the pre-job hook, when the agent has one. None when not
    /// configured.
    fn pre_job_hook(&mut self, session: &mut Session) -> Option<Step> {
        let path = self.spec.options.pre_job_hook.as_ref()?;
        let directive = format!("source {}", shell_quote(&path.to_string_lossy()));
        let command = Command {
            directive,
            alias: STEP_PRE_JOB_HOOK.to_string(),
        };
        Some(self.command_with_preamble(
            session,
            &command,
            Some("Warning: The agent is configured to fail the job if the pre-job hook fails.\n"),
        ))
    }

    /// Step 7 (and the epilogues): one command in the session.
    fn command(&mut self, session: &mut Session, command: &Command) -> Step {
        self.command_with_preamble(session, command, None)
    }

    fn command_with_preamble(
        &mut self,
        session: &mut Session,
        command: &Command,
        preamble: Option<&str>,
    ) -> Step {
        if self.spec.stop.is_requested() {
            return Step::Stopped;
        }
        let directive = if command.alias.is_empty() {
            &command.directive
        } else {
            &command.alias
        };
        let started_at = self.started(directive);
        if !command.alias.is_empty() {
            self.output(&format!("Running: {}\n", command.directive));
        }
        if let Some(line) = preamble {
            self.output(line);
        }
        let log = &mut *self.log;
        let outcome = session.run(&command.directive, &mut |chunk| {
            log.write(&Event::CmdOutput {
                timestamp: now_secs(),
                output: &chunk,
            })
        });
        let status = outcome.exit_code();
        let step = if outcome == Outcome::Stopped {
            if let Some(reason) = self.spec.stop.reason() {
                self.output(&reason);
            }
            Step::Stopped
        } else {
            Step::Done(status)
        };
        self.finished(directive, status, started_at);
        step
    }

    /// Step 8 for a last status of 130.
    fn check_self_stop(&mut self, session: &mut Session) -> JobResult {
        let value = session.read_variable("SEMAPHORE_JOB_RESULT");
        if self.spec.stop.is_requested() {
            return JobResult::Stopped;
        }
        let value = value.unwrap_or_default();
        let (message, result) = match value.as_str() {
            "passed" => (
                "SEMAPHORE_JOB_RESULT=passed - stopping job and marking it as passed".to_string(),
                JobResult::Passed,
            ),
            "failed" => (
                "SEMAPHORE_JOB_RESULT=failed - stopping job and marking it as failed".to_string(),
                JobResult::Failed,
            ),
            other => (
                format!(
                    "SEMAPHORE_JOB_RESULT is set to '{other}' - stopping job and marking it as stopped"
                ),
                JobResult::Stopped,
            ),
        };
        let now = now_secs();
        self.synthetic(STEP_CHECK_RESULT, now, &[&message], 0);
        result
    }

    /// Step 9. Returns false when a stop ended it.
    fn export_result(&mut self, session: &mut Session, result: JobResult) -> bool {
        let started_at = self.started(STEP_EXPORT_ENV);
        self.output("Exporting SEMAPHORE_JOB_RESULT\n");
        let line = format!("export SEMAPHORE_JOB_RESULT={}\n", result.as_str());
        // Keep the env file complete for login shells of the job (§8).
        let env_file = self.spec.work_dir.join("env");
        if let Err(e) = OpenOptions::new()
            .append(true)
            .open(&env_file)
            .and_then(|mut f| f.write_all(line.as_bytes()))
        {
            log::warn!("cannot append to {}: {e}", env_file.display());
        }
        let outcome = session.run_silent(line.trim_end());
        self.finished(STEP_EXPORT_ENV, outcome.exit_code(), started_at);
        outcome != Outcome::Stopped
    }
}

/// Shorter secret values are not masked: they would match too much.
const MIN_SECRET_LEN: usize = 4;

/// Decodes, checks, de-duplicates (last wins) and sorts env vars by name;
/// each value comes with its `secret` flag.
fn decode_env(
    vars: &[crate::job::request::EnvVar],
) -> Result<BTreeMap<String, (Vec<u8>, bool)>, String> {
    let mut out = BTreeMap::new();
    for var in vars {
        if !is_shell_identifier(&var.name) {
            return Err(format!(
                "Invalid environment variable name '{}': a name must match [A-Za-z_][A-Za-z0-9_]*\n",
                var.name
            ));
        }
        let value = decode_b64(&var.value).map_err(|_| {
            format!(
                "Failed to decode the value of environment variable '{}': not valid base64\n",
                var.name
            )
        })?;
        out.insert(var.name.clone(), (value, var.secret));
    }
    Ok(out)
}

/// Shell-executor path rules (§5.2 step 5): absolute as is; a leading `~`
/// (alone or before `/`) is the home; anything else is relative to the home.
pub fn resolve_path(path: &str, home: &Path) -> PathBuf {
    if path.starts_with('/') {
        return PathBuf::from(path);
    }
    if path == "~" {
        return home.to_path_buf();
    }
    if let Some(rest) = path.strip_prefix("~/") {
        return home.join(rest);
    }
    home.join(path)
}

/// Writes one injected file. The mode and the content are checked before
/// anything touches the disk, so a bad request leaves nothing behind.
pub(crate) fn inject_file(path: &Path, content_b64: &str, mode: &str) -> Result<(), String> {
    let mode_bits = parse_mode(mode).ok_or_else(|| format!("bad file permission '{mode}'\n"))?;
    let content = decode_b64(content_b64)
        .map_err(|_| "Failed to decode the content of the file.\n".to_string())?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| format!("Failed to create directory {}: {e}\n", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("Failed to create file {}: {e}\n", path.display()))?;
    file.write_all(&content)
        .map_err(|e| format!("Failed to write file {}: {e}\n", path.display()))?;
    file.set_permissions(fs::Permissions::from_mode(mode_bits))
        .map_err(|e| {
            format!(
                "Failed to set file mode of {} to {mode}: {e}\n",
                path.display()
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::request::EnvVar;

    fn var(name: &str, value: &[u8]) -> EnvVar {
        use base64::Engine;
        EnvVar {
            name: name.into(),
            value: base64::engine::general_purpose::STANDARD.encode(value),
            secret: false,
        }
    }

    #[test]
    fn env_is_sorted_and_deduplicated() {
        let vars = decode_env(&[var("B", b"1"), var("A", b"2"), var("B", b"3")]).unwrap();
        let names: Vec<_> = vars.keys().cloned().collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!(vars["B"].0, b"3");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = decode_env(&[var("A-B", b"x")]).unwrap_err();
        assert!(err.contains("'A-B'"), "{err}");
        let bad = EnvVar {
            name: "TOKEN".into(),
            value: "not base64!".into(),
            secret: false,
        };
        let err = decode_env(&[bad]).unwrap_err();
        assert!(err.contains("'TOKEN'"), "{err}");
    }

    #[test]
    fn env_file_round_trips_through_bash() {
        let dir = std::env::temp_dir().join(format!("agent-envfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let value = b"it's \"$HOME\" `id` \\n\nline2 $(x) !x";
        let vars = decode_env(&[var("V", value)]).unwrap();
        let mut contents = Vec::new();
        for (name, (value, _)) in &vars {
            contents.extend_from_slice(format!("export {name}=").as_bytes());
            shell_quote_bytes(value, &mut contents);
            contents.push(b'\n');
        }
        let file = dir.join("env");
        write_private(&file, &contents).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("source {}; printf '%s' \"$V\"", file.display()))
            .output()
            .unwrap();
        assert_eq!(out.stdout, value);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn path_rules() {
        let home = Path::new("/home/u");
        assert_eq!(resolve_path("/etc/x", home), Path::new("/etc/x"));
        assert_eq!(resolve_path("~/a/b", home), Path::new("/home/u/a/b"));
        assert_eq!(resolve_path("~", home), Path::new("/home/u"));
        assert_eq!(resolve_path("a/b", home), Path::new("/home/u/a/b"));
        // Only a leading `~` means home.
        assert_eq!(resolve_path("a/~/b", home), Path::new("/home/u/a/~/b"));
    }

    #[test]
    fn bad_mode_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("agent-inject-{}", std::process::id()));
        let path = dir.join("sub/file");
        let err = inject_file(&path, "aGk=", "9z").unwrap_err();
        assert_eq!(err, "bad file permission '9z'\n");
        assert!(!dir.exists());
        inject_file(&path, "aGk=", "0640").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hi");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
