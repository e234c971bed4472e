//! Test support for the integration tests of `agent serve` (docs/protocol.md §§2, 7,
//! 11, 13).
//!
//! `TestAgent` starts the real `agent` binary on port 0 with a throw-away HOME,
//! data directory and agent log, a fresh self-signed certificate made here and
//! a random secret, and talks to it as a control plane would: over TLS with a
//! client that trusts only that certificate, with JWTs signed here (or minted
//! by `agent token`), polling `/jobs/{id}/log?start_from=N`. The client is in
//! `client`; the server that records the agent's callbacks is in `callback`.
//!
//! Dropping a `TestAgent` checks what every test must leave behind: after the
//! jobs were stopped through the API, no process of any job it was given is
//! alive (found by `AGENT_JOB_MARK=<job_id>.` in `/proc/*/environ`). Then it
//! kills the agent and anything left, so one failure does not leak into the
//! rest of the suite. Like the rest of `support`, it knows the wire format and
//! the command line, not the agent's insides.
//!
//! The benchmarks (`benches/bench`) start their servers with `TestAgent` too.
//! For them the builder can name another binary and the client's deadline,
//! and a failing benchmark can keep the agent's directory.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use serde_json::Value;

use super::client::{canonical_token, parse_log_lines, ApiClient, Reply};
use super::{check_invariants, job_processes, JobProcess};

/// How long the agent may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of one API request made by the tests' client.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an ordinary event of a job may take to appear in its log.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `Drop` waits for stopped jobs to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long processes of a finished job may take to disappear.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two polls of the job log or another condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// `GET /is_alive` must answer within this, whatever other clients do.
pub const RESPONSIVE_LIMIT: Duration = Duration::from_millis(100);
/// Attempts `assert_responsive` makes before it fails.
const RESPONSIVE_ATTEMPTS: usize = 3;

/// Integer Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Polls until `condition` holds and returns the time it took; fails the
/// test after `timeout`.
pub fn poll_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(POLL_INTERVAL);
    }
    started.elapsed()
}

/// A random hex string from the kernel's generator.
fn random_hex(n_bytes: usize) -> String {
    let mut bytes = vec![0u8; n_bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The agent

/// Options of one `agent serve`; `None` leaves the agent's default.
#[derive(Clone, Debug, Default)]
pub struct AgentBuilder {
    jobs: Option<usize>,
    queue_size: Option<usize>,
    archivator_timeout: Option<u64>,
    callback_retry_attempts: Option<u32>,
    stop_grace_period: Option<u64>,
    max_request_bytes: Option<u64>,
    secret: Option<String>,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    binary: Option<String>,
    http_timeout: Option<Duration>,
    root: Option<PathBuf>,
}

impl AgentBuilder {
    pub fn jobs(mut self, n: usize) -> Self {
        self.jobs = Some(n);
        self
    }

    pub fn queue_size(mut self, n: usize) -> Self {
        self.queue_size = Some(n);
        self
    }

    pub fn archivator_timeout(mut self, seconds: u64) -> Self {
        self.archivator_timeout = Some(seconds);
        self
    }

    pub fn callback_retry_attempts(mut self, n: u32) -> Self {
        self.callback_retry_attempts = Some(n);
        self
    }

    pub fn stop_grace_period(mut self, seconds: u64) -> Self {
        self.stop_grace_period = Some(seconds);
        self
    }

    pub fn max_request_bytes(mut self, n: u64) -> Self {
        self.max_request_bytes = Some(n);
        self
    }

    /// The JWT secret (default: 32 random bytes as hex).
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = Some(secret.to_owned());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// An environment variable of the agent process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.extra_env.push((name.to_owned(), value.to_owned()));
        self
    }

    #[allow(dead_code, reason = "the benchmarks use it; the tests do not")]
    /// The agent binary to run (default: the one cargo built for this
    /// package), say an older build to compare with.
    pub fn binary(mut self, path: &str) -> Self {
        self.binary = Some(path.to_owned());
        self
    }

    /// The deadline of each request of the agent's client (default
    /// `HTTP_TIMEOUT`).
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = Some(timeout);
        self
    }

    /// Runs in `root`, the directory of an earlier agent of the test (its
    /// HOME and data dir), instead of a new one; that agent removes it.
    pub fn root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_owned());
        self
    }

    pub fn start(self) -> TestAgent {
        TestAgent::start(self)
    }
}

/// A running `agent serve` of one test.
pub struct TestAgent {
    child: Mutex<Child>,
    pid: i32,
    binary: String,
    /// The directory the agent runs in, when this agent made it.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    /// Set by `keep_files`: the directory outlives the agent.
    keep_dir: AtomicBool,
    secret: String,
    client: ApiClient,
    /// Unix seconds just before the agent started.
    pub started_secs: i64,
    /// Every job id given to `submit`, for the leftover check.
    job_ids: Mutex<Vec<String>>,
    /// Events received so far by `wait_for_event`, per job.
    logs: Mutex<HashMap<String, Vec<Value>>>,
    stdout_thread: Option<JoinHandle<()>>,
}

impl TestAgent {
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// An agent with every default except the test's paths.
    pub fn start_default() -> TestAgent {
        AgentBuilder::default().start()
    }

    fn start(options: AgentBuilder) -> TestAgent {
        let (dir, root) = match &options.root {
            Some(root) => (None, root.clone()),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("agent-serve-it-")
                    .tempdir()
                    .expect("create a temporary directory");
                let root = dir.path().to_owned();
                (Some(dir), root)
            }
        };
        for sub in ["home", "data", "tmp"] {
            fs::create_dir_all(root.join(sub)).expect("create the agent's directories");
        }
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("make a self-signed certificate");
        let cert_pem = certified.cert.pem().into_bytes();
        let cert_path = root.join("server.crt");
        let key_path = root.join("server.key");
        fs::write(&cert_path, &cert_pem).expect("write the certificate");
        fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write the key");

        let secret = options.secret.clone().unwrap_or_else(|| random_hex(32));
        let binary = options
            .binary
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_agent").to_owned());
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .args(["--host", "127.0.0.1", "--port", "0"])
            .arg("--data-dir")
            .arg(root.join("data"))
            .arg("--tls-cert-path")
            .arg(&cert_path)
            .arg("--tls-key-path")
            .arg(&key_path);
        let numbers = [
            ("--jobs", options.jobs.map(|n| n as u64)),
            ("--queue-size", options.queue_size.map(|n| n as u64)),
            ("--archivator-timeout", options.archivator_timeout),
            (
                "--callback-retry-attempts",
                options.callback_retry_attempts.map(u64::from),
            ),
            ("--stop-grace-period", options.stop_grace_period),
            ("--max-request-bytes", options.max_request_bytes),
        ];
        for (flag, value) in numbers {
            if let Some(value) = value {
                command.arg(flag).arg(value.to_string());
            }
        }
        command.args(&options.extra_args);
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("stderr.txt"))
            .expect("create stderr.txt");
        command
            .env("HOME", root.join("home"))
            .env("TMPDIR", root.join("tmp"))
            .env("SEMAPHORE_AGENT_LOG_FILE_PATH", root.join("agent_log"))
            // The environment, not the command line, where every process
            // could read it (README, "Serve the API").
            .env("AGENT_AUTH_TOKEN_SECRET", &secret)
            .env_remove("AGENT_DATA_DIR")
            .env_remove("SEMAPHORE_AGENT_LOG_LEVEL")
            .envs(options.extra_env.iter().map(|(k, v)| (k, v)))
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let started_secs = unix_now();
        let mut child = command.spawn().expect("start the agent binary");
        let pid = child.id() as i32;

        // The first stdout line says where the agent listens; the rest is
        // drained so the agent never blocks on a full pipe.
        let (first_tx, first_rx) = mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stdout_thread = thread::spawn(move || {
            let mut first = Some(first_tx);
            let mut line = String::new();
            loop {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(line.clone());
                        }
                    }
                }
            }
        });
        let first = match first_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = stdout_thread.join();
                panic!(
                    "the agent printed no `listening on` line within {START_TIMEOUT:?}; stderr:\n{}",
                    fs::read_to_string(root.join("stderr.txt")).unwrap_or_default()
                );
            }
        };
        let port = parse_listening_line(&first);
        let cert_pem = Arc::new(cert_pem);
        let client = ApiClient::new(
            format!("https://127.0.0.1:{port}"),
            cert_pem,
            canonical_token(secret.as_bytes()),
            options.http_timeout.unwrap_or(HTTP_TIMEOUT),
        );
        TestAgent {
            child: Mutex::new(child),
            pid,
            binary,
            dir,
            root,
            keep_dir: AtomicBool::new(false),
            secret,
            client,
            started_secs,
            job_ids: Mutex::new(Vec::new()),
            logs: Mutex::new(HashMap::new()),
            stdout_thread: Some(stdout_thread),
        }
    }

    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    pub fn port(&self) -> u16 {
        self.client
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the base URL")
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn home(&self) -> PathBuf {
        self.root.as_path().join("home")
    }

    pub fn root(&self) -> &Path {
        self.root.as_path()
    }

    #[allow(dead_code, reason = "the benchmarks use it; the tests do not")]
    /// Keeps the agent's directory (HOME, data, logs, stderr) after the
    /// agent is dropped, for a failure to point at; returns its path.
    pub fn keep_files(&self) -> &Path {
        self.keep_dir.store(true, Ordering::SeqCst);
        self.root.as_path()
    }

    /// The agent's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn agent_log_path(&self) -> PathBuf {
        self.root.as_path().join("agent_log")
    }

    /// The file the agent's stderr goes to.
    pub fn stderr_path(&self) -> PathBuf {
        self.root.as_path().join("stderr.txt")
    }

    /// What the agent wrote on stderr so far, for failure messages.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// The token the client sends (the canonical one, signed here).
    pub fn token(&self) -> &str {
        self.client.token()
    }

    /// A token printed by `agent token` for this agent's secret.
    pub fn minted_token(&self, ttl_secs: u64) -> String {
        let output = Command::new(&self.binary)
            .arg("token")
            .arg("--ttl")
            .arg(ttl_secs.to_string())
            .env("HOME", self.home())
            .env("AGENT_AUTH_TOKEN_SECRET", &self.secret)
            .stdin(Stdio::null())
            .output()
            .expect("run agent token");
        assert!(
            output.status.success(),
            "agent token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("a UTF-8 token")
            .trim()
            .to_owned()
    }

    pub fn get(&self, path: &str) -> Reply {
        self.client.get(path)
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Reply {
        self.client.post(path, body)
    }

    /// `POST /jobs` with the job request; remembers its id for the leftover
    /// check.
    pub fn submit(&self, job: &Value) -> Reply {
        if let Some(id) = job["job_id"].as_str() {
            self.lock_job_ids().push(id.to_owned());
        }
        self.client.post("/jobs", job.to_string().as_bytes())
    }

    /// `POST /jobs` with a job request as written (YAML or JSON) and an
    /// optional Content-Type; remembers `job_id` for the leftover check.
    pub fn submit_text(&self, job_id: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        self.lock_job_ids().push(job_id.to_owned());
        let bearer = format!("Bearer {}", self.token());
        let mut headers = vec![("Authorization", bearer.as_str())];
        headers.extend(content_type.map(|t| ("Content-Type", t)));
        self.client.request("POST", "/jobs", &headers, body)
    }

    /// `submit`, expecting `200 {"message": "ok"}`.
    pub fn submit_ok(&self, job: &Value) {
        let reply = self.submit(job);
        assert_eq!(
            (reply.status, reply.message().as_str()),
            (200, "ok"),
            "POST /jobs of {}: {}",
            job["job_id"],
            reply.text()
        );
    }

    fn lock_job_ids(&self) -> MutexGuard<'_, Vec<String>> {
        self.job_ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls the job's log as a control plane does (`start_from` = lines
    /// received so far) until an event satisfies `predicate` (events received
    /// by earlier calls count), and returns it.
    pub fn wait_for_event(
        &self,
        job_id: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            let received = self.poll_log(job_id);
            if let Some(found) = received[checked..].iter().find(|e| predicate(e)) {
                return found.clone();
            }
            checked = received.len();
            if Instant::now() >= deadline {
                panic!(
                    "no matching event of job {job_id} within {timeout:?}; events so far:\n{}\nagent stderr:\n{}",
                    render(&received),
                    self.stderr_text()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// One incremental poll; returns every event received so far.
    pub fn poll_log(&self, job_id: &str) -> Vec<Value> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let events = logs.entry(job_id.to_owned()).or_default();
        let reply = self.client.log(job_id, Some(&events.len().to_string()));
        assert_eq!(
            reply.status,
            200,
            "GET /jobs/{job_id}/log: {}",
            reply.text()
        );
        events.extend(parse_log_lines(&reply.body));
        events.clone()
    }

    /// Waits for `cmd_started` of `directive`.
    pub fn wait_for_cmd_started(&self, job_id: &str, directive: &str) {
        self.wait_for_event(job_id, EVENT_TIMEOUT, |e| {
            e["event"] == "cmd_started" && e["directive"] == directive
        });
    }

    /// Waits for `job_finished` and returns the whole log, checked against
    /// the invariants of §6.1.
    pub fn wait_for_job_finished(&self, job_id: &str) -> Vec<Value> {
        self.wait_for_event(job_id, EVENT_TIMEOUT, |e| e["event"] == "job_finished");
        let events = self.poll_log(job_id);
        if let Err(problem) = check_invariants(&events, self.started_secs, unix_now() + 1) {
            panic!(
                "the log of job {job_id} breaks §6.1: {problem}\n{}",
                render(&events)
            );
        }
        events
    }

    /// `GET /jobs/{id}`'s `state`.
    pub fn job_state(&self, job_id: &str) -> String {
        let reply = self.get(&format!("/jobs/{job_id}"));
        assert_eq!(reply.status, 200, "GET /jobs/{job_id}: {}", reply.text());
        reply.json()["state"]
            .as_str()
            .unwrap_or_else(|| panic!("no state in {}", reply.text()))
            .to_owned()
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the agent this test started; it is reaped only
        // by `is_running` seeing it gone or by drop, so the pid is still its.
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid);
    }

    /// True while the agent process has not exited.
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(child.try_wait(), Ok(None))
    }

    /// The agent's resident memory in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn vm_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read the agent's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    /// Asserts that the agent is alive and that `GET /is_alive`, from a new
    /// client on a new connection (TLS handshake included), answers `yes`
    /// within `RESPONSIVE_LIMIT`. Returns the time it took.
    ///
    /// Up to `RESPONSIVE_ATTEMPTS` attempts are made and the fastest counts:
    /// on a loaded machine one request can lose the CPU for longer than the
    /// limit, while an agent that is really blocked fails every attempt.
    pub fn assert_responsive(&self) -> Duration {
        let mut times = Vec::new();
        for _ in 0..RESPONSIVE_ATTEMPTS {
            assert!(self.is_running(), "the agent has exited");
            let client = self.client.fresh();
            let started = Instant::now();
            let reply = client.get_anon("/is_alive");
            let took = started.elapsed();
            assert_eq!((reply.status, reply.text().as_str()), (200, "yes"));
            if took < RESPONSIVE_LIMIT {
                return took;
            }
            times.push(took);
        }
        panic!("GET /is_alive took {times:?}, each more than {RESPONSIVE_LIMIT:?}");
    }

    /// A TLS connection to the agent that the test drives byte by byte.
    pub fn tls_stream(&self) -> TlsStream {
        self.tls_over(self.tcp_stream())
    }

    /// A TLS connection over `tcp`, a connection to the agent's port the
    /// test made itself (say, from another loopback address).
    pub fn tls_over(&self, tcp: TcpStream) -> TlsStream {
        let roots = {
            let mut store = rustls::RootCertStore::empty();
            let der = rustls::pki_types::CertificateDer::from_pem_slice(&self.client.cert_pem)
                .expect("parse the test certificate");
            store.add(der).expect("trust the test certificate");
            store
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a server name");
        let connection = rustls::ClientConnection::new(Arc::new(config), name.to_owned())
            .expect("a TLS client connection");
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("the TLS handshake");
        }
        stream
    }

    /// A plain TCP connection to the agent's port, with deadlines.
    pub fn tcp_stream(&self) -> TcpStream {
        let tcp = TcpStream::connect(("127.0.0.1", self.port())).expect("connect to the agent");
        tcp.set_read_timeout(Some(HTTP_TIMEOUT))
            .expect("set a read timeout");
        tcp.set_write_timeout(Some(HTTP_TIMEOUT))
            .expect("set a write timeout");
        tcp
    }

    /// Stops every job through the API, waits until none is queued or
    /// running, and returns the processes of this agent's jobs still alive
    /// `LEFTOVER_TIMEOUT` later (none, if the agent cleans up).
    fn stop_jobs_and_find_leftovers(&self) -> Result<Vec<JobProcess>, String> {
        let ids = self.lock_job_ids().clone();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let stop = self.client.post("/stop", b"");
        if stop.status != 200 {
            return Err(format!(
                "POST /stop answered {}: {}",
                stop.status,
                stop.text()
            ));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let jobs = self.client.get("/jobs");
            let busy = jobs.status != 200
                || jobs.json().as_array().is_none_or(|list| {
                    list.iter()
                        .any(|j| j["state"] == "queued" || j["state"] == "running")
                });
            if !busy {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "jobs still queued or running {STOP_TIMEOUT:?} after POST /stop: {}",
                    jobs.text()
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
        let deadline = Instant::now() + LEFTOVER_TIMEOUT;
        loop {
            let left: Vec<JobProcess> = ids.iter().flat_map(|id| job_processes(id)).collect();
            if left.is_empty() || Instant::now() >= deadline {
                return Ok(left);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let problem = if thread::panicking() || !self.is_running() {
            None
        } else {
            match self.stop_jobs_and_find_leftovers() {
                Ok(left) if left.is_empty() => None,
                Ok(left) => Some(format!("processes of the jobs are left: {left:#?}")),
                Err(e) => Some(e),
            }
        };
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
        for id in self.lock_job_ids().iter() {
            for process in job_processes(id) {
                // SAFETY: kill(2) has no memory-safety preconditions; the
                // pid was just seen carrying this job's mark.
                unsafe {
                    libc::kill(process.pid, libc::SIGKILL);
                }
            }
        }
        if let Some(handle) = self.stdout_thread.take() {
            let _ = handle.join();
        }
        let keep = self.keep_dir.load(Ordering::SeqCst);
        if let Some(dir) = self.dir.as_mut().filter(|_| keep) {
            dir.disable_cleanup(true);
        }
        if let Some(problem) = problem {
            panic!(
                "after the test: {problem}\nagent stderr:\n{}",
                self.stderr_text()
            );
        }
    }
}

/// The port of `agent <version> listening on https://127.0.0.1:<port>`.
fn parse_listening_line(line: &str) -> u16 {
    let line = line.trim_end();
    assert!(
        line.starts_with("agent ") && line.contains(" listening on https://127.0.0.1:"),
        "unexpected first stdout line: {line:?}"
    );
    line.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// A TLS connection driven by hand.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Reads an HTTP response head from `stream` and returns the status code
/// and the head's text.
pub fn read_response_head(stream: &mut impl Read) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!(
                "reading a response head failed after {:?}: {e}",
                String::from_utf8_lossy(&head)
            ),
        }
        assert!(head.len() < 64 * 1024, "a response head over 64 KiB");
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn render(events: &[Value]) -> String {
    let mut text = String::new();
    for event in events.iter().take(80) {
        let line = event.to_string();
        let clipped: String = line.chars().take(300).collect();
        text.push_str(&clipped);
        text.push('\n');
    }
    if events.len() > 80 {
        text.push_str(&format!("... {} events in all\n", events.len()));
    }
    text
}
