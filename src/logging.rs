//! The agent's own text log (not the job's event log): env_logger to stderr
//! and, for `serve`, also to the agent log file that `GET /agent_logs` serves.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `SEMAPHORE_AGENT_LOG_FILE_PATH`, else `$TMPDIR/agent_log`.
pub fn agent_log_path() -> PathBuf {
    std::env::var_os("SEMAPHORE_AGENT_LOG_FILE_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("agent_log"))
}

struct Tee {
    file: Option<Mutex<File>>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        if let Some(file) = &self.file {
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.write_all(buf);
        }
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
    let file = match file {
        Some(path) => Some(Mutex::new(
            OpenOptions::new().create(true).append(true).open(path)?,
        )),
        None => None,
    };
    env_logger::Builder::new()
        .parse_filters(&level)
        .format_timestamp_millis()
        .target(env_logger::Target::Pipe(Box::new(Tee { file })))
        .init();
    Ok(())
}
