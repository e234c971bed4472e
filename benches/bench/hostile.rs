//! Hostile load on `agent serve`: memory under concurrent large request
//! bodies, and `/is_alive` latency for a fresh client while one peer holds
//! hundreds of idle connections.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::pollers::percentile;
use crate::report::{fmt_duration_fine, fmt_kib, Failure, Row};
use crate::serve::status_field;
use crate::server::Serve;
use crate::support::net::connect_from;
use crate::support::server::TestAgent;
use crate::RUN_TIMEOUT;

/// Concurrent `POST /jobs` bodies.
const BODIES: usize = 8;
/// Size of each body: just under the default `--max-request-bytes` (32 MiB).
const BODY_BYTES: usize = 32 * 1024 * 1024 - 64 * 1024;
/// Targets: resident memory at the peak and 10 s after the bodies, in MiB.
const BODY_PEAK_TARGET_MIB: f64 = 64.0;
const BODY_AFTER_TARGET_MIB: f64 = 12.0;
/// How long after the last reply the resident memory is read again.
const SETTLE: Duration = Duration::from_secs(10);

/// A job request of about `bytes` bytes made of 32 KiB env var values, with
/// an executor no agent has: the agent reads and parses it whole, then
/// answers 422 (as for any request it cannot run).
fn bulky_body(bytes: usize) -> Vec<u8> {
    let value = "dmFsdWUg".repeat(4 * 1024);
    let count = bytes / (value.len() + 32);
    let env_vars: Vec<_> = (0..count)
        .map(|i| json!({ "name": format!("V{i}"), "value": value }))
        .collect();
    json!({ "job_id": "bulky", "executor": "none-such", "env_vars": env_vars })
        .to_string()
        .into_bytes()
}

/// Memory under large bodies: 8 authenticated `POST /jobs` of 32 MiB each
/// at once; VmHWM (the peak) once all are answered, VmRSS 10 s later.
pub(super) fn bench_large_bodies() -> Result<Vec<Row>, Failure> {
    let body = Arc::new(bulky_body(BODY_BYTES));
    println!(
        "  {BODIES} clients POST /jobs at once, each a {} job request of 32 KiB env var values \
         (refused with 422 after parsing); VmHWM after, VmRSS {} s later; one run",
        fmt_kib(body.len() as u64 / 1024),
        SETTLE.as_secs()
    );
    let serve = Serve::idle()?;
    let idle = status_field(&serve.proc_status()?, "VmRSS").unwrap_or(0);
    let started = Instant::now();
    let senders: Vec<_> = (0..BODIES)
        .map(|_| {
            let client = serve.client().fresh();
            let body = Arc::clone(&body);
            thread::spawn(move || client.post("/jobs", &body))
        })
        .collect();
    for sender in senders {
        let Ok(reply) = sender.join() else {
            return Err(serve.failed(Failure::new("a POST /jobs failed".to_owned())));
        };
        if reply.status != 422 {
            return Err(serve.failed(Failure::new(format!(
                "POST /jobs answered {}: {}",
                reply.status,
                reply.text()
            ))));
        }
    }
    let took = started.elapsed();
    let status = serve.proc_status()?;
    let peak = status_field(&status, "VmHWM").unwrap_or(0);
    let right_after = status_field(&status, "VmRSS").unwrap_or(0);
    thread::sleep(SETTLE);
    let settled = status_field(&serve.proc_status()?, "VmRSS").unwrap_or(0);
    println!(
        "  idle {}, all answered in {}: peak {}, right after {}, {} s later {}",
        fmt_kib(idle),
        fmt_duration_fine(took),
        fmt_kib(peak),
        fmt_kib(right_after),
        SETTLE.as_secs(),
        fmt_kib(settled)
    );
    let peak_row = Row::at_most(
        &format!("RSS peak, {BODIES} x 32 MiB POST /jobs"),
        None,
        peak as f64 / 1024.0,
        BODY_PEAK_TARGET_MIB,
        "MiB",
        1,
    );
    let settled_row = Row::at_most(
        &format!("RSS {} s after them", SETTLE.as_secs()),
        None,
        settled as f64 / 1024.0,
        BODY_AFTER_TARGET_MIB,
        "MiB",
        1,
    );
    for row in [&peak_row, &settled_row] {
        println!(
            "  {}: {}   target {}   {}",
            row.check, row.figure, row.target, row.outcome
        );
    }
    Ok(vec![peak_row, settled_row])
}

/// Idle connections the flooding peer holds open.
const FLOOD: usize = 500;
/// `/is_alive` samples taken from the fresh client.
const SAMPLES: usize = 200;
/// Target: `/is_alive` p99 from a fresh client during the flood, in ms.
const FLOOD_P99_TARGET_MS: f64 = 100.0;

/// `/is_alive` from a fresh client during a flood: 500 TCP connections from
/// 127.0.0.1 that send nothing are held open, while a client on 127.0.0.2
/// makes a new connection, TLS handshake and `GET /is_alive` per sample.
pub(super) fn bench_flood() -> Result<Vec<Row>, Failure> {
    println!(
        "  {FLOOD} idle TCP connections from 127.0.0.1 held open; {SAMPLES} samples of a new \
         connection from 127.0.0.2 (TCP, TLS handshake, GET /is_alive, close); one run"
    );
    let serve = Serve::idle()?;
    let port = serve.agent().port();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| serve.failed(Failure::io("open a flood connection", e)))?;
        flood.push(stream);
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        if Instant::now() > deadline {
            return Err(serve.failed(Failure::new(format!(
                "{} samples in {}",
                samples.len(),
                fmt_duration_fine(RUN_TIMEOUT)
            ))));
        }
        let started = Instant::now();
        is_alive_from(serve.agent(), Ipv4Addr::new(127, 0, 0, 2))
            .map_err(|e| serve.failed(Failure::io("GET /is_alive from 127.0.0.2", e)))?;
        samples.push(started.elapsed());
    }
    let still_open = flood
        .iter()
        .filter(|stream| !closed_by_peer(stream))
        .count();
    drop(flood);
    samples.sort();
    let p50 = percentile(&samples, 50.0);
    let p99 = percentile(&samples, 99.0);
    println!(
        "  GET /is_alive: p50 {}, p99 {}, max {}; {still_open} of the {FLOOD} flood connections still open",
        fmt_duration_fine(p50),
        fmt_duration_fine(p99),
        fmt_duration_fine(samples[samples.len() - 1])
    );
    let p99_row = Row::at_most(
        &format!("/is_alive p99, fresh client, {FLOOD} idle conns"),
        None,
        p99.as_secs_f64() * 1000.0,
        FLOOD_P99_TARGET_MS,
        "ms",
        1,
    );
    println!(
        "  p99: {}   target {}   {}",
        p99_row.figure, p99_row.target, p99_row.outcome
    );
    let p50_row = Row::note(
        &format!("/is_alive p50, fresh client, {FLOOD} idle conns"),
        format!("{:.1} ms", p50.as_secs_f64() * 1000.0),
    );
    Ok(vec![p99_row, p50_row])
}

/// One sample: a new connection from `source`, the handshake, `GET
/// /is_alive` with `Connection: close`, the answer read to the close.
fn is_alive_from(agent: &TestAgent, source: Ipv4Addr) -> io::Result<()> {
    let tcp = connect_from(source, agent.port(), Duration::from_secs(10))?;
    tcp.set_nodelay(true)?;
    let mut tls = agent.tls_over(tcp);
    tls.write_all(b"GET /is_alive HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)?;
    if !answer.starts_with(b"HTTP/1.1 200 ") || !answer.ends_with(b"yes") {
        return Err(io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&answer)
        )));
    }
    Ok(())
}

/// Whether the peer closed `stream`, which never sent anything.
fn closed_by_peer(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Connections a job's processes open to its cache socket at once, holding
/// an unfinished request each, and then frames that claim 16 MiB.
const CACHE_HOLDERS: usize = 64;
const CACHE_FLOOD: usize = 64;
/// Targets: the agent's threads added, and its resident memory at the peak
/// over idle, during the flood.
const CACHE_FLOOD_THREADS_TARGET: f64 = 16.0;
const CACHE_FLOOD_RSS_TARGET_MIB: f64 = 32.0;

/// A job's cache socket flooded (README, "What a job can and cannot do to
/// the cache"): 64 connections that each hold a request unfinished, then 64
/// frames that claim 16 MiB and send 2 MiB. The agent's threads and VmHWM
/// over those of the waiting job, one run.
pub(super) fn bench_cache_flood() -> Result<Vec<Row>, Failure> {
    println!(
        "  a job's cache socket: {CACHE_HOLDERS} connections holding a request unfinished, then \
         {CACHE_FLOOD} frames claiming 16 MiB with 2 MiB sent; threads and VmHWM over the waiting job's; one run"
    );
    let serve = Serve::idle()?;
    let job = json!({
        "job_id": "cache-flood",
        "executor": "shell",
        "commands": [{ "directive": "echo \"socket=$AGENT_CACHE_SOCKET\"; sleep 30" }],
    });
    serve.post_job(&job).map_err(|f| serve.failed(f))?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    let socket = loop {
        let log = serve.agent().poll_log("cache-flood");
        let found = log.iter().find_map(|e| {
            e["output"]
                .as_str()?
                .lines()
                .find_map(|l| l.strip_prefix("socket=").map(str::to_owned))
        });
        if let Some(socket) = found {
            break socket;
        }
        if Instant::now() > deadline {
            return Err(serve.failed(Failure::new("the job never printed its socket".into())));
        }
        thread::sleep(Duration::from_millis(50));
    };
    let before = serve.proc_status()?;
    let threads_before = status_field(&before, "Threads").unwrap_or(0);
    let rss_before = status_field(&before, "VmRSS").unwrap_or(0);
    let head = |len: u32| {
        let mut head = vec![b'J'];
        head.extend(len.to_be_bytes());
        head
    };
    let connect = || std::os::unix::net::UnixStream::connect(&socket);
    let mut held = Vec::new();
    for _ in 0..CACHE_HOLDERS {
        if let Ok(mut conn) = connect() {
            let _ = conn
                .write_all(&head(100))
                .and_then(|()| conn.write_all(b"{"));
            held.push(conn);
        }
    }
    let junk = vec![b' '; 2 * 1024 * 1024];
    for _ in 0..CACHE_FLOOD {
        if let Ok(mut conn) = connect() {
            let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = conn
                .write_all(&head(16 * 1024 * 1024))
                .and_then(|()| conn.write_all(&junk));
            held.push(conn);
        }
    }
    thread::sleep(Duration::from_secs(1));
    let during = serve.proc_status()?;
    let threads_peak = status_field(&during, "Threads").unwrap_or(0);
    let hwm = status_field(&during, "VmHWM").unwrap_or(0);
    drop(held);
    let _ = serve.client().post("/jobs/cache-flood/stop", b"");
    println!(
        "  threads {threads_before} before, {threads_peak} during; VmRSS {} before, VmHWM {} during",
        fmt_kib(rss_before),
        fmt_kib(hwm)
    );
    let threads_row = Row::at_most(
        "threads added by a cache-socket flood",
        None,
        threads_peak.saturating_sub(threads_before) as f64,
        CACHE_FLOOD_THREADS_TARGET,
        "threads",
        0,
    );
    let rss_row = Row::at_most(
        "RSS peak over idle, cache-socket flood",
        None,
        hwm.saturating_sub(rss_before) as f64 / 1024.0,
        CACHE_FLOOD_RSS_TARGET_MIB,
        "MiB",
        1,
    );
    for row in [&threads_row, &rss_row] {
        println!(
            "  {}: {}   target {}   {}",
            row.check, row.figure, row.target, row.outcome
        );
    }
    Ok(vec![threads_row, rss_row])
}
