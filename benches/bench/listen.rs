//! Listen-mode rows of `make bench`: `agent start` against the test control
//! plane of `tests/support/control_plane.rs` (plain HTTP on loopback).
//!
//! - Idle: an agent that registered and syncs at its default interval (3 to
//!   6 s, no `next_sync_after`); VmRSS and the CPU time of all its threads
//!   over `IDLE_WINDOW`, from `/proc/<pid>/task/*/schedstat`.
//! - Latency: a job prints `$EPOCHREALTIME` every 10 ms for about 10 s; the
//!   control plane notes the wall-clock time each pushed line arrives, and
//!   each printed time is compared with the arrival of its line.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::json;

use crate::agent_binary;
use crate::pollers::percentile;
use crate::report::{fmt_kib, Failure, Row};
use crate::scratch::Scratch;
use crate::serve::status_field;
use crate::support::control_plane::{ControlPlane, REGISTRATION_TOKEN};

/// Target: RSS of an idle listen-mode agent.
const IDLE_RSS_TARGET_MIB: f64 = 8.0;
/// Target: CPU of an idle listen-mode agent, in percent of one core.
const IDLE_CPU_TARGET_PERCENT: f64 = 0.1;
/// How long the idle agent is watched (several syncs).
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// Target: 99th percentile from a line printed to its arrival.
const LATENCY_P99_TARGET_S: f64 = 1.5;
/// Lines the latency job prints, 10 ms apart.
const LATENCY_LINES: usize = 1000;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// `agent start` against `cp`, in a scratch directory; killed on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(cp: &ControlPlane, dir: &Path) -> Result<Agent, Failure> {
        for sub in ["home", "data"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| Failure::io("create dirs", e))?;
        }
        let child = Command::new(agent_binary())
            .args(["start", "--no-https", "--endpoint", &cp.endpoint()])
            .args(["--token", REGISTRATION_TOKEN])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("HOME", dir.join("home"))
            .env("SEMAPHORE_AGENT_LOG_FILE_PATH", dir.join("agent_log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Failure::io("start agent start", e))?;
        Ok(Agent { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return Err(Failure::new(format!("no {what} within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// CPU time of every thread of `pid`, in nanoseconds.
fn cpu_ns(pid: u32) -> Result<u64, Failure> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| Failure::io("read /proc/<pid>/task", e))?;
    let mut total = 0;
    for task in tasks.flatten() {
        let text = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn vm_rss_kib(pid: u32) -> Result<u64, Failure> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Failure::io("read /proc/<pid>/status", e))?;
    status_field(&status, "VmRSS").ok_or_else(|| Failure::new("no VmRSS".into()))
}

/// Idle: RSS and CPU of a registered agent with nothing to do.
pub fn bench_idle() -> Result<Vec<Row>, Failure> {
    println!(
        "  `agent start --no-https` against a local control plane without next_sync_after; watched for {}s",
        IDLE_WINDOW.as_secs()
    );
    let scratch = Scratch::new("listen-idle")?;
    let cp = ControlPlane::builder().next_sync_after(0).start();
    let agent = Agent::start(&cp, scratch.path())?;
    wait_for("first sync", START_TIMEOUT, || !cp.syncs().is_empty())?;
    let syncs_before = cp.syncs().len();
    let cpu_before = cpu_ns(agent.pid())?;
    let started = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let cpu = cpu_ns(agent.pid())?.saturating_sub(cpu_before);
    let elapsed = started.elapsed();
    let rss = vm_rss_kib(agent.pid())?;
    let syncs = cp.syncs().len() - syncs_before;
    let percent = cpu as f64 / elapsed.as_nanos() as f64 * 100.0;
    println!(
        "  {syncs} syncs in {:.1}s; CPU {:.3} ms ({percent:.4}% of a core); VmRSS {}",
        elapsed.as_secs_f64(),
        cpu as f64 / 1e6,
        fmt_kib(rss)
    );
    if syncs == 0 {
        return Err(Failure::new("the idle agent did not sync".into()));
    }
    Ok(vec![
        Row::at_most(
            "idle RSS of agent start (listen)",
            None,
            rss as f64 / 1024.0,
            IDLE_RSS_TARGET_MIB,
            "MiB",
            1,
        ),
        Row::at_most(
            "idle CPU of agent start (listen)",
            None,
            percent,
            IDLE_CPU_TARGET_PERCENT,
            "%",
            3,
        ),
    ])
}

/// Latency from a printed line to its arrival at the control plane.
pub fn bench_latency() -> Result<Vec<Row>, Failure> {
    println!("  job: `echo $EPOCHREALTIME; sleep 0.01` x {LATENCY_LINES}; arrival noted by the control plane");
    let scratch = Scratch::new("listen-latency")?;
    let cp = ControlPlane::start();
    let _agent = Agent::start(&cp, scratch.path())?;
    let job_id = format!("bench-latency-{}", std::process::id());
    cp.schedule(&json!({
        "job_id": job_id,
        "executor": "shell",
        "commands": [{
            "directive": format!(
                "for i in $(seq 1 {LATENCY_LINES}); do echo $EPOCHREALTIME; sleep 0.01; done"
            )
        }],
    }));
    let mut result = None;
    wait_for("job result", JOB_TIMEOUT, || {
        result = cp.result(&job_id);
        result.is_some()
    })?;
    if result.as_deref() != Some("passed") {
        return Err(Failure::new(format!("the job ended {result:?}")));
    }
    let mut latencies = Vec::new();
    for (line, arrived) in cp.timed_lines(&job_id) {
        let event: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| Failure::new(format!("a pushed line: {e}")))?;
        let Some(output) = event["output"].as_str() else {
            continue;
        };
        for stamp in output.lines().filter_map(|l| l.trim().parse::<f64>().ok()) {
            let printed = UNIX_EPOCH + Duration::from_secs_f64(stamp);
            latencies.push(arrived.duration_since(printed).unwrap_or(Duration::ZERO));
        }
    }
    if latencies.len() != LATENCY_LINES {
        return Err(Failure::new(format!(
            "{} of {LATENCY_LINES} printed times arrived",
            latencies.len()
        )));
    }
    latencies.sort();
    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    let max = latencies[latencies.len() - 1];
    println!(
        "  {} lines: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    Ok(vec![
        Row::note(
            "log push latency p50 (listen)",
            format!("{:.3} s", p50.as_secs_f64()),
        ),
        Row::at_most(
            "log push latency p99 (listen)",
            None,
            p99.as_secs_f64(),
            LATENCY_P99_TARGET_S,
            "s",
            3,
        ),
    ])
}
