//! Small helpers that several layers use and that know nothing of jobs:
//! bash quoting, random names, private files, a count of seconds in words,
//! the one rule that turns a job id into a name safe for paths and docker,
//! and the accept loop and bounded join of a per-job socket's service (the
//! cache's and the Docker gate's).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// "1 second", "N seconds": a duration in messages people read.
pub fn seconds(n: u64) -> String {
    if n == 1 {
        "1 second".to_string()
    } else {
        format!("{n} seconds")
    }
}

/// Single-quotes a string for bash; byte-exact for any content.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Single-quotes bytes for bash (values need not be UTF-8).
pub fn shell_quote_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'\'');
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

pub fn random_hex(n_bytes: usize) -> String {
    let mut buf = vec![0u8; n_bytes];
    let ok = File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        // Uniqueness, not secrecy, is what the callers need.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ std::process::id() as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates (or replaces) a file only its owner can read. The owner is the
/// owner of its directory: a compose job's work dir belongs to the
/// container's user, who must read the env and command files.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    if let Some(dir) = path.parent() {
        let (dir_meta, file_meta) = (fs::metadata(dir)?, f.metadata()?);
        if dir_meta.uid() != file_meta.uid() {
            std::os::unix::fs::chown(path, Some(dir_meta.uid()), Some(dir_meta.gid()))?;
        }
    }
    Ok(())
}

/// A job id as a name for files and containers: `[A-Za-z0-9._-]` kept, any
/// other character replaced by `_`, at most `max_chars` characters; an id
/// that leaves nothing (or only dots) becomes `job`.
pub fn id_slug(job_id: &str, max_chars: usize) -> String {
    let slug: String = job_id
        .chars()
        .take(max_chars)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if slug.chars().all(|c| c == '.') {
        "job".into()
    } else {
        slug
    }
}

/// Levenshtein distance between two short words.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A size for people: `812 bytes`, `64.0 KiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// How often a service's acceptor looks whether it must stop.
const ACCEPT_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// How long an acceptor rests after a failed accept (out of descriptors):
/// it must not spin.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The next connection on a non-blocking `listener`, looking at least every
/// `ACCEPT_POLL` whether `stop` is set; `None` once it is.
pub fn next_connection(
    listener: &std::os::unix::net::UnixListener,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut fds = [crate::process::sys::pollfd(
            listener.as_raw_fd(),
            crate::process::sys::POLLIN,
        )];
        let _ = crate::process::sys::poll(&mut fds, Some(std::time::Instant::now() + ACCEPT_POLL));
        match listener.accept() {
            Ok((conn, _)) => return Some(conn),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => std::thread::sleep(ACCEPT_RETRY),
        }
    }
    None
}

/// Joins the threads that end within `bound`; those still busy then are
/// left to end on their own. Returns how many were left.
pub fn join_within(
    handlers: Vec<std::thread::JoinHandle<()>>,
    bound: std::time::Duration,
) -> usize {
    let until = std::time::Instant::now() + bound;
    while handlers.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut busy = 0;
    for h in handlers {
        if h.is_finished() {
            let _ = h.join();
        } else {
            busy += 1;
        }
    }
    busy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_byte_exact() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let mut out = Vec::new();
        shell_quote_bytes(b"a'b", &mut out);
        assert_eq!(out, b"'a'\\''b'");
    }

    #[test]
    fn sizes_are_for_people() {
        assert_eq!(bytes(812), "812 bytes");
        assert_eq!(bytes(64 << 10), "64.0 KiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn slugs_are_safe_names() {
        assert_eq!(id_slug("a b/c", 64), "a_b_c");
        assert_eq!(id_slug("../../etc", 64), ".._.._etc");
        assert_eq!(id_slug("..", 64), "job");
        assert_eq!(id_slug("", 64), "job");
        assert_eq!(id_slug("abcdef", 3), "abc");
        assert_eq!(id_slug("1.2-x_Y", 64), "1.2-x_Y");
    }
}
