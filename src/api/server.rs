//! The tiny_http side of the API: a fixed pool of worker threads that take
//! requests from the server (behind the HTTPS front), hand them to
//! the plain handlers of `routes`, and write the replies. tiny_http types stay
//! in this file. A panic in a handler becomes a 500, never a dead worker, and
//! every request gets one access line in the agent log.

use std::io::{self, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use tiny_http::{Header, Request, Response, StatusCode};

use crate::api::routes::{self, App, Body, Reply};
use crate::http::PEER_HEADER;
use crate::logging::escape_field;

pub fn start_workers(
    server: Arc<tiny_http::Server>,
    app: Arc<App>,
    workers: usize,
) -> Vec<JoinHandle<()>> {
    (0..workers)
        .map(|i| {
            let server = Arc::clone(&server);
            let app = Arc::clone(&app);
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    while let Ok(request) = server.recv() {
                        serve_one(&app, request);
                    }
                })
                .expect("cannot start an HTTP worker thread")
        })
        .collect()
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn serve_one(app: &App, mut request: Request) {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let authorization = header(&request, "Authorization").map(str::to_string);
    let client_name = header(&request, "X-Client-Name").map(str::to_string);
    let content_type = header(&request, "Content-Type").map(str::to_string);
    let peer = header(&request, PEER_HEADER).unwrap_or("-").to_string();
    let user_agent = header(&request, "User-Agent").unwrap_or("-").to_string();
    let body_len = request.body_length().map(|len| len as u64);

    let mut body = LazyBody {
        request: &mut request,
        started: false,
    };
    let reply = catch_unwind(AssertUnwindSafe(|| {
        routes::handle(
            app,
            routes::Req {
                method: &method,
                path,
                query,
                authorization: authorization.as_deref(),
                client_name: client_name.as_deref(),
                content_type: content_type.as_deref(),
                body_len,
                body: &mut body,
            },
        )
    }));
    // The rest of a body the handler began is drained in small pieces here:
    // tiny_http would otherwise allocate the whole remaining length at once.
    // A body the handler never touched is not read at all: the front stops
    // forwarding it when the response begins and then closes the connection.
    if body.started {
        let _ = io::copy(&mut body.take(u64::MAX), &mut io::sink());
    }
    let mut reply = match reply {
        Ok(reply) => reply,
        Err(_) => {
            log::error!("the handler of {method} {path} panicked");
            Reply {
                status: 500,
                content_type: Some("application/json"),
                location: None,
                body: Body::Bytes(br#"{"message":"internal error"}"#.to_vec()),
                after: None,
            }
        }
    };
    let status = reply.status;
    let after = reply.after.take();
    let mut headers = Vec::new();
    if let Some(ct) = reply.content_type {
        headers.extend(Header::from_bytes("Content-Type", ct).ok());
    }
    if let Some(location) = &reply.location {
        headers.extend(Header::from_bytes("Location", location.as_bytes()).ok());
    }
    let (reader, len): (Box<dyn Read + Send>, u64) = match reply.body {
        Body::Bytes(bytes) => {
            let len = bytes.len() as u64;
            (Box::new(io::Cursor::new(bytes)), len)
        }
        Body::Stream(reader, len) => (reader, len),
    };
    let response = Response::new(
        StatusCode(status),
        headers,
        reader,
        Some(len as usize),
        None,
    );
    let finish = move || {
        let written = request.respond(response);
        if written.is_ok() {
            if let Some(after) = after {
                after();
            }
        }
        // Everything a client chose is escaped: it must not be able to end
        // a quoted field or forge a line.
        log::info!(
            target: "access",
            "{} - - [{}] \"{} {} HTTP/1.1\" {status} {len} \"-\" \"{}\" {:.1}ms",
            escape_field(&peer),
            http_date(SystemTime::now()),
            escape_field(&method),
            escape_field(&url),
            escape_field(&user_agent),
            started.elapsed().as_secs_f64() * 1000.0
        );
    };
    // A large body is written by a thread of its own, so slow readers of big
    // logs never occupy the workers that answer everyone else.
    let slot = (len >= STREAM_THREAD_MIN_BYTES)
        .then(StreamSlot::take)
        .flatten();
    let Some(slot) = slot else {
        return finish();
    };
    // The work goes over a channel, so it is still ours if no thread starts.
    let (tx, rx) = crossbeam_channel::bounded::<Box<dyn FnOnce() + Send>>(1);
    let spawned = std::thread::Builder::new()
        .name("http-stream".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _slot = slot;
            if let Ok(finish) = rx.recv() {
                finish();
            }
        });
    match spawned {
        Ok(_) => {
            let _ = tx.send(Box::new(finish));
        }
        Err(_) => finish(),
    }
}

/// A request's body, read (and asked of the client, with `100 Continue`)
/// only when a handler first reads it.
struct LazyBody<'r> {
    request: &'r mut Request,
    started: bool,
}

impl Read for LazyBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.started = true;
        self.request.as_reader().read(buf)
    }
}

/// Bodies at least this large are streamed from a thread of their own.
const STREAM_THREAD_MIN_BYTES: u64 = 256 * 1024;
/// At most this many such threads at once; beyond, the worker streams.
const MAX_STREAM_THREADS: usize = 128;
static STREAM_THREADS: AtomicUsize = AtomicUsize::new(0);

/// A place among the streaming threads, given back on drop.
struct StreamSlot;

impl StreamSlot {
    fn take() -> Option<StreamSlot> {
        let mut n = STREAM_THREADS.load(Ordering::Relaxed);
        loop {
            if n >= MAX_STREAM_THREADS {
                return None;
            }
            match STREAM_THREADS.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(StreamSlot),
                Err(actual) => n = actual,
            }
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        STREAM_THREADS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `27/Nov/2026:17:00:00 +0000`, the combined log format's date.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{day:02}/{}/{year}:{h:02}:{m:02}:{s:02} +0000",
        MONTHS[(month - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_in_combined_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_799_847);
        assert_eq!(http_date(t), "27/Nov/2026:17:17:27 +0000");
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
    }
}
