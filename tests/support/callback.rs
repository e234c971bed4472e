//! `CallbackServer` (docs/protocol.md §7.1): a small real HTTP server on
//! 127.0.0.1 that records the agent's callbacks, can fail the first ones,
//! and lets a test wait for them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Between two looks at the requests received.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One request the callback server received.
#[derive(Clone, Debug)]
pub struct CallbackRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request had been read completely.
    pub at: Instant,
    /// The status the server answered.
    pub status: u16,
    /// What the hook returned, if there is one.
    pub note: Option<String>,
}

impl CallbackRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type Hook = Box<dyn Fn(&CallbackRequest) -> Option<String> + Send + Sync>;

struct CallbackShared {
    requests: Mutex<Vec<CallbackRequest>>,
    changed: Condvar,
    stopping: AtomicBool,
    fail_first: usize,
    hook: Option<Hook>,
}

/// How the callback server answers.
#[derive(Default)]
pub struct CallbackServerBuilder {
    fail_first: usize,
    hook: Option<Hook>,
}

impl CallbackServerBuilder {
    /// Answer `500` to the first `k` requests (`usize::MAX`: to all).
    pub fn fail_first(mut self, k: usize) -> Self {
        self.fail_first = k;
        self
    }

    /// Called with every request before it is answered; what it returns is
    /// kept as the request's `note`.
    pub fn on_request(
        mut self,
        hook: impl Fn(&CallbackRequest) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    pub fn start(self) -> CallbackServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the callback server");
        let port = listener.local_addr().expect("the callback address").port();
        let shared = Arc::new(CallbackShared {
            requests: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            fail_first: self.fail_first,
            hook: self.hook,
        });
        let thread = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve_callback(&shared, stream);
                    }
                }
            })
        };
        CallbackServer {
            port,
            shared,
            thread: Some(thread),
        }
    }
}

/// A plain-HTTP server on 127.0.0.1 that records every request. One request
/// per connection, answered with `Connection: close`.
pub struct CallbackServer {
    port: u16,
    shared: Arc<CallbackShared>,
    thread: Option<JoinHandle<()>>,
}

impl CallbackServer {
    pub fn builder() -> CallbackServerBuilder {
        CallbackServerBuilder::default()
    }

    /// A server that answers `200` to everything.
    pub fn start() -> CallbackServer {
        CallbackServerBuilder::default().start()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<CallbackRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` requests have arrived; returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<CallbackRequest> {
        let deadline = Instant::now() + timeout;
        let mut requests = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while requests.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{n} callback requests expected within {timeout:?}, got {}: {:#?}",
                requests.len(),
                *requests
            );
            requests = self
                .shared
                .changed
                .wait_timeout(requests, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        requests.clone()
    }

    /// Waits until `n` requests to `path` have arrived; returns those.
    pub fn wait_for_path(&self, path: &str, n: usize, timeout: Duration) -> Vec<CallbackRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let matching: Vec<CallbackRequest> = self
                .requests()
                .into_iter()
                .filter(|r| r.path == path)
                .collect();
            if matching.len() >= n {
                return matching;
            }
            assert!(
                Instant::now() < deadline,
                "{n} requests to {path} expected within {timeout:?}; all requests: {:#?}",
                self.requests()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for CallbackServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_callback(shared: &CallbackShared, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
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
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut request = CallbackRequest {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
        status: 200,
        note: None,
    };
    let n_before = shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    if n_before < shared.fail_first {
        request.status = 500;
    }
    if let Some(hook) = &shared.hook {
        request.note = hook(&request);
    }
    let reason = if request.status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let answer = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        request.status
    );
    {
        let mut requests = shared.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.push(request);
        shared.changed.notify_all();
    }
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}
