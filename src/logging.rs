//! The agent's own text log (not the job's event log): env_logger to stderr
//! and, for `serve`, also to the agent log file that `GET /agent_logs` serves.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The agent log file, once `init` opened one.
static FILE: OnceLock<Mutex<File>> = OnceLock::new();

/// `SEMAPHORE_AGENT_LOG_FILE_PATH`, else `$TMPDIR/agent_log`.
pub fn agent_log_path() -> PathBuf {
    std::env::var_os("SEMAPHORE_AGENT_LOG_FILE_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("agent_log"))
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
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        let _ = FILE.set(Mutex::new(f));
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
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(buf);
    }
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
