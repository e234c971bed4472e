//! The responsiveness benchmark: `GET /is_alive` timed every 20 ms while 64
//! clients follow the log of a job printing 100 MB.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::events::{count_ok_steps, LineTracker};
use crate::report::{fmt_bytes, fmt_duration, fmt_duration_fine, Failure, Row};
use crate::server::{get_streamed, is_alive, Serve};
use crate::support::client::ApiClient;

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
pub fn bench_pollers() -> Result<Vec<Row>, Failure> {
    println!("  job: `{POLLED_PIPELINE}`; {POLLERS} clients poll its log until job_finished (pausing {} ms after an empty read); one client times GET /is_alive every {} ms",
        POLL_IDLE.as_millis(), ALIVE_INTERVAL.as_millis());
    let serve = Serve::for_jobs()?;
    let job_id = "polled";
    let job = json!({
        "job_id": job_id,
        "commands": [{ "directive": POLLED_PIPELINE }],
    });

    let connecting = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..=POLLERS {
        let client = serve.client().fresh();
        is_alive(&client)?;
        clients.push(client);
    }
    println!(
        "  {} connections made one after another in {}",
        clients.len(),
        fmt_duration(connecting.elapsed())
    );
    let alive_client = clients.pop().expect("POLLERS + 1 clients");

    serve.post_job(&job)?;
    let started = Instant::now();
    let deadline = started + POLLERS_TIMEOUT;
    let stop_alive = Arc::new(AtomicBool::new(false));
    let alive = {
        let stop = Arc::clone(&stop_alive);
        thread::spawn(move || -> Result<Vec<Duration>, Failure> {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                is_alive(&alive_client)?;
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
    let summary = serve.passed_log(job_id, |directive, output| {
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
fn follow_log(client: &ApiClient, job_id: &str, deadline: Instant) -> Result<u64, Failure> {
    let mut lines = LineTracker::default();
    loop {
        let before = lines.lines;
        let path = format!("/jobs/{job_id}/log?start_from={before}");
        let status = get_streamed(client, &path, &[], &mut |bytes| {
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

/// The value of `p` percent of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
