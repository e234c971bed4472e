//! The host side of a job's cache: a Unix socket in the job's work
//! directory, served by a thread of the agent for as long as the job runs.
//! Each connection carries one request of `protocol.rs`, handled on its own
//! thread against the shared `Store`. The job reaches the backend only
//! through this socket: it never gets a path or a credential of it.
//!
//! Dropping the service stops accepting, removes the socket and joins every
//! thread; a connection whose client is gone ends at its next read.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::archive;
use super::backend::Store;
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
    let key_of = |key: &str| {
        let key = keys::normalize(key);
        keys::check(&key).map(|_| key)
    };
    match request {
        Request::Store { key } => {
            let key = key_of(&key)?;
            store_archive(&key, reader, writer, store).map(Some)
        }
        Request::Restore { key } => {
            let key = key_of(&key)?;
            restore_archive(&key, writer, store)
        }
        Request::HasKey { key } => {
            let key = key_of(&key)?;
            Ok(Some(Reply::HasKey {
                exists: store.backend.has(&key)?,
            }))
        }
        Request::List => Ok(Some(Reply::List {
            entries: store.backend.list()?,
        })),
        Request::Delete { key } => {
            let key = key_of(&key)?;
            store.backend.delete(&key)?;
            Ok(Some(Reply::Deleted))
        }
        Request::Clear => Ok(Some(Reply::Cleared {
            keys: store.clear()?,
        })),
        Request::Usage => {
            let usage = store.usage()?;
            Ok(Some(Reply::Usage {
                used: usage.used,
                free: usage.free,
            }))
        }
    }
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
    reader: &mut impl Read,
    writer: &mut impl Write,
    store: &Store,
) -> Result<Reply, CacheError> {
    if store.backend.has(key)? {
        return Ok(Reply::Exists);
    }
    let (file, path) = store.backend.stage()?;
    let staged = Staged(path);
    protocol::write_json(writer, &Reply::Ready).map_err(CacheError::Channel)?;
    let mut data = DataReader::new(reader);
    let mut out = BufWriter::with_capacity(1024 * 1024, file);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size: u64 = 0;
    let mut failed: Option<CacheError> = None;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // The client went away or sent its own error: nothing to answer.
            Err(e) => return Err(CacheError::Channel(e)),
        };
        size += n as u64;
        if failed.is_some() {
            continue;
        }
        if let Some(limit) = store.max_bytes().filter(|l| size > *l) {
            // Read the rest, so the client hears why.
            failed = Some(CacheError::TooLarge {
                key: key.to_string(),
                size,
                limit,
            });
            continue;
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            failed = Some(CacheError::io("cannot write", &staged.0, e));
        }
    }
    if let Some(CacheError::TooLarge { key, limit, .. }) = failed {
        return Err(CacheError::TooLarge { key, size, limit });
    }
    if let Some(e) = failed {
        return Err(e);
    }
    out.flush()
        .map_err(|e| CacheError::io("cannot write", &staged.0, e))?;
    drop(out);
    let (evicted, kept) = store.put(key, &staged.0, size)?;
    if !kept {
        // Another agent stored the key meanwhile; its archive stays.
        return Ok(Reply::Exists);
    }
    Ok(Reply::Stored {
        size,
        evicted: evicted.into_iter().map(|e| e.key).collect(),
    })
}

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
    let mut fetched = store.backend.fetch(&key)?;
    // Checked whole before a byte reaches the job: a damaged archive
    // leaves the job's files as they were.
    archive::verify(BufReader::with_capacity(1024 * 1024, &fetched.file)).map_err(|source| {
        CacheError::Corrupt {
            key: key.clone(),
            source,
        }
    })?;
    fetched
        .file
        .rewind()
        .map_err(|e| CacheError::io("cannot read the archive of", &key, e))?;
    protocol::write_json(
        writer,
        &Reply::Hit {
            key: key.clone(),
            size: fetched.size,
        },
    )
    .map_err(CacheError::Channel)?;
    let mut data = DataWriter::new(writer);
    io::copy(&mut fetched.file, &mut data).map_err(CacheError::Channel)?;
    data.finish().map_err(CacheError::Channel)?;
    Ok(None)
}
