//! The local-directory backend: one file per key in the cache directory,
//! named exactly as the key, its mtime the store time and its atime (set on
//! each restore) the access time. Incoming archives are written under a
//! hidden temporary name (`.incoming-...`, which no key may start with) and
//! linked under the key, which never replaces an existing archive: two
//! concurrent stores of a key leave the first complete one. A staged file
//! counts towards the cache's usage while it is there; one that no store
//! holds (`staging.rs`) is removed when the agent starts and before each
//! store.

use std::fs::{self, File, FileTimes};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::staging::{self, Staged};
use super::{unix_ms, Entry, Fetched, Listing, STAGED_PREFIX};
use crate::cache::error::CacheError;
use crate::process::sys;

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
        staging::remove_abandoned(dir, STAGED_PREFIX);
        Ok(Local {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    pub fn listing(&self) -> Result<Listing, CacheError> {
        let read = fs::read_dir(&self.dir)
            .map_err(|e| CacheError::io("cannot read the cache directory", &self.dir, e))?;
        let mut listing = Listing::default();
        for entry in read {
            let entry = entry
                .map_err(|e| CacheError::io("cannot read the cache directory", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // A key deleted meanwhile is simply not listed.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let found = Entry {
                size: meta.len(),
                stored_ms: unix_ms(meta.modified()),
                accessed_ms: unix_ms(meta.accessed()),
                key: name,
            };
            if found.key.starts_with(STAGED_PREFIX) {
                listing.staged.push(found);
            } else {
                listing.entries.push(found);
            }
        }
        listing
            .entries
            .sort_by(|a, b| b.stored_ms.cmp(&a.stored_ms).then(a.key.cmp(&b.key)));
        Ok(listing)
    }

    pub fn has(&self, key: &str) -> bool {
        self.path(key).is_file()
    }

    pub fn stage(&self) -> Result<(File, Staged), CacheError> {
        staging::remove_abandoned(&self.dir, STAGED_PREFIX);
        staging::create(&self.dir, STAGED_PREFIX)
    }

    pub fn commit(&self, key: &str, staged: &Path) -> Result<bool, CacheError> {
        let dest = self.path(key);
        // A new store time, whatever the staged file's.
        if let Ok(f) = File::options().write(true).open(staged) {
            let now = SystemTime::now();
            let _ = f.set_times(FileTimes::new().set_modified(now).set_accessed(now));
        }
        match fs::hard_link(staged, &dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(CacheError::io("cannot store", &dest, e)),
        }
    }

    pub fn fetch(&self, key: &str) -> Result<Fetched<'static>, CacheError> {
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
        Ok(Fetched::file(file, None))
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
