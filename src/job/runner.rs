//! Jobs accepted by `agent serve`: admission (`--jobs N`, `--queue-size Q`),
//! a bounded crossbeam queue to N runner threads, and each job's teardown
//! (docs/protocol.md §7.2 as amended by §12 item 6 and §13.2).
//!
//! One owner per job: the runner thread that took it runs it and tears it
//! down. The HTTP side only reads a job's state, asks it to stop, and marks
//! its log archived, all through the small `JobEntry` structure.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;

use crate::error::Error;
use crate::job::callbacks::{self, CallbackPolicy};
use crate::job::eventlog::{now_secs, EventLog, JobResult, LogFiles};
use crate::job::lifecycle;
use crate::job::recovery::{self, Earlier};
use crate::job::request::{ExecutorKind, JobRequest};
use crate::job::retention::{self, DiskLimits, DiskSpace};
use crate::job::spec::{AgentOptions, JobSpec};
use crate::job::stop::{stop_pair, StopHandle, StopSignal};
use crate::job::workspace::{JobDir, JobRecord};

/// Why a job stopped by the API was stopped (a remark, not a log line).
pub const STOP_BY_API: &str = "The job was stopped by a stop request to the API.";
/// Why a job the agent stops on its way out was stopped.
const STOP_BY_SHUTDOWN: &str = "The job was stopped because the agent is shutting down.";

#[derive(Clone)]
pub struct RunnerConfig {
    pub jobs: usize,
    pub queue_size: usize,
    pub data_dir: PathBuf,
    pub home: PathBuf,
    pub grace: Duration,
    pub archivator_timeout: Duration,
    /// The log limit, and which finished jobs' directories are kept.
    pub disk: DiskLimits,
    pub callbacks: CallbackPolicy,
    pub options: AgentOptions,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    /// `job_finished` is written; callbacks and the archivator wait follow.
    TearingDown(JobResult),
    Finished(JobResult),
}

/// A job as `GET /jobs` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    pub job_id: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    pub queued_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// What the agent knows of the job that its log does not say: who
    /// stopped it, why it could not start (`EventLog::remark`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remarks: Vec<String>,
}

/// The step of a teardown that can take a while (docs/protocol.md §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeardownStep {
    FinishedCallback,
    ArchivatorRead,
    LogUpload,
    TeardownCallback,
}

impl TeardownStep {
    pub fn describe(self) -> &'static str {
        match self {
            TeardownStep::FinishedCallback => "the finished callback",
            TeardownStep::ArchivatorRead => "a log read with X-Client-Name: archivator",
            TeardownStep::LogUpload => "the log upload",
            TeardownStep::TeardownCallback => "the teardown_finished callback",
        }
    }
}

/// What a job in teardown waits for, and until when at most.
#[derive(Debug, Clone, Copy)]
pub struct TeardownWait {
    pub step: TeardownStep,
    /// None when the step has no bound of its own (the upload).
    pub deadline: Option<Instant>,
}

impl TeardownWait {
    /// Whole seconds left before the step gives up, rounded up.
    pub fn seconds_left(&self) -> Option<u64> {
        self.deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            left.as_secs() + u64::from(left.subsec_nanos() > 0)
        })
    }
}

/// A job in teardown as `/status` and a refused `POST /jobs` show it.
#[derive(Debug, Clone, Serialize)]
pub struct TeardownInfo {
    pub job_id: String,
    pub waiting_for: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_most_seconds: Option<u64>,
}

impl std::fmt::Display for TeardownInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} is waiting for {}", self.job_id, self.waiting_for)?;
        match self.at_most_seconds {
            Some(n) => write!(f, " (at most {} more)", crate::util::seconds(n)),
            None => Ok(()),
        }
    }
}

#[derive(Debug)]
struct EntryState {
    state: JobState,
    started_at: Option<u64>,
    finished_at: Option<u64>,
    archived: bool,
    /// The agent is shutting down: teardown waits for nobody.
    released: bool,
    /// Set while the job is in teardown.
    teardown: Option<TeardownWait>,
}

pub struct JobEntry {
    pub job_id: String,
    dir: JobDir,
    files: Arc<LogFiles>,
    /// The request and the log writer, taken by the runner when the job
    /// starts; a finished job keeps neither in memory.
    pending: Mutex<Option<(JobRequest, EventLog)>>,
    executor: ExecutorKind,
    stop: StopHandle,
    signal: StopSignal,
    queued_at: u64,
    queued_instant: Instant,
    state: Mutex<EntryState>,
    changed: Condvar,
    /// The size of its directory, measured once the job is finished (it
    /// does not change after that).
    size: OnceLock<u64>,
}

impl JobEntry {
    fn lock(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> JobState {
        self.lock().state
    }

    pub fn files(&self) -> &Arc<LogFiles> {
        &self.files
    }

    /// Stops the job; `reason` goes into its log and the agent log. Asked
    /// again (a shutdown asks every 20 ms until the job is gone), it says
    /// nothing more.
    pub fn stop(&self, reason: &str) {
        if self.stop.stop(reason) {
            log::info!("job {}: stopping: {reason}", self.job_id);
        }
    }

    /// Whether `job_finished` is in the log (even before the runner has
    /// moved the job to teardown).
    pub fn log_finished(&self) -> bool {
        self.files.progress().finished
    }

    /// An archivator read counts only if it was served after `job_finished`
    /// was written; the caller checked that before reading.
    pub fn mark_archived(&self) {
        let mut s = self.lock();
        s.archived = true;
        self.changed.notify_all();
    }

    pub fn info(&self) -> JobInfo {
        let s = self.lock();
        let (state, result) = match s.state {
            JobState::Queued => ("queued", None),
            JobState::Running => ("running", None),
            JobState::TearingDown(r) | JobState::Finished(r) => ("finished", Some(r.as_str())),
        };
        JobInfo {
            job_id: self.job_id.clone(),
            state,
            result,
            queued_at: self.queued_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            remarks: self.files.remarks(),
        }
    }

    /// What the job's teardown waits for, while it is in teardown.
    pub fn teardown(&self) -> Option<TeardownInfo> {
        let s = self.lock();
        match (s.state, s.teardown) {
            (JobState::TearingDown(_), Some(wait)) => Some(TeardownInfo {
                job_id: self.job_id.clone(),
                waiting_for: wait.step.describe(),
                at_most_seconds: wait.seconds_left(),
            }),
            _ => None,
        }
    }

    fn set_teardown(&self, step: TeardownStep, bound: Option<Duration>) {
        self.lock().teardown = Some(TeardownWait {
            step,
            deadline: bound.map(|b| Instant::now() + b),
        });
    }

    fn set_state(&self, state: JobState) {
        let mut s = self.lock();
        s.state = state;
        match state {
            JobState::Running => s.started_at = Some(now_secs()),
            JobState::TearingDown(_) => s.finished_at = Some(now_secs()),
            _ => {}
        }
        self.changed.notify_all();
    }

    /// Waits until the log was archived or `timeout` passed; true if archived.
    fn wait_archived(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while !s.archived && !s.released {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.archived
    }

    fn release(&self) {
        self.lock().released = true;
        self.changed.notify_all();
    }
}

/// What `POST /jobs` gets.
#[derive(Debug)]
pub enum Submit {
    Accepted,
    AlreadyKnown,
    AnotherRunning,
    /// The one slot is held by a job in teardown.
    TearingDown(TeardownInfo),
    AtCapacity,
    Failed(Error),
}

#[derive(Default)]
struct Table {
    /// In order of acceptance; finished ones are evicted beyond KEEP_FINISHED.
    jobs: Vec<Arc<JobEntry>>,
    /// Queued, running or tearing down: what counts against capacity.
    active: usize,
}

pub struct Runner {
    cfg: RunnerConfig,
    table: Mutex<Table>,
    queue: Sender<Arc<JobEntry>>,
    /// Set by `shutdown`: callbacks make no further attempts.
    stopping: AtomicBool,
    /// The threads sending the callbacks of jobs cut short by a crash.
    owed_callbacks: Mutex<Vec<JoinHandle<()>>>,
}

impl Runner {
    /// Takes over the jobs an earlier agent left (§7.3), then starts
    /// `cfg.jobs` runner threads.
    pub fn start(cfg: RunnerConfig) -> (Arc<Runner>, Vec<JoinHandle<()>>) {
        let earlier = recovery::recover_earlier(&cfg.data_dir, &cfg.home, cfg.grace);
        let capacity = cfg.jobs + cfg.queue_size;
        let (tx, rx) = bounded(capacity.max(1));
        let runner = Arc::new(Runner {
            cfg,
            table: Mutex::new(Table::default()),
            queue: tx,
            stopping: AtomicBool::new(false),
            owed_callbacks: Mutex::new(Vec::new()),
        });
        runner.adopt(earlier);
        let threads = (0..runner.cfg.jobs.max(1))
            .map(|i| {
                let runner = Arc::clone(&runner);
                let rx: Receiver<Arc<JobEntry>> = rx.clone();
                std::thread::Builder::new()
                    .name(format!("runner-{i}"))
                    .spawn(move || {
                        while let Ok(entry) = rx.recv() {
                            runner.run_entry(&entry);
                        }
                    })
                    .expect("cannot start a runner thread")
            })
            .collect();
        (runner, threads)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.cfg.jobs
    }

    /// Accepts a validated request; `executor` is what its validation chose.
    pub fn submit(&self, request: JobRequest, executor: ExecutorKind) -> Submit {
        let mut table = self.table();
        if table.jobs.iter().any(|j| j.job_id == request.job_id) {
            return Submit::AlreadyKnown;
        }
        let limit = self.cfg.jobs + self.cfg.queue_size;
        if table.active >= limit {
            if limit > 1 {
                return Submit::AtCapacity;
            }
            return match table.jobs.iter().find_map(|j| j.teardown()) {
                Some(info) => Submit::TearingDown(info),
                None => Submit::AnotherRunning,
            };
        }
        let record = JobRecord::new(&request, executor);
        let job_user = self.cfg.options.job_user_for(executor);
        let dir = match JobDir::create(&self.cfg.data_dir, &record, job_user) {
            Ok(d) => d,
            Err(e) => return Submit::Failed(e),
        };
        let mut log = match EventLog::create(&dir.root) {
            Ok(l) => l,
            Err(e) => {
                return Submit::Failed(Error::io("cannot create the event log in", &dir.root, e))
            }
        };
        if let Some(max) = self.cfg.disk.max_job_log_bytes {
            log.limit_to(max);
        }
        let (stop, signal) = stop_pair();
        let entry = Arc::new(JobEntry {
            job_id: request.job_id.clone(),
            files: log.files(),
            pending: Mutex::new(Some((request, log))),
            executor,
            dir,
            stop,
            signal,
            queued_at: record.accepted_at,
            queued_instant: Instant::now(),
            state: Mutex::new(EntryState {
                state: JobState::Queued,
                started_at: None,
                finished_at: None,
                archived: false,
                released: false,
                teardown: None,
            }),
            changed: Condvar::new(),
            size: OnceLock::new(),
        });
        // Admission above guarantees room: the channel holds jobs + queue.
        if self.queue.try_send(Arc::clone(&entry)).is_err() {
            return Submit::AtCapacity;
        }
        table.active += 1;
        table.jobs.push(entry);
        log::info!(
            "job {} accepted",
            table.jobs.last().map(|j| j.job_id.as_str()).unwrap_or("")
        );
        self.evict(&mut table);
        Submit::Accepted
    }

    pub fn find(&self, job_id: &str) -> Option<Arc<JobEntry>> {
        self.table()
            .jobs
            .iter()
            .rev()
            .find(|j| j.job_id == job_id)
            .cloned()
    }

    pub fn any_accepted(&self) -> bool {
        !self.table().jobs.is_empty()
    }

    /// The jobs in teardown and what each waits for.
    pub fn tearing_down(&self) -> Vec<TeardownInfo> {
        self.table()
            .jobs
            .iter()
            .filter_map(|j| j.teardown())
            .collect()
    }

    pub fn list(&self) -> Vec<JobInfo> {
        self.table().jobs.iter().map(|j| j.info()).collect()
    }

    /// (running, queued) right now.
    pub fn counts(&self) -> (usize, usize) {
        let table = self.table();
        let mut running = 0;
        let mut queued = 0;
        for j in &table.jobs {
            match j.state() {
                JobState::Queued => queued += 1,
                JobState::Running => running += 1,
                _ => {}
            }
        }
        (running, queued)
    }

    /// For shutting down: stops every job and cuts teardown waits and
    /// callback retries short.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_all(STOP_BY_SHUTDOWN);
        for j in &self.table().jobs {
            j.release();
        }
    }

    /// No job is queued, running or tearing down.
    pub fn is_idle(&self) -> bool {
        self.table().active == 0
    }

    /// Stops every queued or running job; returns how many were asked.
    pub fn stop_all(&self, reason: &str) -> usize {
        let table = self.table();
        let mut n = 0;
        for j in &table.jobs {
            if matches!(j.state(), JobState::Queued | JobState::Running) {
                j.stop(reason);
                n += 1;
            }
        }
        n
    }

    /// Lists the jobs of an earlier agent as finished ones, prunes them like
    /// any others, and sends the callbacks of those a crash cut short.
    fn adopt(self: &Arc<Self>, earlier: Vec<Earlier>) {
        let mut table = self.table();
        for job in earlier {
            if job.crashed {
                self.send_owed_callbacks(&job.record);
            }
            let (stop, signal) = stop_pair();
            table.jobs.push(Arc::new(JobEntry {
                job_id: job.record.job_id.clone(),
                dir: job.dir,
                files: job.files,
                pending: Mutex::new(None),
                executor: job.record.executor().kind(),
                stop,
                signal,
                queued_at: job.record.accepted_at,
                queued_instant: Instant::now(),
                state: Mutex::new(EntryState {
                    state: JobState::Finished(job.result),
                    started_at: job.started_at,
                    finished_at: Some(job.finished_at),
                    archived: true,
                    released: true,
                    teardown: None,
                }),
                changed: Condvar::new(),
                size: OnceLock::new(),
            }));
        }
        self.evict(&mut table);
    }

    /// The finished and teardown callbacks of a job cut short, on a thread
    /// of their own: retries must not hold up the start.
    fn send_owed_callbacks(self: &Arc<Self>, record: &JobRecord) {
        let cb = record.callbacks.clone();
        if cb.finished.is_empty() && cb.teardown_finished.is_empty() {
            return;
        }
        let runner = Arc::clone(self);
        let job_id = record.job_id.clone();
        let spawned = std::thread::Builder::new()
            .name("owed-callbacks".into())
            .spawn(move || {
                let stopping = || runner.stopping.load(Ordering::SeqCst);
                for (url, body) in [
                    (
                        &cb.finished,
                        callbacks::finished_body(JobResult::Failed.as_str()),
                    ),
                    (&cb.teardown_finished, "{}".to_string()),
                ] {
                    if let Err(e) =
                        callbacks::send(url, &cb.token, &body, &runner.cfg.callbacks, &stopping)
                    {
                        log::error!("job {job_id}: {e}");
                    }
                }
            });
        match spawned {
            Ok(handle) => self
                .owed_callbacks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(handle),
            Err(e) => log::error!("cannot start a thread for owed callbacks: {e}"),
        }
    }

    /// Removes the oldest finished jobs beyond `--keep-jobs`, then as many
    /// more as the rest needs to fit in `--max-data-bytes` (§13.2): their
    /// directories go, and their ids are forgotten. Jobs that are queued,
    /// running or tearing down are never touched.
    fn evict(&self, table: &mut Table) {
        let finished: Vec<&Arc<JobEntry>> = table
            .jobs
            .iter()
            .filter(|j| matches!(j.state(), JobState::Finished(_)))
            .collect();
        let sizes: Vec<u64> = finished
            .iter()
            .map(|j| *j.size.get_or_init(|| retention::dir_size(&j.dir.root)))
            .collect();
        let n = self.cfg.disk.how_many_go(&sizes);
        if n == 0 {
            return;
        }
        let gone: Vec<Arc<JobEntry>> = finished[..n].iter().map(|j| Arc::clone(j)).collect();
        table
            .jobs
            .retain(|j| !gone.iter().any(|g| Arc::ptr_eq(g, j)));
        for j in &gone {
            retention::remove_job_dir(&j.dir.root);
            // A user made for the job whose removal failed at its end.
            if let Some(account) = &j.dir.account {
                account.remove();
            }
        }
        log::info!(
            "removed the directories of {n} finished job(s) (keep-jobs {}, max-data-bytes {})",
            self.cfg.disk.keep_jobs,
            self.cfg
                .disk
                .max_data_bytes
                .map_or("none".to_string(), |m| m.to_string())
        );
    }

    /// The room left on the data disk (`/status`).
    pub fn data_disk(&self) -> Option<DiskSpace> {
        retention::data_disk(&self.cfg.data_dir)
    }

    fn run_entry(&self, entry: &Arc<JobEntry>) {
        let pending = entry
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some((request, mut log)) = pending else {
            return;
        };
        entry.set_state(JobState::Running);
        let waited = entry.queued_instant.elapsed();
        if let Some(metrics) = &self.cfg.options.metrics {
            metrics.job_started(waited);
        }
        log::info!(
            "job {} started after {:?} in the queue",
            entry.job_id,
            waited
        );
        let started = Instant::now();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lifecycle::run(
                JobSpec {
                    request: &request,
                    executor: entry.executor,
                    work_dir: &entry.dir.work,
                    home: entry
                        .dir
                        .account
                        .as_ref()
                        .map_or(&self.cfg.home, |a| &a.home),
                    account: entry.dir.account.as_ref(),
                    mark: &entry.dir.mark,
                    stop: entry.signal.clone(),
                    grace: self.cfg.grace,
                    options: &self.cfg.options,
                },
                &mut log,
            )
        }));
        // A bug in the agent fails the job, never the runner: the log says
        // so and the teardown still runs (the session's guards have already
        // killed what the job started while the panic unwound).
        let result = run.unwrap_or_else(|_| {
            log::error!("job {}: the agent failed while running it", entry.job_id);
            log.close_after_failure("The agent failed while running this job; see the agent log.");
            JobResult::Failed
        });
        // `job_finished` is in the log: readers may now archive it.
        entry.set_state(JobState::TearingDown(result));
        log::info!("job {} finished: {}", entry.job_id, result.as_str());
        if let Some(metrics) = &self.cfg.options.metrics {
            metrics.job_finished(result, started.elapsed());
        }
        self.teardown(entry, &request, result, log);
    }

    /// §7.2 as we amend it: the finished callback after `job_finished`, the
    /// bounded archivator wait, the log closed, the teardown callback, and
    /// the working files removed. Every step runs whatever failed before.
    /// The archivator wait applies only to a job that came with callbacks:
    /// without them no control plane is there to read the log, and a person
    /// with curl must not wait for one.
    fn teardown(
        &self,
        entry: &Arc<JobEntry>,
        request: &JobRequest,
        result: JobResult,
        log: EventLog,
    ) {
        let cb = &request.callbacks;
        let stopping = || self.stopping.load(Ordering::SeqCst);
        let policy = &self.cfg.callbacks;
        let callback_bound = |url: &str| {
            (!url.is_empty())
                .then(|| (policy.timeout + policy.retry_delay) * policy.attempts.max(1))
        };
        entry.set_teardown(TeardownStep::FinishedCallback, callback_bound(&cb.finished));
        if let Err(e) = callbacks::send(
            &cb.finished,
            &cb.token,
            &callbacks::finished_body(result.as_str()),
            policy,
            &stopping,
        ) {
            log::error!("job {}: {e}", entry.job_id);
        }
        if cb.finished.is_empty() && cb.teardown_finished.is_empty() {
            log::info!(
                "job {}: no callbacks, so no archivator read is awaited",
                entry.job_id
            );
        } else {
            let timeout = self.cfg.archivator_timeout;
            entry.set_teardown(TeardownStep::ArchivatorRead, Some(timeout));
            log::info!(
                "job {}: waiting up to {} for a log read with X-Client-Name: archivator",
                entry.job_id,
                crate::util::seconds(timeout.as_secs())
            );
            if !entry.wait_archived(timeout) && !entry.lock().released {
                log::warn!(
                    "job {}: no archivator read within {}; tearing down anyway",
                    entry.job_id,
                    crate::util::seconds(timeout.as_secs())
                );
            }
        }
        drop(log);
        entry.set_teardown(TeardownStep::LogUpload, None);
        crate::job::artifact::upload_job_log(request, entry.files());
        entry.set_teardown(
            TeardownStep::TeardownCallback,
            callback_bound(&cb.teardown_finished),
        );
        if let Err(e) = callbacks::send(&cb.teardown_finished, &cb.token, "{}", policy, &stopping) {
            log::error!("job {}: {e}", entry.job_id);
        }
        entry.dir.remove_work();
        entry.set_state(JobState::Finished(result));
        let mut table = self.table();
        table.active = table.active.saturating_sub(1);
        log::info!("job {} torn down", entry.job_id);
        self.evict(&mut table);
    }
}
