//! The job's subreaper: the process between the agent and the job's session
//! that keeps every process of the job within reach (docs/protocol.md §4).
//!
//! A process can drop `AGENT_JOB_MARK`, leave the job's session with
//! `setsid` and give up its terminal; then nothing on it says which job it
//! is, and once its parent exits it would be init's. The kernel offers one
//! hold on it that needs no privilege and no cooperation: a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`) adopts every orphan among its
//! descendants. So the agent does not start the job's session itself: it
//! starts its own binary under the name `agent-subreaper` (no command of
//! the CLI), which becomes a subreaper, starts the session on its terminal,
//! reports the session's pid and, when it ends, its status, and reaps
//! whatever it adopts. Everything below it is the job's (`procs`).
//!
//! It takes orders from nobody but its agent, through a socket pair: it
//! ignores the terminal's and the shell's signals, and when the agent
//! closes its end, or dies, it kills every process of the job that is left
//! (TERM, the grace period, KILL) and exits. A subreaper of its own per
//! job, rather than the agent as the subreaper of everything: the agent
//! would then have to reap orphans with `waitpid(-1)`, which would steal
//! the statuses of its own children, and could not tell which job an
//! adopted orphan came from; and the job's processes would die with an
//! agent that crashed only if something outlived it to kill them.
//!
//! The report is one line per event: `pid N` once the session runs, `exit
//! N` when it ends (N as a shell reports it), or `error MESSAGE` when it
//! could not start.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::process::exit_code;
use crate::process::procs::{JobProcesses, MARK_VAR};
use crate::process::sys::{self, Credentials};

pub use crate::process::procs::REAPER_NAME;

/// How the agent tells its subreaper who the session runs as (`--job-user`);
/// the session does not get it.
const CREDENTIALS_VAR: &str = "AGENT_JOB_CREDENTIALS";

/// `uid:gid:group,group,...`
fn encode_credentials(c: &Credentials) -> String {
    let groups: Vec<String> = c.groups.iter().map(u32::to_string).collect();
    format!("{}:{}:{}", c.uid, c.gid, groups.join(","))
}

fn decode_credentials(text: &str) -> Option<Credentials> {
    let mut parts = text.splitn(3, ':');
    let uid = parts.next()?.parse().ok()?;
    let gid = parts.next()?.parse().ok()?;
    let groups = parts
        .next()?
        .split(',')
        .filter(|g| !g.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()
        .ok()?;
    // Never root: a session started as root is the agent's own user.
    (uid != 0).then_some(Credentials { uid, gid, groups })
}

/// How long the subreaper may take to start the session and say so.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Beyond the grace period, how long a subreaper told to finish may take
/// before it is killed: its own killing of what is left is bounded by
/// about this (`JobProcesses::kill_all`).
const FINISH_MARGIN: Duration = Duration::from_secs(15);

/// The agent's hold on a job's subreaper. Dropping it tells the subreaper
/// to finish (it kills what is left of the job) and reaps it.
pub struct Subreaper {
    child: Child,
    control: UnixStream,
    grace: Duration,
    /// The session it started: its leader's pid.
    pub session: i32,
}

/// How the session ended, as the subreaper reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// With this status (a signal's as 128 + N).
    Exited(i32),
    /// The subreaper itself is gone (killed): the status is unknown.
    SubreaperGone,
}

/// What the subreaper reports after the start: read on a thread of its own.
pub struct Reports(BufReader<UnixStream>);

impl Reports {
    /// Blocks until the session ends.
    pub fn session_end(mut self) -> SessionEnd {
        let mut line = String::new();
        loop {
            line.clear();
            match self.0.read_line(&mut line) {
                Ok(0) | Err(_) => return SessionEnd::SubreaperGone,
                Ok(_) => {
                    if let Some(code) = line.trim_end().strip_prefix("exit ") {
                        return SessionEnd::Exited(code.parse().unwrap_or(1));
                    }
                }
            }
        }
    }
}

impl Subreaper {
    /// Starts the job's subreaper, which starts `argv` as the leader of a
    /// session of its own whose controlling terminal is `terminal` (a
    /// pseudo-terminal's slave, also its stdin, stdout and stderr; or the
    /// write end of a pipe, then its stdout and stderr only), with the
    /// agent's environment plus `env` (the job's mark among them). Returns
    /// once the session runs, with what the subreaper reports from then on.
    pub fn spawn(
        argv: &[String],
        env: &[(String, String)],
        terminal: OwnedFd,
        grace: Duration,
        creds: Option<&Credentials>,
    ) -> Result<(Subreaper, Reports), Error> {
        let spawn_err = |source: io::Error| Error::Spawn {
            program: argv.first().cloned().unwrap_or_default(),
            source,
        };
        let (control, theirs) = UnixStream::pair().map_err(spawn_err)?;
        // The running binary itself, even if its file was replaced since.
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0(REAPER_NAME)
            .arg(grace.as_millis().to_string())
            .args(argv)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(creds.map(|c| (CREDENTIALS_VAR, encode_credentials(c))))
            .stdin(Stdio::from(terminal))
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .stderr(Stdio::null());
        // Out of the agent's process group: Ctrl-C or Ctrl-Z at the
        // terminal of `agent run` reaches the agent, which stops the job,
        // and not the subreaper.
        sys::spawn_in_own_process_group(&mut cmd);
        let child = cmd.spawn().map_err(spawn_err)?;
        // Our copies of the terminal and of the subreaper's end go now: the
        // terminal's last holder must be the job, and the subreaper must see
        // the agent's end close when the agent dies.
        drop(cmd);
        let mut subreaper = Subreaper {
            child,
            control,
            grace,
            session: -1,
        };
        let reader = subreaper.control.try_clone().map_err(spawn_err)?;
        let mut reports = BufReader::new(reader);
        let first = subreaper
            .control
            .set_read_timeout(Some(START_TIMEOUT))
            .and_then(|()| {
                let mut line = String::new();
                reports.read_line(&mut line)?;
                Ok(line)
            })
            .and_then(|line| {
                subreaper.control.set_read_timeout(None)?;
                Ok(line)
            });
        let line = first.map_err(spawn_err)?;
        let line = line.trim_end();
        if let Some(pid) = line.strip_prefix("pid ").and_then(|p| p.parse().ok()) {
            subreaper.session = pid;
            return Ok((subreaper, Reports(reports)));
        }
        let reason = match line.strip_prefix("error ") {
            Some(message) => message.to_string(),
            None if line.is_empty() => format!("{REAPER_NAME} ended before it started it"),
            None => format!("{REAPER_NAME} said {line:?}"),
        };
        Err(spawn_err(io::Error::other(reason)))
    }

    /// The subreaper's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        // Closing our end tells it to finish; it then kills whatever of the
        // job is left, which the agent has normally killed already.
        let _ = self.control.shutdown(Shutdown::Both);
        let deadline = Instant::now() + self.grace + FINISH_MARGIN;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        log::error!("the subreaper {} did not finish; killing it", self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's binary called `REAPER_NAME`, with the grace period in
/// milliseconds and the session's argv as arguments, the session's
/// terminal on stdin and the socket to the agent on stdout.
pub fn main(args: &[String]) -> ExitCode {
    sys::set_process_name(REAPER_NAME);
    // Only the agent ends the job: these do nothing here, and the session
    // still gets them as usual.
    let disarmed = [
        sys::SIGINT,
        sys::SIGQUIT,
        sys::SIGHUP,
        sys::SIGTERM,
        sys::SIGTSTP,
    ];
    let control = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(_) => return ExitCode::FAILURE,
    };
    match start_session(args, &disarmed, &control) {
        Ok(job) => {
            serve(&control, job);
            ExitCode::SUCCESS
        }
        Err(message) => {
            let _ = writeln!(&control, "error {message}");
            ExitCode::FAILURE
        }
    }
}

/// Becomes the subreaper and starts the session; its processes and the
/// grace period. Once the session runs nothing fails: what goes wrong
/// later ends with the job's processes killed, never with them left.
fn start_session(
    args: &[String],
    disarmed: &[i32],
    mut control: &UnixStream,
) -> Result<(JobProcesses, Duration), String> {
    let (grace, argv) = match args {
        [grace, _, ..] => match grace.parse::<u64>() {
            Ok(ms) => (Duration::from_millis(ms), &args[1..]),
            Err(_) => return Err(format!("bad grace period {grace:?}")),
        },
        _ => return Err("no program to run".into()),
    };
    // Without it, what is left at the end could not be told by its mark.
    let mark = std::env::var(MARK_VAR)
        .ok()
        .filter(|mark| !mark.is_empty())
        .ok_or_else(|| format!("no {MARK_VAR} in the environment"))?;
    sys::disarm_signals(disarmed).map_err(|e| format!("cannot set signal handlers: {e}"))?;
    sys::become_child_subreaper().map_err(|e| format!("cannot become a subreaper: {e}"))?;
    let terminal = || {
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("cannot use the terminal: {e}"))
    };
    let creds = match std::env::var(CREDENTIALS_VAR) {
        Ok(text) => Some(
            decode_credentials(&text).ok_or_else(|| format!("bad {CREDENTIALS_VAR} {text:?}"))?,
        ),
        Err(_) => None,
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_remove(CREDENTIALS_VAR);
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        cmd.stdin(Stdio::from(terminal()?))
            .stdout(Stdio::from(terminal()?))
            .stderr(Stdio::from(terminal()?));
        sys::spawn_as_session_leader_on_tty(&mut cmd);
    } else {
        // A command whose output the agent reads from a pipe (a compose
        // job's host setup commands): no terminal, nothing to read.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(terminal()?))
            .stderr(Stdio::from(terminal()?));
        sys::spawn_as_session_leader(&mut cmd);
    }
    // The subreaper stays the agent's: the job's user can neither signal
    // it nor read what it holds.
    if let Some(creds) = &creds {
        sys::spawn_as(&mut cmd, creds);
    }
    let session = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    drop(cmd);
    // The terminal is the job's: once its processes close it, the agent's
    // reader sees its end. Should this fail, the agent sees it when the
    // job's processes are killed instead.
    let _ = sys::stdin_from_null();
    let session = session.id() as i32;
    // An agent that cannot hear this is gone: `serve` then sees its end
    // closed and ends the job.
    let _ = writeln!(control, "pid {session}");
    let me = std::process::id() as i32;
    Ok((JobProcesses::new(session, &mark).with_subreaper(me), grace))
}

/// Reaps what ends (reporting the session's status) until the agent
/// closes its end of `control`, then kills what is left of the job.
fn serve(control: &UnixStream, (job, grace): (JobProcesses, Duration)) {
    let session = job.session;
    let reaper = control.try_clone().and_then(|mut report| {
        std::thread::Builder::new()
            .name("reap".into())
            .spawn(move || {
                // Without children none can come: every process that could
                // become one is below this one.
                while let Ok(Some((pid, status))) = sys::wait_any_child() {
                    if pid == session {
                        let _ = writeln!(report, "exit {}", exit_code(status));
                    }
                }
            })
    });
    if reaper.is_err() {
        // Nothing would report the session's end: the agent is told it
        // ended, and ends the job.
        let _ = writeln!(&*control, "exit 1");
    }
    // Until the agent closes its end, or dies.
    let mut buf = [0u8; 64];
    loop {
        match (&*control).read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    job.kill_all(grace);
}
