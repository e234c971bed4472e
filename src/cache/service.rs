//! The host side of a job's cache: a Unix socket in the job's work
//! directory, served by a thread of the agent for as long as the job runs.
//! Each connection carries one request (`handler.rs`), on its own thread.
//! The job reaches the backend only through this socket: it never gets a
//! path or a credential of it.
//!
//! What a job can do to the socket is bounded: at most `MAX_CONNECTIONS`
//! requests at once (a further connection is answered with an error line
//! and closed), frames read as their bytes arrive (`protocol.rs`), and a
//! client silent for `handler::IDLE_TIMEOUT` is dropped. The teardown wins
//! over everything a job does: dropping the service cuts every connection,
//! which sets the `Cancel` of every request (an `sftp` run in progress is
//! killed), stops the acceptor (which looks for the teardown every
//! `util::next_connection`, however the job connects), removes the socket and waits
//! for the request threads for at most `TEARDOWN_BOUND`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::cancel::Cancel;
use super::handler::{self, JobStore};
use super::protocol::{self, Reply};
use crate::util::{join_within, next_connection};

/// Requests of one job served at once. A job runs its `cache` commands one
/// after the other; a few at once leave room for background ones.
pub const MAX_CONNECTIONS: usize = 4;
/// The longest the teardown waits for request threads, each of which sees
/// its `Cancel` within a few tens of milliseconds.
const TEARDOWN_BOUND: Duration = Duration::from_secs(5);

pub struct CacheService {
    socket: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// What the acceptor, the request threads and the teardown share.
struct Shared {
    /// Set at the teardown; every request's `Cancel` sees it.
    teardown: Arc<AtomicBool>,
    /// The connections being served, to cut at the teardown.
    open: Mutex<HashMap<u64, UnixStream>>,
}

impl Shared {
    /// Notes a connection to be served; None once the teardown has begun
    /// (checked under the lock the teardown sweeps with, so no connection
    /// escapes the sweep). Returns the copy its `Cancel` watches.
    fn register(&self, id: u64, conn: &UnixStream) -> Option<UnixStream> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.teardown.load(Ordering::SeqCst) {
            return None;
        }
        open.insert(id, conn.try_clone().ok()?);
        conn.try_clone().ok()
    }

    fn forget(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Sets the teardown flag and cuts every connection: blocked reads and
    /// writes return at once.
    fn cut_all(&self) {
        self.teardown.store(true, Ordering::SeqCst);
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for conn in open.values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

impl CacheService {
    /// Listens on `socket` (a path in the job's private work directory).
    pub fn start(socket: &Path, jobs: JobStore) -> io::Result<CacheService> {
        let _ = fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            teardown: Arc::new(AtomicBool::new(false)),
            open: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("cache-service".into())
                .spawn(move || accept(listener, Arc::new(jobs), &shared))?
        };
        Ok(CacheService {
            socket: socket.to_path_buf(),
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for CacheService {
    fn drop(&mut self) {
        self.shared.cut_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = fs::remove_file(&self.socket);
    }
}

fn accept(listener: UnixListener, jobs: Arc<JobStore>, shared: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while let Some(conn) = next_connection(&listener, &shared.teardown) {
        handlers.retain(|h| !h.is_finished());
        if handlers.len() >= MAX_CONNECTIONS {
            refuse(&conn);
            continue;
        }
        let _ = conn.set_nonblocking(false);
        let id = next_id;
        next_id += 1;
        let Some(watched) = shared.register(id, &conn) else {
            break;
        };
        let cancel = Cancel::new(Arc::clone(&shared.teardown), Some(watched));
        let (jobs, shared_for_thread) = (Arc::clone(&jobs), Arc::clone(shared));
        let spawned = std::thread::Builder::new()
            .name("cache-request".into())
            .spawn(move || {
                handler::serve(conn, &jobs, &cancel);
                shared_for_thread.forget(id);
            });
        match spawned {
            Ok(h) => handlers.push(h),
            Err(e) => {
                shared.forget(id);
                log::error!("cannot start a cache request thread: {e}");
            }
        }
    }
    let busy = join_within(handlers, TEARDOWN_BOUND);
    if busy > 0 {
        // Each has nothing left to wait for but its `Cancel`, already set:
        // the job's teardown does not wait longer.
        log::error!(
            "{busy} cache request(s) still busy {TEARDOWN_BOUND:?} after the job's cache closed; not waiting for them"
        );
    }
}

/// Answers a connection past `MAX_CONNECTIONS` with the error path's line,
/// without reading its request (`cache` reads the answer even when its
/// request could not be sent), and closes it.
fn refuse(conn: &UnixStream) {
    let _ = conn.set_nonblocking(true);
    let reply = Reply::Error {
        message: format!(
            "too many cache commands at once in this job (at most {MAX_CONNECTIONS}); try again when one has finished"
        ),
    };
    let _ = protocol::write_json(&mut &*conn, &reply);
}
