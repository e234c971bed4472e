//! The persistent bash session of docs/protocol.md §4.
//!
//! One `bash --login` runs on a pseudo-terminal, as the leader of a session
//! of its own, started by the job's subreaper (`reaper`), below which every
//! process of the job stays; that terminal is stdout and stderr of every
//! command, and the agent writes its instructions to it. Each command is written to a
//! file and `source`d by the session with stdin from a second terminal
//! (`terminal`), which reads as end-of-file, so `cat` or `read` end at once
//! and never see the agent's instructions. It is framed by start and end
//! markers that carry a per-session nonce; the end marker carries the exit
//! status. Output between the markers goes through the chunker (`output`)
//! to a sink.
//!
//! Threads: a reader thread copies the terminal into a bounded channel (so a
//! fast writer is slowed down, never buffered without limit) and a waiter
//! thread reports bash's exit status when the subreaper reaps it. The job thread owns the
//! `Session` and selects over output, exit, stop and interrupt, with stop
//! winning; an interrupt (a log that cannot be written) ends only the
//! running command, as Ctrl-C at its terminal would.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select_biased, Receiver};

use crate::error::Error;
use crate::process::output::{render, Chunker};
use crate::process::procs::{JobProcesses, MARK_VAR};
use crate::process::reaper::{Reports, SessionEnd, Subreaper};
use crate::process::sys::{self, Credentials, TermMode};
use crate::process::terminal::{StdinTerminal, TERM_SIZE};
use crate::util::{random_hex, shell_quote};

/// No byte of output waits longer than this before it is in the log (§6.2).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a new session may take to print its readiness marker.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shell that is told to exit at the end of a job may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most the reader hands on in one message.
const READ_BUFFER: usize = 64 * 1024;
/// After bash exits, how long output still in flight is collected.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(300);

/// What a command's run ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The end marker arrived with this status.
    Finished(i32),
    /// The session ended during the command (`exit 7`, `set -e`), with the
    /// session's real status.
    SessionEnded(i32),
    /// The session had already ended before the command: nothing ran.
    SessionGone,
    /// A stop was requested; every process of the job is gone.
    Stopped,
}

impl Outcome {
    /// The `exit_code` the log reports: the real status when there is one,
    /// else 1 (a gone session, and a stop whatever killed the command, §5.4).
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Finished(status) | Outcome::SessionEnded(status) => status,
            Outcome::SessionGone | Outcome::Stopped => 1,
        }
    }
}

enum Msg {
    Output(Vec<u8>),
    Exited(i32),
}

/// How a session is started.
pub struct SessionSpec<'a> {
    /// The program and arguments: bash on the host, or the compose client
    /// running bash in a container.
    pub argv: Vec<String>,
    /// Extra environment for the program.
    pub env: Vec<(String, String)>,
    /// Directory for the session's own files (commands to source). Must be
    /// private to the agent's user.
    pub work_dir: &'a Path,
    /// The value of `AGENT_JOB_MARK` for every process of the job.
    pub mark: &'a str,
    pub stop: &'a Receiver<()>,
    pub grace: Duration,
    /// Every command's stdin.
    pub stdin: StdinTerminal,
    /// The path of `stdin`'s slave as the session's bash sees it.
    pub stdin_path: String,
    /// The agent's own binary as the session's bash sees it, which turns
    /// the terminal's echo off where `stty` is missing (§4); None where
    /// there is none.
    pub echo_off_program: Option<String>,
    /// Who the session runs as, when not the agent's user (`--job-user`):
    /// its terminals and command file are then that user's.
    pub creds: Option<Credentials>,
}

/// The session's pseudo-terminal, echo and output processing off, given to
/// the job's user when the session runs as one (as `login` does).
fn open_terminal(spec: &SessionSpec<'_>) -> Result<(File, OwnedFd), Error> {
    let pty = sys::open_pty(TERM_SIZE)
        .and_then(|pty| {
            // No echo: the agent's instructions never show. No output
            // post-processing: `\n` stays `\n`, which saves the kernel
            // and the chunker work on every line.
            TermMode::of(pty.slave.as_raw_fd())?
                .without_echo()
                .without_output_processing()
                .apply(pty.slave.as_raw_fd())?;
            Ok(pty)
        })
        .map_err(|e| Error::Spawn {
            program: "a pseudo-terminal".into(),
            source: e,
        })?;
    if let Some(creds) = &spec.creds {
        sys::fchown(pty.slave.as_raw_fd(), creds.uid, creds.gid)
            .and_then(|()| {
                std::os::unix::fs::chown(spec.stdin.path(), Some(creds.uid), Some(creds.gid))
            })
            .map_err(|e| Error::Spawn {
                program: "a pseudo-terminal for the job's user".into(),
                source: e,
            })?;
    }
    Ok((pty.master, pty.slave))
}

/// The session's two threads: the reader copies the terminal into a
/// bounded channel, the waiter reports bash's exit when the subreaper
/// reaps it. Both report on the channel returned.
fn spawn_threads(master: &File, reports: Reports) -> Result<Receiver<Msg>, Error> {
    let (tx, rx) = bounded::<Msg>(16);
    let mut reader = master.try_clone().map_err(spawn_err)?;
    let out_tx = tx.clone();
    std::thread::Builder::new()
        .name("session-reader".into())
        .spawn(move || {
            let mut buf = vec![0u8; READ_BUFFER];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(mut n) => {
                        // Take what else is already waiting, without
                        // blocking: one message per burst, not per read
                        // (a terminal hands over at most 4 KiB a read).
                        while n + 4096 <= buf.len() && sys::readable_now(reader.as_raw_fd()) {
                            match reader.read(&mut buf[n..]) {
                                Ok(0) | Err(_) => break,
                                Ok(m) => n += m,
                            }
                        }
                        if out_tx.send(Msg::Output(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // EIO: every holder of the terminal's other side is gone.
                    Err(_) => break,
                }
            }
        })
        .map_err(spawn_err)?;
    std::thread::Builder::new()
        .name("session-waiter".into())
        .spawn(move || {
            let code = match reports.session_end() {
                SessionEnd::Exited(code) => code,
                SessionEnd::SubreaperGone => {
                    // Killed by someone else: the session is treated as
                    // ended, and the job's processes are killed.
                    log::error!("the job's subreaper ended before its session");
                    1
                }
            };
            let _ = tx.send(Msg::Exited(code));
        })
        .map_err(spawn_err)?;
    Ok(rx)
}

/// The name (`argv[0]`) under which the agent's binary turns off the echo
/// of the terminal on its stdin, then exits (docs/protocol.md §4): how a
/// session in an image without `stty` stops echoing the agent's
/// instructions. No command of the CLI.
pub const ECHO_OFF_NAME: &str = "agent-echo-off";

/// The agent's binary called `ECHO_OFF_NAME`: exits 0 once the terminal on
/// stdin echoes nothing, 1 when it cannot (stdin is not a terminal).
pub fn echo_off_main() -> std::process::ExitCode {
    let stdin = std::io::stdin().as_raw_fd();
    match TermMode::of(stdin).and_then(|mode| mode.without_echo().apply(stdin)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{ECHO_OFF_NAME}: cannot turn off the echo of stdin: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub struct Session {
    master: File,
    stdin: StdinTerminal,
    stdin_path: String,
    rx: Receiver<Msg>,
    stop: Receiver<()>,
    procs: JobProcesses,
    /// Holds every process of the job within reach; dropped (told to
    /// finish, and reaped) after the job's processes are killed.
    subreaper: Option<Subreaper>,
    grace: Duration,
    nonce: String,
    cmd_path: PathBuf,
    /// The job's user, who must read the command file.
    cmd_owner: Option<(u32, u32)>,
    /// Set once bash has exited.
    exit_status: Option<i32>,
    scanner: MarkerScanner,
    /// Values masked in every command's output.
    secrets: Arc<Vec<Vec<u8>>>,
    /// Interrupts the running command (`interrupt_on`).
    interrupt: Receiver<()>,
}

impl Session {
    /// Starts bash and waits until it is ready. `Ok(None)` means a stop
    /// arrived first (everything started is already killed). The steps:
    /// the session's terminal, the subreaper that starts bash on it, the
    /// threads that read the terminal and wait for bash's end, then the
    /// first instruction and its readiness marker.
    pub fn start(spec: SessionSpec<'_>) -> Result<Option<Session>, Error> {
        let (master, slave) = open_terminal(&spec)?;
        let mut env = spec.env.clone();
        env.push((MARK_VAR.into(), spec.mark.into()));
        env.push((
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        ));
        // The subreaper gets the only copy of the slave side.
        let (subreaper, reports) =
            Subreaper::spawn(&spec.argv, &env, slave, spec.grace, spec.creds.as_ref())?;
        let procs = JobProcesses::new(subreaper.session, spec.mark).with_subreaper(subreaper.pid());
        // For an agent that takes the job over after a crash (§7.3).
        if let Err(e) = procs.record(spec.work_dir) {
            log::warn!("cannot record the processes of the job: {e}");
        }
        let rx = spawn_threads(&master, reports)?;
        let nonce = random_hex(16);
        let session = Session {
            master,
            stdin: spec.stdin,
            stdin_path: spec.stdin_path,
            rx,
            stop: spec.stop.clone(),
            procs,
            subreaper: Some(subreaper),
            grace: spec.grace,
            cmd_path: spec.work_dir.join("command.sh"),
            cmd_owner: spec.creds.as_ref().map(|c| (c.uid, c.gid)),
            scanner: MarkerScanner::new(&nonce),
            nonce,
            exit_status: None,
            secrets: Arc::default(),
            interrupt: crossbeam_channel::never(),
        };
        let init = session.first_instruction(spec.echo_off_program.as_deref());
        session.wait_until_ready(&init)
    }

    /// The instruction that makes the session the agent's.
    fn first_instruction(&self, echo_off_program: Option<&str>) -> String {
        // The terminal echoes nothing, COLUMNS and LINES give its size
        // (bash sets them only for itself), prompts are empty, history is not
        // written, and the job starts in HOME. Job control is off: bash then
        // prints no "Done" notices for background jobs, and a command killed
        // by SIGINT does not make it drop the rest of the instruction line.
        // Should a line be dropped anyway, the prompt command still reports
        // the status (a second end marker, after the first, is ignored).
        // Everything printed before the readiness marker is discarded.
        // Without `stty` the agent's own binary turns echo off; without
        // either, echo stays on (README, "How a job runs").
        let echo_off = match echo_off_program {
            Some(program) => format!(
                "stty -echo 2>/dev/null || (exec -a {ECHO_OFF_NAME} {}) 2>/dev/null",
                shell_quote(program)
            ),
            None => "stty -echo 2>/dev/null".to_string(),
        };
        format!(
            "{echo_off}; export COLUMNS={cols} LINES={rows}; set +m; PS1=; PS2=; PROMPT_COMMAND='printf \"\\001{n}E%d\\001\" $?'; unset HISTFILE; cd ~; printf '\\001{n}R\\001'\n",
            n = self.nonce,
            cols = TERM_SIZE.cols,
            rows = TERM_SIZE.rows,
        )
    }

    /// Writes the first instruction and waits for its readiness marker,
    /// discarding what comes before it.
    fn wait_until_ready(self, init: &str) -> Result<Option<Session>, Error> {
        let mut session = self;
        session.write_instruction(init.as_bytes())?;
        let ready = format!("\x01{}R\x01", session.nonce).into_bytes();
        let mut seen: Vec<u8> = Vec::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            select_biased! {
                recv(session.stop) -> _ => {
                    session.kill();
                    return Ok(None);
                }
                recv(session.rx) -> msg => match msg {
                    Ok(Msg::Output(bytes)) => {
                        seen.extend_from_slice(&bytes);
                        if let Some(end) = find(&seen, &ready) {
                            // Output after the marker (none expected) is dropped.
                            let _ = end;
                            return Ok(Some(session));
                        }
                        // Keep only what may still hold the start of the marker.
                        if seen.len() > 4096 {
                            seen.drain(..seen.len() - ready.len());
                        }
                    }
                    Ok(Msg::Exited(code)) => {
                        session.exit_status = Some(code);
                        // The rest of what it printed says why.
                        let deadline = Instant::now() + DRAIN_TIMEOUT;
                        while let Ok(Msg::Output(bytes)) = session
                            .rx
                            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        {
                            seen.extend_from_slice(&bytes);
                        }
                        session.kill();
                        // A terminal that still echoed shows the agent's own
                        // instruction: that is no part of the reason.
                        let output = render(&seen).replace(init.trim_end(), "");
                        return Err(Error::SessionStart {
                            status: Some(code),
                            output: output.trim().to_string(),
                        });
                    }
                    Err(_) => unreachable!("the waiter thread always reports"),
                },
                default(deadline.saturating_duration_since(Instant::now())) => {
                    session.kill();
                    return Err(Error::SessionStart {
                        status: None,
                        output: render(&seen).replace(init.trim_end(), "").trim().to_string(),
                    });
                }
            }
        }
    }

    /// Masks these values, sorted longest first, in the output of later
    /// commands.
    pub fn set_secrets(&mut self, secrets: Arc<Vec<Vec<u8>>>) {
        self.secrets = secrets;
    }

    /// A message on `interrupt` interrupts the running command as Ctrl-C at
    /// its terminal would (SIGINT to the foreground), without ending the
    /// session: later commands still run. Messages sent before a command
    /// starts are ignored.
    pub fn interrupt_on(&mut self, interrupt: Receiver<()>) {
        self.interrupt = interrupt;
    }

    /// The terminal every command has on stdin.
    pub fn stdin(&self) -> &StdinTerminal {
        &self.stdin
    }

    /// The pid of the session's process (bash, or the compose client).
    pub fn pid(&self) -> i32 {
        self.procs.session
    }

    /// Runs one command in the session; output chunks go to `sink` as they
    /// become due (§6.2), the rest at once when the command ends.
    pub fn run(&mut self, directive: &str, sink: &mut dyn FnMut(String)) -> Outcome {
        if self.exit_status.is_some() {
            return Outcome::SessionGone;
        }
        let written =
            crate::util::write_private(&self.cmd_path, directive.as_bytes()).and_then(|()| {
                match self.cmd_owner {
                    // The job's directory is the agent's: the path leads to the
                    // file just written.
                    Some((uid, gid)) => {
                        std::os::unix::fs::chown(&self.cmd_path, Some(uid), Some(gid))
                    }
                    None => Ok(()),
                }
            });
        if let Err(e) = written {
            log::error!("cannot write {}: {e}", self.cmd_path.display());
            sink(format!("The agent could not write the command file: {e}\n"));
            return Outcome::Finished(1);
        }
        if let Err(e) = self.stdin.reset() {
            log::warn!("cannot reset the stdin terminal: {e}");
        }
        let instruction = format!(
            "printf '\\001{n}S\\001'; source {path} <{stdin}; printf '\\001{n}E%d\\001' \"$?\"\n",
            n = self.nonce,
            path = shell_quote(&self.cmd_path.to_string_lossy()),
            stdin = shell_quote(&self.stdin_path),
        );
        self.scanner.begin();
        while self.interrupt.try_recv().is_ok() {}
        if self.write_instruction(instruction.as_bytes()).is_err() {
            // The terminal is gone: the session is dying; its status follows.
            return self.wait_for_exit(sink, &mut Chunker::with_secrets(self.secrets.clone()));
        }

        let mut chunker = Chunker::with_secrets(self.secrets.clone());
        // When the oldest byte still buffered arrived.
        let mut pending_since: Option<Instant> = None;
        let mut held_once = false;
        loop {
            let timeout = pending_since
                .map(|t| (t + FLUSH_INTERVAL).saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            select_biased! {
                recv(self.stop) -> _ => {
                    self.kill();
                    self.drain_into(&mut chunker);
                    if let Some(s) = chunker.take_all() { sink(s) }
                    return Outcome::Stopped;
                }
                recv(self.interrupt) -> msg => match msg {
                    // The terminal's interrupt character: the kernel sends
                    // SIGINT to whatever runs in the foreground.
                    Ok(()) => { let _ = self.write_instruction(b"\x03"); }
                    // Nobody can interrupt any more.
                    Err(_) => self.interrupt = crossbeam_channel::never(),
                },
                recv(self.rx) -> msg => match msg {
                    Ok(Msg::Output(bytes)) => {
                        let end = self.scanner.feed(&bytes, &mut |b| chunker.push(b));
                        if let Some(status) = end {
                            if let Some(s) = chunker.take_all() { sink(s) }
                            return Outcome::Finished(status);
                        }
                        if pending_since.is_none() && !chunker.is_empty() {
                            pending_since = Some(Instant::now());
                        }
                        while let Some(s) = chunker.take_full() {
                            sink(s);
                        }
                    }
                    Ok(Msg::Exited(code)) => {
                        self.exit_status = Some(code);
                        return self.wait_for_exit(sink, &mut chunker);
                    }
                    Err(_) => unreachable!("the waiter thread always reports"),
                },
                default(timeout) => {
                    let due = if held_once { chunker.take_forced() } else { chunker.take_settled() };
                    if let Some(s) = due {
                        sink(s);
                    }
                    // A held-back tail (part of a character, a `\r`) gets one
                    // more interval to be completed, then goes out as it is;
                    // what is left after that is the start of a secret, which
                    // waits for more output or the end of the command.
                    if chunker.is_empty() || held_once {
                        held_once = false;
                        pending_since = None;
                    } else {
                        held_once = true;
                        pending_since = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Collects the output of a session that is ending and reports its status.
    fn wait_for_exit(&mut self, sink: &mut dyn FnMut(String), chunker: &mut Chunker) -> Outcome {
        if self.exit_status.is_none() {
            let deadline = Instant::now() + DRAIN_TIMEOUT * 10;
            while self.exit_status.is_none() && Instant::now() < deadline {
                match self.rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(Msg::Output(bytes)) => {
                        self.scanner.feed(&bytes, &mut |b| chunker.push(b));
                    }
                    Ok(Msg::Exited(code)) => self.exit_status = Some(code),
                    Err(_) => {}
                }
            }
        }
        self.drain_into(chunker);
        let status = self.exit_status.unwrap_or(1);
        while let Some(s) = chunker.take_full() {
            sink(s);
        }
        if let Some(s) = chunker.take_all() {
            sink(s);
        }
        // What the session left running (`sleep 1000 &`) dies with it.
        self.procs.kill_all(self.grace);
        Outcome::SessionEnded(status)
    }

    /// Output still in flight, bounded in time: background processes may
    /// hold the terminal open and keep printing.
    fn drain_into(&mut self, chunker: &mut Chunker) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while let Ok(msg) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            match msg {
                Msg::Output(bytes) => {
                    self.scanner.feed(&bytes, &mut |b| chunker.push(b));
                }
                Msg::Exited(code) => self.exit_status = Some(code),
            }
            if chunker.len() > 1024 * 1024 {
                break;
            }
        }
        self.scanner.flush(&mut |b| chunker.push(b));
    }

    /// Reads `name` from the session (used for `SEMAPHORE_JOB_RESULT`).
    pub fn read_variable(&mut self, name: &str) -> Option<String> {
        self.capture(&format!("printf '%s' \"${{{name}}}\""))
    }

    /// The output of a helper command, if it succeeded.
    pub fn capture(&mut self, directive: &str) -> Option<String> {
        let mut out = String::new();
        match self.run(directive, &mut |s| out.push_str(&s)) {
            Outcome::Finished(0) => Some(out),
            _ => None,
        }
    }

    /// Runs a helper command whose output nobody sees; returns its status.
    pub fn run_silent(&mut self, directive: &str) -> Outcome {
        self.run(directive, &mut |_| {})
    }

    fn write_instruction(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.master
            .write_all(bytes)
            .map_err(|e| Error::io("cannot write to the session terminal", "/dev/ptmx", e))
    }

    /// Kills every process of the job: TERM, the grace period, then KILL.
    pub fn kill(&mut self) {
        self.procs.kill_all(self.grace);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A job that ended normally lets its shell exit by itself first (a
        // compose client then removes its container at once, instead of
        // waiting out the grace period of a kill).
        if self.exit_status.is_none() && self.write_instruction(b"exit 0\n").is_ok() {
            let deadline = Instant::now() + CLOSE_TIMEOUT;
            while let Ok(msg) = self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if let Msg::Exited(code) = msg {
                    self.exit_status = Some(code);
                    break;
                }
            }
        }
        // Whatever way the job ended, nothing it started outlives it.
        self.procs.kill_all(self.grace);
        drop(self.subreaper.take());
    }
}

/// Finds the start and end markers in the terminal stream. Bytes before the
/// start marker (prompts, notices from background jobs) are dropped; bytes
/// between the markers are handed on; the end marker yields the status.
struct MarkerScanner {
    start: Vec<u8>,
    end: Vec<u8>,
    capturing: bool,
    done: bool,
    carry: Vec<u8>,
}

impl MarkerScanner {
    fn new(nonce: &str) -> MarkerScanner {
        MarkerScanner {
            start: format!("\x01{nonce}S\x01").into_bytes(),
            end: format!("\x01{nonce}E").into_bytes(),
            capturing: false,
            done: false,
            carry: Vec::new(),
        }
    }

    fn begin(&mut self) {
        self.capturing = false;
        self.done = false;
        self.carry.clear();
    }

    /// Feeds bytes; returns the status once the end marker is complete.
    fn feed(&mut self, bytes: &[u8], out: &mut dyn FnMut(&[u8])) -> Option<i32> {
        if self.done {
            return None;
        }
        // Bytes are copied only when a marker may have been split.
        let joined: Vec<u8>;
        let mut rest: &[u8] = if self.carry.is_empty() {
            bytes
        } else {
            let mut data = std::mem::take(&mut self.carry);
            data.extend_from_slice(bytes);
            joined = data;
            &joined
        };
        if !self.capturing {
            match find(rest, &self.start) {
                Some(i) => {
                    self.capturing = true;
                    rest = &rest[i + self.start.len()..];
                }
                None => {
                    self.carry = tail_prefix(rest, &self.start).to_vec();
                    return None;
                }
            }
        }
        loop {
            let Some(i) = memchr::memchr(0x01, rest) else {
                out(rest);
                return None;
            };
            out(&rest[..i]);
            let cand = &rest[i..];
            let n = cand.len().min(self.end.len());
            if cand[..n] != self.end[..n] {
                out(&cand[..1]);
                rest = &cand[1..];
                continue;
            }
            if cand.len() < self.end.len() {
                self.carry = cand.to_vec();
                return None;
            }
            let after = &cand[self.end.len()..];
            match memchr::memchr(0x01, after) {
                Some(j) => {
                    let status = std::str::from_utf8(&after[..j])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(1);
                    self.done = true;
                    return Some(status);
                }
                None if after.len() < 12 => {
                    self.carry = cand.to_vec();
                    return None;
                }
                None => {
                    // Not a marker after all.
                    out(&cand[..1]);
                    rest = &cand[1..];
                }
            }
        }
    }

    /// Hands on bytes held back as a possible marker (the session is gone).
    fn flush(&mut self, out: &mut dyn FnMut(&[u8])) {
        if self.capturing && !self.done {
            out(&self.carry);
        }
        self.carry.clear();
    }
}

/// The longest suffix of `data` that is a proper prefix of `marker`.
fn tail_prefix<'a>(data: &'a [u8], marker: &[u8]) -> &'a [u8] {
    let max = marker.len().saturating_sub(1).min(data.len());
    for n in (1..=max).rev() {
        if data[data.len() - n..] == marker[..n] {
            return &data[data.len() - n..];
        }
    }
    &[]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn spawn_err(e: std::io::Error) -> Error {
    Error::Spawn {
        program: "bash".into(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Vec<u8>, Option<i32>) {
        let mut s = MarkerScanner::new("abc");
        s.begin();
        let mut out = Vec::new();
        let mut status = None;
        for c in chunks {
            if let Some(st) = s.feed(c, &mut |b| out.extend_from_slice(b)) {
                status = Some(st);
            }
        }
        (out, status)
    }

    #[test]
    fn output_between_markers() {
        let (out, st) = scan(&[b"noise\x01abcS\x01hello\n\x01abcE0\x01after"]);
        assert_eq!(out, b"hello\n");
        assert_eq!(st, Some(0));
    }

    #[test]
    fn markers_split_across_reads() {
        let whole = b"junk\x01abcS\x01x\x01y\x01abcE127\x01";
        for split in 0..whole.len() {
            let (out, st) = scan(&[&whole[..split], &whole[split..]]);
            assert_eq!(out, b"x\x01y", "split at {split}");
            assert_eq!(st, Some(127), "split at {split}");
        }
    }
}
