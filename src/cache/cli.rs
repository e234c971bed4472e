//! `cache`, the program a job runs: the agent's own binary started under
//! that name (or as `agent cache`). It speaks the toolbox's command line,
//! packs and unpacks archives itself, and asks the agent on the host to keep
//! them, over the socket named by `AGENT_CACHE_SOCKET`.
//!
//! Exit codes follow the toolbox: `store` and `restore` exit 0 even when
//! the cache could not help (a miss, an existing key, an unreachable
//! backend), so that a job never fails because of its cache; the error is
//! printed. `has_key` and `is_not_empty` answer with 0 or 1; `delete` of a
//! missing key, a bad command line or a broken backend exit 1.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::archive;
use super::autodetect;
use super::error::{human, CacheError};
use super::keys;
use super::protocol::{self, DataReader, DataWriter, Reply, Request};
use super::SOCKET_ENV;

const USAGE: &str = "usage: cache store [KEY PATH]
       cache restore [KEY[,KEY...]]
       cache has_key KEY
       cache list
       cache delete KEY
       cache clear
       cache usage
       cache is_not_empty

Without arguments, store and restore find the usual lock files in the
current directory and use keys made of the branch and their checksum.";

/// Runs `cache ARGS...` and returns its exit code.
pub fn main(args: &[String]) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        [] | ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        ["store"] => store_detected(),
        ["store", key, path] => {
            store(key, Path::new(path));
            Ok(true)
        }
        ["restore"] => restore_detected(),
        ["restore", keys] => {
            restore(keys);
            Ok(true)
        }
        ["has_key", key] => has_key(key),
        ["list"] => list(),
        ["delete", key] => delete(key),
        ["clear"] => clear(),
        ["usage"] => usage(),
        ["is_not_empty"] => is_not_empty(),
        _ => Err(CacheError::Usage(format!(
            "unknown command line: cache {}\n{USAGE}",
            args.join(" ")
        ))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cache: {e}");
            ExitCode::from(1)
        }
    }
}

fn connect() -> Result<UnixStream, CacheError> {
    let Some(path) = std::env::var_os(SOCKET_ENV) else {
        return Err(CacheError::Usage(format!(
            "no cache in this session ({SOCKET_ENV} is not set)"
        )));
    };
    UnixStream::connect(&path).map_err(|e| {
        CacheError::Usage(format!(
            "cannot reach the agent's cache at {}: {e}",
            PathBuf::from(path).display()
        ))
    })
}

/// One request, one reply.
fn ask(request: &Request) -> Result<Reply, CacheError> {
    let mut conn = connect()?;
    protocol::write_json(&mut conn, request).map_err(CacheError::Channel)?;
    match protocol::read_json(&mut conn).map_err(CacheError::Channel)? {
        Reply::Error { message } => Err(CacheError::Remote(message)),
        reply => Ok(reply),
    }
}

fn unexpected(reply: Reply) -> CacheError {
    CacheError::Remote(format!("unexpected answer from the agent: {reply:?}"))
}

fn secs(since: Instant) -> String {
    format!("{:.2}s", since.elapsed().as_secs_f64())
}

fn cwd() -> Result<PathBuf, CacheError> {
    std::env::current_dir().map_err(|e| CacheError::io("cannot read the current directory", ".", e))
}

/// `cache store KEY PATH`; prints what happened, errors included.
pub fn store(key: &str, path: &Path) {
    if let Err(e) = try_store(key, path) {
        eprintln!("cache: {e}");
    }
}

fn try_store(key: &str, path: &Path) -> Result<(), CacheError> {
    let started = Instant::now();
    let key = keys::normalize(key);
    keys::check(&key)?;
    let cwd = cwd()?;
    if std::fs::symlink_metadata(cwd.join(path)).is_err() {
        println!(
            "'{}' does not exist; nothing stored under '{key}'.",
            path.display()
        );
        return Ok(());
    }
    let mut conn = connect()?;
    protocol::write_json(&mut conn, &Request::Store { key: key.clone() })
        .map_err(CacheError::Channel)?;
    match protocol::read_json(&mut conn).map_err(CacheError::Channel)? {
        Reply::Ready => {}
        Reply::Exists => {
            println!("Key '{key}' already exists; not stored again.");
            return Ok(());
        }
        Reply::Error { message } => return Err(CacheError::Remote(message)),
        other => return Err(unexpected(other)),
    }
    let data = DataWriter::new(&conn);
    let (counts, data) =
        archive::pack(path, &cwd, data).map_err(|e| CacheError::io("cannot pack", path, e))?;
    data.finish().map_err(CacheError::Channel)?;
    match protocol::read_json(&mut conn).map_err(CacheError::Channel)? {
        Reply::Stored { size, evicted } => {
            for old in evicted {
                println!("Removed '{old}' to make room.");
            }
            println!(
                "Stored '{key}': {} ({} of files) as {} in {}.",
                path.display(),
                human(counts.bytes),
                human(size),
                secs(started)
            );
            Ok(())
        }
        Reply::Error { message } => Err(CacheError::Remote(message)),
        other => Err(unexpected(other)),
    }
}

/// `cache restore KEY[,KEY...]`: the first key that hits is restored.
/// Returns whether one did.
pub fn restore(list: &str) -> bool {
    for wanted in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        match try_restore(wanted) {
            Ok(true) => return true,
            Ok(false) => println!("MISS '{}'", keys::normalize(wanted)),
            Err(e) => {
                eprintln!("cache: {e}");
                return false;
            }
        }
    }
    false
}

fn try_restore(wanted: &str) -> Result<bool, CacheError> {
    let started = Instant::now();
    let wanted = keys::normalize(wanted);
    let mut conn = connect()?;
    protocol::write_json(
        &mut conn,
        &Request::Restore {
            key: wanted.clone(),
        },
    )
    .map_err(CacheError::Channel)?;
    let (key, size) = match protocol::read_json(&mut conn).map_err(CacheError::Channel)? {
        Reply::Miss => return Ok(false),
        Reply::Hit { key, size } => (key, size),
        Reply::Error { message } => return Err(CacheError::Remote(message)),
        other => return Err(unexpected(other)),
    };
    let cwd = cwd()?;
    let data = DataReader::new(BufReader::with_capacity(1024 * 1024, &conn));
    let restored = archive::unpack(data, &cwd)
        .map_err(|e| CacheError::Remote(format!("cannot restore '{key}': {e}")))?;
    let via = if key == wanted {
        String::new()
    } else {
        format!(" (matched by '{wanted}')")
    };
    println!(
        "HIT '{key}'{via}: {} restored, {} ({} of files) in {}.",
        restored.path,
        human(size),
        human(restored.counts.bytes),
        secs(started)
    );
    Ok(true)
}

fn has_key(key: &str) -> Result<bool, CacheError> {
    let key = keys::normalize(key);
    match ask(&Request::HasKey { key: key.clone() })? {
        Reply::HasKey { exists: true } => {
            println!("Key '{key}' exists in the cache.");
            Ok(true)
        }
        Reply::HasKey { exists: false } => {
            println!("Key '{key}' does not exist in the cache.");
            Ok(false)
        }
        other => Err(unexpected(other)),
    }
}

fn list() -> Result<bool, CacheError> {
    let Reply::List { mut entries } = ask(&Request::List)? else {
        return Err(CacheError::Remote("unexpected answer to list".into()));
    };
    entries.sort_by(|a, b| b.stored_ms.cmp(&a.stored_ms).then(a.key.cmp(&b.key)));
    if entries.is_empty() {
        println!("The cache is empty.");
        return Ok(true);
    }
    let width = entries
        .iter()
        .map(|e| e.key.len())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:<width$}  {:>10}  STORED", "KEY", "SIZE");
    for e in &entries {
        let _ = writeln!(
            out,
            "{:<width$}  {:>10}  {}",
            e.key,
            human(e.size),
            utc(e.stored_ms)
        );
    }
    Ok(true)
}

fn delete(key: &str) -> Result<bool, CacheError> {
    let key = keys::normalize(key);
    match ask(&Request::Delete { key: key.clone() })? {
        Reply::Deleted => {
            println!("Deleted '{key}'.");
            Ok(true)
        }
        other => Err(unexpected(other)),
    }
}

fn clear() -> Result<bool, CacheError> {
    match ask(&Request::Clear)? {
        Reply::Cleared { keys } => {
            println!("Deleted {keys} key(s); the cache is empty.");
            Ok(true)
        }
        other => Err(unexpected(other)),
    }
}

fn usage() -> Result<bool, CacheError> {
    match ask(&Request::Usage)? {
        Reply::Usage { used, free } => {
            let free = free.map(human).unwrap_or_else(|| "unknown".into());
            println!("Used: {}. Free: {free}.", human(used));
            Ok(true)
        }
        other => Err(unexpected(other)),
    }
}

fn is_not_empty() -> Result<bool, CacheError> {
    match ask(&Request::List)? {
        Reply::List { entries } => Ok(!entries.is_empty()),
        other => Err(unexpected(other)),
    }
}

fn store_detected() -> Result<bool, CacheError> {
    let found = autodetect::detect(&cwd()?, &autodetect::Env::from_process());
    if found.is_empty() {
        println!("Nothing to store: no known lock file in this directory.");
    }
    for d in found {
        println!("Detected {}.", d.lockfile);
        store(&d.key, &d.path);
    }
    Ok(true)
}

fn restore_detected() -> Result<bool, CacheError> {
    let found = autodetect::detect(&cwd()?, &autodetect::Env::from_process());
    if found.is_empty() {
        println!("Nothing to restore: no known lock file in this directory.");
    }
    for d in found {
        println!("Detected {}.", d.lockfile);
        restore(&d.restore_keys.join(","));
    }
    Ok(true)
}

/// `2026-11-29 20:01:02 UTC` for Unix milliseconds.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The date of a day number since 1970-01-01 (the proleptic Gregorian
/// calendar; Howard Hinnant's well-known algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number since 1970-01-01 of a date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [-1000, 0, 59, 60, 11_016, 20_000, 30_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(utc(1_000_000_000_000), "2001-09-09 01:46:40 UTC");
    }
}
