//! Measuring one process: wall time from spawn to reaping, exit, and
//! resource usage from `wait4`, under a watchdog that stops a run after
//! `RUN_TIMEOUT`; and `Budget`, which stops taking runs of a benchmark that
//! has spent `BENCH_BUDGET`. It knows nothing of the agent.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::{fmt_duration, Failure};
use crate::{BENCH_BUDGET, KILL_GRACE, RUNS, RUN_TIMEOUT};

/// Wall time, exit and peak RSS of one finished process.
pub struct Measured {
    pub wall: Duration,
    pub exit: Exit,
    /// `ru_maxrss` from `wait4`, in KiB (Linux): the larger of the process's
    /// own peak and that of the descendants it reaped.
    pub max_rss_kib: u64,
    /// User plus system CPU time of the process and its reaped descendants.
    pub cpu: Duration,
}

/// How a measured process ended.
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
}

impl Exit {
    pub fn is_success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(signal) => write!(f, "was killed by signal {signal}"),
            Exit::TimedOut => write!(f, "timed out after {}s", RUN_TIMEOUT.as_secs()),
        }
    }
}

/// Runs a baseline command and insists that it succeeded.
pub fn measure_ok(what: &str, mut cmd: Command) -> Result<Measured, Failure> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let measured = measure(cmd, false)?;
    if measured.exit.is_success() {
        Ok(measured)
    } else {
        Err(Failure::new(format!("baseline {what} {}", measured.exit)))
    }
}

/// Spawns `cmd`, reaps it with `wait4` and returns its wall time (from just
/// before spawning to reaping) and resource usage. A watchdog thread stops
/// the process after `RUN_TIMEOUT` (SIGTERM, then SIGKILL) so that a hung run
/// cannot hang the benchmark; `graceful` says the process deserves the
/// SIGTERM grace period (the agent cleans up its bash session on SIGTERM).
pub fn measure(mut cmd: Command, graceful: bool) -> Result<Measured, Failure> {
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| Failure::io(format!("spawn {:?}", cmd.get_program()), e))?;
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");

    let reaped = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let reaped = Arc::clone(&reaped);
        let timed_out = Arc::clone(&timed_out);
        thread::spawn(move || watchdog(pid, started, graceful, &reaped, &timed_out))
    };

    let waited = wait4(pid);
    let wall = started.elapsed();
    reaped.store(true, Ordering::SeqCst);
    watchdog.thread().unpark();
    watchdog.join().expect("watchdog thread does not panic");
    // The child is reaped; dropping the handle neither waits nor kills.
    drop(child);

    let (status, usage) = waited.map_err(|e| Failure::io("wait4", e))?;
    let exit = if timed_out.load(Ordering::SeqCst) {
        Exit::TimedOut
    } else if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    };
    Ok(Measured {
        wall,
        exit,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        cpu: timeval_duration(usage.ru_utime) + timeval_duration(usage.ru_stime),
    })
}

/// Sleeps (parked) until the process is reaped or its time is up; then sends
/// SIGTERM, and SIGKILL after the grace period. It checks `reaped` before
/// each signal so that it never signals a recycled pid.
pub fn watchdog(
    pid: libc::pid_t,
    started: Instant,
    graceful: bool,
    reaped: &AtomicBool,
    timed_out: &AtomicBool,
) {
    let mut deadline = started + RUN_TIMEOUT;
    let mut signal = if graceful {
        libc::SIGTERM
    } else {
        libc::SIGKILL
    };
    loop {
        if reaped.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if now < deadline {
            thread::park_timeout(deadline - now);
            continue;
        }
        timed_out.store(true, Ordering::SeqCst);
        // SAFETY: kill has no memory-safety preconditions; `pid` is our
        // unreaped child, since `reaped` was false just above.
        unsafe { libc::kill(pid, signal) };
        if signal == libc::SIGKILL {
            return;
        }
        signal = libc::SIGKILL;
        deadline = Instant::now() + KILL_GRACE;
    }
}

fn timeval_duration(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

/// Blocks until `pid` exits; returns its wait status and resource usage.
pub fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers point to live, writable locals.
        let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if got == pid {
            return Ok((status, usage));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Tracks one benchmark's time against `BENCH_BUDGET`.
pub struct Budget {
    pub started: Instant,
}

impl Budget {
    pub fn start() -> Self {
        Budget {
            started: Instant::now(),
        }
    }

    /// Whether run number `run` (1-based) may start; the first always may.
    pub fn allows_run(&self, run: usize) -> bool {
        let spent = self.started.elapsed();
        if run == 1 || spent < BENCH_BUDGET {
            return true;
        }
        println!(
            "  (stopping after {} of {RUNS} runs: {} spent, budget {})",
            run - 1,
            fmt_duration(spent),
            fmt_duration(BENCH_BUDGET)
        );
        false
    }
}

/// Runs a baseline with its stdout in `out_path`; returns the output too.
pub fn measure_output(
    what: &str,
    mut cmd: Command,
    out_path: &Path,
) -> Result<(Measured, String), Failure> {
    let out = File::create(out_path).map_err(|e| Failure::io("create output file", e))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(out));
    let measured = measure(cmd, false)?;
    if !measured.exit.is_success() {
        return Err(Failure::new(format!("baseline {what} {}", measured.exit)));
    }
    let text = fs::read_to_string(out_path).map_err(|e| Failure::io("read output file", e))?;
    Ok((measured, text))
}
