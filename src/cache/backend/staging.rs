//! Files on their way into or out of the cache on this host: a local
//! store's `.incoming-*` in the cache directory, an SFTP transfer's `up-*`
//! and `down-*` in the spool directory. The process that makes one holds an
//! exclusive `flock` on it for as long as it is in use, and the lock goes
//! with the process, so a file nobody holds is known to be left over from
//! a crash (`kill -9`, a power cut): it is removed when the agent starts and
//! before each new one is made, whatever its age. A file another agent
//! sharing the directory is writing is held, and never touched.
//!
//! The lock is taken just after the file is made. A cleaner that slips in
//! between and removes the file is noticed (the name no longer leads to the
//! file that was locked) and another name is tried.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::cache::error::CacheError;
use crate::process::sys;
use crate::util::random_hex;

/// A staged file, locked while this value lives and removed when it goes
/// (a committed archive has been linked or uploaded under its key by then).
pub struct Staged {
    path: PathBuf,
    _lock: File,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets go of the file without removing it: unheld, a later cleaner
    /// finds it.
    pub fn keep(mut self) {
        self.path = PathBuf::new();
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether `path` still names the file open as `file`.
fn still_named(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => named.dev() == open.dev() && named.ino() == open.ino(),
        _ => false,
    }
}

/// Makes a new file `PREFIX<random>` in `dir`, locked. Returns the file
/// (open for reading and writing) and the guard that removes it.
pub fn create(dir: &Path, prefix: &str) -> Result<(File, Staged), CacheError> {
    let mut last = None;
    for _ in 0..8 {
        let path = dir.join(format!("{prefix}{}", random_hex(8)));
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CacheError::io("cannot create", &path, e)),
        };
        let locked =
            sys::try_lock_exclusive(&file).map_err(|e| CacheError::io("cannot lock", &path, e))?;
        if locked && still_named(&path, &file) {
            let lock = file
                .try_clone()
                .map_err(|e| CacheError::io("cannot lock", &path, e))?;
            return Ok((file, Staged { path, _lock: lock }));
        }
        last = Some(path);
    }
    let path = last.unwrap_or_else(|| dir.to_path_buf());
    Err(CacheError::io(
        "cannot create",
        &path,
        io::Error::other("every name tried was taken"),
    ))
}

/// Removes the files `PREFIX*` of `dir` that no process holds. Errors are
/// ignored: what cannot be removed now is tried again next time.
pub fn remove_abandoned(dir: &Path, prefix: &str) {
    let Ok(read) = fs::read_dir(dir) else {
        return;
    };
    for entry in read.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if sys::try_lock_exclusive(&file).unwrap_or(false) && still_named(&path, &file) {
            if let Err(e) = fs::remove_file(&path) {
                log::warn!("cannot remove {}: {e}", path.display());
            } else {
                log::info!(
                    "removed {}, left over from a transfer cut short",
                    path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_nobody_holds_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (_file, held) = create(dir.path(), "up-").unwrap();
        fs::write(dir.path().join("up-crashed"), "x").unwrap();
        fs::write(dir.path().join("known_hosts"), "x").unwrap();
        remove_abandoned(dir.path(), "up-");
        assert!(held.path().exists());
        assert!(!dir.path().join("up-crashed").exists());
        assert!(dir.path().join("known_hosts").exists());
        let path = held.path().to_path_buf();
        drop(held);
        assert!(!path.exists());
    }
}
