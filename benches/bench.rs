//! `make bench`: measures the release `agent` binary against plain bash doing
//! the same work, in the same process, and checks the figures against the
//! performance targets.
//!
//! Each `bench_*` function prints a titled block and returns rows for the
//! summary table printed at the end. Every figure is the median of `RUNS`
//! runs (fewer if a benchmark exceeds its time budget); agent and baseline
//! runs are interleaved so that drift in machine load affects both alike. A
//! missed target prints `MISSED` but does not fail the process, so that every
//! figure is always printed. A benchmark that could not
//! measure at all (the agent failed the job, timed out, or wrote an event log
//! that does not show the work done) prints `ERROR`, and the process exits 1
//! after the summary: a figure taken from a failing job would be worthless.
//!
//! The agent runs as `agent run --json --data-dir <tmp> <job.json>` with
//! stdout discarded and `HOME` in a scratch directory that is removed
//! afterwards. Its wall time is measured from spawn to reaping; its peak RSS
//! comes from `wait4`'s `ru_maxrss`.

use std::cell::Cell;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The agent binary built by `cargo bench` (bench profile, i.e. release).
const AGENT: &str = env!("CARGO_BIN_EXE_agent");

/// Names another agent binary to measure instead (say, an older build).
const AGENT_OVERRIDE_VAR: &str = "AGENT_BENCH_BIN";

fn agent_binary() -> String {
    std::env::var(AGENT_OVERRIDE_VAR).unwrap_or_else(|_| AGENT.to_owned())
}

/// How many times each measurement is repeated; the median is reported.
const RUNS: usize = 3;

/// Once a benchmark has spent this long, it takes no further runs and reports
/// the median of those it has, so that a slow engine cannot make `make bench`
/// take many minutes.
const BENCH_BUDGET: Duration = Duration::from_secs(45);

/// Upper bound for one run of anything; a run that takes longer is stopped
/// and the benchmark reports an error instead of hanging `make bench`.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// After SIGTERM on timeout, how long the agent gets before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

type BenchFn = fn() -> Result<Vec<Row>, Failure>;

fn main() {
    println!("agent benchmarks");
    println!(
        "  binary: {} (override with {AGENT_OVERRIDE_VAR})",
        agent_binary()
    );
    println!("  each figure is the median of {RUNS} runs; baselines run in this process");
    println!();

    let benches: [(&str, BenchFn); 2] = [
        ("per-command overhead", bench_command_overhead),
        ("throughput", bench_throughput),
    ];
    let mut rows = Vec::new();
    for (title, bench) in benches {
        println!("== {title} ==");
        match bench() {
            Ok(bench_rows) => rows.extend(bench_rows),
            Err(failure) => {
                println!("  ERROR: {failure}");
                rows.push(Row::error(title));
            }
        }
        println!();
    }

    print_summary(&rows);
    if rows.iter().any(|row| row.outcome == Outcome::Error) {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------

/// Number of `true` commands in the per-command overhead job.
const N_COMMANDS: usize = 1000;

/// Target: agent overhead per command, in milliseconds.
const OVERHEAD_TARGET_MS: f64 = 1.0;

/// Per-command overhead: 1000 `true` commands through `agent run`, against
/// bash running a script of the same 1000 lines (bash start-up included).
fn bench_command_overhead() -> Result<Vec<Row>, Failure> {
    println!("  job: {N_COMMANDS} x `true` via `agent run`; baseline: `bash script` with {N_COMMANDS} `true` lines");

    let scratch = Scratch::new("overhead-baseline")?;
    let script = scratch.path().join("script.sh");
    fs::write(&script, "true\n".repeat(N_COMMANDS))
        .map_err(|e| Failure::io("write baseline script", e))?;

    let commands: Vec<Value> = (0..N_COMMANDS)
        .map(|_| json!({ "directive": "true" }))
        .collect();
    let job = json!({ "job_id": "bench-overhead", "commands": commands });

    let mut bash_times = Vec::new();
    let mut agent_times = Vec::new();
    let mut agent_rss = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let mut bash = Command::new("bash");
        bash.arg(&script).current_dir(scratch.path());
        let bash_run = measure_ok("bash", bash)?;

        let agent_run = run_agent("overhead", &job)?;
        let summary = agent_run.summarize(|_, _| {})?;
        let n_true = summary
            .steps
            .iter()
            .filter(|step| step.directive == "true" && step.exit_code == Some(0))
            .count();
        if n_true != N_COMMANDS {
            return Err(agent_run.failed(Failure::new(format!(
                "{n_true} successful `true` steps, expected {N_COMMANDS}"
            ))));
        }

        println!(
            "  run {run}: bash {}, agent {} (peak RSS {})",
            fmt_duration(bash_run.wall),
            fmt_duration(agent_run.measured.wall),
            fmt_kib(agent_run.measured.max_rss_kib),
        );
        bash_times.push(bash_run.wall);
        agent_times.push(agent_run.measured.wall);
        agent_rss.push(agent_run.measured.max_rss_kib);
    }

    let bash = median(&bash_times);
    let agent = median(&agent_times);
    let ratio = ratio(agent, bash);
    let overhead_ms = (agent.as_secs_f64() - bash.as_secs_f64()) * 1000.0 / N_COMMANDS as f64;
    let rss = median(&agent_rss);
    println!(
        "  median: bash {}, agent {} (ratio {ratio:.1}x), agent peak RSS {}",
        fmt_duration(bash),
        fmt_duration(agent),
        fmt_kib(rss),
    );
    let row = Row::at_most(
        "per-command overhead",
        Some((agent, bash)),
        overhead_ms,
        OVERHEAD_TARGET_MS,
        "ms/cmd",
        3,
    );
    println!(
        "  overhead per command: ({} - {}) / {N_COMMANDS} = {}   target {}   {}",
        fmt_duration(agent),
        fmt_duration(bash),
        row.figure,
        row.target,
        row.outcome,
    );
    Ok(vec![row])
}

/// The throughput pipeline: 200 MB of output in lines of 99 characters.
const PIPELINE: &str = r"head -c 200000000 /dev/zero | tr '\0' a | fold -w 99";

/// How many `a` bytes the pipeline prints; the event log must hold them all.
const PIPELINE_A_BYTES: u64 = 200_000_000;

/// Target: agent wall time over bash wall time for the pipeline.
const THROUGHPUT_TARGET_RATIO: f64 = 2.0;

/// Target: peak RSS of the agent process while it logs the pipeline, in MiB.
const RSS_TARGET_MIB: f64 = 32.0;

/// Throughput: the pipeline through `agent run`, against `bash -c` sending
/// the same pipeline to /dev/null; and the agent's peak RSS meanwhile.
///
/// For context it also times `script(1)` relaying the pipeline through a
/// pseudo-terminal to /dev/null: the job's bash runs on a pty, where `fold`
/// is line-buffered and every line crosses the tty layer, so that is roughly
/// the floor for any pty-based agent. It is information, not a target.
fn bench_throughput() -> Result<Vec<Row>, Failure> {
    println!("  job: `{PIPELINE}` via `agent run`; baseline: `bash -c '... > /dev/null'`");
    println!("  pty reference (info): `script -qec '...' /dev/null > /dev/null`");

    let scratch = Scratch::new("throughput-baseline")?;
    let job = json!({
        "job_id": "bench-throughput",
        "commands": [{ "directive": PIPELINE }],
    });

    let mut bash_times = Vec::new();
    let mut agent_times = Vec::new();
    let mut agent_rss = Vec::new();
    let mut pty_times = Vec::new();
    let mut pty_reference = true;
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let mut bash = Command::new("bash");
        bash.arg("-c")
            .arg(format!("{PIPELINE} > /dev/null"))
            .current_dir(scratch.path());
        let bash_run = measure_ok("bash", bash)?;

        let pty_run = if pty_reference {
            let mut script = Command::new("script");
            script
                .args(["-q", "-e", "-c", PIPELINE, "/dev/null"])
                .current_dir(scratch.path());
            match measure_ok("script", script) {
                Ok(script_run) => Some(script_run.wall),
                Err(failure) => {
                    println!("  (pty reference skipped: {failure})");
                    pty_reference = false;
                    pty_times.clear();
                    None
                }
            }
        } else {
            None
        };

        let agent_run = run_agent("throughput", &job)?;
        let mut a_bytes = 0u64;
        let summary = agent_run.summarize(|directive, output| {
            if directive == PIPELINE {
                a_bytes += output.bytes().filter(|&b| b == b'a').count() as u64;
            }
        })?;
        let step_ok = summary
            .steps
            .iter()
            .any(|step| step.directive == PIPELINE && step.exit_code == Some(0));
        if !step_ok {
            return Err(agent_run.failed(Failure::new(
                "no successful step for the pipeline".to_string(),
            )));
        }
        if a_bytes != PIPELINE_A_BYTES {
            return Err(agent_run.failed(Failure::new(format!(
                "{a_bytes} `a` bytes of pipeline output, expected {PIPELINE_A_BYTES}"
            ))));
        }

        let pty_text = match pty_run {
            Some(wall) => format!(", pty reference {}", fmt_duration(wall)),
            None => String::new(),
        };
        println!(
            "  run {run}: bash {}, agent {} (ratio {:.2}x), agent peak RSS {}{pty_text}",
            fmt_duration(bash_run.wall),
            fmt_duration(agent_run.measured.wall),
            ratio(agent_run.measured.wall, bash_run.wall),
            fmt_kib(agent_run.measured.max_rss_kib),
        );
        // Both CPU figures include the pipeline's processes, so their
        // difference is roughly what the agent and its pty cost.
        println!(
            "         CPU (user+sys, with children): bash {}, agent {}; event log {}",
            fmt_duration(bash_run.cpu),
            fmt_duration(agent_run.measured.cpu),
            fmt_bytes(agent_run.log_bytes()),
        );
        bash_times.push(bash_run.wall);
        agent_times.push(agent_run.measured.wall);
        agent_rss.push(agent_run.measured.max_rss_kib);
        pty_times.extend(pty_run);
    }

    let bash = median(&bash_times);
    let agent = median(&agent_times);
    let throughput = Row::at_most(
        "throughput (agent/bash)",
        Some((agent, bash)),
        ratio(agent, bash),
        THROUGHPUT_TARGET_RATIO,
        "x",
        2,
    );
    let rss_mib = median(&agent_rss) as f64 / 1024.0;
    let rss = Row::at_most(
        "agent peak RSS (throughput job)",
        None,
        rss_mib,
        RSS_TARGET_MIB,
        "MiB",
        1,
    );
    println!(
        "  median: bash {}, agent {}   ratio {}   target {}   {}",
        fmt_duration(bash),
        fmt_duration(agent),
        throughput.figure,
        throughput.target,
        throughput.outcome,
    );
    println!(
        "  median agent peak RSS: {}   target {}   {}",
        rss.figure, rss.target, rss.outcome,
    );
    println!(
        "  (ru_maxrss from wait4 also covers reaped descendants such as bash; an upper bound)"
    );
    let mut rows = vec![throughput, rss];
    if !pty_times.is_empty() {
        let pty = median(&pty_times);
        println!(
            "  median pty reference: {} = {:.2}x bash; agent is {:.2}x the pty reference",
            fmt_duration(pty),
            ratio(pty, bash),
            ratio(agent, pty),
        );
        rows.push(Row::info(
            "throughput (agent/script pty relay)",
            (agent, pty),
        ));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// Running the agent
// ---------------------------------------------------------------------------

/// One finished `agent run` whose job passed, with its scratch directory
/// (removed when this is dropped).
struct AgentRun {
    measured: Measured,
    log: PathBuf,
    scratch: Scratch,
}

impl AgentRun {
    fn log_bytes(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Reads the event log and checks that the job passed; `on_output` sees
    /// every `cmd_output` with the directive of the step it belongs to.
    fn summarize(&self, on_output: impl FnMut(&str, &str)) -> Result<LogSummary, Failure> {
        let summary = summarize_log(&self.log, on_output).map_err(|e| self.failed(e))?;
        match summary.result.as_deref() {
            Some("passed") => Ok(summary),
            Some(other) => Err(self.failed(Failure::new(format!(
                "job_finished has result {other:?}, expected \"passed\""
            )))),
            None => Err(self.failed(Failure::new(
                "the last event is not job_finished".to_string(),
            ))),
        }
    }

    /// Turns a finding about this run into a failure that names the event
    /// log and keeps the run's files for inspection.
    fn failed(&self, failure: Failure) -> Failure {
        Failure::new(format!(
            "event log {}: {failure} {}",
            self.log.display(),
            self.scratch.keep()
        ))
    }
}

/// Runs `agent run --json` on `job` in a fresh scratch directory and checks
/// that it exited 0. The caller checks the event log.
fn run_agent(label: &str, job: &Value) -> Result<AgentRun, Failure> {
    let scratch = Scratch::new(label)?;
    let home = scratch.path().join("home");
    let data_dir = scratch.path().join("data");
    for dir in [&home, &data_dir] {
        fs::create_dir_all(dir).map_err(|e| Failure::io("create scratch directory", e))?;
    }
    let job_path = scratch.path().join("job.json");
    let job_text = serde_json::to_vec(job).expect("a JSON value serializes");
    fs::write(&job_path, job_text).map_err(|e| Failure::io("write job file", e))?;
    let stderr_path = scratch.path().join("agent.stderr");
    let stderr = File::create(&stderr_path).map_err(|e| Failure::io("create stderr file", e))?;

    let mut cmd = Command::new(agent_binary());
    cmd.arg("run")
        .arg("--json")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg(&job_path)
        .current_dir(&home)
        .env("HOME", &home)
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            scratch.path().join("agent_log"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    let measured = measure(cmd, true)?;
    if !measured.exit.is_success() {
        let stderr_tail = match read_tail(&stderr_path, 2000) {
            Ok(tail) if !tail.trim().is_empty() => tail,
            _ => "(empty)".to_owned(),
        };
        return Err(Failure::new(format!(
            "agent run {} {}; stderr tail:\n{}",
            measured.exit,
            scratch.keep(),
            indent(stderr_tail.trim_end())
        )));
    }
    let log =
        find_event_log(&data_dir).map_err(|e| Failure::new(format!("{e} {}", scratch.keep())))?;
    Ok(AgentRun {
        measured,
        log,
        scratch,
    })
}

/// Finds the job's event log under the data directory: a file whose first
/// line is a `job_started` event. The file name is the engine's business.
fn find_event_log(data_dir: &Path) -> Result<PathBuf, Failure> {
    let mut files = Vec::new();
    collect_files(data_dir, &mut files).map_err(|e| Failure::io("list data directory", e))?;
    let mut logs: Vec<(u64, PathBuf)> = files
        .iter()
        .filter(|path| first_event(path).as_deref() == Some("job_started"))
        .map(|path| {
            (
                fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                path.clone(),
            )
        })
        .collect();
    // Should there be several (say, a copy), the largest is the full log.
    logs.sort();
    match logs.pop() {
        Some((_, path)) => Ok(path),
        None => Err(Failure::new(format!(
            "no event log (a file starting with job_started) under {}; files: {files:?}",
            data_dir.display(),
        ))),
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            collect_files(&entry.path(), files)?;
        } else if file_type.is_file() {
            files.push(entry.path());
        }
    }
    Ok(())
}

/// The `event` of a file's first line, if that line is a JSON event.
fn first_event(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut line = Vec::new();
    BufReader::new(file.take(64 * 1024))
        .read_until(b'\n', &mut line)
        .ok()?;
    let value: Value = serde_json::from_slice(&line).ok()?;
    value.get("event")?.as_str().map(str::to_owned)
}

/// One command step as the event log tells it.
struct Step {
    directive: String,
    exit_code: Option<i64>,
}

/// What the benchmarks need to know from an event log.
struct LogSummary {
    steps: Vec<Step>,
    /// The `result` of `job_finished`, if that is the last event.
    result: Option<String>,
}

/// Reads an event log line by line (it may be hundreds of megabytes).
fn summarize_log(
    path: &Path,
    mut on_output: impl FnMut(&str, &str),
) -> Result<LogSummary, Failure> {
    let file = File::open(path).map_err(|e| Failure::io("open event log", e))?;
    let mut steps: Vec<Step> = Vec::new();
    let mut in_step = false;
    let mut result = None;
    for (index, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let line = line.map_err(|e| Failure::io("read event log", e))?;
        if line.is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line).map_err(|e| {
            Failure::new(format!(
                "event log {} line {}: not JSON ({e})",
                path.display(),
                index + 1
            ))
        })?;
        let field = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or("");
        result = None;
        match field("event") {
            "cmd_started" => {
                steps.push(Step {
                    directive: field("directive").to_owned(),
                    exit_code: None,
                });
                in_step = true;
            }
            "cmd_output" => {
                let directive = match steps.last() {
                    Some(step) if in_step => step.directive.as_str(),
                    _ => "",
                };
                on_output(directive, field("output"));
            }
            "cmd_finished" => {
                if let Some(step) = steps.last_mut().filter(|_| in_step) {
                    step.exit_code = event.get("exit_code").and_then(Value::as_i64);
                }
                in_step = false;
            }
            "job_finished" => result = Some(field("result").to_owned()),
            _ => {}
        }
    }
    Ok(LogSummary { steps, result })
}

// ---------------------------------------------------------------------------
// Measuring a process
// ---------------------------------------------------------------------------

/// Wall time, exit and peak RSS of one finished process.
struct Measured {
    wall: Duration,
    exit: Exit,
    /// `ru_maxrss` from `wait4`, in KiB (Linux): the larger of the process's
    /// own peak and that of the descendants it reaped.
    max_rss_kib: u64,
    /// User plus system CPU time of the process and its reaped descendants.
    cpu: Duration,
}

/// How a measured process ended.
enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
}

impl Exit {
    fn is_success(&self) -> bool {
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
fn measure_ok(what: &str, mut cmd: Command) -> Result<Measured, Failure> {
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
fn measure(mut cmd: Command, graceful: bool) -> Result<Measured, Failure> {
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
fn watchdog(
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
fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
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
struct Budget {
    started: Instant,
}

impl Budget {
    fn start() -> Self {
        Budget {
            started: Instant::now(),
        }
    }

    /// Whether run number `run` (1-based) may start; the first always may.
    fn allows_run(&self, run: usize) -> bool {
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

// ---------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------

/// A directory under the system temp dir, removed with its contents on drop
/// unless a failure asked to keep it for inspection.
struct Scratch {
    path: PathBuf,
    keep: Cell<bool>,
}

impl Scratch {
    fn new(label: &str) -> Result<Self, Failure> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("agent-bench-{}-{n}-{label}", std::process::id()));
        // A leftover from an earlier process with the same pid is stale.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| Failure::io("create scratch directory", e))?;
        Ok(Scratch {
            path,
            keep: Cell::new(false),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after all and says where it is, for a failure
    /// message.
    fn keep(&self) -> String {
        self.keep.set(true);
        format!("(files kept in {})", self.path.display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep.get() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Results and reporting
// ---------------------------------------------------------------------------

/// Why a benchmark could not produce a figure.
struct Failure {
    message: String,
}

impl Failure {
    fn new(message: String) -> Self {
        Failure { message }
    }

    fn io(what: impl fmt::Display, source: io::Error) -> Self {
        Failure::new(format!("{what}: {source}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Missed,
    Error,
    /// A figure for context, with no target.
    Info,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "OK",
            Outcome::Missed => "MISSED",
            Outcome::Error => "ERROR",
            Outcome::Info => "info",
        })
    }
}

/// One line of the summary table.
struct Row {
    check: String,
    /// Median agent time, or empty when the check has no timed comparison.
    agent: String,
    /// Median baseline (bash) time, likewise.
    baseline: String,
    /// Agent time over baseline time, likewise.
    ratio: String,
    /// The figure the target applies to, with its unit.
    figure: String,
    target: String,
    outcome: Outcome,
}

impl Row {
    /// A check passing when `value <= limit`; `times` is (agent, baseline).
    fn at_most(
        check: &str,
        times: Option<(Duration, Duration)>,
        value: f64,
        limit: f64,
        unit: &str,
        decimals: usize,
    ) -> Row {
        let (agent, baseline, ratio_text) = match times {
            Some((agent, baseline)) => (
                fmt_duration(agent),
                fmt_duration(baseline),
                format!("{:.2}x", ratio(agent, baseline)),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let space = if unit == "x" { "" } else { " " };
        Row {
            check: check.to_owned(),
            agent,
            baseline,
            ratio: ratio_text,
            figure: format!("{value:.decimals$}{space}{unit}"),
            target: format!("<= {limit}{space}{unit}"),
            outcome: if value <= limit {
                Outcome::Ok
            } else {
                Outcome::Missed
            },
        }
    }

    /// A timed comparison for context; `times` is (agent, reference).
    fn info(check: &str, times: (Duration, Duration)) -> Row {
        let (agent, reference) = times;
        Row {
            check: check.to_owned(),
            agent: fmt_duration(agent),
            baseline: fmt_duration(reference),
            ratio: format!("{:.2}x", ratio(agent, reference)),
            figure: format!("{:.2}x", ratio(agent, reference)),
            target: "-".to_owned(),
            outcome: Outcome::Info,
        }
    }

    fn error(check: &str) -> Row {
        Row {
            check: check.to_owned(),
            agent: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            figure: "see above".to_owned(),
            target: String::new(),
            outcome: Outcome::Error,
        }
    }
}

fn print_summary(rows: &[Row]) {
    let header = [
        "check", "agent", "baseline", "ratio", "figure", "target", "status",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            [
                row.check.clone(),
                row.agent.clone(),
                row.baseline.clone(),
                row.ratio.clone(),
                row.figure.clone(),
                row.target.clone(),
                row.outcome.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let print_line = |line: &[String]| {
        let text: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("  {}", text.join("  ").trim_end());
    };

    println!("== summary ==");
    print_line(&header.map(str::to_owned));
    print_line(&widths.map(|width| "-".repeat(width)));
    for line in &cells {
        print_line(line);
    }
    let count = |outcome: Outcome| rows.iter().filter(|r| r.outcome == outcome).count();
    let (ok, missed, errors) = (
        count(Outcome::Ok),
        count(Outcome::Missed),
        count(Outcome::Error),
    );
    println!();
    println!(
        "  {} checks: {ok} OK, {missed} MISSED, {errors} ERROR",
        ok + missed + errors
    );
}

fn median<T: Copy + Ord>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ratio(agent: Duration, baseline: Duration) -> f64 {
    agent.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
}

fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1000.0)
    } else {
        format!("{secs:.2} s")
    }
}

fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn fmt_bytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The last `max` bytes of a file, lossily decoded.
fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
