//! What can go wrong with the cache, on either side of the socket. Messages
//! are written for the job log; `cache` prints them on its error path as
//! `error: MESSAGE`, as the toolbox does.

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
    /// The SFTP server did not answer in time or refused the login.
    Unreachable { server: String, detail: String },
    /// An `sftp` command failed once connected.
    Sftp { server: String, detail: String },
    /// No endpoint of the S3 cache answered, after every try.
    S3Unreachable { bucket: String, detail: String },
    /// The S3 cache answered with an error.
    S3 { bucket: String, detail: String },
    /// The stored archive cannot be read back; nothing was restored.
    Corrupt { key: String, source: io::Error },
    /// The stored archive breaks the rules of restore (a `..` name, a write
    /// through a symlink it made); nothing was restored.
    Refused { key: String, source: io::Error },
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    /// The socket to the agent broke, or the other side spoke nonsense.
    Channel(io::Error),
    /// An error the agent reported over the socket.
    Remote(String),
    /// The job has no cache, or cannot reach the agent's.
    Usage(String),
    /// A `--cleanup-by` or `--sort-by` value the toolbox does not know.
    BadSortField(String),
    /// The archive of a path could not be made.
    Pack { path: String, source: io::Error },
    /// The request's work stopped: its job ended, or its client left.
    /// Nobody reads this but the agent log.
    Abandoned,
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
            CacheError::Unreachable { server, detail } => {
                write!(f, "cannot reach the SFTP cache server {server}: {detail}")
            }
            CacheError::Sftp { server, detail } => {
                write!(f, "the SFTP cache server {server} failed: {detail}")
            }
            CacheError::S3Unreachable { bucket, detail } => {
                write!(f, "cannot reach the S3 cache bucket {bucket}: {detail}")
            }
            CacheError::S3 { bucket, detail } => {
                write!(f, "the S3 cache bucket {bucket} failed: {detail}")
            }
            CacheError::Corrupt { key, source } => write!(
                f,
                "the archive of '{key}' is corrupt ({source}); nothing was restored"
            ),
            CacheError::Refused { key, source } => write!(
                f,
                "the archive of '{key}' is refused ({source}); nothing was restored"
            ),
            CacheError::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
            CacheError::Channel(e) => write!(f, "lost the connection to the agent: {e}"),
            CacheError::Remote(message) | CacheError::Usage(message) => f.write_str(message),
            CacheError::BadSortField(value) => {
                write!(f, "sorting keys by '{value}' is not supported")
            }
            CacheError::Pack { path, source } => write!(f, "error compressing {path}: {source}"),
            CacheError::Abandoned => {
                f.write_str("abandoned: the job has ended or its `cache` has left")
            }
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CacheError::NoSpace(e)
            | CacheError::Corrupt { source: e, .. }
            | CacheError::Refused { source: e, .. }
            | CacheError::Io { source: e, .. }
            | CacheError::Pack { source: e, .. }
            | CacheError::Channel(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_no_space() {
        let e = CacheError::io("cannot write", "/x", io::Error::from_raw_os_error(28));
        assert_eq!(e.to_string(), "no space left on the cache backend");
    }
}
