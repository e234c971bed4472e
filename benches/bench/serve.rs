//! Benchmarks of `agent serve` at rest and starting jobs: its idle RSS, the
//! per-command overhead of a job posted through the API, and the time from
//! `POST /jobs` to the job's first command.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::events::count_ok_steps;
use crate::measure::{measure_ok, Budget};
use crate::report::{fmt_duration, fmt_kib, median, Failure, Row};
use crate::server::{wait_finished, Serve};
use crate::throughput::{overhead_row, N_COMMANDS};
use crate::{RUNS, RUN_TIMEOUT};

/// Target: RSS of an idle `agent serve`, in MiB.
const IDLE_RSS_TARGET_MIB: f64 = 8.0;

/// Idle RSS: `agent serve` started on port 0 with a certificate made here,
/// measured once it printed its `listening on` line and answered one
/// `GET /is_alive`.
pub fn bench_idle_rss() -> Result<Vec<Row>, Failure> {
    println!("  `agent serve --port 0` with an rcgen certificate; VmRSS from /proc/<pid>/status after one GET /is_alive");
    let mut rss = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let serve = Serve::idle()?;
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
pub fn bench_serve_overhead() -> Result<Vec<Row>, Failure> {
    println!(
        "  job: {N_COMMANDS} x `true` by POST /jobs, timed to `job_finished` in GET /jobs/{{id}}/log (polled every {} ms); baseline: `bash script`",
        FINISH_POLL.as_millis()
    );
    let serve = Serve::for_jobs()?;
    let client = serve.client();
    let script = serve.root().join("script.sh");
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
        bash.arg(&script).current_dir(serve.root());
        let bash_run = measure_ok("bash", bash)?;

        let job_id = format!("overhead-{run}");
        let job = json!({ "job_id": job_id, "commands": commands });
        let posted = Instant::now();
        serve.post_job(&job)?;
        let finished = wait_finished(client, &job_id, FINISH_POLL, RUN_TIMEOUT)?;
        let wall = finished.at - posted;
        let summary = serve.passed_log(&job_id, |_, _| {})?;
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
pub const STAMP: &str = "echo $EPOCHREALTIME";

/// Target: from POST /jobs to the first user command, in milliseconds.
const START_TARGET_MS: f64 = 50.0;

/// Job start through the API: a job whose only command is `STAMP`, timed
/// from the client's clock just before the POST to the command's stamp.
pub fn bench_serve_start() -> Result<Vec<Row>, Failure> {
    println!("  job: `{STAMP}` by POST /jobs; from the client's clock before the POST to the command's stamp");
    let serve = Serve::for_jobs()?;
    let client = serve.client();
    let mut latencies = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let job_id = format!("start-{run}");
        let job = json!({
            "job_id": job_id,
            "commands": [{ "directive": STAMP }],
        });
        let posted = SystemTime::now();
        serve.post_job(&job)?;
        wait_finished(client, &job_id, FINISH_POLL, RUN_TIMEOUT)?;
        let mut output = String::new();
        let summary = serve.passed_log(&job_id, |directive, text| {
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

/// Unix times printed by `STAMP` (seconds, a dot, microseconds), in order.
pub fn parse_stamps(output: &str) -> Result<Vec<SystemTime>, Failure> {
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
pub fn since(earlier: SystemTime, later: SystemTime) -> Result<Duration, Failure> {
    later.duration_since(earlier).map_err(|e| {
        Failure::new(format!(
            "a stamp is {} before the moment it should follow",
            fmt_duration(e.duration())
        ))
    })
}

/// From the first stamp to the last.
pub fn span(stamps: &[SystemTime]) -> Result<Duration, Failure> {
    match stamps {
        [first, .., last] => since(*first, *last),
        _ => Err(Failure::new(format!(
            "{} stamps, expected two",
            stamps.len()
        ))),
    }
}

/// A `Name:   <n> kB` or `Name:   <n>` field of /proc/<pid>/status.
pub fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}
