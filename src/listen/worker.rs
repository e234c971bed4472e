//! One job of listen mode, on its own thread: fetch the job request (bounded
//! retries), check it, create its directory and event log, start the log
//! pusher, run the job with the same engine as `agent serve` (the agent's
//! env vars and files added), wait until the log is pushed (or the flush
//! time is up), upload the log as an artifact when the configuration says
//! so, and report the result.
//!
//! It reports to the sync loop only through `notify` (`Started`, then
//! `Finished`), and is stopped only through its `StopSignal`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::client::{retry, Client};
use super::config::{ListenConfig, UploadJobLogs};
use super::push::{PushTarget, Pusher};
use crate::error::RequestError;
use crate::job::eventlog::{now_secs, Event, EventLog, JobResult};
use crate::job::lifecycle;
use crate::job::request::{warn_unknown_keys, EnvVar, ExecutorKind, Format, JobRequest};
use crate::job::retention;
use crate::job::spec::{AgentOptions, JobSpec};
use crate::job::stop::StopSignal;
use crate::job::workspace::{JobDir, JobRecord, LogPush};

/// What the sync loop hears from a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// The request was fetched and the job runs in this directory.
    Started(PathBuf),
    /// The job is over and its log pushed (or given up on).
    Finished(JobResult),
}

/// What every job shares.
pub struct Shared {
    pub client: Client,
    pub cfg: Arc<ListenConfig>,
    pub options: AgentOptions,
}

pub fn spawn(
    shared: Arc<Shared>,
    job_id: String,
    stop: StopSignal,
    notify: Box<dyn Fn(JobEvent) + Send>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("job".into())
        .spawn(move || {
            let result = run(&shared, &job_id, stop, &*notify);
            log::info!("job {job_id} finished: {}", result.as_str());
            // Its directory is let go by now: it counts as finished.
            retention::prune_unheld(&shared.cfg.data_dir, &shared.cfg.disk);
            notify(JobEvent::Finished(result));
        })
        .expect("cannot start a job thread")
}

/// Fetches and decodes the job request (bounded retries, given up when
/// the job is stopped); `Err` holds the result to report without it.
fn fetch(shared: &Shared, job_id: &str, stop: &StopSignal) -> Result<JobRequest, JobResult> {
    let limits = &shared.cfg.limits;
    log::info!("job {job_id}: fetching the job request");
    let bytes = retry(
        &format!("job {job_id}: GET /jobs/{{id}}"),
        limits.get_job_attempts,
        limits.get_job_delay,
        &|| stop.is_requested(),
        || shared.client.get_job(job_id),
    )
    .map_err(|_| {
        if stop.is_requested() {
            JobResult::Stopped
        } else {
            JobResult::Failed
        }
    })?;
    let decoded = JobRequest::decode(&bytes, Format::Json).map_err(|e| {
        log::error!("job {job_id}: {e}");
        JobResult::Failed
    })?;
    warn_unknown_keys(job_id, &decoded.unknown_keys);
    let mut request = decoded.request;
    if request.job_id.is_empty() {
        request.job_id = job_id.to_string();
    }
    Ok(request)
}

fn run(shared: &Shared, job_id: &str, stop: StopSignal, notify: &dyn Fn(JobEvent)) -> JobResult {
    let limits = &shared.cfg.limits;
    let mut request = match fetch(shared, job_id, &stop) {
        Ok(request) => request,
        Err(result) => return result,
    };
    let target = PushTarget {
        url: request.logger.url.clone(),
        token: request.logger.token.clone(),
    };
    let check = request.validate_pushed();
    if let Err(e @ (RequestError::NotPushLogger(_) | RequestError::LoggerUrl { .. })) = &check {
        // Nowhere to push the log, nor to show why: the agent log has to
        // do, and the job is reported failed at once.
        log::error!("job {job_id}: {e}");
        return JobResult::Failed;
    }
    retention::prune_unheld(&shared.cfg.data_dir, &shared.cfg.disk);
    let mut record = JobRecord::new(
        &request,
        check.as_ref().copied().unwrap_or(ExecutorKind::Shell),
    );
    record.push = Some(LogPush {
        url: target.url.clone(),
        token: target.token.clone(),
    });
    let job_user = shared
        .options
        .job_user_for(check.as_ref().copied().unwrap_or(ExecutorKind::Shell));
    let dir = match JobDir::create(&shared.cfg.data_dir, &record, job_user) {
        Ok(d) => d,
        Err(e) => {
            log::error!("job {job_id}: {e}");
            return JobResult::Failed;
        }
    };
    let mut log = match EventLog::create(&dir.root) {
        Ok(l) => l,
        Err(e) => {
            log::error!(
                "job {job_id}: cannot create the event log in {}: {e}",
                dir.root.display()
            );
            return JobResult::Failed;
        }
    };
    if let Some(max) = shared.cfg.disk.max_job_log_bytes {
        log.limit_to(max);
    }
    let pusher = Pusher::start(
        shared.client.clone(),
        log.files(),
        target,
        limits.push_interval,
        job_id,
        0,
        Some(super::recover::pushed_file(&dir.root)),
    );
    let waker = pusher.waker();
    log.set_observer(Box::new(move |_, _| waker.wake()));
    notify(JobEvent::Started(dir.root.clone()));
    log::info!(
        "job {job_id} started; its event log is {}",
        log.files().log_path.display()
    );

    let result = match check
        .map_err(|e| e.to_string())
        .and_then(|kind| missing_files(&shared.cfg, kind).map_or(Ok(kind), Err))
    {
        Err(message) => {
            // As the reference: `job_started`, then `job_finished` `failed`,
            // nothing between; the reason goes to the agent log.
            log::error!("job {job_id}: {message}");
            log.write(&Event::JobStarted {
                timestamp: now_secs(),
            });
            log.close_after_failure(&message);
            JobResult::Failed
        }
        Ok(kind) => {
            add_agent_env_vars(&mut request, &shared.cfg.env_vars);
            run_job(shared, &request, kind, &dir, stop, &mut log)
        }
    };
    let files = log.files();
    drop(log);
    let report = pusher.finish(limits.log_flush_timeout);
    let upload = match shared.cfg.upload_job_logs {
        UploadJobLogs::Never => false,
        UploadJobLogs::Always => true,
        UploadJobLogs::WhenTrimmed => report.refused,
    };
    if upload {
        crate::job::artifact::upload(&request, &files);
    }
    dir.remove_work();
    result
}

fn run_job(
    shared: &Shared,
    request: &JobRequest,
    executor: ExecutorKind,
    dir: &JobDir,
    stop: StopSignal,
    log: &mut EventLog,
) -> JobResult {
    let home = crate::config::home_dir();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lifecycle::run(
            JobSpec {
                request,
                executor,
                work_dir: &dir.work,
                home: dir.account.as_ref().map_or(&home, |a| &a.home),
                account: dir.account.as_ref(),
                mark: &dir.mark,
                stop,
                grace: shared.cfg.limits.stop_grace,
                options: &shared.options,
            },
            log,
        )
    }));
    // A bug in the agent fails the job, never the agent.
    run.unwrap_or_else(|_| {
        log::error!("job {}: the agent failed while running it", request.job_id);
        log.close_after_failure("The agent failed while running this job; see the agent log.");
        JobResult::Failed
    })
}

/// With `fail-on-missing-files`, a compose job fails when a `files` source
/// is missing on the host (without it, the mount is skipped with a warning).
fn missing_files(cfg: &ListenConfig, kind: ExecutorKind) -> Option<String> {
    if !cfg.fail_on_missing_files || !kind.mounts_host_files() {
        return None;
    }
    let missing: Vec<&str> = cfg
        .files
        .iter()
        .filter(|(host, _)| !Path::new(host).exists())
        .map(|(host, _)| host.as_str())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "The agent is configured to fail the job when a file to mount is missing: {}",
            missing.join(", ")
        )
    })
}

/// The agent's `env-vars` join the job's; the agent's value wins, as the
/// host's configuration does in the reference agent.
fn add_agent_env_vars(request: &mut JobRequest, vars: &[(String, String)]) {
    use base64::Engine;
    request
        .env_vars
        .extend(vars.iter().map(|(name, value)| EnvVar {
            name: name.clone(),
            value: base64::engine::general_purpose::STANDARD.encode(value),
            secret: false,
        }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_env_var_wins() {
        let mut request =
            JobRequest::from_json(br#"{"env_vars":[{"name":"A","value":"am9i"}]}"#).unwrap();
        add_agent_env_vars(
            &mut request,
            &[("A".into(), "agent".into()), ("B".into(), "b".into())],
        );
        assert_eq!(request.env_value("A").unwrap(), b"agent");
        assert_eq!(request.env_value("B").unwrap(), b"b");
    }
}
