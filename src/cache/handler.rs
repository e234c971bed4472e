//! What one request on a job's cache socket does, on the host: read it,
//! find where it goes (the agent's backend, the job's own SFTP server or S3
//! bucket, or nowhere, with the reason), do it against the `Store` and answer. The
//! connection itself (how many, for how long, the teardown) is
//! `service.rs`'s.
//!
//! A job's own SFTP server is reached with the key its `cache` read in the
//! job and handed over with the request: the agent writes it to a file of
//! its own in the job's private directory (mode 0600) for `ssh`, and
//! removes it when the request is done. The host never opens a path a job
//! names.

use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::archive::ArchiveFormat;
use super::backend::staging::Staged;
use super::backend::{Call, Store};
use super::cancel::Cancel;
use super::config::{CleanupBy, ENV_KEY_PATH};
use super::error::CacheError;
use super::keys;
use super::protocol::{self, DataReader, DataWriter, Envelope, JobKey, Reply, Request, FROM_JOB};
use crate::util::random_hex;

/// A client that says nothing (or reads nothing) for this long is dropped.
/// `cache` sends a piece of its archive at least every second while it
/// packs, and waits without a bound for the agent's answers.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a job's requests go.
pub enum JobStore {
    /// The agent's backend, shared by its jobs; on S3, the job's project
    /// names the folder of its keys.
    Agent {
        store: Arc<Store>,
        project: Option<String>,
    },
    /// The job's own SFTP server (the toolbox's variables), reached with
    /// the key the job's `cache` hands over; its copy goes in `key_dir`.
    JobSftp { store: Store, key_dir: PathBuf },
    /// The job's own S3 bucket, reached with the credentials the job's
    /// `cache` hands over.
    JobS3 { store: Store, project: String },
    /// The job's variables cannot be used: every request hears why.
    Refused(String),
}

/// Where one request goes, and the key file it brought.
struct Target<'a> {
    store: &'a Store,
    key_file: Option<KeyFile>,
    project: Option<&'a str>,
    /// Whether the job's S3 credentials are used.
    job_s3: bool,
}

/// The agent's copy of a job's SFTP key, removed when the request is done.
struct KeyFile(PathBuf);

impl KeyFile {
    fn write(dir: &Path, text: &str) -> Result<KeyFile, CacheError> {
        let path = dir.join(format!("sftp-key-{}", random_hex(8)));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CacheError::io("cannot write the job's SFTP key to", &path, e))?;
        let key = KeyFile(path);
        file.write_all(text.as_bytes())
            .map_err(|e| CacheError::io("cannot write the job's SFTP key to", &key.0, e))?;
        Ok(key)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl JobStore {
    fn target(&self, key: Option<JobKey>) -> Result<Target<'_>, CacheError> {
        match self {
            JobStore::Agent { store, project } => Ok(Target {
                store,
                key_file: None,
                project: project.as_deref(),
                job_s3: false,
            }),
            JobStore::JobS3 { store, project } => Ok(Target {
                store,
                key_file: None,
                project: Some(project),
                job_s3: true,
            }),
            JobStore::Refused(message) => Err(CacheError::Usage(message.clone())),
            JobStore::JobSftp { store, key_dir } => match key {
                Some(JobKey::Content(text)) => Ok(Target {
                    store,
                    key_file: Some(KeyFile::write(key_dir, &text)?),
                    project: None,
                    job_s3: false,
                }),
                Some(JobKey::Unusable(message)) => Err(CacheError::Usage(message)),
                None => Err(CacheError::Usage(format!(
                    "this job's SFTP cache needs the key file that {ENV_KEY_PATH} names in the job"
                ))),
            },
        }
    }
}

/// Serves the one request of `conn`.
pub fn serve(conn: UnixStream, jobs: &JobStore, cancel: &Cancel) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IDLE_TIMEOUT));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(256 * 1024, conn);
    let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
    let envelope: Envelope = match protocol::read_json(&mut reader, FROM_JOB) {
        Ok(r) => r,
        Err(e) => {
            // Not a warning: a job can send garbage as fast as it likes.
            log::debug!("a cache request that cannot be read: {e}");
            return;
        }
    };
    let s3_keys = envelope.s3_keys;
    let outcome = jobs.target(envelope.sftp_key).and_then(|target| {
        let call = Call {
            cancel,
            identity: target.key_file.as_ref().map(|k| k.0.as_path()),
            project: target.project,
            s3_keys: s3_keys.as_ref().filter(|_| target.job_s3),
        };
        handle(
            envelope.request,
            &mut reader,
            &mut writer,
            target.store,
            &call,
        )
    });
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
        Request::IsNotEmpty => Ok(Some(Reply::HasKey {
            exists: store.backend.any_key(call)?,
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
    let (file, staged): (_, Staged) = store.backend.stage()?;
    protocol::write_json(
        writer,
        &Reply::Ready {
            format: wanted.format,
        },
    )
    .map_err(CacheError::Channel)?;
    let mut data = DataReader::new(reader, FROM_JOB);
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
            failed = Some(CacheError::io("cannot write", staged.path(), e));
        }
    }
    if let (true, Some(capacity)) = (too_large(size), wanted.capacity) {
        return Ok(Reply::TooLarge { capacity });
    }
    if let Some(e) = failed {
        return Err(e);
    }
    out.flush()
        .map_err(|e| CacheError::io("cannot write", staged.path(), e))?;
    drop(out);
    let (evicted, kept) = store.put(key, staged.path(), size, wanted.capacity, wanted.by, call)?;
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
    // A download that breaks for good is a broken stream: `cache` finds
    // the archive incomplete and restores nothing.
    io::copy(&mut fetched.reader, &mut data).map_err(CacheError::Channel)?;
    data.finish().map_err(CacheError::Channel)?;
    Ok(None)
}
