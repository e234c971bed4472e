//! `cache store` and `cache restore`, with and without arguments, printing
//! the toolbox's lines in the toolbox's order:
//!
//! ```text
//! Compressing PATH...
//! Compression complete. Duration: D. Size: S bytes.
//! Uploading 'PATH' with cache key 'K'...
//! Upload complete. Duration: D.
//!
//! HIT: 'CANDIDATE', using key 'K'.
//! Downloading key 'K'...
//! Download complete. Duration: D. Size: S bytes.
//! Unpacking '$TMPDIR/K-123'...
//! Unpack complete. Duration: D.
//! Restored: vendor/bundle/.
//! ```
//!
//! A store streams the archive to the agent as it is made (the job's disk
//! never holds it), so its compression time includes the transfer to the
//! agent and its upload time is the agent's commit to the backend; the
//! lines come out in the toolbox's order once each step is done. A restore
//! downloads into `$TMPDIR` first, as the toolbox does, checks the whole
//! archive there and only then unpacks it, so a damaged archive leaves the
//! job's files as they were.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::archive;
use super::args::Invocation;
use super::autodetect;
use super::client::{self, normalized, unexpected, Outcome};
use super::config::{CleanupBy, ARCHIVE_METHODS, ENV_ARCHIVE_METHOD};
use super::error::CacheError;
use super::format;
use super::output::{self, MetricsEvent, Out, Transfer};
use super::protocol::{DataReader, DataWriter, Reply, Request, FROM_AGENT};

/// What every store of one `cache store` shares.
struct StoreOptions {
    cleanup_by: Option<CleanupBy>,
    capacity: Option<i64>,
    gzip: bool,
}

fn cwd() -> Result<PathBuf, CacheError> {
    std::env::current_dir().map_err(|e| CacheError::io("cannot read the current directory", ".", e))
}

/// `cache store [KEY PATH]`.
pub fn store(out: &mut Out, inv: &Invocation) -> Outcome {
    let cleanup_by = match inv.value_flag.as_deref() {
        None => None,
        Some(v) => {
            Some(CleanupBy::from_toolbox(v).ok_or_else(|| CacheError::BadSortField(v.into()))?)
        }
    };
    let capacity = client::init(out)?;
    // A job that names one of the toolbox's archive methods gets archives
    // the toolbox can read.
    let method = std::env::var(ENV_ARCHIVE_METHOD).unwrap_or_default();
    let opts = StoreOptions {
        cleanup_by,
        capacity,
        gzip: ARCHIVE_METHODS.contains(&method.as_str()),
    };
    if let [key, path] = inv.positional.as_slice() {
        store_one(out, &opts, key, path)?;
        return Ok(0);
    }
    let found = autodetect::detect(&cwd()?, &autodetect::Env::from_process());
    if found.is_empty() {
        out.say("Nothing to store in cache.");
    }
    for f in found {
        let Some(targets) = detected(out, &f)? else {
            continue;
        };
        out.say(&format!("Detected {}.", f.lockfile));
        for t in targets {
            out.say(&format!("Using default cache path '{}'.", t.path));
            store_one(out, &opts, &t.key, &t.path)?;
        }
    }
    Ok(0)
}

/// A lock file's targets; None, after saying why, when it cannot be read.
fn detected<'a>(
    out: &mut Out,
    found: &'a autodetect::Found,
) -> Result<Option<&'a [autodetect::Target]>, CacheError> {
    match &found.targets {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            let file = cwd()?.join(found.lockfile);
            out.say(&format!(
                "Error generating checksum for {}: {}",
                file.display(),
                output::go_error("read", &file, e)
            ));
            Ok(None)
        }
    }
}

/// `~` and `~/x` are under `$HOME`, as the toolbox expands them.
fn expand_home(path: &str) -> PathBuf {
    let home = || std::env::var("HOME").unwrap_or_default();
    if path == "~" {
        PathBuf::from(home())
    } else if let Some(rest) = path.strip_prefix("~/") {
        Path::new(&home()).join(rest)
    } else {
        PathBuf::from(path)
    }
}

/// Counts the bytes of the archive on their way to the agent.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn store_one(out: &mut Out, opts: &StoreOptions, raw_key: &str, path_arg: &str) -> Outcome {
    let key = normalized(out, raw_key);
    let cwd = cwd()?;
    let path = expand_home(path_arg);
    // stat, as the toolbox: a dangling symlink is missing.
    if fs::metadata(cwd.join(&path)).is_err() {
        out.say(&format!("'{path_arg}' doesn't exist locally."));
        return Ok(0);
    }
    let mut conn = client::connect()?;
    let asked = client::request_on(
        &mut conn,
        &Request::Store {
            key: key.clone(),
            cleanup_by: opts.cleanup_by,
            capacity: opts.capacity,
            gzip: opts.gzip,
        },
    )?;
    let format = match asked {
        Reply::Ready { format } => format,
        Reply::Exists => {
            out.say(&format!("Key '{key}' already exists."));
            return Ok(0);
        }
        other => return Err(unexpected(other)),
    };
    out.say(&format!("Compressing {path_arg}..."));
    let started = Instant::now();
    let counting = Counting {
        inner: DataWriter::new(&conn),
        bytes: 0,
    };
    let pack_error = |source| CacheError::Pack {
        path: path_arg.to_string(),
        source,
    };
    let counting = archive::pack(format, &path, &cwd, counting).map_err(pack_error)?;
    let size = counting.bytes;
    counting.inner.finish().map_err(CacheError::Channel)?;
    out.say(&format!(
        "Compression complete. Duration: {}. Size: {} bytes.",
        format::duration(started.elapsed()),
        format::size_u(size)
    ));
    let uploading = Instant::now();
    let reply = client::reply(&mut conn)?;
    let upload = uploading.elapsed();
    let (evicted, by) = match reply {
        Reply::Stored {
            evicted,
            cleanup_by,
            ..
        } => (evicted, cleanup_by),
        Reply::TooLarge { capacity } => {
            out.say(&format!(
                "Archive exceeds allocated {} for cache.",
                format::size(capacity)
            ));
            return Ok(0);
        }
        Reply::Exists => {
            out.say(&format!("Key '{key}' already exists."));
            return Ok(0);
        }
        other => return Err(unexpected(other)),
    };
    out.say(&format!("Uploading '{path_arg}' with cache key '{key}'..."));
    if !evicted.is_empty() {
        // The toolbox prints this one line past its log file.
        out.print(&format!(
            "Not enough space, deleting keys based on {}...\n",
            by.toolbox_name()
        ));
        for old in evicted {
            out.say(&format!("Key '{old}' is deleted."));
        }
    }
    out.say(&format!(
        "Upload complete. Duration: {}.",
        format::duration(upload)
    ));
    let event = MetricsEvent {
        command: Transfer::Store,
        corrupt: false,
        size,
        duration: upload,
    };
    if let Err(e) = output::publish(&event) {
        out.say(&format!(
            "Error publishing store metrics: {}",
            output::go_errno(&e)
        ));
    }
    Ok(0)
}

/// `cache restore [KEYS]`.
pub fn restore(out: &mut Out, inv: &Invocation) -> Outcome {
    client::init(out)?;
    if let Some(list) = inv.positional.first() {
        let candidates: Vec<&str> = list.split(',').collect();
        restore_first(out, &candidates)?;
        return Ok(0);
    }
    let found = autodetect::detect(&cwd()?, &autodetect::Env::from_process());
    if found.is_empty() {
        out.say("Nothing to restore from cache.");
    }
    for f in found {
        let Some(targets) = detected(out, &f)? else {
            continue;
        };
        out.say(&format!("Detected {}.", f.lockfile));
        for t in targets {
            out.say(&format!(
                "Fetching '{}' directory with cache keys '{}'...",
                t.path,
                t.restore_keys.join(",")
            ));
            let candidates: Vec<&str> = t.restore_keys.iter().map(String::as_str).collect();
            restore_first(out, &candidates)?;
        }
    }
    Ok(0)
}

/// Tries the candidates in order (each the exact key, else an unanchored
/// regular expression) and restores the first that hits; a miss is a line.
fn restore_first(out: &mut Out, candidates: &[&str]) -> Result<(), CacheError> {
    for raw in candidates {
        let wanted = normalized(out, raw);
        let mut conn = client::connect()?;
        let asked = client::request_on(
            &mut conn,
            &Request::Restore {
                key: wanted.clone(),
            },
        )?;
        match asked {
            Reply::Miss => out.say(&format!("MISS: '{wanted}'.")),
            Reply::Hit { key, .. } => {
                out.say(&format!("HIT: '{wanted}', using key '{key}'."));
                return download_and_unpack(out, &mut conn, &key);
            }
            other => return Err(unexpected(other)),
        }
    }
    Ok(())
}

/// The downloaded archive, removed however the restore ends.
struct Downloaded {
    path: PathBuf,
    file: File,
}

impl Drop for Downloaded {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `$TMPDIR/KEY-DIGITS`, made for this process alone.
fn download_file(key: &str) -> Result<Downloaded, CacheError> {
    let dir = output::temp_dir();
    let mut last = None;
    for _ in 0..8 {
        let digits = u32::from_str_radix(&crate::util::random_hex(4), 16).unwrap_or(0);
        let path = dir.join(format!("{key}-{digits}"));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok(Downloaded { path, file }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((path, e)),
            Err(e) => return Err(CacheError::io("cannot create", path, e)),
        }
    }
    let (path, e) = last.expect("at least one attempt");
    Err(CacheError::io("cannot create", path, e))
}

fn download_and_unpack(
    out: &mut Out,
    conn: &mut std::os::unix::net::UnixStream,
    key: &str,
) -> Result<(), CacheError> {
    out.say(&format!("Downloading key '{key}'..."));
    let started = Instant::now();
    let mut downloaded = download_file(key)?;
    let mut data = DataReader::new(BufReader::with_capacity(1024 * 1024, conn), FROM_AGENT);
    let mut writer = io::BufWriter::with_capacity(1024 * 1024, &downloaded.file);
    let size = io::copy(&mut data, &mut writer).map_err(|e| {
        if e.kind() == io::ErrorKind::Other {
            // The agent's error, sent in place of the archive.
            CacheError::Remote(e.to_string())
        } else {
            CacheError::io("cannot write", &downloaded.path, e)
        }
    })?;
    writer
        .flush()
        .map_err(|e| CacheError::io("cannot write", &downloaded.path, e))?;
    drop(writer);
    let took = started.elapsed();
    out.say(&format!(
        "Download complete. Duration: {}. Size: {} bytes.",
        format::duration(took),
        format::size_u(size)
    ));
    let event = MetricsEvent {
        command: Transfer::Restore,
        corrupt: false,
        size,
        duration: took,
    };
    if let Err(e) = output::publish(&event) {
        out.say(&format!(
            "Error publishing metrics: {}",
            output::go_errno(&e)
        ));
    }
    out.say(&format!("Unpacking '{}'...", downloaded.path.display()));
    let unpacking = Instant::now();
    let cwd = cwd()?;
    let read_error = |e| CacheError::io("cannot read", &downloaded.path, e);
    downloaded.file.rewind().map_err(read_error)?;
    if let Err(source) = archive::verify(BufReader::new(&downloaded.file), size, &cwd) {
        if archive::extract::Refusal::is(&source) {
            return Err(CacheError::Refused {
                key: key.to_string(),
                source,
            });
        }
        let corrupt = MetricsEvent {
            corrupt: true,
            size: 0,
            duration: std::time::Duration::ZERO,
            ..event
        };
        if let Err(e) = output::publish(&corrupt) {
            out.say(&format!(
                "Error publishing corruption metric: {}",
                output::go_errno(&e)
            ));
        }
        return Err(CacheError::Corrupt {
            key: key.to_string(),
            source,
        });
    }
    downloaded.file.rewind().map_err(read_error)?;
    let restored = archive::unpack(
        BufReader::with_capacity(1024 * 1024, &downloaded.file),
        size,
        &cwd,
    )
    .map_err(|e| CacheError::Remote(format!("cannot restore '{key}': {e}")))?;
    if restored.path.is_empty() {
        out.say("No files in archive.");
    }
    out.say(&format!(
        "Unpack complete. Duration: {}.",
        format::duration(unpacking.elapsed())
    ));
    out.say(&format!("Restored: {}.", restored.path));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_expanded_as_the_toolbox_does() {
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(expand_home("~/x"), Path::new(&home).join("x"));
        assert_eq!(expand_home("x/~"), PathBuf::from("x/~"));
    }
}
