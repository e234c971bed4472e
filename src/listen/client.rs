//! The HTTP client of listen mode: one ureq agent with a deadline on every
//! request, TLS with the system's trust roots (or `SSL_CERT_FILE`), and one
//! method per route of the control plane (register, sync, get job, refresh,
//! disconnect) plus the push of log lines to the URL a job names.
//!
//! It knows the wire format of those routes and nothing of the state
//! machine: retries are the callers' (`retry` helps them), and every error
//! says which route failed and keeps its cause.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::ListenError;
pub use super::error::{describe, ClientError};
use crate::error::Error;

/// Largest response body read from the control plane (a job request
/// included).
const MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;

/// PEM bundles of the system's trust roots, the first one found is used
/// (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, older RHEL).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Deserialized from a sync answer's `shutdown_reason` (`idle`,
/// `job-finished`, `requested`, `interrupted`; anything else is `Unknown`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownReason {
    /// No job for `disconnect-after-idle-timeout` seconds.
    Idle,
    /// `disconnect-after-job` and the job is over.
    JobFinished,
    /// The control plane asked for it.
    Requested,
    /// SIGTERM or SIGINT.
    Interrupted,
    /// No successful sync for too long.
    UnableToSync,
    /// The control plane asked with a reason we do not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl ShutdownReason {
    /// The value the shutdown hook sees, as the reference agent names it.
    pub fn hook_value(self) -> &'static str {
        match self {
            ShutdownReason::Idle => "IDLE",
            ShutdownReason::JobFinished => "JOB_FINISHED",
            ShutdownReason::Requested => "REQUESTED",
            ShutdownReason::Interrupted => "INTERRUPTED",
            ShutdownReason::UnableToSync => "UNABLE_TO_SYNC",
            ShutdownReason::Unknown => "UNKNOWN",
        }
    }

    /// 1 when the agent gave up on the control plane, else 0.
    pub fn exit_code(self) -> u8 {
        match self {
            ShutdownReason::UnableToSync => 1,
            _ => 0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RegisterRequest {
    pub name: String,
    pub version: String,
    pub pid: u32,
    pub os: String,
    pub arch: String,
    pub hostname: String,
    pub single_job: bool,
    pub idle_timeout: u64,
    pub interruption_grace_period: u64,
    pub job_id: String,
}

/// The answer to `/register`. A field the answer lacks is `None` (the
/// reference's own test control plane answers `{"access_token": ...}`
/// only).
#[derive(Debug)]
pub struct Registered {
    pub name: Option<String>,
    pub token: Option<String>,
}

/// The state a sync reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    WaitingForJobs,
    StartingJob,
    RunningJob,
    StoppingJob,
    FinishedJob,
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentState::WaitingForJobs => "waiting-for-jobs",
            AgentState::StartingJob => "starting-job",
            AgentState::RunningJob => "running-job",
            AgentState::StoppingJob => "stopping-job",
            AgentState::FinishedJob => "finished-job",
        })
    }
}

/// What a sync answer asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Continue,
    RunJob,
    StopJob,
    WaitForJobs,
    Shutdown,
    /// An action this agent does not know.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Serialize)]
pub struct SyncRequest<'a> {
    pub state: AgentState,
    pub job_id: &'a str,
    pub job_result: &'a str,
    pub interrupted_at: u64,
}

#[derive(Debug, Default)]
pub struct SyncResponse {
    pub action: Action,
    pub job_id: String,
    pub shutdown_reason: ShutdownReason,
    /// Milliseconds until the next sync; absent or zero: the default.
    pub next_sync_after: u64,
}

impl SyncResponse {
    fn from_answer(answer: &Answer) -> Result<SyncResponse, ClientError> {
        let text = |name| answer.get::<String>(name).map(Option::unwrap_or_default);
        let action = text("action")?;
        let reason = text("shutdown_reason")?;
        Ok(SyncResponse {
            // A missing or empty action does nothing, as `continue`.
            action: if action.is_empty() {
                Action::Continue
            } else {
                serde_json::from_value(serde_json::Value::String(action)).unwrap_or_default()
            },
            job_id: text("job_id")?,
            shutdown_reason: serde_json::from_value(serde_json::Value::String(reason))
                .unwrap_or_default(),
            // A negative value is no value, as zero.
            next_sync_after: answer
                .get::<i64>("next_sync_after")?
                .map_or(0, |ms| u64::try_from(ms).unwrap_or(0)),
        })
    }
}

/// A JSON object answered by the control plane, read as the reference
/// agent reads one (Go's `encoding/json`): a field matches its key exactly
/// or, failing that, ignoring case; a field that is missing or `null` is
/// `None`; other keys are ignored. A field of the wrong type is an error
/// that names it.
struct Answer {
    route: &'static str,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Answer {
    fn parse(route: &'static str, body: &[u8]) -> Result<Answer, ClientError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|source| ClientError::Decode { route, source })?;
        let fields = match value {
            serde_json::Value::Object(fields) => fields,
            serde_json::Value::Null => serde_json::Map::new(),
            other => {
                let source =
                    serde_json::from_value::<serde_json::Map<String, serde_json::Value>>(other)
                        .expect_err("not an object");
                return Err(ClientError::Decode { route, source });
            }
        };
        Ok(Answer { route, fields })
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        field: &'static str,
    ) -> Result<Option<T>, ClientError> {
        let value = self.fields.get(field).or_else(|| {
            self.fields
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(field))
                .map(|(_, value)| value)
        });
        match value {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|source| ClientError::Field {
                    route: self.route,
                    field,
                    source,
                }),
        }
    }
}

/// What the log route said to one batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Accepted,
    /// 401: the token expired; refresh it and push again.
    Unauthorized,
    /// 422: the control plane takes no more lines of this job.
    Refused,
}

/// The control plane's agent API. Cheap to clone: the connection pool is
/// shared.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// The registration token until `register`, the access token after.
    token: String,
}

impl Client {
    pub fn new(base: String, token: String, timeout: Duration) -> Result<Client, Error> {
        let roots = trust_roots(std::env::var_os("SSL_CERT_FILE").map(PathBuf::from))?;
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls)
            .user_agent(format!("SemaphoreAgent/{}", crate::version::VERSION))
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            base,
            token,
        })
    }

    /// Registers and switches to the access token it returns.
    pub fn register(&mut self, request: &RegisterRequest) -> Result<Registered, ClientError> {
        let route = "POST /register";
        let body = serde_json::to_vec(request).expect("plain struct");
        let answer = Answer::parse(route, &self.post(route, "/register", &body)?)?;
        let registered = Registered {
            name: answer.get::<String>("name")?.filter(|n| !n.is_empty()),
            token: answer.get::<String>("token")?,
        };
        // The reference agent goes on with an empty access token; so does
        // this one, and says so.
        if registered.token.is_none() {
            log::warn!(
                "{route}: the answer has no `token`; the agent goes on with an empty access token"
            );
        }
        self.token = registered.token.clone().unwrap_or_default();
        Ok(registered)
    }

    pub fn sync(&self, request: &SyncRequest<'_>) -> Result<SyncResponse, ClientError> {
        let route = "POST /sync";
        let body = serde_json::to_vec(request).expect("plain struct");
        SyncResponse::from_answer(&Answer::parse(route, &self.post(route, "/sync", &body)?)?)
    }

    /// The job request, as bytes for `JobRequest::from_json`.
    pub fn get_job(&self, job_id: &str) -> Result<Vec<u8>, ClientError> {
        let route = "GET /jobs/{id}";
        let url = format!("{}/jobs/{}", self.base, percent_encode(job_id));
        let response = self
            .agent
            .get(&url)
            .header("Authorization", format!("Token {}", self.token))
            .call();
        read(route, response)
    }

    /// A fresh token for the log push.
    pub fn refresh(&self) -> Result<String, ClientError> {
        let route = "POST /refresh";
        let answer = Answer::parse(route, &self.post(route, "/refresh", b"")?)?;
        let token = answer.get::<String>("token")?;
        if token.is_none() {
            log::warn!("{route}: the answer has no `token`; the log is pushed with an empty token");
        }
        Ok(token.unwrap_or_default())
    }

    pub fn disconnect(&self) -> Result<(), ClientError> {
        let route = "POST /disconnect";
        self.post(route, "/disconnect", b"").map(drop)
    }

    /// POSTs log lines starting at line `start_from` to a job's log URL.
    pub fn push_log(
        &self,
        url: &str,
        token: &str,
        start_from: u64,
        lines: &[u8],
    ) -> Result<Pushed, ClientError> {
        let route = "POST (log)";
        let separator = if url.contains('?') { '&' } else { '?' };
        let response = self
            .agent
            .post(&format!("{url}{separator}start_from={start_from}"))
            .header("Content-Type", "text/plain")
            .header("Authorization", format!("Bearer {token}"))
            .send(lines);
        match read(route, response) {
            Ok(_) => Ok(Pushed::Accepted),
            Err(ClientError::Status { status: 401, .. }) => Ok(Pushed::Unauthorized),
            Err(ClientError::Status { status: 422, .. }) => Ok(Pushed::Refused),
            Err(e) => Err(e),
        }
    }

    fn post(&self, route: &'static str, path: &str, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        let response = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("Authorization", format!("Token {}", self.token))
            .send(body);
        read(route, response)
    }
}

fn read(
    route: &'static str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Vec<u8>, ClientError> {
    let transport = |e: ureq::Error| ClientError::Transport {
        route,
        source: Box::new(e),
    };
    let mut response = response.map_err(transport)?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(transport)?;
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        let body: String = String::from_utf8_lossy(&body).chars().take(500).collect();
        Err(ClientError::Status {
            route,
            status,
            body,
        })
    }
}

/// A job id as one path segment.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `SSL_CERT_FILE` when set (it must hold certificates), else the system's
/// bundle, else the roots compiled into the binary.
fn trust_roots(cert_file: Option<PathBuf>) -> Result<ureq::tls::RootCerts, Error> {
    if let Some(path) = cert_file.filter(|p| !p.as_os_str().is_empty()) {
        let certs = read_pem_certs(&path)?;
        if certs.is_empty() {
            return Err(ListenError::NoCertificates { path }.into());
        }
        log::info!(
            "trusting the {} certificate(s) of SSL_CERT_FILE {}",
            certs.len(),
            path.display()
        );
        return Ok(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    for bundle in SYSTEM_BUNDLES {
        let path = Path::new(bundle);
        if let Ok(certs) = read_pem_certs(path) {
            if !certs.is_empty() {
                return Ok(ureq::tls::RootCerts::new_with_certs(&certs));
            }
        }
    }
    log::warn!("no system certificate bundle found; using the built-in roots");
    Ok(ureq::tls::RootCerts::WebPki)
}

fn read_pem_certs(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, Error> {
    let pem =
        std::fs::read(path).map_err(|e| Error::io("cannot read the certificates", path, e))?;
    Ok(ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect())
}

/// Runs `attempt` up to `attempts` times, `delay` apart, logging each
/// failure; stops early (with the last error) when `give_up` says so.
pub fn retry<T>(
    what: &str,
    attempts: u32,
    delay: Duration,
    give_up: &dyn Fn() -> bool,
    mut attempt: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let attempts = attempts.max(1);
    let mut n = 1;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if n >= attempts || give_up() => {
                log::error!(
                    "{what}: {} (attempt {n}/{attempts}, giving up)",
                    describe(&e)
                );
                return Err(e);
            }
            Err(e) => log::warn!("{what}: {} (attempt {n}/{attempts})", describe(&e)),
        }
        n += 1;
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if give_up() {
                break;
            }
            std::thread::sleep(
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_wire_format() {
        let request = SyncRequest {
            state: AgentState::FinishedJob,
            job_id: "j",
            job_result: "passed",
            interrupted_at: 0,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"state":"finished-job","job_id":"j","job_result":"passed","interrupted_at":0}"#
        );
        let sync = |body: &str| {
            Answer::parse("POST /sync", body.as_bytes()).and_then(|a| SyncResponse::from_answer(&a))
        };
        let answer = sync(r#"{"action":"run-job","job_id":"j","extra":[1]}"#).unwrap();
        assert_eq!(
            (answer.action, answer.job_id.as_str()),
            (Action::RunJob, "j")
        );
        assert_eq!(
            sync(r#"{"action":"dance"}"#).unwrap().action,
            Action::Unknown
        );
        for empty in [
            "{}",
            "null",
            r#"{"action":null,"job_id":null}"#,
            r#"{"action":""}"#,
        ] {
            let answer = sync(empty).unwrap();
            assert_eq!(
                (answer.action, answer.job_id.as_str()),
                (Action::Continue, "")
            );
        }
        // Go matches a key ignoring case when no key matches exactly.
        let answer =
            sync(r#"{"Action":"shutdown","SHUTDOWN_REASON":"idle","next_sync_after":-5}"#).unwrap();
        assert_eq!(answer.action, Action::Shutdown);
        assert_eq!(answer.shutdown_reason, ShutdownReason::Idle);
        assert_eq!(answer.next_sync_after, 0);
        let exact = sync(r#"{"ACTION":"shutdown","action":"continue"}"#).unwrap();
        assert_eq!(exact.action, Action::Continue);
        // A wrong type or a body that is not an object is an error.
        let err = sync(r#"{"next_sync_after":"soon"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "POST /sync answered an unexpected `next_sync_after`"
        );
        assert!(sync("[1]").is_err());
        assert!(sync("<html>").is_err());
        assert_eq!(AgentState::WaitingForJobs.to_string(), "waiting-for-jobs");
    }

    #[test]
    fn job_ids_are_one_segment() {
        assert_eq!(percent_encode("a-b_c.9"), "a-b_c.9");
        assert_eq!(percent_encode("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn a_cert_file_without_certificates_is_an_error() {
        let dir = std::env::temp_dir().join(format!("agent-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = trust_roots(Some(empty)).expect_err("an error").to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = trust_roots(Some(dir.join("missing.pem")));
        assert!(missing.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn status_errors_show_the_body_once() {
        let e = ClientError::Status {
            route: "POST /register",
            status: 401,
            body: "bad token\n".into(),
        };
        assert_eq!(e.to_string(), "POST /register answered 401: bad token");
    }
}
