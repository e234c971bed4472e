//! `--job-user`: the user a shell job runs as when it must not be the
//! agent's own (README, "What a job can read"). Either a fixed user of the
//! host, shared by every job, or `auto`: a fresh system user per job, made
//! with `useradd` when the job is accepted (its name in `job.json` first,
//! so that an agent restarted after a crash can remove it) and removed with
//! its home and its files in the world-writable directories when the job
//! ends (`userdel`, which can then give its uid to a later job).
//!
//! This module owns the accounts; what runs as them is the session's
//! (`process::session`), and what the agent writes on their behalf is done
//! through `sys::ActingAs`.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::process::hostcmd;
use crate::process::sys::{self, Credentials};

/// The value of `--job-user` that makes a user per job.
pub const AUTO: &str = "auto";
/// The job user's own directory in the job's work dir: its TMPDIR, where
/// its cache socket also is.
pub const JOB_TMP: &str = "tmp";
/// The prefix of the users `auto` makes; the rest is the job's nonce.
const AUTO_PREFIX: &str = "agent-job-";
/// Where a user's files may be left that are not in its home: swept when
/// an `auto` user is removed, so that a later user with its uid finds none.
const WORLD_WRITABLE: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];
/// The most entries of each such directory looked at when sweeping.
const SWEEP_LIMIT: usize = 100_000;
/// How often `useradd` or `userdel` is tried (about 13 s in all, while
/// other programs take turns with the user database's lock).
const ACCOUNT_ATTEMPTS: u32 = 30;
/// How long `useradd` and `userdel` may take.
const ACCOUNT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent's `--job-user` setting, checked at start.
#[derive(Debug, Clone)]
pub enum JobUser {
    /// Every job runs as this existing user.
    Named {
        entry: sys::UserEntry,
        groups: Vec<u32>,
    },
    /// Every job gets a user of its own.
    Auto,
}

/// What `job.json` says of a job's user, for the agent that cleans up
/// after a crash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountRecord {
    pub name: String,
    /// Made for the job (and to be removed with it).
    pub auto: bool,
}

impl AccountRecord {
    /// The recorded user as the user database has it now, for an agent
    /// cleaning up after a crash: None when it is gone, or is now root or
    /// the agent's own user (whose files the job's user never wrote).
    pub fn find(&self) -> Option<JobAccount> {
        let entry = sys::user_by_name(&self.name).ok().flatten()?;
        if !is_another_user(entry.uid) {
            return None;
        }
        let groups = sys::groups_of(&entry.name, entry.gid).ok()?;
        Some(JobAccount::of(entry, groups, self.auto))
    }
}

/// Whether jobs may run as `uid`: neither root nor the agent's own user.
fn is_another_user(uid: u32) -> bool {
    uid != 0 && uid != sys::effective_uid()
}

/// The user one job runs as.
#[derive(Debug, Clone)]
pub struct JobAccount {
    pub name: String,
    pub creds: Credentials,
    pub home: PathBuf,
    auto: bool,
}

impl JobUser {
    /// Checks a `--job-user` value: `auto` (which needs root and
    /// `useradd`), or the name of a user that exists and is neither root
    /// nor the agent's own.
    pub fn parse(value: &str) -> Result<JobUser, Error> {
        let bad = |reason: String| Error::JobUser(format!("--job-user {value:?}: {reason}"));
        if sys::effective_uid() != 0 {
            return Err(bad(
                "running jobs as another user needs the agent to run as root".into(),
            ));
        }
        if value == AUTO {
            for tool in ["useradd", "userdel"] {
                if find_tool(tool).is_none() {
                    return Err(bad(format!(
                        "`{tool}` is not installed (Debian: apt-get install passwd)"
                    )));
                }
            }
            return Ok(JobUser::Auto);
        }
        let entry = sys::user_by_name(value)
            .map_err(|e| bad(format!("cannot read the user database: {e}")))?
            .ok_or_else(|| bad("no such user".into()))?;
        if !is_another_user(entry.uid) {
            return Err(bad(
                "jobs must not run as root or as the agent's user".into()
            ));
        }
        let groups = sys::groups_of(&entry.name, entry.gid)
            .map_err(|e| bad(format!("cannot read its groups: {e}")))?;
        Ok(JobUser::Named { entry, groups })
    }

    /// The agent's `--job-user` for jobs under `data_dir`, checked at start.
    pub fn from_setting(value: Option<&str>, data_dir: &Path) -> Result<Option<JobUser>, Error> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let user = JobUser::parse(value)?;
        JobUser::check_reachable(data_dir)?;
        match &user {
            JobUser::Auto => log::info!("shell jobs run as a user of their own (--job-user auto)"),
            JobUser::Named { entry, .. } => log::info!(
                "shell jobs run as {} (uid {}); jobs that run at once share that user",
                entry.name,
                entry.uid
            ),
        }
        Ok(Some(user))
    }

    /// Whether the jobs' user could reach `dir` (every directory above it
    /// searchable by others), as it must reach its job's working files.
    pub fn check_reachable(dir: &Path) -> Result<(), Error> {
        let mut at = Some(dir);
        while let Some(d) = at {
            if let Ok(meta) = fs::metadata(d) {
                if meta.mode() & 0o001 == 0 && d != dir {
                    return Err(Error::JobUser(format!(
                        "--job-user: the jobs' user cannot reach the data dir {}: {} is not searchable by other users (chmod o+x it, or choose a data dir such as /var/lib/agent)",
                        dir.display(),
                        d.display()
                    )));
                }
            }
            at = d.parent();
        }
        Ok(())
    }

    /// What the record of the job whose directory has this nonce says of
    /// its user: the named user, or the new one's name before it exists.
    pub fn record_for(&self, nonce: &str) -> AccountRecord {
        match self {
            JobUser::Named { entry, .. } => AccountRecord {
                name: entry.name.clone(),
                auto: false,
            },
            JobUser::Auto => AccountRecord {
                name: format!("{AUTO_PREFIX}{nonce}"),
                auto: true,
            },
        }
    }

    /// The job's user as `record_for` named it, once that is recorded: the
    /// named user, or a new one made now.
    pub fn make(&self, record: &AccountRecord) -> Result<JobAccount, Error> {
        match self {
            JobUser::Named { entry, groups } => {
                Ok(JobAccount::of(entry.clone(), groups.clone(), false))
            }
            JobUser::Auto => make_auto(&record.name),
        }
    }
}

fn make_auto(name: &str) -> Result<JobAccount, Error> {
    let home = Path::new("/home").join(name);
    let useradd = || {
        let mut cmd = Command::new(find_tool("useradd").unwrap_or("useradd".into()));
        // HOME_MODE: the home is made 0700 (login.defs says 0755 on
        // Debian), so no other job's user ever sees it open.
        cmd.args([
            "--system",
            "--user-group",
            "--create-home",
            "--key",
            "HOME_MODE=0700",
            "--shell",
        ])
        .arg("/bin/bash")
        .arg("--home-dir")
        .arg(&home)
        .arg(name);
        cmd
    };
    run_account_command(useradd, "useradd")?;
    let entry = sys::user_by_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| Error::JobUser(format!("the user {name} made for the job is not there")))?;
    // A useradd without HOME_MODE makes the home as login.defs says (0755
    // on Debian): the users of other jobs must not read it.
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&entry.home, fs::Permissions::from_mode(0o700)).map_err(|e| {
            Error::JobUser(format!(
                "cannot close {} to other users: {e}",
                entry.home.display()
            ))
        })?;
    }
    let groups = vec![entry.gid];
    Ok(JobAccount::of(entry, groups, true))
}

/// Where `tool` is: on PATH, or in the system directories a service's
/// PATH may lack.
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// One `useradd` or `userdel` of this agent at a time: each locks the user
/// database and fails at once, rather than wait, when another holds it.
static ACCOUNT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `make_cmd()`'s command; when it fails (another program may hold
/// the user database's lock), again after a pause, a bounded number of
/// times.
fn run_account_command(make_cmd: impl Fn() -> Command, tool: &str) -> Result<(), Error> {
    let _turn = ACCOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = std::time::Instant::now() + ACCOUNT_COMMAND_TIMEOUT;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let out =
            hostcmd::run_bounded(make_cmd(), b"", deadline, &|| false, 64 * 1024).map_err(|e| {
                Error::Spawn {
                    program: tool.into(),
                    source: e,
                }
            })?;
        let failure = match out.ended {
            hostcmd::Ended::Exited(status) if status.success() => return Ok(()),
            ended => format!(
                "{tool} failed ({ended:?}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        };
        if attempt >= ACCOUNT_ATTEMPTS || std::time::Instant::now() >= deadline {
            return Err(Error::JobUser(failure));
        }
        log::debug!("{failure}; trying again");
        std::thread::sleep(Duration::from_millis((50 * attempt as u64).min(500)));
    }
}

impl JobAccount {
    /// The user of `entry`, with its `groups`; `auto` when made for the job.
    fn of(entry: sys::UserEntry, groups: Vec<u32>, auto: bool) -> JobAccount {
        JobAccount {
            name: entry.name,
            creds: Credentials {
                uid: entry.uid,
                gid: entry.gid,
                groups,
            },
            home: entry.home,
            auto,
        }
    }

    /// The environment that names the user to its programs, and its own
    /// temporary directory in `work_dir` (the agent's TMPDIR is not its).
    pub fn env(&self, work_dir: &Path) -> Vec<(String, String)> {
        vec![
            ("HOME".into(), self.home.to_string_lossy().into_owned()),
            ("USER".into(), self.name.clone()),
            ("LOGNAME".into(), self.name.clone()),
            (
                "TMPDIR".into(),
                work_dir.join(JOB_TMP).to_string_lossy().into_owned(),
            ),
        ]
    }

    /// Makes the user's own directory in `work_dir` (`JOB_TMP`).
    pub fn make_own_dir(&self, work_dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = work_dir.join(JOB_TMP);
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::os::unix::fs::chown(&dir, Some(self.creds.uid), Some(self.creds.gid))
    }

    /// Removes a user made for the job, once its session is gone: what is
    /// left of its processes, its files in the world-writable directories,
    /// then the user with its home. A named user stays as it is.
    pub fn remove(&self) {
        if self.auto {
            remove_auto(&self.name);
        }
    }
}

/// Removes what an `auto` user left and the user itself (also for an agent
/// cleaning up after a crash, which knows the user by its record).
pub fn remove_recorded(record: &AccountRecord) {
    if !record.auto || !record.name.starts_with(AUTO_PREFIX) {
        return;
    }
    remove_auto(&record.name);
}

/// Removes a user `auto` made, if it is still there (a removal that failed
/// is tried again when its job's directory is pruned or recovered): its
/// processes, its files in the world-writable directories, the user and
/// its home. Its uid is the one the user database gives now, never one
/// remembered, which a later user may have been given.
fn remove_auto(name: &str) {
    let Some(uid) = sys::user_by_name(name)
        .ok()
        .flatten()
        .map(|e| e.uid)
        .filter(|&uid| uid != 0)
    else {
        return;
    };
    kill_processes_of(uid);
    for dir in WORLD_WRITABLE {
        if let Err(e) = sweep(Path::new(dir), uid) {
            log::warn!("cannot sweep {dir} of the files of {name}: {e}");
        }
    }
    let userdel = || {
        let mut cmd = Command::new(find_tool("userdel").unwrap_or("userdel".into()));
        cmd.args(["--force", "--remove", name]);
        cmd
    };
    match run_account_command(userdel, "userdel") {
        Ok(()) => log::debug!("removed the job user {name}"),
        Err(e) => log::error!("cannot remove the job user {name}: {e}"),
    }
}

/// Kills every process of `uid` (a user made for one job has no others).
fn kill_processes_of(uid: u32) {
    for _ in 0..10 {
        let pids = processes_of(uid);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            sys::kill(pid, sys::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    log::warn!("processes of uid {uid} survived SIGKILL");
}

fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let meta = fs::metadata(e.path()).ok()?;
            (meta.uid() == uid).then_some(pid)
        })
        .collect()
}

/// Removes the entries of `dir` that belong to `uid`, directories whole.
fn sweep(dir: &Path, uid: u32) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.take(SWEEP_LIMIT).flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() != uid {
            continue;
        }
        let removed = if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = removed {
            log::warn!("cannot remove {}: {e}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auto_user_is_named_after_the_job_directory() {
        let record = JobUser::Auto.record_for("0a1b2c");
        assert_eq!(
            record,
            AccountRecord {
                name: "agent-job-0a1b2c".into(),
                auto: true
            }
        );
    }

    #[test]
    fn a_recorded_user_not_made_by_the_agent_is_never_removed() {
        // Neither a named user nor a name the agent does not make.
        remove_recorded(&AccountRecord {
            name: "root".into(),
            auto: true,
        });
        remove_recorded(&AccountRecord {
            name: "agent-job-x".into(),
            auto: false,
        });
        assert!(sys::user_by_name("root").unwrap().is_some());
    }
}
