//! Typed errors. Each variant says what failed and carries what is needed to
//! explain it; only `main` turns them into a message and an exit code.
//!
//! Convention (shared with the front's `FrontError`): a message ends with
//! its cause's message, and `source()` returns that cause, so `{e}` alone
//! explains an error and the chain stays inspectable.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::http::error::FrontError;
use crate::listen::error::ListenError;

/// A job request that cannot be accepted (422 from the server, exit 2 from `agent run`).
#[derive(Debug)]
pub enum RequestError {
    Syntax(String),
    /// The request body could not be read.
    Body(io::Error),
    /// A `job_id` (or `id`) outside the rule of `job::job_id`.
    JobId,
    /// Nothing in the document: empty, blank, only comments, or `null`.
    Empty,
    /// A file mode that is not octal permission bits.
    FileMode {
        path: String,
        mode: String,
    },
    UnknownExecutor(String),
    PushLogger,
    /// Listen mode pushes the log; the request's logger is not `push`.
    NotPushLogger(String),
    /// A push logger's URL the agent could never push to.
    LoggerUrl {
        url: String,
        reason: &'static str,
    },
    UnknownLogger(String),
    NoContainers,
    Compose(String),
    /// A callback URL the agent could never call (§7.1).
    CallbackUrl {
        field: &'static str,
        url: String,
        reason: &'static str,
    },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Syntax(e) => write!(f, "invalid job request: {e}"),
            RequestError::Body(e) => write!(f, "cannot read the request body: {e}"),
            RequestError::JobId => write!(
                f,
                "invalid job_id: a job id is {}",
                crate::job::job_id::JOB_ID_RULE
            ),
            RequestError::Empty => write!(
                f,
                "invalid job request: it is empty (see examples/hello.yaml for one that runs)"
            ),
            RequestError::FileMode { path, mode } => write!(
                f,
                "invalid job request: file {path} has mode '{mode}'; give octal permission bits such as \"0644\""
            ),
            RequestError::UnknownExecutor(e) => write!(f, "unknown executor type '{e}'"),
            RequestError::PushLogger => write!(
                f,
                "logger method 'push' is only available in listener mode; use 'pull'"
            ),
            RequestError::NotPushLogger(m) => write!(
                f,
                "logger method '{m}' is not available in listen mode; use 'push' with a URL"
            ),
            RequestError::LoggerUrl { url, reason } => {
                write!(f, "invalid logger.url {url:?}: {reason}")
            }
            RequestError::UnknownLogger(m) => write!(f, "unknown logger type '{m}'"),
            RequestError::NoContainers => {
                write!(f, "a dockercompose job needs at least one container")
            }
            RequestError::Compose(e) => write!(f, "invalid compose request: {e}"),
            RequestError::CallbackUrl { field, url, reason } => {
                write!(f, "invalid callbacks.{field} {url:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for RequestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RequestError::Body(e) => Some(e),
            _ => None,
        }
    }
}

/// Anything that stops the agent itself from doing its work.
#[derive(Debug)]
pub enum Error {
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    Spawn {
        program: String,
        source: io::Error,
    },
    Request(RequestError),
    /// A job file of `agent run` that cannot run.
    JobFile {
        path: PathBuf,
        source: RequestError,
    },
    /// No JWT secret was given.
    NoSecret,
    /// One of `--tls-cert-path` and `--tls-key-path` without the other.
    HalfTlsPair {
        given: &'static str,
        missing: &'static str,
    },
    /// A flag whose value cannot work.
    Flag {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    /// `--host` did not resolve to an address.
    Resolve {
        host: String,
    },
    /// The HTTPS front or its TLS material could not be set up.
    Front(FrontError),
    /// Listen mode's configuration, or its registration, failed.
    Listen(ListenError),
    /// The job's shell died or stayed silent before it was ready.
    SessionStart {
        status: Option<i32>,
        output: String,
    },
    /// A `--cache-*` flag (or `SEMAPHORE_CACHE_*` variable) that cannot work.
    CacheConfig(String),
    /// A `--docker-socket` that is none of the choices.
    DockerSocket {
        value: String,
        /// The choices, as the usage writes them.
        choices: &'static str,
    },
    /// The cache's backend could not be opened.
    Cache(crate::cache::error::CacheError),
    /// `--job-user` cannot work, or a job's user could not be made.
    JobUser(String),
}

impl Error {
    pub fn io(what: &str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            what: what.to_string(),
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
            Error::Spawn { program, source } => write!(f, "cannot start {program}: {source}"),
            Error::Request(e) => e.fmt(f),
            Error::JobFile { path, source } => write!(f, "{}: {source}", path.display()),
            Error::NoSecret => f.write_str(
                "no JWT secret: give --auth-token-secret, --auth-token-secret-file or AGENT_AUTH_TOKEN_SECRET",
            ),
            Error::Flag {
                flag,
                value,
                reason,
            } => write!(f, "{flag} {value}: {reason}"),
            Error::Resolve { host } => write!(f, "cannot resolve --host {host}"),
            Error::HalfTlsPair { given, missing } => {
                write!(f, "{given} needs {missing} too (or give neither for a self-signed pair)")
            }
            Error::Front(e) => e.fmt(f),
            Error::Listen(e) => e.fmt(f),
            Error::CacheConfig(message) | Error::JobUser(message) => f.write_str(message),
            Error::DockerSocket { value, choices } => write!(
                f,
                "--docker-socket {value:?} is not one of {choices}"
            ),
            Error::Cache(e) => write!(f, "cache: {e}"),
            Error::SessionStart { status, output } => {
                match status {
                    Some(code) => {
                        write!(f, "the shell exited with status {code} before it was ready")?
                    }
                    None => write!(f, "the shell was not ready in time")?,
                }
                if !output.is_empty() {
                    write!(f, ":\n{output}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::Spawn { source, .. } => Some(source),
            Error::JobFile { source, .. } => Some(source),
            // Transparent wrappers: their message is the inner one, so the
            // cause is the inner error's cause.
            Error::Request(e) => e.source(),
            Error::Front(e) => e.source(),
            Error::Listen(e) => e.source(),
            Error::Cache(e) => e.source(),
            Error::NoSecret
            | Error::Resolve { .. }
            | Error::Flag { .. }
            | Error::HalfTlsPair { .. }
            | Error::SessionStart { .. }
            | Error::CacheConfig(_)
            | Error::JobUser(_)
            | Error::DockerSocket { .. } => None,
        }
    }
}

impl From<FrontError> for Error {
    fn from(e: FrontError) -> Error {
        Error::Front(e)
    }
}

impl From<ListenError> for Error {
    fn from(e: ListenError) -> Error {
        Error::Listen(e)
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Error {
        Error::Request(e)
    }
}
