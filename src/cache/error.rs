//! What can go wrong with the cache, on either side of the socket. Messages
//! are written for the job log; `cli.rs` prefixes them with `cache: `.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum CacheError {
    /// No archive is stored under the key.
    NotFound(String),
    /// A key the backend cannot hold (empty, a control character, ...).
    BadKey { key: String, reason: &'static str },
    /// The backend's disk (or quota) is full.
    NoSpace(io::Error),
    /// One archive is larger than the whole cache may be.
    TooLarge { key: String, size: u64, limit: u64 },
    /// The SFTP server did not answer in time or refused the login.
    Unreachable { server: String, detail: String },
    /// An `sftp` command failed once connected.
    Sftp { server: String, detail: String },
    /// The stored archive cannot be read back; nothing was restored.
    Corrupt { key: String, source: io::Error },
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    /// The socket to the agent broke, or the other side spoke nonsense.
    Channel(io::Error),
    /// An error the agent reported over the socket.
    Remote(String),
    /// The command line is wrong.
    Usage(String),
}

impl CacheError {
    /// An I/O error on `path`; a full disk becomes `NoSpace`.
    pub fn io(what: &str, path: impl Into<PathBuf>, source: io::Error) -> CacheError {
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            return CacheError::NoSpace(source);
        }
        CacheError::Io {
            what: what.to_string(),
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::NotFound(key) => write!(f, "key '{key}' not found"),
            CacheError::BadKey { key, reason } => write!(f, "invalid key '{key}': {reason}"),
            CacheError::NoSpace(_) => f.write_str("no space left on the cache backend"),
            CacheError::TooLarge { key, size, limit } => write!(
                f,
                "the archive of '{key}' is {} but the cache holds at most {}; not stored",
                human(*size),
                human(*limit)
            ),
            CacheError::Unreachable { server, detail } => {
                write!(f, "cannot reach the SFTP cache server {server}: {detail}")
            }
            CacheError::Sftp { server, detail } => {
                write!(f, "the SFTP cache server {server} failed: {detail}")
            }
            CacheError::Corrupt { key, source } => write!(
                f,
                "the archive of '{key}' is corrupt ({source}); nothing was restored"
            ),
            CacheError::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
            CacheError::Channel(e) => write!(f, "lost the connection to the agent: {e}"),
            CacheError::Remote(message) | CacheError::Usage(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CacheError::NoSpace(e)
            | CacheError::Corrupt { source: e, .. }
            | CacheError::Io { source: e, .. }
            | CacheError::Channel(e) => Some(e),
            _ => None,
        }
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(200 * 1024 * 1024), "200.0 MiB");
    }

    #[test]
    fn a_full_disk_is_no_space() {
        let e = CacheError::io("cannot write", "/x", io::Error::from_raw_os_error(28));
        assert_eq!(e.to_string(), "no space left on the cache backend");
    }
}
