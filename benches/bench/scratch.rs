//! Scratch directories of the benchmarks, removed on drop unless a failure
//! asked to keep them for inspection.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::report::Failure;

/// A directory under the system temp dir, removed with its contents on drop
/// unless a failure asked to keep it for inspection.
pub struct Scratch {
    pub path: PathBuf,
    pub keep: Cell<bool>,
}

impl Scratch {
    pub fn new(label: &str) -> Result<Self, Failure> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("agent-bench-{}-{n}-{label}", std::process::id()));
        // A leftover from an earlier process with the same pid is stale.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| Failure::io("create scratch directory", e))?;
        Ok(Scratch {
            path,
            keep: Cell::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after all and says where it is, for a failure
    /// message.
    pub fn keep(&self) -> String {
        self.keep.set(true);
        format!("(files kept in {})", self.path.display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep.get() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
