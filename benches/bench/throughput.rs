//! Benchmarks of `agent run`: the per-command overhead of 1000 `true`
//! commands, and the throughput of a 200 MB pipeline with the agent's peak
//! RSS, each against bash doing the same work; and the bare pty relay that
//! shows the floor for any agent whose jobs see a terminal.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent_run::run_agent;
use crate::measure::{measure, measure_ok, Budget};
use crate::report::{fmt_bytes, fmt_duration, fmt_kib, median, ratio, Failure, Row};
use crate::scratch::Scratch;
use crate::RUNS;

/// Number of `true` commands in the per-command overhead job.
pub const N_COMMANDS: usize = 1000;

/// Target: agent overhead per command, in milliseconds.
const OVERHEAD_TARGET_MS: f64 = 1.0;

/// Per-command overhead: 1000 `true` commands through `agent run`, against
/// bash running a script of the same 1000 lines (bash start-up included).
pub fn bench_command_overhead() -> Result<Vec<Row>, Failure> {
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
pub fn overhead_row(title: &str, agent: Duration, bash: Duration) -> Row {
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
pub fn bench_throughput() -> Result<Vec<Row>, Failure> {
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
    pub wall: Duration,
    pub bytes: u64,
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
