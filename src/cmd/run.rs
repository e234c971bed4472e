//! `agent run <job file>`: one job on this host, shown live, for a person at
//! a terminal. Ctrl-C (or SIGTERM) stops the job, and once the job has
//! finished gives up the callbacks still being tried; the exit code says the
//! result: 0 passed, 1 failed, 3 stopped (2 when the job could not run).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::RunArgs;
use crate::cmd::display::Display;
use crate::config;
use crate::error::Error;
use crate::job::callbacks::{self, CallbackPolicy};
use crate::job::eventlog::{EventLog, JobResult};
use crate::job::lifecycle;
use crate::job::request::{Format, JobRequest};
use crate::job::spec::{AgentOptions, JobSpec};
use crate::job::stop::stop_pair;
use crate::job::workspace::{JobDir, JobRecord};

pub fn run(args: RunArgs) -> Result<JobResult, Error> {
    // The agent log goes to stderr only; warnings and errors by default.
    let _ = crate::logging::init("warn", None);
    let bytes = std::fs::read(&args.job_file)
        .map_err(|e| Error::io("cannot read the job file", &args.job_file, e))?;
    let in_file = |source| Error::JobFile {
        path: args.job_file.clone(),
        source,
    };
    let decoded = JobRequest::decode(&bytes, Format::Guess).map_err(in_file)?;
    let request = decoded.request;
    let executor = request.validate().map_err(in_file)?;
    request.validate_modes().map_err(in_file)?;
    // The API accepts unknown keys for forward compatibility; a person
    // writing a job file more likely misspelt one.
    for key in &decoded.unknown_keys {
        eprintln!(
            "agent: warning: {}: unknown key '{key}' is ignored",
            args.job_file.display()
        );
    }
    let job_id = if request.job_id.is_empty() {
        "job".to_string()
    } else {
        request.job_id.clone()
    };
    let data_dir = config::data_dir(args.data_dir);
    let mut record = JobRecord::new(&request, executor);
    record.job_id = job_id.clone();
    let dir = JobDir::create(&data_dir, &record, None)?;
    let mut log = EventLog::create(&dir.root)
        .map_err(|e| Error::io("cannot create the event log in", &dir.root, e))?;
    eprintln!("agent: event log: {}", log.files().log_path.display());

    // What the agent knows beyond the log (who stopped the job, why it
    // could not start) is never a log line: the display shows it, and
    // `--json`, whose stdout is the log, puts it on stderr.
    if args.json {
        log.set_observer(Box::new(|_, line| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }));
        log.on_remark(Box::new(|text| eprintln!("agent: {text}")));
    } else {
        let color = std::io::stdout().is_terminal();
        let display = Arc::new(Mutex::new(Display::new(color)));
        let shown = Arc::clone(&display);
        log.set_observer(Box::new(move |event, _| {
            shown.lock().unwrap_or_else(|e| e.into_inner()).show(event)
        }));
        log.on_remark(Box::new(move |text| {
            display
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remark(text)
        }));
    }

    let (stop, signal) = stop_pair();
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::io("cannot install signal handlers", "SIGINT", e))?;
    let signals_handle = signals.handle();
    // The exit code once the job has finished, `RUNNING` until then.
    let finished = Arc::new(AtomicU8::new(RUNNING));
    let stopper = {
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            for sig in signals.forever() {
                let code = finished.load(Ordering::SeqCst);
                if code == RUNNING {
                    let name = match sig {
                        SIGINT => "SIGINT (Ctrl-C)",
                        _ => "SIGTERM",
                    };
                    eprintln!("agent: {name} received, stopping the job");
                    stop.stop(&format!("The job was stopped by {name}."));
                } else {
                    // Only callbacks are left, and an attempt may block
                    // for its whole timeout: leave now, nothing is lost.
                    eprintln!("agent: signal {sig} received, giving up the callbacks");
                    let _ = std::io::stdout().flush();
                    std::process::exit(i32::from(code));
                }
            }
        })
    };

    let cache = crate::cache::host::agent_cache(Default::default(), &data_dir)?;
    let home = config::home_dir();
    let result = lifecycle::run(
        JobSpec {
            request: &request,
            executor,
            work_dir: &dir.work,
            home: &home,
            account: None,
            mark: &dir.mark,
            stop: signal,
            grace: Duration::from_secs(args.stop_grace_period),
            options: &AgentOptions {
                expose_kvm: true,
                cache: Some(cache),
                ..AgentOptions::default()
            },
        },
        &mut log,
    );
    dir.remove_work();
    finished.store(exit_code(result), Ordering::SeqCst);

    // `agent run` has no archivator: the log counts as archived at once.
    let policy = CallbackPolicy {
        attempts: args.callback_retry_attempts,
        ..CallbackPolicy::default()
    };
    let cb = &request.callbacks;
    for (url, body) in [
        (&cb.finished, callbacks::finished_body(result.as_str())),
        (&cb.teardown_finished, "{}".to_string()),
    ] {
        if let Err(e) = callbacks::send(url, &cb.token, &body, &policy, &|| false) {
            eprintln!("agent: {e}");
        }
    }
    signals_handle.close();
    let _ = stopper.join();
    Ok(result)
}

/// Stands for "the job is still running" where an exit code is kept.
const RUNNING: u8 = u8::MAX;

/// `agent run`'s exit code for a job's result.
pub fn exit_code(result: JobResult) -> u8 {
    match result {
        JobResult::Passed => 0,
        JobResult::Failed => 1,
        JobResult::Stopped => 3,
    }
}
