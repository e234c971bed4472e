//! Finding and killing every process of a job.
//!
//! A job's bash is a session leader, so its background jobs (each in a
//! process group of its own under job control) share its session id. A
//! process that called `setsid` leaves that session, but it still carries the
//! job's mark in its environment (`AGENT_JOB_MARK`, set when the session
//! started and inherited by every descendant). Both are matched, so nothing
//! the job started survives a stop.

use std::fs;
use std::time::{Duration, Instant};

use crate::process::sys;

/// The environment variable every process of a job inherits.
pub const MARK_VAR: &str = "AGENT_JOB_MARK";

/// What identifies a job's processes.
#[derive(Debug, Clone)]
pub struct JobProcesses {
    /// The session id: the pid of the job's bash.
    pub session: i32,
    /// `AGENT_JOB_MARK=<value>` as it appears in /proc/<pid>/environ.
    pub mark_entry: Vec<u8>,
}

impl JobProcesses {
    pub fn new(session: i32, mark: &str) -> JobProcesses {
        JobProcesses {
            session,
            mark_entry: format!("{MARK_VAR}={mark}").into_bytes(),
        }
    }

    /// The processes carrying `mark` only: those of a job whose session
    /// leader is gone (an agent that crashed).
    pub fn marked(mark: &str) -> JobProcesses {
        // No process has session id -1.
        JobProcesses::new(-1, mark)
    }

    /// The live (non-zombie) processes of the job, the agent itself excluded.
    pub fn list(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me && self.owns(pid))
            .collect()
    }

    fn owns(&self, pid: i32) -> bool {
        let Some((state, sid)) = stat_state_and_session(pid) else {
            return false;
        };
        if state == 'Z' || state == 'X' {
            return false;
        }
        if sid == self.session {
            return true;
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
}

fn signal(pid: i32, sig: i32) {
    sys::kill(pid, sig);
}

/// State letter and session id from /proc/<pid>/stat. The command name may
/// contain spaces and parentheses, so fields are counted after the last ')'.
fn stat_state_and_session(pid: i32) -> Option<(char, i32)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// State letter and session id from the text of a /proc/<pid>/stat file.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state: ppid, pgrp, session.
    let sid = fields.nth(2)?.parse().ok()?;
    Some((state, sid))
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
        let (_, session) = stat_state_and_session(me).unwrap();
        let mut zombie = Command::new("true").spawn().unwrap();
        let zombie_pid = zombie.id() as i32;
        wait_until("the zombie", || {
            stat_state_and_session(zombie_pid).is_some_and(|(state, _)| state == 'Z')
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
    fn stat_lines_with_odd_names_parse_to_the_right_session() {
        // pid (comm) state ppid pgrp session tty_nr ...
        let lines = [
            ("4242 (a) b (c) S 1 4242 4242 0 -1 4194560", ('S', 4242)),
            ("17 ()) R 1 16 15 34816 17", ('R', 15)),
            ("9 (sleep) Z 8 7 6 0 -1", ('Z', 6)),
            ("31 ( ) ) D 2 3 5 0 -1", ('D', 5)),
        ];
        for (line, expected) in lines {
            assert_eq!(parse_stat(line), Some(expected), "{line}");
        }
        assert_eq!(parse_stat("12 (no closing parenthesis S 1 2 3"), None);
        assert_eq!(parse_stat("12 (short) S 1 2"), None);
        assert_eq!(parse_stat("12 (nan) S 1 2 x"), None);
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
        let parsed = stat_state_and_session(pid);
        let _ = child.kill();
        let _ = child.wait();
        fs::remove_dir_all(&dir).unwrap();
        assert!(named.contains("(a) b (c)"), "not renamed: {named:?}");
        let (state, session) = parsed.expect("the stat line parses");
        assert!("RSD".contains(state), "state {state}");
        assert_eq!(session, pid);
    }
}
