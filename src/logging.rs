//! The agent's own text log (not the job's event log): env_logger to stderr
//! and, for `serve`, also to the agent log file that `GET /agent_logs` serves.
//!
//! The file lives in the data directory unless `SEMAPHORE_AGENT_LOG_FILE_PATH`
//! names another. It is opened with `O_NOFOLLOW` and mode 0600, and refused
//! unless it is a regular file, so a symbolic link planted in its place
//! cannot make the agent append to (and `GET /agent_logs` return) a file of
//! someone else's choosing. It is bounded: past [`MAX_LOG_BYTES`] the file
//! becomes `<path>.1`, an older `.1` becomes `.2` and so on up to
//! [`ROTATED_FILES`] (the oldest is dropped), and a new file starts.
//! [`escape_field`] makes text that came from a client safe to log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Size at which the agent log file is rotated.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// Rotated files kept beside the current one (`.1` the newest): with an
/// access line per request, 10 MiB can be a day of a busy agent's log, and
/// five files, 50 MiB at most, keep a few days on a small disk.
pub const ROTATED_FILES: usize = 4;

/// The file name of the agent log inside the data directory.
const LOG_FILE_NAME: &str = "agent.log";

/// The agent log file, once `init` opened one.
static FILE: OnceLock<Mutex<LogFile>> = OnceLock::new();

/// The open log file, its path (for rotation) and how long it is.
struct LogFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<LogFile> {
        let file = open_private_append(path)?;
        let len = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    fn append(&mut self, buf: &[u8]) {
        if self.len > 0 && self.len + buf.len() as u64 > MAX_LOG_BYTES {
            self.rotate();
        }
        if self.file.write_all(buf).is_ok() {
            self.len += buf.len() as u64;
        }
    }

    /// Shifts the rotated files (`.1` to `.2`, ..., dropping the last),
    /// renames the file to `<path>.1` and starts a new one. On failure the
    /// current file stays in use, and the next line tries again.
    fn rotate(&mut self) {
        let rotated = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        // rename(2) replaces the entry itself, never what a link there
        // points to.
        for n in (1..ROTATED_FILES).rev() {
            let _ = fs::rename(rotated(n), rotated(n + 1));
        }
        if fs::rename(&self.path, rotated(1)).is_err() {
            return;
        }
        if let Ok(file) = open_private_append(&self.path) {
            self.file = file;
            self.len = 0;
        }
    }
}

/// Opens `path` for appending, creating it with mode 0600; a symbolic link
/// (`O_NOFOLLOW`) or anything but a regular file is refused, and a file that
/// others could read is made private.
fn open_private_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    make_private_regular(&file)?;
    Ok(file)
}

fn make_private_regular(file: &File) -> io::Result<()> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Opens the agent log for reading (`GET /agent_logs`), with the same
/// refusal of symbolic links and of anything but a regular file.
pub fn open_for_reading(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// `SEMAPHORE_AGENT_LOG_FILE_PATH`, else `agent.log` in `data_dir`.
pub fn agent_log_path(data_dir: &Path) -> PathBuf {
    match std::env::var_os("SEMAPHORE_AGENT_LOG_FILE_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => data_dir.join(LOG_FILE_NAME),
    }
}

/// Writes to stderr and, when there is one, to the agent log file.
struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        append_to_file(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Sets up logging; `file` adds the agent log file. The level comes from
/// `SEMAPHORE_AGENT_LOG_LEVEL` (default: `default_level`).
pub fn init(default_level: &str, file: Option<&Path>) -> io::Result<()> {
    let level = std::env::var("SEMAPHORE_AGENT_LOG_LEVEL").unwrap_or_else(|_| default_level.into());
    if let Some(path) = file {
        let _ = FILE.set(Mutex::new(LogFile::open(path)?));
    }
    env_logger::Builder::new()
        .parse_filters(&level)
        .format_timestamp_millis()
        .target(env_logger::Target::Pipe(Box::new(Tee)))
        .init();
    Ok(())
}

fn append_to_file(buf: &[u8]) {
    if let Some(file) = FILE.get() {
        file.lock().unwrap_or_else(|e| e.into_inner()).append(buf);
    }
}

/// Text from a client (a User-Agent, a request target) as it may appear
/// inside double quotes in a log line: `"` and `\` get a backslash, and
/// control characters and non-ASCII bytes become `\xHH`, so a client can
/// neither end the quoted field nor start a line of its own.
pub fn escape_field(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out
}

/// The error a command ends with: printed once on stderr, and kept in the
/// agent log file (when there is one) with a timestamp like every line.
pub fn fatal(message: &str) {
    eprintln!("agent: {message}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    append_to_file(format!("[{now} ERROR agent] {message}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn client_text_is_escaped() {
        assert_eq!(
            escape_field("curl/8 \"x\" \\ \n\u{1b}é"),
            "curl/8 \\\"x\\\" \\\\ \\x0a\\x1b\\xc3\\xa9"
        );
        assert_eq!(escape_field("plain/1.0"), "plain/1.0");
    }

    #[test]
    fn the_log_refuses_links_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "keep\n").unwrap();
        let link = dir.path().join("agent.log");
        symlink(&target, &link).unwrap();
        assert!(LogFile::open(&link).is_err());
        assert!(open_for_reading(&link).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep\n");

        let path = dir.path().join("real.log");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let _log = LogFile::open(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_log_rotates_into_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let mut log = LogFile::open(&path).unwrap();
        let mib = 1024 * 1024;
        for i in 0..75u8 {
            log.append(&vec![b'a' + i % 26; mib]);
        }
        let size = |name: &str| fs::metadata(dir.path().join(name)).map(|m| m.len());
        let names = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 1 + ROTATED_FILES);
        let mut total = 0;
        for name in [
            "agent.log",
            "agent.log.1",
            "agent.log.2",
            "agent.log.3",
            "agent.log.4",
        ] {
            let len = size(name).unwrap();
            assert!(len <= MAX_LOG_BYTES, "{name}: {len}");
            total += len;
        }
        // The newest 45 MiB: 10 MiB in each rotated file, 5 in the current.
        assert_eq!(total, 45 * mib as u64);
        assert_eq!(size("agent.log").unwrap(), 5 * mib as u64);
        // The newest line is in the current file, the oldest kept in `.4`.
        let first_of = |name: &str| fs::read(dir.path().join(name)).unwrap()[0];
        assert_eq!(first_of("agent.log"), b'a' + 70 % 26);
        assert_eq!(first_of("agent.log.1"), b'a' + 60 % 26);
        assert_eq!(first_of("agent.log.4"), b'a' + 30 % 26);
    }
}
