//! A TCP proxy on loopback that lets bytes from its clients through at a
//! crawl and the answers at full speed: an SFTP upload through it runs for
//! minutes, yet ssh's keep-alives are answered, so nothing times out. The
//! cache tests put it in front of the test's sshd to hold a transfer in
//! progress for as long as they need.
//!
//! It knows nothing of SSH: it copies bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the proxy looks at its stop flag and lets a slice through.
const TICK: Duration = Duration::from_millis(100);

pub struct CrawlProxy {
    port: u16,
    stopping: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl CrawlProxy {
    /// Forwards to 127.0.0.1:`target`, letting `per_tick` bytes a tick
    /// (100 ms) through from the client to the target.
    pub fn start(target: u16, per_tick: usize) -> CrawlProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("the proxy's address").port();
        let stopping = Arc::new(AtomicBool::new(false));
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (stopping, threads, streams) = (
                Arc::clone(&stopping),
                Arc::clone(&threads),
                Arc::clone(&streams),
            );
            thread::spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(TICK);
                            continue;
                        }
                        Err(_) => break,
                    };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let pairs = [
                        (client.try_clone(), server.try_clone(), per_tick),
                        (server.try_clone(), client.try_clone(), usize::MAX),
                    ];
                    let mut held = streams.lock().unwrap_or_else(|e| e.into_inner());
                    held.push(client);
                    held.push(server);
                    for (from, to, rate) in pairs {
                        let (Ok(from), Ok(to)) = (from, to) else {
                            continue;
                        };
                        let stopping = Arc::clone(&stopping);
                        let copier = thread::spawn(move || copy(from, to, rate, &stopping));
                        threads
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(copier);
                    }
                }
            })
        };
        CrawlProxy {
            port,
            stopping,
            threads,
            streams,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the proxy, as `SEMAPHORE_CACHE_URL` has it.
    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Copies `from` to `to`, at most `rate` bytes a tick, until either side
/// closes or the proxy stops.
fn copy(mut from: TcpStream, mut to: TcpStream, rate: usize, stopping: &AtomicBool) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; rate.min(64 * 1024)];
    while !stopping.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if rate != usize::MAX {
                    thread::sleep(TICK);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for CrawlProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for stream in self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for copier in threads {
            let _ = copier.join();
        }
    }
}
