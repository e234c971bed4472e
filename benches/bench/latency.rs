//! The log tail latency benchmark: the last events of a finished job with
//! over 200 000 events, against those of a job with about 100, read through
//! the API on one kept-alive connection.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::events::{count_ok_steps, LineTracker};
use crate::report::{fmt_duration, fmt_duration_fine, median, ratio, Failure, Row};
use crate::server::{get_streamed, wait_finished, Serve};
use crate::RUN_TIMEOUT;

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
pub fn bench_log_tail() -> Result<Vec<Row>, Failure> {
    println!("  logs: {BIG_LOG_COMMANDS} x `{ECHO}` (3 events each) and {SMALL_LOG_COMMANDS} x `{ECHO}`; GET /jobs/{{id}}/log?start_from=<events - {TAIL_EVENTS}>, median of {TAIL_SAMPLES}, one kept-alive connection");
    let serve = Serve::for_jobs()?;
    let client = serve.client();
    let echo_job = |job_id: &str, n: usize| {
        let commands: Vec<Value> = (0..n).map(|_| json!({ "directive": ECHO })).collect();
        json!({ "job_id": job_id, "commands": commands })
    };
    let (big_id, small_id) = ("log-big", "log-small");
    let posted = Instant::now();
    serve.post_job(&echo_job(big_id, BIG_LOG_COMMANDS))?;
    serve.post_job(&echo_job(small_id, SMALL_LOG_COMMANDS))?;
    let small = wait_finished(client, small_id, Duration::from_millis(100), RUN_TIMEOUT)?;
    let big = wait_finished(client, big_id, Duration::from_millis(500), BIG_LOG_TIMEOUT)?;
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
        let summary = serve.passed_log(job_id, |_, _| {})?;
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
        let status = get_streamed(client, &path, &[], &mut |bytes| {
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
