//! Where `cache` writes, as the toolbox's CLI does: every message goes once
//! to `$TMPDIR/cache_log` (appended, made 0644) and once to stdout, as the
//! bare text and a newline. Without `TMPDIR` the toolbox uses `/tmp`; a
//! shell job of this agent shares the host's `/tmp` with every other job,
//! where the file would grow forever and show one job's lines to the next,
//! so there the log goes to the job's own work directory (the directory of
//! its cache socket), which the agent removes at teardown. In a compose job
//! that directory is read-only and `/tmp` is the container's own: `/tmp`.
//! Help screens and the eviction notice go to stdout only; cobra's own
//! errors to stderr. `SEMAPHORE_TOOLBOX_METRICS_ENABLED=true` appends one
//! Influx line per transfer to `/tmp/toolbox_metrics`.
//!
//! This module knows the streams and files, not the commands.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

/// The toolbox's variable that makes the error path exit 1.
pub const ENV_FAIL_ON_ERROR: &str = "CACHE_FAIL_ON_ERROR";
/// The toolbox's switch for the metrics file.
pub const ENV_METRICS: &str = "SEMAPHORE_TOOLBOX_METRICS_ENABLED";
/// The metrics file: a fixed path, not under `TMPDIR`, as the toolbox has it.
pub const METRICS_FILE: &str = "/tmp/toolbox_metrics";

/// `$TMPDIR`, or `/tmp` (Go's `os.TempDir`).
pub fn temp_dir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/tmp"),
    }
}

/// Whether the error path exits 1: only for exactly `true`.
pub fn fail_on_error() -> bool {
    std::env::var(ENV_FAIL_ON_ERROR).as_deref() == Ok("true")
}

/// An OS error as Go words it: `open /tmp/x: permission denied`.
pub fn go_error(op: &str, path: &std::path::Path, e: &io::Error) -> String {
    format!("{op} {}: {}", path.display(), go_errno(e))
}

/// The reason of an I/O error in Go's words: the C library's text with a
/// lower-case first letter and no `(os error N)`.
pub fn go_errno(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The streams of one `cache` run.
pub struct Out {
    log: Option<File>,
}

impl Out {
    /// Opens `$TMPDIR/cache_log`. When it cannot be opened, says so on
    /// stderr the way logrus does before the toolbox's formatter is set, and
    /// goes on with stdout alone.
    pub fn open() -> Out {
        let open = |path: &std::path::Path| {
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(path)
        };
        let job_dir = std::env::var_os("TMPDIR")
            .filter(|d| !d.is_empty())
            .is_none()
            .then(|| std::env::var_os(super::SOCKET_ENV))
            .flatten()
            .and_then(|socket| PathBuf::from(socket).parent().map(|d| d.join("cache_log")));
        if let Some(Ok(file)) = job_dir.as_deref().map(open) {
            return Out { log: Some(file) };
        }
        let path = temp_dir().join("cache_log");
        match open(&path) {
            Ok(file) => Out { log: Some(file) },
            Err(e) => {
                let msg = format!(
                    "Error creating file '{}': {} - proceeding",
                    path.display(),
                    go_error("open", &path, &e)
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let _ = writeln!(
                    io::stderr(),
                    "time=\"{}\" level=error msg={}",
                    super::format::rfc3339(now),
                    go_quote(&msg)
                );
                Out { log: None }
            }
        }
    }

    /// One message: to the log file, then to stdout. A failed write to the
    /// file is reported on stderr and the message is not shown, as logrus
    /// does with its one writer for both.
    pub fn say(&mut self, msg: &str) {
        let line = format!("{msg}\n");
        if let Some(log) = &mut self.log {
            if let Err(e) = log.write_all(line.as_bytes()) {
                let _ = writeln!(io::stderr(), "Failed to write to log, {}", go_errno(&e));
                return;
            }
        }
        let mut stdout = io::stdout().lock();
        let _ = stdout.write_all(line.as_bytes());
        let _ = stdout.flush();
    }

    /// Bytes for stdout alone (help screens, the eviction notice).
    pub fn print(&mut self, text: &str) {
        let mut stdout = io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }

    /// Bytes for stderr (cobra's errors).
    pub fn print_err(&mut self, text: &str) {
        let _ = io::stderr().write_all(text.as_bytes());
    }

    /// The error path: `error: TEXT`, then the exit code the toolbox
    /// gives, 0 unless `CACHE_FAIL_ON_ERROR=true`.
    pub fn fail(&mut self, text: &str) -> u8 {
        self.say(&format!("error: {text}"));
        u8::from(fail_on_error())
    }
}

/// Go's `%q` of a string (what logrus' text format quotes values with).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Which transfer a metrics line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Store,
    Restore,
}

/// One line of `/tmp/toolbox_metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsEvent {
    pub command: Transfer,
    pub corrupt: bool,
    pub size: u64,
    pub duration: Duration,
}

impl MetricsEvent {
    /// The Influx line: the server is the host of the job's
    /// `SEMAPHORE_CACHE_URL` and the user its `SEMAPHORE_CACHE_USERNAME`,
    /// `unknown` when the job has none (the agent's own backend stays
    /// hidden from jobs).
    pub fn line(&self, url: Option<&str>, user: Option<&str>) -> String {
        let server = url
            .and_then(|u| {
                let parts: Vec<&str> = u.split(':').collect();
                (parts.len() == 2).then(|| parts[0])
            })
            .unwrap_or("");
        let command = match self.command {
            Transfer::Store => "store",
            Transfer::Restore => "restore",
        };
        format!(
            "usercache,server={},user={},command={command},corrupt={} size={},duration={}\n",
            tag(server),
            tag(user.unwrap_or("")),
            u8::from(self.corrupt),
            self.size,
            self.duration.as_millis()
        )
    }
}

/// An Influx tag value: `unknown` when empty; `,`, space and `=` escaped.
fn tag(value: &str) -> String {
    if value.is_empty() {
        return "unknown".to_string();
    }
    value
        .replace(',', "\\,")
        .replace(' ', "\\ ")
        .replace('=', "\\=")
}

/// Appends `event` to the metrics file when the job turned metrics on.
pub fn publish(event: &MetricsEvent) -> io::Result<()> {
    if std::env::var(ENV_METRICS).as_deref() != Ok("true") {
        return Ok(());
    }
    let url = std::env::var("SEMAPHORE_CACHE_URL").ok();
    let user = std::env::var("SEMAPHORE_CACHE_USERNAME").ok();
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(METRICS_FILE)?;
    file.write_all(event.line(url.as_deref(), user.as_deref()).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_are_the_toolbox_s() {
        let event = MetricsEvent {
            command: Transfer::Store,
            corrupt: false,
            size: 2048,
            duration: Duration::from_millis(1000),
        };
        assert_eq!(
            event.line(Some("10.0.0.5:29920"), Some("tester")),
            "usercache,server=10.0.0.5,user=tester,command=store,corrupt=0 size=2048,duration=1000\n"
        );
        let corrupt = MetricsEvent {
            command: Transfer::Restore,
            corrupt: true,
            size: 0,
            duration: Duration::ZERO,
        };
        assert_eq!(
            corrupt.line(Some("a:b:c"), Some("a b=c,d")),
            "usercache,server=unknown,user=a\\ b\\=c\\,d,command=restore,corrupt=1 size=0,duration=0\n"
        );
    }

    #[test]
    fn os_errors_read_as_go_s() {
        let e = io::Error::from_raw_os_error(13);
        assert_eq!(
            go_error("open", std::path::Path::new("/tmp/cache_log"), &e),
            "open /tmp/cache_log: permission denied"
        );
        assert_eq!(go_quote("a \"b\" \\"), "\"a \\\"b\\\" \\\\\"");
    }
}
