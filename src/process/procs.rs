//! Finding and killing every process of a job.
//!
//! A job's processes are found three ways, each covering what the others
//! may miss. The job's session runs under a subreaper of its own
//! (`reaper`), which adopts every orphan among its descendants: a process
//! that left the session, dropped the mark and gave up its terminal is
//! still below it. The session's processes share its session id. And every
//! process the agent starts for the job, host commands included, carries
//! the job's mark in its environment (`AGENT_JOB_MARK`), which its
//! descendants inherit unless they drop it.
//!
//! A later agent, after a crash, finds the session and the subreaper again
//! from a record in the job's work dir (`record`, `recorded`), as long as
//! they are still the processes that were recorded.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::process::sys;

/// The environment variable every process of a job inherits.
pub const MARK_VAR: &str = "AGENT_JOB_MARK";
/// The name (`argv[0]`, and the process name `ps` shows) under which the
/// agent's binary is a job's subreaper (`reaper`). No command of the CLI.
pub const REAPER_NAME: &str = "agent-subreaper";

/// The file in a job's work dir that records its session and subreaper.
pub const RECORD_FILE: &str = "processes.json";

/// What identifies a job's processes.
#[derive(Debug, Clone)]
pub struct JobProcesses {
    /// The session id: the pid of the job's bash (or compose client).
    pub session: i32,
    /// Only a process started at or after this moment (clock ticks after
    /// boot) belongs to `session`: a recorded session's number may have
    /// been given to another session since the job's processes ended.
    session_since: u64,
    /// `AGENT_JOB_MARK=<value>` as it appears in /proc/<pid>/environ.
    pub mark_entry: Vec<u8>,
    /// The job's subreaper: every process below it is the job's. It is
    /// itself never listed, so that it lives on to reap what is killed.
    pub subreaper: Option<i32>,
}

/// What the agent reads of a process in /proc/<pid>/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Its command name (`comm`) is `REAPER_NAME`.
    named_subreaper: bool,
    state: char,
    ppid: i32,
    session: i32,
    /// Clock ticks after boot.
    start_time: u64,
}

/// A process as recorded for a later agent: a pid alone may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    pid: i32,
    start_time: u64,
}

/// The content of `RECORD_FILE`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// Start times count from boot: after a reboot they mean nothing.
    boot_id: String,
    session: Stamp,
    subreaper: Stamp,
}

impl JobProcesses {
    pub fn new(session: i32, mark: &str) -> JobProcesses {
        JobProcesses {
            session,
            session_since: 0,
            mark_entry: format!("{MARK_VAR}={mark}").into_bytes(),
            subreaper: None,
        }
    }

    /// The processes carrying `mark` only: those of a job whose session
    /// leader is gone (an agent that crashed).
    pub fn marked(mark: &str) -> JobProcesses {
        // No process has session id -1.
        JobProcesses::new(-1, mark)
    }

    /// Also every process below `subreaper`, the job's subreaper.
    pub fn with_subreaper(mut self, subreaper: i32) -> JobProcesses {
        self.subreaper = Some(subreaper);
        self
    }

    /// Records the session and the subreaper in `dir`, for an agent that
    /// takes over the job after a crash (`recorded`).
    pub fn record(&self, dir: &Path) -> io::Result<()> {
        let stamp = |pid: i32| {
            stat_of(pid)
                .map(|stat| Stamp {
                    pid,
                    start_time: stat.start_time,
                })
                .ok_or_else(|| io::Error::other(format!("process {pid} is gone")))
        };
        let subreaper = self
            .subreaper
            .ok_or_else(|| io::Error::other("the job has no subreaper"))?;
        let record = Record {
            boot_id: boot_id()?,
            session: stamp(self.session)?,
            subreaper: stamp(subreaper)?,
        };
        let text = serde_json::to_vec(&record).map_err(io::Error::other)?;
        crate::util::write_private(&dir.join(RECORD_FILE), &text)
    }

    /// The processes of a job whose agent is gone: those carrying `mark`;
    /// with a record in `dir` made since the last boot, also those of its
    /// session and, while its subreaper still runs, those below it.
    pub fn recorded(dir: &Path, mark: &str) -> JobProcesses {
        let mut processes = JobProcesses::marked(mark);
        let record = fs::read(dir.join(RECORD_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok());
        let Some(record) = record.filter(|r| boot_id().is_ok_and(|id| id == r.boot_id)) else {
            return processes;
        };
        let now = |pid: i32| stat_of(pid).map(|stat| stat.start_time);
        // A session outlives its leader; but a leader's pid that now
        // belongs to another process means the number was reused.
        match now(record.session.pid) {
            Some(start) if start != record.session.start_time => {}
            _ => {
                processes.session = record.session.pid;
                processes.session_since = record.session.start_time;
            }
        }
        if now(record.subreaper.pid) == Some(record.subreaper.start_time) {
            processes.subreaper = Some(record.subreaper.pid);
        }
        processes
    }

    /// The live (non-zombie) processes of the job, the agent itself and the
    /// subreaper excluded.
    pub fn list(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        // The agent: this process, or the parent of this subreaper.
        let agent = if self.subreaper == Some(me) {
            std::os::unix::process::parent_id() as i32
        } else {
            me
        };
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let stats: Vec<(i32, Stat)> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| Some((pid, stat_of(pid)?)))
            .collect();
        let parents: HashMap<i32, i32> = match self.subreaper {
            Some(_) => stats.iter().map(|(pid, stat)| (*pid, stat.ppid)).collect(),
            None => HashMap::new(),
        };
        stats
            .iter()
            .filter(|(pid, _)| *pid != me && Some(*pid) != self.subreaper)
            // Another subreaper of the agent (one of a compose job's host
            // setup commands) ends what is below it when its own holder
            // tells it to; killed here, it would leave that to init. No
            // process of a job is a child of the agent: orphans go to
            // their subreaper, and a process named so below a subreaper is
            // the job's like any other.
            .filter(|(_, stat)| !(stat.ppid == agent && stat.named_subreaper))
            .filter(|(pid, stat)| self.owns(*pid, stat, &parents))
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn owns(&self, pid: i32, stat: &Stat, parents: &HashMap<i32, i32>) -> bool {
        if stat.state == 'Z' || stat.state == 'X' {
            return false;
        }
        if stat.session == self.session && stat.start_time >= self.session_since {
            return true;
        }
        if let Some(subreaper) = self.subreaper {
            if descends_from(pid, subreaper, parents) {
                return true;
            }
        }
        match fs::read(format!("/proc/{pid}/environ")) {
            Ok(env) => env
                .split(|b| *b == 0)
                .any(|entry| entry == self.mark_entry.as_slice()),
            Err(_) => false,
        }
    }

    /// SIGTERM (and SIGHUP, which an interactive bash does not ignore) to
    /// every process, then SIGKILL to whatever is left after `grace`.
    /// Returns once no process of the job is left, or after a bounded time.
    pub fn kill_all(&self, grace: Duration) {
        let started = Instant::now();
        let mut pids = self.list();
        for &pid in &pids {
            signal(pid, sys::SIGTERM);
            signal(pid, sys::SIGHUP);
            signal(pid, sys::SIGCONT);
        }
        while !pids.is_empty() && started.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(10));
            pids = self.list();
        }
        // New processes may be forked while we kill: repeat, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pids.is_empty() && Instant::now() < deadline {
            for &pid in &pids {
                signal(pid, sys::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
            pids = self.list();
        }
        if !pids.is_empty() {
            log::error!("processes {pids:?} of a stopped job could not be killed");
        }
    }

    /// Kills the subreaper of a job whose agent is gone, once what was
    /// below it is killed (`recorded`; the agent's own subreapers end when
    /// told to).
    pub fn kill_subreaper(&self) {
        if let Some(pid) = self.subreaper {
            signal(pid, sys::SIGKILL);
        }
    }
}

/// Whether `ancestor` is among the parents of `pid`, as `parents` (pid to
/// parent pid, read from /proc) has them.
fn descends_from(pid: i32, ancestor: i32, parents: &HashMap<i32, i32>) -> bool {
    let mut current = pid;
    // Bounded: a snapshot read while processes come and go might hold a
    // cycle through a reused pid.
    for _ in 0..parents.len() {
        match parents.get(&current) {
            Some(&parent) if parent == ancestor => return true,
            Some(&parent) if parent > 0 => current = parent,
            _ => return false,
        }
    }
    false
}

fn signal(pid: i32, sig: i32) {
    sys::kill(pid, sig);
}

/// This boot's identity, so that a record from before a reboot is ignored.
fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// What /proc/<pid>/stat says of a process, None once it is gone.
fn stat_of(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The fields the agent needs from the text of a /proc/<pid>/stat file. The
/// command name may contain spaces and parentheses, so fields are counted
/// after the last ')'.
fn parse_stat(stat: &str) -> Option<Stat> {
    let close = stat.rfind(')')?;
    let named_subreaper = stat[..close].split_once('(')?.1 == REAPER_NAME;
    let rest = &stat[close + 1..];
    // Field 3 (the state) onwards.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        named_subreaper,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        // Field 22.
        start_time: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, ExitStatus};

    /// Polls `condition` for at most 10 s.
    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reaps `child` if it exits within 10 s.
    fn wait_bounded(child: &mut Child) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A marked bash running `script` in a process group of its own, and the
    /// job that owns it by its mark only.
    fn marked_bash(name: &str, script: &str) -> (Child, JobProcesses) {
        let mark = format!("{name}-{}", std::process::id());
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env(MARK_VAR, &mark)
            .process_group(0)
            .spawn()
            .unwrap();
        (child, JobProcesses::new(-1, &mark))
    }

    #[test]
    fn finds_and_kills_marked_processes_that_left_the_session() {
        let mark = format!("test-{}", std::process::id());
        // The child calls setsid, so only the mark finds it.
        let mut child = Command::new("sleep")
            .arg("1000")
            .env(MARK_VAR, &mark)
            .process_group(0)
            .spawn()
            .unwrap();
        let job = JobProcesses::new(-1, &mark);
        wait_until("the marked process", || {
            job.list().contains(&(child.id() as i32))
        });
        let killer = std::thread::spawn(move || job.kill_all(Duration::from_secs(2)));
        let status = wait_bounded(&mut child).expect("the marked process was killed");
        killer.join().unwrap();
        assert!(!status.success());
    }

    #[test]
    fn only_live_processes_of_the_job_are_listed() {
        // Neither marked nor in the job's session.
        let mut stranger = Command::new("sleep").arg("1000").spawn().unwrap();
        let (mut marked, job) = marked_bash("listed", "sleep 1000");
        wait_until("the marked process", || {
            job.list().contains(&(marked.id() as i32))
        });
        assert!(!job.list().contains(&(stranger.id() as i32)));
        // A process of this test's own session that has exited and is not
        // reaped yet: a zombie is not a live process of the session.
        let me = std::process::id() as i32;
        let session = stat_of(me).unwrap().session;
        let mut zombie = Command::new("true").spawn().unwrap();
        let zombie_pid = zombie.id() as i32;
        wait_until("the zombie", || {
            stat_of(zombie_pid).is_some_and(|stat| stat.state == 'Z')
        });
        let own_session = JobProcesses::new(session, "no-such-mark");
        let listed = own_session.list();
        assert!(listed.contains(&(stranger.id() as i32)), "{listed:?}");
        assert!(!listed.contains(&zombie_pid), "{listed:?}");
        zombie.wait().unwrap();
        for child in [&mut stranger, &mut marked] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn a_job_found_by_its_mark_has_no_session_of_its_own() {
        // `marked` is for a job whose bash is gone: it must match no session,
        // not the one of these tests (pid 1 of a namespace of its own under
        // `make mutants`, so session 1) nor the machine init's.
        let mut stranger = Command::new("sleep").arg("1000").spawn().unwrap();
        let mark = format!("by-mark-{}", std::process::id());
        let mut marked = Command::new("sleep")
            .arg("1000")
            .env(MARK_VAR, &mark)
            .process_group(0)
            .spawn()
            .unwrap();
        let job = JobProcesses::marked(&mark);
        wait_until("the marked process", || {
            job.list().contains(&(marked.id() as i32))
        });
        let listed = job.list();
        for child in [&mut stranger, &mut marked] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        assert_eq!(listed, [marked.id() as i32]);
    }

    #[test]
    fn a_process_that_cleans_up_on_term_gets_the_time_to() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("cleaned-up");
        let script = format!(
            "trap 'sleep 0.3; touch {}; exit 0' TERM HUP; sleep 1000 & wait",
            done.display()
        );
        let (mut child, job) = marked_bash("graceful", &script);
        wait_until("the marked sleep", || job.list().len() == 2);
        let started = Instant::now();
        job.kill_all(Duration::from_secs(30));
        // Done as soon as the processes are gone, not after the grace period.
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(done.exists(), "SIGKILL came before the clean-up ended");
        assert!(wait_bounded(&mut child).is_some());
        assert!(job.list().is_empty());
    }

    #[test]
    fn a_process_that_ignores_term_and_hup_is_killed_after_the_grace_period() {
        let (mut child, job) = marked_bash("stubborn", "trap '' TERM HUP INT; sleep 1000; :");
        wait_until("the marked sleep", || job.list().len() == 2);
        let (done, returned) = std::sync::mpsc::channel();
        let killer = job.clone();
        std::thread::spawn(move || {
            killer.kill_all(Duration::from_millis(200));
            let _ = done.send(());
        });
        if returned.recv_timeout(Duration::from_secs(5)).is_err() {
            sys::kill(-(child.id() as i32), sys::SIGKILL);
            panic!("kill_all did not return within 5 s of a 200 ms grace period");
        }
        let status = wait_bounded(&mut child).expect("the stubborn bash was killed");
        assert_eq!(status.signal(), Some(sys::SIGKILL));
        assert!(job.list().is_empty());
    }

    #[test]
    fn stat_lines_with_odd_names_parse_to_the_right_fields() {
        // pid (comm) state ppid pgrp session tty_nr tpgid flags minflt
        // cminflt majflt cmajflt utime stime cutime cstime priority nice
        // num_threads itrealvalue starttime ...
        let tail = "0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0";
        let lines = [
            (
                format!("4242 (a) b (c) S 1 4242 4242 {tail} 777 1"),
                ('S', 1, 4242),
            ),
            (format!("17 ()) R 16 16 15 {tail} 777"), ('R', 16, 15)),
            (format!("9 (sleep) Z 8 7 6 {tail} 777 5 6"), ('Z', 8, 6)),
            (format!("31 ( ) ) D 2 3 5 {tail} 777"), ('D', 2, 5)),
            (
                format!("40 (agent-subreaper) S 2 3 5 {tail} 777"),
                ('S', 2, 5),
            ),
        ];
        for (line, (state, ppid, session)) in lines {
            let expected = Stat {
                named_subreaper: line.contains("(agent-subreaper)"),
                state,
                ppid,
                session,
                start_time: 777,
            };
            assert_eq!(parse_stat(&line), Some(expected), "{line}");
        }
        assert_eq!(parse_stat("12 (no closing parenthesis S 1 2 3"), None);
        assert_eq!(parse_stat("12 (short) S 1 2 3"), None);
        assert_eq!(parse_stat(&format!("12 (nan) S 1 2 x {tail} 777")), None);
    }

    #[test]
    fn descendants_are_found_through_any_number_of_parents() {
        let parents: HashMap<i32, i32> =
            [(10, 1), (11, 10), (12, 11), (13, 12), (20, 1), (30, 0)].into();
        assert!(descends_from(13, 10, &parents));
        assert!(descends_from(11, 10, &parents));
        assert!(!descends_from(10, 10, &parents));
        assert!(!descends_from(20, 10, &parents));
        assert!(!descends_from(30, 10, &parents));
        assert!(!descends_from(99, 10, &parents));
        // A snapshot with a cycle ends.
        let cycle: HashMap<i32, i32> = [(5, 6), (6, 5)].into();
        assert!(!descends_from(5, 10, &cycle));
    }

    #[test]
    fn a_process_that_left_the_session_and_the_mark_is_found_below_its_subreaper() {
        // This test process stands in for the subreaper: a bash child
        // starts a grandchild that drops the mark and leaves the session.
        let mark = format!("below-{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut parent = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "setsid env -u {MARK_VAR} sleep 1000 & echo $! > {}; wait",
                pid_file.display()
            ))
            .env(MARK_VAR, &mark)
            .process_group(0)
            .spawn()
            .unwrap();
        wait_until("the grandchild", || {
            fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
        });
        let grandchild: i32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Until `env` has exec'd `sleep`, the environment still has the mark.
        wait_until("the grandchild's sleep", || {
            fs::read(format!("/proc/{grandchild}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
        });
        let by_mark = JobProcesses::marked(&mark);
        let below = JobProcesses::marked(&mark).with_subreaper(std::process::id() as i32);
        let (by_mark_list, below_list) = (by_mark.list(), below.list());
        sys::kill(grandchild, sys::SIGKILL);
        parent.kill().unwrap();
        parent.wait().unwrap();
        assert!(!by_mark_list.contains(&grandchild), "{by_mark_list:?}");
        assert!(below_list.contains(&grandchild), "{below_list:?}");
        assert!(below_list.contains(&(parent.id() as i32)), "{below_list:?}");
    }

    #[test]
    fn a_record_finds_the_session_and_the_subreaper_while_they_are_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = Command::new("setsid")
            .arg("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let mut subreaper = Command::new("sleep").arg("1000").spawn().unwrap();
        let (leader_pid, subreaper_pid) = (leader.id() as i32, subreaper.id() as i32);
        wait_until("the session leader", || {
            stat_of(leader_pid).is_some_and(|stat| stat.session == leader_pid)
        });
        JobProcesses::new(leader_pid, "recorded")
            .with_subreaper(subreaper_pid)
            .record(dir.path())
            .unwrap();
        let found = JobProcesses::recorded(dir.path(), "recorded");
        assert_eq!(
            (found.session, found.subreaper),
            (leader_pid, Some(subreaper_pid))
        );
        assert!(found.list().contains(&leader_pid));
        // Another process under a recorded pid is not the job's.
        let text = fs::read_to_string(dir.path().join(RECORD_FILE)).unwrap();
        let mut record: Record = serde_json::from_str(&text).unwrap();
        record.session.start_time += 1;
        record.subreaper.start_time += 1;
        fs::write(
            dir.path().join(RECORD_FILE),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let other = JobProcesses::recorded(dir.path(), "recorded");
        assert_eq!((other.session, other.subreaper), (-1, None));
        // Nor is anything after a reboot.
        record.boot_id = "another boot".into();
        fs::write(
            dir.path().join(RECORD_FILE),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let rebooted = JobProcesses::recorded(dir.path(), "recorded");
        assert_eq!((rebooted.session, rebooted.subreaper), (-1, None));
        for child in [&mut leader, &mut subreaper] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn a_live_process_with_an_odd_name_is_read_right() {
        // The kernel names a process after the file it executes: a link
        // named `a) b (c` to sleep, run by setsid so that its pid is also its
        // session id.
        let dir = std::env::temp_dir().join(format!("agent-stat-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let odd = dir.join("a) b (c");
        let sleep = ["/usr/bin/sleep", "/bin/sleep"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("sleep is installed");
        let _ = fs::remove_file(&odd);
        std::os::unix::fs::symlink(sleep, &odd).unwrap();
        let mut child = Command::new("setsid")
            .arg(&odd)
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let named = loop {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains("(a) b (c)") || Instant::now() >= deadline {
                break stat;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let parsed = stat_of(pid).map(|stat| (stat.state, stat.session));
        let _ = child.kill();
        let _ = child.wait();
        fs::remove_dir_all(&dir).unwrap();
        assert!(named.contains("(a) b (c)"), "not renamed: {named:?}");
        let (state, session) = parsed.expect("the stat line parses");
        assert!("RSD".contains(state), "state {state}");
        assert_eq!(session, pid);
    }
}
