//! The toolbox's metrics file, `/tmp/toolbox_metrics`, is a fixed path of
//! the host that `cache` and `checkout` append to when a job turns metrics
//! on. A test that does so holds `MetricsFile`: such tests take turns (an
//! `flock` on a file in the target directory), and the file is left as the
//! test found it, or removed if it was not there.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The toolbox's path.
pub const PATH: &str = "/tmp/toolbox_metrics";

pub struct MetricsFile {
    /// Locked for the test's whole run; closing it releases the lock.
    _lock: File,
    /// The content and mode found, if the file was there.
    found: Option<(Vec<u8>, u32)>,
}

impl MetricsFile {
    pub fn take() -> MetricsFile {
        let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("toolbox_metrics.lock");
        let lock = File::create(&lock_path).expect("create the metrics lock");
        // SAFETY: flock on a descriptor this function owns; it blocks until
        // the test that holds the lock drops its `MetricsFile`.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock {}", lock_path.display());
        let found = fs::read(PATH).ok().map(|bytes| {
            let mode = fs::metadata(PATH).map_or(0o600, |m| m.permissions().mode() & 0o777);
            (bytes, mode)
        });
        MetricsFile { _lock: lock, found }
    }

    /// Whether the file was there before the test.
    pub fn existed(&self) -> bool {
        self.found.is_some()
    }
}

impl Drop for MetricsFile {
    fn drop(&mut self) {
        match &self.found {
            None => {
                let _ = fs::remove_file(PATH);
            }
            Some((bytes, mode)) => {
                let _ = fs::write(PATH, bytes);
                let _ = fs::set_permissions(PATH, fs::Permissions::from_mode(*mode));
            }
        }
    }
}
