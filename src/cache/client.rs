//! How `cache` talks to the agent on the host: over the Unix socket named
//! by `AGENT_CACHE_SOCKET`, one request per connection (`protocol.rs`); and
//! what every subcommand does first, as the toolbox initialises its backend.
//! Shared by `cli.rs` and `transfer.rs`; knows no subcommand.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::error::CacheError;
use super::keys;
use super::output::Out;
use super::protocol::{self, Reply, Request};
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
    send(&mut conn, request)?;
    reply(&mut conn)
}

pub fn send(conn: &mut impl Write, request: &Request) -> Result<(), CacheError> {
    protocol::write_json(conn, request).map_err(CacheError::Channel)
}

/// The agent's next reply; its error as the error path's.
pub fn reply(conn: &mut impl Read) -> Result<Reply, CacheError> {
    match protocol::read_json(conn).map_err(CacheError::Channel)? {
        Reply::Error { message } => Err(CacheError::Remote(message)),
        reply => Ok(reply),
    }
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
