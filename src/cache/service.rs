//! The host side of a job's cache: a Unix socket in the job's work
//! directory, served by a thread of the agent for as long as the job runs.
//! Each connection carries one request of `protocol.rs`, handled on its own
//! thread against the shared `Store`. The job reaches the backend only
//! through this socket: it never gets a path or a credential of it.
//!
//! Dropping the service stops accepting, removes the socket and joins every
//! thread; a connection whose client is gone ends at its next read.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::archive::ArchiveFormat;
use super::backend::Store;
use super::config::CleanupBy;
use super::error::CacheError;
use super::keys;
use super::protocol::{self, DataReader, DataWriter, Reply, Request};

/// A client that says nothing for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub struct CacheService {
    socket: PathBuf,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl CacheService {
    /// Listens on `socket` (a path in the job's private work directory).
    pub fn start(socket: &Path, store: Arc<Store>) -> io::Result<CacheService> {
        let _ = fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let acceptor = std::thread::Builder::new()
            .name("cache-service".into())
            .spawn(move || accept(listener, store, stop))?;
        Ok(CacheService {
            socket: socket.to_path_buf(),
            stopping,
            acceptor: Some(acceptor),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for CacheService {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which sees the flag and returns.
        let _ = UnixStream::connect(&self.socket);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = fs::remove_file(&self.socket);
    }
}

fn accept(listener: UnixListener, store: Arc<Store>, stopping: Arc<AtomicBool>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        handlers.retain(|h| !h.is_finished());
        let Ok(conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
        let store = Arc::clone(&store);
        match std::thread::Builder::new()
            .name("cache-request".into())
            .spawn(move || serve(conn, &store))
        {
            Ok(h) => handlers.push(h),
            Err(e) => log::error!("cannot start a cache request thread: {e}"),
        }
    }
    for h in handlers {
        let _ = h.join();
    }
}

fn serve(conn: UnixStream, store: &Store) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(256 * 1024, conn);
    let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
    let request: Request = match protocol::read_json(&mut reader) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("bad cache request: {e}");
            return;
        }
    };
    let outcome = handle(request, &mut reader, &mut writer, store);
    let reply = match outcome {
        Ok(Some(reply)) => reply,
        Ok(None) => return,
        Err(e) => {
            log::info!("cache: {e}");
            Reply::Error {
                message: e.to_string(),
            }
        }
    };
    let _ = protocol::write_json(&mut writer, &reply);
}

/// Handles one request. `Ok(None)` when the reply was already sent.
fn handle(
    request: Request,
    reader: &mut impl Read,
    writer: &mut impl Write,
    store: &Store,
) -> Result<Option<Reply>, CacheError> {
    match request {
        Request::Store {
            key,
            cleanup_by,
            capacity,
            gzip,
        } => {
            keys::check(&key, &store.backend)?;
            let wanted = Wanted {
                by: cleanup_by.unwrap_or(store.cleanup_by()),
                capacity: store.capacity(capacity),
                format: if gzip {
                    ArchiveFormat::Gzip
                } else {
                    store.archive_format()
                },
            };
            store_archive(&key, &wanted, reader, writer, store).map(Some)
        }
        Request::Restore { key } => restore_archive(&key, writer, store),
        Request::HasKey { key } => {
            keys::check(&key, &store.backend)?;
            Ok(Some(Reply::HasKey {
                exists: store.backend.has(&key)?,
            }))
        }
        Request::List => Ok(Some(Reply::List {
            entries: store.backend.list()?,
        })),
        Request::Delete { key } => {
            keys::check(&key, &store.backend)?;
            if !store.backend.has(&key)? {
                return Ok(Some(Reply::Deleted { existed: false }));
            }
            let existed = match store.backend.delete(&key) {
                Ok(()) => true,
                Err(CacheError::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            Ok(Some(Reply::Deleted { existed }))
        }
        Request::Clear => Ok(Some(Reply::Cleared {
            keys: store.clear()?,
        })),
        Request::Usage { capacity } => {
            let usage = store.usage(store.capacity(capacity))?;
            Ok(Some(Reply::Usage {
                used: usage.used,
                free: usage.free,
            }))
        }
    }
}

/// How one store goes: the eviction order, the capacity, the format.
struct Wanted {
    by: CleanupBy,
    capacity: Option<i64>,
    format: ArchiveFormat,
}

/// Removes a staged file unless it was committed.
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn store_archive(
    key: &str,
    wanted: &Wanted,
    reader: &mut impl Read,
    writer: &mut impl Write,
    store: &Store,
) -> Result<Reply, CacheError> {
    if store.backend.has(key)? {
        return Ok(Reply::Exists);
    }
    let (file, path) = store.backend.stage()?;
    let staged = Staged(path);
    protocol::write_json(
        writer,
        &Reply::Ready {
            format: wanted.format,
        },
    )
    .map_err(CacheError::Channel)?;
    let mut data = DataReader::new(reader);
    let mut out = BufWriter::with_capacity(1024 * 1024, file);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size: u64 = 0;
    let mut failed: Option<CacheError> = None;
    let too_large = |size: u64| {
        wanted
            .capacity
            .is_some_and(|c| i64::try_from(size).unwrap_or(i64::MAX) > c)
    };
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // The client went away or sent its own error: nothing to answer.
            Err(e) => return Err(CacheError::Channel(e)),
        };
        size += n as u64;
        // Past the capacity or after a failed write, the rest is read
        // only so that the client hears why.
        if failed.is_some() || too_large(size) {
            continue;
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            failed = Some(CacheError::io("cannot write", &staged.0, e));
        }
    }
    if let (true, Some(capacity)) = (too_large(size), wanted.capacity) {
        return Ok(Reply::TooLarge { capacity });
    }
    if let Some(e) = failed {
        return Err(e);
    }
    out.flush()
        .map_err(|e| CacheError::io("cannot write", &staged.0, e))?;
    drop(out);
    let (evicted, kept) = store.put(key, &staged.0, size, wanted.capacity, wanted.by)?;
    if !kept {
        // Another agent stored the key meanwhile; its archive stays.
        return Ok(Reply::Exists);
    }
    Ok(Reply::Stored {
        size,
        evicted: evicted.into_iter().map(|e| e.key).collect(),
        cleanup_by: wanted.by,
    })
}

/// Answers `Hit` before fetching, as the toolbox prints its `HIT` line
/// before it downloads; a failure after that is sent in place of the data.
fn restore_archive(
    wanted: &str,
    writer: &mut impl Write,
    store: &Store,
) -> Result<Option<Reply>, CacheError> {
    let entries = store.backend.list()?;
    let Some(entry) = keys::pick(wanted, &entries) else {
        return Ok(Some(Reply::Miss));
    };
    let key = entry.key.clone();
    protocol::write_json(
        writer,
        &Reply::Hit {
            key: key.clone(),
            size: entry.size,
        },
    )
    .map_err(CacheError::Channel)?;
    let mut fetched = match store.backend.fetch(&key) {
        Ok(f) => f,
        Err(e) => {
            return Ok(Some(Reply::Error {
                message: e.to_string(),
            }))
        }
    };
    let mut data = DataWriter::new(writer);
    io::copy(&mut fetched.file, &mut data).map_err(CacheError::Channel)?;
    data.finish().map_err(CacheError::Channel)?;
    Ok(None)
}
