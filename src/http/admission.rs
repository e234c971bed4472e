//! What the listener and the connection threads share, below both: the
//! limits of every connection (`FrontConfig`), the state the accept thread
//! and the connection threads share (`Shared`, with the registry of
//! admitted connections that admission works on, see `listener`), and one
//! admitted connection (`Admitted`). The listener admits and starts
//! connections; a connection (`conn`) serves one client and never reaches
//! back into the listener.

use std::collections::BTreeMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Limits enforced on every client connection.
#[derive(Debug, Clone)]
pub(crate) struct FrontConfig {
    /// Larger declared request bodies get `413` without being read.
    pub(crate) max_request_bytes: u64,
    /// Larger request heads (request line and headers) get `431`.
    pub(crate) max_head_bytes: usize,
    /// A request head must be complete this long after its first byte.
    pub(crate) head_timeout: Duration,
    /// A connection with no request in progress is closed after this long.
    pub(crate) idle_timeout: Duration,
    /// Every request body gets this long, plus `body_bytes / body_min_rate`
    /// seconds, from the end of its head.
    pub(crate) body_timeout: Duration,
    /// Bytes per second a body may be as slow as on top of `body_timeout`
    /// (0: `body_timeout` alone bounds every body).
    pub(crate) body_min_rate: u64,
    /// A connection whose pending output makes no progress for this long is
    /// closed. Slow downloads that progress are never cut off.
    pub(crate) write_stall_timeout: Duration,
    /// The TLS handshake must be done this long after the TCP accept.
    pub(crate) handshake_timeout: Duration,
    /// Open connections at most; see "Admission" in the module doc.
    pub(crate) max_connections: usize,
    /// Pending connections (no request forwarded yet) of one IP address at
    /// most; see "Admission" in the module doc.
    pub(crate) max_pending_per_address: usize,
    /// Connections of one IP address at most, pending or serving.
    pub(crate) max_per_address: usize,
}

impl Default for FrontConfig {
    fn default() -> FrontConfig {
        FrontConfig {
            max_request_bytes: 32 * 1024 * 1024,
            max_head_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            body_min_rate: 256 * 1024,
            write_stall_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            max_connections: 256,
            max_pending_per_address: 32,
            max_per_address: 128,
        }
    }
}

/// What the accept thread and the connection threads share.
pub(super) struct Shared {
    pub(super) cfg: FrontConfig,
    pub(super) tls: Arc<rustls::ServerConfig>,
    pub(super) socket_path: PathBuf,
    pub(super) stopping: AtomicBool,
    pub(super) stop_rx: UnixStream,
    pub(super) registry: Mutex<Registry>,
    pub(super) all_closed: Condvar,
    /// Connections to `tiny_http` currently open (one per request in flight).
    pub(super) upstreams: AtomicUsize,
}

impl Shared {
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(super) fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry stays meaningful even if a holder panicked.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted connection: its socket, shared by its thread and the accept
/// thread, which shuts it down to drop the connection.
pub(super) struct Admitted {
    pub(super) tcp: TcpStream,
    /// The front has forwarded a request head of this connection (it is
    /// serving, no longer pending).
    pub(super) serving: AtomicBool,
}

impl Admitted {
    /// Called when a request head is forwarded: from now on the connection
    /// is never dropped for a newcomer.
    pub(super) fn mark_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    pub(super) fn is_pending(&self) -> bool {
        !self.serving.load(Ordering::Acquire)
    }
}

/// The admitted connections, oldest first, and the connection threads.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) next_id: u64,
    pub(super) conns: BTreeMap<u64, (IpAddr, Arc<Admitted>)>,
    /// Connection threads not yet ended, including those of dropped
    /// connections on their way out.
    pub(super) threads: usize,
}

impl Registry {
    /// The oldest pending connection, of `ip` only if given.
    pub(super) fn oldest_pending(&self, ip: Option<IpAddr>) -> Option<u64> {
        self.conns
            .iter()
            .find(|(_, (peer, conn))| ip.is_none_or(|ip| ip == *peer) && conn.is_pending())
            .map(|(id, _)| *id)
    }

    pub(super) fn count_of(&self, ip: IpAddr) -> usize {
        self.conns.values().filter(|(peer, _)| *peer == ip).count()
    }

    pub(super) fn pending_of(&self, ip: IpAddr) -> usize {
        self.conns
            .values()
            .filter(|(peer, conn)| *peer == ip && conn.is_pending())
            .count()
    }

    /// Closes a connection's socket under its thread and forgets it; the
    /// thread notices at once and ends.
    pub(super) fn drop_connection(&mut self, id: u64) {
        if let Some((_, conn)) = self.conns.remove(&id) {
            let _ = conn.tcp.shutdown(Shutdown::Both);
        }
    }
}
