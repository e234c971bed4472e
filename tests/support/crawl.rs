//! A TCP proxy on loopback that shapes what it copies (`Shaping`). At a
//! crawl, it lets bytes from its clients through slowly and the answers at
//! full speed: an SFTP upload through it runs for minutes, yet ssh's
//! keep-alives are answered, so nothing times out; the cache tests put it
//! in front of the test's sshd to hold a transfer in progress for as long
//! as they need. It can also cut the first connection that carries more
//! than so many bytes to its client, and rewrite what clients send (the S3
//! tests break a download, and hide its Range header from the server).
//!
//! It knows nothing of SSH or HTTP: it copies bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the proxy looks at its stop flag and lets a slice through.
const TICK: Duration = Duration::from_millis(100);

/// What the proxy does to the bytes besides copying them.
#[derive(Clone, Copy, Default)]
pub struct Shaping {
    /// At most this many bytes a tick (100 ms) from the client to the
    /// target; None: full speed.
    pub upload_per_tick: Option<usize>,
    /// Applied to each piece the client sends before it goes on (it must
    /// keep its length).
    pub rewrite_upload: Option<fn(&mut [u8])>,
    /// The first connection to carry more than this many bytes to its
    /// client is cut there (only the first).
    pub cut_download_after: Option<u64>,
}

/// One direction of a connection, as `Shaping` says.
#[derive(Clone, Copy)]
struct Direction {
    rate: Option<usize>,
    rewrite: Option<fn(&mut [u8])>,
    cut_after: Option<u64>,
}

pub struct CrawlProxy {
    port: u16,
    cuts: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl CrawlProxy {
    /// Forwards to 127.0.0.1:`target`, letting `per_tick` bytes a tick
    /// (100 ms) through from the client to the target.
    pub fn start(target: u16, per_tick: usize) -> CrawlProxy {
        CrawlProxy::shaped(
            target,
            Shaping {
                upload_per_tick: Some(per_tick),
                ..Shaping::default()
            },
        )
    }

    /// Forwards to 127.0.0.1:`target` as `shaping` says.
    pub fn shaped(target: u16, shaping: Shaping) -> CrawlProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("the proxy's address").port();
        let stopping = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (stopping, cuts, threads, streams) = (
                Arc::clone(&stopping),
                Arc::clone(&cuts),
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
                    let upload = Direction {
                        rate: shaping.upload_per_tick,
                        rewrite: shaping.rewrite_upload,
                        cut_after: None,
                    };
                    let download = Direction {
                        rate: None,
                        rewrite: None,
                        cut_after: shaping.cut_download_after,
                    };
                    let pairs = [
                        (client.try_clone(), server.try_clone(), upload),
                        (server.try_clone(), client.try_clone(), download),
                    ];
                    let mut held = streams.lock().unwrap_or_else(|e| e.into_inner());
                    held.push(client);
                    held.push(server);
                    for (from, to, direction) in pairs {
                        let (Ok(from), Ok(to)) = (from, to) else {
                            continue;
                        };
                        let (stopping, cuts) = (Arc::clone(&stopping), Arc::clone(&cuts));
                        let copier =
                            thread::spawn(move || copy(from, to, direction, &stopping, &cuts));
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
            cuts,
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

    /// How many connections `Shaping::cut_download_after` cut (0 or 1).
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` as `direction` says, until either side closes,
/// the proxy stops or the connection is cut.
fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    direction: Direction,
    stopping: &AtomicBool,
    cuts: &AtomicUsize,
) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; direction.rate.unwrap_or(usize::MAX).min(64 * 1024)];
    let mut copied = 0u64;
    while !stopping.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(rewrite) = direction.rewrite {
                    rewrite(&mut buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                copied += n as u64;
                if direction.cut_after.is_some_and(|limit| copied > limit)
                    && cuts
                        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                if direction.rate.is_some() {
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
