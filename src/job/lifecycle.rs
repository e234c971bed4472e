//! The job lifecycle of docs/protocol.md §5.2 for the shell executor: start the
//! session, export env vars, inject files, run commands until the first
//! failure, decide the result (with the exit-130 self-stop), export it, run
//! the epilogues, and write `job_finished`.
//!
//! The caller owns what comes after `job_finished` (callbacks, the
//! archivator wait) and hands in a `StopHandle` receiver; a stop may arrive
//! at any phase and always ends the job as `stopped`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crossbeam_channel::bounded;

use crate::executor::jumppoint::{self, JumpPoint};
use crate::executor::Executor;
use crate::job::env::{decode_env, write_env_file, MIN_SECRET_LEN};
use crate::job::eventlog::{now_secs, Event, EventLog, JobResult};
use crate::job::request::Command;
use crate::job::spec::JobSpec;
use crate::job::steps::{
    Started, Step, Steps, STEP_CHECK_RESULT, STEP_EXPORT_ENV, STEP_POST_JOB_HOOK, STEP_PRE_JOB_HOOK,
};
use crate::process::session::{Outcome, Session};
use crate::util::{shell_quote, write_private};

/// Where the jump point scripts go; the `sem` CLI relies on this path.
pub const JUMP_POINT_DIR: &str = "/tmp";
/// The keys a job's jump point added, in its work dir, for crash recovery.
pub const JUMP_POINT_RECORD: &str = "jump_point.json";

/// Runs the job to `job_finished` and returns its result.
pub fn run(spec: JobSpec<'_>, log: &mut EventLog) -> JobResult {
    log.write(&Event::JobStarted {
        timestamp: now_secs(),
    });
    // §13.3: past the time limit the job is stopped like by the API.
    let (limit_done, limit_rx) = bounded::<()>(0);
    let timer = spec.request.execution_time_limit_seconds.map(|secs| {
        let handle = spec.stop.handle();
        std::thread::spawn(move || {
            if limit_rx.recv_timeout(Duration::from_secs(secs))
                == Err(crossbeam_channel::RecvTimeoutError::Timeout)
            {
                handle.stop(&format!(
                    "The job exceeded its execution time limit of {} and was stopped.",
                    crate::util::seconds(secs)
                ));
            }
        })
    });
    // §6.8: a failed write of the log interrupts the running command.
    let (interrupt, interrupted) = bounded::<()>(1);
    log.on_broken(Box::new(move || {
        let _ = interrupt.try_send(());
    }));
    let result = run_steps(&spec, log, interrupted);
    // Who stopped the job is not in the log (the reference writes no such
    // line); the agent log, the API and `agent run` say it.
    if result == JobResult::Stopped {
        if let Some(reason) = spec.stop.reason() {
            log::info!("job {}: {reason}", spec.request.job_id);
            log.remark(&reason);
        }
    }
    // The result must match the log: one that could not be written fails.
    let result = if log.is_broken() {
        JobResult::Failed
    } else {
        result
    };
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

/// The job's cache service, when the agent has a cache. A failure leaves the
/// job without `cache` and is logged by the agent.
fn start_cache(spec: &JobSpec<'_>) -> Option<crate::cache::host::JobCache> {
    let agent = spec.options.cache.as_ref()?;
    let env = decode_env(&spec.request.env_vars).unwrap_or_default();
    let vars = env.iter().map(|(k, (v, _))| (k.as_str(), v.as_slice()));
    let in_container = spec.executor.in_container();
    let owner = spec.account.map(|a| (a.creds.uid, a.creds.gid));
    match crate::cache::host::serve_job(agent, vars, spec.work_dir, in_container, owner) {
        Ok(c) => Some(c),
        Err(e) => {
            log::error!("job {}: no cache: {e}", spec.request.job_id);
            None
        }
    }
}

fn run_steps(
    spec: &JobSpec<'_>,
    log: &mut EventLog,
    interrupted: crossbeam_channel::Receiver<()>,
) -> JobResult {
    let mut steps = Steps::new(log, spec);
    if spec.stop.is_requested() {
        return JobResult::Stopped;
    }
    // The cache service outlives the session and the compose project.
    let job_cache = start_cache(spec);
    // Declared before the session, so the session (and its processes) goes
    // first and the executor's cleanup (`compose down`) after it, on every
    // way out.
    let mut executor = Executor::new(spec.executor);
    // Prepare (§5.2 step 2): the jump point's keys.
    let jump_point = jumppoint::decode_keys(&spec.request.ssh_public_keys).and_then(|keys| {
        JumpPoint::install(
            spec.home,
            Path::new(JUMP_POINT_DIR),
            &spec.request.job_id,
            keys,
            &spec.work_dir.join(JUMP_POINT_RECORD),
            spec.account.map(|a| &a.creds),
        )
    });
    let jump_point = match jump_point {
        Ok(jp) => jp,
        Err(e) => {
            steps.remark(&format!("The SSH jump point could not be set up: {e}"));
            return JobResult::Failed;
        }
    };
    let mut session = match executor.start(&mut steps, &jump_point) {
        Started::Ready(s) => s,
        Started::Failed => return JobResult::Failed,
        Started::Stopped => return JobResult::Stopped,
    };
    session.interrupt_on(interrupted);

    // Steps 4 to 7: stop at the first failure, then go to the result export.
    let mut last_status = 0;
    let exported = export_env(&mut steps, &executor, &mut session);
    // After the job's env vars, so that a PATH among them keeps `cache`.
    source_setup(
        spec,
        job_cache.as_ref(),
        &executor.setup_env(spec),
        &mut session,
    );
    if !exported {
        last_status = 1;
    } else if spec.stop.is_requested() {
        return JobResult::Stopped;
    } else if !executor.inject_files(&mut steps, &mut session) {
        last_status = 1;
    } else if let Some(status) = pre_job_hook(&mut steps, &mut session) {
        match status {
            Step::Stopped => return JobResult::Stopped,
            Step::Done(status) => last_status = status,
        }
    }
    if last_status == 0 {
        for command in &spec.request.commands {
            if steps.log_broken() {
                break;
            }
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
    // §6.8: whatever the last command said, the job fails and its
    // epilogues are attempted.
    if steps.log_broken() {
        last_status = 1;
    }

    // Step 8: the exit-130 self-stop skips the export and the epilogues.
    if last_status == 130 {
        return check_self_stop(&mut steps, &mut session);
    }
    let result = if last_status == 0 {
        JobResult::Passed
    } else {
        JobResult::Failed
    };

    // Step 9: export the result.
    if !export_result(&mut steps, &mut session, result) {
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
    if let Some(Step::Stopped) = post_job_hook(&mut steps, &mut session) {
        return JobResult::Stopped;
    }
    if spec.stop.is_requested() {
        return JobResult::Stopped;
    }
    result
}

/// Step 4. Returns whether it succeeded.
fn export_env(steps: &mut Steps<'_, '_>, executor: &Executor, session: &mut Session) -> bool {
    let started_at = steps.started(STEP_EXPORT_ENV);
    let vars = match decode_env(&steps.spec.request.env_vars) {
        Ok(vars) => vars,
        Err(message) => {
            steps.output(&message);
            steps.finished(STEP_EXPORT_ENV, 1, started_at);
            return false;
        }
    };
    let env_file = steps.spec.env_file();
    if let Err(e) = write_env_file(&env_file, &vars).and_then(|()| steps.spec.hand_over(&env_file))
    {
        steps.output(&format!(
            "Failed to write the environment file {}: {e}\n",
            env_file.display()
        ));
        steps.finished(STEP_EXPORT_ENV, 1, started_at);
        return false;
    }
    let mut secrets = Vec::new();
    for (name, (value, secret)) in &vars {
        steps.output(&format!("Exporting {name}\n"));
        if *secret && value.len() < MIN_SECRET_LEN {
            steps.remark(&format!(
                "The value of {name} is shorter than {MIN_SECRET_LEN} bytes and is not masked in the log."
            ));
        } else if *secret {
            secrets.push(value.clone());
        }
    }
    steps.set_secrets(session, secrets);
    // What sourcing prints is no part of the log; when it fails (the
    // command file could not be written on a full disk, say), it is why.
    let mut said = String::new();
    let status = session
        .run(
            &format!("source {}", shell_quote(&env_file.to_string_lossy())),
            &mut |text| said.push_str(&text),
        )
        .exit_code();
    if status == 0 {
        executor.env_exported(session, &env_file, &steps.spec.setup_file());
    } else {
        steps.remark(&format!(
            "The session could not read the job's environment (exit status {status}): {}",
            said.trim()
        ));
    }
    steps.finished(STEP_EXPORT_ENV, status, started_at);
    status == 0
}

/// Writes the setup script (`checkout`, and `cache` when the job has one)
/// next to the env file, where the jump point sources it too
/// (docs/protocol.md §8), and sources it in the session. A file that cannot
/// be written leaves only the jump point without them. `env` is what the
/// session was started with beyond the agent's environment: the script
/// sets each only where it is unset, so the session, and a job's env var
/// of the same name, keep theirs.
fn source_setup(
    spec: &JobSpec<'_>,
    cache: Option<&crate::cache::host::JobCache>,
    env: &[(String, String)],
    session: &mut Session,
) {
    let mut text = crate::cache::host::setup_script(cache);
    for (name, value) in env {
        text.push_str(&format!(
            "[ \"${{{name}+set}}\" ] || export {name}={}\n",
            shell_quote(value)
        ));
    }
    let path = spec.setup_file();
    match write_private(&path, text.as_bytes()).and_then(|()| spec.hand_over(&path)) {
        Ok(()) => session.run_silent(&format!("source {}", shell_quote(&path.to_string_lossy()))),
        Err(e) => {
            log::error!(
                "job {}: cannot write {}: {e}; its jump point has no `cache` and no `checkout`",
                spec.request.job_id,
                path.display()
            );
            session.run_silent(&text)
        }
    };
}

/// Step 6: the pre-job hook, when the agent has one. None when not
/// configured.
fn pre_job_hook(steps: &mut Steps<'_, '_>, session: &mut Session) -> Option<Step> {
    let options = steps.spec.options;
    let path = options.pre_job_hook.as_ref()?;
    let how = if options.pre_job_hook_sourced {
        "source"
    } else {
        "bash"
    };
    let command = Command {
        directive: format!("{how} {}", shell_quote(&path.to_string_lossy())),
        alias: STEP_PRE_JOB_HOOK.to_string(),
    };
    let preamble = if options.pre_job_hook_fails_job {
        "Warning: The agent is configured to fail the job if the pre-job hook fails.\n"
    } else {
        "Warning: The agent is configured to proceed with the job even if the pre-job hook fails.\n"
    };
    match steps.command_with_preamble(session, &command, Some(preamble)) {
        Step::Done(_) if !options.pre_job_hook_fails_job => Some(Step::Done(0)),
        step => Some(step),
    }
}

/// After the epilogues: the post-job hook, when the agent has one.
fn post_job_hook(steps: &mut Steps<'_, '_>, session: &mut Session) -> Option<Step> {
    let path = steps.spec.options.post_job_hook.as_ref()?;
    let command = Command {
        directive: format!("bash {}", shell_quote(&path.to_string_lossy())),
        alias: STEP_POST_JOB_HOOK.to_string(),
    };
    Some(steps.command(session, &command))
}

/// Step 8 for a last status of 130.
fn check_self_stop(steps: &mut Steps<'_, '_>, session: &mut Session) -> JobResult {
    let value = session.read_variable("SEMAPHORE_JOB_RESULT");
    if steps.spec.stop.is_requested() {
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
    steps.synthetic(STEP_CHECK_RESULT, now, &[&message], 0);
    result
}

/// Step 9. Returns false when a stop ended it.
fn export_result(steps: &mut Steps<'_, '_>, session: &mut Session, result: JobResult) -> bool {
    let started_at = steps.started(STEP_EXPORT_ENV);
    steps.output("Exporting SEMAPHORE_JOB_RESULT\n");
    let line = format!("export SEMAPHORE_JOB_RESULT={}\n", result.as_str());
    // Keep the env file complete for the job's jump point (§8). A failed
    // env step wrote none, and then there is nothing to complete.
    let env_file = steps.spec.env_file();
    match OpenOptions::new()
        .append(true)
        .open(&env_file)
        .and_then(|mut f| f.write_all(line.as_bytes()))
    {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            log::warn!("cannot append to {}: {e}", env_file.display());
        }
        _ => {}
    }
    let outcome = session.run_silent(line.trim_end());
    steps.finished(STEP_EXPORT_ENV, outcome.exit_code(), started_at);
    outcome != Outcome::Stopped
}
