//! A job's processes on this host, found by its AGENT_JOB_MARK: listing them, waiting for them, and asserting that none is left.

use super::*;

/// A process on the host that belongs to a job.
#[derive(Clone, Debug)]
pub struct JobProcess {
    pub pid: i32,
    pub cmdline: String,
    /// Its environment has `AGENT_JOB_MARK=<job_id>.…`.
    pub marked: bool,
    /// Its command line has the job's token.
    pub has_token: bool,
}

/// Every live process of the job, found by its mark or its token.
pub fn job_processes(job_id: &str) -> Vec<JobProcess> {
    let mark = format!("AGENT_JOB_MARK={job_id}.");
    let token = token_for(job_id);
    let own_pid = std::process::id() as i32;
    let mut found = Vec::new();
    for (pid, dir) in proc_dirs() {
        if pid == own_pid {
            continue;
        }
        // A zombie has already lost its memory; it is its parent's to reap.
        let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state == Some('Z') || state == Some('X') {
            continue;
        }
        let environ = fs::read(dir.join("environ")).unwrap_or_default();
        let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
        let marked = environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(mark.as_bytes()));
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let has_token = cmdline.contains(&token);
        if marked || has_token {
            found.push(JobProcess {
                pid,
                cmdline: cmdline.trim_end().to_owned(),
                marked,
                has_token,
            });
        }
    }
    found
}

/// Fails the test if a process of the job is still alive a few seconds after
/// the agent exited (killing them first, so one failure does not leak into
/// the rest of the suite).
pub fn assert_no_job_processes(job_id: &str) {
    let deadline = Instant::now() + LEFTOVER_TIMEOUT;
    loop {
        let left = job_processes(job_id);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            kill_job_processes(job_id);
            panic!("processes of job {job_id} are left after the agent exited: {left:#?}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

pub(crate) fn kill_job_processes(job_id: &str) {
    for process in job_processes(job_id) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid was
        // just seen carrying this job's mark or token.
        unsafe {
            libc::kill(process.pid, libc::SIGKILL);
        }
    }
}

/// A shell snippet that leaves long-running processes of every kind the
/// agent must clean up: plain and `setsid` background jobs, and an orphaned
/// grandchild. Those whose command line carries the job's token are the ones
/// `job_processes` can also find without the mark.
pub fn background_processes(job_id: &str) -> String {
    let token = token_for(job_id);
    format!(
        "sleep 1000 &\n\
         setsid sleep 1000 &\n\
         bash -c 'sleep 1000; : {token}' &\n\
         setsid bash -c 'sleep 1000; : {token}' &\n\
         ( bash -c 'sleep 1000; : {token}' & )\n"
    )
}

/// How many processes with the token `background_processes` starts.
pub const N_TOKEN_PROCESSES: usize = 3;
/// How many `sleep 1000` it starts: plain, `setsid`, and one under each token
/// process.
pub const N_SLEEPS: usize = 2 + N_TOKEN_PROCESSES;

/// Waits until the processes of `background_processes` are all running, and
/// checks that the two ways of finding them agree: every token process also
/// carries the job's mark.
pub fn wait_for_background_processes(job_id: &str) {
    wait_until(
        "the background processes of the job",
        Duration::from_secs(10),
        || {
            let processes = job_processes(job_id);
            let n_tokens = processes.iter().filter(|p| p.has_token).count();
            let n_sleeps = processes
                .iter()
                .filter(|p| p.cmdline == "sleep 1000")
                .count();
            n_tokens >= N_TOKEN_PROCESSES && n_sleeps >= N_SLEEPS
        },
    );
    // Processes with the token as their name (`escapee`) drop the mark on
    // purpose.
    let token = token_for(job_id);
    let processes = job_processes(job_id);
    let unmarked: Vec<&JobProcess> = processes
        .iter()
        .filter(|p| !p.marked && !p.cmdline.starts_with(&token))
        .collect();
    assert!(
        unmarked.is_empty(),
        "processes of job {job_id} without AGENT_JOB_MARK=<job_id>.: {unmarked:#?}"
    );
}

/// A shell snippet that starts, in the background, a process that does
/// everything it can to leave its job: it drops `AGENT_JOB_MARK`, leaves the
/// job's session (`setsid`) and holds no terminal. Its command line carries
/// the job's token (as its `argv[0]`), the only way left to find it. With
/// `stubborn`, it also ignores TERM, HUP and INT.
pub fn escapee(job_id: &str, stubborn: bool) -> String {
    let traps = if stubborn {
        "trap \"\" TERM HUP INT; "
    } else {
        ""
    };
    format!(
        "setsid env -u AGENT_JOB_MARK bash -c '{traps}exec -a {token} sleep 600' </dev/null >/dev/null 2>&1 &\n",
        token = token_for(job_id)
    )
}

/// Waits until the process of `escapee` runs, and checks that it did leave
/// its job every way a process can: no mark, a session of its own, no
/// terminal. Returns its pid.
pub fn wait_for_escapee(job_id: &str) -> i32 {
    let token = token_for(job_id);
    let find = || {
        job_processes(job_id)
            .into_iter()
            .find(|p| p.cmdline == format!("{token} 600"))
    };
    wait_until("the escaped process", Duration::from_secs(10), || {
        find().is_some()
    });
    let escapee = find().expect("the escaped process");
    assert!(!escapee.marked, "it still carries the mark: {escapee:?}");
    let stat = fs::read_to_string(format!("/proc/{}/stat", escapee.pid)).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the state: ppid, pgrp, session, tty_nr.
    assert_eq!(
        (fields.get(3).copied(), fields.get(4).copied()),
        (Some(escapee.pid.to_string().as_str()), Some("0")),
        "not the leader of a session of its own without a terminal: {stat}"
    );
    escapee.pid
}

/// Every process whose real or effective user is `uid`, as `PID ARGS`,
/// read from /proc (a user removed meanwhile has no name to look for).
pub fn processes_of_uid(uid: u32) -> Vec<String> {
    uid_processes(uid)
        .map(|(pid, dir)| {
            let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
            let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            format!("{pid} {}", args.trim_end())
        })
        .collect()
}

/// Kills (SIGKILL) every process of `uid`.
pub fn kill_processes_of_uid(uid: u32) {
    for (pid, _) in uid_processes(uid) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid was
        // just seen running as `uid`.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The processes whose real or effective user is `uid`.
fn uid_processes(uid: u32) -> impl Iterator<Item = (i32, PathBuf)> {
    proc_dirs().filter(move |(_, dir)| {
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        // `Uid:` real, effective, saved, file system.
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| {
                ids.split_whitespace()
                    .take(2)
                    .any(|id| id.parse() == Ok(uid))
            })
    })
}

/// Each process's pid and /proc directory.
fn proc_dirs() -> impl Iterator<Item = (i32, PathBuf)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            Some((pid, entry.path()))
        })
}
