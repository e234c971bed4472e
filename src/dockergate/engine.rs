//! The gate's own questions to the engine, on connections of their own:
//! whose is this container, exec, network or volume (by its labels), and
//! the creation of a named volume, labelled, before a container that names
//! it would make it unlabelled. Each answer is read with a bound and every
//! exchange has a deadline.
//!
//! It also finds the engine's socket: `DOCKER_HOST` when it is a
//! `unix://` address, else `/var/run/docker.sock`.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::rules::{JobFacts, Object};
use super::wire::{self, WireError};

/// The most an inspect answer may take (a container's inspect lists its
/// environment and mounts).
const MAX_ANSWER: usize = 8 * 1024 * 1024;
/// How long one question may take; the engine answers inspects in
/// milliseconds.
const DEADLINE: Duration = Duration::from_secs(30);

/// Where the engine listens, or None when `DOCKER_HOST` names something
/// other than a Unix socket (the gate cannot forward to it).
pub fn engine_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(PathBuf::from),
        _ => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

/// What the engine answered.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request with a deadline, `Connection: close`, the answer read whole
/// (bounded).
pub fn ask(
    engine: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Answer, WireError> {
    let stream = UnixStream::connect(engine)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = &stream;
    out.write_all(head.as_bytes())?;
    if let Some(body) = body {
        out.write_all(body)?;
    }
    let mut reader = BufReader::new(&stream);
    let head = wire::read_head(&mut reader)?.ok_or(WireError::BadHead("no answer"))?;
    let response = wire::parse_response(&head)?;
    let framing = response.framing(method == "HEAD")?;
    let body = wire::read_body(framing, &mut reader, MAX_ANSWER)?;
    Ok(Answer {
        status: response.status,
        body,
    })
}

/// Why a request naming an object does not go on.
pub enum Denied {
    /// The engine's own answer (`404 No such container`), passed on.
    Engine(Answer),
    /// The object is not the job's: the rule, for a 403.
    NotOwned(String),
    /// The engine could not be asked.
    Failed(WireError),
}

fn labels_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a serde_json::Map<String, Value>> {
    v.pointer(pointer).and_then(Value::as_object)
}

fn inspect(engine: &Path, path: &str) -> Result<Value, Denied> {
    let answer = ask(engine, "GET", path, None).map_err(Denied::Failed)?;
    if answer.status != 200 {
        return Err(Denied::Engine(answer));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|_| Denied::Failed(WireError::BadHead("an inspect answer that is not JSON")))
}

/// Checks that `object` is the job's, and returns what the engine calls
/// it: a container's or network's full id (the request then names that,
/// so that a name or id prefix cannot come to mean another object between
/// the check and the request), an exec's id, a volume's name. A volume
/// that does not exist is created, labelled, when `create_volume` is set
/// (a container about to use it); otherwise the engine's 404 is the answer.
pub fn check(
    engine: &Path,
    facts: &JobFacts,
    object: &Object,
    create_volume: bool,
) -> Result<String, Denied> {
    let enc = wire::percent_encode;
    let resolved = |v: &Value, key: &str, given: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or(given)
            .to_string()
    };
    let (what, name, owned, id) = match object {
        Object::Container(id) => {
            let v = inspect(engine, &format!("/containers/{}/json", enc(id)))?;
            (
                "container",
                id,
                facts.owns(labels_at(&v, "/Config/Labels")),
                resolved(&v, "Id", id),
            )
        }
        Object::Exec(id) => {
            let v = inspect(engine, &format!("/exec/{}/json", enc(id)))?;
            let container = v
                .get("ContainerID")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            check(engine, facts, &Object::Container(container), false).map_err(|d| match d {
                Denied::NotOwned(_) => {
                    Denied::NotOwned(format!("exec {id} is not in a container of this job"))
                }
                other => other,
            })?;
            return Ok(resolved(&v, "ID", id));
        }
        Object::Network(id) => {
            let v = inspect(engine, &format!("/networks/{}", enc(id)))?;
            (
                "network",
                id,
                facts.owns(labels_at(&v, "/Labels")),
                resolved(&v, "Id", id),
            )
        }
        Object::Volume(name) => match inspect(engine, &format!("/volumes/{}", enc(name))) {
            Ok(v) => (
                "volume",
                name,
                facts.owns(labels_at(&v, "/Labels")),
                resolved(&v, "Name", name),
            ),
            Err(Denied::Engine(answer)) if answer.status == 404 && create_volume => {
                return create_labelled_volume(engine, facts, name);
            }
            Err(other) => return Err(other),
        },
    };
    if owned {
        Ok(id)
    } else {
        Err(Denied::NotOwned(format!(
            "{what} {name} was not created by this job"
        )))
    }
}

fn create_labelled_volume(engine: &Path, facts: &JobFacts, name: &str) -> Result<String, Denied> {
    let body = serde_json::json!({
        "Name": name,
        "Labels": { super::rules::JOB_LABEL: facts.mark },
    })
    .to_string();
    let answer =
        ask(engine, "POST", "/volumes/create", Some(body.as_bytes())).map_err(Denied::Failed)?;
    if answer.status != 201 && answer.status != 200 {
        return Err(Denied::Engine(answer));
    }
    // A volume of the same name made by another job in between is
    // returned as it is: it must carry this job's label.
    let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if facts.owns(labels_at(&v, "/Labels")) {
        Ok(name.to_string())
    } else {
        Err(Denied::NotOwned(format!(
            "volume {name} was not created by this job"
        )))
    }
}
