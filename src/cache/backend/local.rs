//! The local-directory backend: one file per key in the cache directory,
//! named exactly as the key, its mtime the store time and its atime (set on
//! each restore) the access time. Incoming archives are written under a
//! hidden temporary name (`.incoming-...`, which no key may start with) and
//! linked under the key, which never replaces an existing archive: two
//! concurrent stores of a key leave the first complete one.

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{unix_ms, Entry, Fetched, STAGED_PREFIX};
use crate::cache::error::CacheError;
use crate::process::sys;
use crate::util::random_hex;

/// Staged files older than this are left over from a crash.
const STALE_STAGED: Duration = Duration::from_secs(24 * 3600);

pub struct Local {
    dir: PathBuf,
}

impl Local {
    pub fn open(dir: &Path) -> Result<Local, CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CacheError::io("cannot create the cache directory", dir, e))?;
        let local = Local {
            dir: dir.to_path_buf(),
        };
        local.remove_stale();
        Ok(local)
    }

    fn remove_stale(&self) {
        let Ok(read) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in read.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_STAGED);
            if stale
                && entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(STAGED_PREFIX)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    pub fn list(&self) -> Result<Vec<Entry>, CacheError> {
        let read = fs::read_dir(&self.dir)
            .map_err(|e| CacheError::io("cannot read the cache directory", &self.dir, e))?;
        let mut entries = Vec::new();
        for entry in read {
            let entry = entry
                .map_err(|e| CacheError::io("cannot read the cache directory", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGED_PREFIX) {
                continue;
            }
            // A key deleted meanwhile is simply not listed.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            entries.push(Entry {
                key: name,
                size: meta.len(),
                stored_ms: unix_ms(meta.modified()),
                accessed_ms: unix_ms(meta.accessed()),
            });
        }
        entries.sort_by(|a, b| b.stored_ms.cmp(&a.stored_ms).then(a.key.cmp(&b.key)));
        Ok(entries)
    }

    pub fn has(&self, key: &str) -> bool {
        self.path(key).is_file()
    }

    pub fn stage(&self) -> Result<(File, PathBuf), CacheError> {
        let path = self.dir.join(format!("{STAGED_PREFIX}{}", random_hex(8)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CacheError::io("cannot create", &path, e))?;
        Ok((file, path))
    }

    pub fn commit(&self, key: &str, staged: &Path) -> Result<bool, CacheError> {
        let dest = self.path(key);
        // A new store time, whatever the staged file's.
        if let Ok(f) = File::options().write(true).open(staged) {
            let now = SystemTime::now();
            let _ = f.set_times(FileTimes::new().set_modified(now).set_accessed(now));
        }
        let result = match fs::hard_link(staged, &dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(CacheError::io("cannot store", &dest, e)),
        };
        let _ = fs::remove_file(staged);
        result
    }

    pub fn fetch(&self, key: &str) -> Result<Fetched, CacheError> {
        let path = self.path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::NotFound(key.to_string()))
            }
            Err(e) => return Err(CacheError::io("cannot open", &path, e)),
        };
        // The access time drives `--cleanup-by access-time`; mounts with
        // noatime would not keep it.
        if let Ok(f) = File::options().write(true).open(&path) {
            let _ = f.set_times(FileTimes::new().set_accessed(SystemTime::now()));
        }
        Ok(Fetched {
            file,
            spooled: None,
        })
    }

    pub fn delete(&self, key: &str) -> Result<(), CacheError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(CacheError::NotFound(key.to_string()))
            }
            Err(e) => Err(CacheError::io("cannot delete", &path, e)),
        }
    }

    pub fn free(&self) -> Option<u64> {
        sys::available_bytes(&self.dir).ok()
    }
}
