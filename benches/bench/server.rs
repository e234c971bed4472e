//! `agent serve` as the benchmarks use it. The tests' `TestAgent` starts it
//! (port 0, a fresh certificate, HOME, data dir and agent log in a directory
//! of its own) and its `ApiClient` talks to it; this module adds what a
//! benchmark needs on top: a server ready for several jobs, jobs posted and
//! followed to `job_finished` with every problem returned as a `Failure`
//! rather than a panic, the whole log of a job read as the archivator does
//! and checked, and failure messages that show the server's stderr and
//! agent log and keep its files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent_binary;
use crate::events::{summarize_log, LineTracker, LogSummary};
use crate::report::{fmt_duration, indent, read_tail, Failure};
use crate::support::client::ApiClient;
use crate::support::server::TestAgent;

/// The JWT secret of every `agent serve` the benchmarks start.
const SERVE_SECRET: &str = "agent-bench-secret-0123456789abcdef0123456789";

/// Runners of a server that runs the benchmark's jobs: room for several
/// jobs at once (a finished job holds its runner until the archivator read
/// or the archivator timeout).
const SERVE_JOBS: usize = 4;

/// The archivator timeout of such a server, in seconds: short.
const SERVE_ARCHIVATOR_TIMEOUT: u64 = 1;

/// How long `agent serve` may take to answer `GET /is_alive` once it has
/// printed `listening on`.
const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of one API request (whole logs of 100 MB included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `agent serve` of one benchmark. Dropping it drops the
/// `TestAgent`, which stops any job still running through the API, checks
/// that no process of the jobs is left, and kills the server.
pub struct Serve {
    agent: TestAgent,
}

/// A job whose `job_finished` a poll saw.
pub struct Finished {
    /// When the poll that saw it returned.
    pub at: Instant,
    /// Events in the log.
    pub events: u64,
}

impl Serve {
    /// `agent serve` with its defaults, once it has answered
    /// `GET /is_alive`.
    pub fn idle() -> Result<Serve, Failure> {
        Serve::ready(TestAgent::builder())
    }

    /// `agent serve` with `SERVE_JOBS` runners and a short archivator
    /// timeout, once it has answered `GET /is_alive`.
    pub fn for_jobs() -> Result<Serve, Failure> {
        Serve::ready(
            TestAgent::builder()
                .jobs(SERVE_JOBS)
                .archivator_timeout(SERVE_ARCHIVATOR_TIMEOUT),
        )
    }

    fn ready(builder: crate::support::server::AgentBuilder) -> Result<Serve, Failure> {
        let agent = builder
            .binary(&agent_binary())
            .secret(SERVE_SECRET)
            .http_timeout(HTTP_TIMEOUT)
            .start();
        let serve = Serve { agent };
        // A client of its own, so that the benchmark's first request opens
        // a connection of its own too.
        let client = serve.agent.client().fresh();
        let deadline = Instant::now() + SERVE_READY_TIMEOUT;
        while let Err(failure) = is_alive(&client) {
            if Instant::now() > deadline {
                return Err(serve.failed(failure));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(serve)
    }

    /// The running agent, for what the benchmark does by hand.
    pub fn agent(&self) -> &TestAgent {
        &self.agent
    }

    /// The server's client: jobs are posted with it, and the benchmark
    /// polls with it on the same connections.
    pub fn client(&self) -> &ApiClient {
        self.agent.client()
    }

    /// The server's directory, for the benchmark's own files too.
    pub fn root(&self) -> &Path {
        self.agent.root()
    }

    /// The server's /proc/<pid>/status.
    pub fn proc_status(&self) -> Result<String, Failure> {
        fs::read_to_string(format!("/proc/{}/status", self.agent.pid()))
            .map_err(|e| self.failed(Failure::io("read /proc/<serve pid>/status", e)))
    }

    /// Posts a job and insists that it was accepted.
    pub fn post_job(&self, job: &Value) -> Result<(), Failure> {
        let reply = self.agent.submit(job);
        let message: Option<Value> = serde_json::from_slice(&reply.body).ok();
        let accepted = reply.status == 200
            && message.as_ref().and_then(|m| m["message"].as_str()) == Some("ok");
        if accepted {
            Ok(())
        } else {
            Err(Failure::new(format!(
                "POST /jobs answered {} {}",
                reply.status,
                reply.text().trim()
            )))
        }
    }

    /// Reads a job's whole log through the API (as the archivator, so the
    /// job's teardown need not wait), keeps it in the server's directory and
    /// checks that the job passed. `on_output` is as for `summarize_log`.
    pub fn passed_log(
        &self,
        job_id: &str,
        on_output: impl FnMut(&str, &str),
    ) -> Result<LogSummary, Failure> {
        let dir = self.root().join("logs");
        fs::create_dir_all(&dir).map_err(|e| Failure::io("create log directory", e))?;
        let path = dir.join(format!("{job_id}.jsonl"));
        let file = File::create(&path).map_err(|e| Failure::io("create log copy", e))?;
        let mut file = io::BufWriter::with_capacity(1 << 20, file);
        let log_path = format!("/jobs/{job_id}/log?start_from=0");
        let status = get_streamed(
            self.client(),
            &log_path,
            &[("X-Client-Name", "archivator")],
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
    /// and agent log, and keeps the server's directory for inspection.
    pub fn failed(&self, failure: Failure) -> Failure {
        let tail = |path: &Path| match read_tail(path, 1500) {
            Ok(text) if !text.trim().is_empty() => indent(text.trim_end()),
            _ => "    (empty)".to_owned(),
        };
        let dir = self.agent.keep_files();
        Failure::new(format!(
            "{failure} (files kept in {})\n  serve stderr tail:\n{}\n  agent log tail:\n{}",
            dir.display(),
            tail(&self.agent.stderr_path()),
            tail(&self.agent.agent_log_path()),
        ))
    }
}

/// `GET` with the token and `headers`, the body streamed to `sink`; returns
/// the status.
pub fn get_streamed(
    client: &ApiClient,
    path: &str,
    headers: &[(&str, &str)],
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<u16, Failure> {
    client
        .get_streamed(path, headers, sink)
        .map_err(Failure::new)
}

/// `GET /is_alive` with the token, insisting on `200 yes`.
pub fn is_alive(client: &ApiClient) -> Result<(), Failure> {
    let mut body = Vec::new();
    let status = get_streamed(client, "/is_alive", &[], &mut |bytes| {
        body.extend_from_slice(bytes);
        Ok(())
    })?;
    if status == 200 && body == b"yes" {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "GET /is_alive answered {status} {:?}",
            String::from_utf8_lossy(&body)
        )))
    }
}

/// Polls the job's log every `poll` (reading only new events) until its
/// last event is `job_finished`, or fails after `timeout`.
pub fn wait_finished(
    client: &ApiClient,
    job_id: &str,
    poll: Duration,
    timeout: Duration,
) -> Result<Finished, Failure> {
    let started = Instant::now();
    let mut lines = LineTracker::default();
    loop {
        let path = format!("/jobs/{job_id}/log?start_from={}", lines.lines);
        let status = get_streamed(client, &path, &[], &mut |bytes| {
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
