//! Running `agent serve` for the benchmarks and talking to it over HTTPS.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::events::{summarize_log, LineTracker, LogSummary};
use crate::report::{fmt_duration, indent, read_tail, Failure};
use crate::scratch::Scratch;
use crate::{agent_binary, KILL_GRACE};

/// The JWT secret of every `agent serve` the benchmarks start.
pub const SERVE_SECRET: &str = "agent-bench-secret-0123456789abcdef0123456789";

/// Flags of a server that runs the benchmark's jobs: room for several jobs
/// at once (a finished job holds its runner until the archivator read or
/// the archivator timeout), and a short archivator timeout.
pub const SERVE_JOB_FLAGS: [&str; 4] = ["--jobs", "4", "--archivator-timeout", "1"];

/// How long `agent serve` may take to print `listening on` and answer.
pub const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of one API request (whole logs of 100 MB included).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `Drop` waits for jobs it stopped to end before killing serve.
pub const SERVE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `agent serve` with HOME, data dir, agent log and certificate
/// in a scratch directory. Dropping it stops any job still running through
/// the API, then kills the server.
pub struct Serve {
    pub child: Child,
    pub base: String,
    pub token: String,
    pub cert: ureq::tls::Certificate<'static>,
    pub stderr_path: PathBuf,
    pub agent_log: PathBuf,
    pub scratch: Scratch,
}

impl Serve {
    /// Starts `agent serve` on 127.0.0.1 port 0 with `extra_args` and waits
    /// until it printed its address and answered `GET /is_alive`.
    pub fn start(label: &str, extra_args: &[&str]) -> Result<Serve, Failure> {
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
    pub fn client(&self) -> Client {
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

    pub fn proc_status(&self) -> Result<String, Failure> {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| self.failed(Failure::io("read /proc/<serve pid>/status", e)))
    }

    /// Reads a job's whole log through the API (as the archivator, so the
    /// job's teardown need not wait), keeps it in the scratch directory and
    /// checks that the job passed. `on_output` is as for `summarize_log`.
    pub fn passed_log(
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
    pub fn failed(&self, failure: Failure) -> Failure {
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
pub struct Finished {
    /// When the poll that saw it returned.
    pub at: Instant,
    /// Events in the log.
    pub events: u64,
}

/// An HTTPS client of one `agent serve`, sending its JWT with each request.
pub struct Client {
    pub base: String,
    pub token: String,
    pub http: ureq::Agent,
}

impl Client {
    /// Sends a request and streams the reply's body to `sink`; returns the
    /// status.
    pub fn request(
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

    pub fn get_streamed(
        &self,
        path: &str,
        header: Option<(&str, &str)>,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u16, Failure> {
        self.request("GET", path, header, b"", sink)
    }

    pub fn get(&self, path: &str) -> Result<(u16, Vec<u8>), Failure> {
        let mut body = Vec::new();
        let status = self.get_streamed(path, None, &mut |bytes| {
            body.extend_from_slice(bytes);
            Ok(())
        })?;
        Ok((status, body))
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), Failure> {
        let mut reply = Vec::new();
        let status = self.request("POST", path, None, body, &mut |bytes| {
            reply.extend_from_slice(bytes);
            Ok(())
        })?;
        Ok((status, reply))
    }

    pub fn is_alive(&self) -> Result<(), Failure> {
        match self.get("/is_alive")? {
            (200, body) if body == b"yes" => Ok(()),
            (status, body) => Err(Failure::new(format!(
                "GET /is_alive answered {status} {:?}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    /// Whether serve has a job queued or running (`GET /status`).
    pub fn busy(&self) -> Result<bool, Failure> {
        let (_, body) = self.get("/status")?;
        let status: Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::new(format!("GET /status: not JSON ({e})")))?;
        let count = |name: &str| status["jobs"][name].as_u64().unwrap_or(0);
        Ok(count("running") + count("queued") > 0)
    }

    /// Posts a job and insists that it was accepted.
    pub fn post_job(&self, body: &[u8]) -> Result<(), Failure> {
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
    pub fn wait_finished(
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

/// The serialized request body of a job.
pub fn job_body(job: &Value) -> Vec<u8> {
    serde_json::to_vec(job).expect("a JSON value serializes")
}
