//! The HTTP API of docs/protocol.md §2.3 and §13.2 as plain functions from a request
//! to a reply. No tiny_http type appears here (`server` adapts), so every
//! route can be read, and tested, on its own.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use crate::api::auth::Authenticator;
use crate::api::bodies::{BodyTurns, Busy};
use crate::error::RequestError;
use crate::job::request::{warn_unknown_keys, Decoded, Format, JobRequest};
use crate::job::runner::{Runner, Submit, TeardownInfo, STOP_BY_API};

/// What the handlers need; built once by `serve`.
pub struct App {
    pub auth: Authenticator,
    pub runner: Arc<Runner>,
    pub agent_log: PathBuf,
    pub max_request_bytes: u64,
    /// Large job requests take turns (see `bodies`).
    pub bodies: BodyTurns,
}

pub struct Req<'a> {
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub query: &'a str,
    pub authorization: Option<&'a str>,
    pub client_name: Option<&'a str>,
    /// The declared `Content-Length`, if any.
    pub body_len: Option<u64>,
    /// Reading it is what asks the client for the body (docs/protocol.md
    /// §2.1), so a handler reads it only once the request is authenticated.
    pub content_type: Option<&'a str>,
    pub body: &'a mut dyn Read,
}

pub enum Body {
    Bytes(Vec<u8>),
    Stream(Box<dyn Read + Send>, u64),
}

pub struct Reply {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub location: Option<String>,
    pub body: Body,
    /// Run after the reply was written (archivator reads).
    pub after: Option<Box<dyn FnOnce() + Send>>,
}

impl Reply {
    fn bytes(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type: None,
            location: None,
            body: Body::Bytes(body.into()),
            after: None,
        }
    }

    fn json(status: u16, value: serde_json::Value) -> Reply {
        let mut r = Reply::bytes(status, value.to_string());
        r.content_type = Some("application/json");
        r
    }

    fn message(status: u16, message: &str) -> Reply {
        Reply::json(status, json!({ "message": message }))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    IsAlive,
    Status,
    Jobs,
    JobLog,
    Job,
    JobStop,
    Stop,
    AgentLogs,
}

/// Exact paths; returns the route, its allowed method and the job id.
fn route(path: &str) -> Option<(Route, &'static str, Option<&str>)> {
    Some(match path {
        "/is_alive" => (Route::IsAlive, "GET", None),
        "/status" => (Route::Status, "GET", None),
        "/jobs" => (Route::Jobs, "*", None),
        "/stop" | "/jobs/terminate" => (Route::Stop, "POST", None),
        "/agent_logs" => (Route::AgentLogs, "GET", None),
        _ => {
            let rest = path.strip_prefix("/jobs/")?;
            let (id, tail) = match rest.split_once('/') {
                Some((id, tail)) => (id, Some(tail)),
                None => (rest, None),
            };
            if id.is_empty() {
                return None;
            }
            match tail {
                None => (Route::Job, "GET", Some(id)),
                Some("log") => (Route::JobLog, "GET", Some(id)),
                Some("stop") => (Route::JobStop, "POST", Some(id)),
                Some(_) => return None,
            }
        }
    })
}

pub fn handle(app: &App, req: Req<'_>) -> Reply {
    // A known path with a trailing slash is redirected (§2.1).
    if req.path.len() > 1 && req.path.ends_with('/') {
        let trimmed = req.path.trim_end_matches('/');
        if route(trimmed).is_some() {
            let mut r = Reply::bytes(301, Vec::new());
            r.location = Some(if req.query.is_empty() {
                trimmed.to_string()
            } else {
                format!("{trimmed}?{}", req.query)
            });
            return r;
        }
    }
    let Some((route, method, job_id)) = route(req.path) else {
        return Reply::bytes(404, "404 page not found\n");
    };
    let method_ok = match route {
        Route::Jobs => req.method == "GET" || req.method == "POST",
        _ => req.method == method,
    };
    if !method_ok {
        return Reply::bytes(405, Vec::new());
    }
    if route != Route::IsAlive {
        if let Err(e) = app.auth.check(req.authorization) {
            let mut body = serde_json::to_vec(&e.to_string()).unwrap_or_default();
            body.push(b'\n');
            return Reply::bytes(401, body);
        }
    }
    match route {
        Route::IsAlive => Reply::bytes(200, "yes"),
        Route::Status => status(app),
        Route::Jobs if req.method == "POST" => {
            submit(app, req.content_type, req.body, req.body_len)
        }
        Route::Jobs => Reply::json(200, json!(app.runner.list())),
        Route::Job => match app.runner.find(job_id.unwrap_or_default()) {
            Some(entry) => Reply::json(200, json!(entry.info())),
            None => not_running(app, job_id.unwrap_or_default()),
        },
        Route::JobLog => job_log(app, job_id.unwrap_or_default(), req.query, req.client_name),
        Route::JobStop => match app.runner.find(job_id.unwrap_or_default()) {
            Some(entry) => {
                entry.stop(STOP_BY_API);
                Reply::message(200, "stopping")
            }
            None => not_running(app, job_id.unwrap_or_default()),
        },
        Route::Stop => {
            let n = app.runner.stop_all(STOP_BY_API);
            let message = if n == 0 { "no job to stop" } else { "stopping" };
            Reply::message(200, message)
        }
        Route::AgentLogs => match crate::logging::open_for_reading(&app.agent_log) {
            Ok(file) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let mut r = Reply::bytes(200, Vec::new());
                r.body = Body::Stream(Box::new(file.take(len)), len);
                r.content_type = Some("text/plain");
                r
            }
            Err(_) => Reply::bytes(404, Vec::new()),
        },
    }
}

fn status(app: &App) -> Reply {
    let (running, queued) = app.runner.counts();
    let teardown = app.runner.tearing_down();
    let state = if running + queued > 0 {
        "job-received"
    } else {
        "waiting-for-job"
    };
    // A struct, not json!, so the keys keep the reference's order.
    #[derive(serde::Serialize)]
    struct Status {
        state: &'static str,
        version: &'static str,
        jobs: Jobs,
        /// What each job in teardown waits for: the reason a `POST /jobs`
        /// may be refused while `state` is `waiting-for-job`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        teardown: Vec<TeardownInfo>,
        /// The room left where job logs go (absent when it cannot be
        /// measured).
        #[serde(skip_serializing_if = "Option::is_none")]
        data_disk: Option<DataDisk>,
    }
    #[derive(serde::Serialize)]
    struct DataDisk {
        free_bytes: u64,
        full: bool,
    }
    #[derive(serde::Serialize)]
    struct Jobs {
        running: usize,
        queued: usize,
        tearing_down: usize,
        capacity: usize,
    }
    let status = Status {
        state,
        version: crate::version::VERSION,
        jobs: Jobs {
            running,
            queued,
            tearing_down: teardown.len(),
            capacity: app.runner.capacity(),
        },
        teardown,
        data_disk: app.runner.data_disk().map(|d| DataDisk {
            free_bytes: d.free_bytes,
            full: d.full,
        }),
    };
    let mut r = Reply::bytes(200, serde_json::to_vec(&status).unwrap_or_default());
    r.content_type = Some("application/json");
    r
}

/// The format a `POST /jobs` body is read in: YAML when its Content-Type
/// says so, JSON when it says so, else guessed from the first byte (curl's
/// `--data-binary` sends `application/x-www-form-urlencoded`).
fn body_format(content_type: Option<&str>) -> Format {
    let media = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if media.ends_with("yaml") || media.ends_with("+yaml") {
        Format::Yaml
    } else if media == "application/json" || media.ends_with("+json") {
        Format::Json
    } else {
        Format::Guess
    }
}

fn submit(
    app: &App,
    content_type: Option<&str>,
    body: &mut dyn Read,
    body_len: Option<u64>,
) -> Reply {
    // Declared before the request, so dropped after it: the memory the
    // request held is free when the turn ends.
    let _turn = match app.bodies.take(body_len.unwrap_or(0)) {
        Ok(turn) => turn,
        Err(busy) => {
            let why = match busy {
                Busy::TooManyWaiting => "too many large requests are waiting",
                Busy::Timeout => "large requests before this one took too long",
            };
            return Reply::message(503, &format!("{why}; try again later"));
        }
    };
    // The front already refused larger bodies; this bound is a second guard.
    let mut limited = body.take(app.max_request_bytes + 1);
    let parsed = JobRequest::from_body(&mut limited, body_format(content_type));
    if limited.limit() == 0 {
        return Reply::message(413, "request body too large");
    }
    let Decoded {
        request,
        unknown_keys,
    } = match parsed {
        Ok(d) => d,
        Err(e @ RequestError::Body(_)) => return Reply::message(500, &e.to_string()),
        Err(e) => return Reply::message(422, &e.to_string()),
    };
    let executor = match request.validate() {
        Ok(kind) => kind,
        Err(e) => return Reply::message(422, &e.to_string()),
    };
    if request.job_id.is_empty() {
        return Reply::message(422, "invalid job request: job_id is required");
    }
    let job_id = request.job_id.clone();
    match app.runner.submit(request, executor) {
        Submit::Accepted => {
            warn_unknown_keys(&job_id, &unknown_keys);
            Reply::message(200, "ok")
        }
        Submit::AlreadyKnown => Reply::message(200, "job is already running"),
        Submit::AnotherRunning => Reply::message(422, "another job is already running"),
        Submit::TearingDown(info) => {
            Reply::message(422, &format!("another job is tearing down: {info}"))
        }
        Submit::AtCapacity => Reply::message(422, "agent is at capacity"),
        Submit::Failed(e) => {
            log::error!("cannot accept a job: {e}");
            Reply::message(500, &format!("cannot accept the job: {e}"))
        }
    }
}

/// An unknown job id keeps the reference's statuses (403 once a job was
/// accepted, 404 before), with a message that says what is true.
fn not_running(app: &App, job_id: &str) -> Reply {
    let status = if app.runner.any_accepted() { 403 } else { 404 };
    Reply::message(status, &format!("no job with id {job_id} on this agent"))
}

fn job_log(app: &App, job_id: &str, query: &str, client_name: Option<&str>) -> Reply {
    let Some(entry) = app.runner.find(job_id) else {
        return not_running(app, job_id);
    };
    let start_from = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("start_from="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // Decided before reading: only a read that can contain `job_finished`
    // releases the teardown wait.
    let finished = entry.log_finished();
    let mut r = match entry.files().read_from(start_from) {
        Ok(reader) => {
            let len = reader.size();
            let mut r = Reply::bytes(200, Vec::new());
            r.body = Body::Stream(Box::new(reader), len);
            r
        }
        Err(e) => return Reply::message(500, &format!("cannot read the job log: {e}")),
    };
    r.content_type = Some("text/plain");
    if finished && client_name == Some("archivator") {
        r.after = Some(Box::new(move || entry.mark_archived()));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_formats() {
        assert_eq!(body_format(Some("application/yaml")), Format::Yaml);
        assert_eq!(
            body_format(Some("text/x-yaml; charset=utf-8")),
            Format::Yaml
        );
        assert_eq!(body_format(Some("Application/JSON")), Format::Json);
        assert_eq!(
            body_format(Some("application/x-www-form-urlencoded")),
            Format::Guess
        );
        assert_eq!(body_format(None), Format::Guess);
    }

    #[test]
    fn routes_are_exact() {
        assert!(route("/is_alive").is_some());
        assert!(route("/jobs/abc/log").is_some());
        assert!(route("/jobs/abc/stop").is_some());
        assert!(route("/jobs/abc").is_some());
        assert!(route("/jobs/").is_none());
        assert!(route("/jobs/abc/other").is_none());
        assert!(route("/nope").is_none());
        assert!(route("/jobs/terminate").map(|r| r.0) == Some(Route::Stop));
    }
}
