//! Where archives live. `Backend` is the closed set of stores (a local
//! directory, an SFTP server, an S3 bucket); `Store` adds what every backend shares: the
//! size limit, the order in which keys go when room is needed, and one store
//! at a time per agent.
//!
//! Every call of a request carries a `Call`: its `Cancel` (the job's
//! teardown, its client gone), which every wait looks at, the job's project
//! (an S3 bucket keeps each project's keys apart), and for a job's own SFTP
//! server or S3 bucket the key or credentials the job handed over.
//!
//! Another backend (GCS, ...) is one more file here and one more variant:
//! it lists entries with their sizes and times, opens an archive as a
//! reader, commits a staged file under a key without ever showing
//! a partial archive under that key, and deletes. Nothing above this module
//! changes.

pub mod local;
pub mod s3;
pub mod sftp;
pub mod staging;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::archive::ArchiveFormat;
use super::cancel::Cancel;
use super::config::{BackendConfig, CacheConfig, CleanupBy};
use super::error::CacheError;
use staging::Staged;

/// The start of the names under which archives wait for their key, in the
/// local cache directory and on an SFTP server: never a key.
pub const STAGED_PREFIX: &str = ".incoming-";

/// One stored archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    /// Bytes of the compressed archive.
    pub size: u64,
    /// Unix milliseconds.
    pub stored_ms: u64,
    pub accessed_ms: u64,
}

/// The keys of a backend, and the archives on their way in (named
/// `.incoming-...`; their `key` is that name).
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub staged: Vec<Entry>,
}

impl Listing {
    /// What the archives and the staged files take together, but for the
    /// key `except` (which a store replaces) and the staged file `own`.
    fn used(&self, except: Option<&str>, own: Option<&Path>) -> u64 {
        let own = own.and_then(|p| p.file_name()).map(|n| n.to_string_lossy());
        let keys = self
            .entries
            .iter()
            .filter(|e| Some(e.key.as_str()) != except);
        let staged = self
            .staged
            .iter()
            .filter(|e| Some(&*e.key) != own.as_deref());
        keys.chain(staged).map(|e| e.size).sum()
    }
}

/// What one request brings to every backend call.
pub struct Call<'a> {
    pub cancel: &'a Cancel,
    /// The key file a job's own SFTP server is reached with: the agent's
    /// copy of what the job's `cache` handed over.
    pub identity: Option<&'a Path>,
    /// The job's project (`SEMAPHORE_PROJECT_ID`), under which an S3
    /// bucket keeps its keys.
    pub project: Option<&'a str>,
    /// The credentials of a job's own S3 bucket, as its `cache` handed
    /// them over.
    pub s3_keys: Option<&'a crate::cache::aws::Keys>,
}

impl<'a> Call<'a> {
    /// A call with nothing from a job: the agent's own work.
    pub fn agent(cancel: &'a Cancel) -> Call<'a> {
        Call {
            cancel,
            identity: None,
            project: None,
            s3_keys: None,
        }
    }
}

/// An archive opened for reading: a file, or an object as it arrives. A
/// spooled copy is removed on drop.
pub struct Fetched<'a> {
    pub reader: Box<dyn Read + 'a>,
    _spooled: Option<Staged>,
}

impl<'a> Fetched<'a> {
    pub fn file(file: File, spooled: Option<Staged>) -> Fetched<'a> {
        Fetched {
            reader: Box::new(file),
            _spooled: spooled,
        }
    }

    pub fn stream(reader: Box<dyn Read + 'a>) -> Fetched<'a> {
        Fetched {
            reader,
            _spooled: None,
        }
    }
}

pub enum Backend {
    Local(local::Local),
    Sftp(sftp::Sftp),
    S3(Box<s3::S3>),
}

impl Backend {
    pub fn open(cfg: &CacheConfig) -> Result<Backend, CacheError> {
        match &cfg.backend {
            BackendConfig::Local { dir } => Ok(Backend::Local(local::Local::open(dir)?)),
            BackendConfig::Sftp(s) => Ok(Backend::Sftp(sftp::Sftp::new(s, &cfg.spool_dir)?)),
            BackendConfig::S3(s) => Ok(Backend::S3(Box::new(s3::S3::new(s, &cfg.spool_dir)?))),
        }
    }

    pub fn listing(&self, call: &Call<'_>) -> Result<Listing, CacheError> {
        match self {
            Backend::Local(b) => b.listing(),
            Backend::Sftp(b) => b.listing(call),
            Backend::S3(b) => b.listing(call),
        }
    }

    pub fn list(&self, call: &Call<'_>) -> Result<Vec<Entry>, CacheError> {
        self.listing(call).map(|l| l.entries)
    }

    pub fn has(&self, key: &str, call: &Call<'_>) -> Result<bool, CacheError> {
        match self {
            Backend::Local(b) => Ok(b.has(key)),
            Backend::Sftp(_) => Ok(self.list(call)?.iter().any(|e| e.key == key)),
            Backend::S3(b) => Ok(b.head(key, call)?.is_some()),
        }
    }

    /// Whether the cache holds any key. On S3 a listing is not the last
    /// word: a Garage cluster's can still show a key for a moment after
    /// its delete (each node of the read quorum leaves out what it knows to
    /// be deleted, so one that has not heard of it yet wins), where a HEAD
    /// cannot; so the listed keys are asked for until one is there (one
    /// HEAD when the cache holds keys, none when it holds none).
    pub fn any_key(&self, call: &Call<'_>) -> Result<bool, CacheError> {
        let entries = self.list(call)?;
        match self {
            Backend::S3(_) => {
                for entry in &entries {
                    if self.has(&entry.key, call)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Backend::Local(_) | Backend::Sftp(_) => Ok(!entries.is_empty()),
        }
    }

    /// A new file for an incoming archive, and the guard that removes it.
    pub fn stage(&self) -> Result<(File, Staged), CacheError> {
        match self {
            Backend::Local(b) => b.stage(),
            Backend::Sftp(b) => b.stage(),
            Backend::S3(b) => b.stage(),
        }
    }

    /// Puts the staged file under `key`. False when the key appeared
    /// meanwhile (another store put it there first): that one stays.
    pub fn commit(&self, key: &str, staged: &Path, call: &Call<'_>) -> Result<bool, CacheError> {
        match self {
            Backend::Local(b) => b.commit(key, staged),
            Backend::Sftp(b) => b.commit(key, staged, call),
            Backend::S3(b) => b.commit(key, staged, call),
        }
    }

    pub fn fetch<'a>(&'a self, key: &str, call: &'a Call<'a>) -> Result<Fetched<'a>, CacheError> {
        match self {
            Backend::Local(b) => b.fetch(key),
            Backend::Sftp(b) => b.fetch(key, call),
            Backend::S3(b) => b.fetch(key, call),
        }
    }

    pub fn delete(&self, key: &str, call: &Call<'_>) -> Result<(), CacheError> {
        match self {
            Backend::Local(b) => b.delete(key),
            Backend::Sftp(b) => b.delete(key, call),
            Backend::S3(b) => b.delete(key, call),
        }
    }

    /// After `clear`: drops what earlier versions kept beside the archives
    /// (SFTP's access markers).
    pub fn cleared(&self, call: &Call<'_>) -> Result<(), CacheError> {
        match self {
            Backend::Local(_) | Backend::S3(_) => Ok(()),
            Backend::Sftp(b) => b.clear_old_markers(call),
        }
    }

    /// Removes uploads a crash left on the server (`staged` of an SFTP
    /// listing; an S3 bucket's incomplete multipart uploads): those older
    /// than any upload can take, and on S3 at once those this agent's
    /// spool records. The local backend's are removed as they are found
    /// (`staging.rs`).
    fn remove_abandoned(&self, staged: &[Entry], call: &Call<'_>) {
        match self {
            Backend::Sftp(b) => b.remove_abandoned(staged, call),
            Backend::S3(b) => b.remove_abandoned(call),
            Backend::Local(_) => {}
        }
    }

    /// Free bytes on the backend's disk, when it can tell (an SFTP cache
    /// always has a capacity, so its disk is not asked).
    pub fn free(&self) -> Result<Option<u64>, CacheError> {
        match self {
            Backend::Local(b) => Ok(b.free()),
            Backend::Sftp(_) | Backend::S3(_) => Ok(None),
        }
    }
}

/// The toolbox's capacity of an SFTP cache when nothing else sets one:
/// 9 GiB, so that agents and toolboxes sharing a server evict alike.
pub const SFTP_DEFAULT_CAPACITY: i64 = 9 * 1024 * 1024 * 1024;

/// A backend with its limit. Shared by the jobs of an agent.
pub struct Store {
    pub backend: Backend,
    /// The agent's own limit (`--cache-max-bytes`), which no job may raise.
    max_bytes: Option<u64>,
    cleanup_by: CleanupBy,
    archive_format: ArchiveFormat,
    /// One store's make-room-and-commit at a time in this agent.
    lock: Mutex<()>,
}

/// How often a store waiting for the lock looks whether it was abandoned.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// What `cache usage` shows.
pub struct Usage {
    pub used: u64,
    /// The capacity left, negative when the cache is over it; without a
    /// capacity, the free bytes of the disk when the backend can tell.
    pub free: Option<i64>,
}

impl Store {
    pub fn open(cfg: &CacheConfig) -> Result<Store, CacheError> {
        Ok(Store {
            backend: Backend::open(cfg)?,
            max_bytes: cfg.max_bytes,
            cleanup_by: cfg.cleanup_by,
            archive_format: cfg.archive_format,
            lock: Mutex::new(()),
        })
    }

    /// Removes the uploads a crash left on the backend (an SFTP server's
    /// `.incoming-*` older than any upload can take), as a store would:
    /// for an agent that starts, so that they do not wait for the next
    /// store. The local backend's went when it was opened; an S3 bucket's
    /// are looked for in the whole bucket.
    pub fn sweep_abandoned(&self) {
        if let Backend::Local(_) = &self.backend {
            return;
        }
        let cancel = crate::cache::cancel::Cancel::new(Arc::default(), None);
        let call = Call::agent(&cancel);
        let Ok(_guard) = self.lock(call.cancel) else {
            return;
        };
        // A bucket's uploads are listed apart from its keys, and the agent
        // has no project of its own to list keys of.
        if let Backend::S3(b) = &self.backend {
            b.remove_abandoned(&call);
            return;
        }
        match self.backend.listing(&call) {
            Ok(listing) => self.backend.remove_abandoned(&listing.staged, &call),
            Err(e) => log::warn!("cannot look for uploads a crash left in the cache: {e}"),
        }
    }

    /// The order keys go in when the job names none.
    pub fn cleanup_by(&self) -> CleanupBy {
        self.cleanup_by
    }

    /// The format of the archives jobs store, unless a job asks for the
    /// toolbox's.
    pub fn archive_format(&self) -> ArchiveFormat {
        self.archive_format
    }

    /// What a job may fill: its `CACHE_SIZE` (bytes; zero and negative
    /// values are the toolbox's too), never above the agent's own limit;
    /// without either, the toolbox's 9 GiB on SFTP and no limit on a local
    /// directory or an S3 bucket (where the limit, when set, is each
    /// project's).
    pub fn capacity(&self, job: Option<i64>) -> Option<i64> {
        let host = self.max_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        match (job, host) {
            (Some(j), Some(h)) => Some(j.min(h)),
            (Some(j), None) => Some(j),
            (None, Some(h)) => Some(h),
            (None, None) => match self.backend {
                Backend::Sftp(_) => Some(SFTP_DEFAULT_CAPACITY),
                Backend::Local(_) | Backend::S3(_) => None,
            },
        }
    }

    /// The store lock, waited for as long as the request is wanted.
    fn lock(&self, cancel: &Cancel) -> Result<MutexGuard<'_, ()>, CacheError> {
        loop {
            match self.lock.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(TryLockError::Poisoned(e)) => return Ok(e.into_inner()),
                Err(TryLockError::WouldBlock) if cancel.is_set() => {
                    return Err(CacheError::Abandoned)
                }
                Err(TryLockError::WouldBlock) => std::thread::sleep(LOCK_POLL),
            }
        }
    }

    /// Commits a staged archive of `size` bytes under `key`, first removing
    /// keys in the order `by` until it fits in `capacity` (the caller made
    /// sure it fits alone; staged files of other stores count as used).
    /// Returns the removed keys and whether this archive was the one kept.
    pub fn put(
        &self,
        key: &str,
        staged: &Path,
        size: u64,
        capacity: Option<i64>,
        by: CleanupBy,
        call: &Call<'_>,
    ) -> Result<(Vec<Entry>, bool), CacheError> {
        let _guard = self.lock(call.cancel)?;
        let listing = self.backend.listing(call)?;
        self.backend.remove_abandoned(&listing.staged, call);
        let mut evicted = Vec::new();
        if let Some(capacity) = capacity {
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            let mut used = i64::try_from(listing.used(Some(key), Some(staged))).unwrap_or(i64::MAX);
            let mut entries: Vec<Entry> = listing
                .entries
                .into_iter()
                .filter(|e| e.key != key)
                .collect();
            order_for_removal(&mut entries, by);
            for victim in entries {
                if capacity - used >= size {
                    break;
                }
                match self.backend.delete(&victim.key, call) {
                    Ok(()) | Err(CacheError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                used -= victim.size as i64;
                evicted.push(victim);
            }
        }
        let kept = self.backend.commit(key, staged, call)?;
        Ok((evicted, kept))
    }

    /// What the cache holds (archives on their way in included) and what
    /// is left of `capacity`.
    pub fn usage(&self, capacity: Option<i64>, call: &Call<'_>) -> Result<Usage, CacheError> {
        let used = self.backend.listing(call)?.used(None, None);
        let free = match capacity {
            Some(c) => Some(c.saturating_sub(i64::try_from(used).unwrap_or(i64::MAX))),
            None => self
                .backend
                .free()?
                .map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
        };
        Ok(Usage { used, free })
    }

    pub fn clear(&self, call: &Call<'_>) -> Result<usize, CacheError> {
        let _guard = self.lock(call.cancel)?;
        let entries = self.backend.list(call)?;
        for e in &entries {
            match self.backend.delete(&e.key, call) {
                Ok(()) | Err(CacheError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.backend.cleared(call)?;
        Ok(entries.len())
    }
}

/// Sorts entries so that the first is the first to go: the oldest stored,
/// the least recently accessed, or the smallest (the toolbox's `SIZE`).
fn order_for_removal(entries: &mut [Entry], by: CleanupBy) {
    match by {
        CleanupBy::StoreTime => entries.sort_by_key(|e| (e.stored_ms, e.key.clone())),
        CleanupBy::AccessTime => entries.sort_by_key(|e| (e.accessed_ms, e.key.clone())),
        CleanupBy::Size => entries.sort_by_key(|e| (e.size, e.stored_ms, e.key.clone())),
    }
}

/// Milliseconds since the epoch of a file time.
pub fn unix_ms(t: std::io::Result<std::time::SystemTime>) -> u64 {
    t.ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, size: u64, stored_ms: u64, accessed_ms: u64) -> Entry {
        Entry {
            key: key.into(),
            size,
            stored_ms,
            accessed_ms,
        }
    }

    #[test]
    fn removal_orders() {
        let all = vec![e("a", 5, 1, 9), e("b", 9, 2, 3), e("c", 1, 3, 1)];
        let keys = |by| {
            let mut v = all.clone();
            order_for_removal(&mut v, by);
            v.into_iter().map(|e| e.key).collect::<Vec<_>>()
        };
        assert_eq!(keys(CleanupBy::StoreTime), ["a", "b", "c"]);
        assert_eq!(keys(CleanupBy::AccessTime), ["c", "b", "a"]);
        assert_eq!(keys(CleanupBy::Size), ["c", "a", "b"]);
    }
}
