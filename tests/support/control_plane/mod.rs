//! A control plane for the tests of listen mode (`agent start`): a small
//! real HTTP(S) server on 127.0.0.1 that implements register, sync, get job,
//! refresh, disconnect and the log route, keeps scheduled jobs in memory,
//! and lets a test schedule a job, ask for a stop or a shutdown, read the
//! pushed lines, and make the control plane misbehave: down (its port
//! closed), slow, a log token that expires, a log that is full.
//!
//! It answers in one of two shapes (`Shape`): the agent API as
//! docs/listen.md describes it, or exactly as the reference agent's own
//! test hub answers (`test/hub_reference` of the reference agent), which is
//! what a user switching from the reference agent tests against. What it
//! records for the tests (results, gaps, overlaps) is the same in both.
//!
//! Like the rest of `support`, it knows the wire format, not the agent's
//! insides.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

mod hub;

const BASE: &str = "/api/v1/self_hosted_agents";
/// The registration token agents are started with.
pub const REGISTRATION_TOKEN: &str = "registration-token-for-tests";

/// How the control plane answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The agent API as docs/listen.md describes it: tokens checked,
    /// `next_sync_after` and `shutdown_reason` given, the log route's
    /// `start_from` checked (`/logs/{id}`), `/refresh` answered.
    Full,
    /// As the reference agent's test hub answers, no more: `/register`
    /// answers `{"access_token": ...}` (no `token`, no `name`); no token is
    /// checked; no `next_sync_after` nor `shutdown_reason`; `stop-job` only
    /// in `running-job` (and for every running job once a shutdown is
    /// asked); an unknown state is a 500; `GET /jobs/{id}` of an unknown job
    /// answers `null`; the log route `/api/v1/logs/{id}` appends whatever
    /// it is sent; `/disconnect` answers an empty body; `/refresh` is a 404.
    ReferenceHub,
}

/// One sync the control plane received, with its answer.
#[derive(Clone, Debug)]
pub struct SyncRecord {
    pub request: Value,
    pub response: Value,
}

/// One request to the log route.
#[derive(Clone, Debug)]
pub struct PushRecord {
    pub start_from: u64,
    pub status: u16,
}

struct State {
    shape: Shape,
    access_token: String,
    log_token: String,
    n_log_tokens: u64,
    registrations: Vec<Value>,
    register_headers: Vec<(String, String)>,
    syncs: Vec<SyncRecord>,
    queue: VecDeque<String>,
    jobs: HashMap<String, Value>,
    stops: Vec<String>,
    shutdown: Option<String>,
    /// Accepted lines per job, with when each arrived (wall clock, to
    /// compare with times a job prints).
    lines: HashMap<String, Vec<(String, SystemTime)>>,
    pushes: Vec<PushRecord>,
    /// Pushes whose `start_from` was past the accepted lines.
    gaps: Vec<String>,
    /// Pushes that sent again lines already accepted.
    overlaps: Vec<String>,
    finished: HashMap<String, String>,
    disconnects: usize,
    refreshes: usize,
    // Faults.
    down: bool,
    delay: Option<Duration>,
    refuse_after: Option<usize>,
    next_sync_after: u64,
    in_flight: HashMap<&'static str, usize>,
    max_in_flight: HashMap<&'static str, usize>,
}

impl State {
    /// The result a `finished-job` sync reports, kept for the tests.
    fn record_result(&mut self, job_id: String, request: &Value) {
        let result = request["job_result"].as_str().unwrap_or_default();
        self.finished.insert(job_id, result.to_owned());
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How the control plane starts.
pub struct ControlPlaneBuilder {
    tls: bool,
    next_sync_after: u64,
    shape: Shape,
}

impl ControlPlaneBuilder {
    /// Answers in this shape (default `Shape::Full`).
    pub fn shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    /// Serve HTTPS with a fresh self-signed certificate (see `cert_pem`).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// The `next_sync_after` of every answer, in milliseconds (0: none, so
    /// the agent picks its default interval).
    pub fn next_sync_after(mut self, ms: u64) -> Self {
        self.next_sync_after = ms;
        self
    }

    pub fn start(self) -> ControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the control plane");
        let port = listener.local_addr().expect("its address").port();
        let (tls, cert_pem) = if self.tls {
            let certified = rcgen::generate_simple_self_signed(vec![
                "127.0.0.1".to_owned(),
                "localhost".to_owned(),
            ])
            .expect("a self-signed certificate");
            let cert_der = certified.cert.der().clone();
            let key_der =
                rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
                    .expect("a private key");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert_der], key_der)
                .expect("a TLS server config");
            (Some(Arc::new(config)), Some(certified.cert.pem()))
        } else {
            (None, None)
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                shape: self.shape,
                access_token: format!("access-{}", random_hex()),
                log_token: match self.shape {
                    Shape::Full => "log-token-0".into(),
                    Shape::ReferenceHub => "jwtToken".into(),
                },
                n_log_tokens: 0,
                registrations: Vec::new(),
                register_headers: Vec::new(),
                syncs: Vec::new(),
                queue: VecDeque::new(),
                jobs: HashMap::new(),
                stops: Vec::new(),
                shutdown: None,
                lines: HashMap::new(),
                pushes: Vec::new(),
                gaps: Vec::new(),
                overlaps: Vec::new(),
                finished: HashMap::new(),
                disconnects: 0,
                refreshes: 0,
                down: false,
                delay: None,
                refuse_after: None,
                next_sync_after: match self.shape {
                    Shape::Full => self.next_sync_after,
                    Shape::ReferenceHub => 0,
                },
                in_flight: HashMap::new(),
                max_in_flight: HashMap::new(),
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            tls,
        });
        let thread = accept_loop(listener, Arc::clone(&shared));
        ControlPlane {
            port,
            cert_pem,
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }
}

/// Serves each connection on a thread of its own until `stopping`.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    thread::spawn(move || {
        for stream in listener.incoming() {
            if shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let shared = Arc::clone(&shared);
            thread::spawn(move || handle_connection(&shared, stream));
        }
    })
}

/// The running control plane of one test.
pub struct ControlPlane {
    port: u16,
    cert_pem: Option<String>,
    shared: Arc<Shared>,
    /// The accept loop; none while the control plane is down.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ControlPlane {
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder {
            tls: false,
            next_sync_after: 200,
            shape: Shape::Full,
        }
    }

    /// Plain HTTP in this shape.
    pub fn start_shaped(shape: Shape) -> ControlPlane {
        ControlPlane::builder().shape(shape).start()
    }

    /// Plain HTTP, a sync every 200 ms.
    pub fn start() -> ControlPlane {
        ControlPlane::builder().start()
    }

    /// `host:port`, as `--endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_tls(&self) -> bool {
        self.cert_pem.is_some()
    }

    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// Queues a job: the next agent waiting for jobs gets it. The request
    /// gets a push logger pointing here.
    pub fn schedule(&self, job: &Value) -> String {
        let job_id = job["job_id"].as_str().expect("a job_id").to_owned();
        let mut request = job.clone();
        let mut state = self.shared.lock();
        let route = match state.shape {
            Shape::Full => "/logs",
            Shape::ReferenceHub => "/api/v1/logs",
        };
        request["logger"] = json!({
            "method": "push",
            "url": format!("{}://127.0.0.1:{}{route}/{job_id}", self.scheme(), self.port),
            "token": state.log_token,
        });
        state.jobs.insert(job_id.clone(), request);
        state.queue.push_back(job_id.clone());
        self.shared.changed.notify_all();
        job_id
    }

    /// Queues a job with this exact request (`None`: a job `GET /jobs/{id}`
    /// does not know).
    pub fn schedule_raw(&self, job_id: &str, request: Option<Value>) {
        let mut state = self.shared.lock();
        if let Some(request) = request {
            state.jobs.insert(job_id.to_owned(), request);
        }
        state.queue.push_back(job_id.to_owned());
    }

    /// The next sync about this job answers `stop-job`.
    pub fn request_stop(&self, job_id: &str) {
        self.shared.lock().stops.push(job_id.to_owned());
    }

    /// Every further sync answers `shutdown` with this reason.
    pub fn request_shutdown(&self, reason: &str) {
        self.shared.lock().shutdown = Some(reason.to_owned());
    }

    /// Down: the port is closed, so connections are refused; connections
    /// already open are closed unanswered. Up again: the same port listens.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if down {
            self.stop_accepting(&mut thread);
        } else if thread.is_none() {
            self.shared.stopping.store(false, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            let listener = loop {
                match TcpListener::bind(("127.0.0.1", self.port)) {
                    Ok(l) => break l,
                    Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                    Err(e) => panic!("cannot listen on port {} again: {e}", self.port),
                }
            };
            *thread = Some(accept_loop(listener, Arc::clone(&self.shared)));
        }
    }

    fn stop_accepting(&self, thread: &mut Option<JoinHandle<()>>) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag and drops the
        // listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = thread.take() {
            let _ = thread.join();
        }
    }

    /// Slow: every answer waits this long (or until the client gives up).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.shared.lock().delay = delay;
    }

    /// The log token changes: pushes with the old one get 401 until the
    /// agent refreshes it.
    pub fn expire_log_token(&self) {
        let mut state = self.shared.lock();
        state.n_log_tokens += 1;
        state.log_token = format!("log-token-{}", state.n_log_tokens);
    }

    /// The log route takes at most `n` lines of a job, then answers 422.
    pub fn refuse_lines_after(&self, n: usize) {
        self.shared.lock().refuse_after = Some(n);
    }

    pub fn registrations(&self) -> Vec<Value> {
        self.shared.lock().registrations.clone()
    }

    /// A header of the first registration.
    pub fn register_header(&self, name: &str) -> Option<String> {
        self.shared
            .lock()
            .register_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    pub fn syncs(&self) -> Vec<SyncRecord> {
        self.shared.lock().syncs.clone()
    }

    pub fn pushes(&self) -> Vec<PushRecord> {
        self.shared.lock().pushes.clone()
    }

    pub fn disconnects(&self) -> usize {
        self.shared.lock().disconnects
    }

    pub fn refreshes(&self) -> usize {
        self.shared.lock().refreshes
    }

    /// Pushes that skipped lines (should never happen).
    pub fn gaps(&self) -> Vec<String> {
        self.shared.lock().gaps.clone()
    }

    /// Pushes that repeated accepted lines (only after a lost answer).
    pub fn overlaps(&self) -> Vec<String> {
        self.shared.lock().overlaps.clone()
    }

    /// The most requests of this kind (`sync`, `log`, `job`) that were
    /// open at once, counting only those the client still waited for.
    pub fn max_in_flight(&self, route: &str) -> usize {
        self.shared
            .lock()
            .max_in_flight
            .get(route)
            .copied()
            .unwrap_or(0)
    }

    /// The lines accepted for a job so far, parsed.
    pub fn lines(&self, job_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .lines
            .get(job_id)
            .map(|lines| {
                lines
                    .iter()
                    .map(|(l, _)| serde_json::from_str(l).expect("a JSON line"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The accepted lines with their arrival times.
    pub fn timed_lines(&self, job_id: &str) -> Vec<(String, SystemTime)> {
        self.shared
            .lock()
            .lines
            .get(job_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The result the agent reported in `finished-job`, once it has.
    pub fn result(&self, job_id: &str) -> Option<String> {
        self.shared.lock().finished.get(job_id).cloned()
    }

    /// Waits for the `finished-job` report of a job; returns its result.
    pub fn wait_for_result(&self, job_id: &str, timeout: Duration) -> String {
        self.wait(&format!("finished-job of {job_id}"), timeout, |s| {
            s.finished.get(job_id).cloned()
        })
    }

    /// Waits until a pushed line of the job satisfies `predicate`.
    pub fn wait_for_line(
        &self,
        job_id: &str,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait(what, timeout, |s| {
            s.lines.get(job_id).and_then(|lines| {
                lines
                    .iter()
                    .map(|(l, _)| serde_json::from_str::<Value>(l).expect("a JSON line"))
                    .find(|v| predicate(v))
            })
        })
    }

    /// Waits until a sync request satisfies `predicate`; returns it.
    pub fn wait_for_sync(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait(what, timeout, |s| {
            s.syncs
                .iter()
                .map(|r| &r.request)
                .find(|r| predicate(r))
                .cloned()
        })
    }

    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&State) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(value) = found(&state) {
                return value;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let syncs: Vec<String> = state
                    .syncs
                    .iter()
                    .rev()
                    .take(10)
                    .map(|s| format!("{} -> {}", s.request, s.response))
                    .collect();
                panic!(
                    "no {what} within {timeout:?}; last syncs:\n{}",
                    syncs.join("\n")
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left.min(Duration::from_millis(200)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        self.stop_accepting(&mut thread);
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The server side

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn handle_connection(shared: &Shared, tcp: TcpStream) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
    if shared.lock().down {
        let _ = tcp.shutdown(Shutdown::Both);
        return;
    }
    match &shared.tls {
        Some(config) => {
            let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config)) else {
                return;
            };
            let probe = tcp.try_clone().ok();
            let stream = rustls::StreamOwned::new(conn, tcp);
            serve(shared, stream, probe.as_ref(), true);
        }
        None => {
            let probe = tcp.try_clone().ok();
            serve(shared, tcp, probe.as_ref(), false);
        }
    }
}

fn serve<S: Read + Write>(shared: &Shared, stream: S, probe: Option<&TcpStream>, tls: bool) {
    let mut reader = BufReader::new(stream);
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    let route = match (request.method.as_str(), request.path.as_str()) {
        (_, p) if p.starts_with("/logs/") => "log",
        (_, p) if p == format!("{BASE}/sync") => "sync",
        (_, p) if p.starts_with(&format!("{BASE}/jobs/")) => "job",
        _ => "other",
    };
    {
        let mut state = shared.lock();
        let n = state.in_flight.entry(route).or_insert(0);
        *n += 1;
        let n = *n;
        let max = state.max_in_flight.entry(route).or_insert(0);
        *max = (*max).max(n);
    }
    let delay = shared.lock().delay;
    let client_waits = match (delay, probe) {
        (Some(delay), Some(probe)) if !tls => wait_or_hang_up(probe, delay),
        (Some(delay), _) => {
            thread::sleep(delay);
            true
        }
        _ => true,
    };
    let answer = client_waits.then(|| answer(shared, &request));
    shared
        .lock()
        .in_flight
        .entry(route)
        .and_modify(|n| *n = n.saturating_sub(1));
    let Some((status, body)) = answer else {
        return;
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let stream = reader.get_mut();
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    shared.changed.notify_all();
}

/// Waits `delay` unless the client hangs up first; true if it still waits.
fn wait_or_hang_up(stream: &TcpStream, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        match stream.peek(&mut byte) {
            Ok(0) => return false,
            Ok(_) => thread::sleep(Duration::from_millis(20)),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return false,
        }
    }
    true
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn json_body(value: Value) -> (u16, Vec<u8>) {
    (200, value.to_string().into_bytes())
}

fn answer(shared: &Shared, request: &Request) -> (u16, Vec<u8>) {
    let mut state = shared.lock();
    if state.shape == Shape::ReferenceHub {
        return hub::answer(&mut state, request);
    }
    let auth = request
        .header("Authorization")
        .unwrap_or_default()
        .to_owned();
    let agent_auth = format!("Token {}", state.access_token);
    let path = request.path.as_str();
    if let Some(job_id) = path.strip_prefix("/logs/") {
        return push(&mut state, job_id, request, &auth);
    }
    let Some(route) = path.strip_prefix(BASE) else {
        return (404, b"{}".to_vec());
    };
    if route == "/register" {
        if auth != format!("Token {REGISTRATION_TOKEN}") {
            return (401, br#"{"message":"bad registration token"}"#.to_vec());
        }
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        if state.registrations.is_empty() {
            state.register_headers = request.headers.clone();
        }
        state.registrations.push(body.clone());
        return json_body(json!({ "name": body["name"], "token": state.access_token }));
    }
    if auth != agent_auth {
        return (401, br#"{"message":"bad access token"}"#.to_vec());
    }
    match (request.method.as_str(), route) {
        ("POST", "/sync") => {
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            let response = sync_answer(&mut state, &body);
            state.syncs.push(SyncRecord {
                request: body,
                response: response.clone(),
            });
            json_body(response)
        }
        ("GET", r) if r.starts_with("/jobs/") => match state.jobs.get(&r["/jobs/".len()..]) {
            Some(job) => (200, job.to_string().into_bytes()),
            None => (404, b"{}".to_vec()),
        },
        ("POST", "/refresh") => {
            state.refreshes += 1;
            json_body(json!({ "token": state.log_token }))
        }
        ("POST", "/disconnect") => {
            state.disconnects += 1;
            json_body(json!({}))
        }
        _ => (404, b"{}".to_vec()),
    }
}

/// What a control plane would answer to this sync.
fn sync_answer(state: &mut State, request: &Value) -> Value {
    let next = state.next_sync_after;
    let with_next = |mut v: Value| {
        if next > 0 {
            v["next_sync_after"] = json!(next);
        }
        v
    };
    if let Some(reason) = &state.shutdown {
        return with_next(json!({ "action": "shutdown", "shutdown_reason": reason }));
    }
    let job_id = request["job_id"].as_str().unwrap_or_default().to_owned();
    let interrupted = request["interrupted_at"].as_u64().unwrap_or(0) != 0;
    match request["state"].as_str().unwrap_or_default() {
        "waiting-for-jobs" if interrupted => {
            with_next(json!({ "action": "shutdown", "shutdown_reason": "interrupted" }))
        }
        "waiting-for-jobs" => match state.queue.pop_front() {
            Some(id) => with_next(json!({ "action": "run-job", "job_id": id })),
            None => with_next(json!({ "action": "continue" })),
        },
        "starting-job" | "running-job" if state.stops.contains(&job_id) => {
            with_next(json!({ "action": "stop-job", "job_id": job_id }))
        }
        "finished-job" => {
            state.record_result(job_id, request);
            with_next(json!({ "action": "wait-for-jobs" }))
        }
        _ => with_next(json!({ "action": "continue" })),
    }
}

/// The `start_from` of a push (`u64::MAX` when missing or not a number).
fn start_from(request: &Request) -> u64 {
    request
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("start_from="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

fn push(state: &mut State, job_id: &str, request: &Request, auth: &str) -> (u16, Vec<u8>) {
    let start_from = start_from(request);
    let text = String::from_utf8_lossy(&request.body).into_owned();
    let new_lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n_lines = new_lines.len();
    let status = if auth != format!("Bearer {}", state.log_token) {
        401
    } else if request.header("Content-Type") != Some("text/plain") {
        400
    } else {
        let refuse_after = state.refuse_after;
        let now = SystemTime::now();
        let accepted = state.lines.entry(job_id.to_owned()).or_default();
        let have = accepted.len() as u64;
        if start_from > have {
            let gap = format!("{job_id}: start_from {start_from} with {have} lines accepted");
            state.gaps.push(gap);
            400
        } else if refuse_after.is_some_and(|max| have as usize + n_lines > max) {
            422
        } else {
            // A resend after a lost answer overlaps what was accepted.
            let skip = (have - start_from) as usize;
            if skip > 0 {
                let overlap = format!("{job_id}: start_from {start_from} with {have} accepted");
                state.overlaps.push(overlap);
            }
            accepted.extend(new_lines.into_iter().skip(skip).map(|l| (l, now)));
            200
        }
    };
    state.pushes.push(PushRecord { start_from, status });
    (status, b"{}".to_vec())
}
