//! What `agent serve` does at start with the jobs an earlier agent left in
//! the data dir (docs/protocol.md §7.3). A job whose log has no
//! `job_finished` was cut short by a crash: every process carrying its mark
//! or left in its session (or below its subreaper, should that still run)
//! is killed, its compose project removed, its SSH keys and jump point
//! scripts (and a profile line of an older agent) taken away, its working
//! files (the env file with its secrets) deleted, and its log ended with a
//! line saying so and `job_finished` `failed`. The runner pool then knows
//! every earlier job as a finished one, sends the callbacks the crash
//! swallowed, and prunes old directories as it always does.
//!
//! Directories that a living agent holds (an `agent run`, another serve)
//! are locked (`workspace`) and left alone.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::executor::compose::project::{self, Project};
use crate::executor::jumppoint::{remove_legacy_profile_line, JumpPoint};
use crate::job::eventlog::{now_secs, Event, EventLog, JobResult, LogFiles};
use crate::job::lifecycle::{JUMP_POINT_DIR, JUMP_POINT_RECORD};
use crate::job::reopen::LogSummary;
use crate::job::workspace::{JobDir, JobRecord, RecordedExecutor};
use crate::process::procs::JobProcesses;

/// The remark on a job cut short by a crash (its log ends as any failed
/// job's, without a line of the agent's).
pub const RESTARTED: &str = "The agent was restarted while this job was running: the job was ended, its processes were killed and what it left on the host was removed.";

/// A directory without a record this old is an earlier agent's, not one
/// being created right now.
const UNRECORDED_AGE: Duration = Duration::from_secs(60);

/// A job of an earlier agent, now finished.
pub struct Earlier {
    pub dir: JobDir,
    pub record: JobRecord,
    pub files: Arc<LogFiles>,
    pub started_at: Option<u64>,
    pub finished_at: u64,
    pub result: JobResult,
    /// It was cut short: its callbacks are still owed.
    pub crashed: bool,
}

/// Takes over every job directory no living agent holds, oldest first.
pub fn recover_earlier(data_dir: &Path, home: &Path, grace: Duration) -> Vec<Earlier> {
    let jobs = data_dir.join("jobs");
    let Ok(entries) = fs::read_dir(&jobs) else {
        return Vec::new();
    };
    let mut earlier: Vec<Earlier> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| recover_one(&e.path(), home, grace))
        .collect();
    earlier.sort_by(|a, b| {
        (a.record.accepted_at, &a.dir.root).cmp(&(b.record.accepted_at, &b.dir.root))
    });
    let crashed = earlier.iter().filter(|e| e.crashed).count();
    if !earlier.is_empty() {
        log::info!(
            "took over {} job(s) of an earlier agent, {crashed} of them cut short",
            earlier.len()
        );
    }
    earlier
}

fn recover_one(root: &Path, home: &Path, grace: Duration) -> Option<Earlier> {
    let (dir, record) = JobDir::claim(root).or_else(|| record_unrecorded(root))?;
    if let Ok(Some((files, summary))) = LogFiles::finished_in(root) {
        // A teardown cut short may have left the working files.
        remove_work(&dir, &record);
        return finished(dir, record, Arc::new(files), summary);
    }
    let reopened = if root.join("events.jsonl").exists() {
        EventLog::reopen(root)
    } else {
        EventLog::create(root).map(|log| (log, LogSummary::default()))
    };
    let (mut log, summary) = match reopened {
        Ok(reopened) => reopened,
        Err(e) => {
            log::error!("cannot repair the log in {}: {e}", root.display());
            return None;
        }
    };
    if summary.finished.is_some() {
        remove_work(&dir, &record);
        return finished(dir, record, log.files(), summary);
    }
    log::warn!(
        "job {} was cut short by an earlier agent; cleaning up after it",
        record.job_id
    );
    clean_host(&dir, &record, home, grace);
    remove_work(&dir, &record);
    let now = now_secs();
    if summary.started_at.is_none() {
        log.write(&Event::JobStarted { timestamp: now });
    }
    log.close_after_failure(RESTARTED);
    let files = log.files();
    drop(log);
    Some(Earlier {
        dir,
        record,
        files,
        started_at: summary.started_at.or(Some(now)),
        finished_at: now,
        result: JobResult::Failed,
        crashed: true,
    })
}

/// The working files, and a user made for the job with what it left.
fn remove_work(dir: &JobDir, record: &JobRecord) {
    dir.remove_work();
    if let Some(account) = &record.account {
        crate::job::account::remove_recorded(account);
    }
}

fn finished(
    dir: JobDir,
    record: JobRecord,
    files: Arc<LogFiles>,
    summary: LogSummary,
) -> Option<Earlier> {
    let (result, finished_at) = summary.finished?;
    Some(Earlier {
        dir,
        record,
        files,
        started_at: summary.started_at,
        finished_at,
        result,
        crashed: false,
    })
}

/// A job directory of an agent that wrote no record (an older version):
/// it gets one, made from its name, so it is pruned and listed like the
/// others. Its processes cannot be found without the full job id.
fn record_unrecorded(root: &Path) -> Option<(JobDir, JobRecord)> {
    let meta = fs::symlink_metadata(root.join("events.jsonl")).ok()?;
    let modified = meta.modified().ok()?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age < UNRECORDED_AGE || root.join("job.json").exists() {
        return None;
    }
    let name = root.file_name()?.to_str()?;
    let (slug, _nonce) = name.rsplit_once('.')?;
    let accepted_at = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record = JobRecord::unrecorded(slug.to_string(), accepted_at);
    let path = root.join("job.json");
    let written = serde_json::to_vec(&record)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::util::write_private(&path, &bytes));
    if let Err(e) = written {
        log::warn!("cannot write {}: {e}", path.display());
        return None;
    }
    JobDir::claim(root)
}

/// Everything the job put on the host outside its directory.
fn clean_host(dir: &JobDir, record: &JobRecord, home: &Path, grace: Duration) {
    // Its subreaper, when it outlived the crash, is killing them too; once
    // they are gone it is ended as well.
    let processes = JobProcesses::recorded(&dir.work, &dir.mark);
    let left = processes.list();
    if !left.is_empty() {
        log::warn!("job {}: killing processes {left:?} it left", record.job_id);
        processes.kill_all(grace);
    }
    processes.kill_subreaper();
    match record.executor() {
        // A job of its own user had a Docker gate of its own.
        RecordedExecutor::Shell => {
            if record.account.is_some() {
                crate::dockergate::remove_objects(&dir.mark);
            }
        }
        RecordedExecutor::DockerCompose { main } => {
            // What the job created through its Docker gate goes first (a
            // container of its on the project's network would keep the
            // network), and what the project still held, after it.
            let complete = crate::dockergate::remove_objects(&dir.mark);
            down_project(dir, record, &main, grace);
            if !complete {
                crate::dockergate::remove_objects(&dir.mark);
            }
        }
    }
    // The jump point's keys are in the home of the user the job ran as,
    // and are taken out as that user, as they were put in.
    let user = record.account.as_ref().map(|account| {
        let found = account.find();
        if found.is_none() && !account.auto {
            log::warn!(
                "job {}: its user {} is gone or is no longer another user; any jump point keys \
                 it left in that user's authorized_keys stay",
                record.job_id,
                account.name
            );
        }
        found
    });
    let (keys_home, creds) = match &user {
        None => (Some(home), None),
        Some(Some(user)) => (Some(user.home.as_path()), Some(&user.creds)),
        Some(None) => (None, None),
    };
    drop(JumpPoint::left_behind(
        keys_home,
        creds,
        Path::new(JUMP_POINT_DIR),
        &record.job_id,
        &dir.work.join(JUMP_POINT_RECORD),
    ));
    remove_legacy_profile_line(home, &dir.work.join("env"));
}

/// Removes the job's compose project (containers, networks, volumes).
fn down_project(dir: &JobDir, record: &JobRecord, main: &str, grace: Duration) {
    let file = dir.work.join("docker-compose.yml");
    if !file.exists() {
        // The project is created from this file: without it, none exists.
        return;
    }
    let Some(tool) = project::detect() else {
        log::error!(
            "job {}: no compose tool found to remove its project",
            record.job_id
        );
        return;
    };
    let name = project::project_name(&record.job_id, dir.nonce());
    Project {
        tool,
        container: format!("{name}-{main}"),
        name,
        file,
        main: main.to_string(),
        work_dir: dir.work.clone(),
        docker_config: dir.work.join("docker-config"),
    }
    .cleanup(grace);
}
