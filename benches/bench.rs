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
//! The first two benchmarks run the agent as `agent run --json --data-dir
//! <tmp> <job.json>` with stdout discarded and `HOME` in a scratch directory
//! that is removed afterwards. Its wall time is measured from spawn to
//! reaping; its peak RSS comes from `wait4`'s `ru_maxrss`.
//!
//! The others start `agent serve` on 127.0.0.1 port 0 (a certificate made
//! here with rcgen, a JWT from `agent token`, HOME, data dir and agent log in
//! a scratch directory) and drive it over HTTPS with ureq, as a control plane
//! would: `POST /jobs`, then `GET /jobs/{id}/log?start_from=N` until
//! `job_finished`. Every job's whole log is then read through the API and
//! must show the job passed with the work done. The docker compose benchmark
//! runs only when a compose tool and the image `agent-test/bash:1` exist,
//! and prints `SKIPPED` with the reason otherwise.
//!
//! `cargo bench --bench bench -- <word>...` runs only the benchmarks whose
//! title contains one of the words.

use std::cell::Cell;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    let benches: [(&str, BenchFn); 8] = [
        ("per-command overhead", bench_command_overhead),
        ("throughput", bench_throughput),
        ("idle RSS of agent serve", bench_idle_rss),
        ("per-command overhead via the API", bench_serve_overhead),
        ("job start via the API", bench_serve_start),
        ("log tail latency", bench_log_tail),
        ("GET /is_alive under 64 log pollers", bench_pollers),
        ("docker compose executor", bench_compose),
    ];
    // `cargo bench --bench bench -- log` runs the benchmarks whose title
    // contains `log`; cargo itself passes `--bench`, which is not a filter.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let mut rows = Vec::new();
    for (title, bench) in benches {
        if !filters.is_empty() && !filters.iter().any(|f| title.contains(f.as_str())) {
            continue;
        }
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
    let rss = median(&agent_rss);
    println!(
        "  median: bash {}, agent {} (ratio {ratio:.1}x), agent peak RSS {}",
        fmt_duration(bash),
        fmt_duration(agent),
        fmt_kib(rss),
    );
    Ok(vec![overhead_row("per-command overhead", agent, bash)])
}

/// The per-command overhead of `N_COMMANDS` commands through the agent
/// against plain bash, printed and as a summary row.
fn overhead_row(title: &str, agent: Duration, bash: Duration) -> Row {
    let overhead_ms = (agent.as_secs_f64() - bash.as_secs_f64()) * 1000.0 / N_COMMANDS as f64;
    let row = Row::at_most(
        title,
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
    row
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
/// Two more figures, information rather than targets, show where the time
/// goes. The job's stdout is a terminal, so `fold` is line-buffered and
/// makes about two million 100-byte writes instead of about fifty thousand
/// 4 KiB ones:
/// - "line-buffered": the same pipeline with `stdbuf -oL fold` into
///   /dev/null, the cost of those writes with no terminal at all;
/// - "bare pty relay": the pipeline on a pseudo-terminal set up as the
///   agent sets up its session, read by a loop in this process that only
///   counts bytes: the floor for any agent whose jobs see a terminal.
fn bench_throughput() -> Result<Vec<Row>, Failure> {
    println!("  job: `{PIPELINE}` via `agent run`; baseline: `bash -c '... > /dev/null'`");
    println!(
        "  info: line-buffered `stdbuf -oL fold` into /dev/null; bare pty relay in this process"
    );

    let scratch = Scratch::new("throughput-baseline")?;
    let job = json!({
        "job_id": "bench-throughput",
        "commands": [{ "directive": PIPELINE }],
    });

    let mut bash_times = Vec::new();
    let mut agent_times = Vec::new();
    let mut agent_rss = Vec::new();
    let mut line_buffered_times = Vec::new();
    let mut relay_times = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let to_dev_null = |pipeline: &str| {
            let mut bash = Command::new("bash");
            bash.arg("-c")
                .arg(format!("{pipeline} > /dev/null"))
                .current_dir(scratch.path());
            bash
        };
        let bash_run = measure_ok("bash", to_dev_null(PIPELINE))?;
        let line_buffered_run = measure_ok(
            "line-buffered bash",
            to_dev_null(&PIPELINE.replace("| fold", "| stdbuf -oL fold")),
        )?;

        let relay = pty_relay(PIPELINE, scratch.path())?;
        // Lines of 99 `a` and a newline, and a last line of the rest without one.
        let expected = PIPELINE_A_BYTES + PIPELINE_A_BYTES / 99;
        if relay.bytes != expected {
            return Err(Failure::new(format!(
                "bare pty relay read {} bytes, expected {expected}",
                relay.bytes
            )));
        }

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

        println!(
            "  run {run}: bash {}, agent {} (ratio {:.2}x), agent peak RSS {}",
            fmt_duration(bash_run.wall),
            fmt_duration(agent_run.measured.wall),
            ratio(agent_run.measured.wall, bash_run.wall),
            fmt_kib(agent_run.measured.max_rss_kib),
        );
        println!(
            "         line-buffered {}, bare pty relay {}",
            fmt_duration(line_buffered_run.wall),
            fmt_duration(relay.wall),
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
        line_buffered_times.push(line_buffered_run.wall);
        relay_times.push(relay.wall);
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
    let line_buffered = median(&line_buffered_times);
    let relay = median(&relay_times);
    println!(
        "  median line-buffered: {} = {:.2}x bash; median bare pty relay: {} = {:.2}x bash",
        fmt_duration(line_buffered),
        ratio(line_buffered, bash),
        fmt_duration(relay),
        ratio(relay, bash),
    );
    println!("  agent is {:.2}x the bare pty relay", ratio(agent, relay));
    Ok(vec![
        throughput,
        rss,
        Row::note(
            "line-buffered pipeline/bash",
            format!("{:.2}x", ratio(line_buffered, bash)),
        ),
        Row::note("bare pty relay/bash", format!("{:.2}x", ratio(relay, bash))),
        Row::info("throughput (agent/bare pty relay)", (agent, relay)),
    ])
}

/// What `pty_relay` measured: wall time from spawn to reaping, and the bytes
/// read from the terminal.
struct Relayed {
    wall: Duration,
    bytes: u64,
}

/// Runs `bash -c <command>` with stdout and stderr on a new pseudo-terminal
/// (its own session, the terminal its controlling one, no output
/// post-processing, as in the agent's session) and reads the terminal in this
/// process, counting bytes and nothing else. `measure`'s watchdog bounds it.
fn pty_relay(command: &str, dir: &Path) -> Result<Relayed, Failure> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let (mut master, slave) = {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors we then own; the name,
        // termios and window size pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(Failure::io("openpty", io::Error::last_os_error()));
        }
        // SAFETY: both descriptors are open and owned by nobody else.
        unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
    };
    // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
    unsafe {
        let mut tio: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut tio) == 0 {
            tio.c_oflag &= !libc::OPOST;
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &tio);
        }
    }
    let clone = |fd: &OwnedFd| fd.try_clone().map_err(|e| Failure::io("dup pty", e));
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(clone(&slave)?))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(1, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }

    // Reads until EIO, which comes once every copy of the slave side is
    // closed: the child's when it exits, ours when `measure` drops `cmd`.
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match master.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return total,
            }
        }
    });
    let measured = measure(cmd, false)?;
    let bytes = reader.join().expect("pty reader does not panic");
    if !measured.exit.is_success() {
        return Err(Failure::new(format!(
            "bare pty relay: bash {}",
            measured.exit
        )));
    }
    Ok(Relayed {
        wall: measured.wall,
        bytes,
    })
}

// ---------------------------------------------------------------------------
// Benchmarks through `agent serve`
// ---------------------------------------------------------------------------

/// Target: RSS of an idle `agent serve`, in MiB.
const IDLE_RSS_TARGET_MIB: f64 = 8.0;

/// Idle RSS: `agent serve` started on port 0 with a certificate made here,
/// measured once it printed its `listening on` line and answered one
/// `GET /is_alive`.
fn bench_idle_rss() -> Result<Vec<Row>, Failure> {
    println!("  `agent serve --port 0` with an rcgen certificate; VmRSS from /proc/<pid>/status after one GET /is_alive");
    let mut rss = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let serve = Serve::start("idle-rss", &[])?;
        let status = serve.proc_status()?;
        let field = |name: &str| {
            status_field(&status, name)
                .ok_or_else(|| serve.failed(Failure::new(format!("no {name} in /proc/pid/status"))))
        };
        let vm_rss = field("VmRSS")?;
        let vm_hwm = field("VmHWM")?;
        let threads = field("Threads")?;
        println!(
            "  run {run}: VmRSS {}, VmHWM {}, {threads} threads",
            fmt_kib(vm_rss),
            fmt_kib(vm_hwm),
        );
        rss.push(vm_rss);
    }
    let row = Row::at_most(
        "idle RSS of agent serve",
        None,
        median(&rss) as f64 / 1024.0,
        IDLE_RSS_TARGET_MIB,
        "MiB",
        1,
    );
    println!(
        "  median VmRSS: {}   target {}   {}",
        row.figure, row.target, row.outcome
    );
    Ok(vec![row])
}

/// How often a client polls a job's log while waiting for `job_finished`
/// in the timed benchmarks; the wall time is late by at most about this.
const FINISH_POLL: Duration = Duration::from_millis(10);

/// Per-command overhead through the API: 1000 `true` commands posted to
/// `POST /jobs`, timed from just before the POST until a poll of the log
/// shows `job_finished`, against bash running the same 1000 lines.
fn bench_serve_overhead() -> Result<Vec<Row>, Failure> {
    println!(
        "  job: {N_COMMANDS} x `true` by POST /jobs, timed to `job_finished` in GET /jobs/{{id}}/log (polled every {} ms); baseline: `bash script`",
        FINISH_POLL.as_millis()
    );
    let serve = Serve::start("serve-overhead", &SERVE_JOB_FLAGS)?;
    let client = serve.client();
    let script = serve.scratch.path().join("script.sh");
    fs::write(&script, "true\n".repeat(N_COMMANDS))
        .map_err(|e| Failure::io("write baseline script", e))?;
    let commands: Vec<Value> = (0..N_COMMANDS)
        .map(|_| json!({ "directive": "true" }))
        .collect();

    let mut bash_times = Vec::new();
    let mut agent_times = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let mut bash = Command::new("bash");
        bash.arg(&script).current_dir(serve.scratch.path());
        let bash_run = measure_ok("bash", bash)?;

        let job_id = format!("overhead-{run}");
        let body = job_body(&json!({ "job_id": job_id, "commands": commands }));
        let posted = Instant::now();
        client.post_job(&body)?;
        let finished = client.wait_finished(&job_id, FINISH_POLL, RUN_TIMEOUT)?;
        let wall = finished.at - posted;
        let summary = serve.passed_log(&client, &job_id, |_, _| {})?;
        let n_true = count_ok_steps(&summary, "true");
        if n_true != N_COMMANDS {
            return Err(serve.failed(Failure::new(format!(
                "job {job_id}: {n_true} successful `true` steps, expected {N_COMMANDS}"
            ))));
        }
        println!(
            "  run {run}: bash {}, agent via API {} ({} events)",
            fmt_duration(bash_run.wall),
            fmt_duration(wall),
            finished.events,
        );
        bash_times.push(bash_run.wall);
        agent_times.push(wall);
    }

    let bash = median(&bash_times);
    let agent = median(&agent_times);
    Ok(vec![overhead_row(
        "per-command overhead via API",
        agent,
        bash,
    )])
}

/// A command that prints when it ran, to the microsecond, from bash's own
/// clock. `date +%s.%N` would also do on the host, but busybox `date` in
/// the compose image prints a literal `%N`, and forking `date` adds its own
/// start-up to the figure.
const STAMP: &str = "echo $EPOCHREALTIME";

/// Target: from POST /jobs to the first user command, in milliseconds.
const START_TARGET_MS: f64 = 50.0;

/// Job start through the API: a job whose only command is `STAMP`, timed
/// from the client's clock just before the POST to the command's stamp.
fn bench_serve_start() -> Result<Vec<Row>, Failure> {
    println!("  job: `{STAMP}` by POST /jobs; from the client's clock before the POST to the command's stamp");
    let serve = Serve::start("serve-start", &SERVE_JOB_FLAGS)?;
    let client = serve.client();
    let mut latencies = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let job_id = format!("start-{run}");
        let body = job_body(&json!({
            "job_id": job_id,
            "commands": [{ "directive": STAMP }],
        }));
        let posted = SystemTime::now();
        client.post_job(&body)?;
        client.wait_finished(&job_id, FINISH_POLL, RUN_TIMEOUT)?;
        let mut output = String::new();
        let summary = serve.passed_log(&client, &job_id, |directive, text| {
            if directive == STAMP {
                output.push_str(text);
            }
        })?;
        if count_ok_steps(&summary, STAMP) != 1 {
            return Err(serve.failed(Failure::new(format!(
                "job {job_id}: no successful `{STAMP}` step"
            ))));
        }
        let stamps = parse_stamps(&output).map_err(|e| serve.failed(e))?;
        let latency = since(posted, stamps[0]).map_err(|e| serve.failed(e))?;
        println!(
            "  run {run}: POST to first command {}",
            fmt_duration(latency)
        );
        latencies.push(latency);
    }
    let latency = median(&latencies);
    let row = Row::at_most(
        "job start via API (POST to 1st cmd)",
        None,
        latency.as_secs_f64() * 1000.0,
        START_TARGET_MS,
        "ms",
        1,
    );
    println!(
        "  median: {}   target {}   {}",
        row.figure, row.target, row.outcome
    );
    Ok(vec![row])
}

/// Commands in the job that makes the long log; each `echo x` makes three
/// events (`cmd_started`, one `cmd_output`, `cmd_finished`). Output is
/// flushed at the end of a command, every 100 ms or every 64 KiB, so many
/// short commands are the cheapest way to many events.
const BIG_LOG_COMMANDS: usize = 67_000;

/// The long log must have at least this many events.
const BIG_LOG_MIN_EVENTS: u64 = 200_000;

/// Commands of the short log's job: about 100 events in all.
const SMALL_LOG_COMMANDS: usize = 31;

/// The command of both log jobs.
const ECHO: &str = "echo x";

/// How long the job that makes the long log may take.
const BIG_LOG_TIMEOUT: Duration = Duration::from_secs(240);

/// Timed tail reads of each log; the median is reported.
const TAIL_SAMPLES: usize = 20;

/// Events asked for by each tail read.
const TAIL_EVENTS: u64 = 10;

/// Target: a tail read of the long log, in milliseconds.
const TAIL_TARGET_MS: f64 = 5.0;

/// Target: tail read of the long log over that of the short log.
const TAIL_RATIO_TARGET: f64 = 1.2;

/// Log tail latency: `GET /jobs/{id}/log?start_from=<events - 10>` of a
/// finished job with over 200 000 events, against the same read of a job
/// with about 100 events, on one kept-alive TLS connection.
fn bench_log_tail() -> Result<Vec<Row>, Failure> {
    println!("  logs: {BIG_LOG_COMMANDS} x `{ECHO}` (3 events each) and {SMALL_LOG_COMMANDS} x `{ECHO}`; GET /jobs/{{id}}/log?start_from=<events - {TAIL_EVENTS}>, median of {TAIL_SAMPLES}, one kept-alive connection");
    let serve = Serve::start("log-tail", &SERVE_JOB_FLAGS)?;
    let client = serve.client();
    let echo_job = |job_id: &str, n: usize| {
        let commands: Vec<Value> = (0..n).map(|_| json!({ "directive": ECHO })).collect();
        job_body(&json!({ "job_id": job_id, "commands": commands }))
    };
    let (big_id, small_id) = ("log-big", "log-small");
    let posted = Instant::now();
    client.post_job(&echo_job(big_id, BIG_LOG_COMMANDS))?;
    client.post_job(&echo_job(small_id, SMALL_LOG_COMMANDS))?;
    let small = client.wait_finished(small_id, Duration::from_millis(100), RUN_TIMEOUT)?;
    let big = client.wait_finished(big_id, Duration::from_millis(500), BIG_LOG_TIMEOUT)?;
    let big_wall = big.at - posted;
    println!(
        "  the long log's job took {} ({:.3} ms per command, polled every 500 ms)",
        fmt_duration(big_wall),
        big_wall.as_secs_f64() * 1000.0 / BIG_LOG_COMMANDS as f64,
    );
    for (job_id, n, finished) in [
        (big_id, BIG_LOG_COMMANDS, &big),
        (small_id, SMALL_LOG_COMMANDS, &small),
    ] {
        let summary = serve.passed_log(&client, job_id, |_, _| {})?;
        let n_ok = count_ok_steps(&summary, ECHO);
        if n_ok != n {
            return Err(serve.failed(Failure::new(format!(
                "job {job_id}: {n_ok} successful `{ECHO}` steps, expected {n}"
            ))));
        }
        if finished.events < TAIL_EVENTS {
            return Err(serve.failed(Failure::new(format!(
                "job {job_id}: only {} events",
                finished.events
            ))));
        }
    }
    if big.events < BIG_LOG_MIN_EVENTS {
        return Err(serve.failed(Failure::new(format!(
            "the long log has {} events, fewer than {BIG_LOG_MIN_EVENTS}",
            big.events
        ))));
    }
    println!(
        "  events: long log {}, short log {}",
        big.events, small.events
    );

    let tail = |job_id: &str, events: u64| -> Result<Duration, Failure> {
        let path = format!("/jobs/{job_id}/log?start_from={}", events - TAIL_EVENTS);
        let mut lines = LineTracker::default();
        let started = Instant::now();
        let status = client.get_streamed(&path, None, &mut |bytes| {
            lines.feed(bytes);
            Ok(())
        })?;
        let took = started.elapsed();
        if status != 200 || lines.lines != TAIL_EVENTS || !lines.job_finished() {
            return Err(serve.failed(Failure::new(format!(
                "GET {path}: status {status}, {} lines, last line {:?}; expected 200, {TAIL_EVENTS} lines ending with job_finished",
                lines.lines,
                String::from_utf8_lossy(&lines.last),
            ))));
        }
        Ok(took)
    };
    // One read of each first: the connection, and the page cache.
    tail(big_id, big.events)?;
    tail(small_id, small.events)?;
    let mut big_times = Vec::new();
    let mut small_times = Vec::new();
    for _ in 0..TAIL_SAMPLES {
        big_times.push(tail(big_id, big.events)?);
        small_times.push(tail(small_id, small.events)?);
    }
    let big_tail = median(&big_times);
    let small_tail = median(&small_times);
    println!(
        "  long log: median {} (min {}, max {}); short log: median {} (min {}, max {})",
        fmt_duration_fine(big_tail),
        fmt_duration_fine(big_times.iter().copied().min().unwrap_or_default()),
        fmt_duration_fine(big_times.iter().copied().max().unwrap_or_default()),
        fmt_duration_fine(small_tail),
        fmt_duration_fine(small_times.iter().copied().min().unwrap_or_default()),
        fmt_duration_fine(small_times.iter().copied().max().unwrap_or_default()),
    );
    let absolute = Row::at_most(
        &format!("log tail, {}-event log", big.events),
        None,
        big_tail.as_secs_f64() * 1000.0,
        TAIL_TARGET_MS,
        "ms",
        2,
    );
    let mut relative = Row::at_most(
        &format!("log tail vs {}-event log", small.events),
        None,
        ratio(big_tail, small_tail),
        TAIL_RATIO_TARGET,
        "x",
        2,
    );
    relative.agent = fmt_duration_fine(big_tail);
    relative.baseline = fmt_duration_fine(small_tail);
    relative.ratio = relative.figure.clone();
    for row in [&absolute, &relative] {
        println!(
            "  {}: {}   target {}   {}",
            row.check, row.figure, row.target, row.outcome
        );
    }
    Ok(vec![absolute, relative])
}

/// Clients polling the log at once.
const POLLERS: usize = 64;

/// The job the pollers follow: 100 MB in lines of 99 characters.
const POLLED_PIPELINE: &str = r"head -c 100000000 /dev/zero | tr '\0' a | fold -w 99";

/// `a` bytes the polled pipeline prints.
const POLLED_A_BYTES: u64 = 100_000_000;

/// A poller whose last poll brought nothing new waits this long before the
/// next one, so that an idle moment is not a busy loop of empty reads.
const POLL_IDLE: Duration = Duration::from_millis(10);

/// Between the starts of two timed `GET /is_alive`.
const ALIVE_INTERVAL: Duration = Duration::from_millis(20);

/// Target: 99th percentile of `GET /is_alive` under the pollers, in ms.
const ALIVE_P99_TARGET_MS: f64 = 50.0;

/// How long the pollers may take to read the whole log.
const POLLERS_TIMEOUT: Duration = Duration::from_secs(180);

/// 64 clients, each in its own thread and on its own connection, follow the
/// log of a job printing 100 MB (`GET /jobs/{id}/log?start_from=<lines so
/// far>` in a loop until `job_finished`), while one more client times
/// `GET /is_alive` every 20 ms. One run: the figures are percentiles over
/// all of that client's requests.
///
/// The clients make their connections one after another before the job is
/// posted. Made all at once, a few of them got their first answer only 30 s
/// later (when the front closed idle connections): tiny_http 0.12 runs each
/// connection on a task pool thread, and its `TaskPool::spawn` can queue a
/// connection without a thread to run it when several arrive together. That
/// is a finding about the agent, not something this benchmark measures.
fn bench_pollers() -> Result<Vec<Row>, Failure> {
    println!("  job: `{POLLED_PIPELINE}`; {POLLERS} clients poll its log until job_finished (pausing {} ms after an empty read); one client times GET /is_alive every {} ms",
        POLL_IDLE.as_millis(), ALIVE_INTERVAL.as_millis());
    let serve = Serve::start("pollers", &SERVE_JOB_FLAGS)?;
    let job_id = "polled";
    let body = job_body(&json!({
        "job_id": job_id,
        "commands": [{ "directive": POLLED_PIPELINE }],
    }));

    let connecting = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..=POLLERS {
        let client = serve.client();
        client.is_alive()?;
        clients.push(client);
    }
    println!(
        "  {} connections made one after another in {}",
        clients.len(),
        fmt_duration(connecting.elapsed())
    );
    let alive_client = clients.pop().expect("POLLERS + 1 clients");

    let client = serve.client();
    client.post_job(&body)?;
    let started = Instant::now();
    let deadline = started + POLLERS_TIMEOUT;
    let stop_alive = Arc::new(AtomicBool::new(false));
    let alive = {
        let stop = Arc::clone(&stop_alive);
        thread::spawn(move || -> Result<Vec<Duration>, Failure> {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                alive_client.is_alive()?;
                samples.push(sent.elapsed());
                if let Some(pause) = (sent + ALIVE_INTERVAL).checked_duration_since(Instant::now())
                {
                    thread::sleep(pause);
                }
            }
            Ok(samples)
        })
    };
    let pollers: Vec<_> = clients
        .into_iter()
        .map(|client| thread::spawn(move || follow_log(&client, job_id, deadline)))
        .collect();
    let mut poller_events = Vec::new();
    let mut poller_failure = None;
    for poller in pollers {
        match poller.join().expect("poller threads do not panic") {
            Ok(events) => poller_events.push(events),
            Err(failure) => poller_failure = poller_failure.or(Some(failure)),
        }
    }
    let all_read = started.elapsed();
    stop_alive.store(true, Ordering::SeqCst);
    let samples = alive.join().expect("the is_alive thread does not panic");
    if let Some(failure) = poller_failure {
        return Err(serve.failed(failure));
    }
    let samples = samples.map_err(|e| serve.failed(e))?;

    let mut a_bytes = 0u64;
    let summary = serve.passed_log(&client, job_id, |directive, output| {
        if directive == POLLED_PIPELINE {
            a_bytes += output.bytes().filter(|&b| b == b'a').count() as u64;
        }
    })?;
    if count_ok_steps(&summary, POLLED_PIPELINE) != 1 || a_bytes != POLLED_A_BYTES {
        return Err(serve.failed(Failure::new(format!(
            "job {job_id}: {a_bytes} `a` bytes, expected {POLLED_A_BYTES} from one successful step"
        ))));
    }
    let total_events = summary.events;
    if let Some(short) = poller_events.iter().find(|&&n| n != total_events) {
        return Err(serve.failed(Failure::new(format!(
            "a poller read {short} events, the log has {total_events}"
        ))));
    }
    if samples.is_empty() {
        return Err(serve.failed(Failure::new("no GET /is_alive was timed".to_owned())));
    }
    let mut sorted = samples.clone();
    sorted.sort();
    let p50 = percentile(&sorted, 50.0);
    let p99 = percentile(&sorted, 99.0);
    let max = sorted[sorted.len() - 1];
    println!(
        "  all {POLLERS} pollers read the {total_events}-event log ({}) in {}",
        fmt_bytes(summary.bytes),
        fmt_duration(all_read)
    );
    println!(
        "  GET /is_alive: {} samples (one per {} ms would be {}), p50 {}, p99 {}, max {}",
        samples.len(),
        ALIVE_INTERVAL.as_millis(),
        all_read.as_millis() / ALIVE_INTERVAL.as_millis(),
        fmt_duration_fine(p50),
        fmt_duration_fine(p99),
        fmt_duration_fine(max)
    );
    let p99_row = Row::at_most(
        &format!("/is_alive p99, {POLLERS} log pollers"),
        None,
        p99.as_secs_f64() * 1000.0,
        ALIVE_P99_TARGET_MS,
        "ms",
        1,
    );
    let p50_row = Row::note(
        &format!("/is_alive p50, {POLLERS} log pollers"),
        format!("{:.1} ms", p50.as_secs_f64() * 1000.0),
    );
    println!(
        "  p99: {}   target {}   {}",
        p99_row.figure, p99_row.target, p99_row.outcome
    );
    Ok(vec![p99_row, p50_row])
}

/// Follows a job's log as a poller does; returns the events read once the
/// last of them is `job_finished`.
fn follow_log(client: &Client, job_id: &str, deadline: Instant) -> Result<u64, Failure> {
    let mut lines = LineTracker::default();
    loop {
        let before = lines.lines;
        let path = format!("/jobs/{job_id}/log?start_from={before}");
        let status = client.get_streamed(&path, None, &mut |bytes| {
            lines.feed(bytes);
            Ok(())
        })?;
        if status != 200 {
            return Err(Failure::new(format!("GET {path} answered {status}")));
        }
        if lines.job_finished() {
            return Ok(lines.lines);
        }
        if Instant::now() > deadline {
            return Err(Failure::new(format!(
                "a poller had read {} events and no job_finished after {}",
                lines.lines,
                fmt_duration(POLLERS_TIMEOUT)
            )));
        }
        if lines.lines == before {
            thread::sleep(POLL_IDLE);
        }
    }
}

/// The image of the compose benchmark (tests/docker/images.sh builds it).
const COMPOSE_IMAGE: &str = "agent-test/bash:1";

/// Target: agent overhead per command inside a compose job's container.
const COMPOSE_OVERHEAD_TARGET_MS: f64 = 2.0;

/// Target: how much later than a bare `compose run` the first command runs.
const COMPOSE_START_TARGET_MS: f64 = 500.0;

/// How long one compose job may take (it includes `compose down`).
const COMPOSE_JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The docker-compose executor, when this host can run it: per-command
/// overhead inside the container and job start, against the same work
/// done with the docker tools directly.
///
/// Per command: the job runs `STAMP`, 1000 `true`, `STAMP` in main; the
/// baseline is `docker run --rm <image> bash -c` of the same lines. Both
/// take the time between the two stamps, so neither counts its start-up
/// (the brief's "minus an empty script", measured inside). Job start: POST
/// to the first stamp, against the wall time of a bare
/// `compose -p <new project> -f <file> run --rm main true` of the same
/// image and file, taken in the same run.
fn bench_compose() -> Result<Vec<Row>, Failure> {
    let tool = match compose_tool() {
        Ok(tool) => tool,
        Err(reason) => {
            println!("  SKIPPED: {reason}");
            return Ok(vec![Row::skipped("docker compose executor")]);
        }
    };
    let tool_text = tool.join(" ");
    println!(
        "  job: dockercompose, main {COMPOSE_IMAGE}: `{STAMP}`, {N_COMMANDS} x `true`, `{STAMP}`"
    );
    println!("  baselines: `docker run --rm {COMPOSE_IMAGE} bash -c` of the same lines; `{tool_text} run --rm main true`");
    let serve = Serve::start("compose", &SERVE_JOB_FLAGS)?;
    let client = serve.client();
    let compose_file = serve.scratch.path().join("docker-compose.yml");
    let file_text = json!({
        "version": "2.0",
        "services": { "main": { "image": COMPOSE_IMAGE } },
    });
    fs::write(&compose_file, file_text.to_string())
        .map_err(|e| Failure::io("write compose file", e))?;
    let mut lines = vec![STAMP.to_owned()];
    lines.extend((0..N_COMMANDS).map(|_| "true".to_owned()));
    lines.push(STAMP.to_owned());
    let commands: Vec<Value> = lines.iter().map(|l| json!({ "directive": l })).collect();
    let script = lines.join("\n");

    let mut base_cmds = Vec::new();
    let mut agent_cmds = Vec::new();
    let mut base_starts = Vec::new();
    let mut agent_starts = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let project = format!("agent-bench-{}-{run}", std::process::id());
        let compose = |args: &[&str]| {
            let mut cmd = Command::new(&tool[0]);
            cmd.args(&tool[1..])
                .args(["--ansi", "never", "-p", &project, "-f"])
                .arg(&compose_file)
                .args(args)
                .stderr(Stdio::null());
            cmd
        };
        let base_start = measure_ok("compose run", compose(&["run", "--rm", "main", "true"]));
        // The project's network goes whether or not the run worked.
        let down = measure(compose(&["down", "--remove-orphans", "-t", "1"]), false);
        let base_start = base_start?.wall;
        if !down.is_ok_and(|d| d.exit.is_success()) {
            println!("  (compose down of {project} failed)");
        }

        let mut docker = Command::new("docker");
        docker
            .args(["run", "--rm", COMPOSE_IMAGE, "bash", "-c", &script])
            .stderr(Stdio::null());
        let (_, output) = measure_output("docker run", docker, &serve.scratch.path().join("out"))?;
        let base_stamps = parse_stamps(&output)?;
        let base_cmd = span(&base_stamps)?;

        let job_id = format!("compose-{run}");
        let body = job_body(&json!({
            "job_id": job_id,
            "executor": "dockercompose",
            "compose": { "containers": [{ "name": "main", "image": COMPOSE_IMAGE }] },
            "commands": commands,
        }));
        let posted_at = SystemTime::now();
        let posted = Instant::now();
        client.post_job(&body)?;
        let finished =
            client.wait_finished(&job_id, Duration::from_millis(50), COMPOSE_JOB_TIMEOUT)?;
        let mut output = String::new();
        let summary = serve.passed_log(&client, &job_id, |directive, text| {
            if directive == STAMP {
                output.push_str(text);
            }
        })?;
        let n_true = count_ok_steps(&summary, "true");
        if n_true != N_COMMANDS || count_ok_steps(&summary, STAMP) != 2 {
            return Err(serve.failed(Failure::new(format!(
                "job {job_id}: {n_true} successful `true` steps (expected {N_COMMANDS}) and {} of `{STAMP}` (expected 2)",
                count_ok_steps(&summary, STAMP)
            ))));
        }
        let stamps = parse_stamps(&output).map_err(|e| serve.failed(e))?;
        let agent_cmd = span(&stamps).map_err(|e| serve.failed(e))?;
        let agent_start = since(posted_at, stamps[0]).map_err(|e| serve.failed(e))?;
        // When the log showed job_finished, on the wall clock.
        let finished_at = posted_at + (finished.at - posted);
        let tail = since(stamps[1], finished_at).unwrap_or_default();
        println!(
            "  run {run}: start: compose run {}, agent POST to 1st cmd {}; {N_COMMANDS} cmds: docker run {}, agent {}; agent last cmd to job_finished {}",
            fmt_duration(base_start),
            fmt_duration(agent_start),
            fmt_duration(base_cmd),
            fmt_duration(agent_cmd),
            fmt_duration(tail),
        );
        base_starts.push(base_start);
        agent_starts.push(agent_start);
        base_cmds.push(base_cmd);
        agent_cmds.push(agent_cmd);
    }

    let (base_cmd, agent_cmd) = (median(&base_cmds), median(&agent_cmds));
    let (base_start, agent_start) = (median(&base_starts), median(&agent_starts));
    let overhead = Row::at_most(
        "compose per-command overhead",
        Some((agent_cmd, base_cmd)),
        (agent_cmd.as_secs_f64() - base_cmd.as_secs_f64()) * 1000.0 / N_COMMANDS as f64,
        COMPOSE_OVERHEAD_TARGET_MS,
        "ms/cmd",
        3,
    );
    let start = Row::at_most(
        "compose job start (extra over run)",
        Some((agent_start, base_start)),
        (agent_start.as_secs_f64() - base_start.as_secs_f64()) * 1000.0,
        COMPOSE_START_TARGET_MS,
        "ms",
        0,
    );
    println!(
        "  per command: ({} - {}) / {N_COMMANDS} = {}   target {}   {}",
        fmt_duration(agent_cmd),
        fmt_duration(base_cmd),
        overhead.figure,
        overhead.target,
        overhead.outcome
    );
    println!(
        "  job start: {} - {} = {}   target {}   {}",
        fmt_duration(agent_start),
        fmt_duration(base_start),
        start.figure,
        start.target,
        start.outcome
    );
    Ok(vec![overhead, start])
}

/// The compose command line to use, or why the compose benchmark cannot run.
fn compose_tool() -> Result<Vec<String>, String> {
    let works = |argv: &[&str]| {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).stderr(Stdio::null());
        measure_ok(argv[0], cmd).is_ok()
    };
    let tool: &[&str] = if works(&["docker", "compose", "version"]) {
        &["docker", "compose"]
    } else if works(&["docker-compose", "version"]) {
        &["docker-compose"]
    } else {
        return Err("neither `docker compose version` nor `docker-compose version` works".into());
    };
    if !works(&["docker", "image", "inspect", COMPOSE_IMAGE]) {
        return Err(format!(
            "no image {COMPOSE_IMAGE} (tests/docker/images.sh bash builds it)"
        ));
    }
    Ok(tool.iter().map(|s| (*s).to_owned()).collect())
}

/// Runs a baseline with its stdout in `out_path`; returns the output too.
fn measure_output(
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

/// The serialized request body of a job.
fn job_body(job: &Value) -> Vec<u8> {
    serde_json::to_vec(job).expect("a JSON value serializes")
}

/// Steps with this directive that exited 0.
fn count_ok_steps(summary: &LogSummary, directive: &str) -> usize {
    summary
        .steps
        .iter()
        .filter(|step| step.directive == directive && step.exit_code == Some(0))
        .count()
}

/// Unix times printed by `STAMP` (seconds, a dot, microseconds), in order.
fn parse_stamps(output: &str) -> Result<Vec<SystemTime>, Failure> {
    let stamps: Option<Vec<SystemTime>> = output
        .split_whitespace()
        .map(|word| {
            let (secs, micros) = word.split_once('.')?;
            let micros = format!("{micros:0<6}");
            Some(
                UNIX_EPOCH
                    + Duration::from_secs(secs.parse().ok()?)
                    + Duration::from_micros(micros.get(..6)?.parse().ok()?),
            )
        })
        .collect();
    match stamps {
        Some(stamps) if !stamps.is_empty() => Ok(stamps),
        _ => Err(Failure::new(format!(
            "`{STAMP}` printed {output:?}, not Unix times"
        ))),
    }
}

/// From `earlier` to `later`; an error if the clock says otherwise.
fn since(earlier: SystemTime, later: SystemTime) -> Result<Duration, Failure> {
    later.duration_since(earlier).map_err(|e| {
        Failure::new(format!(
            "a stamp is {} before the moment it should follow",
            fmt_duration(e.duration())
        ))
    })
}

/// From the first stamp to the last.
fn span(stamps: &[SystemTime]) -> Result<Duration, Failure> {
    match stamps {
        [first, .., last] => since(*first, *last),
        _ => Err(Failure::new(format!(
            "{} stamps, expected two",
            stamps.len()
        ))),
    }
}

/// The value of `p` percent of sorted samples (nearest rank).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------
// Running `agent serve`
// ---------------------------------------------------------------------------

/// The JWT secret of every `agent serve` the benchmarks start.
const SERVE_SECRET: &str = "agent-bench-secret-0123456789abcdef0123456789";

/// Flags of a server that runs the benchmark's jobs: room for several jobs
/// at once (a finished job holds its runner until the archivator read or
/// the archivator timeout), and a short archivator timeout.
const SERVE_JOB_FLAGS: [&str; 4] = ["--jobs", "4", "--archivator-timeout", "1"];

/// How long `agent serve` may take to print `listening on` and answer.
const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of one API request (whole logs of 100 MB included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `Drop` waits for jobs it stopped to end before killing serve.
const SERVE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `agent serve` with HOME, data dir, agent log and certificate
/// in a scratch directory. Dropping it stops any job still running through
/// the API, then kills the server.
struct Serve {
    child: Child,
    base: String,
    token: String,
    cert: ureq::tls::Certificate<'static>,
    stderr_path: PathBuf,
    agent_log: PathBuf,
    scratch: Scratch,
}

impl Serve {
    /// Starts `agent serve` on 127.0.0.1 port 0 with `extra_args` and waits
    /// until it printed its address and answered `GET /is_alive`.
    fn start(label: &str, extra_args: &[&str]) -> Result<Serve, Failure> {
        let scratch = Scratch::new(label)?;
        let home = scratch.path().join("home");
        let data_dir = scratch.path().join("data");
        for dir in [&home, &data_dir] {
            fs::create_dir_all(dir).map_err(|e| Failure::io("create scratch directory", e))?;
        }
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(|e| Failure::new(format!("make a certificate with rcgen: {e}")))?;
        let cert_pem = certified.cert.pem();
        let cert_path = scratch.path().join("server.crt");
        let key_path = scratch.path().join("server.key");
        fs::write(&cert_path, &cert_pem).map_err(|e| Failure::io("write certificate", e))?;
        fs::write(&key_path, certified.signing_key.serialize_pem())
            .map_err(|e| Failure::io("write key", e))?;
        let cert = ureq::tls::Certificate::from_pem(cert_pem.as_bytes())
            .map_err(|e| Failure::new(format!("parse our own certificate: {e}")))?;

        let stderr_path = scratch.path().join("serve.stderr");
        let stderr =
            File::create(&stderr_path).map_err(|e| Failure::io("create stderr file", e))?;
        let agent_log = scratch.path().join("agent_log");
        let mut cmd = Command::new(agent_binary());
        cmd.args(["serve", "--auth-token-secret", SERVE_SECRET])
            .args(["--host", "127.0.0.1", "--port", "0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--tls-cert-path")
            .arg(&cert_path)
            .arg("--tls-key-path")
            .arg(&key_path)
            .args(extra_args)
            .current_dir(&home)
            .env("HOME", &home)
            .env("SEMAPHORE_AGENT_LOG_FILE_PATH", &agent_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .map_err(|e| Failure::io("spawn agent serve", e))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines_tx, lines_rx) = mpsc::channel();
        // Reads stdout to its end, so serve never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });
        let mut serve = Serve {
            child,
            base: String::new(),
            token: String::new(),
            cert,
            stderr_path,
            agent_log,
            scratch,
        };

        let first = lines_rx.recv_timeout(SERVE_READY_TIMEOUT).map_err(|_| {
            serve.failed(Failure::new(format!(
                "no first line on stdout within {}",
                fmt_duration(SERVE_READY_TIMEOUT)
            )))
        })?;
        // `agent <version> listening on https://127.0.0.1:<port>`
        serve.base = match first.split_once(" listening on ") {
            Some((_, url)) if url.starts_with("https://") => url.trim().to_owned(),
            _ => return Err(serve.failed(Failure::new(format!("unexpected first line {first:?}")))),
        };
        let token = Command::new(agent_binary())
            .args(["token", "--auth-token-secret", SERVE_SECRET])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Failure::io("run agent token", e))?;
        if !token.status.success() {
            return Err(serve.failed(Failure::new(format!(
                "agent token failed: {}",
                String::from_utf8_lossy(&token.stderr).trim()
            ))));
        }
        serve.token = String::from_utf8_lossy(&token.stdout).trim().to_owned();

        let client = serve.client();
        let deadline = Instant::now() + SERVE_READY_TIMEOUT;
        while let Err(failure) = client.is_alive() {
            if Instant::now() > deadline {
                return Err(serve.failed(failure));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(serve)
    }

    /// A client with connections of its own, trusting only our certificate.
    fn client(&self) -> Client {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(std::slice::from_ref(
                &self.cert,
            )))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(HTTP_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build();
        Client {
            base: self.base.clone(),
            token: self.token.clone(),
            http: ureq::Agent::new_with_config(config),
        }
    }

    fn proc_status(&self) -> Result<String, Failure> {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| self.failed(Failure::io("read /proc/<serve pid>/status", e)))
    }

    /// Reads a job's whole log through the API (as the archivator, so the
    /// job's teardown need not wait), keeps it in the scratch directory and
    /// checks that the job passed. `on_output` is as for `summarize_log`.
    fn passed_log(
        &self,
        client: &Client,
        job_id: &str,
        on_output: impl FnMut(&str, &str),
    ) -> Result<LogSummary, Failure> {
        let dir = self.scratch.path().join("logs");
        fs::create_dir_all(&dir).map_err(|e| Failure::io("create log directory", e))?;
        let path = dir.join(format!("{job_id}.jsonl"));
        let file = File::create(&path).map_err(|e| Failure::io("create log copy", e))?;
        let mut file = io::BufWriter::with_capacity(1 << 20, file);
        let log_path = format!("/jobs/{job_id}/log?start_from=0");
        let status = client.get_streamed(
            &log_path,
            Some(("X-Client-Name", "archivator")),
            &mut |bytes| file.write_all(bytes),
        )?;
        file.flush().map_err(|e| Failure::io("write log copy", e))?;
        if status != 200 {
            return Err(self.failed(Failure::new(format!("GET {log_path} answered {status}"))));
        }
        let in_log = |failure: Failure| {
            self.failed(Failure::new(format!(
                "job {job_id}, log copy {}: {failure}",
                path.display()
            )))
        };
        let summary = summarize_log(&path, on_output).map_err(in_log)?;
        match summary.result.as_deref() {
            Some("passed") => Ok(summary),
            Some(other) => Err(in_log(Failure::new(format!(
                "job_finished has result {other:?}, expected \"passed\""
            )))),
            None => Err(in_log(Failure::new(
                "the last event is not job_finished".to_owned(),
            ))),
        }
    }

    /// Turns a finding into a failure that shows the ends of serve's stderr
    /// and agent log, and keeps the scratch directory for inspection.
    fn failed(&self, failure: Failure) -> Failure {
        let tail = |path: &Path| match read_tail(path, 1500) {
            Ok(text) if !text.trim().is_empty() => indent(text.trim_end()),
            _ => "    (empty)".to_owned(),
        };
        Failure::new(format!(
            "{failure} {}\n  serve stderr tail:\n{}\n  agent log tail:\n{}",
            self.scratch.keep(),
            tail(&self.stderr_path),
            tail(&self.agent_log),
        ))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // A benchmark that failed half-way may leave a job running; killing
        // serve would leave its processes behind, so stop it first.
        if !self.token.is_empty() {
            let client = self.client();
            if client.post("/stop", b"").is_ok() {
                let deadline = Instant::now() + SERVE_STOP_TIMEOUT;
                while Instant::now() < deadline && client.busy().unwrap_or(false) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: kill has no memory-safety preconditions; the child is not
        // reaped yet (try_wait said it runs), so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + KILL_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A job whose `job_finished` a poll saw.
struct Finished {
    /// When the poll that saw it returned.
    at: Instant,
    /// Events in the log.
    events: u64,
}

/// An HTTPS client of one `agent serve`, sending its JWT with each request.
struct Client {
    base: String,
    token: String,
    http: ureq::Agent,
}

impl Client {
    /// Sends a request and streams the reply's body to `sink`; returns the
    /// status.
    fn request(
        &self,
        method: &str,
        path: &str,
        header: Option<(&str, &str)>,
        body: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u16, Failure> {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token));
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        if method == "POST" {
            builder = builder.header("Content-Type", "application/json");
        }
        let request = builder
            .body(body.to_vec())
            .map_err(|e| Failure::new(format!("build {method} {path}: {e}")))?;
        let mut response = self
            .http
            .run(request)
            .map_err(|e| Failure::new(format!("{method} {path}: {e}")))?;
        let status = response.status().as_u16();
        let mut reader = response.body_mut().as_reader();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::io(format!("read the reply to {method} {path}"), e)),
            };
            sink(&buf[..n]).map_err(|e| Failure::io(format!("keep the reply to {path}"), e))?;
        }
        Ok(status)
    }

    fn get_streamed(
        &self,
        path: &str,
        header: Option<(&str, &str)>,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u16, Failure> {
        self.request("GET", path, header, b"", sink)
    }

    fn get(&self, path: &str) -> Result<(u16, Vec<u8>), Failure> {
        let mut body = Vec::new();
        let status = self.get_streamed(path, None, &mut |bytes| {
            body.extend_from_slice(bytes);
            Ok(())
        })?;
        Ok((status, body))
    }

    fn post(&self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), Failure> {
        let mut reply = Vec::new();
        let status = self.request("POST", path, None, body, &mut |bytes| {
            reply.extend_from_slice(bytes);
            Ok(())
        })?;
        Ok((status, reply))
    }

    fn is_alive(&self) -> Result<(), Failure> {
        match self.get("/is_alive")? {
            (200, body) if body == b"yes" => Ok(()),
            (status, body) => Err(Failure::new(format!(
                "GET /is_alive answered {status} {:?}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    /// Whether serve has a job queued or running (`GET /status`).
    fn busy(&self) -> Result<bool, Failure> {
        let (_, body) = self.get("/status")?;
        let status: Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::new(format!("GET /status: not JSON ({e})")))?;
        let count = |name: &str| status["jobs"][name].as_u64().unwrap_or(0);
        Ok(count("running") + count("queued") > 0)
    }

    /// Posts a job and insists that it was accepted.
    fn post_job(&self, body: &[u8]) -> Result<(), Failure> {
        let (status, reply) = self.post("/jobs", body)?;
        let message: Option<Value> = serde_json::from_slice(&reply).ok();
        let accepted =
            status == 200 && message.as_ref().and_then(|m| m["message"].as_str()) == Some("ok");
        if accepted {
            Ok(())
        } else {
            Err(Failure::new(format!(
                "POST /jobs answered {status} {}",
                String::from_utf8_lossy(&reply).trim()
            )))
        }
    }

    /// Polls the job's log every `poll` (reading only new events) until its
    /// last event is `job_finished`, or fails after `timeout`.
    fn wait_finished(
        &self,
        job_id: &str,
        poll: Duration,
        timeout: Duration,
    ) -> Result<Finished, Failure> {
        let started = Instant::now();
        let mut lines = LineTracker::default();
        loop {
            let path = format!("/jobs/{job_id}/log?start_from={}", lines.lines);
            let status = self.get_streamed(&path, None, &mut |bytes| {
                lines.feed(bytes);
                Ok(())
            })?;
            if status != 200 {
                return Err(Failure::new(format!("GET {path} answered {status}")));
            }
            if lines.job_finished() {
                return Ok(Finished {
                    at: Instant::now(),
                    events: lines.lines,
                });
            }
            if started.elapsed() > timeout {
                return Err(Failure::new(format!(
                    "job {job_id}: no job_finished after {} ({} events so far)",
                    fmt_duration(timeout),
                    lines.lines
                )));
            }
            thread::sleep(poll);
        }
    }
}

/// Counts the lines of a log read in pieces and keeps the start of the last
/// complete one, without keeping the log.
#[derive(Default)]
struct LineTracker {
    lines: u64,
    /// The start of the line being read.
    current: Vec<u8>,
    /// The start of the last complete line.
    last: Vec<u8>,
}

impl LineTracker {
    /// Bytes kept of a line: enough for its `event` field.
    const KEEP: usize = 64;

    fn feed(&mut self, bytes: &[u8]) {
        let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            Self::keep(&mut self.current, bytes);
            return;
        };
        let before = &bytes[..end];
        match before.iter().rposition(|&b| b == b'\n') {
            Some(start) => {
                self.last.clear();
                Self::keep(&mut self.last, &before[start + 1..]);
            }
            None => {
                Self::keep(&mut self.current, before);
                self.last = std::mem::take(&mut self.current);
            }
        }
        self.current.clear();
        Self::keep(&mut self.current, &bytes[end + 1..]);
        self.lines += newlines as u64;
    }

    fn keep(line: &mut Vec<u8>, bytes: &[u8]) {
        let room = Self::KEEP.saturating_sub(line.len());
        line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn job_finished(&self) -> bool {
        self.last.starts_with(br#"{"event":"job_finished""#)
    }
}

/// A `Name:   <n> kB` or `Name:   <n>` field of /proc/<pid>/status.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
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
    /// Events (lines) in the log.
    events: u64,
    /// Size of the log.
    bytes: u64,
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
    let (mut events, mut bytes) = (0u64, 0u64);
    for (index, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let line = line.map_err(|e| Failure::io("read event log", e))?;
        bytes += line.len() as u64 + 1;
        if line.is_empty() {
            continue;
        }
        events += 1;
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
    Ok(LogSummary {
        steps,
        result,
        events,
        bytes,
    })
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
    /// The benchmark cannot run on this host (it says why).
    Skipped,
    /// A figure for context, with no target.
    Info,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "OK",
            Outcome::Missed => "MISSED",
            Outcome::Error => "ERROR",
            Outcome::Skipped => "SKIPPED",
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

    /// A figure for context, with no target and no timed comparison.
    fn note(check: &str, figure: String) -> Row {
        Row {
            check: check.to_owned(),
            agent: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            figure,
            target: "-".to_owned(),
            outcome: Outcome::Info,
        }
    }

    fn skipped(check: &str) -> Row {
        Row {
            outcome: Outcome::Skipped,
            ..Row::error(check)
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
    let (ok, missed, errors, skipped) = (
        count(Outcome::Ok),
        count(Outcome::Missed),
        count(Outcome::Error),
        count(Outcome::Skipped),
    );
    println!();
    println!(
        "  {} checks: {ok} OK, {missed} MISSED, {errors} ERROR, {skipped} SKIPPED",
        ok + missed + errors + skipped
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

/// Like `fmt_duration`, with microseconds below 10 ms.
fn fmt_duration_fine(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.3} ms", d.as_secs_f64() * 1000.0)
    } else {
        fmt_duration(d)
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
