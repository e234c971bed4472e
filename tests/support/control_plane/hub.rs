//! The test control plane in the shape of the reference agent's own test
//! hub (`test/hub_reference/app.rb` of the reference agent): the answers it
//! gives, no more (`Shape::ReferenceHub`). What it records for the tests
//! is the same as in the other shape.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::{json_body, start_from, PushRecord, Request, State, SyncRecord, BASE};

/// What the reference agent's test hub answers (its `app.rb`): no token
/// is checked, and every answer is as sparse as the hub's.
pub(super) fn answer(state: &mut State, request: &Request) -> (u16, Vec<u8>) {
    let path = request.path.as_str();
    if let Some(job_id) = path.strip_prefix("/api/v1/logs/") {
        hub_push(state, job_id, request);
        return (200, Vec::new());
    }
    let Some(route) = path.strip_prefix(BASE) else {
        return not_found();
    };
    match (request.method.as_str(), route) {
        ("POST", "/register") => {
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            if state.registrations.is_empty() {
                state.register_headers = request.headers.clone();
            }
            state.registrations.push(body);
            json_body(json!({ "access_token": state.access_token }))
        }
        ("POST", "/disconnect") => {
            state.disconnects += 1;
            (200, Vec::new())
        }
        ("POST", "/sync") => {
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            let response = hub_sync_answer(state, &body);
            let (status, bytes) = match &response {
                Some(answer) => json_body(answer.clone()),
                None => (500, b"unknown state".to_vec()),
            };
            state.syncs.push(SyncRecord {
                request: body,
                response: response.unwrap_or(Value::Null),
            });
            (status, bytes)
        }
        ("GET", r) if r.starts_with("/jobs/") => {
            let job_id = &r["/jobs/".len()..];
            if job_id == "bad-job-id" {
                return (500, b"error".to_vec());
            }
            let job = state.jobs.get(job_id).cloned().unwrap_or(Value::Null);
            (200, job.to_string().into_bytes())
        }
        _ => not_found(),
    }
}

/// The hub's log route appends the body's lines, whatever `start_from`
/// says; a push that does not start where the last one ended is recorded
/// as a gap or an overlap, for the tests (the hub would keep it silently).
fn hub_push(state: &mut State, job_id: &str, request: &Request) {
    let start_from = start_from(request);
    let text = String::from_utf8_lossy(&request.body).into_owned();
    let now = SystemTime::now();
    let accepted = state.lines.entry(job_id.to_owned()).or_default();
    let have = accepted.len() as u64;
    accepted.extend(text.lines().map(|l| (l.to_owned(), now)));
    let note = format!("{job_id}: start_from {start_from} with {have} lines kept");
    match start_from.cmp(&have) {
        std::cmp::Ordering::Greater => state.gaps.push(note),
        std::cmp::Ordering::Less => state.overlaps.push(note),
        std::cmp::Ordering::Equal => {}
    }
    state.pushes.push(PushRecord {
        start_from,
        status: 200,
    });
}

/// Sinatra's answer to a route it does not have.
fn not_found() -> (u16, Vec<u8>) {
    (
        404,
        b"<!DOCTYPE html><html><body><h2>Sinatra doesn't know this ditty.</h2></body></html>"
            .to_vec(),
    )
}

/// The hub's sync answers; `None` for a state it does not know (it raises,
/// so the agent gets a 500).
fn hub_sync_answer(state: &mut State, request: &Value) -> Option<Value> {
    let job_id = request["job_id"].as_str().unwrap_or_default().to_owned();
    let shutdown = state.shutdown.is_some();
    let answer = match request["state"].as_str().unwrap_or_default() {
        "waiting-for-jobs" if shutdown => json!({ "action": "shutdown" }),
        "waiting-for-jobs" => match state.queue.pop_front() {
            Some(id) => json!({ "action": "run-job", "job_id": id }),
            None => json!({ "action": "continue" }),
        },
        "running-job" if shutdown || state.stops.contains(&job_id) => {
            json!({ "action": "stop-job", "job_id": job_id })
        }
        "running-job" | "stopping-job" | "starting-job" => json!({ "action": "continue" }),
        "finished-job" => {
            state.record_result(job_id, request);
            if shutdown {
                json!({ "action": "shutdown" })
            } else {
                json!({ "action": "wait-for-jobs" })
            }
        }
        _ => return None,
    };
    Some(answer)
}
