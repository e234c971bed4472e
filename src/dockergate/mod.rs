//! The Docker gate of a job: a Unix socket in the job's work directory,
//! mounted into a compose job's main container at `/var/run/docker.sock` in
//! place of the engine's, that forwards the Docker Engine API to the real
//! engine and refuses what would let the job reach the host or another
//! job (README "Docker in compose jobs"). What the job creates through it
//! carries the label `agent.job=<the job's mark>`; lists and events are
//! filtered to that label; and when the job ends the gate closes and its
//! owner removes every container, network and volume with the label
//! ([`remove_objects`]; images stay, as a cache). A restarted agent
//! removes them too for a job a crash cut short.
//!
//! The gate is blocking: one thread per connection (at most
//! `MAX_CONNECTIONS`, plus one per hijacked stream for its other
//! direction), a fresh engine connection per request.
//!
//! # Where things are
//!
//! - `wire.rs`: HTTP/1.1 heads, body framing and copying, the query string.
//! - `rules.rs`: the decision on each request, the checks of create bodies.
//! - `engine.rs`: the gate's own questions to the engine (ownership).
//! - `conn.rs`: one client connection, from request to answer or hijack.

mod conn;
pub mod engine;
pub mod rules;
mod wire;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::hostcmd::{run_bounded, Ended};
use crate::process::sys;
use crate::util::{join_within, next_connection};

pub use rules::{JobFacts, JOB_LABEL};

/// The socket's name in the job's work directory.
pub const SOCKET_NAME: &str = "docker.sock";
/// Connections of one job served at once. `docker compose` keeps a pool of
/// about ten; a `docker run` uses two or three.
const MAX_CONNECTIONS: usize = 64;
/// Engine connections kept open between requests.
const MAX_IDLE: usize = 8;
/// The longest the teardown waits for connection threads, which see their
/// sockets cut at once.
const TEARDOWN_BOUND: Duration = Duration::from_secs(5);
/// How long each docker command of the cleanup may take.
const CLEANUP_COMMAND: Duration = Duration::from_secs(60);
/// A connection thread's stack: it holds no large buffer of its own.
const THREAD_STACK: usize = 256 * 1024;

/// What compose jobs get at `/var/run/docker.sock` in main
/// (`--docker-socket`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DockerSocket {
    /// The job's gate.
    #[default]
    Gate,
    /// The engine's own socket, as the reference agent mounts it: root on
    /// the host for every job.
    Host,
    /// Nothing.
    None,
}

impl DockerSocket {
    pub const CHOICES: &'static str = "gate, host, none";

    pub fn parse(value: &str) -> Option<DockerSocket> {
        match value {
            "gate" => Some(DockerSocket::Gate),
            "host" => Some(DockerSocket::Host),
            "none" => Some(DockerSocket::None),
            _ => None,
        }
    }
}

/// Why the gate could not start.
#[derive(Debug)]
pub enum GateError {
    /// `DOCKER_HOST` is not a Unix socket.
    NotUnix,
    Socket {
        path: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Display for GateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateError::NotUnix => write!(
                f,
                "DOCKER_HOST is not a unix:// address, which the docker gate needs"
            ),
            GateError::Socket { path, source } => {
                write!(f, "cannot serve {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for GateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GateError::Socket { source, .. } => Some(source),
            GateError::NotUnix => None,
        }
    }
}

/// What the acceptor, the connections and the teardown share.
struct Shared {
    facts: JobFacts,
    engine: PathBuf,
    teardown: AtomicBool,
    /// Every socket in use (clients and their engine connections), to cut
    /// at the teardown.
    open: Mutex<HashMap<u64, UnixStream>>,
    next_id: AtomicU64,
    /// Engine connections left open by finished requests, for the next.
    idle: Mutex<Vec<UnixStream>>,
}

/// A socket noted for the teardown; forgotten when dropped.
struct Watched<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.shared
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Shared {
    /// Notes a socket to cut at the teardown; None once it has begun
    /// (checked under the lock the teardown sweeps with, so none escapes).
    fn watch(&self, stream: &UnixStream) -> Option<Watched<'_>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.teardown.load(Ordering::SeqCst) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        open.insert(id, stream.try_clone().ok()?);
        Some(Watched { shared: self, id })
    }

    /// An engine connection an earlier request left open and the engine
    /// has not closed (an idle connection with something to read has been
    /// closed, or holds what nobody asked for).
    fn take_idle(&self) -> Option<UnixStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            if !sys::readable_now(conn.as_raw_fd()) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for a later request; not once the teardown has begun
    /// (checked under the lock the teardown clears the pool with).
    fn put_idle(&self, conn: UnixStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if !self.teardown.load(Ordering::SeqCst) && idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    fn cut_all(&self) {
        self.teardown.store(true, Ordering::SeqCst);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for stream in open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A job's gate, served while it lives; dropping it closes the gate and
/// removes what the job created through it.
pub struct DockerGate {
    socket: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl DockerGate {
    /// Serves the gate of the job described by `facts` on `socket`.
    pub fn start(socket: &Path, facts: JobFacts) -> Result<DockerGate, GateError> {
        let engine = engine::engine_socket().ok_or(GateError::NotUnix)?;
        let failed = |source| GateError::Socket {
            path: socket.to_path_buf(),
            source,
        };
        let _ = fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(failed)?;
        fs::set_permissions(socket, fs::Permissions::from_mode(0o600)).map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        let shared = Arc::new(Shared {
            facts,
            engine,
            teardown: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("docker-gate".into())
                .spawn(move || accept(listener, &shared))
                .map_err(failed)?
        };
        Ok(DockerGate {
            socket: socket.to_path_buf(),
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl DockerGate {
    /// Closes the gate: every connection is cut, the socket removed.
    /// What the job created stays for [`remove_objects`], which the owner
    /// runs in the order its other cleanup needs.
    pub fn close(&mut self) {
        self.shared.cut_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = fs::remove_file(&self.socket);
    }

    /// The value of the job's label.
    pub fn mark(&self) -> &str {
        &self.shared.facts.mark
    }
}

impl Drop for DockerGate {
    fn drop(&mut self) {
        self.close();
    }
}

fn accept(listener: UnixListener, shared: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while let Some(conn) = next_connection(&listener, &shared.teardown) {
        handlers.retain(|h| !h.is_finished());
        if handlers.len() >= MAX_CONNECTIONS {
            let _ = conn.set_nonblocking(true);
            let mut out = &conn;
            let _ = io::Write::write_all(
                &mut out,
                &wire::json_error(
                    503,
                    &format!(
                        "agent docker gate: too many connections at once (at most {MAX_CONNECTIONS})"
                    ),
                    true,
                ),
            );
            continue;
        }
        let _ = conn.set_nonblocking(false);
        let shared_for_thread = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("docker-gate-conn".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let Some(_watched) = shared_for_thread.watch(&conn) else {
                    return;
                };
                conn::serve(conn, &shared_for_thread);
            });
        match spawned {
            Ok(h) => handlers.push(h),
            Err(e) => log::error!("cannot start a docker gate connection thread: {e}"),
        }
    }
    let busy = join_within(handlers, TEARDOWN_BOUND);
    if busy > 0 {
        log::error!("{busy} docker gate connection(s) still busy after the gate closed");
    }
}

/// Runs a docker command with a deadline; its stdout lines.
fn docker(args: &[&str]) -> Option<Vec<String>> {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    let deadline = Instant::now() + CLEANUP_COMMAND;
    match run_bounded(cmd, b"", deadline, &|| false, 1024 * 1024) {
        Ok(out) => match out.ended {
            Ended::Exited(status) if status.success() => Some(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_string())
                    .collect(),
            ),
            ended => {
                log::warn!(
                    "docker {}: {ended:?}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
        },
        Err(e) => {
            log::warn!("cannot run docker {}: {e}", args.join(" "));
            None
        }
    }
}

/// Removes every container (with its anonymous volumes), network and
/// volume labelled as the job's: at the end of the job, and by a restarted
/// agent for a job a crash cut short. False when something could not be
/// removed (a network a container of the job's compose project is still
/// attached to): the caller tries again once the project is gone.
pub fn remove_objects(mark: &str) -> bool {
    let filter = format!("label={JOB_LABEL}={mark}");
    let kinds: [(&[&str], &[&str]); 3] = [
        (&["ps", "-aq", "--no-trunc"], &["rm", "-f", "-v"]),
        (&["network", "ls", "-q", "--no-trunc"], &["network", "rm"]),
        (&["volume", "ls", "-q"], &["volume", "rm", "-f"]),
    ];
    let mut complete = true;
    for (list, remove) in kinds {
        let mut args: Vec<&str> = list.to_vec();
        args.extend(["--filter", &filter]);
        let Some(ids) = docker(&args) else {
            complete = false;
            continue;
        };
        if ids.is_empty() {
            continue;
        }
        let mut args: Vec<&str> = remove.to_vec();
        args.extend(ids.iter().map(String::as_str));
        if docker(&args).is_some() {
            log::info!(
                "docker gate of {mark}: removed {} {} the job left",
                ids.len(),
                list[0]
            );
        } else {
            complete = false;
        }
    }
    complete
}
