//! The public TCP listener: [`Front`] binds it and the private Unix socket
//! `tiny_http` listens on, admits client connections, and gives each a
//! thread that runs [`conn::serve`]. Stopping wakes every thread through one
//! socket pair.
//!
//! # Admission
//!
//! A connection is *pending* from its accept until the front has forwarded
//! its first request head (TLS handshake and first head included); then it
//! is *serving*. Pending connections cost a thread and a slot but prove
//! nothing, so one peer must not be able to hold the slots with them:
//!
//! - an address has at most `max_pending_per_address` pending connections:
//!   its next one makes its oldest pending one close;
//! - an address has at most `max_per_address` connections in all: beyond,
//!   its oldest pending one closes, or if it has none the new one does;
//! - at `max_connections`, the oldest pending connection of any address
//!   closes to admit the new one; only when every slot is serving is the
//!   new connection closed at once.
//!
//! A connection to be dropped is shut down (`shutdown(2)` on its socket),
//! which wakes its thread; the thread then ends as for a client that left.
//! Serving connections are never dropped for a newcomer: they have a request
//! in flight or are keep-alive clients, and they close on their own deadlines.

use std::fs;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::admission::{Admitted, FrontConfig, Registry, Shared};
use super::conn;
use super::FrontError;
use crate::process::sys;

/// Stack of a connection thread. The deepest path is a rustls handshake with
/// ring, which needs a few tens of KiB; only touched pages cost memory.
const CONN_STACK_BYTES: usize = 256 * 1024;
/// Stack of the accept thread, which only accepts and spawns.
const ACCEPT_STACK_BYTES: usize = 128 * 1024;
/// Accept queue length asked of the kernel.
const LISTEN_BACKLOG: i32 = 1024;
/// How long [`Front::stop`] waits for connection threads to notice the stop.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// At most one "connection limit reached" warning per this period.
const CAP_WARN_PERIOD: Duration = Duration::from_secs(10);

/// The running front: an accept thread plus one thread per open connection.
/// Dropping it stops both.
pub(crate) struct Front {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    /// Shutting this down makes `Shared::stop_rx` readable, which wakes every
    /// thread blocked in `poll` at once.
    stop_tx: Option<UnixStream>,
    acceptor: Option<JoinHandle<()>>,
}

/// Makes socket names unique when one process starts several fronts (tests).
static SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

impl Front {
    /// Binds `addr` (port 0 allowed) and a private Unix socket inside
    /// `socket_dir` (created with mode 0700 if missing; refused if others can
    /// enter it), and returns the front plus the `tiny_http::Server` that
    /// listens on that socket.
    pub(crate) fn start(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        socket_dir: &Path,
        cfg: FrontConfig,
    ) -> Result<(Front, tiny_http::Server), FrontError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| FrontError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| FrontError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| FrontError::Bind { addr, source })?;
        // std listens with a backlog of 128: a burst of connections beyond
        // that, while the accept thread waits for a CPU, has its SYNs dropped
        // and retried only a second later. Listening again only resizes the
        // queue (the kernel caps it at net.core.somaxconn).
        sys::set_listen_backlog(listener.as_raw_fd(), LISTEN_BACKLOG);

        prepare_socket_dir(socket_dir)?;
        let socket_path = socket_dir.join(format!(
            "http-{}-{}.sock",
            std::process::id(),
            SOCKET_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        // A file of this name can only be left over from a dead process that
        // had our pid.
        match fs::remove_file(&socket_path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FrontError::UnixBind {
                    path: socket_path,
                    source,
                })
            }
        }
        let unix_listener =
            UnixListener::bind(&socket_path).map_err(|source| FrontError::UnixBind {
                path: socket_path.clone(),
                source,
            })?;
        // The directory already keeps others out; this is belt and braces.
        fs::set_permissions(&socket_path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            FrontError::UnixBind {
                path: socket_path.clone(),
                source,
            }
        })?;
        let server = tiny_http::Server::from_listener(unix_listener, None)
            .map_err(|source| FrontError::Upstream { source })?;

        let (stop_tx, stop_rx) = UnixStream::pair().map_err(|source| FrontError::Spawn {
            what: "front accept",
            source,
        })?;
        let shared = Arc::new(Shared {
            cfg,
            tls,
            socket_path,
            stopping: AtomicBool::new(false),
            stop_rx,
            registry: Mutex::new(Registry::default()),
            all_closed: Condvar::new(),
            upstreams: AtomicUsize::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("front-accept".to_string())
                .stack_size(ACCEPT_STACK_BYTES)
                .spawn(move || accept_loop(listener, &shared))
                .map_err(|source| FrontError::Spawn {
                    what: "front accept",
                    source,
                })?
        };
        log::debug!(
            "front listening on {local_addr}, forwarding to {}",
            shared.socket_path.display()
        );
        let front = Front {
            local_addr,
            shared,
            stop_tx: Some(stop_tx),
            acceptor: Some(acceptor),
        };
        Ok((front, server))
    }

    /// The bound public address (with the real port when 0 was asked for).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `tiny_http` listens.
    #[cfg(test)]
    pub(super) fn socket_path(&self) -> &Path {
        &self.shared.socket_path
    }

    /// Client connections currently open (accepted and not yet closed).
    #[cfg(test)]
    pub(super) fn open_connections(&self) -> usize {
        self.shared.registry().threads
    }

    /// Connections to `tiny_http` currently open.
    #[cfg(test)]
    pub(super) fn open_upstreams(&self) -> usize {
        self.shared.upstreams.load(Ordering::Acquire)
    }

    /// Stops accepting, closes every connection, and waits (boundedly) for
    /// the connection threads to end. Idempotent.
    pub(crate) fn stop(&mut self) {
        let Some(stop_tx) = self.stop_tx.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        let _ = stop_tx.shutdown(Shutdown::Both);
        drop(stop_tx);
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.join().is_err() {
                log::error!("front accept thread panicked");
            }
        }
        let give_up = Instant::now() + STOP_WAIT;
        let mut registry = self.shared.registry();
        while registry.threads > 0 {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "front stopped with {} connection(s) still closing",
                    registry.threads
                );
                break;
            }
            registry = self
                .shared
                .all_closed
                .wait_timeout(registry, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates `dir` (mode 0700) if needed and checks that only we can use it:
/// whoever can enter it can talk plain HTTP to `tiny_http`, bypassing TLS and
/// every limit here.
fn prepare_socket_dir(dir: &Path) -> Result<(), FrontError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| FrontError::SocketDir {
            path: dir.to_path_buf(),
            source,
        })?;
    let meta = fs::symlink_metadata(dir).map_err(|source| FrontError::SocketDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let insecure = |reason| FrontError::InsecureSocketDir {
        path: dir.to_path_buf(),
        reason,
    };
    if !meta.file_type().is_dir() {
        return Err(insecure("it is not a directory (or it is a symbolic link)"));
    }
    let euid = sys::effective_uid();
    if meta.uid() != euid {
        return Err(insecure("it belongs to another user"));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(insecure(
            "other users have access to it (it must be mode 0700)",
        ));
    }
    Ok(())
}

/// Rate-limits a warning about connections closed by admission.
struct CapWarning {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl CapWarning {
    fn new(what: &'static str) -> CapWarning {
        CapWarning {
            what,
            last: None,
            suppressed: 0,
        }
    }

    fn note(&mut self, limit: usize) {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < CAP_WARN_PERIOD => self.suppressed += 1,
            _ => {
                log::warn!(
                    "{} (limit {limit}); {} more since the last warning",
                    self.what,
                    self.suppressed
                );
                self.last = Some(now);
                self.suppressed = 0;
            }
        }
    }
}

/// The warnings of admission, one per kind.
struct CapWarnings {
    refused: CapWarning,
    dropped: CapWarning,
    per_address: CapWarning,
    address_full: CapWarning,
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    let mut cap_warning = CapWarnings {
        refused: CapWarning::new("every connection is serving; closing new connections"),
        dropped: CapWarning::new(
            "connection limit reached; dropping the oldest pending connection",
        ),
        per_address: CapWarning::new(
            "an address has too many pending connections; dropping its oldest",
        ),
        address_full: CapWarning::new(
            "an address has as many connections as it may, all serving; closing its new ones",
        ),
    };
    loop {
        let mut fds = [
            sys::pollfd(listener.as_raw_fd(), sys::POLLIN),
            sys::pollfd(shared.stop_rx.as_raw_fd(), sys::POLLIN),
        ];
        if let Err(err) = sys::poll(&mut fds, None) {
            log::error!("front: poll on the listener failed: {err}");
            thread::sleep(Duration::from_millis(100));
        }
        if shared.is_stopping() {
            return;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => admit(shared, stream, peer, &mut cap_warning),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Err(err) => {
                    // Typically EMFILE: the pending connection stays queued,
                    // so back off instead of spinning on a readable listener.
                    log::warn!("front: accept failed: {err}");
                    thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
}

/// Holds a connection's place in the registry; released when the connection
/// thread ends, however it ends (including by panic).
struct Slot {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut registry = self.shared.registry();
        registry.conns.remove(&self.id);
        registry.threads = registry.threads.saturating_sub(1);
        if registry.threads == 0 {
            self.shared.all_closed.notify_all();
        }
    }
}

fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, warnings: &mut CapWarnings) {
    let cfg = &shared.cfg;
    let conn = Arc::new(Admitted {
        tcp: stream,
        serving: AtomicBool::new(false),
    });
    let id = {
        let mut registry = shared.registry();
        if registry.pending_of(peer.ip()) >= cfg.max_pending_per_address {
            if let Some(oldest) = registry.oldest_pending(Some(peer.ip())) {
                registry.drop_connection(oldest);
                warnings.per_address.note(cfg.max_pending_per_address);
            }
        }
        if registry.count_of(peer.ip()) >= cfg.max_per_address {
            match registry.oldest_pending(Some(peer.ip())) {
                Some(oldest) => registry.drop_connection(oldest),
                None => {
                    drop(registry);
                    drop(conn);
                    warnings.address_full.note(cfg.max_per_address);
                    return;
                }
            }
        }
        if registry.conns.len() >= cfg.max_connections {
            match registry.oldest_pending(None) {
                Some(oldest) => {
                    registry.drop_connection(oldest);
                    warnings.dropped.note(cfg.max_connections);
                }
                None => {
                    drop(registry);
                    // Closing at once costs nothing; answering 503 would
                    // first cost a TLS handshake, which is what an attacker
                    // wants us to spend.
                    drop(conn);
                    warnings.refused.note(cfg.max_connections);
                    return;
                }
            }
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.conns.insert(id, (peer.ip(), Arc::clone(&conn)));
        registry.threads += 1;
        id
    };
    let slot = Slot {
        shared: Arc::clone(shared),
        id,
    };
    let spawned = thread::Builder::new()
        .name("front-conn".to_string())
        .stack_size(CONN_STACK_BYTES)
        .spawn(move || {
            let shared = Arc::clone(&slot.shared);
            let outcome =
                panic::catch_unwind(AssertUnwindSafe(|| conn::serve(&shared, conn, peer)));
            match outcome {
                Ok(reason) => log::debug!("front: {peer}: closed: {reason}"),
                Err(_) => log::error!("front: {peer}: connection thread panicked"),
            }
            drop(slot);
        });
    // On failure the closure, and with it the slot and the stream, is dropped.
    if let Err(err) = spawned {
        log::warn!("front: cannot start a connection thread for {peer}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::test_config;
    use crate::http::{load_tls_config, self_signed};

    #[test]
    fn socket_dir_must_be_private() {
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let tls = Arc::new(load_tls_config(cert.as_bytes(), key.as_bytes()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let open_dir = dir.path().join("open");
        fs::create_dir(&open_dir).unwrap();
        fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let refused = Front::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&tls),
            &open_dir,
            test_config(),
        );
        assert!(matches!(
            refused.err(),
            Some(FrontError::InsecureSocketDir { .. })
        ));
        let private = dir.path().join("a/b");
        let (front, server) =
            Front::start("127.0.0.1:0".parse().unwrap(), tls, &private, test_config()).unwrap();
        let mode = fs::metadata(&private).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(front.socket_path().starts_with(&private));
        drop(front);
        drop(server);
    }
}
