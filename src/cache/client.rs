//! How `cache` talks to the agent on the host: over the Unix socket named
//! by `AGENT_CACHE_SOCKET`, one request per connection (`protocol.rs`); and
//! what every subcommand does first, as the toolbox initialises its backend.
//! Shared by `cli.rs` and `transfer.rs`; knows no subcommand.
//!
//! A job that names its own SFTP server (`SEMAPHORE_CACHE_BACKEND=sftp`)
//! names its key file too: `cache` reads it here, in the job, where the
//! path means what the job meant, and hands its content over with each
//! request. It refuses, unread, what is not a regular file (a FIFO, a
//! device would never end a read) or is larger than any key.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::config::{ENV_BACKEND, ENV_KEY_PATH};
use super::error::CacheError;
use super::keys;
use super::output::{go_errno, Out};
use super::protocol::{self, Envelope, JobKey, Reply, Request, FROM_AGENT, MAX_KEY_BYTES};
use super::SOCKET_ENV;

/// What a command ends with: an exit code, or the error path.
pub type Outcome = Result<u8, CacheError>;

/// What every command does first, as the toolbox initialises its backend:
/// the job must have a cache, and a `CACHE_SIZE` that does not parse is
/// said to be ignored. Returns the job's capacity in bytes, if it set one.
pub fn init(out: &mut Out) -> Result<Option<i64>, CacheError> {
    socket_path()?;
    Ok(cache_size(out))
}

/// `CACHE_SIZE` in KiB, as bytes.
fn cache_size(out: &mut Out) -> Option<i64> {
    let value = std::env::var("CACHE_SIZE").ok().filter(|v| !v.is_empty())?;
    match value.parse::<i64>() {
        Ok(kib) => Some(kib.saturating_mul(1024)),
        Err(_) => {
            out.say(&format!(
                "Couldn't parse CACHE_SIZE value of '{value}' - using default value for storage backend"
            ));
            None
        }
    }
}

fn socket_path() -> Result<PathBuf, CacheError> {
    std::env::var_os(SOCKET_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            CacheError::Usage(format!(
                "no cache in this session ({SOCKET_ENV} is not set)"
            ))
        })
}

pub fn connect() -> Result<UnixStream, CacheError> {
    let path = socket_path()?;
    UnixStream::connect(&path).map_err(|e| {
        CacheError::Usage(format!(
            "cannot reach the agent's cache at {}: {e}",
            path.display()
        ))
    })
}

/// One request, one reply.
pub fn ask(request: &Request) -> Result<Reply, CacheError> {
    let mut conn = connect()?;
    request_on(&mut conn, request)
}

/// Sends `request` and reads the agent's first reply. An agent that turns
/// a connection away answers before it reads: its answer is read even when
/// the request could not be sent.
pub fn request_on(conn: &mut UnixStream, request: &Request) -> Result<Reply, CacheError> {
    let envelope = Envelope {
        request: request.clone(),
        sftp_key: job_key().clone(),
        s3_keys: job_s3_keys(),
    };
    let sent = protocol::write_json(conn, &envelope).map_err(CacheError::Channel);
    match (reply(conn), sent) {
        (Err(CacheError::Channel(_)), Err(e)) => Err(e),
        (answer, _) => answer,
    }
}

/// The agent's next reply; its error as the error path's.
pub fn reply(conn: &mut impl Read) -> Result<Reply, CacheError> {
    match protocol::read_json(conn, FROM_AGENT).map_err(CacheError::Channel)? {
        Reply::Error { message } => Err(CacheError::Remote(message)),
        reply => Ok(reply),
    }
}

/// The S3 credentials in the job's environment when it names a bucket
/// (`SEMAPHORE_CACHE_BACKEND=s3`): `SEMAPHORE_CACHE_S3_KEY` and `_SECRET`,
/// else the SDKs' `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN`. The agent uses them only for a bucket of the job's
/// own, never for its own bucket.
fn job_s3_keys() -> Option<crate::cache::aws::Keys> {
    use super::config::{ENV_AWS_KEY, ENV_AWS_SECRET, ENV_AWS_TOKEN, ENV_S3_KEY, ENV_S3_SECRET};
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    if var(ENV_BACKEND).as_deref() != Some("s3") {
        return None;
    }
    let keys = |key: Option<String>, secret: Option<String>, token| {
        Some(crate::cache::aws::Keys {
            key: key?,
            secret: secret?,
            token,
        })
    };
    keys(var(ENV_S3_KEY), var(ENV_S3_SECRET), None)
        .or_else(|| keys(var(ENV_AWS_KEY), var(ENV_AWS_SECRET), var(ENV_AWS_TOKEN)))
}

/// The SFTP key the job names, read once per run; None when the job does
/// not choose SFTP or names no key.
fn job_key() -> &'static Option<JobKey> {
    static KEY: OnceLock<Option<JobKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        if var(ENV_BACKEND).as_deref() != Some("sftp") {
            return None;
        }
        let named = var(ENV_KEY_PATH)?;
        Some(match read_key(&named) {
            Ok(text) => JobKey::Content(text),
            Err(why) => JobKey::Unusable(format!("cannot use the SFTP key {named}: {why}")),
        })
    })
}

/// The key file at `named` (a leading `~` is `$HOME`, as the toolbox
/// reads it): a regular file of at most `MAX_KEY_BYTES` of text.
fn read_key(named: &str) -> Result<String, String> {
    let path = match named.strip_prefix('~') {
        Some(rest) => PathBuf::from(format!(
            "{}{rest}",
            std::env::var("HOME").unwrap_or_default()
        )),
        None => PathBuf::from(named),
    };
    // Non-blocking: opening a FIFO must not wait for a writer.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .map_err(|e| go_errno(&e))?;
    let meta = file.metadata().map_err(|e| go_errno(&e))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let too_large = || {
        format!(
            "larger than {} KiB: not a private key",
            MAX_KEY_BYTES / 1024
        )
    };
    if meta.len() > MAX_KEY_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| go_errno(&e))?;
    if bytes.len() as u64 > MAX_KEY_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| "not a text file: not a private key".to_string())
}

pub fn unexpected(reply: Reply) -> CacheError {
    CacheError::Remote(format!("unexpected answer from the agent: {reply:?}"))
}

/// Normalises a key, saying so when it changed.
pub fn normalized(out: &mut Out, raw: &str) -> String {
    let key = keys::normalize(raw);
    if key != raw {
        out.say(&format!("Key '{raw}' is normalized to '{key}'."));
    }
    key
}
