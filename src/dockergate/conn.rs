//! One connection of a job to its gate: requests read one after the other
//! (keep-alive), each decided by the rules, the objects it names checked
//! with the engine, its body checked (small JSON) or streamed, and
//! forwarded on a fresh connection to the engine; the answer is streamed
//! back as it comes. An answer that takes the connection over (`101
//! Switching Protocols`, or a stream that ends only at the close: attach,
//! exec start, BuildKit's session) turns the rest of the connection into a
//! raw copy both ways, each direction ended on its own (the client's end of
//! input reaches the engine as a half close).
//!
//! What a client can make the gate hold is bounded: a head of `MAX_HEAD`,
//! a checked body of `MAX_JSON_BODY`; bodies in transit are never held
//! whole. A client silent between requests for `IDLE` is dropped; the
//! rest of the waits end when the job does (the teardown cuts both
//! sockets of every connection).

use std::io::{BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

use super::engine::{self, Denied};
use super::rules::{self, Body, Decision, Object};
use super::wire::{self, Framing, WireError};
use super::Shared;

/// The most of a container, network, volume or exec config the gate reads
/// to check it. A container config is a few kilobytes.
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;
/// How long a refused request's body may take to arrive.
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// How long a connection may wait for its next request.
const IDLE: Duration = Duration::from_secs(600);
/// The buffers of each direction.
const BUFFER: usize = 128 * 1024;

/// How a request ended for its connection.
enum Next {
    /// Ready for the next request.
    KeepAlive,
    /// The connection is done (answered and closed, or taken over).
    Close,
}

/// Serves one client connection until it closes or the gate does.
pub(super) fn serve(client: UnixStream, shared: &Shared) {
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(BUFFER, read_half);
    loop {
        let _ = client.set_read_timeout(Some(IDLE));
        let head = match wire::read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(WireError::HeadTooLarge) => {
                answer(
                    &Peer {
                        stream: &client,
                        head: false,
                    },
                    431,
                    "request head too large",
                );
                return;
            }
            Err(WireError::Io(_)) => return,
            Err(e) => {
                answer(
                    &Peer {
                        stream: &client,
                        head: false,
                    },
                    400,
                    &format!("bad request: {e}"),
                );
                return;
            }
        };
        let _ = client.set_read_timeout(None);
        match exchange(&head, &mut reader, &client, shared) {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) => return,
            Err(e) => {
                log::debug!(
                    "docker gate of {}: connection ended: {e}",
                    shared.facts.mark
                );
                return;
            }
        }
    }
}

/// The client of a request, as its answers need it.
struct Peer<'a> {
    stream: &'a UnixStream,
    /// A HEAD request: its answer has no body.
    head: bool,
}

/// Writes a whole error answer and marks the connection to be closed (its
/// request body, if any, is not read).
fn answer(client: &Peer, status: u16, message: &str) {
    let mut bytes = wire::json_error(status, message, true);
    if client.head {
        if let Some(end) = memchr::memmem::find(&bytes, b"\r\n\r\n") {
            bytes.truncate(end + 4);
        }
    }
    let mut out = client.stream;
    let _ = out.write_all(&bytes);
}

fn refuse(client: &Peer, rule: &str) -> Next {
    answer(client, 403, &format!("agent docker gate: {rule}"));
    Next::Close
}

/// Answers a denial of an object check.
fn denied(client: &Peer, denial: Denied, mark: &str) -> Next {
    match denial {
        Denied::NotOwned(rule) => refuse(client, &rule),
        Denied::Engine(engine_answer) => {
            let message = serde_json::from_slice::<Value>(&engine_answer.body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&engine_answer.body).into_owned());
            answer(client, engine_answer.status, &message);
            Next::Close
        }
        Denied::Failed(e) => {
            log::warn!("docker gate of {mark}: cannot ask the engine: {e}");
            answer(
                client,
                502,
                &format!("agent docker gate: cannot ask the engine: {e}"),
            );
            Next::Close
        }
    }
}

fn exchange(
    head: &[u8],
    reader: &mut BufReader<UnixStream>,
    stream: &UnixStream,
    shared: &Shared,
) -> Result<Next, WireError> {
    let facts = &shared.facts;
    let mut request = match wire::parse_request(head) {
        Ok(r) => r,
        Err(e) => {
            answer(
                &Peer {
                    stream,
                    head: false,
                },
                400,
                &format!("bad request: {e}"),
            );
            return Ok(Next::Close);
        }
    };
    let peer = Peer {
        stream,
        head: request.method == "HEAD",
    };
    let client = &peer;
    let framing = match request.framing() {
        Ok(f) => f,
        Err(e) => {
            answer(client, 400, &format!("bad request: {e}"));
            return Ok(Next::Close);
        }
    };
    let plan = match rules::route(&request.method, request.path(), request.query()) {
        Decision::Refuse(rule) => {
            drain(framing, reader, stream);
            return Ok(refuse(client, &rule));
        }
        Decision::Forward(plan) => plan,
    };
    for (i, object) in plan.objects.iter().enumerate() {
        match engine::check(&shared.engine, facts, object, false) {
            Ok(id) if i == 0 && plan.in_path => {
                let path = rules::with_object_id(request.path(), &id);
                request.target = match request.target.split_once('?') {
                    Some((_, query)) => format!("{path}?{query}"),
                    None => path,
                };
            }
            Ok(_) => {}
            Err(d) => {
                drain(framing, reader, stream);
                return Ok(denied(client, d, &facts.mark));
            }
        }
    }
    if plan.label_filter {
        let Some(query) = wire::with_label_filter(request.query(), &facts.label_filter()) else {
            drain(framing, reader, stream);
            return Ok(refuse(client, "a filters parameter that cannot be read"));
        };
        request.target = format!("{}?{query}", request.path());
    }
    // The gate answers `Expect: 100-continue` itself: it sends the body on
    // without waiting for the engine's go-ahead.
    if request
        .headers
        .get("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        request.headers.remove("expect");
        let mut out = stream;
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let checked_body = if plan.body == Body::Stream {
        None
    } else {
        let bytes = match wire::read_body(framing, reader, MAX_JSON_BODY) {
            Ok(b) => b,
            Err(WireError::BodyTooLarge(limit)) => {
                answer(
                    client,
                    413,
                    &format!("agent docker gate: a config larger than {limit} bytes"),
                );
                return Ok(Next::Close);
            }
            Err(e) => return Err(e),
        };
        match check_body(plan.body, &bytes, shared) {
            Ok(body) => Some(body),
            Err(reply) => return Ok(reply(client)),
        }
    };
    if let Some(body) = &checked_body {
        request.headers.remove("transfer-encoding");
        request
            .headers
            .set("Content-Length", body.len().to_string());
    }
    // A request without a body may go on a connection an earlier request
    // left open (saving a connect and the engine's new connection); if
    // that one turns out closed, a fresh one is tried.
    let reusable = checked_body.is_none()
        && framing == Framing::Length(0)
        && (request.method == "GET" || request.method == "HEAD")
        && request.headers.get("upgrade").is_none();
    let mut pooled = if reusable { shared.take_idle() } else { None };
    let (upstream, mut up_reader, response_head, sent) = loop {
        let from_pool = pooled.is_some();
        let upstream = match pooled.take() {
            Some(s) => s,
            None => match UnixStream::connect(&shared.engine) {
                Ok(s) => s,
                Err(e) => {
                    answer(
                        client,
                        502,
                        &format!("agent docker gate: cannot reach the engine: {e}"),
                    );
                    return Ok(Next::Close);
                }
            },
        };
        let mut up_writer = &upstream;
        let wrote = up_writer.write_all(&request.to_bytes());
        if wrote.is_err() && from_pool {
            continue;
        }
        wrote?;
        // A body the engine stops reading (it answered early, with an error)
        // is not an error of the exchange: its answer is still passed on.
        let sent = match &checked_body {
            Some(body) => up_writer.write_all(body).map_err(WireError::Io),
            None => wire::copy_body(framing, reader, &mut up_writer),
        };
        let mut up_reader = BufReader::with_capacity(BUFFER, upstream.try_clone()?);
        match wire::read_head(&mut up_reader) {
            Ok(Some(head)) => break (upstream, up_reader, head, sent),
            Ok(None) | Err(WireError::Io(_)) if from_pool => continue,
            Ok(None) => {
                sent?;
                answer(
                    client,
                    502,
                    "agent docker gate: the engine closed without an answer",
                );
                return Ok(Next::Close);
            }
            Err(e) => return Err(e),
        }
    };
    let Some(_cut) = shared.watch(&upstream) else {
        return Ok(Next::Close);
    };
    let response = wire::parse_response(&response_head)?;
    let response_framing = response.framing(request.method == "HEAD")?;
    let mut out = stream;
    out.write_all(&response_head)?;
    if response.status == 101 || response_framing == Framing::UntilClose {
        splice(reader, stream, up_reader, &upstream);
        return Ok(Next::Close);
    }
    wire::copy_body(response_framing, &mut up_reader, &mut out)?;
    let engine_closes = response.headers.has_token("connection", "close");
    if sent.is_ok() && !engine_closes && up_reader.buffer().is_empty() {
        drop(up_reader);
        shared.put_idle(upstream);
    }
    let closing =
        sent.is_err() || engine_closes || request.headers.has_token("connection", "close");
    Ok(if closing {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// Reads and drops the body of a request about to be refused (at most
/// `MAX_JSON_BODY`, for at most `DRAIN_TIME`): a client still sending it
/// when the connection closes gets a broken pipe instead of the answer.
fn drain(framing: Framing, reader: &mut BufReader<UnixStream>, stream: &UnixStream) {
    if framing == Framing::Length(0) {
        return;
    }
    let _ = stream.set_read_timeout(Some(DRAIN_TIME));
    let _ = wire::read_body(framing, reader, MAX_JSON_BODY);
    let _ = stream.set_read_timeout(None);
}

/// The reply to a body the rules refuse.
type Reply = Box<dyn FnOnce(&Peer) -> Next>;

/// Checks (and labels) a create or connect body; the body to forward.
fn check_body(kind: Body, bytes: &[u8], shared: &Shared) -> Result<Vec<u8>, Reply> {
    let facts = &shared.facts;
    let mut value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => Value::Object(Default::default()),
        Err(e) => {
            let message = format!("agent docker gate: a config that is not JSON: {e}");
            return Err(Box::new(move |c| {
                answer(c, 400, &message);
                Next::Close
            }));
        }
    };
    let rule = |r: String| -> Reply { Box::new(move |c| refuse(c, &r)) };
    let objects: Vec<(Object, bool)> = match kind {
        Body::Stream => Vec::new(),
        Body::ContainerCreate => rules::container_create(&mut value, facts)
            .map_err(rule)?
            .into_iter()
            .map(|o| (o, true))
            .collect(),
        Body::ExecCreate => {
            rules::exec_create(&value).map_err(rule)?;
            Vec::new()
        }
        Body::NetworkCreate => {
            rules::network_create(&mut value, facts).map_err(rule)?;
            Vec::new()
        }
        Body::NetworkConnect => rules::network_connect(&value)
            .map_err(rule)?
            .into_iter()
            .map(|o| (o, false))
            .collect(),
        Body::VolumeCreate => {
            let name = rules::volume_create(&mut value, facts).map_err(rule)?;
            // An existing volume of this name must be the job's; a missing
            // one is made by the request itself, labelled.
            if let Some(name) = name {
                match engine::check(&shared.engine, facts, &Object::Volume(name), false) {
                    Ok(_) => {}
                    Err(Denied::Engine(a)) if a.status == 404 => {}
                    Err(d) => {
                        let mark = facts.mark.clone();
                        return Err(Box::new(move |c| denied(c, d, &mark)));
                    }
                }
            }
            Vec::new()
        }
    };
    for (object, create_volume) in objects {
        if let Err(d) = engine::check(&shared.engine, facts, &object, create_volume) {
            let mark = facts.mark.clone();
            return Err(Box::new(move |c| denied(c, d, &mark)));
        }
    }
    serde_json::to_vec(&value).map_err(|e| -> Reply {
        let message = format!("agent docker gate: {e}");
        Box::new(move |c| {
            answer(c, 500, &message);
            Next::Close
        })
    })
}

/// Copies bytes both ways until each side has ended: what the client
/// sends goes to the engine on a thread of its own, what the engine sends
/// comes back on this one. The end of either side's input is passed on as
/// a half close; once the engine has ended, the client's side is ended
/// too (nothing it sends can go anywhere).
fn splice(
    client_reader: &mut BufReader<UnixStream>,
    client: &UnixStream,
    mut up_reader: BufReader<UnixStream>,
    upstream: &UnixStream,
) {
    let early: Vec<u8> = client_reader.buffer().to_vec();
    let (Ok(mut from_client), Ok(mut to_engine)) =
        (client_reader.get_ref().try_clone(), upstream.try_clone())
    else {
        return;
    };
    let uplink = std::thread::Builder::new()
        .name("docker-gate-up".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = vec![0u8; BUFFER];
            let mut copied = to_engine.write_all(&early);
            while copied.is_ok() {
                match from_client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => copied = to_engine.write_all(&buf[..n]),
                }
            }
            let _ = to_engine.shutdown(Shutdown::Write);
        });
    let mut out = client;
    let _ = wire::copy_body(Framing::UntilClose, &mut up_reader, &mut out);
    let _ = client.shutdown(Shutdown::Write);
    // The uplink may wait on a client that sends nothing more.
    let _ = client.shutdown(Shutdown::Read);
    if let Ok(uplink) = uplink {
        let _ = uplink.join();
    }
}
