//! What one request on a job's cache socket does, on the host: read it, do
//! it against the `Store` and answer. The connection itself (for how long,
//! the teardown) is `service.rs`'s.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::archive::ArchiveFormat;
use super::backend::{Call, Store};
use super::cancel::Cancel;
use super::config::CleanupBy;
use super::error::CacheError;
use super::keys;
use super::protocol::{self, DataReader, DataWriter, Reply, Request};

/// A client that says nothing (or reads nothing) for this long is dropped.
/// `cache` sends a piece of its archive at least every second while it
/// packs, and waits without a bound for the agent's answers.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the one request of `conn`.
pub fn serve(conn: UnixStream, store: &Store, cancel: &Cancel) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IDLE_TIMEOUT));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(256 * 1024, conn);
    let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
    let request: Request = match protocol::read_json(&mut reader) {
        Ok(r) => r,
        Err(e) => {
            // Not a warning: a job can send garbage as fast as it likes.
            log::debug!("a cache request that cannot be read: {e}");
            return;
        }
    };
    let call = Call { cancel };
    let outcome = handle(request, &mut reader, &mut writer, store, &call);
    let reply = match outcome {
        Ok(Some(reply)) => reply,
        Ok(None) => return,
        Err(CacheError::Abandoned) | Err(CacheError::Channel(_)) => return,
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
    call: &Call<'_>,
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
            store_archive(&key, &wanted, reader, writer, store, call).map(Some)
        }
        Request::Restore { key } => restore_archive(&key, writer, store, call),
        Request::HasKey { key } => {
            keys::check(&key, &store.backend)?;
            Ok(Some(Reply::HasKey {
                exists: store.backend.has(&key, call)?,
            }))
        }
        Request::List => Ok(Some(Reply::List {
            entries: store.backend.list(call)?,
        })),
        Request::Delete { key } => {
            keys::check(&key, &store.backend)?;
            if !store.backend.has(&key, call)? {
                return Ok(Some(Reply::Deleted { existed: false }));
            }
            let existed = match store.backend.delete(&key, call) {
                Ok(()) => true,
                Err(CacheError::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
            Ok(Some(Reply::Deleted { existed }))
        }
        Request::Clear => Ok(Some(Reply::Cleared {
            keys: store.clear(call)?,
        })),
        Request::Usage { capacity } => {
            let usage = store.usage(store.capacity(capacity), call)?;
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
    call: &Call<'_>,
) -> Result<Reply, CacheError> {
    if store.backend.has(key, call)? {
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
    let (evicted, kept) = store.put(key, &staged.0, size, wanted.capacity, wanted.by, call)?;
    if !kept {
        // Another store put the key there meanwhile; its archive stays.
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
/// The archive is streamed as it is: the agent never unpacks one (`cache`
/// checks it in the job).
fn restore_archive(
    wanted: &str,
    writer: &mut impl Write,
    store: &Store,
    call: &Call<'_>,
) -> Result<Option<Reply>, CacheError> {
    let entries = store.backend.list(call)?;
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
    let mut fetched = match store.backend.fetch(&key, call) {
        Ok(f) => f,
        Err(CacheError::Abandoned) => return Err(CacheError::Abandoned),
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
