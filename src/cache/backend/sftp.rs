//! The SFTP backend: archives in a directory of an OpenSSH server (a
//! chrooted `internal-sftp` user is enough), driven through the `sftp`
//! client in batch mode with the agent's key, as the agent drives docker.
//!
//! Archives travel through a spool file on the host. A store uploads under
//! a hidden temporary name and renames it to the key (`posix-rename`), so
//! the key only ever names a complete archive, even when two agents store
//! it at once. Every `sftp` run is bounded: `ConnectTimeout`, keep-alives,
//! and a deadline after which it is killed.
//!
//! `sftp` shows no access times, and its listing shows times to the minute,
//! so a store and each restore leave an empty marker `.access/KEY@MS` in the
//! base directory (MS: Unix milliseconds, replacing the key's earlier
//! marker) for `--cleanup-by access-time`. A key with no marker (stored by
//! another tool) counts as accessed when it was stored.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::{Entry, Fetched};
use crate::cache::config::{SftpConfig, SFTP_CONNECT_TIMEOUT};
use crate::cache::error::CacheError;
use crate::util::random_hex;

/// The longest a listing, a delete or a `df` may take.
const SHORT_DEADLINE: Duration = Duration::from_secs(30);
/// The longest an upload or a download may take.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_millis(10);
/// The directory of access markers, beside the archives.
const ACCESS_DIR: &str = ".access";

pub struct Sftp {
    cfg: SftpConfig,
    spool: PathBuf,
    /// An empty file in the spool, uploaded as an access marker.
    empty: PathBuf,
}

/// What one `sftp` run printed.
struct Ran {
    stdout: String,
}

impl Sftp {
    pub fn new(cfg: &SftpConfig, spool: &Path) -> Result<Sftp, CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(spool)
            .map_err(|e| CacheError::io("cannot create the cache spool directory", spool, e))?;
        let empty = spool.join("empty");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&empty)
            .map_err(|e| CacheError::io("cannot create", &empty, e))?;
        Ok(Sftp {
            cfg: cfg.clone(),
            spool: spool.to_path_buf(),
            empty,
        })
    }

    /// The base directory, as `ls` and `df` take it.
    fn base(&self) -> &str {
        if self.cfg.base.is_empty() {
            "/"
        } else {
            &self.cfg.base
        }
    }

    /// The start of every access marker's name of `key` (`KEY@`).
    fn marker_prefix(&self, key: &str) -> String {
        self.remote(&format!("{ACCESS_DIR}/{key}@"))
    }

    fn remote(&self, name: &str) -> String {
        let base = self.cfg.base.trim_end_matches('/');
        if base.is_empty() {
            format!("/{name}")
        } else {
            format!("{base}/{name}")
        }
    }

    /// The `sftp` command line: the agent's key only, no agent, no config
    /// file, no prompt.
    pub fn argv(&self) -> Vec<String> {
        let opt = |o: String| ["-o".to_string(), o];
        let mut argv = vec![
            "sftp".to_string(),
            "-b".into(),
            "-".into(),
            "-F".into(),
            "/dev/null".into(),
            "-P".into(),
            self.cfg.port.to_string(),
            "-i".into(),
            self.cfg.key.to_string_lossy().into_owned(),
        ];
        for o in [
            "BatchMode=yes".to_string(),
            format!("ConnectTimeout={}", SFTP_CONNECT_TIMEOUT.as_secs()),
            "ServerAliveInterval=5".into(),
            "ServerAliveCountMax=3".into(),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
            "StrictHostKeyChecking=accept-new".into(),
            format!("UserKnownHostsFile={}", self.cfg.known_hosts.display()),
            "LogLevel=ERROR".into(),
        ] {
            argv.extend(opt(o));
        }
        argv.push(format!("{}@{}", self.cfg.user, self.cfg.host));
        argv
    }

    /// Runs a batch of commands; a failing command fails the run.
    fn run(&self, batch: &str, deadline: Duration) -> Result<Ran, CacheError> {
        let argv = self.argv();
        let server = self.cfg.server();
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CacheError::Sftp {
                server: server.clone(),
                detail: format!("cannot run sftp: {e}"),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(batch.as_bytes());
        }
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut text);
                }
                text
            })
        };
        let out = read(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = read(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let until = Instant::now() + deadline;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= until => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(_) => break None,
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        let detail = reason(&stderr);
        match status {
            None => Err(CacheError::Unreachable {
                server,
                detail: format!("no answer within {}s", deadline.as_secs()),
            }),
            Some(s) if s.success() => Ok(Ran { stdout }),
            Some(_) if is_connection_failure(&stderr) => {
                Err(CacheError::Unreachable { server, detail })
            }
            Some(_) => Err(CacheError::Sftp { server, detail }),
        }
    }

    pub fn list(&self) -> Result<Vec<Entry>, CacheError> {
        let base = self.base();
        let access = self.remote(ACCESS_DIR);
        let ran = self.run(
            &format!("ls -lt \"{base}\"\n-ls -1 \"{access}\"\n"),
            SHORT_DEADLINE,
        )?;
        let (keys, markers) = split_listings(&ran.stdout);
        let mut entries = parse_listing(keys, now_ms());
        for (key, ms) in parse_markers(markers) {
            if let Some(e) = entries.iter_mut().find(|e| e.key == key) {
                e.accessed_ms = e.accessed_ms.max(ms);
            }
        }
        Ok(entries)
    }

    /// Batch commands that make `now` the access time of `key`. Keys hold
    /// no glob characters (see `keys::check`), so `"KEY@"*` (sftp globs
    /// outside quotes only) is the key's own markers. Every command may
    /// fail (`-`): a marker is no reason to fail a store or a restore.
    fn mark_access(&self, key: &str) -> String {
        let prefix = self.marker_prefix(key);
        format!(
            "-mkdir \"{}\"\n-rm \"{prefix}\"*\n-put \"{}\" \"{prefix}{}\"\n",
            self.remote(ACCESS_DIR),
            self.empty.display(),
            now_ms(),
        )
    }

    pub fn stage(&self) -> Result<(File, PathBuf), CacheError> {
        let path = self.spool.join(format!("up-{}", random_hex(8)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CacheError::io("cannot create", &path, e))?;
        Ok((file, path))
    }

    pub fn commit(&self, key: &str, staged: &Path) -> Result<bool, CacheError> {
        let tmp = self.remote(&format!(".incoming-{}", random_hex(8)));
        let batch = format!(
            "put \"{}\" \"{tmp}\"\nrename \"{tmp}\" \"{}\"\n{}",
            staged.display(),
            self.remote(key),
            self.mark_access(key)
        );
        let result = self.run(&batch, TRANSFER_DEADLINE);
        let _ = fs::remove_file(staged);
        if result.is_err() {
            // Best effort: a half-uploaded temporary file is never a key.
            let _ = self.run(&format!("-rm \"{tmp}\"\n"), SHORT_DEADLINE);
        }
        result.map(|_| true)
    }

    pub fn fetch(&self, key: &str) -> Result<Fetched, CacheError> {
        let path = self.spool.join(format!("down-{}", random_hex(8)));
        // The marker is only written when the download succeeded: a failed
        // command ends the batch.
        let ran = self.run(
            &format!(
                "get \"{}\" \"{}\"\n{}",
                self.remote(key),
                path.display(),
                self.mark_access(key)
            ),
            TRANSFER_DEADLINE,
        );
        if let Err(e) = ran {
            let _ = fs::remove_file(&path);
            return Err(match e {
                CacheError::Sftp { detail, .. } if detail.contains("not found") => {
                    CacheError::NotFound(key.to_string())
                }
                other => other,
            });
        }
        let file = File::open(&path).map_err(|e| CacheError::io("cannot open", &path, e))?;
        Ok(Fetched {
            file,
            spooled: Some(path),
        })
    }

    pub fn delete(&self, key: &str) -> Result<(), CacheError> {
        let batch = format!(
            "rm \"{}\"\n-rm \"{}\"*\n",
            self.remote(key),
            self.marker_prefix(key)
        );
        match self.run(&batch, SHORT_DEADLINE) {
            Ok(_) => Ok(()),
            Err(CacheError::Sftp { detail, .. })
                if detail.contains("No such file") || detail.contains("not found") =>
            {
                Err(CacheError::NotFound(key.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Removes every access marker.
    pub fn clear_markers(&self) -> Result<(), CacheError> {
        let batch = format!("-rm \"{}/\"*\n", self.remote(ACCESS_DIR));
        self.run(&batch, SHORT_DEADLINE).map(|_| ())
    }

    /// `df` of the base directory (the server's `statvfs` extension).
    pub fn free(&self) -> Result<Option<u64>, CacheError> {
        let base = self.base();
        let ran = self.run(&format!("-df \"{base}\"\n"), SHORT_DEADLINE)?;
        Ok(parse_df(&ran.stdout))
    }
}

/// The line of sftp's stderr that says why: ssh's own reason rather than
/// sftp's "Connection closed" after it, else the last line.
fn reason(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| is_connection_failure(l) && !l.starts_with("Connection closed"))
        .or(lines.last())
        .map(|l| l.strip_prefix("ssh: ").unwrap_or(l).to_string())
        .unwrap_or_default()
}

/// ssh's words for a server it could not log in to.
fn is_connection_failure(stderr: &str) -> bool {
    [
        "Connection refused",
        "Connection timed out",
        "timed out",
        "No route to host",
        "Could not resolve",
        "Permission denied",
        "Connection closed",
        "Host key verification failed",
        "Network is unreachable",
    ]
    .iter()
    .any(|w| stderr.contains(w))
}

fn now_ms() -> u64 {
    super::unix_ms(Ok(SystemTime::now()))
}

/// The listing of the keys and that of the access markers, from the output
/// of the two `ls` commands of a batch (each is echoed as `sftp> ls ...`).
fn split_listings(stdout: &str) -> (&str, &str) {
    let second = stdout
        .match_indices("sftp> ")
        .nth(1)
        .map(|(i, _)| i)
        .unwrap_or(stdout.len());
    stdout.split_at(second)
}

/// The markers of an `ls -1` of the access directory: `KEY@MS` names.
fn parse_markers(stdout: &str) -> Vec<(&str, u64)> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .filter_map(|l| {
            let name = l.trim().rsplit('/').next()?;
            let (key, ms) = name.rsplit_once('@')?;
            Some((key, ms.parse().ok()?))
        })
        .collect()
}

/// The `ls -lt` output of sftp's batch mode (commands are echoed after
/// `sftp> `). The listing shows times to the minute, so store times are
/// made strictly decreasing in the listed (newest first) order.
fn parse_listing(stdout: &str, now_ms: u64) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("sftp>") || !line.starts_with('-') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 {
            continue;
        }
        let Ok(size) = fields[4].parse::<u64>() else {
            continue;
        };
        let name = fields[8..].join(" ");
        let name = name.rsplit('/').next().unwrap_or("").to_string();
        if name.is_empty() || name.starts_with('.') {
            continue;
        }
        let mut stored = listing_time(fields[5], fields[6], fields[7], now_ms).unwrap_or(now_ms);
        if let Some(prev) = entries.last() {
            stored = stored.min(prev.stored_ms.saturating_sub(1));
        }
        entries.push(Entry {
            key: name,
            size,
            stored_ms: stored,
            accessed_ms: stored,
        });
    }
    entries
}

/// `Nov 29 20:01` (this year, or last year when that would be in the
/// future) or `Nov 29 2024`, in UTC as the server prints it.
fn listing_time(month: &str, day: &str, time_or_year: &str, now_ms: u64) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let day: u32 = day.parse().ok()?;
    let (this_year, _, _) = crate::cache::format::civil_from_days((now_ms / 86_400_000) as i64);
    let (year, minutes) = match time_or_year.split_once(':') {
        Some((h, m)) => (
            this_year,
            h.parse::<u64>().ok()? * 60 + m.parse::<u64>().ok()?,
        ),
        None => (time_or_year.parse().ok()?, 0),
    };
    let at = |y: i64| {
        let days = crate::cache::format::days_from_civil(y, month, day);
        (days as u64) * 86_400_000 + minutes * 60_000
    };
    let t = at(year);
    if t > now_ms + 86_400_000 && time_or_year.contains(':') {
        return Some(at(year - 1));
    }
    Some(t)
}

/// The `Avail` column of `df` (KiB).
fn parse_df(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .find_map(|l| {
            let nums: Vec<u64> = l
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            (nums.len() >= 4).then(|| nums[2] * 1024)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_read_newest_first_with_distinct_times() {
        let out = "sftp> ls -lt \".\"\n\
                   -rw-r--r--    1 0        0            1234 Nov 29 20:01 ./b-key\n\
                   -rw-r--r--    1 0        0              99 Nov 29 20:01 ./a-key\n\
                   -rw-------    1 0        0               9 Nov 29 20:01 ./.incoming-1\n\
                   drwxr-xr-x    2 0        0            4096 Nov 29 19:00 ./dir\n";
        let now = crate::cache::format::days_from_civil(2026, 11, 29) as u64 * 86_400_000
            + 21 * 3_600_000;
        let entries = parse_listing(out, now);
        let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["b-key", "a-key"]);
        assert_eq!(entries[0].size, 1234);
        assert!(entries[0].stored_ms > entries[1].stored_ms);
        let expected = crate::cache::format::days_from_civil(2026, 11, 29) as u64 * 86_400_000
            + (20 * 60 + 1) * 60_000;
        assert_eq!(entries[0].stored_ms, expected);
    }

    #[test]
    fn access_markers_follow_the_keys_listing() {
        let out = "sftp> ls -lt \"cache\"\n\
                   -rw-r--r--    1 0        0              12 Nov 29 20:01 cache/k@1\n\
                   sftp> -ls -1 \"cache/.access\"\n\
                   cache/.access/k@1@1764446500123\n\
                   cache/.access/odd\n\
                   cache/.access/k@10@17\n";
        let (keys, markers) = split_listings(out);
        assert!(keys.contains("cache/k@1") && !keys.contains(".access"));
        assert_eq!(
            parse_markers(markers),
            [("k@1", 1764446500123), ("k@10", 17)]
        );
        let (keys, markers) = split_listings("sftp> ls -lt \"cache\"\n");
        assert_eq!((keys.len(), markers), (21, ""));
    }

    #[test]
    fn the_reason_is_ssh_s_not_sftp_s() {
        let stderr =
            "ssh: connect to host 127.0.0.1 port 9: Connection refused\r\nConnection closed\n";
        assert_eq!(
            reason(stderr),
            "connect to host 127.0.0.1 port 9: Connection refused"
        );
        assert_eq!(
            reason("remote open: No such file\n"),
            "remote open: No such file"
        );
    }

    #[test]
    fn df_gives_the_available_bytes() {
        let out = "sftp> df .\n        Size         Used        Avail       (root)    %Capacity\n     1000000       400000       600000       600000          40%\n";
        assert_eq!(parse_df(out), Some(600000 * 1024));
    }
}
