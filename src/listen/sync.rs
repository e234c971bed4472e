//! The sync loop of listen mode: the agent's state (`waiting-for-jobs`,
//! `starting-job`, `running-job`, `stopping-job`, `finished-job`), one sync
//! every few seconds (at once when a job finishes or a signal arrives), and
//! what it does with each action (`continue`, `run-job`, `stop-job`,
//! `wait-for-jobs`, `shutdown`). It also owns the local reasons to leave:
//! the idle timeout, the end of the interruption grace period, and too long
//! without a successful sync.
//!
//! It owns the current job only through its stop handle and thread; the
//! job's side is worker.rs. It returns why the agent shuts down and leaves
//! the disconnect and the hook to its caller.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::client::ShutdownReason;
use super::client::{describe, Action, AgentState, SyncRequest, SyncResponse};
use super::recover::{self, Owed};
use super::worker::{self, JobEvent, Shared};
use crate::job::eventlog::{now_secs, JobResult};
use crate::job::stop::{self, StopHandle};

/// The sync interval when the control plane names none: 3 to 6 s.
const DEFAULT_INTERVAL_MS: (u64, u64) = (3000, 6000);
/// The longest pause between syncs whatever the control plane says.
const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// How long shutdown waits for a stopped job beyond its stop grace period
/// and log flush.
const STOP_MARGIN: Duration = Duration::from_secs(30);

/// Why a job was stopped, for its log.
const STOP_BY_CONTROL_PLANE: &str = "The job was stopped by the control plane.";
const STOP_BY_GRACE: &str =
    "The job was stopped at the end of the interruption grace period of the agent.";
const STOP_BY_SHUTDOWN: &str = "The job was stopped because the agent is shutting down.";

/// What the loop hears from other threads.
pub enum Msg {
    Job(String, JobEvent),
    Signal(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    WaitingForJobs,
    StartingJob,
    RunningJob,
    StoppingJob,
    FinishedJob(JobResult),
}

impl State {
    /// The state as a sync reports it.
    fn reported(self) -> AgentState {
        match self {
            State::WaitingForJobs => AgentState::WaitingForJobs,
            State::StartingJob => AgentState::StartingJob,
            State::RunningJob => AgentState::RunningJob,
            State::StoppingJob => AgentState::StoppingJob,
            State::FinishedJob(_) => AgentState::FinishedJob,
        }
    }
}

struct CurrentJob {
    job_id: String,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
    /// The job's directory, once it has one: where it is recorded that the
    /// control plane has the result.
    dir: Option<PathBuf>,
    /// A job of an earlier agent, reported after a crash (not this
    /// agent's job: `disconnect-after-job` does not count it).
    owed: Option<Owed>,
}

pub struct SyncLoop {
    shared: Arc<Shared>,
    state: State,
    job: Option<CurrentJob>,
    /// Unix time of the first SIGTERM/SIGINT, 0 before.
    interrupted_at: u64,
    /// When a job still running after the signal is stopped.
    grace_deadline: Option<Instant>,
    /// Stops that job at the deadline even while a sync waits for its answer.
    grace_timer: Option<GraceTimer>,
    last_sync_ok: Instant,
    failed_syncs: u32,
    idle_since: Instant,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    /// Jobs of an earlier agent whose result is still to be reported.
    owed: VecDeque<Owed>,
}

impl SyncLoop {
    pub fn new(shared: Arc<Shared>, tx: Sender<Msg>, rx: Receiver<Msg>) -> SyncLoop {
        let now = Instant::now();
        SyncLoop {
            shared,
            state: State::WaitingForJobs,
            job: None,
            interrupted_at: 0,
            grace_deadline: None,
            grace_timer: None,
            last_sync_ok: now,
            failed_syncs: 0,
            idle_since: now,
            tx,
            rx,
            owed: VecDeque::new(),
        }
    }

    /// Reports these jobs of an earlier agent, one `finished-job` each,
    /// before asking for work.
    pub fn with_owed(mut self, owed: Vec<Owed>) -> SyncLoop {
        self.owed = owed.into();
        self.report_next_owed();
        self
    }

    /// Makes the next owed job the current one, finished.
    fn report_next_owed(&mut self) {
        if let Some(owed) = self.owed.pop_front() {
            let (stop, _) = stop::stop_pair();
            let result = owed.result;
            self.job = Some(CurrentJob {
                job_id: owed.job_id.clone(),
                stop,
                thread: None,
                dir: Some(owed.root().to_path_buf()),
                owed: Some(owed),
            });
            self.set_state(State::FinishedJob(result));
        }
    }

    /// Syncs until a reason to shut down; a running job is stopped first.
    pub fn run(mut self) -> ShutdownReason {
        let reason = self.sync_until_shutdown();
        self.stop_job_and_wait();
        reason
    }

    fn sync_until_shutdown(&mut self) -> ShutdownReason {
        let mut next_sync = Instant::now();
        loop {
            // The grace deadline matters only while a job runs (once passed,
            // the job is stopping and the deadline must not wake us again).
            let running = matches!(self.state, State::StartingJob | State::RunningJob);
            let grace = self.grace_deadline.filter(|_| running);
            let wake_at = [Some(next_sync), grace, self.idle_deadline()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_sync);
            match self.rx.recv_deadline(wake_at) {
                Ok(Msg::Job(job_id, event)) => {
                    if self.on_job_event(&job_id, event) {
                        next_sync = Instant::now();
                    }
                }
                Ok(Msg::Signal(signal)) => {
                    self.on_signal(signal);
                    next_sync = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
            }
            if let Some(deadline) = self.idle_deadline() {
                if Instant::now() >= deadline {
                    log::info!(
                        "no job for {:?}: disconnecting",
                        self.shared.cfg.idle_timeout
                    );
                    return ShutdownReason::Idle;
                }
            }
            if self.grace_deadline.is_some_and(|d| Instant::now() >= d)
                && matches!(self.state, State::StartingJob | State::RunningJob)
            {
                // The grace timer may have stopped it already.
                self.stop_job(STOP_BY_GRACE);
            }
            if Instant::now() < next_sync {
                continue;
            }
            let interval = match self.sync() {
                Some(response) => {
                    if let Some(reason) = self.act(&response) {
                        return reason;
                    }
                    match response.next_sync_after {
                        0 => default_interval(),
                        ms => Duration::from_millis(ms).min(MAX_INTERVAL),
                    }
                }
                None => {
                    let without = self.last_sync_ok.elapsed();
                    if without >= self.shared.cfg.limits.sync_give_up {
                        log::error!("no successful sync for {without:?}: shutting down");
                        return ShutdownReason::UnableToSync;
                    }
                    default_interval()
                }
            };
            next_sync = Instant::now() + interval;
            if self.interrupted_at != 0 {
                let grace_over = self.grace_deadline.is_some_and(|d| Instant::now() >= d);
                match self.state {
                    State::WaitingForJobs => return ShutdownReason::Interrupted,
                    // Its result was reported (or tried): no need to wait
                    // for the acknowledgement any longer.
                    State::FinishedJob(_) if grace_over => return ShutdownReason::Interrupted,
                    _ => {}
                }
            }
        }
    }

    /// Returns whether to sync at once.
    fn on_job_event(&mut self, job_id: &str, event: JobEvent) -> bool {
        let Some(job) = self.job.as_mut().filter(|j| j.job_id == job_id) else {
            log::warn!("job {job_id}: {event:?} from a job that is not current; ignored");
            return false;
        };
        match event {
            JobEvent::Started(dir) => {
                job.dir = Some(dir);
                if self.state == State::StartingJob {
                    self.set_state(State::RunningJob);
                }
                false
            }
            JobEvent::Finished(result) => {
                if let Some(thread) = job.thread.take() {
                    let _ = thread.join();
                }
                self.set_state(State::FinishedJob(result));
                true
            }
        }
    }

    fn on_signal(&mut self, signal: i32) {
        if self.interrupted_at == 0 {
            self.interrupted_at = now_secs();
            let grace = self.shared.cfg.interruption_grace;
            self.grace_deadline = Some(Instant::now() + grace);
            log::info!(
                "signal {signal}: telling the control plane; a running job may go on for {grace:?}"
            );
            if let Some(job) = &self.job {
                self.grace_timer = Some(GraceTimer::start(job.stop.clone(), grace));
            }
        } else {
            log::info!("signal {signal} again: stopping now");
            self.grace_deadline = Some(Instant::now());
        }
    }

    /// One sync; `None` when it failed (the failure is logged).
    fn sync(&mut self) -> Option<SyncResponse> {
        let (job_id, job_result) = match (&self.job, self.state) {
            (Some(job), State::FinishedJob(result)) => (job.job_id.as_str(), result.as_str()),
            (Some(job), _) => (job.job_id.as_str(), ""),
            (None, _) => ("", ""),
        };
        let request = SyncRequest {
            state: self.state.reported(),
            job_id,
            job_result,
            interrupted_at: self.interrupted_at,
        };
        log::debug!("sync: {request:?}");
        match self.shared.client.sync(&request) {
            Ok(response) => {
                if self.failed_syncs > 0 {
                    log::info!("sync works again after {} failure(s)", self.failed_syncs);
                }
                self.failed_syncs = 0;
                self.last_sync_ok = Instant::now();
                log::debug!("sync answer: {response:?}");
                Some(response)
            }
            Err(e) => {
                self.failed_syncs += 1;
                log::error!(
                    "sync failed: {} ({} in a row, last success {:?} ago)",
                    describe(&e),
                    self.failed_syncs,
                    self.last_sync_ok.elapsed()
                );
                None
            }
        }
    }

    /// Carries out an action; `Some` when it is to shut down.
    fn act(&mut self, response: &SyncResponse) -> Option<ShutdownReason> {
        match response.action {
            Action::Continue => {}
            Action::RunJob => self.run_job(&response.job_id),
            Action::StopJob if !self.is_current(&response.job_id) => {
                log::warn!(
                    "stop-job for job {}, which is not ours; ignored",
                    response.job_id
                );
            }
            Action::StopJob => match self.state {
                State::StartingJob | State::RunningJob => {
                    log::info!("job {}: the control plane asks to stop it", response.job_id);
                    self.stop_job(STOP_BY_CONTROL_PLANE);
                }
                state => log::debug!("stop-job while {}: nothing to stop", state.reported()),
            },
            Action::WaitForJobs => match self.state {
                State::FinishedJob(_) => {
                    let mut was_owed = false;
                    if let Some(job) = self.job.take() {
                        log::info!("job {}: the control plane has its result", job.job_id);
                        if let Some(dir) = &job.dir {
                            recover::mark_reported(dir);
                        }
                        was_owed = job.owed.is_some();
                    }
                    self.set_state(State::WaitingForJobs);
                    self.idle_since = Instant::now();
                    if !self.owed.is_empty() {
                        self.report_next_owed();
                    } else if was_owed {
                        // Only this agent's own job counts below.
                    } else if self.shared.cfg.disconnect_after_job {
                        log::info!("disconnect-after-job: the job is done, disconnecting");
                        return Some(ShutdownReason::JobFinished);
                    }
                }
                State::WaitingForJobs => {}
                state => log::warn!(
                    "wait-for-jobs while {}: ignored, the job is not over",
                    state.reported()
                ),
            },
            Action::Shutdown => {
                let reason = response.shutdown_reason;
                log::info!(
                    "the control plane asks to shut down (reason {})",
                    reason.hook_value()
                );
                return Some(reason);
            }
            Action::Unknown => log::warn!("unknown sync action; ignored"),
        }
        None
    }

    fn run_job(&mut self, job_id: &str) {
        if self.state != State::WaitingForJobs || self.job.is_some() {
            log::warn!("run-job {job_id} while {}: ignored", self.state.reported());
            return;
        }
        if self.interrupted_at != 0 {
            log::warn!("run-job {job_id} after an interruption: ignored");
            return;
        }
        if job_id.is_empty() {
            log::warn!("run-job without a job id: ignored");
            return;
        }
        log::info!("job {job_id}: the control plane asks to run it");
        let (stop, signal) = stop::stop_pair();
        let tx = self.tx.clone();
        let id = job_id.to_string();
        let notify = Box::new(move |event| {
            let _ = tx.send(Msg::Job(id.clone(), event));
        });
        let thread = worker::spawn(Arc::clone(&self.shared), job_id.to_string(), signal, notify);
        self.job = Some(CurrentJob {
            job_id: job_id.to_string(),
            stop,
            thread: Some(thread),
            dir: None,
            owed: None,
        });
        self.set_state(State::StartingJob);
    }

    fn stop_job(&mut self, reason: &str) {
        if let Some(job) = &self.job {
            job.stop.stop(reason);
            if matches!(self.state, State::StartingJob | State::RunningJob) {
                self.set_state(State::StoppingJob);
            }
        }
    }

    /// On the way out: a job still running is stopped, and its teardown and
    /// log flush get a bounded time.
    fn stop_job_and_wait(&mut self) {
        let Some(thread) = self.job.as_mut().and_then(|j| j.thread.take()) else {
            return;
        };
        let Some(job) = &self.job else { return };
        log::info!("job {}: stopping it before shutting down", job.job_id);
        job.stop.stop(STOP_BY_SHUTDOWN);
        let limits = &self.shared.cfg.limits;
        let deadline = Instant::now() + limits.stop_grace + limits.log_flush_timeout + STOP_MARGIN;
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(Msg::Job(id, JobEvent::Finished(result))) if id == job.job_id => {
                    log::info!("job {id}: {} before the shutdown", result.as_str());
                    let _ = thread.join();
                    return;
                }
                Ok(_) => {}
                Err(_) => {
                    log::error!(
                        "job {}: still tearing down at the shutdown deadline; exiting anyway",
                        job.job_id
                    );
                    return;
                }
            }
        }
    }

    /// Whether `job_id` names the current job (an empty id names any).
    fn is_current(&self, job_id: &str) -> bool {
        job_id.is_empty() || self.job.as_ref().is_some_and(|j| j.job_id == job_id)
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let timeout = self.shared.cfg.idle_timeout;
        (self.state == State::WaitingForJobs && !timeout.is_zero())
            .then(|| self.idle_since + timeout)
    }

    fn set_state(&mut self, state: State) {
        if state != self.state {
            let job = self
                .job
                .as_ref()
                .map(|j| format!(" (job {})", j.job_id))
                .unwrap_or_default();
            let result = match state {
                State::FinishedJob(r) => format!(", result {}", r.as_str()),
                _ => String::new(),
            };
            log::info!(
                "state: {} -> {}{job}{result}",
                self.state.reported(),
                state.reported()
            );
            self.state = state;
        }
    }
}

/// Stops the job when the interruption grace period is over, on a thread
/// of its own so that a sync waiting for its answer cannot delay it.
/// Dropping it cancels it.
struct GraceTimer {
    cancel: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GraceTimer {
    fn start(stop: StopHandle, grace: Duration) -> GraceTimer {
        let (cancel, cancelled) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("grace-timer".into())
            .spawn(move || {
                if cancelled.recv_timeout(grace) == Err(RecvTimeoutError::Timeout) {
                    log::info!("the interruption grace period is over: stopping the job");
                    stop.stop(STOP_BY_GRACE);
                }
            })
            .expect("cannot start the grace timer thread");
        GraceTimer {
            cancel: Some(cancel),
            thread: Some(thread),
        }
    }
}

impl Drop for GraceTimer {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// 3 to 6 s, jittered so that many agents do not sync in step.
fn default_interval() -> Duration {
    let (lo, hi) = DEFAULT_INTERVAL_MS;
    let random = u64::from_str_radix(&crate::util::random_hex(4), 16).unwrap_or(0);
    Duration::from_millis(lo + random % (hi - lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_interval_is_3_to_6_seconds() {
        for _ in 0..50 {
            let d = default_interval();
            assert!(
                d >= Duration::from_secs(3) && d < Duration::from_secs(6),
                "{d:?}"
            );
        }
    }

    #[test]
    fn reported_states() {
        assert_eq!(
            State::FinishedJob(JobResult::Stopped).reported(),
            AgentState::FinishedJob
        );
    }
}
