//! Commands the agent runs on the host for a job (compose pulls, registry
//! logins, host setup commands): stdout and stderr merged in one pipe, read
//! on a thread of its own and handed on line by line, with a stop that kills
//! the command and everything it started. Their output never crosses a
//! terminal, so it is handed on byte-exact, `\r\n` included (docs/protocol.md
//! §6.2); only bytes that are not UTF-8 change.
//!
//! `run_held` runs a command the job gave (a compose job's host setup
//! command) below a subreaper, as the job's session is.
//!
//! `run_bounded` is for the cache's `sftp` runs: a deadline, a way for the
//! caller to give up, and nothing left behind in any case, not even a child
//! of the command (ssh) that holds its pipes.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select_biased, Receiver};

use crate::process::exit_code;
use crate::process::output::decode;
use crate::process::procs::{JobProcesses, MARK_VAR};
use crate::process::reaper::{SessionEnd, Subreaper};
use crate::process::sys;

#[derive(Debug)]
pub enum HostOutcome {
    Exited(i32),
    Stopped,
    SpawnFailed(std::io::Error),
}

enum Msg {
    Line(String),
    /// The output's end: every holder of the pipe closed it.
    Eof,
    /// A held command's session ended, with this status (`run_held`).
    Exited(i32),
}

/// Reads `reader` line by line on a thread of its own, each line (its end
/// included) as a message, then `Eof`; stops when nobody listens.
fn read_lines(
    reader: impl Read + Send + 'static,
    tx: crossbeam_channel::Sender<Msg>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(Msg::Line(decode(&line))).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Msg::Eof);
    })
}

/// What `run_held` hands back besides the outcome: the subreaper that holds
/// whatever the command left running, until it is dropped.
pub type Held = Option<Subreaper>;

/// Runs `argv` (a command the job gave, such as a compose job's host setup
/// command) below a subreaper of its own, like a job's session, calling
/// `on_line` with each line of its merged output. Returns once the command
/// has exited (with what it printed until then, and a little after), or
/// at a stop (everything it started killed). What it left running stays,
/// held by the returned subreaper, until the caller drops that: whatever
/// it does to its environment or session, nothing it started outlives the
/// job.
pub fn run_held(
    argv: &[String],
    mark: &str,
    stop: &Receiver<()>,
    grace: Duration,
    on_line: &mut dyn FnMut(&str),
) -> (HostOutcome, Held) {
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return (HostOutcome::SpawnFailed(e), None),
    };
    let env = [(MARK_VAR.to_string(), mark.to_string())];
    let (subreaper, reports) =
        match Subreaper::spawn(argv, &env, std::os::fd::OwnedFd::from(writer), grace, None) {
            Ok(started) => started,
            Err(e) => {
                return (
                    HostOutcome::SpawnFailed(io::Error::other(e.to_string())),
                    None,
                )
            }
        };
    let (tx, rx) = bounded::<Msg>(64);
    read_lines(reader, tx.clone());
    std::thread::spawn(move || {
        let code = match reports.session_end() {
            SessionEnd::Exited(code) => code,
            SessionEnd::SubreaperGone => 1,
        };
        let _ = tx.send(Msg::Exited(code));
    });
    let mut exited = None;
    let mut drain_until = None;
    loop {
        let wait = drain_until.map_or(Duration::from_secs(3600), |d: Instant| {
            d.saturating_duration_since(Instant::now())
        });
        select_biased! {
            recv(stop) -> _ => {
                JobProcesses::new(subreaper.session, mark)
                    .with_subreaper(subreaper.pid())
                    .kill_all(grace);
                drop(subreaper);
                return (HostOutcome::Stopped, None);
            }
            recv(rx) -> msg => match msg {
                Ok(Msg::Line(line)) => on_line(&line),
                Ok(Msg::Exited(code)) => {
                    exited = Some(code);
                    // What is still in the pipe; a process it left may
                    // hold the pipe open for ever.
                    drain_until = Some(Instant::now() + HELD_DRAIN);
                }
                Ok(Msg::Eof) | Err(_) => {
                    if let Some(code) = exited {
                        return (HostOutcome::Exited(code), Some(subreaper));
                    }
                }
            },
            default(wait) => {
                if let Some(code) = exited {
                    return (HostOutcome::Exited(code), Some(subreaper));
                }
            }
        }
    }
}

/// After a held command exits, how long what it printed is still read.
const HELD_DRAIN: Duration = Duration::from_millis(300);

/// Runs `cmd`, calling `on_line` with each line of its merged output as it
/// was printed, its `\n` or `\r\n` included (a last line without one too).
pub fn run_lines(
    mut cmd: Command,
    mark: &str,
    stop: &Receiver<()>,
    grace: Duration,
    on_line: &mut dyn FnMut(&str),
) -> HostOutcome {
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return HostOutcome::SpawnFailed(e),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return HostOutcome::SpawnFailed(e),
    };
    cmd.stdout(writer)
        .stderr(writer2)
        .env(MARK_VAR, mark)
        .process_group(0);
    let child = cmd.spawn();
    // Our copies of the pipe's write end must go, or the reader never ends.
    drop(cmd);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return HostOutcome::SpawnFailed(e),
    };
    let (tx, rx) = bounded::<Msg>(64);
    let reader_thread = read_lines(reader, tx);
    loop {
        select_biased! {
            recv(stop) -> _ => {
                let procs = JobProcesses::new(-1, mark);
                sys::kill(-(child.id() as i32), sys::SIGTERM);
                procs.kill_all(grace);
                sys::kill(-(child.id() as i32), sys::SIGKILL);
                let _ = child.wait();
                drop(rx);
                let _ = reader_thread.join();
                return HostOutcome::Stopped;
            }
            recv(rx) -> msg => match msg {
                Ok(Msg::Line(line)) => on_line(&line),
                // Only `run_held` waits for an exit on this channel.
                Ok(Msg::Exited(_)) => {}
                Ok(Msg::Eof) | Err(_) => break,
            }
        }
    }
    let _ = reader_thread.join();
    match child.wait() {
        Ok(status) => HostOutcome::Exited(exit_code(status)),
        Err(e) => HostOutcome::SpawnFailed(e),
    }
}

/// How a bounded command ended.
#[derive(Debug)]
pub enum Ended {
    /// It closed its output and exited.
    Exited(ExitStatus),
    /// It outlived its deadline.
    TimedOut,
    /// The caller gave up on it.
    GivenUp,
    /// It printed more than the caller takes.
    TooMuchOutput,
}

/// What a bounded command printed, and how it ended.
#[derive(Debug)]
pub struct Bounded {
    pub ended: Ended,
    pub stdout: Vec<u8>,
    /// The last `STDERR_KEPT` bytes of its stderr.
    pub stderr: Vec<u8>,
}

/// How often a bounded command's caller is asked whether to give up.
const GIVE_UP_POLL: Duration = Duration::from_millis(50);
/// How long a command that closed its output has to exit.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The end of stderr that is kept: where the reason is.
const STDERR_KEPT: usize = 64 * 1024;
/// The most `input` may hold: it is written before the output is read,
/// which never waits only while it fits in a pipe.
const MAX_INPUT: usize = 16 * 1024;

/// Runs `cmd` in a process group of its own with `input` on its stdin,
/// until it exits, `deadline` passes, `give_up()` says so or its stdout
/// passes `max_stdout` bytes. In every case but the first its whole group
/// is killed (SIGKILL); it also dies with the calling thread (the agent
/// killed). Its output is read on this thread with poll(2) and reading
/// stops there, so a process that inherited a pipe and outlived the
/// command (an orphan of the group) is never waited for.
pub fn run_bounded(
    mut cmd: Command,
    input: &[u8],
    deadline: Instant,
    give_up: &dyn Fn() -> bool,
    max_stdout: usize,
) -> io::Result<Bounded> {
    if input.len() > MAX_INPUT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the input of a bounded command is too long",
        ));
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    sys::die_with_spawning_thread(&mut cmd);
    let mut child = cmd.spawn()?;
    let group = -(child.id() as i32);
    if let Some(mut stdin) = child.stdin.take() {
        // Fits in the pipe (MAX_INPUT): never waits. A command that exited
        // at once makes it fail, which its status says better.
        let _ = stdin.write_all(input);
    }
    let mut pipes: [Option<Box<dyn ReadFd>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
    ];
    let mut out = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 64 * 1024];
    let mut leader_gone: Option<Instant> = None;
    let stopped = loop {
        if pipes.iter().all(Option::is_none) {
            break Stop::Closed;
        }
        if give_up() {
            break Stop::Kill(Ended::GivenUp);
        }
        let now = Instant::now();
        if now >= deadline {
            break Stop::Kill(Ended::TimedOut);
        }
        // The command exited and left its pipes to a child of its own:
        // that child is not waited for past a grace period.
        if leader_gone.is_none() && sys::has_exited(child.id()) {
            leader_gone = Some(now);
        }
        if leader_gone.is_some_and(|at| now >= at + EXIT_GRACE) {
            break Stop::Orphaned;
        }
        let mut fds: Vec<sys::PollFd> = pipes
            .iter()
            .flatten()
            .map(|p| sys::pollfd(p.fd(), sys::POLLIN))
            .collect();
        if let Err(e) = sys::poll(&mut fds, Some(deadline.min(now + GIVE_UP_POLL))) {
            sys::kill(group, sys::SIGKILL);
            let _ = child.wait();
            return Err(e);
        }
        let mut ready = fds.iter().map(|f| f.revents != 0);
        for (i, slot) in pipes.iter_mut().enumerate() {
            let Some(pipe) = slot else { continue };
            if !ready.next().unwrap_or(false) {
                continue;
            }
            match pipe.read(&mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => out[i].extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => *slot = None,
            }
        }
        if out[1].len() > STDERR_KEPT {
            let cut = out[1].len() - STDERR_KEPT;
            out[1].drain(..cut);
        }
        if out[0].len() > max_stdout {
            break Stop::Kill(Ended::TooMuchOutput);
        }
    };
    let [stdout, stderr] = out;
    // Every way out kills the group while its leader is unreaped, which
    // keeps the group's id from being reused: nothing of it is left.
    let ended = match stopped {
        Stop::Kill(ended) => {
            sys::kill(group, sys::SIGKILL);
            let _ = child.wait();
            ended
        }
        Stop::Orphaned => {
            sys::kill(group, sys::SIGKILL);
            Ended::Exited(child.wait()?)
        }
        Stop::Closed => wait_for_exit(&mut child, group, give_up)?,
    };
    Ok(Bounded {
        ended,
        stdout,
        stderr,
    })
}

/// Why the reading of a bounded command's output stopped.
enum Stop {
    /// Both pipes are closed.
    Closed,
    /// The command exited, a child of its holds its pipes.
    Orphaned,
    /// The command is to be killed.
    Kill(Ended),
}

/// Waits for a command that closed its output to exit, for `EXIT_GRACE`.
fn wait_for_exit(
    child: &mut std::process::Child,
    group: i32,
    give_up: &dyn Fn() -> bool,
) -> io::Result<Ended> {
    let until = Instant::now() + EXIT_GRACE;
    loop {
        if sys::has_exited(child.id()) {
            sys::kill(group, sys::SIGKILL);
            return Ok(Ended::Exited(child.wait()?));
        }
        let gave_up = give_up();
        if gave_up || Instant::now() >= until {
            sys::kill(group, sys::SIGKILL);
            let _ = child.wait();
            return Ok(if gave_up {
                Ended::GivenUp
            } else {
                Ended::TimedOut
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child's output pipe: read, and polled by its descriptor.
trait ReadFd: Read {
    fn fd(&self) -> std::os::fd::RawFd;
}

impl<T: Read + AsRawFd> ReadFd for T {
    fn fd(&self) -> std::os::fd::RawFd {
        self.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    #[test]
    fn a_bounded_command_s_output_and_status() {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg("cat; echo err >&2; exit 3");
        let far = Instant::now() + Duration::from_secs(30);
        let ran = run_bounded(cmd, b"in\n", far, &never, 1024).unwrap();
        assert!(
            matches!(ran.ended, Ended::Exited(s) if s.code() == Some(3)),
            "{ran:?}"
        );
        assert_eq!(
            (ran.stdout.as_slice(), ran.stderr.as_slice()),
            (&b"in\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn an_orphan_holding_the_pipes_is_not_waited_for_and_the_group_goes() {
        // The command exits and leaves a child that keeps its pipes.
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg("sleep 1000 & echo $!; exit 4");
        let started = Instant::now();
        let far = started + Duration::from_secs(30);
        let ran = run_bounded(cmd, b"", far, &never, 1024).unwrap();
        assert!(
            matches!(ran.ended, Ended::Exited(s) if s.code() == Some(4)),
            "{ran:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = String::from_utf8_lossy(&ran.stdout).trim().parse().unwrap();
        // SIGKILL was sent to the group; the orphan is gone or a zombie
        // for init to reap.
        std::thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = state.rsplit_once(") ").map(|(_, r)| r.chars().next());
        assert!(matches!(state, None | Some(Some('Z'))), "{state:?}");
    }

    #[test]
    fn a_bounded_command_is_given_up_and_too_much_output_ends_it() {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        let far = Instant::now() + Duration::from_secs(30);
        let ran = run_bounded(cmd, b"", far, &|| true, 1024).unwrap();
        assert!(matches!(ran.ended, Ended::GivenUp), "{ran:?}");
        let mut cmd = Command::new("yes");
        cmd.stdout(Stdio::piped());
        let ran = run_bounded(cmd, b"", far, &never, 1024).unwrap();
        assert!(matches!(ran.ended, Ended::TooMuchOutput), "{ran:?}");
    }

    #[test]
    fn lines_are_merged_byte_exact_and_the_last_partial_line_kept() {
        let (_tx, stop) = bounded::<()>(1);
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg("echo one; echo two >&2; printf 'three\\r\\nfour'; exit 3");
        let mut lines = Vec::new();
        let outcome = run_lines(
            cmd,
            "hostcmd-test",
            &stop,
            Duration::from_secs(1),
            &mut |l| lines.push(l.to_string()),
        );
        assert!(matches!(outcome, HostOutcome::Exited(3)), "{outcome:?}");
        assert_eq!(lines, ["one\n", "two\n", "three\r\n", "four"]);
    }

    #[test]
    fn a_stop_kills_the_command() {
        let (tx, stop) = bounded::<()>(1);
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg("echo started; sleep 1000");
        let mut first = true;
        let outcome = run_lines(
            cmd,
            "hostcmd-stop-test",
            &stop,
            Duration::from_secs(1),
            &mut |_| {
                if first {
                    tx.send(()).unwrap();
                    first = false;
                }
            },
        );
        assert!(matches!(outcome, HostOutcome::Stopped), "{outcome:?}");
    }
}
