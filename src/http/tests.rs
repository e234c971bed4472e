//! End-to-end tests of the front: a real [`Front`] with `tiny_http` behind
//! it, and test handlers (see [`Harness`]). The tests themselves are in
//! `tests/exchanges.rs` (requests forwarded and answered) and
//! `tests/defences.rs` (limits, deadlines, refusals, containment); the unit
//! tests of each part are in its own file.

mod defences;
mod exchanges;

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::framing::{Expect, ResponseFramer};
use super::request_head::find_head_end;
use super::PEER_HEADER;
use super::{load_tls_config, self_signed, Front, FrontConfig};

/// A request head that makes the connection thread panic (see `on_head`).
pub(super) const PANIC_REQUEST: &[u8] = b"GET /__front_test_panic ";

/// Tests that measure latency or memory, or move a lot of data, run one
/// at a time so they do not disturb each other on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn test_config() -> FrontConfig {
    FrontConfig {
        max_request_bytes: 1024 * 1024,
        max_head_bytes: 8 * 1024,
        head_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(1),
        body_min_rate: 0,
        write_stall_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(1),
        max_connections: 256,
        // Tests of other things open many connections from 127.0.0.1 at
        // once; the admission tests set their own limit.
        max_pending_per_address: 256,
        max_per_address: 256,
    }
}

/// Byte `i` of every test download.
fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Produces `len` pattern bytes and counts how many were taken.
struct Pattern {
    offset: u64,
    len: u64,
    produced: Arc<AtomicU64>,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.len - self.offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            *byte = pattern_byte(self.offset + i as u64);
        }
        self.offset += n as u64;
        self.produced.store(self.offset, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reported by the handler when a `/stream` response ended (completely or
/// because the front closed the socket under it).
#[derive(Debug)]
struct StreamDone {
    produced: u64,
    requested: u64,
}

/// A front with a self-signed certificate and four handler threads:
/// `/hello`, `/peer` (the `X-Agent-Peer` values), `/echo` (the body back,
/// the peer in `X-Seen-Peer`) and `/stream?bytes=N` (N pattern bytes of
/// unknown length, i.e. chunked).
struct Harness {
    front: Front,
    addr: SocketAddr,
    cert_der: CertificateDer<'static>,
    stop: Arc<AtomicBool>,
    handlers: Vec<JoinHandle<()>>,
    streams: mpsc::Receiver<StreamDone>,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.front.stop();
        self.stop.store(true, Ordering::Relaxed);
        for handler in self.handlers.drain(..) {
            let _ = handler.join();
        }
    }
}

fn harness(cfg: FrontConfig) -> Harness {
    let (cert_pem, key_pem) = self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let tls = load_tls_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (front, server) = Front::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(tls),
        &dir.path().join("sock"),
        cfg,
    )
    .unwrap();
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let (stream_tx, streams) = mpsc::channel();
    let handlers = (0..4)
        .map(|_| {
            let server = Arc::clone(&server);
            let stop = Arc::clone(&stop);
            let stream_tx = stream_tx.clone();
            thread::spawn(move || handle_requests(&server, &stop, &stream_tx))
        })
        .collect();
    Harness {
        addr: front.local_addr(),
        front,
        cert_der,
        stop,
        handlers,
        streams,
        _dir: dir,
    }
}

fn handle_requests(
    server: &tiny_http::Server,
    stop: &AtomicBool,
    streams: &mpsc::Sender<StreamDone>,
) {
    use tiny_http::{Header, Response, StatusCode};
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        let peers: Vec<String> = request
            .headers()
            .iter()
            .filter(|header| header.field.equiv(PEER_HEADER))
            .map(|header| header.value.to_string())
            .collect();
        let peers = peers.join(",");
        let url = request.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let bytes: u64 = query
            .strip_prefix("bytes=")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let _ = match path {
            "/hello" => request.respond(Response::from_string("hello")),
            "/peer" => request.respond(Response::from_string(peers)),
            "/echo" => {
                let mut body = Vec::new();
                let _ = request.as_reader().read_to_end(&mut body);
                let seen = Header::from_bytes(&b"X-Seen-Peer"[..], peers.as_bytes()).unwrap();
                request.respond(Response::from_data(body).with_header(seen))
            }
            "/stream" => {
                let produced = Arc::new(AtomicU64::new(0));
                let reader = Pattern {
                    offset: 0,
                    len: bytes,
                    produced: Arc::clone(&produced),
                };
                let result =
                    request.respond(Response::new(StatusCode(200), vec![], reader, None, None));
                let _ = streams.send(StreamDone {
                    produced: produced.load(Ordering::Relaxed),
                    requested: bytes,
                });
                result
            }
            _ => request.respond(Response::empty(404)),
        };
    }
}

fn client(harness: &Harness) -> ureq::Agent {
    let cert = ureq::tls::Certificate::from_der(harness.cert_der.as_ref()).to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

fn url(harness: &Harness, path: &str) -> String {
    format!("https://localhost:{}{path}", harness.addr.port())
}

fn get_text(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

type RawTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client with no HTTP on top, for what ureq would not send.
fn raw_client(harness: &Harness) -> RawTls {
    try_raw_client(harness).unwrap()
}

fn try_raw_client(harness: &Harness) -> io::Result<RawTls> {
    try_raw_tls(harness.addr, &harness.cert_der)
}

fn try_raw_tls(addr: SocketAddr, cert_der: &CertificateDer<'static>) -> io::Result<RawTls> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

fn closed_by_peer(result: &io::Result<usize>) -> bool {
    match result {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => !matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        ),
    }
}

/// Everything the server sends until it closes (bounded by the socket's
/// read timeout).
fn read_until_close(stream: &mut RawTls) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let result = stream.read(&mut buf);
        if closed_by_peer(&result) {
            return received;
        }
        match result {
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) => panic!("no close within the read timeout: {err}"),
        }
    }
}

/// Sends `request` on a fresh connection and returns the status and
/// JSON message of the front's answer, after which it must close.
fn exchange(harness: &Harness, request: &[u8]) -> (u16, String) {
    let mut stream = raw_client(harness);
    stream.write_all(request).unwrap();
    stream.flush().unwrap();
    let answer = read_until_close(&mut stream);
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    (status, json["message"].as_str().unwrap().to_string())
}

/// Reads one response with a Content-Length body.
fn read_response<R: BufRead>(reader: &mut R) -> (u16, Vec<u8>) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line[9..12].parse().unwrap();
    let mut content_length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).unwrap();
    (status, body)
}

/// Polls `condition` every 10 ms for at most `limit`.
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= give_up {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn vm_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Asserts that a fresh client gets `/hello` within 100 ms.
fn assert_served_quickly(harness: &Harness) {
    let agent = client(harness);
    let started = Instant::now();
    let (status, body) = get_text(&agent, &url(harness, "/hello"));
    let elapsed = started.elapsed();
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert!(elapsed < Duration::from_millis(100), "took {elapsed:?}");
}
